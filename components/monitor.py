"""Drift monitoring: compare a current window with the reference the champion was trained on.

Per feature it measures the population stability index (PSI, quantile bins taken from the
reference) and a significance test (two-sample Kolmogorov-Smirnov for numeric features,
chi-square on category counts for categorical ones). With a model it also measures
prediction drift (PSI of the scores), the model's permutation importance on a labelled
reference sample and, when the current window has labels, live performance.

The decision is the worst of the individual severities:

- each feature's severity comes from its PSI, its significance (p-value below ``ks_pvalue``)
  and, when importances are known, its drift score, importance x PSI, against
  ``importance_floor`` and ``drift_score_retrain`` (:mod:`components.common.drift_score`). Strong
  drift in a feature the model ignores therefore gives at most ``warn`` by default;
- prediction PSI of at least ``prediction_psi_retrain`` gives ``retrain``; of at least
  ``psi_warn`` gives ``warn``;
- live performance is compared with the champion's **evaluation holdout**, recorded on its
  registered version (:mod:`components.common.holdout`), not with the training rows, which
  would make every window look like a drop; the verdict rules are in
  :mod:`components.common.baseline`. Labels come from the window, or arrive later from
  ``monitoring.labels_source``, joined on entity and time (:mod:`components.common.labels`);
- with fewer than ``min_rows`` current rows the decision is capped at ``warn``.

The reference table (the champion's training rows, or a reference window) stays the reference
*distribution* for feature drift, and the sample permutation importance is measured on. Prediction
drift compares with the scores evaluation recorded on the version's held-out rows, when it did:
the model's scores of rows it was trained on are more confident than of rows it has not seen.

Everything is vectorised, and each numeric feature is sorted once per side for its PSI, KS test
and plot (:mod:`components.common.drift`): a million rows by twenty features take under 2 s on two
cores, report included (docs/monitoring.md, "Scale").
"""

from __future__ import annotations

import html
import time
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from components.common import report, storage
from components.common.baseline import judge_performance, metric_values
from components.common.drift import (
    CategoricalDrift,
    Histograms,
    NumericDrift,
    density_histograms,
    measure_features,
    psi_sorted,
    sorted_sample,
)
from components.common.drift_score import FeatureDrift, drift_score, feature_reason, feature_severity
from components.common.errors import DataError
from components.common.holdout import Baseline
from components.common.io import write_json, write_text
from components.common.labels import LabelJoin, join_late_labels, join_latest_label
from components.common.logs import get_logger
from components.common.multiclass import class_probabilities
from components.common.multiclass_drift import ClassDrift, class_drift
from components.common.served_window import read_served_window, served_labels, served_probabilities
from components.common.storage import read_table
from components.specs import DatasetSpec, MetricSpec, MonitoringSpec

Severity = Literal["ok", "warn", "retrain"]

# Labelled reference rows used for permutation importance, and its repeats; small and seeded.
IMPORTANCE_SAMPLE = 5_000
IMPORTANCE_REPEATS = 3
RANDOM_SEED = 0
# Distribution plots in the HTML report, the features with the largest PSI first.
MAX_PLOTS = 12
# Categories shown per bar chart; the rest are summed into "(other)".
MAX_CATEGORIES = 15
# A feature name in a plot title is cut to this many characters (the features table has it whole).
NAME_CHARS = 32
# Table locations read as Parquet, as storage.read_table reads them (KFP artifact paths have no suffix).
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq", ""})

_RANK: dict[str, int] = {"ok": 0, "warn": 1, "retrain": 2}
_BADGE = {"ok": "ok", "warn": "warn", "retrain": "bad"}

log = get_logger("monitor")


class MonitorResult(BaseModel):
    """Outcome of one monitoring run."""

    decision: Severity
    reasons: list[str]
    features: list[FeatureDrift]
    prediction_psi: float | None
    performance: dict[str, float] | None
    rows_reference: int
    rows_current: int
    baseline: Baseline | None = Field(
        default=None, description="Where the reference values of live performance came from (with a model)."
    )
    labels: LabelJoin | None = Field(default=None, description="How labels from monitoring.labels_source matched.")
    class_drift: ClassDrift | None = Field(
        default=None,
        description="Multiclass: drift of the predicted-class mix and of each class's probability; "
        "prediction_psi is the largest of them.",
    )
    unmeasured: dict[str, str] = Field(
        default_factory=dict,
        description="Features whose drift was not measured, each with why (e.g. excluded from the inference log "
        "by serving.inference_log.exclude); they have no entry in features.",
    )
    prediction_reference: str | None = Field(
        default=None,
        description="What prediction drift compared the current scores with: the version's holdout scores, "
        "or the model's scores on the reference rows when none are recorded (with a model).",
    )


# --- statistics --------------------------------------------------------------------------


class _Stopwatch:
    """Seconds spent per phase of a run, for the log (and the benchmark that reads it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"read": 0.0, "model": 0.0, "statistics": 0.0, "report": 0.0}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to ``phase``."""
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now


def _read_columns(location: str, columns: list[str], dictionary: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The table with only those of ``columns`` it has, as ``read_table`` reads it; and all its column names.

    A Parquet table is read column by column, and decoding text is most of the cost of reading: the
    text columns in ``dictionary`` come as categoricals, each distinct value decoded once (counts are
    the same). Anything else (CSV), and any failure, goes to ``read_table``, which reads the table
    whole or raises the error that names the problem.
    """
    fs, path = storage.filesystem(location)
    if PurePosixPath(path).suffix.lower() in _PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        columns = list(dict.fromkeys(columns))
        try:
            with storage.store_errors(location):
                remote = fs if storage.is_remote(location) else None
                # read_dictionary leaves a column that is not text as it is.
                if fs.isdir(path):
                    dataset = pq.ParquetDataset(path, filesystem=remote, read_dictionary=dictionary or None)
                    names = list(dataset.schema.names)
                    table = dataset.read(columns=[c for c in columns if c in names], use_pandas_metadata=True)
                else:
                    # A file is read by row group, not in batches as a dataset is: each column comes in one
                    # piece, which converts without a copy. Its reader wants existing dictionary columns only.
                    metadata = pq.read_metadata(path, filesystem=remote)
                    names = list(metadata.schema.to_arrow_schema().names)
                    text = [c for c in dictionary if c in names] or None
                    with pq.ParquetFile(path, filesystem=remote, metadata=metadata, read_dictionary=text) as file:
                        table = file.read(columns=[c for c in columns if c in names], use_pandas_metadata=True)
            # One block per column: numbers are not copied into one 2-D block.
            return table.to_pandas(split_blocks=True), names
        except (OSError, ValueError):  # missing, empty or not Parquet: read_table names the problem
            pass
    frame = read_table(location)
    return frame, [str(name) for name in frame.columns]


def _feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: DatasetSpec,
    monitoring: MonitoringSpec,
    importances: dict[str, float] | None,
    columns: list[str],
) -> tuple[list[FeatureDrift], dict[str, NumericDrift | CategoricalDrift]]:
    """Each of ``columns``' drift and severity, most severe first, and the measurements its plot is drawn from."""
    # Finer plot bins than the PSI's quantile bins, to show the shape.
    plot_bins = max(20, 3 * monitoring.bins)
    spec_numeric = set(spec.numeric_features)
    measured = measure_features(reference, current, columns, spec_numeric, monitoring.bins, plot_bins)
    features: list[FeatureDrift] = []
    for name, drift in measured.items():
        importance = None if importances is None else importances[name]
        severity = feature_severity(drift.psi, drift.p_value, importance, monitoring)
        features.append(
            FeatureDrift(
                feature=name,
                kind="numeric" if name in spec_numeric else "categorical",
                psi=drift.psi,
                statistic=drift.statistic,
                p_value=drift.p_value,
                importance=importance,
                score=drift_score(drift.psi, importance),
                severity=severity,
            )
        )
    features.sort(key=lambda f: (-_RANK[f.severity], -f.psi))
    return features, measured


# --- model -------------------------------------------------------------------------------


def _scores(model: Any, frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    if spec.task == "binary_classification":
        return np.asarray(model.predict_proba(frame[spec.feature_columns])[:, 1], dtype=float)
    return np.asarray(model.predict(frame[spec.feature_columns]), dtype=float)


def _reference_scores(
    model: Any, reference: pd.DataFrame, spec: DatasetSpec, baseline: Baseline | None
) -> tuple[np.ndarray, str]:
    """Prediction drift's reference scores, and what they are in one phrase.

    The holdout scores recorded on the version when there are any (quantiles: a sample of
    equally likely scores); else the model's own scores on the reference rows.
    """
    if baseline is not None and baseline.score_quantiles:
        return (
            np.asarray(baseline.score_quantiles, dtype=float),
            f"the scores evaluation measured on the {baseline.rows} held-out rows of {baseline.model}",
        )
    return _scores(model, reference, spec), "the model's scores on the reference rows (no holdout scores recorded)"


def _importances(model: Any, reference: pd.DataFrame, spec: DatasetSpec) -> dict[str, float] | None:
    """Permutation importance on a seeded labelled reference sample, clipped at 0 and normalised to sum 1."""
    from sklearn.inspection import permutation_importance

    labelled = reference[reference[spec.label_column].notna()]
    if len(labelled) > IMPORTANCE_SAMPLE:
        labelled = labelled.sample(IMPORTANCE_SAMPLE, random_state=RANDOM_SEED)
    y = labelled[spec.label_column]
    binary = spec.task == "binary_classification" and y.nunique() == 2
    # Accuracy for multiclass too: a one-vs-rest AUC is undefined on a sample that lacks a class.
    scoring = "r2" if spec.task == "regression" else ("roc_auc" if binary else "accuracy")
    result = permutation_importance(
        model,
        labelled[spec.feature_columns],
        y,
        scoring=scoring,
        n_repeats=IMPORTANCE_REPEATS,
        random_state=RANDOM_SEED,
    )
    raw = np.clip(np.asarray(result.importances_mean, dtype=float), 0.0, None)
    if raw.sum() <= 0:
        return None
    return dict(zip(spec.feature_columns, (raw / raw.sum()).tolist(), strict=True))


# --- decision ----------------------------------------------------------------------------


def _worst(severities: list[Severity]) -> Severity:
    return max(severities, key=_RANK.__getitem__, default="ok")


# --- entry point -------------------------------------------------------------------------


def monitor(
    reference_path: str,
    current_path: str,
    spec: DatasetSpec,
    monitoring: MonitoringSpec,
    result_path: str,
    report_path: str,
    model_uri: str | None = None,
    tracking_uri: str | None = None,
    metrics: list[MetricSpec] | None = None,
    labels_path: str | None = None,
    window_start: str | None = None,
    window_end: str | None = None,
) -> MonitorResult:
    """Measure drift of ``current_path`` against ``reference_path`` and decide ok / warn / retrain.

    With ``monitoring.current_source`` ``"inference_log"``, ``current_path`` is the serving
    inference log folder (layout in :mod:`components.common.inference_log`): the requests
    answered in ``[window_start, window_end)`` are the current data, and their served
    predictions (not a re-scoring) are compared with the model's scores on the reference. A feature
    the log excludes or hashes (``serving.inference_log``) is not measured: the result's
    ``unmeasured``, its reasons, the report and the log say which and why.

    Args:
        reference_path: Reference table (the champion's training reference), CSV or Parquet.
        current_path: Current window, CSV or Parquet; or the inference log folder.
        spec: Dataset spec naming the feature and label columns.
        monitoring: Thresholds.
        result_path: JSON file for the ``MonitorResult`` (written atomically).
        report_path: Self-contained HTML report (written atomically).
        model_uri: Model to measure prediction drift, importance and performance with.
        tracking_uri: MLflow tracking URI to load ``model_uri`` from.
        metrics: Metrics for live performance, computed when the current window has labels and
            compared with the holdout metrics recorded on the model's registered version.
        labels_path: Ground truth that arrived for the window (a table with the entity and label
            columns), joined with the current rows on the entity column; the latest label per
            entity (by the timestamp column, if present) counts. ``monitoring.labels_source``,
            when set, replaces it (and the window's own labels): joined on entity and time.
        window_start: Inference log only: first request time (UTC, inclusive); none means from the start.
        window_end: Inference log only: last request time (UTC, exclusive); none means up to now.

    Returns:
        The decision, human-readable reasons and the per-feature measurements.

    Raises:
        DataError: A table is missing, unreadable, empty or lacks a feature (or join) column, or the
            inference log excludes or hashes every feature (``serving.inference_log``).
    """
    watch = _Stopwatch()
    late = monitoring.labels_source
    # Only the columns used: the features, the label for a model, the entity (and time) to join labels on.
    # With no model, categorical text is read as categoricals; a model gets the values as read_table reads them.
    wanted = [*spec.feature_columns, *([spec.label_column] if model_uri else [])]
    dictionary = [] if model_uri else list(spec.categorical_features)
    reference, reference_columns = _read_columns(reference_path, wanted, dictionary)
    served: np.ndarray | None = None
    # Features whose drift cannot be measured from the current data, each with why; the rest are measured.
    unmeasured: dict[str, str] = {}
    if monitoring.current_source == "inference_log":
        current, served, unmeasured = read_served_window(
            current_path, window_start, window_end, spec, every_column=spec.task == "multiclass_classification"
        )
        current_columns = [str(name) for name in current.columns]
    else:
        keys = [spec.entity_column] if labels_path else []
        keys += [spec.entity_column, spec.timestamp_column] if late and model_uri else []
        current, current_columns = _read_columns(current_path, [*wanted, *keys], dictionary)
    labels: LabelJoin | None = None
    if late is not None and model_uri:
        # The log's own time is when the prediction was served; a snapshot row's is its event time.
        when = "timestamp" if served is not None else spec.timestamp_column
        if when not in current.columns:
            raise DataError(
                f"{current_path}: no time column '{when}' to join monitoring.labels_source on; found {current_columns}"
            )
        current, labels = join_late_labels(current, current[when], late, spec, current_path, served is not None)
    elif labels_path:
        current = join_latest_label(current, current_path, labels_path, spec, served=served is not None)
    for path, found in ((reference_path, reference_columns), (current_path, current_columns)):
        # An excluded feature is missing from the log on purpose (and reported as unmeasured), not by mistake.
        missing = [c for c in spec.feature_columns if c not in found and not (path == current_path and c in unmeasured)]
        if missing:
            raise DataError(
                f"{path}: missing feature column(s) {missing}; expected {spec.feature_columns}, found {found}"
            )
    for path, frame in ((reference_path, reference), (current_path, current)):
        if frame.empty:
            raise DataError(f"{path}: table has no rows; expected at least one row to compare")
    watch.lap("read")

    model = None
    baseline: Baseline | None = None
    importances: dict[str, float] | None = None
    reasons: list[str] = [] if labels is None else [labels.sentence()]
    reasons += [f"Drift of '{name}' is not measured: {why}." for name, why in unmeasured.items()]
    severities: list[Severity] = []
    if model_uri:
        model, baseline = _champion(model_uri, tracking_uri)
        if spec.label_column in reference.columns and reference[spec.label_column].notna().any():
            importances = _importances(model, reference, spec)
            if importances is None:
                reasons.append("Permutation importance is zero for every feature; drift is not weighted by importance.")
        else:
            reasons.append(f"Reference has no labels ('{spec.label_column}'); drift is not weighted by importance.")
        watch.lap("model")

    columns = [name for name in spec.feature_columns if name not in unmeasured]
    features, measured = _feature_drift(reference, current, spec, monitoring, importances, columns)
    watch.lap("statistics")
    for drift in features:
        if drift.severity != "ok" or drift.psi >= monitoring.psi_retrain:
            reasons.append(feature_reason(drift, monitoring))
        severities.append(drift.severity)

    prediction_psi = None
    performance: dict[str, float] | None = None
    prediction_plot: Histograms | None = None
    classes_drift: ClassDrift | None = None
    prediction_reference: str | None = None
    if model is not None:
        what = ""
        if spec.task == "multiclass_classification":
            prediction_reference = "the model's class probabilities on the reference rows"
            ref_scores = class_probabilities(model, reference[spec.feature_columns])
            cur_scores = served_probabilities(
                model, current, spec, current_path if served is not None else None, reasons, unmeasured
            )
            classes_drift = class_drift(list(model.classes_), ref_scores, cur_scores, monitoring.bins)
            prediction_psi, measured_what = classes_drift.worst
            what = f" on {measured_what}"
        else:
            ref_scores, prediction_reference = _reference_scores(model, reference, spec, baseline)
            cur_scores = served if served is not None else _scores(model, current, spec)
            ref_sorted, cur_sorted = sorted_sample(ref_scores), sorted_sample(cur_scores)
            prediction_psi = psi_sorted(ref_sorted, cur_sorted, monitoring.bins)
            prediction_plot = density_histograms(ref_sorted, cur_sorted, max(20, 3 * monitoring.bins))
        if prediction_psi >= monitoring.prediction_psi_retrain:
            severities.append("retrain")
            reasons.append(
                f"Predictions drifted: PSI {prediction_psi:.3f}{what} >= "
                f"{monitoring.prediction_psi_retrain} -> retrain."
            )
        elif prediction_psi >= monitoring.psi_warn:
            severities.append("warn")
            reasons.append(f"Predictions drifted: PSI {prediction_psi:.3f}{what} >= {monitoring.psi_warn} -> warn.")
        labelled = int(current[spec.label_column].notna().sum()) if spec.label_column in current.columns else 0
        if metrics and labelled and baseline is not None:
            predicted = None if served is None else served_labels(model, served, spec, cur_scores)
            live = metric_values(metrics, model, current, spec, cur_scores, predicted)
            performance, perf_severities, perf_reasons = judge_performance(
                metrics, live, labelled, baseline, monitoring
            )
            severities += perf_severities
            reasons += perf_reasons
        watch.lap("model")

    decision = _worst(severities)
    if len(current) < monitoring.min_rows and decision == "retrain":
        decision = "warn"
        reasons.append(
            f"Only {len(current)} current rows (< min_rows {monitoring.min_rows}): capped at warn, not retrain."
        )
    elif len(current) < monitoring.min_rows:
        reasons.append(f"Only {len(current)} current rows (< min_rows {monitoring.min_rows}): measurements are noisy.")
    if decision == "ok":
        top = max(features, key=lambda f: f.psi)
        why = (
            f"below {monitoring.psi_warn}"
            if top.psi < monitoring.psi_warn
            else f"not significant, p={top.p_value:.2g} >= {monitoring.ks_pvalue}"
        )
        predictions = "" if prediction_psi is None else f"; prediction PSI {prediction_psi:.3f}"
        reasons.insert(
            0, f"No significant drift: largest feature PSI {top.psi:.3f} ('{top.feature}', {why}){predictions}."
        )

    result = MonitorResult(
        decision=decision,
        reasons=reasons,
        features=features,
        prediction_psi=prediction_psi,
        performance=performance,
        rows_reference=len(reference),
        rows_current=len(current),
        baseline=baseline,
        labels=labels,
        class_drift=classes_drift,
        unmeasured=unmeasured,
        prediction_reference=prediction_reference,
    )
    write_json(result_path, result.model_dump(mode="json"))
    write_text(report_path, _report(result, monitoring, measured, prediction_plot))
    watch.lap("report")
    log.info(
        "monitoring decision",
        extra={
            "decision": decision,
            "reasons": reasons,
            "unmeasured": unmeasured,
            "result_path": str(result_path),
            "seconds": {phase: round(spent, 3) for phase, spent in watch.seconds.items()},
        },
    )
    return result


def _champion(model_uri: str, tracking_uri: str | None) -> tuple[Any, Baseline]:
    """The model ``model_uri`` names and the holdout metrics recorded on its version, both of one version.

    An alias is pinned to the version it points to first, so the model scored and the baseline read
    cannot belong to different versions when the alias moves meanwhile.
    """
    from components.common import tracking
    from components.common.errors import ConfigError
    from components.common.holdout import read_baseline

    if not tracking_uri:
        raise ConfigError(f"model_uri {model_uri} needs the tracking_uri of the registry it comes from")
    client = tracking.registry_client(tracking_uri)
    pinned, _ = tracking.pin_model_uri(model_uri, client)
    # Only models:/ URIs of the configured registry, unpickled after the SHA-256 check.
    model = tracking.load_registered_model(pinned, tracking_uri)
    return model, read_baseline(pinned, client)


# --- report ------------------------------------------------------------------------------


def _numeric_plot(title: str, plot: Histograms | None) -> str:
    series = {} if plot is None else {"reference": plot.reference, "current": plot.current}
    return report.histograms(title, np.empty(0) if plot is None else plot.edges, series)


def _categorical_plot(name: str, counted: CategoricalDrift) -> str:
    ref_share = counted.reference_counts / max(counted.reference_counts.sum(), 1)
    cur_share = counted.current_counts / max(counted.current_counts.sum(), 1)
    order = np.argsort(-(ref_share + cur_share))
    labels = [str(c) for c in counted.categories[order[:MAX_CATEGORIES]]]
    ref_top, cur_top = ref_share[order[:MAX_CATEGORIES]], cur_share[order[:MAX_CATEGORIES]]
    if len(order) > MAX_CATEGORIES:
        labels.append("(other)")
        ref_top = np.append(ref_top, ref_share[order[MAX_CATEGORIES:]].sum())
        cur_top = np.append(cur_top, cur_share[order[MAX_CATEGORIES:]].sum())
    positions = np.arange(len(labels))
    fig, ax = report.new_figure()
    ax.bar(positions - 0.2, ref_top, width=0.4, label="reference")
    ax.bar(positions + 0.2, cur_top, width=0.4, label="current")
    ax.set_xticks(positions, labels, rotation=45, ha="right")
    ax.set_ylabel("share of rows")
    ax.set_title(name)
    ax.legend()
    return report.figure(fig)


def _report(
    result: MonitorResult,
    monitoring: MonitoringSpec,
    measured: dict[str, NumericDrift | CategoricalDrift],
    prediction_plot: Histograms | None,
) -> str:
    """The HTML report; the plots are drawn from the histograms and counts the statistics made."""
    summary = (
        f"Decision: {report.badge(result.decision.upper(), _BADGE[result.decision])} &mdash; "
        f"{result.rows_reference} reference rows, {result.rows_current} current rows. "
        f"Thresholds: PSI warn {monitoring.psi_warn}, retrain {monitoring.psi_retrain}; prediction PSI retrain "
        f"{monitoring.prediction_psi_retrain}; p-value {monitoring.ks_pvalue}; importance floor "
        f"{monitoring.importance_floor}; drift score (importance &times; PSI) retrain "
        f"{monitoring.drift_score_retrain if monitoring.drift_score_retrain is not None else 'off'}."
    )
    if result.baseline is not None:
        summary += f" Live-performance reference: {html.escape(result.baseline.note)}."
    if result.prediction_reference is not None:
        summary += f" Prediction-drift reference: {html.escape(result.prediction_reference)}."
    sections = [("Reasons", "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in result.reasons) + "</ul>")]
    rows = [
        {
            "feature": f.feature,
            "kind": f.kind,
            "PSI": f.psi,
            "statistic": f.statistic,
            "p-value": f.p_value,
            "importance": "" if f.importance is None else f"{f.importance:.3f}",
            "score (importance x PSI)": "" if f.score is None else f"{f.score:.4f}",
            "severity": report.badge(f.severity, _BADGE[f.severity]),
        }
        for f in result.features
    ]
    sections.append(("Features", report.table(rows, escape=False)))
    if result.unmeasured:
        rows = [{"feature": name, "why": why} for name, why in result.unmeasured.items()]
        sections.append(("Features not measured", report.table(rows)))
    if result.performance:
        # reference_<metric> values come only from the version's holdout record (components.common.holdout).
        rows = [
            {
                "metric": k,
                "value": v,
                "measured on": "the champion's evaluation holdout" if k.startswith("reference_") else "current window",
            }
            for k, v in result.performance.items()
        ]
        sections.append(("Performance", report.table(rows)))
    if result.class_drift is not None:
        mix = result.class_drift
        rows = [
            {
                "class": name,
                "reference share": mix.reference_share[name],
                "current share": mix.current_share[name],
                "probability PSI": mix.probability_psi[name],
            }
            for name in mix.probability_psi
        ]
        title = f"Predicted classes (class-mix PSI {mix.class_psi:.3f}, chi-square p-value {mix.class_p_value:.3g})"
        sections.append((title, report.table(rows)))
    images = []
    if result.prediction_psi is not None and result.class_drift is None:
        images.append(_numeric_plot(f"prediction (PSI {result.prediction_psi:.3f})", prediction_plot))
    for drift in sorted(result.features, key=lambda f: -f.psi)[:MAX_PLOTS]:
        name = drift.feature if len(drift.feature) <= NAME_CHARS else f"{drift.feature[: NAME_CHARS - 1]}\u2026"
        title = f"{name} (PSI {drift.psi:.3f})"
        plot = measured[drift.feature]
        if isinstance(plot, CategoricalDrift):
            images.append(_categorical_plot(title, plot))
        else:
            images.append(_numeric_plot(title, plot.histograms))
    heading = f"Distributions (top {min(MAX_PLOTS, len(result.features))} features by PSI)"
    sections.append((heading, '<div class="grid">' + "".join(images) + "</div>"))
    return report.page("Drift monitoring", sections, summary=summary)
