"""Batch scoring with Spark: one pinned model version over a snapshot, written atomically.

The model is resolved once on the driver (an alias becomes a fixed version), loaded with
MLflow and shipped to the executors as a broadcast of its cloudpickle bytes, so the same
code runs in ``local[*]`` and on a cluster without a shared file system (and executors
need not import MLflow). Each Python worker process unpickles the model once (a
module-level cache keyed by the broadcast) and scores large Arrow batches with
``mapInPandas``, one ``predict_proba`` call per batch.

Rows the model cannot take (missing entity or timestamp, null / NaN / infinite /
non-numeric numeric features, null categorical features) are never scored silently:
they are counted and written with a ``reject_reason`` to ``<output_path>/_rejected``
(readers of the predictions skip folders that start with ``_``).

A local output is written to a temporary folder beside ``output_path`` and swapped into
place, so a failed job leaves the previous output untouched and a re-run of the same
window replaces it instead of appending duplicates.

Input and output may also be ``s3://`` (or ``s3a://``) URIs: Spark reads and writes them
through Hadoop's s3a connector (:mod:`components.common.spark_s3`: the jars, and the endpoint
and keys from the environment). An object store cannot rename a folder, and copying one into
place object by object would let a reader see half of it, so a remote output is committed
with a marker instead of a rename:

- every run writes its rows to a prefix of its own, ``<output_path>/_runs/<run id>/``
  (``_rejected/`` inside it), which nothing points at yet;
- when all of it is there, one object, ``<output_path>/_committed.json``, is written (a single
  PUT, which the store publishes whole) naming that run: this is the commit;
- then the runs that started before it are deleted, except the one it replaced, which stays
  for a reader that resolved the marker just before it changed.

Readers resolve the marker with :func:`predictions_path`. Reading ``<output_path>`` itself gives
nothing (every entry below it starts with ``_``, which Spark and pyarrow skip), never a
mixture of runs. A failed run leaves the marker, and so the previous output, untouched and
removes its own prefix; a re-run commits a complete new run in one step, so it is idempotent.
One writer per output at a time, as for a local folder: a run never deletes a run that started
after it.

The same job runs from the command line, ``python -m components.batch_predict --help``, or as this
file under spark-submit: the Spark operator's ``mainApplicationFile`` in the components image
(:mod:`pipelines.spark_application` renders that ScheduledSparkApplication). See :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from components.common import spark_s3, storage, tracking
from components.common.errors import ConfigError, CtpipeError, DataError, ModelNotFound, StorageError
from components.common.io import atomic_path, remove_abandoned
from components.common.logs import get_logger
from components.common.validation import read_config_mapping, validation_problems
from components.specs import DatasetSpec

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType

APP_NAME = "ctpipe-batch-predict"
# Scoring is a narrow map; shuffles only happen for the rebalance, so few partitions suffice.
SHUFFLE_PARTITIONS = 8
# Rows per Arrow batch handed to the model: large enough to amortise the per-call overhead of a
# scikit-learn pipeline (column transformer, validation), small enough to stay at a few tens of MB.
ARROW_BATCH_ROWS = 100_000
REJECTED_DIR = "_rejected"
REJECT_REASON = "reject_reason"
PARTITION_COLUMN = "date"
# A remote output: one prefix per run below RUNS_DIR, and the marker naming the committed one.
RUNS_DIR = "_runs"
COMMIT_FILE = "_committed.json"
COMMIT_FORMAT = 1
_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
# Input files read as text, and their separators.
_TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": ","}

# Session settings batch_predict relies on; set for the job and restored afterwards.
_SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    # pandas / pyarrow write nanosecond timestamps, which Spark cannot read as timestamps.
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH_ROWS),
    # A task writing a few date partitions keeps one open writer per date instead of sorting
    # all its rows by date first (Spark's default); it falls back to sorting past this many.
    "spark.sql.maxConcurrentOutputFileWriters": "64",
}

# Models loaded in this Python process, keyed by a token of the job (one load per executor worker).
_MODELS: dict[str, Any] = {}

log = get_logger("batch_predict")


class BatchPredictResult(BaseModel):
    """What a batch scoring job wrote."""

    rows: int
    bad_rows: int
    output_path: str
    # Where the rows are: output_path itself for a local folder, the committed run's prefix in an object store.
    data_path: str
    model_uri: str
    model_version: str | None
    partitions: list[str]


def batch_predict(
    input_path: str,
    spec: DatasetSpec,
    model_uri: str,
    tracking_uri: str,
    output_path: str,
    spark_master: str = "local[*]",
    model_version: str | int | None = None,
    *,
    spark: SparkSession | None = None,
) -> BatchPredictResult:
    """Score every row of ``input_path`` with one model version and write Parquet by date.

    Output columns: the entity and timestamp columns (named as in ``spec``), ``prediction``
    (class label for classifiers, value for regression), ``score`` (positive-class
    probability for classifiers, null for regression), ``model_name``, ``model_version``,
    ``scored_at`` (one UTC timestamp for the whole job) and the ``date`` partition column
    (UTC date of the event timestamp).

    Args:
        input_path: CSV or Parquet file, or a folder of Parquet files: a path or an ``s3://`` URI.
        spec: Dataset spec naming the entity, timestamp and feature columns.
        model_uri: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``models:/m-<id>`` on the
            registry of ``tracking_uri`` (no ``runs:/`` URIs or paths); the pickle's SHA-256 must
            match the one train recorded before it is unpickled.
        tracking_uri: MLflow tracking (and registry) URI.
        output_path: Folder to write, replaced atomically if it exists; or an ``s3://`` prefix, committed
            with a marker (read it back with :func:`predictions_path`).
        spark_master: Spark master URL for a new session.
        model_version: Registered version to pin; with an ``@ALIAS`` URI it wins over the alias,
            so a pipeline scores with the version it resolved earlier. Empty string means None.
        spark: An existing session to reuse (it is not stopped); by default a session is
            created and stopped, unless one is already active in this process. With an ``s3://``
            location its JVM must have the s3a jars (a session this function creates gets them).

    Returns:
        Row counts, the resolved model version and the date partitions written.

    Raises:
        DataError: The input is missing or lacks a column the spec or the model needs.
        ConfigError: The model does not fit the spec (task, features) or the version conflicts; a location
            is neither a path nor an ``s3://`` URI; the s3a jars or settings are missing or wrong.
        ModelNotFound: The registered model, version or alias does not exist.
        StorageError: The object store refused a request or cannot be reached (the message names the location).
    """
    # Only models:/ URIs of the configured registry: refused before any work.
    tracking.parse_model_uri(model_uri)
    # Registry clients return versions as int, KFP passes them as str: compare them as text.
    model_version = str(model_version) if model_version not in (None, "") else None
    remote = [
        path for path, field in ((input_path, "input_path"), (output_path, "output_path")) if _remote(path, field)
    ]
    if remote:
        # Before any work: a wrong endpoint or half a key pair is named now, not after the model download.
        spark_s3.hadoop_settings()
    source = _input_schema(input_path)
    needed = [spec.entity_column, spec.timestamp_column, *spec.feature_columns]
    missing = [c for c in needed if c not in source.columns]
    if missing:
        raise DataError(
            f"{storage.redact(input_path)}: missing column(s) {missing} needed to score (entity, timestamp and "
            f"features of the dataset spec); found {source.columns}"
        )

    download_uri, model_name, model_version = _resolve_model(model_uri, tracking_uri, model_version)
    scored_at = datetime.now(UTC).replace(microsecond=0)
    workdir = Path(tempfile.mkdtemp(prefix="ctpipe-model-"))
    try:
        import cloudpickle

        model_dir = _download_model(download_uri, tracking_uri, workdir)
        # Unpickled only after the SHA-256 that train recorded matched; executors get these checked bytes' model.
        model = tracking.load_downloaded_model(model_dir, download_uri, tracking.registry_client(tracking_uri))
        features = _model_features(model, spec, model_uri)
        prediction_type = _prediction_type(model, spec, model_uri)
        # cloudpickle, as MLflow stores tree models: classes defined in a notebook travel by value.
        model_bytes = cloudpickle.dumps(model)

        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        with (
            _session(spark, spark_master, s3=bool(remote)) as session,
            spark_s3.s3a_configured(session, remote) if remote else contextlib.nullcontext(),
            # The store's refusals (keys, bucket, endpoint) name the location; other errors pass unchanged.
            spark_s3.spark_errors(input_path, output_path),
        ):
            shipped = session.sparkContext.broadcast(model_bytes)
            _spread_input(session, source)
            raw = _read(session, input_path, source)
            with_reason = raw.withColumn(REJECT_REASON, F.expr(_reject_reason(spec)))
            rejected = with_reason.filter(F.col(REJECT_REASON) != "")
            # Counted while the scoring job reads the input, so a clean input is read only once.
            counted = Observation("rejected")
            checked = with_reason.observe(counted, F.sum((F.col(REJECT_REASON) != "").cast("long")).alias("rows"))
            good = checked.filter(F.col(REJECT_REASON) == "").selectExpr(
                _quote(spec.entity_column),
                *[f"{_cast_sql(c, spec)} AS {_quote(c)}" for c in [spec.timestamp_column, *features]],
            )
            parallelism = session.sparkContext.defaultParallelism
            if good.rdd.getNumPartitions() < parallelism:
                # A file of one row group is one partition; spread it so every core scores. Hash
                # partitioning by entity is deterministic, so unlike round robin it needs no sort.
                good = good.repartition(parallelism, spec.entity_column)
            scored = _score(good, spec, features, shipped, prediction_type, model_name, model_version, scored_at)
            output = _Output(scored, rejected, counted)
            if spark_s3.is_s3(output_path):
                written = _write_remote(session, output, output_path, scored_at, model_uri, model_version)
            else:
                written = _write_local(session, output, output_path)
            shipped.destroy()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    result = BatchPredictResult(
        rows=written.rows,
        bad_rows=written.bad_rows,
        output_path=str(output_path),
        data_path=written.data_path,
        model_uri=model_uri,
        model_version=model_version,
        partitions=written.partitions,
    )
    log.info("batch predictions written", extra=result.model_dump())
    if written.bad_rows:
        log.warning(
            "rows rejected",
            extra={"bad_rows": written.bad_rows, "rejected_path": _rejected_path(written.data_path)},
        )
    return result


def predictions_path(output_path: str) -> str:
    """Where the rows of the last committed batch scoring run into ``output_path`` are.

    A local folder holds them itself. An ``s3://`` prefix holds one prefix per run and the
    marker naming the committed one, which this reads (see the module docstring).

    Args:
        output_path: The ``output_path`` given to :func:`batch_predict`.

    Returns:
        ``output_path`` for a local folder, else ``<output_path>/_runs/<run id>``.

    Raises:
        DataError: No run has been committed there, or the marker is malformed.
        StorageError: The store refused the request or cannot be reached.
    """
    if not storage.is_remote(output_path):
        return output_path
    commit = _read_commit(output_path)
    if commit is None:
        raise DataError(
            f"{storage.redact(output_path)}: no committed batch predictions (no {COMMIT_FILE}); a batch_predict "
            "run writes it last, after all of its rows"
        )
    return storage.join(output_path, RUNS_DIR, commit["run"])


# --- executor side -----------------------------------------------------------------------


def _load_cached(shipped: Broadcast[bytes], key: str) -> Any:
    """Unpickle the broadcast model once per process."""
    model = _MODELS.get(key)
    if model is None:
        import pickle

        model = pickle.loads(shipped.value)  # cloudpickle output loads with plain pickle
        # Keep one model per process: a long-lived worker may serve many jobs.
        _MODELS.clear()
        _MODELS[key] = model
    return model


def predict_with_proba(model: Any, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Class labels and positive-class probabilities from a single ``predict_proba`` call.

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


def _score_batches(
    batches: Iterator[pd.DataFrame],
    *,
    shipped: Broadcast[bytes],
    model_key: str,
    entity: str,
    timestamp: str,
    features: list[str],
    classifier: bool,
    string_labels: bool,
) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: score each Arrow batch with the process-wide cached model.

    Spark already runs one task per core, so native thread pools (OpenMP in gradient boosting,
    BLAS) are limited to ``spark.task.cpus`` threads to avoid oversubscribing the executor.
    """
    from pyspark import TaskContext
    from threadpoolctl import threadpool_limits

    model = _load_cached(shipped, model_key)
    context = TaskContext.get()
    threads = int(context.cpus()) if context is not None else 1
    with threadpool_limits(limits=max(threads, 1)):
        for batch in batches:
            frame = batch[features]
            if classifier:
                prediction, score = predict_with_proba(model, frame)
            else:
                prediction, score = np.asarray(model.predict(frame), dtype=float), np.full(len(batch), np.nan)
            if string_labels:
                prediction = prediction.astype(str)
            yield pd.DataFrame(
                {entity: batch[entity], timestamp: batch[timestamp], "prediction": prediction, "score": score}
            )


# --- driver side -------------------------------------------------------------------------


def _remote(location: str, field: str) -> bool:
    """Whether ``location`` (the argument ``field``) is in an object store; only ``s3://`` and ``s3a://`` are.

    Raises:
        ConfigError: Another protocol (Spark here has the s3a connector only), no bucket, or credentials in it.
    """
    if not storage.is_remote(location):
        return False
    if not spark_s3.is_s3(location):
        raise ConfigError(
            f"{field}: {storage.redact(location)}: batch_predict on Spark reads and writes local paths and s3:// "
            f"(or s3a://) URIs; found a {storage.protocol(location)}:// URI"
        )
    spark_s3.check_s3_location(location, field)
    return True


@dataclass(frozen=True)
class _Input:
    """What the driver learns about the input before Spark starts."""

    columns: list[str]
    # Columns stored as nanosecond timestamps (Spark reads them as longs).
    nanos_columns: list[str]
    # The separator of a text (CSV / TSV) file; None for Parquet.
    separator: str | None
    # Bytes of the Parquet files (0 for text), to size the input splits.
    parquet_bytes: int


def _input_schema(path: str) -> _Input:
    """Column names of the input and the ones stored as nanosecond timestamps, without Spark."""
    if storage.is_remote(path):
        return _remote_input_schema(path)
    source = Path(path)
    if not source.exists():
        raise DataError(f"{path}: no such file or folder")
    separator = _TEXT_SEPARATORS.get(source.suffix.lower()) if source.is_file() else None
    if separator is not None:
        try:
            header = pd.read_csv(source, nrows=0, sep=separator)
        except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"{path}: not a readable CSV file: {exc}") from exc
        return _Input([str(c) for c in header.columns], [], separator, 0)
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        schema = ds.dataset(str(source), format="parquet", partitioning="hive").schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file or folder: {exc}") from exc
    files = [source] if source.is_file() else list(source.rglob("*.parquet"))
    return _Input(list(schema.names), _nanos(schema), None, sum(f.stat().st_size for f in files))


def _nanos(schema: Any) -> list[str]:
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.unit == "ns"]


def _remote_input_schema(location: str) -> _Input:
    """:func:`_input_schema` of an object: the header or the Parquet footers, read through fsspec."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    shown = storage.redact(location)
    fs, path = storage.filesystem(location)
    with storage.store_errors(location):
        if not fs.exists(path):
            raise DataError(f"{shown}: no such object or prefix")
        folder = bool(fs.isdir(path))
    separator = None if folder else _TEXT_SEPARATORS.get(PurePosixPath(path).suffix.lower())
    if separator is not None:
        try:
            with storage.open_read(location) as handle:
                header = pd.read_csv(handle, nrows=0, sep=separator)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise DataError(f"{shown}: not a readable CSV file: {exc}") from exc
        return _Input([str(c) for c in header.columns], [], separator, 0)
    try:
        with storage.store_errors(location):
            schema = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").schema
            if folder:
                found = fs.find(path, detail=True).items()
                sizes = [int(info["size"]) for key, info in found if key.endswith(".parquet")]
            else:
                sizes = [int(fs.size(path))]
    except pa.ArrowInvalid as exc:
        raise DataError(f"{shown}: not a readable Parquet object or prefix: {exc}") from exc
    return _Input(list(schema.names), _nanos(schema), None, sum(sizes))


def _stop_running_tasks(session: SparkSession, timeout: float = 30.0) -> None:
    """Cancel this session's jobs and wait until no stage is active, so nothing writes afterwards."""
    import time

    context = session.sparkContext
    context.cancelAllJobs()
    deadline = time.monotonic() + timeout
    while context.statusTracker().getActiveStageIds() and time.monotonic() < deadline:
        time.sleep(0.1)


def _resolve_model(model_uri: str, tracking_uri: str, model_version: str | None) -> tuple[str, str, str | None]:
    """Pin ``model_uri`` to a fixed version: returns (uri to download, model name, version)."""
    if not model_uri.startswith("models:/"):
        return model_uri, model_uri, model_version
    from mlflow.exceptions import MlflowException

    rest = model_uri.removeprefix("models:/")
    client = tracking.registry_client(tracking_uri)
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if model_version is None:
            try:
                model_version = str(client.get_model_version_by_alias(name, alias).version)
            except MlflowException as exc:
                raise ModelNotFound(f"{model_uri}: alias {alias!r} of model {name!r} not found: {exc}") from exc
        return f"models:/{name}/{model_version}", name, model_version
    if "/" in rest:
        name, version = rest.split("/", 1)
        if version.isdigit():
            if model_version is not None and model_version != version:
                raise ConfigError(f"model_uri {model_uri} names version {version} but model_version is {model_version}")
            return model_uri, name, version
        return model_uri, name, model_version
    # models:/m-<id>: an MLflow 3 logged model, not a registered one.
    return model_uri, model_uri, model_version


def _download_model(model_uri: str, tracking_uri: str, dst: Path) -> Path:
    """Download the model folder and return the folder that holds its ``MLmodel`` file."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    # MLflow resolves models:/ URIs with the process-wide registry URI, not the registry_uri argument.
    tracking.configure(tracking_uri)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(dst), tracking_uri=tracking_uri, registry_uri=tracking_uri
            )
        )
    except MlflowException as exc:
        raise ModelNotFound(f"{model_uri}: cannot download the model: {exc}") from exc
    found = sorted(local.rglob("MLmodel"), key=lambda p: len(p.parts))
    if not found:
        raise ModelNotFound(f"{model_uri}: downloaded to {local} but found no MLmodel file")
    model_dir = found[0].parent
    if model_dir != dst:
        # SparkFiles finds a shipped folder by its base name, which must be unique per job.
        unique = dst / dst.name
        os.replace(model_dir, unique)
        model_dir = unique
    return model_dir


def _model_features(model: Any, spec: DatasetSpec, model_uri: str) -> list[str]:
    """Feature columns in the order the model was fitted with; must match the spec as a set."""
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


def _prediction_type(model: Any, spec: DatasetSpec, model_uri: str) -> DataType:
    """Spark type of the ``prediction`` column, checking the model fits the task."""
    from pyspark.sql import types as T

    if spec.task == "regression":
        return T.DoubleType()
    classes = getattr(model, "classes_", None)
    if not hasattr(model, "predict_proba") or classes is None:
        raise ConfigError(
            f"model {model_uri} has no predict_proba/classes_; task binary_classification needs a classifier"
        )
    if len(classes) != 2:
        raise ConfigError(
            f"model {model_uri} has {len(classes)} classes {list(classes)}; expected 2 for binary_classification"
        )
    dtype = np.asarray(classes).dtype
    if np.issubdtype(dtype, np.bool_):
        return T.BooleanType()
    if np.issubdtype(dtype, np.integer):
        return T.LongType()
    if np.issubdtype(dtype, np.floating):
        return T.DoubleType()
    return T.StringType()


@contextlib.contextmanager
def _session(spark: SparkSession | None, master: str | None, s3: bool = False) -> Iterator[SparkSession]:
    """Yield a session with the settings scoring needs; stop it afterwards only if created here.

    With ``s3`` a new session gets the s3a jars (unless they are on Spark's classpath already, as
    in the image) and the environment's non-secret ``fs.s3a.*`` settings; the keys are set later, on
    the running session only (:func:`components.common.spark_s3.s3a_configured`).

    A ``master`` of None leaves ``spark.master`` to the process: what spark-submit was given (the
    Spark operator's driver pod), else Spark's own default, ``local[*]``.
    """
    from pyspark.sql import SparkSession

    owned = False
    if spark is None:
        spark = SparkSession.getActiveSession()
        if spark is not None:
            log.info("reusing the active Spark session", extra={"requested_master": master})
    if spark is None:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            SparkSession.builder.appName(APP_NAME)
            .config("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
        )
        if master is not None:
            builder = builder.master(master)
        for key, value in _SESSION_CONF.items():
            builder = builder.config(key, value)
        # The jars are downloaded once per machine and verified against the pins.
        for key, value in (spark_s3.session_conf() if s3 else {}).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        owned = True
    # Also restored: the split size that _spread_input sets per input.
    restored = [*_SESSION_CONF, "spark.sql.files.maxPartitionBytes"]
    previous: dict[str, str | None] = {key: spark.conf.get(key, None) for key in restored}
    for key, value in _SESSION_CONF.items():
        spark.conf.set(key, value)
    try:
        yield spark
    finally:
        if owned:
            spark.stop()
        else:
            for key, old in previous.items():
                if old is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, old)


def _spread_input(spark: SparkSession, source: _Input) -> None:
    """Cap the bytes per input split so a file with several row groups is read by every core.

    Spark reads a Parquet row group in one task; by default a split is up to 128 MB, so a
    file below that would be read, and then scored, by one core.
    """
    if source.separator is not None:
        return
    cores = max(spark.sparkContext.defaultParallelism, 1)
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(source.parquet_bytes // cores + 1, 1 << 20)))


def _read(spark: SparkSession, path: str, source: _Input) -> DataFrame:
    """Read the input with Spark; nanosecond timestamps arrive as longs and become timestamps."""
    from pyspark.sql import functions as F

    location = spark_s3.to_s3a(path) if spark_s3.is_s3(path) else path
    if source.separator is not None:
        return spark.read.csv(location, header=True, sep=source.separator)
    frame = spark.read.parquet(location)
    for column in source.nanos_columns:
        quoted = "`" + column.replace("`", "``") + "`"
        # Integer division: a double cannot hold 19-digit nanoseconds exactly.
        frame = frame.withColumn(column, F.expr(f"timestamp_micros(div({quoted}, 1000))"))
    return frame


def _quote(name: str) -> str:
    """A column name as a Spark SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def _text(value: str) -> str:
    """A Python string as a Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _cast_sql(name: str, spec: DatasetSpec) -> str:
    """The value a feature or the timestamp is scored with: cast, or null if it cannot be."""
    kinds = {spec.timestamp_column: "timestamp", **dict.fromkeys(spec.numeric_features, "double")}
    kind = kinds.get(name, "string")
    return f"try_cast({_quote(name)} AS {kind})"


def _reject_reason(spec: DatasetSpec) -> str:
    """SQL for why a row cannot be scored, e.g. 'plan is null; monthly_charges is NaN' ('' if it can).

    Built as one SQL expression rather than a tree of Column calls: each Column call is a round
    trip to the JVM, and a few hundred of them cost about a second per job.
    """
    reasons = []
    for name in (spec.entity_column, spec.timestamp_column):
        reasons.append(f"CASE WHEN {_quote(name)} IS NULL THEN {_text(f'{name} is null')} END")
    ts = spec.timestamp_column
    reasons.append(
        f"CASE WHEN {_quote(ts)} IS NOT NULL AND {_cast_sql(ts, spec)} IS NULL "
        f"THEN {_text(f'{ts} is not a timestamp')} END"
    )
    for name in spec.numeric_features:
        value = _cast_sql(name, spec)
        reasons.append(
            f"CASE WHEN {_quote(name)} IS NULL THEN {_text(f'{name} is null')} "
            f"WHEN {value} IS NULL THEN {_text(f'{name} is not numeric')} "
            f"WHEN isnan({value}) THEN {_text(f'{name} is NaN')} "
            f"WHEN abs({value}) = CAST('Infinity' AS DOUBLE) THEN {_text(f'{name} is infinite')} END"
        )
    for name in spec.categorical_features:
        reasons.append(f"CASE WHEN {_quote(name)} IS NULL THEN {_text(f'{name} is null')} END")
    return f"concat_ws('; ', {', '.join(reasons)})"


def _score(
    good: DataFrame,
    spec: DatasetSpec,
    features: list[str],
    shipped: Broadcast[bytes],
    prediction_type: DataType,
    model_name: str,
    model_version: str | None,
    scored_at: datetime,
) -> DataFrame:
    """Scored rows with the constant model columns and the date partition column."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            good.schema[spec.entity_column],
            T.StructField(spec.timestamp_column, T.TimestampType()),
            T.StructField("prediction", prediction_type),
            T.StructField("score", T.DoubleType()),
        ]
    )
    body = functools.partial(
        _score_batches,
        shipped=shipped,
        model_key=uuid.uuid4().hex,
        entity=spec.entity_column,
        timestamp=spec.timestamp_column,
        features=features,
        classifier=spec.task == "binary_classification",
        string_labels=isinstance(prediction_type, T.StringType),
    )
    return good.mapInPandas(body, schema).select(
        "*",
        F.lit(model_name).alias("model_name"),
        F.lit(model_version).cast("string").alias("model_version"),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
        F.to_date(F.col(spec.timestamp_column)).alias(PARTITION_COLUMN),
    )


def _summarise(folder: Path | str) -> tuple[int, list[str]]:
    """Rows written (from Parquet footers) and the date partitions, read back from the folder or prefix."""
    if isinstance(folder, Path):
        names = [p.name for p in folder.iterdir() if p.is_dir()]
    else:
        fs, path = storage.filesystem(folder)
        with storage.store_errors(folder):
            names = [PurePosixPath(str(entry)).name for entry in fs.ls(path, detail=False)]
    partitions = sorted(name.split("=", 1)[1] for name in names if name.startswith(f"{PARTITION_COLUMN}="))
    if not partitions:
        return 0, []
    return _count_rows(folder), partitions


def _count_rows(folder: Path | str) -> int:
    """Rows in a folder (or prefix) of Parquet files, from their footers (entries starting with ``_`` are skipped)."""
    import pyarrow.dataset as ds

    if isinstance(folder, Path):
        return int(ds.dataset(str(folder), format="parquet", partitioning="hive").count_rows())
    fs, path = storage.filesystem(folder)
    with storage.store_errors(folder):
        return int(ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").count_rows())


# --- writing the output ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Output:
    """The lazy frames a job writes, and the count of rejected rows the scoring job observes."""

    scored: DataFrame
    rejected: DataFrame
    counted: Any  # pyspark.sql.Observation


@dataclass(frozen=True)
class _Written:
    rows: int
    bad_rows: int
    partitions: list[str]
    data_path: str


def _rejected_path(data_path: str) -> str:
    if storage.is_remote(data_path):
        return storage.join(data_path, REJECTED_DIR)
    return str(Path(data_path) / REJECTED_DIR)


def _write_local(session: SparkSession, output: _Output, output_path: str) -> _Written:
    """Write to a temporary folder beside ``output_path`` and swap it into place."""
    # A killed job's temporary output is large: remove it now that its owner is provably dead (pid gone,
    # or reused: io checks the process start time), not only once it is old. atomic_path records this
    # process as the owner of its own temporary folder.
    remove_abandoned(output_path, max_age_seconds=0)
    with atomic_path(output_path) as tmp:
        try:
            output.scored.write.partitionBy(PARTITION_COLUMN).parquet(str(tmp))
            bad_rows = int(output.counted.get.get("rows") or 0)
            if bad_rows:
                output.rejected.write.parquet(str(tmp / REJECTED_DIR))
                bad_rows = _count_rows(tmp / REJECTED_DIR)
        except Exception:
            # Other tasks of a failed job may still be writing; stop them before the folder is removed.
            _stop_running_tasks(session)
            raise
        rows, partitions = _summarise(tmp)
    return _Written(rows, bad_rows, partitions, str(output_path))


def _write_remote(
    session: SparkSession,
    output: _Output,
    output_path: str,
    scored_at: datetime,
    model_uri: str,
    model_version: str | None,
) -> _Written:
    """Write a run's own prefix below ``output_path``, then commit it with the marker (see the module docstring)."""
    run = f"{scored_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    data = storage.join(output_path, RUNS_DIR, run)
    try:
        output.scored.write.partitionBy(PARTITION_COLUMN).parquet(spark_s3.to_s3a(data))
        bad_rows = int(output.counted.get.get("rows") or 0)
        if bad_rows:
            output.rejected.write.parquet(spark_s3.to_s3a(_rejected_path(data)))
            bad_rows = _count_rows(_rejected_path(data))
        rows, partitions = _summarise(data)
        # Read now, not when the job started: the run this one replaces is the one committed last.
        committed = _read_commit(output_path)
        previous: str | None = committed["run"] if committed else None
        commit = {
            "format": COMMIT_FORMAT,
            "run": run,
            "previous": previous,
            "rows": rows,
            "bad_rows": bad_rows,
            "partitions": partitions,
            "model_uri": model_uri,
            "model_version": model_version,
            "scored_at": scored_at.isoformat(),
        }
        # The commit: one PUT, which the store publishes whole. Before it nothing names this run.
        storage.write_json(storage.join(output_path, COMMIT_FILE), commit)
    except BaseException:
        # Other tasks of a failed job may still be writing; stop them before the prefix is removed.
        _stop_running_tasks(session)
        _remove_prefix(data)
        raise
    _remove_superseded(output_path, run, previous)
    return _Written(rows, bad_rows, partitions, data)


def _read_commit(output_path: str) -> dict[str, Any] | None:
    """The marker of ``output_path``'s committed run, checked; None if no run was committed.

    Raises:
        DataError: The marker is not a JSON object naming a run as :func:`batch_predict` writes it.
    """
    marker = storage.join(output_path, COMMIT_FILE)
    shown = storage.redact(marker)
    try:
        text = storage.read_text(marker)
    except FileNotFoundError:
        return None
    try:
        commit = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{shown}: not JSON ({exc}); expected the commit marker batch_predict writes") from exc
    if not isinstance(commit, dict):
        raise DataError(f"{shown}: expected a JSON object, found {type(commit).__name__}")
    run = commit.get("run")
    if not isinstance(run, str) or not _RUN_ID.match(run):
        raise DataError(f"{shown}: field 'run' must be a run id like 20260105T120000Z-0123abcd, found {run!r}")
    if commit.get("format") != COMMIT_FORMAT:
        raise DataError(f"{shown}: field 'format' must be {COMMIT_FORMAT}, found {commit.get('format')!r}")
    return commit


def _remove_prefix(location: str) -> None:
    """Remove everything below ``location`` (best effort: a failure is logged, the caller's error matters more)."""
    fs, path = storage.filesystem(location)
    path = path.rstrip("/")
    try:
        with storage.store_errors(location):
            files = list(fs.find(path))
            # A store backed by a file system (SeaweedFS) keeps emptied folders, listed as prefixes, until each
            # "folder/" key is deleted, deepest first; on S3 those keys do not exist and deleting them is a no-op.
            folders = {path} | {str(PurePosixPath(f).parent) for f in files}
            folders |= {str(parent) for f in folders for parent in PurePosixPath(f).parents}
            if files:
                fs.rm(files)
            for folder in sorted((f for f in folders if f == path or f.startswith(path + "/")), key=len, reverse=True):
                bucket, _, key = folder.partition("/")
                fs.call_s3("delete_object", Bucket=bucket, Key=key + "/")
    except Exception as exc:
        log.warning(
            "cannot remove an uncommitted run",
            extra={"prefix": storage.redact(location), "error": spark_s3.scrub(str(exc))[:300]},
        )


def _remove_superseded(output_path: str, run: str, previous: str | None) -> None:
    """Delete the runs below ``output_path`` that no reader needs any more.

    Kept: this run, the previous committed one (a reader may have resolved the marker just before
    this commit) and any run that started after this one (another writer's, maybe still writing).
    Everything else started earlier and is either superseded or was abandoned by a failed job.
    """
    runs = storage.join(output_path, RUNS_DIR)
    fs, path = storage.filesystem(runs)
    try:
        with storage.store_errors(runs):
            entries = [PurePosixPath(str(entry)).name for entry in fs.ls(path, detail=False)]
    except (FileNotFoundError, StorageError) as exc:
        log.warning("cannot list earlier runs", extra={"prefix": storage.redact(runs), "error": str(exc)[:300]})
        return
    for name in sorted(entries):
        if name in (run, previous) or not _RUN_ID.match(name) or name > run:
            continue
        log.info("removing a superseded run", extra={"prefix": storage.redact(storage.join(runs, name))})
        _remove_prefix(storage.join(runs, name))


# --- command line: python -m components.batch_predict, or this file run by spark-submit ------------------------

_DATASET_SECTION = "dataset"
# What --dataset-json looks like, for its help and its errors.
_DATASET_EXAMPLE = (
    '{"entity_column": "customer_id", "timestamp_column": "event_timestamp", "label_column": "churned", '
    '"numeric_features": ["tenure_months"], "categorical_features": ["plan"]}'
)


def _validation_lines(exc: ValidationError, prefix: str) -> str:
    return "; ".join(validation_problems(exc, prefix))


def dataset_from_config(path: str | os.PathLike[str]) -> DatasetSpec:
    """The dataset spec of a ctpipe configuration file (its ``dataset`` section).

    Only that section is read and validated: the rest of the file (the infrastructure profile)
    belongs to the pipelines, which a component does not import.

    Args:
        path: A ``ctpipe.yaml``, e.g. the ``ctpipe-config`` ConfigMap mounted at ``/etc/ctpipe/ctpipe.yaml``.

    Returns:
        The validated spec.

    Raises:
        ConfigError: The file is missing or not YAML, has no ``dataset`` mapping, or the section is invalid.
    """
    config_path = Path(path)
    raw = read_config_mapping(config_path, hint="Pass --config with a ctpipe.yaml (in a pod, the mounted ConfigMap).")
    section = raw.get(_DATASET_SECTION)
    if not isinstance(section, dict):
        raise ConfigError(
            f"{config_path}: expected a '{_DATASET_SECTION}' mapping (the dataset spec), found "
            f"{'no such key' if section is None else type(section).__name__}"
        )
    try:
        return DatasetSpec.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(f"{config_path}: invalid dataset spec: {_validation_lines(exc, _DATASET_SECTION)}") from None


def dataset_from_json(text: str, input_path: str) -> DatasetSpec:
    """A dataset spec given as JSON on the command line; ``source`` defaults to ``input_path``.

    Raises:
        ConfigError: The text is not a JSON object, or the spec is invalid.
    """
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--dataset-json: not JSON ({exc}); expected an object such as {_DATASET_EXAMPLE}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"--dataset-json: expected a JSON object such as {_DATASET_EXAMPLE}, found {type(raw).__name__}"
        )
    # The spec's source says where training reads; here the input is --input-path, so the key is optional.
    raw.setdefault("source", input_path)
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"--dataset-json: invalid dataset spec: {_validation_lines(exc, 'dataset')}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.batch_predict",
        description="Score every row of INPUT_PATH with one registered model version on Spark and write Parquet "
        "by date to OUTPUT_PATH (a local folder, replaced atomically, or an s3:// prefix, committed with a marker). "
        "Runs as a module, or as this file under spark-submit (the Spark operator's mainApplicationFile), "
        "where the Spark master is spark-submit's. Prints the result as one JSON line on stdout; logs go to stderr.",
    )
    spec = parser.add_mutually_exclusive_group(required=True)
    spec.add_argument(
        "--config",
        metavar="PATH",
        help="ctpipe.yaml whose 'dataset' section describes the input (entity, timestamp and feature columns); "
        "in a pod, the ctpipe-config ConfigMap mounted at /etc/ctpipe/ctpipe.yaml.",
    )
    spec.add_argument(
        "--dataset-json",
        metavar="JSON",
        help=f"The dataset spec as a JSON object instead of --config ('source' may be left out), e.g. "
        f"{_DATASET_EXAMPLE}.",
    )
    parser.add_argument(
        "--input-path",
        required=True,
        metavar="PATH",
        help="CSV or Parquet file, or folder of Parquet files, to score: a path or an s3:// URI.",
    )
    parser.add_argument(
        "--model-uri",
        required=True,
        metavar="URI",
        help="The model: models:/NAME@ALIAS (resolved once to a version), models:/NAME/VERSION or models:/m-<id>, "
        "from the registry of --tracking-uri; its SHA-256 is checked before it is unpickled.",
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        metavar="URI",
        help="MLflow tracking (and registry) URI (default: $MLFLOW_TRACKING_URI).",
    )
    parser.add_argument(
        "--output-path",
        required=True,
        metavar="PATH",
        help="Folder (replaced atomically) or s3:// prefix (committed with a marker) to write the predictions to.",
    )
    parser.add_argument(
        "--spark-master",
        default=None,
        metavar="URL",
        help="Spark master URL for a new session, e.g. local[4] or spark://host:7077 (default: the master "
        "spark-submit was given, else Spark's default local[*]).",
    )
    parser.add_argument(
        "--model-version",
        default=None,
        metavar="VERSION",
        help="Registered version to pin; with an @ALIAS model URI it wins over the alias.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`batch_predict` from the command line.

    Without ``--spark-master`` the session takes the master of the process: spark-submit's, as in
    the Spark operator's driver pod, or Spark's default ``local[*]`` in a plain ``python`` process.
    A session already active in the process is reused and left running.

    Args:
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        0 when the predictions are written, 1 when the job fails with an error the user can act on
        (the message and a hint go to stderr); argparse exits with 2 on a malformed command line.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("--tracking-uri is required (or set MLFLOW_TRACKING_URI); expected the MLflow registry URI")
    try:
        if args.config is not None:
            spec = dataset_from_config(args.config)
        else:
            spec = dataset_from_json(args.dataset_json, args.input_path)
        s3 = any(spark_s3.is_s3(path) for path in (args.input_path, args.output_path))
        # The entry makes the session itself, so that without --spark-master nothing overrides spark-submit's
        # master (batch_predict's own session would set its spark_master argument).
        with _session(None, args.spark_master, s3=s3) as session:
            log.info("spark session", extra={"master": session.sparkContext.master})
            result = batch_predict(
                args.input_path,
                spec,
                args.model_uri,
                args.tracking_uri,
                args.output_path,
                model_version=args.model_version,
                spark=session,
            )
    except CtpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    print(result.model_dump_json())
    return 0


if __name__ == "__main__":
    # spark-submit runs this file as a script (the Spark operator's mainApplicationFile). Python then puts this
    # file's folder, components/, first on sys.path, where train.py, specs.py, common/, ... would shadow top-level
    # modules of those names for every later import, and functions of __main__ would reach the executors pickled by
    # value rather than by reference. So drop that folder and run the installed module's entry instead.
    _HERE = os.path.dirname(os.path.realpath(__file__))  # Python resolves symlinks for sys.path[0] too
    sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != _HERE]
    from components.batch_predict import main as _installed_main

    sys.exit(_installed_main())
