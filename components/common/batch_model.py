"""The model a batch scoring job applies: chosen on the driver, shipped once, run over Arrow batches.

Two runtimes score, and the registry chooses between them as it does for the model server
(``serving.model``):

- ``onnx``: the version's compiled ``model.onnx`` in onnxruntime (:class:`OnnxScorer`), when
  infra validation found it gives the scikit-learn model's answers on every evaluation row (tag
  ``ctpipe.serving_runtime=onnx``), its SHA-256 matches the one recorded at registration, its
  inputs fit how Spark hands the features over, and it matches the scikit-learn model on the
  version's input example (:func:`check_parity`, within :data:`PARITY_TOLERANCE`);
- ``sklearn``: the pickled model, for every other version.

What is shipped is a broadcast of bytes (the ONNX file, or the model's cloudpickle) and a small
:class:`ScoringJob` pickled with each task. A Python worker loads the model once and keeps it,
keyed by the SHA-256 of those bytes, for every batch of every later job with the same model.

Each batch arrives as ``pyarrow`` arrays, one per feature, and leaves as a struct array of
``prediction`` and ``score`` (and, for a multiclass classifier, one ``proba_<class>`` field per
class, named by ``multiclass.probability_columns``; ``score`` is then the probability of the
predicted class): no pandas conversion for ONNX, and for scikit-learn a DataFrame of
the feature columns only (the entity and timestamp columns stay in the JVM).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from components.common.errors import ConfigError
from components.common.logs import get_logger

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from pyspark import Broadcast
    from pyspark.sql.types import DataType

    from components.common.compiled_model import OnnxScorer
    from components.common.model_input import Feature
    from components.specs import DatasetSpec

Runtime = Literal["sklearn", "onnx"]

#: Feature kinds the ONNX graph may declare for a feature Spark hands over as double, and as string.
_NUMERIC_KINDS = ("number", "integer")
_STRING_KINDS = ("string",)

# Models loaded in this Python process, keyed by the SHA-256 of the shipped bytes (one load per worker).
_MODELS: dict[str, Any] = {}

log = get_logger("batch_model")


@dataclass(frozen=True)
class ScoringJob:
    """What every task needs besides the broadcast bytes; small, so it travels with each task."""

    runtime: Runtime
    # SHA-256 of the broadcast bytes: the cache key in a worker, and checked again there for ONNX.
    key: str
    # Feature columns in the order the UDF receives them (the model's fitted order).
    features: tuple[str, ...]
    classifier: bool
    string_labels: bool
    # ONNX only: the graph's inputs as the server describes them, what it outputs, the classes in label order.
    onnx_features: tuple[Feature, ...] = ()
    classes: tuple[Any, ...] = ()
    # Multiclass only: the probability column of each class, in ``classes`` order.
    proba_columns: tuple[str, ...] = ()


def model_features(model: Any, spec: DatasetSpec, model_uri: str) -> list[str]:
    """Feature columns in the order the model was fitted with; must match the spec as a set.

    Raises:
        ConfigError: The model was fitted on other features than the spec lists.
    """
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is None:
        return spec.feature_columns
    fitted = [str(c) for c in fitted]
    if set(fitted) != set(spec.feature_columns):
        raise ConfigError(
            f"model {model_uri} was fitted on features {sorted(fitted)} but the dataset spec lists "
            f"{sorted(spec.feature_columns)}: missing from spec {sorted(set(fitted) - set(spec.feature_columns))}, "
            f"unknown to model {sorted(set(spec.feature_columns) - set(fitted))}"
        )
    return fitted


def prediction_type(model: Any, spec: DatasetSpec, model_uri: str) -> DataType:
    """Spark type of the ``prediction`` column, checking the model fits the task.

    Raises:
        ConfigError: A classification task with a model that is not a classifier, or whose number of
            classes does not fit the task (2 for binary, at least 3 for multiclass).
    """
    from pyspark.sql import types as T

    if spec.task == "regression":
        return T.DoubleType()
    classes = getattr(model, "classes_", None)
    if not hasattr(model, "predict_proba") or classes is None:
        raise ConfigError(f"model {model_uri} has no predict_proba/classes_; task {spec.task} needs a classifier")
    if spec.task == "binary_classification" and len(classes) != 2:
        raise ConfigError(
            f"model {model_uri} has {len(classes)} classes {list(classes)[:10]}; expected 2 for binary_classification"
        )
    if spec.task == "multiclass_classification" and len(classes) < 3:
        raise ConfigError(
            f"model {model_uri} has {len(classes)} classes {list(classes)}; expected at least 3 for "
            "multiclass_classification"
        )
    dtype = np.asarray(classes).dtype
    if np.issubdtype(dtype, np.bool_):
        return T.BooleanType()
    if np.issubdtype(dtype, np.integer):
        return T.LongType()
    if np.issubdtype(dtype, np.floating):
        return T.DoubleType()
    return T.StringType()


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime a job scores with, why, and the bytes to broadcast."""

    runtime: Runtime
    reason: str
    payload: bytes
    # ONNX only: the graph's inputs, from the version's MLflow signature (as the server reads them).
    onnx_features: tuple[Feature, ...] = ()


def choose_runtime(
    model: Any, model_dir: Path, tags: Mapping[str, str], spec: DatasetSpec, features: list[str]
) -> RuntimeChoice:
    """ONNX when the version carries a verified ONNX model that fits this job, else scikit-learn.

    Args:
        model: The scikit-learn model, unpickled after its SHA-256 was checked.
        model_dir: The downloaded MLflow model folder (``MLmodel``, ``model.onnx`` when compiled).
        tags: The registered version's tags; empty for a logged model that is not a registered version.
        spec: The dataset spec: which features Spark hands over as numbers and which as strings.
        features: The model's feature columns, in its fitted order.

    Returns:
        The runtime, the reason (logged and kept in the job's result), and the bytes to broadcast.

    Raises:
        OnnxIntegrityError: The version chose ONNX but its file is not the one registered: the job
            stops, as it does for a changed pickle.
    """
    from components.common.compiled_model import OnnxIntegrityError
    from components.common.registry import SERVING_RUNTIME_TAG

    decided = tags.get(SERVING_RUNTIME_TAG)
    if decided != "onnx":
        why = "infra validation has not chosen onnx" if decided is None else f"{SERVING_RUNTIME_TAG}={decided}"
        return RuntimeChoice("sklearn", why, _pickled(model))
    try:
        return _verified_onnx(model, model_dir, tags, spec, features)
    except OnnxIntegrityError:
        raise
    except Exception as exc:  # no file, onnxruntime refuses it, a malformed signature: scikit-learn scores
        reason = f"ONNX not usable: {type(exc).__name__}: {exc}"[:500]
        log.warning("batch scoring uses the scikit-learn model", extra={"reason": reason})
        return RuntimeChoice("sklearn", reason, _pickled(model))


def _pickled(model: Any) -> bytes:
    import cloudpickle

    # cloudpickle, as MLflow stores tree models: classes defined in a notebook travel by value.
    data: bytes = cloudpickle.dumps(model)
    return data


def _verified_onnx(
    model: Any, model_dir: Path, tags: Mapping[str, str], spec: DatasetSpec, features: list[str]
) -> RuntimeChoice:
    """The ONNX model loaded and checked as the model server loads it, or scikit-learn with the reason."""
    import pandas as pd
    from mlflow.models import Model as MlflowModel

    from components.common.compiled_model import OnnxScorer, check_parity, output_kind
    from components.common.model_input import features_of
    from components.common.registry import ONNX_ARTIFACT, ONNX_PARITY_TAG, ONNX_SHA256_TAG

    mlflow_model = MlflowModel.load(str(model_dir))
    graph_features = features_of(mlflow_model, model)
    output = output_kind(model)
    path = model_dir / ONNX_ARTIFACT
    # The server's loader: the file must have the SHA-256 recorded at registration, and inputs that fit.
    scorer = OnnxScorer.from_file(path, tags.get(ONNX_SHA256_TAG, ""), graph_features, output)
    misfits = _misfits(graph_features, spec, features)
    if spec.is_classification and output != "score":
        misfits.append("the model gives no probabilities")
    if misfits:
        return RuntimeChoice("sklearn", f"ONNX does not fit the job: {'; '.join(misfits)}", _pickled(model))
    example = mlflow_model.load_input_example(str(model_dir)) if mlflow_model.saved_input_example_info else None
    if isinstance(example, pd.DataFrame) and len(example):
        from threadpoolctl import threadpool_limits

        # As the server checks before serving it: it answers like the model it was compiled from, or it is not used.
        # One thread: OpenMP's start-up per tree costs more than a few rows of work.
        with threadpool_limits(limits=1):
            parity = check_parity(model, scorer, example[features], output)
        if not parity.passed:
            return RuntimeChoice("sklearn", f"ONNX parity on the input example {parity.reason}", _pickled(model))
    reason = f"{ONNX_PARITY_TAG} {tags.get(ONNX_PARITY_TAG, '(not recorded)')}"
    return RuntimeChoice("onnx", reason, path.read_bytes(), graph_features)


def _misfits(graph_features: tuple[Feature, ...], spec: DatasetSpec, features: list[str]) -> list[str]:
    """How the graph's inputs differ from the columns Spark hands over (numeric as double, categorical as string)."""
    kinds = {f.name: f.kind for f in graph_features}
    problems = []
    if set(kinds) != set(features):
        problems.append(f"graph inputs {sorted(kinds)} are not the model's features {sorted(features)}")
    numeric = set(spec.numeric_features)
    for name in features:
        wanted = _NUMERIC_KINDS if name in numeric else _STRING_KINDS
        if name in kinds and kinds[name] not in wanted:
            problems.append(f"{name} is {kinds[name]} in the graph but {'numeric' if name in numeric else 'text'}")
    return problems


def scoring_job(
    choice: RuntimeChoice, model: Any, features: list[str], classifier: bool, string_labels: bool
) -> ScoringJob:
    """The :class:`ScoringJob` of a chosen runtime.

    Args:
        choice: What :func:`choose_runtime` decided.
        model: The scikit-learn model (its classes label the ONNX probabilities).
        features: The model's feature columns, in order.
        classifier: Whether the job predicts a class and its probability (else a value, score null).
        string_labels: Whether the labels are written as strings.
    """
    from components.common.multiclass import probability_columns

    classes = tuple(np.asarray(getattr(model, "classes_", ())).tolist()) if classifier else ()
    return ScoringJob(
        runtime=choice.runtime,
        key=hashlib.sha256(choice.payload).hexdigest(),
        features=tuple(features),
        classifier=classifier,
        string_labels=string_labels,
        onnx_features=choice.onnx_features,
        classes=classes,
        proba_columns=tuple(probability_columns(classes)) if len(classes) > 2 else (),
    )


# --- executor side -----------------------------------------------------------------------


def _load_cached(shipped: Broadcast[bytes], job: ScoringJob) -> Any:
    """The job's model, loaded once per process: unpickled, or an ONNX session over the checked bytes."""
    model = _MODELS.get(job.key)
    if model is None:
        if job.runtime == "onnx":
            from components.common.compiled_model import OnnxScorer

            # The SHA-256 is checked again here: the bytes crossed the network.
            model = OnnxScorer(shipped.value, job.onnx_features, "score" if job.classifier else "prediction", job.key)
        else:
            import pickle

            from components.common.compiled_model import sha256_of

            # The bytes the driver made from the model it unpickled after checking its SHA-256; they
            # crossed the network since, so their own SHA-256 (the job's key) is checked before unpickling.
            found = sha256_of(shipped.value)
            if found != job.key:
                raise RuntimeError(f"shipped model has SHA-256 {found}, expected {job.key}; refusing to unpickle it")
            model = pickle.loads(shipped.value)  # cloudpickle output loads with plain pickle
        # Keep one model per process: a long-lived worker may serve many jobs.
        _MODELS.clear()
        _MODELS[job.key] = model
    return model


def predict_with_proba(model: Any, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Class labels and positive-class probabilities from a single ``predict_proba`` call (binary).

    The label is the class with the highest probability (ties go to the first class), which
    is what scikit-learn's classifiers' ``predict`` returns; computing it from the
    probabilities halves the work per batch.

    Args:
        model: A fitted binary classifier with ``predict_proba`` and ``classes_``.
        frame: Feature columns.

    Returns:
        The labels and the probabilities of ``classes_[1]``.
    """
    proba = np.asarray(model.predict_proba(frame))
    return np.asarray(model.classes_)[np.argmax(proba, axis=1)], proba[:, 1].astype(float)


def score_batches(
    batches: Iterator[tuple[pa.Array, ...]], *, shipped: Broadcast[bytes], job: ScoringJob
) -> Iterator[pa.Array]:
    """Scalar-iterator Arrow UDF body: ``prediction`` and ``score`` for each batch of feature columns.

    Spark already runs one task per core, so native thread pools (OpenMP in gradient boosting,
    BLAS) are limited to ``spark.task.cpus`` threads to avoid oversubscribing the executor; the
    ONNX session has one thread of its own.
    """
    import pyarrow as pa

    model = _load_cached(shipped, job)
    with _thread_limit(job):
        for columns in batches:
            if job.proba_columns:
                proba = _probabilities(model, columns, job)
                top = np.argmax(proba, axis=1)  # the label rule of predict_with_proba
                prediction, score = np.asarray(job.classes)[top], proba[np.arange(len(proba)), top]
                extra = [pa.array(proba[:, index], type=pa.float64()) for index in range(proba.shape[1])]
            elif job.runtime == "onnx":
                (prediction, score), extra = _onnx_scores(model, columns, job), []
            else:
                (prediction, score), extra = _sklearn_scores(model, columns, job), []
            # from_pandas: a NaN becomes null, as it did when batches went through pandas (regression scores).
            yield pa.StructArray.from_arrays(
                [_prediction_array(prediction, job), pa.array(score, type=pa.float64(), from_pandas=True), *extra],
                names=["prediction", "score", *job.proba_columns],
            )


def _probabilities(model: Any, columns: tuple[pa.Array, ...], job: ScoringJob) -> np.ndarray:
    """A multiclass batch's ``[n, k]`` probabilities, columns in ``job.classes`` order, from either runtime."""
    if job.runtime == "onnx":
        feeds = {name: _values(array, unicode=True) for name, array in zip(job.features, columns, strict=True)}
        return np.asarray(model.outputs(feeds)["probabilities"], dtype=np.float64)
    import pandas as pd

    frame = pd.DataFrame({name: _values(array) for name, array in zip(job.features, columns, strict=True)})
    return np.asarray(model.predict_proba(frame), dtype=np.float64)


def _prediction_array(prediction: np.ndarray, job: ScoringJob) -> pa.Array:
    """Predictions as the Arrow type :func:`prediction_type` declared to Spark: string, long, boolean or double."""
    import pyarrow as pa

    if job.string_labels:
        return pa.array(prediction.astype(str))
    if prediction.dtype.kind in "iu":
        prediction = prediction.astype(np.int64)
    elif prediction.dtype.kind == "f":
        prediction = prediction.astype(np.float64)
    return pa.array(prediction, from_pandas=True)


def _thread_limit(job: ScoringJob) -> contextlib.AbstractContextManager[Any]:
    if job.runtime == "onnx":
        return contextlib.nullcontext()
    from pyspark import TaskContext
    from threadpoolctl import threadpool_limits

    context = TaskContext.get()
    threads = int(context.cpus()) if context is not None else 1
    return threadpool_limits(limits=max(threads, 1))


def _sklearn_scores(model: Any, columns: tuple[pa.Array, ...], job: ScoringJob) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    frame = pd.DataFrame({name: _values(array) for name, array in zip(job.features, columns, strict=True)})
    if job.classifier:
        return predict_with_proba(model, frame)
    return np.asarray(model.predict(frame), dtype=float), np.full(len(frame), np.nan)


def _onnx_scores(scorer: OnnxScorer, columns: tuple[pa.Array, ...], job: ScoringJob) -> tuple[np.ndarray, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for name, array in zip(job.features, columns, strict=True):
        # Text as a fixed-width unicode array: OnnxScorer hands it to onnxruntime as it is, with no per-value work.
        feeds[name] = _values(array, unicode=True)
    if not job.classifier:
        values = scorer.score_columns(feeds)
        return np.asarray(values, dtype=float), np.full(len(values), np.nan)
    proba = np.asarray(scorer.outputs(feeds)["probabilities"], dtype=np.float64)
    # The label rule of predict_with_proba: the most probable class, ties to the first.
    return np.asarray(job.classes)[np.argmax(proba, axis=1)], proba[:, 1]


def _values(array: pa.Array, *, unicode: bool = False) -> np.ndarray:
    """One column as numpy: numbers as float64 (zero-copy without nulls), text as objects (or fixed-width unicode).

    Text goes through a dictionary: categories repeat, so building the Python strings once per
    distinct value is much cheaper than once per row. A column with nulls (none reach the model:
    such rows are rejected) is converted value by value, nulls as None.
    """
    import pyarrow as pa

    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)) or array.null_count:
        return array.to_numpy(zero_copy_only=False)
    encoded = array.dictionary_encode()
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    return np.asarray(encoded.dictionary.to_pylist(), dtype=str if unicode else object)[indices]
