"""Batch scoring with Spark: one pinned model version over a snapshot, written atomically.

The model is resolved once on the driver (an alias becomes a fixed version), loaded with
MLflow and shipped to the executors as a broadcast, so the same code runs in ``local[*]`` and
on a cluster without a shared file system (and executors need not import MLflow). What is
shipped depends on the version, as for the model server: its compiled ONNX model when infra
validation chose ONNX for it and the file is the one registered, else the scikit-learn model's
cloudpickle bytes (:mod:`components.common.batch_model`). Each Python worker loads the model once
(a module-level cache keyed by the bytes' SHA-256) and scores large Arrow batches of the feature
columns with a scalar-iterator Arrow UDF: one model call per batch, and the entity and timestamp
columns never leave the JVM.

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
after it. The session, reading and writing are :mod:`components.common.spark_batch`.

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
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from components.common import batch_model, spark_batch, spark_s3, storage, tracking
from components.common.batch_model import predict_with_proba
from components.common.errors import ConfigError, CtpipeError, DataError, ModelNotFound
from components.common.logs import get_logger
from components.common.spark_batch import (
    COMMIT_FILE,
    PARTITION_COLUMN,
    REJECTED_DIR,
    RUNS_DIR,
    SHUFFLE_PARTITIONS,
)
from components.common.validation import read_config_mapping, validation_problems
from components.specs import DatasetSpec

if TYPE_CHECKING:
    from pyspark import Broadcast
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType

__all__ = [
    "ARROW_BATCH_ROWS",
    "COMMIT_FILE",
    "PARTITION_COLUMN",
    "REJECTED_DIR",
    "REJECT_REASON",
    "RUNS_DIR",
    "SHUFFLE_PARTITIONS",
    "BatchPredictResult",
    "batch_predict",
    "dataset_from_config",
    "dataset_from_json",
    "main",
    "predict_with_proba",
    "predictions_path",
]

APP_NAME = "ctpipe-batch-predict"
# Rows per Arrow batch handed to the model: large enough to amortise the per-call overhead of a
# scikit-learn pipeline (column transformer, validation) and of the JVM-Python exchange, small enough
# to stay at a few tens of MB per batch.
ARROW_BATCH_ROWS = 100_000
REJECT_REASON = "reject_reason"
# The struct column the scoring UDF returns, split into prediction and score right away.
_SCORED = "_ctpipe_scored"

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
# Parquet writer options of the predictions: a probability is nearly unique per row, so a dictionary
# for it is built only to be thrown away once it outgrows its page.
_WRITE_OPTIONS = {"parquet.enable.dictionary#score": "false"}

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
    # What scored the rows: the version's ONNX model or its scikit-learn model (components.common.batch_model).
    runtime: Literal["sklearn", "onnx"] = "sklearn"


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
    probability for binary classifiers, the predicted class's probability for multiclass ones,
    null for regression), for a multiclass classifier one ``proba_<class>`` column per class (the
    class's text with other characters than letters, digits and ``_`` replaced by ``_``;
    ``multiclass.probability_columns``), ``model_name``, ``model_version``,
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
        path
        for path, field in ((input_path, "input_path"), (output_path, "output_path"))
        if spark_batch.check_location(path, field)
    ]
    if remote:
        # Before any work: a wrong endpoint or half a key pair is named now, not after the model download.
        spark_s3.hadoop_settings()
    source = spark_batch.input_schema(input_path)
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
        model_dir = _download_model(download_uri, tracking_uri, workdir)
        client = tracking.registry_client(tracking_uri)
        # Unpickled only after the SHA-256 that train recorded matched; executors get these checked bytes' model.
        model = tracking.load_downloaded_model(model_dir, download_uri, client)
        features = batch_model.model_features(model, spec, model_uri)
        prediction_type = batch_model.prediction_type(model, spec, model_uri)
        choice = batch_model.choose_runtime(
            model, model_dir, _version_tags(client, model_name, model_version), spec, features
        )
        log.info("batch scoring runtime", extra={"runtime": choice.runtime, "reason": choice.reason})

        from pyspark.sql import Observation
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        job = batch_model.scoring_job(
            choice,
            model,
            features,
            classifier=spec.is_classification,
            string_labels=isinstance(prediction_type, T.StringType),
        )
        with (
            _session(spark, spark_master, s3=bool(remote)) as session,
            spark_s3.s3a_configured(session, remote) if remote else contextlib.nullcontext(),
            # The store's refusals (keys, bucket, endpoint) name the location; other errors pass unchanged.
            spark_s3.spark_errors(input_path, output_path),
        ):
            shipped = session.sparkContext.broadcast(choice.payload)
            spark_batch.spread_input(session, source)
            raw = spark_batch.read_input(session, input_path, source)
            # Why a row is rejected is spelled out only for the rejected rows; the scoring pass tests a condition.
            rejectable = _rejectable(spec)
            rejected = raw.filter(rejectable).withColumn(REJECT_REASON, F.expr(_reject_reason(spec)))
            # Counted while the scoring job reads the input: rows read but not written were rejected.
            read = Observation("read")
            good = (
                raw.observe(read, F.count(F.lit(1)).alias("rows"))
                .filter(f"NOT ({rejectable})")
                .selectExpr(
                    _quote(spec.entity_column),
                    *[f"{_cast_sql(c, spec)} AS {_quote(c)}" for c in [spec.timestamp_column, *features]],
                )
            )
            if spark_batch.needs_spreading(session, good, source):
                # A file of one row group is read by one task; spread it so every core scores. Hash
                # partitioning by entity is deterministic, so unlike round robin it needs no sort.
                good = good.repartition(session.sparkContext.defaultParallelism, spec.entity_column)
            scored = _score(good, spec, job, shipped, prediction_type, model_name, model_version, scored_at)
            output = spark_batch.Output(scored, rejected, read, dict(_WRITE_OPTIONS))
            if spark_s3.is_s3(output_path):
                written = spark_batch.write_remote(session, output, output_path, scored_at, model_uri, model_version)
            else:
                written = spark_batch.write_local(session, output, output_path)
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
        runtime=choice.runtime,
    )
    log.info("batch predictions written", extra=result.model_dump())
    if written.bad_rows:
        log.warning(
            "rows rejected",
            extra={"bad_rows": written.bad_rows, "rejected_path": spark_batch.rejected_path(written.data_path)},
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
    commit = spark_batch.read_commit(output_path)
    if commit is None:
        raise DataError(
            f"{storage.redact(output_path)}: no committed batch predictions (no {COMMIT_FILE}); a batch_predict "
            "run writes it last, after all of its rows"
        )
    return storage.join(output_path, RUNS_DIR, commit["run"])


# --- driver side -------------------------------------------------------------------------


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


def _version_tags(client: Any, model_name: str, model_version: str | None) -> dict[str, str]:
    """The registered version's tags (which runtime infra validation chose); none for a logged model."""
    if model_version is None or model_name.startswith("models:/"):
        return {}
    from components.common.registry import get_version

    return dict(get_version(client, model_name, model_version).tags or {})


def _session(
    spark: SparkSession | None, master: str | None, s3: bool = False
) -> contextlib.AbstractContextManager[SparkSession]:
    """:func:`components.common.spark_batch.session` with this job's settings (:data:`_SESSION_CONF`)."""
    return spark_batch.session(spark, master, _SESSION_CONF, app_name=APP_NAME, s3=s3)


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


def _rejectable(spec: DatasetSpec) -> str:
    """SQL that is true exactly when :func:`_reject_reason` is not empty: a row that cannot be scored.

    The scoring pass only needs this condition; building a reason string for every row cost the
    JVM more than the condition itself.
    """
    conditions = [f"{_quote(spec.entity_column)} IS NULL", f"{_cast_sql(spec.timestamp_column, spec)} IS NULL"]
    for name in spec.numeric_features:
        value = _cast_sql(name, spec)
        conditions.append(f"{value} IS NULL OR isnan({value}) OR abs({value}) = CAST('Infinity' AS DOUBLE)")
    conditions += [f"{_quote(name)} IS NULL" for name in spec.categorical_features]
    return " OR ".join(f"({condition})" for condition in conditions)


def _score(
    good: DataFrame,
    spec: DatasetSpec,
    job: batch_model.ScoringJob,
    shipped: Broadcast[bytes],
    prediction_type: DataType,
    model_name: str,
    model_version: str | None,
    scored_at: datetime,
) -> DataFrame:
    """Scored rows with the constant model columns and the date partition column.

    Only the feature columns go to Python (a scalar-iterator Arrow UDF over the model's features),
    and a struct of ``prediction`` and ``score`` comes back; the entity and timestamp stay in the JVM.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.functions import ArrowUDFType, arrow_udf

    probabilities = [T.StructField(name, T.DoubleType()) for name in job.proba_columns]
    returned = T.StructType(
        [T.StructField("prediction", prediction_type), T.StructField("score", T.DoubleType()), *probabilities]
    )
    body = functools.partial(batch_model.score_batches, shipped=shipped, job=job)
    with warnings.catch_warnings():
        # A partial has no type hints to tell the UDF's kind from, so the kind is given (which PySpark frowns at).
        warnings.filterwarnings("ignore", "It is preferred to specify type hints", UserWarning)
        scores = arrow_udf(body, returned, ArrowUDFType.SCALAR_ITER)  # type: ignore[call-overload]
    entity, timestamp = _quote(spec.entity_column), _quote(spec.timestamp_column)
    return good.select(entity, timestamp, scores(*[F.col(_quote(c)) for c in job.features]).alias(_SCORED)).select(
        entity,
        timestamp,
        F.col(f"{_SCORED}.prediction").alias("prediction"),
        F.col(f"{_SCORED}.score").alias("score"),
        *[F.col(f"{_SCORED}.{name}").alias(name) for name in job.proba_columns],
        F.lit(model_name).alias("model_name"),
        F.lit(model_version).cast("string").alias("model_version"),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
        F.to_date(F.col(timestamp)).alias(PARTITION_COLUMN),
    )


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
