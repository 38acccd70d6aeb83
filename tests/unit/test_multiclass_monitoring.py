"""Monitoring and canary analysis of a multiclass model: class-mix and per-class probability drift."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.canary_analysis import class_comparison
from components.common import tracking
from components.common.errors import DataError
from components.common.holdout import HoldoutMetrics
from components.common.inference_log import append_batch, protect
from components.common.multiclass import probability_columns
from components.common.multiclass_drift import class_drift
from components.common.registry import HOLDOUT_METRICS_TAG
from components.evaluate import compute_metrics
from components.monitor import MonitorResult, monitor
from components.specs import DatasetSpec, MetricSpec, ModelSpec, MonitoringSpec
from components.train import train
from tests.data import SEGMENTS, multiclass_frame, multiclass_spec

METRICS = [MetricSpec(name="f1_score", average="macro"), MetricSpec(name="roc_auc_score"), MetricSpec(name="log_loss")]
LOGISTIC = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 1000})


@dataclass
class Champion:
    uri: str
    model_uri: str
    spec: DatasetSpec
    model: object
    holdout: dict[str, float]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    """A logistic regression on stationary five-class data, registered with its holdout metrics."""
    folder = tmp_path_factory.mktemp("multiclass-monitor")
    frame, _ = multiclass_frame(windows=2, rows=1500, seed=21)
    frame.to_parquet(folder / "history.parquet")
    spec = multiclass_spec(folder / "history.parquet")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    trained = train(str(folder / "history.parquet"), spec, LOGISTIC, uri, "monitor", str(folder / "eval.parquet"))
    model = tracking.load_sklearn_model(trained.model_uri, uri)
    holdout = compute_metrics(model, pd.read_parquet(folder / "eval.parquet"), spec, METRICS)
    client = tracking.registry_client(uri)
    client.create_registered_model("segments")
    record = HoldoutMetrics(metrics=holdout, rows=375)
    version = client.create_model_version(
        "segments",
        trained.model_uri,
        trained.run_id,
        model_id=trained.model_uri.removeprefix("models:/"),
        tags={HOLDOUT_METRICS_TAG: record.to_tag()},
    )
    client.set_registered_model_alias("segments", "champion", version.version)
    return Champion(uri, "models:/segments@champion", spec, model, holdout)


def _monitor(tmp_path: Path, champion: Champion, reference: pd.DataFrame, current: str, **kwargs) -> MonitorResult:
    reference.to_parquet(tmp_path / "reference.parquet")
    return monitor(
        str(tmp_path / "reference.parquet"),
        current,
        champion.spec,
        kwargs.pop("monitoring", MonitoringSpec()),
        str(tmp_path / "result.json"),
        str(tmp_path / "report.html"),
        model_uri=champion.model_uri,
        tracking_uri=champion.uri,
        metrics=METRICS,
        **kwargs,
    )


def test_the_same_distribution_shows_no_class_drift_and_live_macro_metrics(tmp_path: Path, champion: Champion) -> None:
    reference, _ = multiclass_frame(windows=1, rows=2000, seed=31)
    current, _ = multiclass_frame(windows=1, rows=2000, seed=32)
    current.to_parquet(tmp_path / "current.parquet")

    result = _monitor(tmp_path, champion, reference, str(tmp_path / "current.parquet"))

    assert result.class_drift is not None
    assert set(result.class_drift.probability_psi) == set(SEGMENTS)
    assert result.class_drift.class_psi < 0.05 and result.prediction_psi is not None and result.prediction_psi < 0.1
    assert sum(result.class_drift.current_share.values()) == pytest.approx(1.0)
    assert result.performance is not None and {"f1_score_macro", "roc_auc_score", "log_loss"} <= set(result.performance)
    assert result.performance["f1_score_macro"] == pytest.approx(champion.holdout["f1_score_macro"], abs=0.08)
    assert result.decision == "ok", result.reasons
    assert "Predicted classes (class-mix PSI" in (tmp_path / "report.html").read_text()


def test_a_shift_that_moves_the_class_mix_asks_for_retraining_and_says_where(
    tmp_path: Path, champion: Champion
) -> None:
    reference, _ = multiclass_frame(windows=1, rows=2000, seed=31)
    # Younger customers: many more of them are predicted 'student'.
    current, _ = multiclass_frame(windows=1, rows=2000, seed=33, shift={"age": -1.5}, shift_start=1)
    current.to_parquet(tmp_path / "current.parquet")

    result = _monitor(tmp_path, champion, reference, str(tmp_path / "current.parquet"))

    drift = result.class_drift
    assert drift is not None
    assert drift.current_share["student"] > drift.reference_share["student"] + 0.1
    assert drift.class_p_value < 1e-6
    assert result.prediction_psi == pytest.approx(max(drift.class_psi, *drift.probability_psi.values()))
    assert result.decision == "retrain"
    predictions = [r for r in result.reasons if r.startswith("Predictions drifted")]
    assert predictions
    assert "predicted-class distribution" in predictions[0] or "probability of class" in predictions[0]


def _monitor_log(folder: Path, champion: Champion, reference: pd.DataFrame) -> MonitorResult:
    """Monitor the inference log in ``folder / "inference_log"`` (``monitoring.current_source: inference_log``)."""
    log_dir = str(folder / "inference_log")
    return _monitor(folder, champion, reference, log_dir, monitoring=MonitoringSpec(current_source="inference_log"))


def _log_window(
    log_dir: Path,
    window: pd.DataFrame,
    features: list[str],
    served: np.ndarray | None,
    hash_columns: tuple[str, ...] = (),
) -> None:
    """Log ``window`` as the model server would, with the ``served`` probabilities (None: without those columns)."""
    names = probability_columns(SEGMENTS)
    probabilities = {} if served is None else {name: served[:, index] for index, name in enumerate(names)}
    logged = window[features].assign(
        request_id=[f"r{i}" for i in range(len(window))],
        timestamp=pd.Timestamp.now(tz="UTC") - pd.to_timedelta(np.arange(len(window)), unit="s"),
        model_name="segments",
        model_version="1",
        prediction=1.0,
        predicted_class="budget",
        status="ok",
        **probabilities,
    )
    append_batch(log_dir, protect(logged, hash_columns=hash_columns, key=b"test-key"))


def test_the_inference_log_served_probabilities_are_what_is_compared(tmp_path: Path, champion: Champion) -> None:
    reference, _ = multiclass_frame(windows=1, rows=1500, seed=31)
    window, _ = multiclass_frame(windows=1, rows=600, seed=34)
    # Served answers that all say 'budget' (as a broken version would): the log's columns must be used.
    served = np.tile(np.eye(len(SEGMENTS))[0], (len(window), 1))
    _log_window(tmp_path / "inference_log", window, champion.spec.feature_columns, served)

    result = _monitor_log(tmp_path, champion, reference)

    assert result.class_drift is not None
    assert result.class_drift.current_share["budget"] == 1.0
    assert result.decision == "retrain"


def test_a_log_without_served_probabilities_whose_features_are_hashed_is_refused(
    tmp_path: Path, champion: Champion
) -> None:
    """The model would have to score digests in place of a hashed feature's values: refused, never measured."""
    reference, _ = multiclass_frame(windows=1, rows=1500, seed=31)
    window, _ = multiclass_frame(windows=1, rows=300, seed=35)
    hashed = champion.spec.numeric_features[0]
    log_dir = tmp_path / "inference_log"
    _log_window(log_dir, window, champion.spec.feature_columns, served=None, hash_columns=(hashed,))

    with pytest.raises(DataError) as raised:
        _monitor_log(tmp_path, champion, reference)

    message = str(raised.value)
    assert str(log_dir) in message and "lacks served probability columns" in message
    assert f"'{hashed}'" in message and "hashed" in message
    assert not (tmp_path / "result.json").exists()

    # The same log with the served probabilities is measured, the hashed feature listed as not measured.
    served = champion.model.predict_proba(window[champion.spec.feature_columns])  # type: ignore[attr-defined]
    other = tmp_path / "served"
    other.mkdir()
    _log_window(other / "inference_log", window, champion.spec.feature_columns, served, hash_columns=(hashed,))
    result = _monitor_log(other, champion, reference)
    assert set(result.unmeasured) == {hashed}
    assert hashed not in {f.feature for f in result.features}


def test_class_drift_by_hand() -> None:
    classes = ["a", "b", "c"]
    reference = np.array([[0.8, 0.1, 0.1]] * 50 + [[0.1, 0.8, 0.1]] * 50)
    current = np.array([[0.1, 0.1, 0.8]] * 100)
    drift = class_drift(classes, reference, current, bins=5)
    assert drift.reference_share == {"a": 0.5, "b": 0.5, "c": 0.0}
    assert drift.current_share == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert drift.class_psi > 5 and drift.worst[0] >= drift.class_psi
    same = class_drift(classes, reference, reference, bins=5)
    assert same.class_psi == pytest.approx(0.0) and max(same.probability_psi.values()) == pytest.approx(0.0)


def test_canary_accuracy_matches_integer_classes_whose_labels_were_read_as_floats() -> None:
    from components.canary_analysis import _hits

    # Digits-like classes: the log holds the class the model answered (an int, or its text); a label
    # column with a gap is read back as floats, so 3 arrives as 3.0.
    rows = pd.DataFrame({"predicted_class": [3, 7, 1, "8"], "digit": [3.0, 7.0, 2.0, 8.0], "prediction": 0.9})
    assert _hits(rows, "digit").tolist() == [True, True, False, True]
    named = pd.DataFrame({"predicted_class": ["x", "y"], "segment": ["x", "z"], "prediction": 0.9})
    assert _hits(named, "segment").tolist() == [True, False]


def test_canary_class_comparison_reports_the_class_mix_and_per_class_agreement() -> None:
    champion = pd.DataFrame({"request_id": ["q1", "q2", "q3", "q4"], "row": 0, "predicted_class": ["x", "x", "y", "z"]})
    challenger = champion.assign(predicted_class=["x", "y", "y", "z"])
    psi, mixes, agreement = class_comparison(champion, challenger)
    assert psi > 0
    assert mixes["champion"].to_dict() == {"x": 0.5, "y": 0.25, "z": 0.25}
    assert agreement == {"x": 0.5, "y": 1.0, "z": 1.0}
    # Different requests (a random canary split): no pairs, no agreement.
    _, _, none = class_comparison(champion, challenger.assign(request_id=["p1", "p2", "p3", "p4"]))
    assert none is None


def test_canary_analysis_of_two_multiclass_versions_compares_class_mixes_and_labels(
    tmp_path: Path, champion: Champion
) -> None:
    from components.canary_analysis import canary_analysis
    from components.serving_spec import CanaryAnalysisSpec, ServingSpec

    client = tracking.registry_client(champion.uri)
    base = client.get_model_version_by_alias("segments", "champion")
    challenger = client.create_model_version("segments", base.source, base.run_id, model_id=base.model_id)
    client.set_registered_model_alias("segments", "challenger", challenger.version)
    window, _ = multiclass_frame(windows=1, rows=400, seed=35)
    features = champion.spec.feature_columns
    proba = np.asarray(champion.model.predict_proba(window[features]))
    names = probability_columns(SEGMENTS)
    now = pd.Timestamp.now(tz="UTC")
    for version, rows in ((base.version, window.iloc[:200]), (challenger.version, window.iloc[200:])):
        served = proba[rows.index]
        # The challenger always answers 'budget': its class mix differs from the champion's.
        classes = np.asarray(SEGMENTS, dtype=object)[served.argmax(axis=1)] if version == base.version else "budget"
        append_batch(
            tmp_path / "log",
            rows[features].assign(
                request_id=[f"q{i}" for i in rows.index],
                row=0,
                timestamp=now - pd.Timedelta(minutes=5),
                model_name="segments",
                model_version=str(version),
                model_alias="champion" if version == base.version else "challenger",
                prediction=served.max(axis=1),
                predicted_class=classes,
                status="ok",
                latency_ms=1.0,
                **{name: served[:, index] for index, name in enumerate(names)},
            ),
        )
    labels = pd.DataFrame({"request_id": [f"q{i}" for i in window.index], "row": 0, "segment": window["segment"]})
    labels.to_parquet(tmp_path / "labels.parquet")
    serving = ServingSpec(model_name="segments", canary_analysis=CanaryAnalysisSpec(min_requests=50, min_labeled=30))

    result = canary_analysis(
        serving,
        champion.uri,
        str(tmp_path / "log"),
        str(tmp_path / "canary.json"),
        str(tmp_path / "canary.md"),
        labels_path=str(tmp_path / "labels.parquet"),
        dataset=champion.spec,
        act=False,
    )

    assert result.class_mix is not None and result.class_mix[str(challenger.version)] == {"budget": 1.0}
    assert result.class_agreement is None  # a random split: no row was answered by both
    assert result.decision == "rollback"
    failed = {c.name for c in result.checks if not c.passed}
    assert "prediction_psi" in failed and "accuracy" in failed
    assert result.champion is not None and result.champion.accuracy is not None and result.champion.accuracy > 0.4
    assert "| predicted class |" in (tmp_path / "canary.md").read_text()
