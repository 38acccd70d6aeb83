"""Drift monitoring on the generated churn data, with a champion model registered in a sqlite MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common import tracking
from components.common.drift import categorical_psi, population_stability_index
from components.common.errors import DataError
from components.common.holdout import HoldoutMetrics
from components.common.registry import HOLDOUT_METRICS_TAG
from components.monitor import MonitorResult, monitor
from components.specs import DatasetSpec, MetricSpec, MonitoringSpec, ValueThreshold
from tests.data import (
    CATEGORICAL_FEATURES,
    LABEL,
    NUMERIC_FEATURES,
    START,
    TIMESTAMP,
    Drift,
    churn_spec,
    write_churn,
)

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
IMPORTANCE_FLOOR = MonitoringSpec().importance_floor
METRICS = [MetricSpec(name="roc_auc_score"), MetricSpec(name="log_loss"), MetricSpec(name="accuracy_score")]


# --- PSI by hand ---------------------------------------------------------------------------


def test_psi_is_zero_for_identical_data() -> None:
    values = np.random.default_rng(0).normal(size=1000)
    assert population_stability_index(values, values.copy(), bins=10) == pytest.approx(0.0, abs=1e-12)
    series = pd.Series(["a", "b", "b", "c"] * 25)
    assert categorical_psi(series, series.sample(frac=1, random_state=0)) == pytest.approx(0.0, abs=1e-12)


def test_psi_with_quartile_bins_matches_hand_computation() -> None:
    reference = np.arange(100, dtype=float)  # quartile edges 24.75, 49.5, 74.25: 25 values per bin
    # Current shares per reference quartile: 0.4, 0.3, 0.2, 0.1.
    current = np.concatenate([np.full(40, 10.0), np.full(30, 30.0), np.full(20, 60.0), np.full(10, 90.0)])
    expected = sum((c - 0.25) * math.log(c / 0.25) for c in (0.4, 0.3, 0.2, 0.1))  # = 0.2282
    assert population_stability_index(reference, current, bins=4) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.2282, abs=1e-4)


def test_psi_empty_bins_use_epsilon() -> None:
    reference = np.arange(100, dtype=float)
    current = np.arange(50, dtype=float)  # shares 0.5, 0.5, 0, 0 -> the empty bins get 1e-4
    expected = 2 * (0.5 - 0.25) * math.log(0.5 / 0.25) + 2 * (1e-4 - 0.25) * math.log(1e-4 / 0.25)
    assert population_stability_index(reference, current, bins=4) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(4.2571, abs=1e-4)


def test_psi_ties_values_on_edges_and_missing_values() -> None:
    reference = np.array([0.0] * 50 + [1.0] * 50)  # discrete: edges collapse, 0 and 1 keep their own bins
    assert population_stability_index(reference, np.array([0.0] * 75 + [1.0] * 25), bins=10) == pytest.approx(
        0.25 * math.log(1.5) - 0.25 * math.log(0.5), rel=1e-12
    )
    # Half the current values missing: a missing-value bin with shares 0 (-> 1e-4) and 0.5.
    current = np.array([0.0] * 25 + [1.0] * 25 + [np.nan] * 50)
    expected = 2 * (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert population_stability_index(reference, current, bins=10) == pytest.approx(expected, rel=1e-12)


def test_categorical_psi_matches_hand_computation_including_unseen_categories() -> None:
    reference = pd.Series(["a"] * 50 + ["b"] * 50)
    shifted = pd.Series(["a"] * 75 + ["b"] * 25)
    assert categorical_psi(reference, shifted) == pytest.approx(0.25 * math.log(1.5) - 0.25 * math.log(0.5))
    unseen = pd.Series(["a"] * 50 + ["b"] * 25 + ["c"] * 25)
    expected = -0.25 * math.log(0.5) + (0.25 - 1e-4) * math.log(0.25 / 1e-4)
    assert categorical_psi(reference, unseen) == pytest.approx(expected, rel=1e-12)


# --- monitor on the generated data -------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A model trained on independent stationary data (like a champion from past windows), in MLflow.

    Its version records the metrics evaluation measures on a held-out window of the same distribution,
    as the training pipeline records them: the baseline of live performance.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from components.evaluate import compute_metrics

    folder = tmp_path_factory.mktemp("champion")
    write_churn(folder / "history.parquet", windows=1, rows=3000, seed=11)
    history = pd.read_parquet(folder / "history.parquet")
    encoder = make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), CATEGORICAL_FEATURES), remainder="passthrough"
    )
    # The estimator settings of ctpipe.yaml.
    estimator = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.08, max_leaf_nodes=15, random_state=0)
    model = make_pipeline(encoder, estimator).fit(history[FEATURES], history[LABEL])

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracking.ensure_experiment("monitor-tests", uri)
    with mlflow.start_run() as run:
        info = tracking.log_sklearn_model(model, uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("churn")
    write_churn(folder / "holdout.parquet", windows=1, rows=1000, seed=13)
    holdout = pd.read_parquet(folder / "holdout.parquet")
    record = HoldoutMetrics(metrics=compute_metrics(model, holdout, churn_spec(folder), METRICS), rows=len(holdout))
    version = client.create_model_version(
        "churn", info.model_uri, run.info.run_id, model_id=info.model_id, tags={HOLDOUT_METRICS_TAG: record.to_tag()}
    )
    client.set_registered_model_alias("churn", "champion", version.version)
    # The same model as a version registered before versions recorded their holdout metrics.
    unrecorded = client.create_model_version("churn", info.model_uri, run.info.run_id, model_id=info.model_id)
    return {
        "uri": uri,
        "model_uri": "models:/churn@champion",
        "unrecorded_uri": f"models:/churn/{unrecorded.version}",
        **{f"holdout_{name}": str(value) for name, value in record.metrics.items()},
    }


@pytest.fixture(scope="module")
def windows(churn_frame: pd.DataFrame) -> dict[int, pd.DataFrame]:
    week = (churn_frame[TIMESTAMP] - START).dt.days // 7 + 1
    return {int(w): churn_frame[week == w].reset_index(drop=True) for w in sorted(week.unique())}


def _run(
    tmp_path: Path,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: DatasetSpec,
    champion: dict[str, str] | None,
    metrics: list[MetricSpec] | None = None,
    monitoring: MonitoringSpec | None = None,
) -> MonitorResult:
    reference.to_parquet(tmp_path / "reference.parquet")
    current.to_parquet(tmp_path / "current.parquet")
    return monitor(
        str(tmp_path / "reference.parquet"),
        str(tmp_path / "current.parquet"),
        spec,
        monitoring or MonitoringSpec(),
        str(tmp_path / "result.json"),
        str(tmp_path / "report.html"),
        model_uri=champion["model_uri"] if champion else None,
        tracking_uri=champion["uri"] if champion else None,
        metrics=metrics,
    )


def _halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    return shuffled.iloc[: len(frame) // 2], shuffled.iloc[len(frame) // 2 :].reset_index(drop=True)


def test_same_distribution_is_ok_and_reports_performance(
    tmp_path: Path, windows: dict[int, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    reference, current = _halves(windows[1])
    result = _run(tmp_path, reference, current, dataset_spec, champion, METRICS)

    assert result.decision == "ok", result.reasons
    assert result.reasons[0].startswith("No significant drift")
    assert {f.severity for f in result.features} == {"ok"}
    assert (result.rows_reference, result.rows_current) == (300, 300)
    assert result.prediction_psi is not None and result.prediction_psi < 0.1
    importances = [f.importance for f in result.features]
    assert all(i is not None and i >= 0 for i in importances)
    assert sum(i for i in importances if i is not None) == pytest.approx(1.0)

    assert result.performance is not None
    assert set(result.performance) == {
        *(m.short_name for m in METRICS),
        *(f"reference_{m.short_name}" for m in METRICS),
    }
    scored = current.assign(score=0.0)
    from sklearn.metrics import roc_auc_score

    model = tracking.load_sklearn_model(champion["model_uri"], champion["uri"])
    scored["score"] = model.predict_proba(current[FEATURES])[:, 1]
    assert result.performance["roc_auc_score"] == pytest.approx(roc_auc_score(scored[LABEL], scored["score"]))
    assert 0.6 < result.performance["roc_auc_score"] <= 1.0
    assert result.performance["accuracy_score"] == pytest.approx(
        float((model.predict(current[FEATURES]) == current[LABEL]).mean())
    )


def test_drifted_window_asks_for_retraining_and_names_the_feature(
    tmp_path: Path, windows: dict[int, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    result = _run(tmp_path, windows[1], windows[2], dataset_spec, champion, METRICS)

    assert result.decision == "retrain"
    by_name = {f.feature: f for f in result.features}
    for name in ("support_calls", "satisfaction_score"):  # the covariate shift of DriftSpec
        drift = by_name[name]
        assert drift.severity == "retrain"
        assert drift.psi >= 0.25 and drift.p_value < 0.01
        assert drift.importance is not None and drift.importance >= IMPORTANCE_FLOOR
        assert any(f"'{name}'" in r and "retrain" in r for r in result.reasons)
    assert by_name["marketing_score"].severity == "ok"
    assert result.prediction_psi is not None and result.prediction_psi >= 0.2
    assert any("Predictions drifted" in r for r in result.reasons)
    # Concept and covariate drift make the old model's probabilities worse on the new window.
    assert result.performance is not None
    assert result.performance["log_loss"] > result.performance["reference_log_loss"]

    saved = MonitorResult.model_validate(json.loads((tmp_path / "result.json").read_text()))
    assert saved == result
    page = (tmp_path / "report.html").read_text()
    assert "RETRAIN" in page and "support_calls" in page and "Performance" in page
    assert page.count("<img") == 1 + len(FEATURES)  # predictions plus every feature (12 <= MAX_PLOTS)
    assert page.count("data:image/png;base64,") == page.count("<img")


def test_drift_in_a_feature_the_model_ignores_only_warns(
    tmp_path: Path, windows: dict[int, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    reference, current = _halves(windows[1])
    current = current.copy()
    current["marketing_score"] += 3 * current["marketing_score"].std()  # marketing_score has no effect on churn

    result = _run(tmp_path, reference, current, dataset_spec, champion, METRICS)

    marketing = next(f for f in result.features if f.feature == "marketing_score")
    assert marketing.psi >= 0.25 and marketing.p_value < 1e-10
    assert marketing.importance is not None and marketing.importance < IMPORTANCE_FLOOR
    assert marketing.severity == "warn"
    assert result.decision == "warn", result.reasons
    assert any("'marketing_score'" in r and "barely uses it" in r for r in result.reasons)
    # Live metrics on 300 labelled rows are too noisy to ask for retraining on their own.
    assert not any("-> retrain" in r for r in result.reasons)

    # The same data without a model cannot tell the feature is unused: it asks for retraining.
    unweighted = _run(tmp_path, reference, current, dataset_spec, None)
    assert unweighted.decision == "retrain"
    assert unweighted.prediction_psi is None and unweighted.performance is None


def test_same_drift_in_an_important_feature_asks_for_retraining(
    tmp_path: Path, windows: dict[int, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    reference, current = _halves(windows[1])
    current = current.copy()
    current["support_calls"] += 3 * current["support_calls"].std()

    result = _run(tmp_path, reference, current.drop(columns=[LABEL]), dataset_spec, champion, METRICS)

    assert result.decision == "retrain"
    assert next(f for f in result.features if f.feature == "support_calls").severity == "retrain"
    assert result.performance is None  # no labels in the current window


def test_few_current_rows_cap_the_decision_at_warn(
    tmp_path: Path, windows: dict[int, pd.DataFrame], dataset_spec: DatasetSpec
) -> None:
    result = _run(tmp_path, windows[1], windows[2].head(80), dataset_spec, None)

    assert any(f.severity == "retrain" for f in result.features)
    assert result.decision == "warn"
    assert any("Only 80 current rows" in r for r in result.reasons)


@pytest.fixture(scope="module")
def stationary(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two labelled windows of 1200 rows from the champion's distribution (enough labels to act on)."""
    path = tmp_path_factory.mktemp("stationary") / "churn.parquet"
    write_churn(path, windows=2, rows=1200, seed=12)
    frame = pd.read_parquet(path)
    first = frame[TIMESTAMP] < START + pd.Timedelta(days=7)
    return frame[first].reset_index(drop=True), frame[~first].reset_index(drop=True)


def test_live_metric_below_its_threshold_asks_for_retraining(
    tmp_path: Path, stationary: tuple[pd.DataFrame, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    reference, current = stationary
    strict = [MetricSpec(name="roc_auc_score", threshold=ValueThreshold(lower_bound=0.99))]
    result = _run(tmp_path, reference, current, dataset_spec, champion, strict)

    assert {f.severity for f in result.features} == {"ok"}
    assert result.decision == "retrain"
    assert any("roc_auc_score" in r and "outside its threshold [0.99, None] -> retrain" in r for r in result.reasons)


def test_live_metric_drop_asks_for_retraining(
    tmp_path: Path, stationary: tuple[pd.DataFrame, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    reference, current = stationary
    result = _run(tmp_path, reference, current, dataset_spec, champion, METRICS)
    assert result.decision == "ok", result.reasons

    # The same inputs with a quarter of the labels flipped: the world changed, the features did not.
    flipped = current.copy()
    rows = flipped.sample(frac=0.25, random_state=0).index
    flipped.loc[rows, LABEL] = 1 - flipped.loc[rows, LABEL]
    result = _run(tmp_path, reference, flipped, dataset_spec, champion, METRICS)

    assert result.performance is not None
    # The reference is what evaluation measured on the champion's holdout, recorded on its version.
    assert result.baseline is not None and result.baseline.source == "holdout"
    assert result.performance["reference_roc_auc_score"] == float(champion["holdout_roc_auc_score"])
    drop = result.performance["reference_roc_auc_score"] - result.performance["roc_auc_score"]
    assert drop > 0.05
    assert {f.severity for f in result.features} == {"ok"} and result.decision == "retrain"
    assert any(r.startswith("Live roc_auc_score") and "below its holdout value" in r for r in result.reasons)
    assert any(r.startswith("Live roc_auc_score") and "-> retrain" in r for r in result.reasons)
    assert any(r.startswith("Live log_loss") and "no retraining signal" in r for r in result.reasons)


def test_a_version_without_a_holdout_record_gets_no_baseline_verdict(
    tmp_path: Path, stationary: tuple[pd.DataFrame, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    """Registered before versions recorded their holdout: only the thresholds judge live metrics, and it says so."""
    reference, current = stationary
    flipped = current.copy()
    rows = flipped.sample(frac=0.25, random_state=0).index
    flipped.loc[rows, LABEL] = 1 - flipped.loc[rows, LABEL]
    unrecorded = {"uri": champion["uri"], "model_uri": champion["unrecorded_uri"]}
    result = _run(tmp_path, reference, flipped, dataset_spec, unrecorded, METRICS)

    assert result.baseline is not None and result.baseline.source == "none"
    assert HOLDOUT_METRICS_TAG in result.baseline.note and champion["unrecorded_uri"] in result.baseline.note
    assert result.performance is not None and not any(k.startswith("reference_") for k in result.performance)
    assert result.decision == "ok", result.reasons
    assert any(r.startswith("No performance baseline") for r in result.reasons)
    assert "no recorded holdout metrics" in (tmp_path / "report.html").read_text()

    # Its absolute threshold still applies.
    strict = [MetricSpec(name="roc_auc_score", threshold=ValueThreshold(lower_bound=0.99))]
    assert _run(tmp_path, reference, flipped, dataset_spec, unrecorded, strict).decision == "retrain"


def test_missing_feature_column_is_named(
    tmp_path: Path, windows: dict[int, pd.DataFrame], dataset_spec: DatasetSpec
) -> None:
    with pytest.raises(DataError, match=r"current\.parquet: missing feature column\(s\) \['region'\]"):
        _run(tmp_path, windows[1], windows[2].drop(columns=["region"]), dataset_spec, None)
    assert not (tmp_path / "result.json").exists()


# --- the serving inference log as the current data ----------------------------------------


def _log_requests(
    log_dir: Path,
    window: pd.DataFrame,
    served: np.ndarray,
    start: pd.Timestamp,
    exclude: tuple[str, ...] = (),
    hash_columns: tuple[str, ...] = (),
) -> None:
    """Log ``window`` as the model server would: one request per row, a minute apart, via the shared writer.

    ``exclude`` and ``hash_columns`` protect columns as ``serving.inference_log.exclude`` / ``hash`` do.
    """
    from components.common.inference_log import append_batch, protect

    frame = window.drop(columns=[LABEL, TIMESTAMP]).assign(
        request_id=[f"r{i}" for i in range(len(window))],
        timestamp=start + pd.to_timedelta(np.arange(len(window)), unit="min"),
        model_name="churn",
        model_version="1",
        prediction=served,
        status="ok",
        latency_ms=1.0,
    )
    # Two batches, as a server flushes them; the second one spans the next UTC date.
    half = len(frame) // 2
    for batch in (frame.iloc[:half], frame.iloc[half:]):
        append_batch(log_dir, protect(batch, exclude, hash_columns, key=b"test-key"))


def _monitor_log(
    tmp_path: Path, reference: pd.DataFrame, truth: pd.DataFrame, spec: DatasetSpec, champion: dict[str, str], **window
) -> MonitorResult:
    reference.to_parquet(tmp_path / "reference.parquet")
    truth.to_parquet(tmp_path / "truth.parquet")
    return monitor(
        str(tmp_path / "reference.parquet"),
        str(tmp_path / "inference_log"),
        spec,
        MonitoringSpec(current_source="inference_log"),
        str(tmp_path / "result.json"),
        str(tmp_path / "report.html"),
        model_uri=champion["model_uri"],
        tracking_uri=champion["uri"],
        metrics=METRICS,
        labels_path=str(tmp_path / "truth.parquet"),
        **window,
    )


def test_inference_log_as_current_uses_served_predictions_and_joins_ground_truth(
    tmp_path: Path, stationary: tuple[pd.DataFrame, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    from sklearn.metrics import accuracy_score, roc_auc_score

    from components.monitor import _scores

    reference, current = stationary
    model = tracking.load_sklearn_model(champion["model_uri"], champion["uri"])
    served = model.predict_proba(current[FEATURES])[:, 1]
    start = pd.Timestamp("2026-02-01T12:00:00Z")
    _log_requests(tmp_path / "inference_log", current, served, start)
    assert len(list((tmp_path / "inference_log").glob("date=*/part-*.parquet"))) >= 2
    # A failed request in the window (a 5xx, no prediction) is not data to compare.
    from components.common.inference_log import append_batch

    failed = current.head(1).drop(columns=[LABEL, TIMESTAMP])
    append_batch(
        tmp_path / "inference_log",
        failed.assign(request_id="x", timestamp=start, model_name="churn", model_version="1", prediction=None)
        .assign(status="error")
        .astype({"prediction": float}),
    )
    # A shadow challenger's answers to the same requests were never served: monitoring leaves them out.
    shadow = current.drop(columns=[LABEL, TIMESTAMP]).assign(
        request_id=[f"r{i}" for i in range(len(current))],
        timestamp=start + pd.to_timedelta(np.arange(len(current)), unit="min"),
        model_name="churn",
        model_version="2",
        model_alias="shadow",
        prediction=0.99,
        status="ok",
        latency_ms=1.0,
    )
    append_batch(tmp_path / "inference_log", shadow)

    result = _monitor_log(tmp_path, reference, current, dataset_spec, champion)

    assert result.decision == "ok", result.reasons
    assert result.rows_current == len(current)
    assert result.prediction_psi == pytest.approx(
        population_stability_index(_scores(model, reference, dataset_spec), served, bins=10)
    )
    # Live performance: the served scores joined with the labels that arrived, on the entity column.
    assert result.performance is not None
    assert result.performance["roc_auc_score"] == pytest.approx(roc_auc_score(current[LABEL], served))
    assert result.performance["accuracy_score"] == pytest.approx(
        accuracy_score(current[LABEL], model.predict(current[FEATURES]))
    )

    # Only the requests in the window count: the first 100 minutes.
    window = _monitor_log(
        tmp_path,
        reference,
        current,
        dataset_spec,
        champion,
        window_start=str(start),
        window_end=str(start + pd.Timedelta(minutes=100)),
    )
    assert window.rows_current == 100
    assert window.performance is not None
    assert window.performance["roc_auc_score"] == pytest.approx(roc_auc_score(current[LABEL][:100], served[:100]))


def test_inference_log_that_protects_features_measures_the_others_and_says_which_were_not(
    tmp_path: Path,
    stationary: tuple[pd.DataFrame, pd.DataFrame],
    dataset_spec: DatasetSpec,
    champion: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Personal data left out of the log on purpose costs its own drift measurement, nothing else."""
    from sklearn.metrics import roc_auc_score

    from components.monitor import _scores

    reference, current = stationary
    model = tracking.load_sklearn_model(champion["model_uri"], champion["uri"])
    served = model.predict_proba(current[FEATURES])[:, 1]
    _log_requests(
        tmp_path / "inference_log",
        current,
        served,
        pd.Timestamp("2026-02-01T12:00:00Z"),
        exclude=("region",),
        hash_columns=("tenure_months",),
    )

    result = _monitor_log(tmp_path, reference, current, dataset_spec, champion)

    expected = {
        "region": "excluded from the inference log by serving.inference_log.exclude",
        "tenure_months": "hashed in the inference log by serving.inference_log.hash (its values are digests)",
    }
    assert result.unmeasured == expected
    assert sorted(f.feature for f in result.features) == sorted(set(FEATURES) - set(expected))
    assert result.decision == "ok", result.reasons
    for name, why in expected.items():
        assert f"Drift of '{name}' is not measured: {why}." in result.reasons
    # Prediction drift and live performance use the served scores, as without protection.
    assert result.prediction_psi == pytest.approx(
        population_stability_index(_scores(model, reference, dataset_spec), served, bins=10)
    )
    assert result.performance is not None
    assert result.performance["roc_auc_score"] == pytest.approx(roc_auc_score(current[LABEL], served))
    assert json.loads((tmp_path / "result.json").read_text())["unmeasured"] == expected
    page = (tmp_path / "report.html").read_text()
    assert "Features not measured" in page and all(why in page for why in expected.values())
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    decisions = [line for line in lines if line.get("msg") == "monitoring decision"]
    assert decisions and decisions[-1]["unmeasured"] == expected


def test_inference_log_with_drifted_requests_or_wrong_served_scores_asks_for_retraining(
    tmp_path: Path,
    windows: dict[int, pd.DataFrame],
    stationary: tuple[pd.DataFrame, pd.DataFrame],
    dataset_spec: DatasetSpec,
    champion: dict[str, str],
) -> None:
    model = tracking.load_sklearn_model(champion["model_uri"], champion["uri"])
    start = pd.Timestamp("2026-02-01T00:00:00Z")
    drifted = windows[2]
    _log_requests(tmp_path / "inference_log", drifted, model.predict_proba(drifted[FEATURES])[:, 1], start)
    result = _monitor_log(tmp_path, windows[1], drifted, dataset_spec, champion)
    assert result.decision == "retrain"
    assert {f.feature for f in result.features if f.severity == "retrain"} >= {"support_calls", "satisfaction_score"}

    # Familiar inputs, but the server answered with other scores: it is the served values that are monitored.
    reference, current = stationary
    other = tmp_path / "other"
    other.mkdir()
    _log_requests(other / "inference_log", current, np.full(len(current), 0.9), start)
    result = _monitor_log(other, reference, current, dataset_spec, champion)
    assert {f.severity for f in result.features} == {"ok"}
    assert result.prediction_psi is not None and result.prediction_psi >= 0.2
    assert result.decision == "retrain"
    assert any("Predictions drifted" in r for r in result.reasons)


def test_inference_log_errors_name_the_folder_and_the_join_column(
    tmp_path: Path, stationary: tuple[pd.DataFrame, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    reference, current = stationary
    with pytest.raises(DataError, match=r"inference_log: no inference log here"):
        _monitor_log(tmp_path, reference, current, dataset_spec, champion)
    _log_requests(tmp_path / "inference_log", current, np.full(len(current), 0.5), pd.Timestamp("2026-02-01", tz="UTC"))
    with pytest.raises(DataError, match=r"no answered requests in \[2030-01-01"):
        _monitor_log(tmp_path, reference, current, dataset_spec, champion, window_start="2030-01-01")
    with pytest.raises(DataError, match=r"truth\.parquet: missing column\(s\) \['customer_id'\] needed to join"):
        _monitor_log(tmp_path, reference, current.drop(columns=["customer_id"]), dataset_spec, champion)


def test_inference_log_of_requests_by_feature_values_is_monitored_without_live_performance(
    tmp_path: Path, windows: dict[int, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    """Apps that send feature values name no entity: no label can be matched, drift is still measured."""
    model = tracking.load_sklearn_model(champion["model_uri"], champion["uri"])
    drifted = windows[2]
    anonymous = drifted.drop(columns=["customer_id"])
    _log_requests(
        tmp_path / "inference_log",
        anonymous,
        model.predict_proba(drifted[FEATURES])[:, 1],
        pd.Timestamp("2026-02-01", tz="UTC"),
    )
    result = _monitor_log(tmp_path, windows[1], drifted, dataset_spec, champion)  # the truth has the ids
    assert result.rows_current == len(drifted)
    assert result.performance is None
    assert result.decision == "retrain"
    assert {f.feature for f in result.features if f.severity == "retrain"} >= {"support_calls", "satisfaction_score"}


@pytest.mark.parametrize(("feature", "expected"), [("support_calls", "retrain"), ("marketing_score", "warn")])
def test_generated_drift_of_equal_size_retrains_only_for_an_important_feature(
    tmp_path: Path, dataset_spec: DatasetSpec, champion: dict[str, str], feature: str, expected: str
) -> None:
    """The generator shifts one feature by 1.5 standard deviations from window 2 on, the concept unchanged."""
    path = tmp_path / "generated.parquet"
    drift = Drift(start=2, shift={feature: 1.5}, price=1.0)
    write_churn(path, windows=2, rows=1200, seed=21, drift=drift)
    frame = pd.read_parquet(path)
    first = frame[TIMESTAMP] < START + pd.Timedelta(days=7)
    reference, current = frame[first].reset_index(drop=True), frame[~first].reset_index(drop=True)

    result = _run(tmp_path, reference, current, dataset_spec, champion, METRICS)

    drifted = next(f for f in result.features if f.feature == feature)
    assert drifted.psi >= 0.25 and drifted.p_value < 1e-6  # the same, strong, significant drift either way
    assert result.decision == expected, result.reasons


# --- the drift score: importance x PSI, weighted as configured ------------------------------------


def test_the_importance_floor_and_the_drift_score_threshold_change_the_verdict(
    tmp_path: Path, windows: dict[int, pd.DataFrame], dataset_spec: DatasetSpec, champion: dict[str, str]
) -> None:
    reference, current = _halves(windows[1])
    ignored = current.copy()
    ignored["marketing_score"] += 3 * ignored["marketing_score"].std()  # strong drift, a feature the model ignores
    default = _run(tmp_path, reference, ignored, dataset_spec, champion)
    marketing = next(f for f in default.features if f.feature == "marketing_score")
    assert marketing.importance is not None and marketing.importance < IMPORTANCE_FLOOR
    assert marketing.score == pytest.approx(marketing.importance * marketing.psi)
    assert (marketing.severity, default.decision) == ("warn", "warn")

    # No floor: every feature's PSI counts, as without a model.
    unfloored = _run(
        tmp_path, reference, ignored, dataset_spec, champion, monitoring=MonitoringSpec(importance_floor=0)
    )
    assert next(f for f in unfloored.features if f.feature == "marketing_score").severity == "retrain"
    assert unfloored.decision == "retrain"

    # A moderate shift of a feature the model leans on: below psi_retrain, so only a warning by default ...
    leaned = current.copy()
    leaned["satisfaction_score"] -= 0.4 * leaned["satisfaction_score"].std()
    moderate = _run(tmp_path, reference, leaned, dataset_spec, champion)
    leaned_drift = next(f for f in moderate.features if f.feature == "satisfaction_score")
    assert MonitoringSpec().psi_warn <= leaned_drift.psi < MonitoringSpec().psi_retrain, leaned_drift
    assert leaned_drift.severity == "warn" and leaned_drift.score is not None
    # ... and a retraining signal once its score reaches drift_score_retrain.
    scored = MonitoringSpec(drift_score_retrain=round(leaned_drift.score * 0.9, 6))
    strict = _run(tmp_path, reference, leaned, dataset_spec, champion, monitoring=scored)
    assert next(f for f in strict.features if f.feature == "satisfaction_score").severity == "retrain"
    assert any("'satisfaction_score'" in r and "drift score >= drift_score_retrain" in r for r in strict.reasons)
    # The ignored feature's score stays below the same threshold: the floor still spares it.
    ignored_scored = _run(tmp_path, reference, ignored, dataset_spec, champion, monitoring=scored)
    assert next(f for f in ignored_scored.features if f.feature == "marketing_score").severity == "warn"
    page = (tmp_path / "report.html").read_text()
    assert "score (importance x PSI)" in page and "importance floor 0.05" in page
