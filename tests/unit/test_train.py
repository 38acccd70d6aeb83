"""Training: time split, pipeline construction and a real MLflow run on sqlite."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.preprocessing import StandardScaler

from components import train as train_module
from components.common import tracking
from components.common.errors import ConfigError, DataError
from components.common.registry import SUITE_HASH_TAG
from components.common.suites import suite_hash
from components.specs import DatasetSpec, ModelSpec
from components.train import TrainResult, build_pipeline, split_by_time, train
from tests.data import ENTITY, TIMESTAMP, churn_spec, write_churn

LOGISTIC = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 500})

SUITE = {"name": "churn", "expectations": []}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("train")
    (path / "suite.json").write_text(json.dumps(SUITE))
    return path


@pytest.fixture(scope="module")
def module_tracking_uri(workspace: Path) -> str:
    return f"sqlite:///{workspace / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def mlflow_uses_the_module_database(module_tracking_uri: str) -> None:
    """Tests here also call MLflow's module-level API (get_logged_model, get_model_info)."""
    tracking.configure(module_tracking_uri)


@pytest.fixture(scope="module")
def trained(
    churn_data: tuple[Path, list], workspace: Path, module_tracking_uri: str
) -> tuple[TrainResult, TrainResult, DatasetSpec]:
    source = churn_data[0]
    spec = churn_spec(source)
    first = train(
        str(source),
        spec,
        LOGISTIC,
        module_tracking_uri,
        "train-tests",
        str(workspace / "eval-1.parquet"),
        str(workspace / "suite.json"),
        {"pipeline_run": "run-1"},
    )
    second = train(str(source), spec, LOGISTIC, module_tracking_uri, "train-tests", str(workspace / "eval-2.parquet"))
    return first, second, spec


# --- split_by_time -------------------------------------------------------------------------


def test_split_holds_out_the_newest_rows(churn_frame: pd.DataFrame, dataset_spec: DatasetSpec) -> None:
    shuffled = churn_frame.sample(frac=1.0, random_state=0)
    train_part, eval_part = split_by_time(shuffled, dataset_spec, 0.25)

    assert len(eval_part) == round(len(churn_frame) * 0.25)
    assert len(train_part) + len(eval_part) == len(churn_frame)
    ts = dataset_spec.timestamp_column
    assert train_part[ts].max() <= eval_part[ts].min()
    newest = churn_frame.nlargest(len(eval_part), ts)
    assert set(eval_part[ts]) == set(newest[ts])
    assert eval_part[ts].is_monotonic_increasing


def test_split_breaks_timestamp_ties_by_entity_whatever_the_input_order(dataset_spec: DatasetSpec) -> None:
    ts, entity = dataset_spec.timestamp_column, dataset_spec.entity_column
    frame = pd.DataFrame(
        {ts: pd.to_datetime(["2026-01-01"] * 6 + ["2026-01-02"] * 2, utc=True), entity: [5, 3, 1, 6, 2, 4, 8, 7]}
    )
    expected_eval = [5, 6, 7, 8]
    for seed in range(3):
        _, eval_part = split_by_time(frame.sample(frac=1.0, random_state=seed), dataset_spec, 0.5)
        assert eval_part[entity].tolist() == expected_eval


def test_split_keeps_at_least_one_row_each_side(dataset_spec: DatasetSpec, churn_frame: pd.DataFrame) -> None:
    train_part, eval_part = split_by_time(churn_frame.head(3), dataset_spec, 0.01)
    assert (len(train_part), len(eval_part)) == (2, 1)
    train_part, eval_part = split_by_time(churn_frame.head(3), dataset_spec, 0.99)
    assert (len(train_part), len(eval_part)) == (1, 2)
    with pytest.raises(DataError, match="at least 2"):
        split_by_time(churn_frame.head(1), dataset_spec, 0.5)
    with pytest.raises(ValueError, match="eval_fraction"):
        split_by_time(churn_frame, dataset_spec, 1.0)


def test_split_parses_string_timestamps(dataset_spec: DatasetSpec, churn_frame: pd.DataFrame) -> None:
    frame = churn_frame.copy()
    frame[dataset_spec.timestamp_column] = frame[dataset_spec.timestamp_column].astype(str)
    _, eval_part = split_by_time(frame.iloc[::-1], dataset_spec, 0.1)
    _, expected = split_by_time(churn_frame, dataset_spec, 0.1)
    assert eval_part[dataset_spec.entity_column].tolist() == expected[dataset_spec.entity_column].tolist()


# --- build_pipeline ------------------------------------------------------------------------


def test_pipeline_seeds_the_estimator_and_scales_only_when_needed(dataset_spec: DatasetSpec) -> None:
    boosted = build_pipeline(
        dataset_spec, ModelSpec(estimator="sklearn.ensemble.HistGradientBoostingClassifier", random_seed=7)
    )
    assert boosted.named_steps["estimator"].random_state == 7
    numeric = boosted.named_steps["preprocess"].transformers[0][1]
    assert not any(isinstance(step, StandardScaler) for _, step in numeric.steps)

    linear = build_pipeline(dataset_spec, LOGISTIC.model_copy(update={"random_seed": 3}))
    assert linear.named_steps["estimator"].random_state == 3
    numeric = linear.named_steps["preprocess"].transformers[0][1]
    assert any(isinstance(step, StandardScaler) for _, step in numeric.steps)

    explicit = build_pipeline(
        dataset_spec, ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"random_state": 1})
    )
    assert explicit.named_steps["estimator"].random_state == 1


def test_pipeline_rejects_unknown_params(dataset_spec: DatasetSpec) -> None:
    spec = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iterations": 5})
    with pytest.raises(ConfigError, match="max_iterations"):
        build_pipeline(dataset_spec, spec)


def test_pipeline_handles_missing_and_unseen_values(dataset_spec: DatasetSpec, churn_frame: pd.DataFrame) -> None:
    from components.common.model_input import prepare_features

    frame = churn_frame.head(200).copy()
    frame.loc[frame.index[:20], "plan"] = None
    frame.loc[frame.index[:20], "tenure_months"] = np.nan
    pipeline = build_pipeline(dataset_spec, LOGISTIC)
    pipeline.fit(prepare_features(frame, dataset_spec), frame[dataset_spec.label_column])
    odd = frame.head(3).copy()
    odd["plan"] = ["never-seen", None, np.nan]
    odd["region"] = None
    probabilities = pipeline.predict_proba(prepare_features(odd, dataset_spec))
    assert probabilities.shape == (3, 2)
    assert np.isfinite(probabilities).all()


# --- train ---------------------------------------------------------------------------------


def test_train_is_reproducible(trained: tuple[TrainResult, TrainResult, DatasetSpec]) -> None:
    first, second, spec = trained
    assert first.run_id != second.run_id
    assert first.metrics == second.metrics
    assert set(first.metrics) == {"roc_auc", "accuracy", "log_loss"}
    assert first.metrics["roc_auc"] > 0.65
    assert first.feature_columns == spec.feature_columns
    assert first.model_uri.startswith("models:/m-")
    assert pd.read_parquet(first.eval_path).equals(pd.read_parquet(second.eval_path))


def test_train_writes_the_newest_rows_for_evaluation(
    trained: tuple[TrainResult, TrainResult, DatasetSpec], churn_frame: pd.DataFrame
) -> None:
    result, _, spec = trained
    held_out = pd.read_parquet(result.eval_path)
    assert len(held_out) == result.eval_rows == round(len(churn_frame) * LOGISTIC.eval_fraction)
    assert result.train_rows + result.eval_rows == len(churn_frame)
    assert list(held_out.columns) == list(churn_frame.columns)
    cutoff = held_out[spec.timestamp_column].min()
    assert (churn_frame[spec.timestamp_column] > cutoff).sum() == len(held_out) - 1


def test_run_has_params_metrics_tags_and_artifacts(
    trained: tuple[TrainResult, TrainResult, DatasetSpec], module_tracking_uri: str, tmp_path: Path
) -> None:
    result, second, spec = trained
    client = MlflowClient(module_tracking_uri)
    run = client.get_run(result.run_id)
    params = run.data.params
    assert params["estimator"] == LOGISTIC.estimator
    assert params["random_seed"] == "42"
    assert params["param.max_iter"] == "500"
    assert params["eval_fraction"] == "0.25"
    assert int(params["train_rows"]) == result.train_rows
    assert int(params["eval_rows"]) == result.eval_rows
    for name, value in result.metrics.items():
        assert run.data.metrics[name] == pytest.approx(value)
    tags = run.data.tags
    assert json.loads(tags["ctpipe.features"]) == spec.feature_columns
    assert tags["pipeline_run"] == "run-1"
    assert tags[SUITE_HASH_TAG] == suite_hash(SUITE)  # the same hash the pipeline's validate step reports
    assert SUITE_HASH_TAG not in client.get_run(second.run_id).data.tags

    suite = tracking.download_run_artifact(result.run_id, tracking.SUITE_ARTIFACT, tmp_path, module_tracking_uri)
    assert json.loads(suite.read_text())["name"] == "churn"
    reference = pd.read_parquet(
        tracking.download_run_artifact(result.run_id, tracking.REFERENCE_ARTIFACT, tmp_path, module_tracking_uri)
    )
    assert len(reference) == result.train_rows
    expected_columns = [spec.entity_column, spec.timestamp_column, *spec.feature_columns, spec.label_column]
    assert list(reference.columns) == expected_columns
    held_out = pd.read_parquet(result.eval_path)
    assert reference[spec.timestamp_column].max() <= held_out[spec.timestamp_column].min()

    # The same model is reachable as the logged model and through the run.
    logged = mlflow.get_logged_model(result.model_uri.removeprefix("models:/"))
    assert logged.source_run_id == result.run_id
    assert logged.name == tracking.MODEL_ARTIFACT
    # The SHA-256 every loading step checks before unpickling (docs/security.md).
    assert len(logged.tags[tracking.MODEL_SHA256_TAG]) == 64
    assert hasattr(tracking.load_registered_model(result.model_uri, module_tracking_uri), "predict_proba")


def test_logged_model_loads_predicts_and_has_a_signature(
    trained: tuple[TrainResult, TrainResult, DatasetSpec], module_tracking_uri: str
) -> None:
    result, _, spec = trained
    held_out = pd.read_parquet(result.eval_path)
    for uri in (result.model_uri, f"runs:/{result.run_id}/{tracking.MODEL_ARTIFACT}"):
        model = tracking.load_sklearn_model(uri, module_tracking_uri)
        probabilities = model.predict_proba(held_out[spec.feature_columns])
        assert probabilities.shape == (len(held_out), 2)

    info = mlflow.models.get_model_info(result.model_uri)
    assert [c["name"] for c in info.signature.inputs.to_dict()] == spec.feature_columns
    assert info.flavors["python_function"]["predict_fn"] == "predict_proba"
    assert info.flavors["sklearn"]["serialization_format"] == "cloudpickle"
    pyfunc = mlflow.pyfunc.load_model(result.model_uri)
    served = pyfunc.predict(held_out[spec.feature_columns].head(4))
    assert np.asarray(served).shape == (4, 2)


def test_log_model_time_is_measured(
    trained: tuple[TrainResult, TrainResult, DatasetSpec], module_tracking_uri: str
) -> None:
    result, second, _ = trained
    client = MlflowClient(module_tracking_uri)
    seconds = [client.get_run(r.run_id).data.metrics["log_model_seconds"] for r in (result, second)]
    print(f"log_model seconds: {seconds}")  # measured, not asserted (machine dependent)
    assert all(s > 0 for s in seconds)


def test_reference_is_a_seeded_sample_when_the_training_set_is_large(
    churn_data: tuple[Path, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module_tracking_uri: str
) -> None:
    monkeypatch.setattr(train_module, "REFERENCE_MAX_ROWS", 100)
    spec = churn_spec(churn_data[0])
    results = [
        train(str(churn_data[0]), spec, LOGISTIC, module_tracking_uri, "train-tests", str(tmp_path / f"eval{i}"))
        for i in range(2)
    ]
    samples = [
        pd.read_parquet(
            tracking.download_run_artifact(
                r.run_id, tracking.REFERENCE_ARTIFACT, tmp_path / r.run_id, module_tracking_uri
            )
        )
        for r in results
    ]
    assert len(samples[0]) == 100
    assert samples[0].equals(samples[1])
    # A suffix-less output path (a KFP artifact) holds Parquet too.
    assert len(pd.read_parquet(tmp_path / "eval0")) == results[0].eval_rows


def test_missing_columns_are_named(churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path) -> None:
    source = tmp_path / "broken.parquet"
    churn_frame.drop(columns=["plan", "support_calls"]).to_parquet(source)
    with pytest.raises(DataError, match=r"\['support_calls', 'plan'\]"):
        train(str(source), dataset_spec, LOGISTIC, "sqlite:///unused.db", "x", str(tmp_path / "eval.parquet"))
    assert not (tmp_path / "eval.parquet").exists()


def test_single_class_label_is_a_data_error(
    churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    source = tmp_path / "one-class.parquet"
    churn_frame.assign(**{dataset_spec.label_column: 0}).to_parquet(source)
    with pytest.raises(DataError, match="single class"):
        train(str(source), dataset_spec, LOGISTIC, "sqlite:///unused.db", "x", str(tmp_path / "eval.parquet"))


def test_missing_suite_file_is_a_data_error(churn_data: tuple[Path, list], tmp_path: Path) -> None:
    spec = churn_spec(churn_data[0])
    with pytest.raises(DataError, match="suite file"):
        train(
            str(churn_data[0]),
            spec,
            LOGISTIC,
            "sqlite:///unused.db",
            "x",
            str(tmp_path / "e"),
            str(tmp_path / "no.json"),
        )


def test_regression_task(churn_frame: pd.DataFrame, tmp_path: Path) -> None:
    source = tmp_path / "regression.csv"
    churn_frame.to_csv(source, index=False)
    spec = DatasetSpec(
        source=str(source),
        entity_column=ENTITY,
        timestamp_column=TIMESTAMP,
        label_column="total_charges",
        numeric_features=["tenure_months", "monthly_charges"],
        categorical_features=["plan"],
        task="regression",
    )
    model = ModelSpec(estimator="sklearn.linear_model.Ridge")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(str(source), spec, model, uri, "regression", str(tmp_path / "eval.parquet"))
    assert set(result.metrics) == {"rmse", "mae", "r2"}
    assert result.metrics["r2"] > 0.5
    assert mlflow.models.get_model_info(result.model_uri).flavors["python_function"]["predict_fn"] == "predict"


def test_train_timing_on_a_5k_window(tmp_path: Path) -> None:
    """Measure (not assert) a default-estimator training on one 5,000-row window."""
    source = tmp_path / "churn.parquet"
    write_churn(source, windows=1, rows=5000, seed=11)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_experiment("timing", uri)  # create the database outside the measurement
    started = time.perf_counter()
    result = train(str(source), churn_spec(source), ModelSpec(), uri, "timing", str(tmp_path / "eval.parquet"))
    elapsed = time.perf_counter() - started
    log_model = MlflowClient(uri).get_run(result.run_id).data.metrics["log_model_seconds"]
    print(f"train on 5k rows (HistGradientBoosting defaults): {elapsed:.2f}s, log_model {log_model:.2f}s")
    assert result.train_rows == 3750


def test_same_data_and_config_give_the_same_predictions(
    trained: tuple[TrainResult, TrainResult, DatasetSpec], module_tracking_uri: str
) -> None:
    first, second, spec = trained
    held_out = pd.read_parquet(first.eval_path)[spec.feature_columns]
    predictions = [
        tracking.load_sklearn_model(r.model_uri, module_tracking_uri).predict_proba(held_out) for r in (first, second)
    ]
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_hyper_parameter_search_logs_child_runs_and_trains_the_best(churn_data: tuple[Path, list], tmp_path: Path):
    from components.specs import SearchSpec

    source = churn_data[0]
    spec = churn_spec(source)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # C=1e-4 all but silences the features, so the search must not pick it.
    search = SearchSpec(kind="grid", space={"C": [1e-4, 1.0]}, folds=2)
    model = LOGISTIC.model_copy(update={"search": search})
    results = [train(str(source), spec, model, uri, "search", str(tmp_path / f"e{i}")) for i in range(2)]
    assert results[0].params == {"max_iter": 500, "C": 1.0} == results[1].params
    assert results[0].metrics == results[1].metrics  # reproducible with a search too
    client = MlflowClient(uri)
    parent = client.get_run(results[0].run_id)
    assert parent.data.params["param.C"] == "1.0" and parent.data.params["search.kind"] == "grid"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{results[0].run_id}'", order_by=["metrics.rank"]
    )
    assert [c.data.params["param.C"] for c in children] == ["1.0", "0.0001"]
    assert children[0].data.metrics["cv_roc_auc"] > children[1].data.metrics["cv_roc_auc"]
    assert parent.data.metrics["search_best_cv_roc_auc"] == pytest.approx(children[0].data.metrics["cv_roc_auc"])

    random = SearchSpec(kind="random", space={"C": [0.01, 0.1, 1.0, 10.0]}, n_iter=2, folds=2)
    sampled = train(
        str(source), spec, LOGISTIC.model_copy(update={"search": random}), uri, "search", str(tmp_path / "r")
    )
    sampled_children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{sampled.run_id}'")
    assert len(sampled_children) == 2
    assert sampled.params["C"] in {float(c.data.params["param.C"]) for c in sampled_children}

    with pytest.raises(ConfigError, match=r"\['Cee'\]"):
        bad = LOGISTIC.model_copy(update={"search": SearchSpec(space={"Cee": [1]})})
        train(str(source), spec, bad, uri, "search", str(tmp_path / "bad"))
