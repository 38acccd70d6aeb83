"""Automatic canary analysis: challenger against champion on the live traffic of the canary.

While a challenger takes ``serving.canary_percent`` of requests, the model server writes every
answered request to the inference log (``components.common.inference_log``) with the version
that answered, its latency and its status. :func:`canary_analysis` reads the last
``serving.canary_analysis.window_minutes`` of that log and compares the two versions on

- **error rate** (requests the model failed on, 5xx) - the challenger may exceed the
  champion's by at most ``max_error_rate_increase``;
- **latency p95** (server-side) - at most ``max_latency_p95_ratio`` times the champion's, and
  differences below ``latency_slack_ms`` never fail (on loopback both are a few ms);
- **prediction distribution** - PSI between the two versions' served values (same traffic
  split at random, so the inputs come from one distribution) at most ``max_prediction_psi``;
  for multiclass versions (the log holds their ``predicted_class``) the PSI of the two
  versions' predicted-class mix, reported per class with, where both answered the same rows
  (shadow), the per-class agreement (:func:`class_comparison`);
- **significance** (reported, not a gate) - per-version error rate, mean prediction and
  accuracy with a p-value each (:func:`significance_tests`): two-proportion z-tests, Mann-Whitney
  U on the scores, and for a shadow challenger, which scored the very requests the champion
  answered, the Wilcoxon signed-rank test on the paired differences;
- **accuracy where labels arrived** - a labels table joined on ``request_id`` (and ``row``)
  with the dataset's label column; the challenger may be at most ``max_accuracy_drop`` below
  the champion when each has ``min_labeled`` labeled rows.

With fewer than ``min_requests`` logged requests for either version the decision is ``wait``
and nothing changes. Otherwise every check passing gives ``promote``
(``components.common.registry.promote``: the challenger becomes champion and takes all traffic) and
any failing check gives ``rollback``: the canary closes (``components.common.registry.close_canary``
under the registry lock: challenger share 0, the ``challenger`` alias removed), so the champion,
which never stopped being champion, answers every request.
``components.common.registry.rollback`` is not the right tool here: it moves ``champion`` back one
promotion, and during a canary the champion is the good model. The decision and its reasons
are recorded as tags on the challenger version (``ctpipe.canary_decision``,
``ctpipe.canary_reason``) and in a JSON result and a Markdown report.

In an environment (``serving.environment``, see ``components.common.environments``) the two versions
are that environment's (``staging-champion`` and ``staging-challenger`` in staging), the verdict is
also recorded as ``ctpipe.env.<env>.canary_decision`` (what the gate into the next environment
reads), and outside prod the canary ends with ``environments.conclude_canary``: prod's aliases are
never moved by a staging or dev analysis.
"""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from components.common import environments, tracking
from components.common.drift import categorical_psi, population_stability_index
from components.common.errors import DataError
from components.common.inference_log import read_window
from components.common.io import write_json, write_text
from components.common.kserve.traffic import ClusterTarget, sync_inference_service
from components.common.logs import get_logger
from components.common.registry import (
    CANARY_DECISION_TAG,
    CANARY_REASON_TAG,
    close_canary,
    promote,
    redact_uri,
)
from components.common.storage import read_table
from components.serving_spec import ServingSpec
from components.specs import DatasetSpec

logger = get_logger("canary_analysis")

Decision = Literal["promote", "rollback", "wait", "no_canary"]
PSI_BINS = 10


class VersionStats(BaseModel):
    """What one version did during the window."""

    version: str
    requests: int
    rows: int
    errors: int
    error_rate: float
    latency_p95_ms: float | None
    labeled: int = 0
    accuracy: float | None = None


class CanaryCheck(BaseModel):
    """One comparison against its threshold."""

    name: str
    passed: bool
    value: float | None
    limit: float | None
    detail: str


class SignificanceTest(BaseModel):
    """Whether one difference between the versions is more than chance (reported; the checks decide)."""

    name: str
    test: str
    champion: float | None
    challenger: float | None
    statistic: float | None
    p_value: float | None
    significant: bool
    detail: str


class CanaryAnalysisResult(BaseModel):
    """The decision, the numbers behind it and what was done."""

    model_name: str
    decision: Decision
    reason: str
    champion_version: str | None
    challenger_version: str | None
    window_start: str
    window_end: str
    champion: VersionStats | None = None
    challenger: VersionStats | None = None
    checks: list[CanaryCheck] = Field(default_factory=list)
    prediction_psi: float | None = None
    significance: list[SignificanceTest] = Field(default_factory=list)
    class_mix: dict[str, dict[str, float]] | None = Field(
        default=None,
        description="Multiclass: version -> predicted class -> share of its answered rows; prediction_psi is then "
        "the PSI of the two versions' class mix.",
    )
    class_agreement: dict[str, float] | None = Field(
        default=None,
        description="Multiclass, where both versions answered the same rows (shadow): champion's class -> share "
        "of those rows where the challenger predicted the same class.",
    )
    acted: bool = False
    action: str = ""


def _stats(rows: pd.DataFrame, version: str) -> VersionStats:
    per_request = rows.groupby("request_id", sort=False).agg(
        status=("status", "first"), latency_ms=("latency_ms", "first")
    )
    errors = int((per_request["status"] == "error").sum())
    latency = per_request["latency_ms"].dropna()
    return VersionStats(
        version=version,
        requests=len(per_request),
        rows=len(rows),
        errors=errors,
        error_rate=errors / len(per_request) if len(per_request) else 0.0,
        latency_p95_ms=float(np.percentile(latency, 95)) if len(latency) else None,
    )


def two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float | None, float | None]:
    """Two-sided two-proportion z-test (pooled): the z statistic and its p-value; None when undefined."""
    from scipy.stats import norm

    if n_a == 0 or n_b == 0:
        return None, None
    pooled = (hits_a + hits_b) / (n_a + n_b)
    spread = (pooled * (1 - pooled) * (1 / n_a + 1 / n_b)) ** 0.5
    if spread == 0:
        return 0.0, 1.0  # both rates 0 or both 1: no evidence of a difference
    z = (hits_b / n_b - hits_a / n_a) / spread
    return float(z), float(2 * norm.sf(abs(z)))


def _test(
    name: str, test: str, a: float | None, b: float | None, stat: float | None, p: float | None, level: float, what: str
) -> SignificanceTest:
    significant = p is not None and p < level
    shown = "-" if p is None else f"{p:.3g}"
    verdict = "significant" if significant else "not significant"
    return SignificanceTest(
        name=name,
        test=test,
        champion=a,
        challenger=b,
        statistic=stat,
        p_value=p,
        significant=significant,
        detail=f"{what}; {test} p={shown}: {verdict} at {level:g}",
    )


def significance_tests(
    champion: pd.DataFrame,
    challenger: pd.DataFrame,
    level: float,
    label_column: str | None = None,
) -> list[SignificanceTest]:
    """Per-version metrics with a significance test each, on the logged rows of the two versions.

    - error rate per request: two-proportion z-test;
    - scores: Mann-Whitney U on the two versions' predictions (different requests: canary, A/B);
    - paired scores: where both scored the same rows (shadow: same ``request_id`` and ``row``),
      the Wilcoxon signed-rank test on the differences, which sees far smaller effects;
    - accuracy, where ``label_column`` holds arrived labels: two-proportion z-test.

    Args:
        champion: The champion's log rows (``request_id``, ``row``, ``status``, ``prediction``).
        challenger: The challenger's (shadow rows included).
        level: A p-value below this is significant.
        label_column: A column of joined labels, if any.

    Returns:
        One test per metric that both versions have data for.
    """
    from scipy.stats import mannwhitneyu, wilcoxon

    tests: list[SignificanceTest] = []
    errors = []
    for rows in (champion, challenger):
        per_request = rows.groupby("request_id", sort=False)["status"].first()
        errors.append((int((per_request == "error").sum()), len(per_request)))
    (e_a, n_a), (e_b, n_b) = errors
    z, p = two_proportion_z(e_a, n_a, e_b, n_b)
    rate_a, rate_b = (e_a / n_a if n_a else None), (e_b / n_b if n_b else None)
    what = f"error rate champion {e_a}/{n_a}, challenger {e_b}/{n_b}"
    tests.append(_test("error_rate", "two-proportion z-test", rate_a, rate_b, z, p, level, what))
    ok_a, ok_b = (rows[rows["status"] == "ok"] for rows in (champion, challenger))
    score_a, score_b = (rows["prediction"].to_numpy(dtype=float) for rows in (ok_a, ok_b))
    score_a, score_b = score_a[np.isfinite(score_a)], score_b[np.isfinite(score_b)]
    if len(score_a) and len(score_b):
        u = mannwhitneyu(score_a, score_b, alternative="two-sided")
        mean_a, mean_b = float(score_a.mean()), float(score_b.mean())
        what = f"mean prediction champion {mean_a:.4f} ({len(score_a)} rows), challenger {mean_b:.4f} ({len(score_b)})"
        tests.append(
            _test("prediction", "Mann-Whitney U", mean_a, mean_b, float(u.statistic), float(u.pvalue), level, what)
        )
    paired = ok_a.merge(ok_b, on=["request_id", "row"], suffixes=("_a", "_b"))
    if len(paired):
        diff = paired["prediction_b"].to_numpy(dtype=float) - paired["prediction_a"].to_numpy(dtype=float)
        diff = diff[np.isfinite(diff)]
        if len(diff) and np.any(diff != 0):
            w = wilcoxon(diff)
            stat, p_value = float(w.statistic), float(w.pvalue)
        else:
            stat, p_value = 0.0, 1.0  # identical answers on every shared row
        what = f"{len(diff)} rows scored by both; mean difference {diff.mean() if len(diff) else 0.0:+.4f}"
        mean_a = float(paired["prediction_a"].mean())
        mean_b = float(paired["prediction_b"].mean())
        tests.append(_test("paired_prediction", "Wilcoxon signed-rank", mean_a, mean_b, stat, p_value, level, what))
    if label_column is not None and label_column in champion.columns and label_column in challenger.columns:
        hits = []
        for rows in (ok_a, ok_b):
            labeled = rows[rows[label_column].notna()]
            hits.append((int(_hits(labeled, label_column).sum()), len(labeled)))
        (h_a, m_a), (h_b, m_b) = hits
        if m_a and m_b:
            z, p = two_proportion_z(h_a, m_a, h_b, m_b)
            what = f"accuracy champion {h_a}/{m_a}, challenger {h_b}/{m_b}"
            tests.append(_test("accuracy", "two-proportion z-test", h_a / m_a, h_b / m_b, z, p, level, what))
    return tests


def _accuracy(rows: pd.DataFrame, labels: pd.DataFrame, label_column: str) -> tuple[int, float | None]:
    ok = rows[rows["status"] == "ok"]
    joined = ok.merge(labels, on=["request_id", "row"], how="inner")
    joined = joined[joined[label_column].notna()]
    if joined.empty:
        return 0, None
    return len(joined), float(_hits(joined, label_column).mean())


def _multiclass(rows: pd.DataFrame) -> bool:
    """Whether a version's answered rows are a multiclass classifier's (the log has their ``predicted_class``)."""
    return "predicted_class" in rows.columns and bool(rows["predicted_class"].notna().all()) and len(rows) > 0


def _hits(rows: pd.DataFrame, label_column: str) -> np.ndarray:
    """Per labelled row, whether the served answer was right.

    A multiclass row's logged class is compared with the label as class text (:func:`_class_text`);
    else a positive-class probability of at least 0.5 stands for class 1.
    """
    if _multiclass(rows):
        return _class_text(rows["predicted_class"]) == _class_text(rows[label_column])
    predicted = (rows["prediction"].to_numpy(dtype=float) >= 0.5).astype(int)
    return np.asarray(predicted == rows[label_column].to_numpy().astype(int))


def _class_text(values: pd.Series) -> np.ndarray:
    """Class values as text, an integral float written as the integer: ``3.0`` and ``3`` are class ``"3"``.

    Integer classes come back as floats wherever a column has a gap (a label table with a missing
    label, a join that left rows without one), while the log holds the class the model answered.
    """
    return np.asarray(
        [str(int(value)) if isinstance(value, float) and value.is_integer() else str(value) for value in values]
    )


def class_comparison(
    champion: pd.DataFrame, challenger: pd.DataFrame
) -> tuple[float, dict[str, pd.Series], dict[str, float] | None]:
    """Multiclass: PSI of the two versions' predicted-class mix, the mixes, and the per-class agreement.

    Args:
        champion: The champion's answered rows (``request_id``, ``row``, ``predicted_class``).
        challenger: The challenger's.

    Returns:
        The PSI (one bin per class), each side's class shares, and for rows both answered (a
        shadow scores a copy of every request) the share of each champion class the challenger
        predicted alike; None when no row was answered by both.
    """
    a, b = champion["predicted_class"].astype(str), challenger["predicted_class"].astype(str)
    psi = categorical_psi(a, b)
    mixes = {"champion": a.value_counts(normalize=True), "challenger": b.value_counts(normalize=True)}
    paired = champion.merge(challenger, on=["request_id", "row"], suffixes=("_a", "_b"))
    if paired.empty:
        return psi, mixes, None
    same = paired["predicted_class_a"].astype(str) == paired["predicted_class_b"].astype(str)
    agreement = same.groupby(paired["predicted_class_a"].astype(str)).mean()
    return psi, mixes, {str(k): float(v) for k, v in agreement.items()}


def _read_labels(labels_path: str, dataset: DatasetSpec) -> pd.DataFrame:
    labels = read_table(labels_path)
    needed = ["request_id", dataset.label_column]
    missing = [c for c in needed if c not in labels.columns]
    if missing:
        raise DataError(
            f"{labels_path}: labels lack column(s) {missing}; expected request_id, optional row, and "
            f"{dataset.label_column!r}; found {sorted(map(str, labels.columns))}"
        )
    if "row" not in labels.columns:
        labels = labels.assign(row=0)
    return labels[["request_id", "row", dataset.label_column]].drop_duplicates(["request_id", "row"], keep="last")


def _checks(
    champion: VersionStats, challenger: VersionStats, psi: float | None, serving: ServingSpec, has_labels: bool
) -> list[CanaryCheck]:
    limits = serving.canary_analysis
    checks: list[CanaryCheck] = []
    increase = challenger.error_rate - champion.error_rate
    checks.append(
        CanaryCheck(
            name="error_rate",
            passed=increase <= limits.max_error_rate_increase,
            value=challenger.error_rate,
            limit=champion.error_rate + limits.max_error_rate_increase,
            detail=f"challenger {challenger.errors}/{challenger.requests} failed ({challenger.error_rate:.2%}), "
            f"champion {champion.errors}/{champion.requests} ({champion.error_rate:.2%}); "
            f"allowed increase {limits.max_error_rate_increase:.2%}",
        )
    )
    if champion.latency_p95_ms is not None and challenger.latency_p95_ms is not None:
        base = champion.latency_p95_ms
        allowed = max(base * limits.max_latency_p95_ratio, base + limits.latency_slack_ms)
        checks.append(
            CanaryCheck(
                name="latency_p95",
                passed=challenger.latency_p95_ms <= allowed,
                value=challenger.latency_p95_ms,
                limit=allowed,
                detail=f"challenger p95 {challenger.latency_p95_ms:.2f} ms, champion {champion.latency_p95_ms:.2f} ms; "
                f"allowed {allowed:.2f} ms (x{limits.max_latency_p95_ratio:g} or +{limits.latency_slack_ms:g} ms)",
            )
        )
    if psi is not None:
        checks.append(
            CanaryCheck(
                name="prediction_psi",
                passed=psi <= limits.max_prediction_psi,
                value=psi,
                limit=limits.max_prediction_psi,
                detail=f"PSI between the versions' predictions {psi:.4f}; allowed {limits.max_prediction_psi:g}",
            )
        )
    if has_labels:
        enough = min(champion.labeled, challenger.labeled) >= limits.min_labeled
        if enough and champion.accuracy is not None and challenger.accuracy is not None:
            drop = champion.accuracy - challenger.accuracy
            checks.append(
                CanaryCheck(
                    name="accuracy",
                    passed=drop <= limits.max_accuracy_drop,
                    value=challenger.accuracy,
                    limit=champion.accuracy - limits.max_accuracy_drop,
                    detail=f"challenger accuracy {challenger.accuracy:.4f} on {challenger.labeled} labeled rows, "
                    f"champion {champion.accuracy:.4f} on {champion.labeled}; "
                    f"allowed drop {limits.max_accuracy_drop:g}",
                )
            )
        else:
            checks.append(
                CanaryCheck(
                    name="accuracy",
                    passed=True,
                    value=None,
                    limit=None,
                    detail=f"not compared: labeled rows champion {champion.labeled}, challenger {challenger.labeled}; "
                    f"need {limits.min_labeled} each",
                )
            )
    return checks


def _report(result: CanaryAnalysisResult) -> str:
    lines = [
        f"# Canary analysis: {result.model_name}",
        "",
        f"**Decision: {result.decision}**. {result.reason}",
        "",
        f"Window {result.window_start} to {result.window_end}; champion version {result.champion_version}, "
        f"challenger version {result.challenger_version}.",
        "",
    ]
    if result.champion is not None and result.challenger is not None:
        lines += ["| version | role | requests | errors | error rate | latency p95 ms | labeled | accuracy |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for role, stats in (("champion", result.champion), ("challenger", result.challenger)):
            p95 = f"{stats.latency_p95_ms:.2f}" if stats.latency_p95_ms is not None else "-"
            accuracy = f"{stats.accuracy:.4f}" if stats.accuracy is not None else "-"
            lines.append(
                f"| {stats.version} | {role} | {stats.requests} | {stats.errors} | {stats.error_rate:.2%} | "
                f"{p95} | {stats.labeled} | {accuracy} |"
            )
        lines.append("")
    if result.checks:
        lines += ["| check | passed | detail |", "|---|---|---|"]
        lines += [f"| {c.name} | {'yes' if c.passed else '**no**'} | {c.detail} |" for c in result.checks]
        lines.append("")
    if result.class_mix is not None:
        versions = list(result.class_mix)
        classes = sorted({name for mix in result.class_mix.values() for name in mix})
        agreement = result.class_agreement or {}
        lines += [f"| predicted class | {' | '.join(f'share v{v}' for v in versions)} | agreement |"]
        lines += ["|---|" + "---|" * len(versions) + "---|"]
        for name in classes:
            shares = " | ".join(f"{result.class_mix[v].get(name, 0.0):.2%}" for v in versions)
            agreed = f"{agreement[name]:.2%}" if name in agreement else "-"
            lines.append(f"| {name} | {shares} | {agreed} |")
        lines.append("")
    if result.significance:
        lines += ["| metric | champion | challenger | test | p-value | significant |", "|---|---|---|---|---|---|"]
        for t in result.significance:
            shown = ["-" if v is None else f"{v:.4g}" for v in (t.champion, t.challenger, t.p_value)]
            mark = "**yes**" if t.significant else "no"
            lines.append(f"| {t.name} | {shown[0]} | {shown[1]} | {t.test} | {shown[2]} | {mark} |")
        lines.append("")
    lines.append(f"Action: {result.action or 'none'}")
    return "\n".join(lines) + "\n"


def _act(result: CanaryAnalysisResult, serving: ServingSpec, tracking_uri: str, cluster: ClusterTarget | None) -> str:
    name, version = serving.model_name, str(result.challenger_version)
    client = tracking.registry_client(tracking_uri)
    client.set_model_version_tag(name, version, CANARY_DECISION_TAG, result.decision)
    client.set_model_version_tag(name, version, CANARY_REASON_TAG, result.reason[:4000])
    env = serving.environment or environments.PROD
    environments.record_canary_verdict(client, name, version, env, result.decision, result.reason)
    if env != environments.PROD:
        action = environments.conclude_canary(name, tracking_uri, env, version, result.decision)
    elif result.decision == "promote":
        change = promote(name, tracking_uri, version)
        if change.previous != change.current:
            environments.stamp_entry(client, name, environments.PROD, version, change.previous, environments.utc_now())
        action = f"promoted version {version} to champion (was {change.previous}); it now takes all traffic"
    else:
        # Under the registry lock: traffic to 0 first (the server stops routing to it), then the alias.
        close_canary(name, tracking_uri, version)
        action = f"closed the canary: version {version} gets no traffic; champion {result.champion_version} takes all"
    if cluster is not None:
        # The aliases moved; the InferenceService's traffic split follows them in one write.
        sync_inference_service(serving, tracking_uri, cluster)
        action += "; InferenceService updated"
    return action


def canary_analysis(
    serving: ServingSpec,
    tracking_uri: str,
    log_dir: str,
    result_path: str,
    report_path: str,
    labels_path: str | None = None,
    dataset: DatasetSpec | None = None,
    now: str | pd.Timestamp | None = None,
    act: bool = True,
    cluster: ClusterTarget | None = None,
) -> CanaryAnalysisResult:
    """Compare challenger and champion on the logged canary traffic, then promote or roll back.

    Args:
        serving: Model name and the ``canary_analysis`` thresholds.
        tracking_uri: MLflow tracking/registry URI.
        log_dir: The inference log folder the model server writes.
        result_path: Where the JSON result is written.
        report_path: Where the Markdown report is written.
        labels_path: Optional table of arrived labels: ``request_id``, optional ``row`` and the
            dataset's label column.
        dataset: Needed with ``labels_path`` (for the label column).
        now: End of the window (default: now, UTC).
        act: Promote or close the canary; False only reports the decision.
        cluster: Cluster profile: also write the InferenceService the new aliases ask for
            (:func:`components.common.kserve.traffic.sync_inference_service`).

    Returns:
        The decision, the per-version numbers, every check and the action taken.

    Raises:
        DataError: The inference log or the labels cannot be read.
    """
    limits = serving.canary_analysis
    end = pd.Timestamp.now(tz="UTC") if now is None or now == "" else pd.Timestamp(now)
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    start = end - pd.Timedelta(minutes=limits.window_minutes)
    client = tracking.registry_client(tracking_uri)
    aliases = {k: str(v) for k, v in (client.get_registered_model(serving.model_name).aliases or {}).items()}
    env = serving.environment or environments.PROD
    champion_version = aliases.get(environments.serving_alias(env))
    challenger_version = aliases.get(environments.challenger_alias(env))
    result = CanaryAnalysisResult(
        model_name=serving.model_name,
        decision="no_canary",
        reason="",
        champion_version=champion_version,
        challenger_version=challenger_version,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
    )
    if champion_version is None or challenger_version is None:
        result.reason = f"no canary running: champion {champion_version}, challenger {challenger_version}"
    else:
        # Only the columns compared here: the log is scanned with the window as a filter.
        used = (
            "request_id",
            "row",
            "timestamp",
            "model_name",
            "model_version",
            "prediction",
            "predicted_class",
            "status",
            "latency_ms",
        )
        log = read_window(log_dir, start, end, serving.model_name, columns=used)
        for column in ("status", "latency_ms"):
            if column not in log.columns:
                log[column] = "ok" if column == "status" else np.nan
        log["model_version"] = log["model_version"].astype(str)
        if "row" not in log.columns:
            log["row"] = 0
        by_version = {v: log[log["model_version"] == v] for v in (champion_version, challenger_version)}
        champion = _stats(by_version[champion_version], champion_version)
        challenger = _stats(by_version[challenger_version], challenger_version)
        result.champion, result.challenger = champion, challenger
        if min(champion.requests, challenger.requests) < limits.min_requests:
            result.decision = "wait"
            result.reason = (
                f"not enough traffic yet: champion {champion.requests}, challenger {challenger.requests} requests "
                f"in the window; need {limits.min_requests} each"
            )
        else:
            scores = {
                v: rows.loc[rows["status"] == "ok", "prediction"].to_numpy(dtype=float)
                for v, rows in by_version.items()
            }
            answered = {v: rows[rows["status"] == "ok"] for v, rows in by_version.items()}
            if all(_multiclass(rows) for rows in answered.values()):
                # A class is what a multiclass version answers: compare the class mixes, not a score.
                psi, mixes, result.class_agreement = class_comparison(
                    answered[champion_version], answered[challenger_version]
                )
                result.class_mix = {
                    version: {str(k): float(v) for k, v in mixes[role].items()}
                    for role, version in (("champion", champion_version), ("challenger", challenger_version))
                }
            else:
                psi = population_stability_index(scores[champion_version], scores[challenger_version], PSI_BINS)
            result.prediction_psi = psi
            has_labels = labels_path is not None and labels_path != ""
            if has_labels:
                if dataset is None:
                    raise DataError("labels_path needs the dataset spec, to know the label column")
                labels = _read_labels(str(labels_path), dataset)
                for stats in (champion, challenger):
                    stats.labeled, stats.accuracy = _accuracy(by_version[stats.version], labels, dataset.label_column)
            labeled = {v: rows for v, rows in by_version.items()}
            label_column = None
            if has_labels and dataset is not None:
                label_column = dataset.label_column
                labeled = {
                    v: rows.merge(labels, on=["request_id", "row"], how="left") for v, rows in by_version.items()
                }
            result.significance = significance_tests(
                labeled[champion_version], labeled[challenger_version], limits.significance_level, label_column
            )
            result.checks = _checks(champion, challenger, psi, serving, has_labels)
            failed = [c for c in result.checks if not c.passed]
            result.decision = "rollback" if failed else "promote"
            result.reason = (
                "; ".join(f"{c.name} failed: {c.detail}" for c in failed)
                if failed
                else "every check passed: " + "; ".join(c.detail for c in result.checks)
            )
    if act and result.decision in ("promote", "rollback"):
        result.action = _act(result, serving, tracking_uri, cluster)
        result.acted = True
    write_json(result_path, {**result.model_dump(mode="json"), "tracking_uri": redact_uri(tracking_uri)})
    write_text(report_path, _report(result))
    logger.info(
        "canary analysis", extra={"decision": result.decision, "reason": result.reason, "action": result.action}
    )
    return result


def decision_json(result: CanaryAnalysisResult) -> str:
    """The result as one JSON line (for the CLI and pipeline outputs)."""
    return json.dumps(result.model_dump(mode="json"))
