"""The honest live baseline: train -> evaluate -> register records the holdout metrics, monitor compares with them.

On a small dataset a model scores far better on its training rows than on rows it has not seen.
The monitor's reference metric must be the holdout metric evaluate computed, so a window that is
as good as the holdout asks for nothing, where the training-rows metric would ask for retraining.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common import tracking
from components.common.errors import CtpipeError, DataError
from components.common.holdout import SCORE_QUANTILES, HoldoutMetrics
from components.common.registry import CHAMPION_ALIAS, HOLDOUT_METRICS_TAG, get_version, promote
from components.common.registry_state import read_state
from components.evaluate import EvaluationResult, compute_metrics, evaluate
from components.monitor import MonitorResult, monitor
from components.register import register
from components.specs import DatasetSpec, EvaluationSpec, MetricSpec, ModelSpec, MonitoringSpec
from components.train import TrainResult, train
from tests.data import Drift, churn_spec, write_churn

METRICS = [MetricSpec(name="roc_auc_score"), MetricSpec(name="accuracy_score"), MetricSpec(name="log_loss")]
NAME = "churn"


@dataclass
class Champion:
    uri: str
    spec: DatasetSpec
    trained: TrainResult
    evaluation: EvaluationResult
    blessing: Path
    reference: Path
    version: str


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, one_openmp_thread: None) -> Champion:
    """The training pipeline's steps on 1200 generated rows: train, evaluate, register, promote."""
    folder = tmp_path_factory.mktemp("baseline")
    write_churn(folder / "training.parquet", windows=2, rows=600, seed=31)
    spec = churn_spec(folder / "training.parquet")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    # Gradient boosting with its defaults: on 900 training rows it learns them almost by heart.
    trained = train(str(folder / "training.parquet"), spec, ModelSpec(), uri, NAME, str(folder / "eval.parquet"))
    blessing = folder / "blessing.json"
    evaluation = evaluate(
        trained.model_uri,
        trained.eval_path,
        spec,
        EvaluationSpec(metrics=METRICS),
        uri,
        None,
        str(blessing),
        str(folder / "evaluation.html"),
    )
    holdout = HoldoutMetrics.from_evaluation(str(blessing))
    registered = register(trained.model_uri, trained.run_id, NAME, True, uri, holdout=holdout)
    promote(NAME, uri, registered.version)
    reference = tracking.download_run_artifact(trained.run_id, tracking.REFERENCE_ARTIFACT, str(folder / "reference"))
    return Champion(uri, spec, trained, evaluation, blessing, Path(reference), registered.version)


def _monitor(champion: Champion, current: Path, out: Path, model_uri: str | None = None) -> MonitorResult:
    return monitor(
        str(champion.reference),
        str(current),
        champion.spec,
        MonitoringSpec(),
        str(out / "result.json"),
        str(out / "report.html"),
        model_uri=model_uri or f"models:/{NAME}@{CHAMPION_ALIAS}",
        tracking_uri=champion.uri,
        metrics=METRICS,
    )


def test_the_version_records_what_evaluate_measured_on_the_holdout(champion: Champion) -> None:
    from components.common.tracking import registry_client

    tags = get_version(registry_client(champion.uri), NAME, champion.version).tags
    record = json.loads(tags[HOLDOUT_METRICS_TAG])
    quantiles = champion.evaluation.score_quantiles
    assert record == {
        "metrics": champion.evaluation.candidate,
        "rows": champion.trained.eval_rows,
        "score_quantiles": quantiles,
    }
    assert record["rows"] == champion.evaluation.rows == 300
    # The positive-class probabilities of the 300 held-out rows, at 0%, 1%, ..., 100%.
    model = tracking.load_registered_model(f"models:/{NAME}/{champion.version}", champion.uri)
    holdout = pd.read_parquet(champion.trained.eval_path)
    scores = np.sort(model.predict_proba(holdout[champion.spec.feature_columns])[:, 1])
    assert quantiles is not None and len(quantiles) == SCORE_QUANTILES
    assert quantiles[0] == pytest.approx(scores[0], rel=1e-5) and quantiles[-1] == pytest.approx(scores[-1], rel=1e-5)
    assert quantiles[50] == pytest.approx(scores[149], rel=1e-5)  # inverted CDF: the 150th of 300 scores
    assert quantiles == sorted(quantiles)


def test_prediction_drift_compares_with_the_holdout_scores_not_the_training_rows(
    champion: Champion, tmp_path: Path
) -> None:
    """The over-fitted model scores its training rows more confidently than any new rows; the holdout it does not."""
    from components.common.drift import population_stability_index

    model = tracking.load_registered_model(f"models:/{NAME}/{champion.version}", champion.uri)
    features = champion.spec.feature_columns
    write_churn(tmp_path / "current.parquet", windows=1, rows=1200, seed=34)
    current = model.predict_proba(pd.read_parquet(tmp_path / "current.parquet")[features])[:, 1]
    training = model.predict_proba(pd.read_parquet(champion.reference)[features])[:, 1]
    bins, warn = MonitoringSpec().bins, MonitoringSpec().psi_warn
    # The premise: against the training rows' scores a window from the same distribution looks drifted.
    assert population_stability_index(training, current, bins) >= warn

    result = _monitor(champion, tmp_path / "current.parquet", tmp_path)

    assert result.prediction_reference == (
        f"the scores evaluation measured on the 300 held-out rows of models:/{NAME}/{champion.version}"
    )
    holdout = np.asarray(champion.evaluation.score_quantiles)
    assert result.prediction_psi == pytest.approx(population_stability_index(holdout, current, bins))
    assert result.prediction_psi is not None and result.prediction_psi < warn
    assert not any(reason.startswith("Predictions drifted") for reason in result.reasons), result.reasons
    assert (
        "Prediction-drift reference: the scores evaluation measured on the 300 held-out rows"
        in (tmp_path / "report.html").read_text()
    )

    # Drifted requests still show against the holdout scores.
    write_churn(
        tmp_path / "drifted.parquet", windows=1, rows=1200, seed=35, drift=Drift(start=1, shift={"support_calls": 2.0})
    )
    (tmp_path / "drifted").mkdir()
    drifted = _monitor(champion, tmp_path / "drifted.parquet", tmp_path / "drifted")
    assert drifted.prediction_psi is not None and drifted.prediction_psi >= MonitoringSpec().prediction_psi_retrain
    assert any(reason.startswith("Predictions drifted") for reason in drifted.reasons), drifted.reasons

    # A version without recorded scores falls back to the model's scores on the reference rows, and says so.
    run = champion.trained
    unscored = register(run.model_uri, run.run_id, "churn-unscored", True, champion.uri)
    fallback = _monitor(champion, tmp_path / "current.parquet", tmp_path, f"models:/churn-unscored/{unscored.version}")
    assert fallback.prediction_reference == "the model's scores on the reference rows (no holdout scores recorded)"
    assert fallback.prediction_psi == pytest.approx(population_stability_index(training, current, bins))


def test_the_reference_metric_is_the_holdout_metric_and_a_window_as_good_does_not_retrain(
    champion: Champion, tmp_path: Path
) -> None:
    model = tracking.load_registered_model(f"models:/{NAME}/{champion.version}", champion.uri)
    holdout = champion.evaluation.candidate
    training_rows = compute_metrics(model, pd.read_parquet(champion.reference), champion.spec, METRICS)
    # The premise: on its training rows the model looks much better than it is.
    assert training_rows["roc_auc_score"] - holdout["roc_auc_score"] > 0.1, (training_rows, holdout)

    # A fresh window of 1200 labelled rows from the same distribution: enough labels to ask for retraining.
    write_churn(tmp_path / "current.parquet", windows=1, rows=1200, seed=32)
    result = _monitor(champion, tmp_path / "current.parquet", tmp_path)

    assert result.baseline is not None and result.baseline.source == "holdout"
    assert result.baseline.rows == 300 and HOLDOUT_METRICS_TAG in result.baseline.note
    assert result.performance is not None
    for name in ("roc_auc_score", "accuracy_score", "log_loss"):
        assert result.performance[f"reference_{name}"] == holdout[name]
        assert result.performance[f"reference_{name}"] != pytest.approx(training_rows[name])
    live = result.performance["roc_auc_score"]
    assert abs(live - holdout["roc_auc_score"]) < 0.05  # as good as the holdout ...
    assert training_rows["roc_auc_score"] - live > 0.05  # ... which the training rows would have called a drop
    # Live performance raises nothing: every metric is within its tolerance of the holdout.
    assert not any("dropped" in reason for reason in result.reasons)
    live_reasons = [r for r in result.reasons if r.startswith("Live ")]
    assert len(live_reasons) == 3, result.reasons
    assert all("(holdout " in r and r.endswith("no retraining signal.") for r in live_reasons), live_reasons
    page = (tmp_path / "report.html").read_text()
    assert "Live-performance reference: holdout metrics of models:/churn/" in page

    # Against a reference window the model was not trained on (T-2 in a scheduled run), the window is all ok.
    write_churn(tmp_path / "earlier.parquet", windows=1, rows=1200, seed=33)
    earlier = monitor(
        str(tmp_path / "earlier.parquet"),
        str(tmp_path / "current.parquet"),
        champion.spec,
        MonitoringSpec(),
        str(tmp_path / "result.json"),
        str(tmp_path / "report.html"),
        model_uri=f"models:/{NAME}@{CHAMPION_ALIAS}",
        tracking_uri=champion.uri,
        metrics=METRICS,
    )
    assert earlier.decision == "ok", earlier.reasons
    assert (
        earlier.performance is not None and earlier.performance["reference_roc_auc_score"] == holdout["roc_auc_score"]
    )

    # The holdout rows themselves measure exactly the recorded value.
    same = _monitor(champion, Path(champion.trained.eval_path), tmp_path)
    assert same.performance is not None
    assert same.performance["roc_auc_score"] == pytest.approx(holdout["roc_auc_score"], abs=1e-12)


def test_registering_again_records_a_missing_holdout_once(champion: Champion) -> None:
    """A version registered without the record (an older ctpipe) gets it; then registering again changes nothing."""
    from components.common.tracking import registry_client

    name, run = "churn-again", champion.trained
    older = register(run.model_uri, run.run_id, name, True, champion.uri)
    assert HOLDOUT_METRICS_TAG not in get_version(registry_client(champion.uri), name, older.version).tags
    holdout = HoldoutMetrics.from_evaluation(str(champion.blessing))
    state = read_state(name, champion.uri)
    recorded = register(run.model_uri, run.run_id, name, True, champion.uri, known_state=state, holdout=holdout)
    assert recorded.version == older.version and not recorded.skipped
    tags = get_version(registry_client(champion.uri), name, older.version).tags
    assert tags[HOLDOUT_METRICS_TAG] == holdout.to_tag()
    state = read_state(name, champion.uri)
    again = register(run.model_uri, run.run_id, name, True, champion.uri, known_state=state, holdout=holdout)
    assert again.version == older.version and again.skipped

    with pytest.raises(CtpipeError, match=r"lineage keys \['ctpipe.holdout_metrics'\] are reserved"):
        register(run.model_uri, run.run_id, NAME, True, champion.uri, {HOLDOUT_METRICS_TAG: "{}"})


def test_an_unreadable_evaluation_result_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "blessing.json"
    bad.write_text(json.dumps({"blessed": True}))
    with pytest.raises(DataError, match=r"blessing\.json: not an evaluation result; expected JSON with 'candidate'"):
        HoldoutMetrics.from_evaluation(str(bad))
    assert HoldoutMetrics(metrics={"roc_auc_score": 0.8, "log_loss": float("nan")}, rows=3).to_tag() == (
        '{"metrics":{"roc_auc_score":0.8},"rows":3}'
    )
