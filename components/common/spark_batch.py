"""Spark plumbing of batch scoring: a session that starts quickly, the input read, the output committed.

:mod:`components.batch_predict` decides what a job computes; this module is how it talks to Spark:

- :func:`session` creates (or borrows) a session. A session it creates starts its driver JVM
  with :data:`DRIVER_JAVA_OPTIONS` and, when one exists, a class-data sharing archive of Spark's
  classes (:mod:`components.common.spark_class_archive`): a few seconds less per start on a
  small machine.
- :func:`input_schema`, :func:`spread_input` and :func:`read_input` learn the input's columns
  without Spark, split it so every core reads a share, and read it.
- :func:`write_local` swaps a local output into place atomically; :func:`write_remote` commits
  an object-store output with a marker (the layout is described in :mod:`components.batch_predict`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pandas as pd

from components.common import spark_class_archive, spark_s3, storage
from components.common.errors import ConfigError, DataError, StorageError
from components.common.io import atomic_path, remove_abandoned
from components.common.logs import get_logger

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

REJECTED_DIR = "_rejected"
PARTITION_COLUMN = "date"
# A remote output: one prefix per run below RUNS_DIR, and the marker naming the committed one.
RUNS_DIR = "_runs"
COMMIT_FILE = "_committed.json"
COMMIT_FORMAT = 1
_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
# Row groups past which an input is split finely enough for any cluster this job runs on.
_ENOUGH_ROW_GROUPS = 1024
# Input files read as text, and their separators.
_TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": ","}

# Scoring is a narrow map; shuffles only happen for the rebalance, so few partitions suffice.
SHUFFLE_PARTITIONS = 8
# The driver JVM of a session this module creates (in local mode also the executors' JVM), chosen by
# measuring session start, a first job and later jobs of batch_predict on two cores:
# - Serial GC: a 1 GB heap of short-lived batches needs no concurrent collector, and its one GC
#   thread leaves the cores to the tasks; G1 starts more threads and does more work at start-up.
# - C2 compiles only methods ten times hotter than by default (JDK 17 defaults: 5,000 calls,
#   15,000 calls and loops, 40,000 loop iterations). Jobs last seconds: most of what C2 compiles by
#   default never repays its compile time on two cores, while the per-row loops of reading, the
#   Arrow transfer and writing still cross these thresholds within the first batch. This took a
#   third off the JVM's CPU time for a session start, and about a sixth off each job.
DRIVER_JAVA_OPTIONS: tuple[str, ...] = (
    "-XX:+UseSerialGC",
    "-XX:Tier4InvocationThreshold=50000",
    "-XX:Tier4MinInvocationThreshold=6000",
    "-XX:Tier4CompileThreshold=150000",
    "-XX:Tier4BackEdgeThreshold=400000",
)
# Settings of a session this module creates (the UI and Python worker ones are read when the SparkContext starts).
_NEW_SESSION_CONF = {
    "spark.sql.shuffle.partitions": str(SHUFFLE_PARTITIONS),
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # One Python worker per core, kept for every task and job of the session (it caches the model).
    "spark.python.worker.reuse": "true",
}

log = get_logger("spark_batch")


# --- the session -------------------------------------------------------------------------


@contextlib.contextmanager
def session(
    spark: SparkSession | None,
    master: str | None,
    conf: Mapping[str, str],
    *,
    app_name: str,
    s3: bool = False,
) -> Iterator[SparkSession]:
    """Yield a session with ``conf`` set; stop it afterwards only if created here.

    ``conf`` is set on the session for the job and the previous values are restored afterwards,
    so a borrowed session is left as it was. A new session also gets :data:`DRIVER_JAVA_OPTIONS`,
    Spark's class-data archive when one was made (one is recorded for the next session otherwise)
    and, with ``s3``, the s3a jars (unless they are on Spark's classpath already, as in the image)
    and the environment's non-secret ``fs.s3a.*`` settings; the keys are set later, on the running
    session only (:func:`components.common.spark_s3.s3a_configured`).

    A ``master`` of None leaves ``spark.master`` to the process: what spark-submit was given (the
    Spark operator's driver pod), else Spark's own default, ``local[*]``.

    Args:
        spark: A session to borrow; None for the active one, else a new one.
        master: Spark master URL for a new session.
        conf: Runtime SQL settings the job relies on.
        app_name: Application name of a new session.
        s3: Whether a new session needs the s3a connector.

    Yields:
        The session.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    owned = False
    archive: spark_class_archive.Plan | None = None
    if spark is None:
        spark = SparkSession.getActiveSession()
        if spark is not None:
            log.info("reusing the active Spark session", extra={"requested_master": master})
    if spark is None:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.appName(app_name)
        if master is not None:
            builder = builder.master(master)
        for key, value in {**_NEW_SESSION_CONF, **conf}.items():
            builder = builder.config(key, value)
        # Under spark-submit the driver JVM is already running: its options were spark-submit's to set.
        if SparkContext._gateway is None and "PYSPARK_GATEWAY_PORT" not in os.environ:
            archive = spark_class_archive.plan()
            builder = builder.config(
                "spark.driver.extraJavaOptions", " ".join((*DRIVER_JAVA_OPTIONS, *archive.options))
            )
        # The jars are downloaded once per machine and verified against the pins.
        for key, value in (spark_s3.session_conf() if s3 else {}).items():
            builder = builder.config(key, value)
        try:
            spark = builder.getOrCreate()
        except Exception:
            if archive is None or not archive.options:
                raise
            # A JVM that does not start with the archive starts without it, and the archive is dropped.
            spark_class_archive.failed(archive)
            archive = None
            spark = builder.config("spark.driver.extraJavaOptions", " ".join(DRIVER_JAVA_OPTIONS)).getOrCreate()
        owned = True
        if archive is not None:
            archive = spark_class_archive.started(spark, archive)
        log.info("spark session started", extra={"class_archive": "off" if archive is None else archive.state})
    # Also restored: the split size that spread_input sets per input.
    restored = [*conf, "spark.sql.files.maxPartitionBytes"]
    previous: dict[str, str | None] = {key: spark.conf.get(key, None) for key in restored}
    for key, value in conf.items():
        spark.conf.set(key, value)
    try:
        yield spark
    finally:
        if owned:
            spark.stop()
            if archive is not None:
                spark_class_archive.stopped(archive)
        else:
            for key, old in previous.items():
                if old is None:
                    spark.conf.unset(key)
                else:
                    spark.conf.set(key, old)


def stop_running_tasks(spark: SparkSession, timeout: float = 30.0) -> None:
    """Cancel this session's jobs and wait until none of their tasks runs any more, so nothing writes afterwards.

    When one task fails, the job's other tasks are only flagged as killed: each stops at its next
    row, after the Arrow batch it is scoring, and may write until then. The scheduler forgets their
    stage at once, so the wait is for the executors' running tasks, as the status tracker counts
    them (from the listener's events, which can only lag behind the tasks).
    """
    context = spark.sparkContext
    context.cancelAllJobs()
    executors = context._jsc.sc().statusTracker()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = sum(int(info.numRunningTasks()) for info in executors.getExecutorInfos())
        if not running and not context.statusTracker().getActiveStageIds():
            return
        time.sleep(0.1)


# --- the input ---------------------------------------------------------------------------


def check_location(location: str, field: str) -> bool:
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
class SparkInput:
    """What the driver learns about the input before Spark starts."""

    columns: list[str]
    # Columns stored as nanosecond timestamps (Spark reads them as longs).
    nanos_columns: list[str]
    # The separator of a text (CSV / TSV) file; None for Parquet.
    separator: str | None
    # Bytes of the Parquet files (0 for text), to size the input splits.
    parquet_bytes: int
    # Row groups of the Parquet files (at least; counting stops at _ENOUGH_ROW_GROUPS), None for text. Spark
    # reads a row group in one task however it splits the file, so fewer row groups than cores leave cores idle.
    row_groups: int | None = None


def input_schema(path: str) -> SparkInput:
    """Column names of the input and the ones stored as nanosecond timestamps, without Spark.

    Raises:
        DataError: The input is missing or not a readable CSV or Parquet file or folder.
    """
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
        return SparkInput([str(c) for c in header.columns], [], separator, 0)
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(str(source), format="parquet", partitioning="hive")
        row_groups = _row_groups(dataset)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file or folder: {exc}") from exc
    files = [source] if source.is_file() else list(source.rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    return SparkInput(list(dataset.schema.names), _nanos(dataset.schema), None, size, row_groups)


def _row_groups(dataset: Any) -> int:
    """Row groups of a Parquet dataset, from its footers; counting stops at :data:`_ENOUGH_ROW_GROUPS`."""
    count = 0
    for fragment in dataset.get_fragments():
        count += fragment.metadata.num_row_groups
        if count >= _ENOUGH_ROW_GROUPS:
            break
    return count


def _nanos(schema: Any) -> list[str]:
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.unit == "ns"]


def _remote_input_schema(location: str) -> SparkInput:
    """:func:`input_schema` of an object: the header or the Parquet footers, read through fsspec."""
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
        return SparkInput([str(c) for c in header.columns], [], separator, 0)
    try:
        with storage.store_errors(location):
            dataset = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
            row_groups = _row_groups(dataset)
            if folder:
                found = fs.find(path, detail=True).items()
                sizes = [int(info["size"]) for key, info in found if key.endswith(".parquet")]
            else:
                sizes = [int(fs.size(path))]
    except pa.ArrowInvalid as exc:
        raise DataError(f"{shown}: not a readable Parquet object or prefix: {exc}") from exc
    return SparkInput(list(dataset.schema.names), _nanos(dataset.schema), None, sum(sizes), row_groups)


def spread_input(spark: SparkSession, source: SparkInput) -> None:
    """Cap the bytes per input split so a file with several row groups is read by every core.

    Spark reads a Parquet row group in one task; by default a split is up to 128 MB, so a
    file below that would be read, and then scored, by one core.
    """
    if source.separator is not None:
        return
    cores = max(spark.sparkContext.defaultParallelism, 1)
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(max(source.parquet_bytes // cores + 1, 1 << 20)))


def needs_spreading(spark: SparkSession, frame: DataFrame, source: SparkInput) -> bool:
    """Whether ``frame`` (read from ``source``) would leave cores idle: fewer row groups, or partitions, than cores.

    For Parquet the row groups decide: Spark may split a file of one row group into as many
    partitions as cores, but only one of them holds rows.
    """
    cores = spark.sparkContext.defaultParallelism
    if source.row_groups is not None:
        return source.row_groups < cores
    return bool(frame.rdd.getNumPartitions() < cores)


def read_input(spark: SparkSession, path: str, source: SparkInput) -> DataFrame:
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


# --- the output --------------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """The lazy frames a job writes, what the scoring job observes, and the writer options.

    ``read`` is a ``pyspark.sql.Observation`` of the input rows the scoring job read (metric
    ``rows``): every row it does not write was rejected, so ``rejected`` is written only when the
    two counts differ, and a clean input is read once. Counting rows costs the scan next to
    nothing, where testing each row again for the observation cost a tenth of the job.
    """

    scored: DataFrame
    rejected: DataFrame
    read: Any
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Written:
    """What a job wrote: rows, rejected rows, date partitions, and where the rows are."""

    rows: int
    bad_rows: int
    partitions: list[str]
    data_path: str


def rejected_path(data_path: str) -> str:
    """Where the rejected rows of the output at ``data_path`` are."""
    if storage.is_remote(data_path):
        return storage.join(data_path, REJECTED_DIR)
    return str(Path(data_path) / REJECTED_DIR)


def write_local(spark: SparkSession, output: Output, output_path: str) -> Written:
    """Write to a temporary folder beside ``output_path`` and swap it into place."""
    # A killed job's temporary output is large: remove it now that its owner is provably dead (pid gone,
    # or reused: io checks the process start time), not only once it is old. atomic_path records this
    # process as the owner of its own temporary folder.
    remove_abandoned(output_path, max_age_seconds=0)
    with atomic_path(output_path) as tmp:
        try:
            output.scored.write.options(**output.options).partitionBy(PARTITION_COLUMN).parquet(str(tmp))
            rows, partitions = summarise(tmp)
            bad_rows = _not_written(output, rows)
            if bad_rows:
                output.rejected.write.parquet(str(tmp / REJECTED_DIR))
                bad_rows = count_rows(tmp / REJECTED_DIR)
        except Exception:
            # Other tasks of a failed job may still be writing; stop them before the folder is removed.
            stop_running_tasks(spark)
            raise
    return Written(rows, bad_rows, partitions, str(output_path))


def _not_written(output: Output, rows: int) -> int:
    """Rows the scoring job read but did not write: the rejected ones."""
    return int(output.read.get.get("rows") or 0) - rows


def write_remote(
    spark: SparkSession,
    output: Output,
    output_path: str,
    scored_at: datetime,
    model_uri: str,
    model_version: str | None,
) -> Written:
    """Write a run's own prefix below ``output_path``, then commit it with the marker."""
    run = f"{scored_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    data = storage.join(output_path, RUNS_DIR, run)
    try:
        output.scored.write.options(**output.options).partitionBy(PARTITION_COLUMN).parquet(spark_s3.to_s3a(data))
        rows, partitions = summarise(data)
        bad_rows = _not_written(output, rows)
        if bad_rows:
            output.rejected.write.parquet(spark_s3.to_s3a(rejected_path(data)))
            bad_rows = count_rows(rejected_path(data))
        # Read now, not when the job started: the run this one replaces is the one committed last.
        committed = read_commit(output_path)
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
        stop_running_tasks(spark)
        _remove_prefix(data)
        raise
    _remove_superseded(output_path, run, previous)
    return Written(rows, bad_rows, partitions, data)


def summarise(folder: Path | str) -> tuple[int, list[str]]:
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
    return count_rows(folder), partitions


def count_rows(folder: Path | str) -> int:
    """Rows in a folder (or prefix) of Parquet files, from their footers (entries starting with ``_`` are skipped)."""
    import pyarrow.dataset as ds

    if isinstance(folder, Path):
        return int(ds.dataset(str(folder), format="parquet", partitioning="hive").count_rows())
    fs, path = storage.filesystem(folder)
    with storage.store_errors(folder):
        return int(ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").count_rows())


def read_commit(output_path: str) -> dict[str, Any] | None:
    """The marker of ``output_path``'s committed run, checked; None if no run was committed.

    Raises:
        DataError: The marker is not a JSON object naming a run as batch_predict writes it.
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
