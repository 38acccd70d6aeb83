"""Multiclass classification: label checks, training, macro/weighted metrics, per-class results and the gate."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from components.common.errors import ConfigError, DataError
from components.common.multiclass import (
    metric_arguments,
    per_class_metrics,
    present_class_roc_auc,
    probability_columns,
    safe_name,
)
from components.common.tracking import load_sklearn_model
from components.evaluate import EvaluationResult, evaluate
from components.specs import ChangeThreshold, DatasetSpec, EvaluationSpec, MetricSpec, ModelSpec, ValueThreshold
from components.train import TrainResult, train
from pipelines.artifacts import per_class_values
from tests.data import SEGMENT, SEGMENTS, multiclass_spec

LOGISTIC = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 1000})
TREE = ModelSpec(estimator="sklearn.tree.DecisionTreeClassifier", params={"max_depth": 2})

GATE = EvaluationSpec(
    metrics=[
        MetricSpec(name="f1_score", average="macro", threshold=ValueThreshold(lower_bound=0.3)),
        MetricSpec(name="recall_score", average="weighted", change=ChangeThreshold(absolute=-0.01)),
        MetricSpec(name="roc_auc_score", average="weighted", threshold=ValueThreshold(lower_bound=0.6)),
        MetricSpec(name="roc_auc_score", threshold=ValueThreshold(lower_bound=0.6)),
        MetricSpec(name="log_loss", threshold=ValueThreshold(upper_bound=2.0)),
        MetricSpec(name="accuracy_score"),
    ]
)


@dataclass
class Trained:
    uri: str
    spec: DatasetSpec
    good: TrainResult
    weak: TrainResult
    workspace: Path


@pytest.fixture(scope="module")
def trained(multiclass_data: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A logistic regression and a depth-2 tree (it cannot tell five classes apart) on the five-class data."""
    workspace = tmp_path_factory.mktemp("multiclass")
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    source = str(multiclass_data[0])
    spec = multiclass_spec(source)
    good = train(source, spec, LOGISTIC, uri, "multiclass", str(workspace / "eval.parquet"))
    weak = train(source, spec, TREE, uri, "multiclass", str(workspace / "eval-weak.parquet"))
    return Trained(uri, spec, good, weak, workspace)


def _evaluate(
    trained: Trained, candidate: TrainResult, champion: TrainResult | None, evaluation: EvaluationSpec, tag: str
) -> EvaluationResult:
    out = trained.workspace / tag
    return evaluate(
        candidate.model_uri,
        trained.good.eval_path,
        trained.spec,
        evaluation,
        trained.uri,
        champion.model_uri if champion else None,
        str(out / "blessing.json"),
        str(out / "report.html"),
    )


# --- the label must fit the task ------------------------------------------------------------


def _write(frame: pd.DataFrame, tmp_path: Path) -> str:
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    return str(path)


def test_multiclass_task_on_two_classes_is_refused_naming_column_and_counts(multiclass_data, tmp_path) -> None:
    frame = pd.read_parquet(multiclass_data[0])
    frame[SEGMENT] = np.where(frame[SEGMENT] == "premium", "premium", "other")
    source = _write(frame, tmp_path)
    with pytest.raises(DataError) as caught:
        train(source, multiclass_spec(source), LOGISTIC, f"sqlite:///{tmp_path}/m.db", "x", str(tmp_path / "e"))
    message = str(caught.value)
    assert "label column 'segment' has 2 class(es) ['other', 'premium']" in message
    assert "dataset.task multiclass_classification expects at least 3 (use binary_classification" in message


def test_a_single_class_and_a_binary_task_on_five_classes_are_refused(multiclass_data, tmp_path) -> None:
    frame = pd.read_parquet(multiclass_data[0])
    source = _write(frame, tmp_path)
    binary = multiclass_spec(source).model_copy(update={"task": "binary_classification"})
    with pytest.raises(DataError, match=r"has 5 class\(es\) .*binary_classification expects exactly 2"):
        train(source, binary, LOGISTIC, f"sqlite:///{tmp_path}/m.db", "x", str(tmp_path / "e"))
    source = _write(frame.assign(segment="budget"), tmp_path)
    with pytest.raises(DataError, match=r"has a single class \['budget'\]; a classifier needs at least 2"):
        train(source, multiclass_spec(source), LOGISTIC, f"sqlite:///{tmp_path}/m.db", "x", str(tmp_path / "e"))


def test_a_class_seen_only_in_the_evaluation_rows_is_refused(multiclass_data, tmp_path) -> None:
    frame = pd.read_parquet(multiclass_data[0])
    newest = frame.index >= len(frame) - 5  # the data is sorted by time: these are held out
    frame.loc[newest, SEGMENT] = "newcomer"
    source = _write(frame, tmp_path)
    with pytest.raises(DataError, match=r"class\(es\) \['newcomer'\] only in the newest rows held out"):
        train(source, multiclass_spec(source), LOGISTIC, f"sqlite:///{tmp_path}/m.db", "x", str(tmp_path / "e"))


# --- training and evaluation -------------------------------------------------------------------


def test_training_reports_multiclass_metrics(trained: Trained) -> None:
    metrics = trained.good.metrics
    assert set(metrics) >= {"accuracy", "f1_macro", "f1_weighted", "log_loss", "roc_auc_ovr_macro"}
    assert metrics["roc_auc_ovr_macro"] > 0.75 and metrics["accuracy"] > 1 / len(SEGMENTS) + 0.2
    assert trained.good.metrics["f1_macro"] > trained.weak.metrics["f1_macro"]


def test_macro_and_weighted_metrics_per_class_results_and_the_gate(trained: Trained) -> None:
    result = _evaluate(trained, trained.good, trained.weak, GATE, "gate")

    assert set(result.candidate) == {
        "f1_score_macro",
        "recall_score_weighted",
        "roc_auc_score_weighted",
        "roc_auc_score",
        "log_loss",
        "accuracy_score",
    }
    frame = pd.read_parquet(trained.good.eval_path)
    from sklearn.metrics import f1_score

    model = load_sklearn_model(trained.good.model_uri, trained.uri)
    features = frame[trained.spec.feature_columns]
    predicted = model.predict(features)
    assert result.candidate["f1_score_macro"] == pytest.approx(f1_score(frame[SEGMENT], predicted, average="macro"))
    proba = model.predict_proba(features)
    assert result.candidate["roc_auc_score"] == pytest.approx(
        roc_auc_score(frame[SEGMENT], proba, multi_class="ovr", average="macro", labels=model.classes_)
    )
    assert result.blessed, [c.reason for c in result.checks if not c.passed]
    assert set(result.per_class) == set(SEGMENTS)
    assert sum(v["support"] for v in result.per_class.values()) == len(frame)
    matrix = result.curves["confusion_matrix"]
    assert matrix["labels"] == SEGMENTS and "roc" not in result.curves
    assert np.asarray(matrix["matrix"]).shape == (5, 5) and np.asarray(matrix["matrix"]).sum() == len(frame)
    assert np.trace(np.asarray(matrix["matrix"])) == int((predicted == frame[SEGMENT]).sum())

    written = json.loads((trained.workspace / "gate" / "blessing.json").read_text())
    assert written["per_class"]["family plan"]["support"] == result.per_class["family plan"]["support"]
    page = (trained.workspace / "gate" / "report.html").read_text()
    assert "Per-class metrics (candidate)" in page and "Confusion matrix (candidate" in page
    assert "predicted family plan" in page and "f1_score_macro" in page


def test_a_macro_threshold_and_a_weighted_change_threshold_refuse_a_weak_candidate(trained: Trained) -> None:
    result = _evaluate(trained, trained.weak, trained.good, GATE, "weak")

    assert not result.blessed
    failed = {c.metric for c in result.checks if not c.passed}
    assert "recall_score_weighted" in failed
    reasons = " ".join(c.reason for c in result.checks if not c.passed)
    assert "recall_score_weighted change against the champion" in reasons


def test_slices_evaluate_with_the_averaged_metrics(trained: Trained) -> None:
    evaluation = EvaluationSpec(
        metrics=[MetricSpec(name="f1_score", average="macro", threshold=ValueThreshold(lower_bound=0.2))],
        slice_column="region",
    )
    result = _evaluate(trained, trained.good, None, evaluation, "slices")

    assert set(result.slices) == {f"region={r}" for r in ("east", "north", "south", "west")}
    assert all("f1_score_macro" in values for values in result.slices.values())
    assert {c.slice for c in result.checks} == {None, *result.slices}


def test_a_slice_without_some_classes_gets_the_one_vs_rest_auc_of_the_classes_it_has(trained: Trained) -> None:
    frame = pd.read_parquet(trained.good.eval_path)
    frame["cohort"] = np.where(frame[SEGMENT] == "student", "only-students", "rest")
    path = trained.workspace / "cohort.parquet"
    frame.to_parquet(path)
    evaluation = EvaluationSpec(
        metrics=[MetricSpec(name="roc_auc_score", average="weighted", threshold=ValueThreshold(lower_bound=0.6))],
        slice_column="cohort",
    )
    result = evaluate(
        trained.good.model_uri,
        str(path),
        trained.spec,
        evaluation,
        trained.uri,
        None,
        str(trained.workspace / "cohort" / "b.json"),
        str(trained.workspace / "cohort" / "r.html"),
    )
    assert "single label class" in result.skipped_slices["cohort=only-students"]
    # The other rows lack 'student': scikit-learn's average would be NaN; the four present classes count.
    rest = frame[frame["cohort"] == "rest"]
    model = load_sklearn_model(trained.good.model_uri, trained.uri)
    proba = model.predict_proba(rest[trained.spec.feature_columns])
    present = [i for i, c in enumerate(model.classes_) if c != "student"]
    expected = np.average(
        [roc_auc_score(rest[SEGMENT] == model.classes_[i], proba[:, i]) for i in present],
        weights=[(rest[SEGMENT] == model.classes_[i]).sum() for i in present],
    )
    assert result.slices["cohort=rest"]["roc_auc_score_weighted"] == pytest.approx(expected)
    assert result.blessed, [c.reason for c in result.checks if not c.passed]


def test_present_class_auc_equals_scikit_learn_when_every_class_is_there() -> None:
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d"]
    truth = rng.choice(classes, 300)
    proba = rng.dirichlet(np.ones(4), 300) + np.eye(4)[[classes.index(t) for t in truth]] * 0.3
    proba /= proba.sum(axis=1, keepdims=True)
    for average in ("macro", "weighted", "micro"):
        assert present_class_roc_auc(truth, proba, classes, average) == pytest.approx(
            roc_auc_score(truth, proba, multi_class="ovr", average=average, labels=classes)
        )
    assert np.isnan(present_class_roc_auc(np.array(["a"] * 5), proba[:5], classes, "macro"))


# --- metric arguments and names ------------------------------------------------------------------


def test_metric_arguments_follow_the_task_and_the_spec() -> None:
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    classes = ["a", "b", "c"]
    multi = "multiclass_classification"
    assert metric_arguments(MetricSpec(name="f1_score"), f1_score, multi, classes) == {"average": "macro"}
    assert metric_arguments(MetricSpec(name="roc_auc_score", average="weighted"), roc_auc_score, multi, classes) == {
        "average": "weighted",
        "multi_class": "ovr",
        "labels": classes,
    }
    assert metric_arguments(MetricSpec(name="log_loss"), log_loss, multi, classes) == {"labels": classes}
    assert metric_arguments(MetricSpec(name="accuracy_score"), accuracy_score, multi, classes) == {}
    assert metric_arguments(MetricSpec(name="f1_score"), f1_score, "binary_classification", [0, 1]) == {}
    with pytest.raises(ConfigError, match="'accuracy_score': average is 'macro', but the function takes no 'average'"):
        metric_arguments(MetricSpec(name="accuracy_score", average="macro"), accuracy_score, multi, classes)


def test_metric_names_with_an_average_keep_their_direction_and_input() -> None:
    loss = MetricSpec(name="sklearn.metrics.f1_score", average="weighted")
    assert loss.short_name == "f1_score_weighted" and loss.higher_is_better and not loss.uses_scores
    auc = MetricSpec(name="roc_auc_score", average="macro")
    assert auc.short_name == "roc_auc_score_macro" and auc.uses_scores


def test_probability_columns_are_sanitised_unique_and_in_class_order() -> None:
    assert probability_columns(["budget", "family plan", "pro-user", 3]) == [
        "proba_budget",
        "proba_family_plan",
        "proba_pro_user",
        "proba_3",
    ]
    assert probability_columns(["a b", "a-b", ""]) == ["proba_a_b", "proba_a_b_1", "proba__"]
    assert safe_name("ünïcode/ok") == "_n_code_ok"


def test_per_class_metrics_and_their_kfp_metric_names() -> None:
    truth = np.array(["x", "x", "y", "z"])
    predicted = np.array(["x", "y", "y", "y"])
    per_class = per_class_metrics(truth, predicted, ["x", "y", "z"])
    assert per_class["x"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2.0}
    assert per_class["z"]["precision"] == 0.0  # never predicted: 0, not an error
    values = per_class_values({"family plan": per_class["x"]})
    assert set(values) == {
        "candidate_class_family_plan_precision",
        "candidate_class_family_plan_recall",
        "candidate_class_family_plan_f1",
    }
