"""The model batch scoring ships to executors: runtime choice, integrity checks, the worker cache and the UDF body.

Real scikit-learn models trained on the churn data, saved as MLflow saves them, compiled with
skl2onnx and run in onnxruntime. No Spark: the UDF body and the executor-side loader run on
pyarrow arrays and a broadcast-like object with ``.value``, as a Python worker sees them.
"""

from __future__ import annotations

import pathlib
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from components.common import batch_model
from components.common.batch_model import RuntimeChoice, ScoringJob, choose_runtime, score_batches, scoring_job
from components.common.compiled_model import (
    PARITY_TOLERANCE,
    CompileError,
    OnnxIntegrityError,
    compile_onnx,
    sha256_of,
)
from components.common.model_input import prepare_features
from components.common.registry import ONNX_ARTIFACT, ONNX_PARITY_TAG, ONNX_SHA256_TAG, SERVING_RUNTIME_TAG
from components.specs import DatasetSpec, ModelSpec
from components.train import build_pipeline
from tests.data import churn_spec
from tests.helpers import float32_sensitive_model, spec_features

pytestmark = pytest.mark.usefixtures("one_openmp_thread")

PARITY = "passed: max |Δ probability| 1.0e-16 over 450 rows, labels equal"


@dataclass(frozen=True)
class SavedModel:
    """A fitted model saved as an MLflow model folder, with its compiled ``model.onnx`` beside it.

    Attributes:
        model: The fitted scikit-learn pipeline.
        folder: The MLflow model folder (``MLmodel``, ``model.pkl``, input example, ``model.onnx``).
        onnx: The bytes of ``model.onnx``.
        spec: The dataset spec the model was trained for.
        rows: Feature rows with no missing value, as Spark hands them to the UDF.
    """

    model: Any
    folder: Path
    onnx: bytes
    spec: DatasetSpec
    rows: pd.DataFrame

    def tags(self, **extra: str) -> dict[str, str]:
        """The tags infra validation leaves on a version it chose ONNX for."""
        return {SERVING_RUNTIME_TAG: "onnx", ONNX_SHA256_TAG: sha256_of(self.onnx), ONNX_PARITY_TAG: PARITY, **extra}

    @property
    def features(self) -> list[str]:
        return batch_model.model_features(self.model, self.spec, str(self.folder))


def _save(model: Any, x: pd.DataFrame, folder: Path, spec: DatasetSpec, onnx: bytes | None) -> Path:
    """Save ``model`` as train logs it (cloudpickle, signature, input example) and add ``model.onnx``."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from components.common.tracking import pip_requirements

    output = model.predict_proba(x.head(100)) if hasattr(model, "predict_proba") else model.predict(x.head(100))
    mlflow.sklearn.save_model(
        model,
        str(folder),
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        signature=infer_signature(x.head(100), output),
        input_example=x.head(20),
        pip_requirements=pip_requirements(),
    )
    if onnx is not None:
        (folder / ONNX_ARTIFACT).write_bytes(onnx)
    return folder


def _trained(estimator: str, frame: pd.DataFrame, folder: Path, **params: Any) -> SavedModel:
    spec = churn_spec("unused.parquet")
    x = prepare_features(frame, spec)
    y = frame[spec.label_column]
    model = build_pipeline(spec, ModelSpec(estimator=estimator, params=params, random_seed=0)).fit(x, y)
    onnx = compile_onnx(model, spec_features(spec))
    return SavedModel(model, _save(model, x, folder, spec, onnx), onnx, spec, x.dropna().iloc[:300])


@pytest.fixture(scope="module")
def logistic(churn_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    return _trained("sklearn.linear_model.LogisticRegression", churn_frame, tmp_path_factory.mktemp("lr") / "model")


@pytest.fixture(scope="module")
def boosted(churn_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    return _trained(
        "sklearn.ensemble.HistGradientBoostingClassifier",
        churn_frame,
        tmp_path_factory.mktemp("hgb") / "model",
        max_iter=40,
        max_leaf_nodes=15,
    )


@pytest.fixture(autouse=True)
def empty_worker_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh Python worker: no model loaded yet."""
    monkeypatch.setattr(batch_model, "_MODELS", {})


def _job(saved: SavedModel, choice: RuntimeChoice) -> ScoringJob:
    return scoring_job(choice, saved.model, saved.features, classifier=True, string_labels=False)


def _arrow_columns(rows: pd.DataFrame, job: ScoringJob, spec: DatasetSpec) -> tuple[pa.Array, ...]:
    """The feature columns as Spark's Arrow UDF receives them: numbers as double, categories as string."""
    numeric = set(spec.numeric_features)
    return tuple(
        pa.array(rows[name].astype(float), type=pa.float64())
        if name in numeric
        else pa.array(rows[name].astype(str).tolist(), type=pa.string())
        for name in job.features
    )


def _score(rows: pd.DataFrame, saved: SavedModel, job: ScoringJob, shipped: Any, batch: int = 128) -> pa.Table:
    columns = _arrow_columns(rows, job, saved.spec)
    batches: Iterator[tuple[pa.Array, ...]] = (
        tuple(c.slice(start, batch) for c in columns) for start in range(0, len(rows), batch)
    )
    results = list(score_batches(batches, shipped=shipped, job=job))
    assert [len(r) for r in results] == [min(batch, len(rows) - s) for s in range(0, len(rows), batch)]
    return pa.Table.from_batches([pa.RecordBatch.from_struct_array(r) for r in results])


# --- choose_runtime --------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["logistic", "boosted"])
def test_a_verified_onnx_model_is_chosen_and_its_file_shipped(fixture: str, request: pytest.FixtureRequest) -> None:
    saved: SavedModel = request.getfixturevalue(fixture)
    choice = choose_runtime(saved.model, saved.folder, saved.tags(), saved.spec, saved.features)
    assert choice.runtime == "onnx", choice.reason
    assert choice.reason == f"{ONNX_PARITY_TAG} {PARITY}"
    assert choice.payload == saved.onnx
    assert {f.name for f in choice.onnx_features} == set(saved.spec.feature_columns)
    kinds = {f.name: f.kind for f in choice.onnx_features}
    assert all(kinds[name] in ("number", "integer") for name in saved.spec.numeric_features)
    assert all(kinds[name] == "string" for name in saved.spec.categorical_features)
    job = _job(saved, choice)
    assert job.key == sha256_of(saved.onnx) and job.runtime == "onnx"
    assert job.classes == tuple(saved.model.classes_.tolist()) and job.features == tuple(saved.features)


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({}, "infra validation has not chosen onnx"),
        ({SERVING_RUNTIME_TAG: "sklearn"}, f"{SERVING_RUNTIME_TAG}=sklearn"),
    ],
)
def test_a_version_infra_validation_did_not_choose_onnx_for_ships_its_pickle(
    logistic: SavedModel, tags: dict[str, str], reason: str
) -> None:
    # model.onnx is there and would pass: the registry's decision is what counts.
    choice = choose_runtime(logistic.model, logistic.folder, tags, logistic.spec, logistic.features)
    assert (choice.runtime, choice.reason, choice.onnx_features) == ("sklearn", reason, ())
    unpickled = pickle.loads(choice.payload)
    np.testing.assert_array_equal(unpickled.predict_proba(logistic.rows), logistic.model.predict_proba(logistic.rows))


def test_a_model_skl2onnx_cannot_convert_scores_with_scikit_learn(
    churn_frame: pd.DataFrame, tmp_path: Path, logistic: SavedModel
) -> None:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    spec = logistic.spec
    x = prepare_features(churn_frame, spec).dropna()
    base = build_pipeline(spec, ModelSpec(estimator="sklearn.linear_model.LogisticRegression"))
    model = Pipeline([("copy", FunctionTransformer(lambda frame: frame.copy())), *base.steps])
    model.fit(x, churn_frame.loc[x.index, spec.label_column])
    with pytest.raises(CompileError, match="skl2onnx cannot compile"):
        compile_onnx(model, spec_features(spec))
    # No model.onnx was made; even tags that claim one leave the job to the pickle.
    folder = _save(model, x, tmp_path / "model", spec, onnx=None)
    tags = {SERVING_RUNTIME_TAG: "onnx", ONNX_SHA256_TAG: "0" * 64}
    choice = choose_runtime(model, folder, tags, spec, list(spec.feature_columns))
    assert choice.runtime == "sklearn"
    assert choice.reason.startswith("ONNX not usable: FileNotFoundError: ")
    assert ONNX_ARTIFACT in choice.reason
    assert pickle.loads(choice.payload).predict(x.head(50)).tolist() == model.predict(x.head(50)).tolist()


def test_an_onnx_model_that_disagrees_on_the_input_example_is_not_used(tmp_path: Path) -> None:
    model, frame, features = float32_sensitive_model()
    onnx = compile_onnx(model, features)  # falls back to float32: every row looks the same, class 1
    spec = churn_spec("unused.parquet").model_copy(update={"numeric_features": ["x"], "categorical_features": []})
    # An input example of class-1 rows only: float32 happens to agree with scikit-learn there.
    agrees = _save(model, frame.iloc[150:], tmp_path / "agrees", spec, onnx)
    assert choose_runtime(model, agrees, _onnx_tags(onnx), spec, ["x"]).runtime == "onnx"
    # The train step's example (the first rows, all class 0): every label differs.
    differs = _save(model, frame, tmp_path / "differs", spec, onnx)
    choice = choose_runtime(model, differs, _onnx_tags(onnx), spec, ["x"])
    assert choice.runtime == "sklearn"
    assert (
        choice.payload != onnx and pickle.loads(choice.payload).predict(frame).tolist() == model.predict(frame).tolist()
    )
    assert choice.reason.startswith("ONNX parity on the input example failed: ")
    assert "20 of 20 labels differ" in choice.reason and f"(tolerance {PARITY_TOLERANCE:.0e})" in choice.reason


def _onnx_tags(onnx: bytes) -> dict[str, str]:
    return {SERVING_RUNTIME_TAG: "onnx", ONNX_SHA256_TAG: sha256_of(onnx)}


def test_an_onnx_model_that_does_not_fit_the_job_is_not_used(logistic: SavedModel) -> None:
    # The job hands tenure_months over as text: the graph wants a number.
    moved = "tenure_months"
    assert moved in logistic.spec.numeric_features
    spec = logistic.spec.model_copy(
        update={
            "numeric_features": [c for c in logistic.spec.numeric_features if c != moved],
            "categorical_features": [*logistic.spec.categorical_features, moved],
        }
    )
    choice = choose_runtime(logistic.model, logistic.folder, logistic.tags(), spec, logistic.features)
    assert choice.runtime == "sklearn"
    assert choice.reason.startswith("ONNX does not fit the job: tenure_months is ")
    assert choice.reason.endswith("in the graph but text")


def test_a_classifier_without_probabilities_is_not_scored_through_onnx(
    churn_frame: pd.DataFrame, tmp_path: Path
) -> None:
    spec = churn_spec("unused.parquet")
    x = prepare_features(churn_frame, spec)
    model = build_pipeline(spec, ModelSpec(estimator="sklearn.linear_model.RidgeClassifier")).fit(
        x, churn_frame[spec.label_column]
    )
    assert not hasattr(model, "predict_proba")
    onnx = compile_onnx(model, spec_features(spec))
    folder = _save(model, x, tmp_path / "model", spec, onnx)
    choice = choose_runtime(model, folder, _onnx_tags(onnx), spec, list(model.feature_names_in_))
    assert (choice.runtime, choice.reason) == ("sklearn", "ONNX does not fit the job: the model gives no probabilities")


def test_an_onnx_file_onnxruntime_refuses_falls_back_but_a_changed_one_stops_the_job(
    logistic: SavedModel, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(logistic.folder, folder)
    broken = b"not an onnx graph"
    (folder / ONNX_ARTIFACT).write_bytes(broken)
    # Registered as it is (its hash matches), but onnxruntime cannot load it: scikit-learn scores.
    choice = choose_runtime(logistic.model, folder, _onnx_tags(broken), logistic.spec, logistic.features)
    assert choice.runtime == "sklearn"
    assert choice.reason.startswith("ONNX not usable: CompileError: onnxruntime cannot load the ONNX model")
    # The file is not the one registered: that is no fallback, the job stops.
    with pytest.raises(OnnxIntegrityError, match=rf"SHA-256 {sha256_of(broken)} does not match the recorded"):
        choose_runtime(logistic.model, folder, logistic.tags(), logistic.spec, logistic.features)


# --- executor side: integrity and the per-process cache ----------------------------------------


def _load(shipped: object, job: ScoringJob) -> Any:
    """The executor's loader, given what a Python worker reads a broadcast through: an object with ``.value``."""
    return batch_model._load_cached(cast(Any, shipped), job)


class _CreatesMarker:
    """Unpickles into a call that creates a file: what a tampered pickle could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_tampered_pickle_is_refused_before_it_is_unpickled(logistic: SavedModel, tmp_path: Path) -> None:
    choice = choose_runtime(logistic.model, logistic.folder, {}, logistic.spec, logistic.features)
    job = _job(logistic, choice)
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(_CreatesMarker(marker))
    with pytest.raises(RuntimeError, match=rf"SHA-256 {sha256_of(evil)}, expected {job.key}; refusing to unpickle"):
        _load(SimpleNamespace(value=evil), job)
    assert not marker.exists()
    assert batch_model._MODELS == {}
    # The payload is live: unpickled, it does create the file.
    pickle.loads(evil)
    assert marker.exists()


def test_tampered_onnx_bytes_are_refused_on_the_executor(logistic: SavedModel) -> None:
    choice = choose_runtime(logistic.model, logistic.folder, logistic.tags(), logistic.spec, logistic.features)
    job = _job(logistic, choice)
    tampered = bytearray(choice.payload)
    tampered[len(tampered) // 2] ^= 0xFF
    with pytest.raises(OnnxIntegrityError, match=rf"{sha256_of(bytes(tampered))}, but {job.key} was recorded"):
        _load(SimpleNamespace(value=bytes(tampered)), job)
    assert batch_model._MODELS == {}


class _CountingBroadcast:
    """A broadcast's ``.value`` (what a Python worker reads), counting the reads."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads = 0

    @property
    def value(self) -> bytes:
        self.reads += 1
        return self.data


@pytest.mark.parametrize("runtime", ["onnx", "sklearn"])
def test_a_worker_loads_a_model_once_and_replaces_it_for_a_new_one(
    runtime: str, logistic: SavedModel, boosted: SavedModel
) -> None:
    def loaded(saved: SavedModel) -> tuple[Any, _CountingBroadcast, ScoringJob]:
        tags = saved.tags() if runtime == "onnx" else {}
        choice = choose_runtime(saved.model, saved.folder, tags, saved.spec, saved.features)
        assert choice.runtime == runtime
        return choice, _CountingBroadcast(choice.payload), _job(saved, choice)

    _, first_shipped, first_job = loaded(logistic)
    first = _load(first_shipped, first_job)
    reads = first_shipped.reads
    assert reads >= 1
    assert _load(first_shipped, first_job) is first
    assert first_shipped.reads == reads  # no second read, no second load
    assert list(batch_model._MODELS) == [first_job.key]

    _, second_shipped, second_job = loaded(boosted)
    assert second_job.key != first_job.key
    second = _load(second_shipped, second_job)
    assert second is not first and list(batch_model._MODELS) == [second_job.key]
    # The first model was dropped: asked for again, it is loaded again.
    again = _load(first_shipped, first_job)
    assert again is not first and first_shipped.reads > reads


# --- score_batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["logistic", "boosted"])
def test_both_runtimes_score_like_the_model(fixture: str, request: pytest.FixtureRequest) -> None:
    saved: SavedModel = request.getfixturevalue(fixture)
    expected_labels = saved.model.predict(saved.rows)
    expected_scores = saved.model.predict_proba(saved.rows)[:, 1]
    tables = {}
    for tags in ({}, saved.tags()):
        choice = choose_runtime(saved.model, saved.folder, tags, saved.spec, saved.features)
        job = _job(saved, choice)
        tables[choice.runtime] = _score(saved.rows, saved, job, SimpleNamespace(value=choice.payload))
    assert set(tables) == {"sklearn", "onnx"}
    for runtime, table in tables.items():
        assert table.schema.field("score").type == pa.float64(), runtime
        assert table.column("score").null_count == 0
        labels = np.asarray(table.column("prediction").to_pylist())
        np.testing.assert_array_equal(labels, expected_labels, err_msg=runtime)
        scores = np.asarray(table.column("score").to_pylist())
        atol = 0.0 if runtime == "sklearn" else PARITY_TOLERANCE
        np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=atol, err_msg=runtime)
    # The label's Arrow type is what prediction_type declares for these integer classes.
    assert tables["onnx"].schema.field("prediction").type == tables["sklearn"].schema.field("prediction").type


def test_string_labels_and_regression_scores(logistic: SavedModel, churn_frame: pd.DataFrame) -> None:
    choice = choose_runtime(logistic.model, logistic.folder, logistic.tags(), logistic.spec, logistic.features)
    job = scoring_job(choice, logistic.model, logistic.features, classifier=True, string_labels=True)
    table = _score(logistic.rows.head(50), logistic, job, SimpleNamespace(value=choice.payload))
    assert table.schema.field("prediction").type == pa.string()
    assert table.column("prediction").to_pylist() == [str(v) for v in logistic.model.predict(logistic.rows.head(50))]

    base = churn_spec("unused.parquet")
    spec = base.model_copy(
        update={
            "task": "regression",
            "label_column": "monthly_charges",
            "numeric_features": [c for c in base.numeric_features if c != "monthly_charges"],
        }
    )
    x = prepare_features(churn_frame, spec)
    model = build_pipeline(spec, ModelSpec(estimator="sklearn.linear_model.Ridge")).fit(
        x, churn_frame["monthly_charges"]
    )
    rows = x.dropna().head(100)
    saved = SavedModel(model, Path("unused"), b"", spec, rows)
    choice = RuntimeChoice("sklearn", "test", pickle.dumps(model))
    job = scoring_job(choice, model, list(spec.feature_columns), classifier=False, string_labels=False)
    assert job.classes == ()
    table = _score(rows, saved, job, SimpleNamespace(value=choice.payload), batch=40)
    assert table.schema.field("prediction").type == pa.float64()
    np.testing.assert_allclose(table.column("prediction").to_pylist(), model.predict(rows), rtol=1e-12)
    assert table.column("score").null_count == len(rows)  # no score for a regressor: null, not NaN


def test_a_multiclass_model_writes_the_class_and_one_probability_column_per_class(
    multiclass_data: tuple[Path, list], tmp_path: Path
) -> None:
    from components.common.multiclass import probability_columns
    from tests.data import SEGMENTS, multiclass_spec

    frame = pd.read_parquet(multiclass_data[0])
    spec = multiclass_spec("unused.parquet")
    x = prepare_features(frame, spec)
    model = build_pipeline(
        spec, ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 1000})
    ).fit(x, frame[spec.label_column])
    onnx = compile_onnx(model, spec_features(spec))
    saved = SavedModel(model, _save(model, x, tmp_path / "model", spec, onnx), onnx, spec, x.dropna().iloc[:300])
    names = probability_columns(SEGMENTS)
    assert names == ["proba_budget", "proba_family_plan", "proba_premium", "proba_pro_user", "proba_student"]
    expected = model.predict_proba(saved.rows)
    runtimes = set()
    for tags in ({}, saved.tags()):
        choice = choose_runtime(model, saved.folder, tags, spec, saved.features)
        runtimes.add(choice.runtime)
        job = scoring_job(choice, model, saved.features, classifier=True, string_labels=True)
        assert job.proba_columns == tuple(names)
        table = _score(saved.rows, saved, job, SimpleNamespace(value=choice.payload), batch=100)
        assert table.column_names == ["prediction", "score", *names]
        atol = 0.0 if choice.runtime == "sklearn" else PARITY_TOLERANCE
        probabilities = np.column_stack([table.column(name).to_numpy() for name in names])
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=atol, err_msg=choice.runtime)
        assert table.column("prediction").to_pylist() == list(model.predict(saved.rows))
        np.testing.assert_allclose(table.column("score").to_numpy(), expected.max(axis=1), rtol=0, atol=atol)
    assert runtimes == {"sklearn", "onnx"}
