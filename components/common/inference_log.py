"""The serving inference log: what the model server answered, for the monitoring pipeline.

The model server appends batches; ``monitor`` reads a time window of them as its "current"
data. Both sides use this module, so the layout is defined once:

    <log_dir>/date=YYYY-MM-DD/part-<time>-<uuid>.parquet
    <log_dir>/date=YYYY-MM-DD/part-compacted-<date>-<uuid>.parquet   (after compaction)

``log_dir`` is a folder or an object-store prefix (``s3://bucket/inference_log``): both sides go
through :mod:`components.common.storage`. Each file is written atomically (a local rename, or
one object), so a reader never sees half a batch; a reader may see some of the files of a
batch that spans several dates, which is a valid state of a log read as "what is there now". Columns: ``request_id``,
``timestamp`` (UTC), ``model_name``, ``model_version``, the request's feature columns under
their own names (and the entity column when the request named entities), ``prediction``
(the served value: positive-class probability for binary classifiers, else the prediction;
for a multiclass classifier the probability of the predicted class, with ``predicted_class``
(the class as text) and one ``proba_<class>`` column per class, ``multiclass.probability_columns``).
Optional: ``latency_ms`` (server-side time for the request) and ``status`` (``ok``, or
``error`` for a request the model failed on: a 5xx, with ``prediction`` null), which canary
analysis uses to compare versions.

Personal data (:func:`protect`, applied by the server's writer before anything is stored):
columns named in ``exclude`` are dropped, columns named in ``hash`` hold the HMAC-SHA256 hex
digest of the value under a key from the environment. Each file records which columns were
excluded and hashed (:func:`protection` reads it back), so readers know a column is missing or
unreadable on purpose.

Reading (:func:`read_window`) streams: a pyarrow dataset over the files of the dates in the
window, filtered on timestamp (and model name) while it is scanned, reading only the columns
the caller asks for, so memory follows the result, not the log.

Maintenance (:func:`compact`, :func:`prune`; ``ctpipe inference-log maintain`` and the monitoring
pipeline's maintenance step):

- compaction rewrites each past day's files into one ``part-compacted-<date>-<uuid>.parquet``
  whose Parquet metadata lists the files it replaces. A reader ignores every file a compacted
  file of its listing replaces, so whatever it lists sees each row exactly once: before the
  compacted file is published (one rename or one object) it reads the small files; after, the
  compacted one; the small files are deleted only after that. A reader whose files are deleted
  between its listing and its read lists again. Today's partition is never compacted (the
  server still writes there); a late file that lands in a compacted day is merged by the next
  run, which replaces the old compacted file as well.
- retention deletes whole ``date=`` partitions dated before ``today - retention_days`` (UTC), and
  nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.common import io as local_io
from components.common import storage
from components.common.errors import DataError
from components.common.logs import get_logger

logger = get_logger("components.inference_log")

REQUIRED_COLUMNS = ("request_id", "timestamp", "model_name", "model_version", "prediction")
#: Parquet metadata key of a compacted file: the JSON list of the file names it replaces.
REPLACES_KEY = b"ctpipe.replaces"
#: ``DataFrame.attrs`` key (stored by pandas in the Parquet metadata) naming the protected columns.
PROTECTION_ATTR = "ctpipe_inference_log"
COMPACTED_PREFIX = "part-compacted-"
_READ_ATTEMPTS = 4


def hash_values(values: pd.Series, key: bytes) -> pd.Series:
    """HMAC-SHA256 hex digests of the values' text (nulls stay null); equal values give equal digests."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    digests = [hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest() for value in uniques]
    lookup = pd.Series([*digests, None], dtype=object)
    return pd.Series(lookup.to_numpy()[codes], index=values.index, dtype=object)


def protect(
    batch: pd.DataFrame, exclude: Iterable[str] = (), hash_columns: Iterable[str] = (), key: bytes = b""
) -> pd.DataFrame:
    """``batch`` with the ``exclude`` columns dropped and the ``hash_columns`` replaced by keyed digests.

    The columns protected are recorded in ``attrs`` (and so in each file's metadata).

    Raises:
        ValueError: Columns are to be hashed but the key is empty.
    """
    exclude, hash_columns = list(exclude), list(hash_columns)
    if hash_columns and not key:
        raise ValueError("the inference log hashes columns but the hash key is empty")
    out = batch.drop(columns=[c for c in exclude if c in batch.columns])
    for name in hash_columns:
        if name in out.columns:
            out[name] = hash_values(out[name], key)
    if exclude or hash_columns:
        out.attrs[PROTECTION_ATTR] = {"excluded": sorted(exclude), "hashed": sorted(hash_columns)}
    return out


def append_batch(log_dir: str | os.PathLike[str], batch: pd.DataFrame) -> list[str]:
    """Write a batch of logged predictions, one file per UTC date it spans.

    Args:
        log_dir: The inference log folder or object-store prefix.
        batch: Rows with at least :data:`REQUIRED_COLUMNS` (already :func:`protect`-ed).

    Returns:
        The files (or object URIs) written; none for an empty batch.

    Raises:
        DataError: A required column is missing.
        StorageError: The object store refused the write or cannot be reached.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in batch.columns]
    if missing:
        raise DataError(f"inference log batch lacks column(s) {missing}; found {sorted(map(str, batch.columns))}")
    if batch.empty:
        return []
    attrs = dict(batch.attrs)
    batch = batch.assign(timestamp=pd.to_datetime(batch["timestamp"], utc=True))
    written = []
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for day, rows in batch.groupby(batch["timestamp"].dt.strftime("%Y-%m-%d"), sort=True):
        location = storage.join(log_dir, f"date={day}", f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet")
        frame = rows.reset_index(drop=True)
        frame.attrs = attrs
        written.append(storage.write_parquet(location, frame))
    return written


@dataclass
class _Partition:
    """The files of one date partition, as one listing saw them."""

    day: str
    files: list[str] = field(default_factory=list)  # names, in path order


def _list(log_dir: str | os.PathLike[str]) -> dict[str, _Partition]:
    partitions: dict[str, _Partition] = {}
    # One listing of the whole log (one paginated LIST on an object store), in path order.
    for relative in storage.find(log_dir):
        parts = relative.split("/")
        if len(parts) != 2 or not parts[0].startswith("date=") or not _is_part(parts[1]):
            continue  # not a batch file: temporary files of a writer, anything else in the folder
        day = parts[0].removeprefix("date=")
        if _day(day) is None:
            continue
        partitions.setdefault(day, _Partition(day)).files.append(parts[1])
    return partitions


def _pyarrow_fs(log_dir: str | os.PathLike[str]) -> tuple[Any, str]:
    """The filesystem pyarrow reads through (None: local paths) and the log's root path for it."""
    if storage.is_remote(log_dir):
        return storage.filesystem(log_dir)
    return None, str(storage.local_path(log_dir))


def _schema(path: str, fs: Any) -> Any:
    import pyarrow.parquet as pq

    return pq.read_schema(path, filesystem=fs)


def _live(root: str, partition: _Partition, fs: Any) -> tuple[list[str], list[str], dict[str, Any]]:
    """The files of a partition a reader reads, the files compacted files replace, and the schemas read."""
    schemas: dict[str, Any] = {}
    replaced: set[str] = set()
    for name in partition.files:
        if name.startswith(COMPACTED_PREFIX):
            schema = _schema(f"{root}/date={partition.day}/{name}", fs)
            schemas[name] = schema
            replaced.update(json.loads((schema.metadata or {}).get(REPLACES_KEY, b"[]")))
    live = [name for name in partition.files if name not in replaced]
    return live, sorted(replaced & set(partition.files)), schemas


def _unify(schemas: Sequence[Any]) -> Any:
    """One schema for files whose columns differ (versions with other features): missing columns read as null."""
    import pyarrow as pa

    plain = [schema.remove_metadata() for schema in schemas]
    try:
        unified = pa.unify_schemas(plain, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        fields: dict[str, Any] = {}
        for schema in plain:
            for item in schema:
                known = fields.get(item.name)
                if known is None:
                    fields[item.name] = item
                elif known.type != item.type:
                    try:
                        fields[item.name] = pa.unify_schemas(
                            [pa.schema([known]), pa.schema([item])], promote_options="permissive"
                        ).field(item.name)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
                        fields[item.name] = pa.field(item.name, pa.string())  # a value's type changed: read as text
        unified = pa.schema(list(fields.values()))
    index = unified.get_field_index("timestamp")
    if index >= 0 and pa.types.is_timestamp(unified.field(index).type):
        unified = unified.set(index, pa.field("timestamp", pa.timestamp("ns", tz="UTC")))
    return unified


def protection(schemas: Iterable[Any]) -> dict[str, list[str]]:
    """Columns the files' writers excluded or hashed (``{"excluded": [...], "hashed": [...]}``)."""
    excluded: set[str] = set()
    hashed: set[str] = set()
    for schema in schemas:
        raw = (schema.metadata or {}).get(b"PANDAS_ATTRS")
        if not raw:
            continue
        with_attrs = json.loads(raw).get(PROTECTION_ATTR) or {}
        excluded.update(with_attrs.get("excluded", []))
        hashed.update(with_attrs.get("hashed", []))
    return {"excluded": sorted(excluded), "hashed": sorted(hashed)}


def read_window(
    log_dir: str | os.PathLike[str],
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    model_name: str | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Logged predictions with ``start <= timestamp < end`` (UTC), oldest first.

    Only the date partitions that can hold the window are read, as one pyarrow dataset scanned
    with the window (and model name) as a filter and only ``columns``: memory holds the result,
    not the log. Files of different model versions may have different columns; a column a file
    lacks is null in its rows. ``attrs["protection"]`` of the result names the columns the
    writer excluded or hashed (:func:`protect`).

    Args:
        log_dir: The inference log folder or object-store prefix.
        start: Window start; none means from the beginning.
        end: Window end (exclusive); none means up to now.
        model_name: Keep only this model's rows.
        columns: Read only these columns (``timestamp`` is always read); the ones the log does not
            have are left out of the result. None reads every column.

    Returns:
        The rows, sorted by timestamp; an empty frame with the required columns if none.

    Raises:
        DataError: The folder (or prefix) does not exist.
        StorageError: The object store refused the request or cannot be reached.
    """
    if not storage.is_dir(log_dir):
        raise DataError(
            f"{storage.redact(log_dir)}: no inference log here (the model server writes it once it has answered "
            "requests)"
        )
    for attempt in range(_READ_ATTEMPTS):
        try:
            return _read_window(log_dir, _utc(start), _utc(end), model_name, columns)
        except FileNotFoundError:
            # Compaction deleted files this listing named (their rows are in a compacted file now): list again.
            if attempt == _READ_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _read_window(
    log_dir: str | os.PathLike[str],
    lower: pd.Timestamp | None,
    upper: pd.Timestamp | None,
    model_name: str | None,
    columns: Sequence[str] | None,
) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.dataset as ds

    fs, root = _pyarrow_fs(log_dir)
    paths: list[str] = []
    schemas: list[Any] = []
    for day, partition in sorted(_list(log_dir).items()):
        start_of_day = pd.Timestamp(day, tz="UTC")
        if (lower is not None and start_of_day + pd.Timedelta(days=1) <= lower) or (
            upper is not None and start_of_day >= upper
        ):
            continue
        live, _, known = _live(root, partition, fs)
        for name in live:
            path = f"{root}/date={day}/{name}"
            paths.append(path)
            schemas.append(known.get(name) or _schema(path, fs))
    wanted = list(dict.fromkeys([*columns, "timestamp"])) if columns is not None else None
    if not paths:
        return pd.DataFrame(columns=wanted or list(REQUIRED_COLUMNS))
    schema = _unify(schemas)
    dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=fs)
    condition = None
    stamp_type = schema.field("timestamp").type if "timestamp" in schema.names else pa.timestamp("ns", tz="UTC")
    for bound, compare in ((lower, "ge"), (upper, "lt")):
        if bound is not None:
            scalar = pa.scalar(bound.value, type=pa.timestamp("ns", tz="UTC")).cast(stamp_type, safe=False)
            term = ds.field("timestamp") >= scalar if compare == "ge" else ds.field("timestamp") < scalar
            condition = term if condition is None else condition & term
    if model_name is not None and "model_name" in schema.names:
        term = ds.field("model_name") == model_name
        condition = term if condition is None else condition & term
    selected = None if wanted is None else [name for name in wanted if name in schema.names]
    table = dataset.to_table(columns=selected, filter=condition)
    if "timestamp" in table.column_names:
        table = table.sort_by([("timestamp", "ascending")])
    frame = table.to_pandas()
    if model_name is not None and "model_name" not in schema.names:
        frame = frame.iloc[0:0]
    if "timestamp" in frame.columns:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame.attrs["protection"] = protection(schemas)
    return frame.reset_index(drop=True)


def _today(now: str | pd.Timestamp | None) -> pd.Timestamp:
    stamp = _utc(now) or pd.Timestamp.now(tz="UTC")
    return stamp.normalize()


def _delete(location: str, recursive: bool = False) -> None:
    if not storage.is_remote(location):
        path = storage.local_path(location)
        if recursive:
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    fs, key = storage.filesystem(location)
    with storage.store_errors(location):
        if recursive or fs.exists(key):
            fs.rm(key, recursive=recursive)


def prune(log_dir: str | os.PathLike[str], retention_days: int, now: str | pd.Timestamp | None = None) -> list[str]:
    """Delete the ``date=`` partitions dated before ``today - retention_days`` (UTC); nothing else.

    Args:
        log_dir: The inference log folder or object-store prefix.
        retention_days: Days kept besides today (at least 1).
        now: The current time (tests); default now.

    Returns:
        The days deleted (``YYYY-MM-DD``), oldest first.

    Raises:
        ValueError: ``retention_days`` is below 1.
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    if not storage.is_dir(log_dir):
        return []
    cutoff = _today(now) - pd.Timedelta(days=retention_days)
    days = sorted({rel.split("/")[0].removeprefix("date=") for rel in storage.find(log_dir) if rel.startswith("date=")})
    deleted = []
    for day in days:
        parsed = _day(day)
        if parsed is None or parsed >= cutoff:
            continue
        _delete(storage.join(log_dir, f"date={day}"), recursive=True)
        deleted.append(day)
    if deleted:
        logger.info(
            "inference log partitions past retention deleted",
            extra={"log_dir": storage.redact(log_dir), "days": deleted, "retention_days": retention_days},
        )
    return deleted


def compact(log_dir: str | os.PathLike[str], now: str | pd.Timestamp | None = None) -> dict[str, int]:
    """Rewrite each past day's files into one compacted file (module docstring: how readers stay exact).

    Today's partition (UTC) and days with a single file are left as they are; files a compacted
    file already replaces (left by an interrupted run) are deleted.

    Args:
        log_dir: The inference log folder or object-store prefix.
        now: The current time (tests); default now.

    Returns:
        Per compacted day (``YYYY-MM-DD``), how many files one file replaced.
    """
    if not storage.is_dir(log_dir):
        return {}
    today = _today(now)
    fs, root = _pyarrow_fs(log_dir)
    compacted: dict[str, int] = {}
    for day, partition in sorted(_list(log_dir).items()):
        parsed = _day(day)
        if parsed is None or parsed >= today:
            continue
        live, stale, known = _live(root, partition, fs)
        for name in stale:  # an earlier run published their compacted file, then stopped
            _delete(storage.join(log_dir, f"date={day}", name))
        if len(live) < 2:
            continue
        paths = [f"{root}/date={day}/{name}" for name in live]
        schemas = [known.get(name) or _schema(path, fs) for name, path in zip(live, paths, strict=True)]
        target = storage.join(log_dir, f"date={day}", f"{COMPACTED_PREFIX}{day}-{uuid.uuid4().hex[:12]}.parquet")
        _write_compacted(target, paths, schemas, fs, replaces=live)
        for name in live:
            _delete(storage.join(log_dir, f"date={day}", name))
        compacted[day] = len(live)
    if compacted:
        logger.info("inference log compacted", extra={"log_dir": storage.redact(log_dir), "days": compacted})
    return compacted


def _write_compacted(target: str, paths: list[str], schemas: list[Any], fs: Any, replaces: list[str]) -> None:
    """Stream ``paths`` into one Parquet file at ``target``, published whole (a rename, or one object)."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    schema = _unify(schemas)
    metadata = {REPLACES_KEY: json.dumps(replaces).encode()}
    attrs = protection(schemas)
    if attrs["excluded"] or attrs["hashed"]:
        metadata[b"PANDAS_ATTRS"] = json.dumps({PROTECTION_ATTR: attrs}).encode()
    schema = schema.with_metadata(metadata)
    dataset = ds.dataset(paths, schema=schema.remove_metadata(), format="parquet", filesystem=fs)

    def write(local: Path) -> None:
        with pq.ParquetWriter(local, schema) as writer:
            for batch in dataset.to_batches(batch_size=local_io.PARQUET_ROW_GROUP_ROWS):
                if batch.num_rows:
                    writer.write_batch(
                        batch.replace_schema_metadata(metadata), row_group_size=local_io.PARQUET_ROW_GROUP_ROWS
                    )

    if not storage.is_remote(target):
        with local_io.atomic_path(storage.local_path(target)) as tmp:
            write(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="ctpipe-compact-") as folder:
        local = Path(folder) / "compacted.parquet"
        write(local)
        remote_fs, path = storage.filesystem(target)
        with storage.store_errors(target):
            remote_fs.put_file(str(local), path)


def _day(text: str) -> pd.Timestamp | None:
    try:
        return pd.Timestamp(time.strftime("%Y-%m-%d", time.strptime(text, "%Y-%m-%d")), tz="UTC")
    except ValueError:
        return None


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def _utc(value: str | pd.Timestamp | None) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def maintain(
    log_dir: str | os.PathLike[str],
    retention_days: int | None = None,
    compact_days: bool = True,
    now: str | pd.Timestamp | None = None,
) -> dict[str, Any]:
    """Retention, then compaction: what ``ctpipe inference-log maintain`` and the pipeline step run.

    Args:
        log_dir: The inference log folder or object-store prefix.
        retention_days: Delete partitions dated before ``today - retention_days``; None keeps all.
        compact_days: Compact the past days' files.
        now: The current time (tests); default now.

    Returns:
        ``{"log_dir", "pruned_days", "compacted_days", "retention_days"}``.
    """
    pruned = prune(log_dir, retention_days, now) if retention_days is not None else []
    compacted = compact(log_dir, now) if compact_days else {}
    return {
        "log_dir": storage.redact(log_dir),
        "retention_days": retention_days,
        "pruned_days": pruned,
        "compacted_days": compacted,
    }
