"""Evaluation: TFX threshold semantics, blessing decisions on real models, report and slices."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common.errors import ConfigError, ModelNotFound
from components.common.tracking import load_sklearn_model
from components.evaluate import EvaluationResult, compute_metrics, evaluate, make_checks, relative_change
from components.specs import ChangeThreshold, DatasetSpec, EvaluationSpec, MetricSpec, ModelSpec, ValueThreshold
from components.train import TrainResult, train
from tests.data import ENTITY, TIMESTAMP, churn_spec

LOGISTIC = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 500})


@dataclass
class Models:
    uri: str
    spec: DatasetSpec
    good: TrainResult
    shuffled: TrainResult
    workspace: Path


@pytest.fixture(scope="module")
def models(churn_data: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> Models:
    """A good model and one trained on shuffled labels, both logged to one sqlite MLflow."""
    workspace = tmp_path_factory.mktemp("evaluate")
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    source = churn_data[0]
    spec = churn_spec(source)
    good = train(str(source), spec, LOGISTIC, uri, "evaluate-tests", str(workspace / "eval.parquet"))
    frame = pd.read_parquet(source)
    rng = np.random.default_rng(0)
    frame[spec.label_column] = rng.permutation(frame[spec.label_column].to_numpy())
    shuffled_source = workspace / "shuffled.parquet"
    frame.to_parquet(shuffled_source)
    shuffled = train(str(shuffled_source), spec, LOGISTIC, uri, "evaluate-tests", str(workspace / "eval-shuffled"))
    return Models(uri, spec, good, shuffled, workspace)


def _run(models: Models, candidate: TrainResult, champion: TrainResult | None, evaluation: EvaluationSpec, tag: str):
    out = models.workspace / tag
    return evaluate(
        candidate.model_uri,
        models.good.eval_path,
        models.spec,
        evaluation,
        models.uri,
        champion.model_uri if champion else None,
        str(out / "blessing.json"),
        str(out / "report.html"),
    )


GATE = EvaluationSpec(
    metrics=[
        MetricSpec(
            name="roc_auc_score",
            threshold=ValueThreshold(lower_bound=0.6),
            change=ChangeThreshold(absolute=-0.005),
        ),
        MetricSpec(name="log_loss", threshold=ValueThreshold(upper_bound=0.8), change=ChangeThreshold(relative=0.02)),
        MetricSpec(name="sklearn.metrics.accuracy_score"),
    ]
)


# --- hand-computed threshold semantics -------------------------------------------------------


def _check(metric: MetricSpec, candidate: float, champion: float | None):
    checks = make_checks(
        [metric], {metric.short_name: candidate}, None if champion is None else {metric.short_name: champion}
    )
    return {c.kind: c for c in checks}


def test_absolute_change_higher_is_better() -> None:
    metric = MetricSpec(name="roc_auc_score", change=ChangeThreshold(absolute=-0.005))
    assert _check(metric, 0.800, 0.804)["change_absolute"].passed  # 0.004 worse: allowed
    assert _check(metric, 0.800, 0.805)["change_absolute"].passed  # exactly 0.005 worse: bound is inclusive
    failed = _check(metric, 0.790, 0.804)["change_absolute"]  # 0.014 worse
    assert not failed.passed
    assert failed.value == pytest.approx(-0.014)
    assert failed.baseline == 0.804 and failed.bound == -0.005
    assert "-0.014" in failed.reason and "at least -0.005" in failed.reason and "higher is better" in failed.reason
    assert _check(metric, 0.9, 0.8)["change_absolute"].passed  # improvements always pass


def test_relative_change_higher_is_better() -> None:
    metric = MetricSpec(name="roc_auc_score", change=ChangeThreshold(relative=-0.01))
    assert _check(metric, 0.792, 0.8)["change_relative"].passed  # -1.0 %
    failed = _check(metric, 0.78, 0.8)["change_relative"]  # -2.5 %
    assert not failed.passed
    assert failed.value == pytest.approx(-0.025)
    assert "-2.50%" in failed.reason and "-1.00%" in failed.reason


def test_change_lower_is_better_log_loss() -> None:
    metric = MetricSpec(name="log_loss", change=ChangeThreshold(relative=0.02, absolute=0.01))
    assert not metric.higher_is_better
    ok = _check(metric, 0.509, 0.5)  # +1.8 % and +0.009
    assert ok["change_relative"].passed and ok["change_absolute"].passed
    relative_fail = _check(metric, 0.511, 0.5)  # +2.2 % but +0.011
    assert not relative_fail["change_relative"].passed
    assert relative_fail["change_relative"].value == pytest.approx(0.022)
    assert "at most +2.00%" in relative_fail["change_relative"].reason
    assert not relative_fail["change_absolute"].passed
    assert _check(metric, 0.40, 0.5)["change_relative"].passed  # a lower loss is better


def test_direction_override_and_value_bounds() -> None:
    metric = MetricSpec(
        name="accuracy_score",
        threshold=ValueThreshold(lower_bound=0.5, upper_bound=0.9),
        change=ChangeThreshold(direction="lower_is_better", absolute=0.0),
    )
    checks = _check(metric, 0.95, 0.9)
    assert not checks["value_upper"].passed and "above the upper bound 0.9" in checks["value_upper"].reason
    assert checks["value_lower"].passed and "at or above the lower bound 0.5" in checks["value_lower"].reason
    assert not checks["change_absolute"].passed  # higher counts as worse now
    assert _check(metric, 0.85, 0.9)["change_absolute"].passed


def test_no_champion_means_value_checks_only() -> None:
    metric = MetricSpec(
        name="roc_auc_score", threshold=ValueThreshold(lower_bound=0.6), change=ChangeThreshold(absolute=0)
    )
    assert set(_check(metric, 0.7, None)) == {"value_lower"}


def test_relative_change_against_zero_and_nan() -> None:
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(0.1, 0.0) == math.inf
    assert relative_change(-0.1, 0.0) == -math.inf
    metric = MetricSpec(
        name="r2_score", threshold=ValueThreshold(lower_bound=0.0), change=ChangeThreshold(relative=-0.1)
    )
    checks = _check(metric, float("nan"), 0.5)
    assert not checks["value_lower"].passed and not checks["change_relative"].passed


# --- blessing decisions on real models -------------------------------------------------------


def test_no_champion_only_value_checks(models: Models) -> None:
    result = _run(models, models.good, None, GATE, "no-champion")
    assert result.blessed
    assert result.champion is None and result.champion_uri is None
    assert {c.kind for c in result.checks} == {"value_lower", "value_upper"}
    assert set(result.candidate) == {"roc_auc_score", "log_loss", "accuracy_score"}
    assert result.candidate["roc_auc_score"] == pytest.approx(models.good.metrics["roc_auc"])
    assert result.candidate["log_loss"] == pytest.approx(models.good.metrics["log_loss"])
    assert result.rows == models.good.eval_rows


def test_shuffled_label_model_is_not_blessed_against_a_good_champion(models: Models) -> None:
    result = _run(models, models.shuffled, models.good, GATE, "shuffled")
    assert not result.blessed
    assert result.champion is not None
    failed = {c.kind + ":" + c.metric for c in result.checks if not c.passed}
    assert "change_absolute:roc_auc_score" in failed
    assert "change_relative:log_loss" in failed
    for check in result.checks:
        assert check.reason.endswith(".") and check.metric in check.reason


def test_candidate_equal_to_champion_is_blessed(models: Models) -> None:
    result = _run(models, models.good, models.good, GATE, "equal")
    assert result.blessed
    assert result.candidate == result.champion
    change = [c for c in result.checks if c.kind.startswith("change")]
    assert {c.kind for c in change} == {"change_absolute", "change_relative"}
    assert all(c.value == 0 for c in change)


def test_changing_a_threshold_in_the_spec_flips_the_decision(models: Models) -> None:
    auc = _run(models, models.good, None, GATE, "flip-before").candidate["roc_auc_score"]
    strict = GATE.model_copy(deep=True)
    strict.metrics[0].threshold = ValueThreshold(lower_bound=round(auc + 0.01, 4))
    result = _run(models, models.good, None, strict, "flip-after")
    assert not result.blessed
    (failed,) = [c for c in result.checks if not c.passed]
    assert failed.kind == "value_lower" and "below the lower bound" in failed.reason

    # And a lenient change threshold lets the shuffled model through against the good champion.
    lenient = EvaluationSpec(metrics=[MetricSpec(name="roc_auc_score", change=ChangeThreshold(absolute=-1.0))])
    assert _run(models, models.shuffled, models.good, lenient, "lenient").blessed


def test_blessing_file_and_report(models: Models) -> None:
    result = _run(models, models.shuffled, models.good, GATE, "report")
    out = models.workspace / "report"
    stored = EvaluationResult.model_validate(json.loads((out / "blessing.json").read_text()))
    assert stored == result
    page = (out / "report.html").read_text()
    assert "NOT BLESSED" in page
    assert page.count("<img") >= 2  # ROC and PR curves, each with both models
    assert models.good.model_uri in page and models.shuffled.model_uri in page
    assert "ROC and precision-recall curves" in page and "Confusion matrix" in page
    for check in result.checks:
        assert check.reason.replace(">", "&gt;") in page

    roc = result.curves["roc"]
    assert 2 <= len(roc["fpr"]) <= 100 and len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and max(roc["thresholds"]) <= 1.0
    matrix = result.curves["confusion_matrix"]
    assert matrix["labels"] == ["0", "1"]
    assert sum(map(sum, matrix["matrix"])) == result.rows


def test_slices(models: Models) -> None:
    frame = pd.read_parquet(models.good.eval_path)
    # A tiny segment with only one class cannot be ranked: it is skipped with a reason.
    segment = np.where(frame["region"] == "north", "a", "b").astype(object)
    single = frame.index[frame[models.spec.label_column] == 0][:3]
    segment[single] = "tiny"
    frame["segment"] = segment
    eval_path = models.workspace / "sliced.parquet"
    frame.to_parquet(eval_path)
    evaluation = EvaluationSpec(metrics=GATE.metrics, slice_column="segment")
    out = models.workspace / "slices"
    result = evaluate(
        models.good.model_uri,
        str(eval_path),
        models.spec,
        evaluation,
        models.uri,
        models.good.model_uri,
        str(out / "blessing.json"),
        str(out / "report.html"),
    )
    assert set(result.slices) == {"segment=a", "segment=b"}
    assert set(result.skipped_slices) == {"segment=tiny"}
    assert "single label class" in result.skipped_slices["segment=tiny"]
    sliced = [c for c in result.checks if c.slice is not None]
    assert {c.slice for c in sliced} == {"segment=a", "segment=b"}
    assert {c.kind for c in sliced} == {"value_lower", "value_upper", "change_absolute", "change_relative"}
    assert all(c.reason.startswith("On slice segment=") for c in sliced)
    assert result.blessed
    rows_a = frame[frame["segment"] == "a"]
    model = load_sklearn_model(models.good.model_uri, models.uri)
    assert result.slices["segment=a"] == compute_metrics(model, rows_a, models.spec, GATE.metrics)
    page = (out / "report.html").read_text()
    assert "Slices by segment" in page and "tiny" in page


def test_any_metric_by_import_path(models: Models) -> None:
    from sklearn.metrics import brier_score_loss, f1_score

    model = load_sklearn_model(models.good.model_uri, models.uri)
    frame = pd.read_parquet(models.good.eval_path)
    metrics = [MetricSpec(name="sklearn.metrics.brier_score_loss"), MetricSpec(name="f1_score")]
    values = compute_metrics(model, frame, models.spec, metrics)
    features, truth = frame[models.spec.feature_columns], frame[models.spec.label_column]
    assert values["brier_score_loss"] == pytest.approx(brier_score_loss(truth, model.predict_proba(features)[:, 1]))
    assert values["f1_score"] == pytest.approx(f1_score(truth, model.predict(features)))
    with pytest.raises(ConfigError, match="one number"):
        compute_metrics(model, frame, models.spec, [MetricSpec(name="precision_recall_curve", input="score")])


def test_a_runs_uri_is_refused(models: Models) -> None:
    candidate = models.good.model_copy(update={"model_uri": f"runs:/{models.good.run_id}/model"})
    with pytest.raises(ConfigError, match="not accepted"):
        _run(models, candidate, None, GATE, "runs-uri")


def test_missing_champion_is_model_not_found(models: Models) -> None:
    with pytest.raises(ModelNotFound, match="champion"):
        _run(
            models,
            models.good,
            TrainResult(
                run_id="x",
                model_uri="models:/nope/7",
                train_rows=0,
                eval_rows=0,
                metrics={},
                eval_path="",
                feature_columns=[],
            ),
            GATE,
            "missing",
        )


def test_regression_evaluation_has_residual_plots(churn_frame: pd.DataFrame, tmp_path: Path) -> None:
    source = tmp_path / "regression.parquet"
    churn_frame.to_parquet(source)
    spec = DatasetSpec(
        source=str(source),
        entity_column=ENTITY,
        timestamp_column=TIMESTAMP,
        label_column="total_charges",
        numeric_features=["tenure_months", "monthly_charges"],
        task="regression",
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trained = train(str(source), spec, ModelSpec(estimator="sklearn.linear_model.Ridge"), uri, "r", str(tmp_path / "e"))
    evaluation = EvaluationSpec(
        metrics=[
            MetricSpec(name="r2_score", threshold=ValueThreshold(lower_bound=0.5)),
            MetricSpec(name="mean_absolute_error", change=ChangeThreshold(relative=0.0)),
        ]
    )
    result = evaluate(
        trained.model_uri,
        trained.eval_path,
        spec,
        evaluation,
        uri,
        trained.model_uri,
        str(tmp_path / "b.json"),
        str(tmp_path / "r.html"),
    )
    assert result.blessed and result.curves == {}
    assert not MetricSpec(name="mean_absolute_error").higher_is_better
    page = (tmp_path / "r.html").read_text()
    assert "Residuals" in page and page.count("<img") == 2


def test_each_slice_has_its_own_thresholds_from_config(models: Models) -> None:
    """A per-slice bound in the config, and nothing else, decides; loosening it in config flips it back."""
    raw = {
        "metrics": [{"name": "roc_auc_score", "threshold": {"lower_bound": 0.6}}],
        "slices": [
            {
                "column": "plan",
                "metrics": [{"name": "roc_auc_score", "threshold": {"lower_bound": 0.999}}],
                "min_rows": 5,
            },
            {"column": "region", "metrics": [{"name": "accuracy_score"}], "values": ["north", "nowhere"]},
        ],
    }
    strict = EvaluationSpec.model_validate(raw)
    result = _run(models, models.good, None, strict, "own-slices-strict")
    assert not result.blessed
    failed = [c for c in result.checks if not c.passed]
    assert failed and all(c.slice is not None and c.slice.startswith("plan=") for c in failed)
    assert all(c.bound == 0.999 and "On slice plan=" in c.reason for c in failed)
    overall = [c for c in result.checks if c.slice is None]
    assert len(overall) == 1 and overall[0].passed
    assert "region=north" in result.slices and set(result.slices["region=north"]) == {"accuracy_score"}
    assert result.skipped_slices["region=nowhere"] == "0 row(s); need at least 2"

    raw["slices"][0]["metrics"][0]["threshold"]["lower_bound"] = 0.5
    assert _run(models, models.good, None, EvaluationSpec.model_validate(raw), "own-slices-lenient").blessed


def test_the_gate_end_to_end_shuffled_labels_never_get_an_alias(models: Models) -> None:
    """The repository's own evaluation config, evaluate, then register: what the pipeline does."""
    from components.common.errors import CtpipeError
    from components.common.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, promote, resolve_alias
    from components.register import register
    from pipelines.config import load_config
    from tests.helpers import ROOT

    gate = load_config(ROOT / "ctpipe.yaml").evaluation
    name = "gate-e2e"
    first = _run(models, models.good, None, gate, "e2e-first")
    assert first.blessed
    register(models.good.model_uri, models.good.run_id, name, first.blessed, models.uri)
    champion = promote(name, models.uri).current

    shuffled = _run(models, models.shuffled, models.good, gate, "e2e-shuffled")
    assert not shuffled.blessed
    rejected = register(models.shuffled.model_uri, models.shuffled.run_id, name, shuffled.blessed, models.uri)
    assert rejected.aliases == []
    assert not resolve_alias(name, CHALLENGER_ALIAS, models.uri).found
    with pytest.raises(CtpipeError, match="not 'true'"):
        promote(name, models.uri, version=rejected.version)
    assert resolve_alias(name, CHAMPION_ALIAS, models.uri).version == champion

    # A candidate at least as good as the champion (here: the same model retrained) is blessed.
    retrained = train(
        models.spec.source, models.spec, LOGISTIC, models.uri, "evaluate-tests", str(models.workspace / "e2e-eval")
    )
    equal = _run(models, retrained, models.good, gate, "e2e-equal")
    assert equal.blessed
    accepted = register(retrained.model_uri, retrained.run_id, name, equal.blessed, models.uri)
    assert accepted.aliases == [CHALLENGER_ALIAS]
