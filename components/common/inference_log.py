"""The serving inference log: what the model server answered, for the monitoring pipeline.

The model server appends batches; ``monitor`` reads a time window of them as its "current"
data. Both sides use this module, so the layout is defined once:

    <log_dir>/date=YYYY-MM-DD/part-<time>-<uuid>.parquet

``log_dir`` is a folder or an object-store prefix (``s3://bucket/inference_log``): both sides go
through :mod:`components.common.storage`. Each file is written atomically (a local rename, or
one object), so a reader never sees half a batch; a reader may see some of the files of a
batch that spans several dates, which is a valid state of a log read as "what is there now". Columns: ``request_id``,
``timestamp`` (UTC), ``model_name``, ``model_version``, the request's feature columns under
their own names (and the entity column when the request named entities), ``prediction``
(the served value: positive-class probability for binary classifiers, else the prediction).
Optional: ``latency_ms`` (server-side time for the request) and ``status`` (``ok``, or
``error`` for a request the model failed on: a 5xx, with ``prediction`` null), which canary
analysis uses to compare versions.
"""

from __future__ import annotations

import os
import time
import uuid

import pandas as pd

from components.common import storage
from components.common.errors import DataError

REQUIRED_COLUMNS = ("request_id", "timestamp", "model_name", "model_version", "prediction")


def append_batch(log_dir: str | os.PathLike[str], batch: pd.DataFrame) -> list[str]:
    """Write a batch of logged predictions, one file per UTC date it spans.

    Args:
        log_dir: The inference log folder or object-store prefix.
        batch: Rows with at least :data:`REQUIRED_COLUMNS`.

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
    batch = batch.assign(timestamp=pd.to_datetime(batch["timestamp"], utc=True))
    written = []
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for day, rows in batch.groupby(batch["timestamp"].dt.strftime("%Y-%m-%d"), sort=True):
        location = storage.join(log_dir, f"date={day}", f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet")
        written.append(storage.write_parquet(location, rows.reset_index(drop=True)))
    return written


def read_window(
    log_dir: str | os.PathLike[str],
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    model_name: str | None = None,
) -> pd.DataFrame:
    """Logged predictions with ``start <= timestamp < end`` (UTC), oldest first.

    Only the date partitions that can hold the window are read.

    Args:
        log_dir: The inference log folder or object-store prefix.
        start: Window start; none means from the beginning.
        end: Window end (exclusive); none means up to now.
        model_name: Keep only this model's rows.

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
    lower = _utc(start)
    upper = _utc(end)
    files = []
    # One listing of the whole log (one paginated LIST on an object store), in path order.
    for relative in storage.find(log_dir):
        parts = relative.split("/")
        if len(parts) != 2 or not parts[0].startswith("date=") or not _is_part(parts[1]):
            continue  # not a batch file: temporary files of a writer, anything else in the folder
        day = pd.Timestamp(parts[0].removeprefix("date="), tz="UTC")
        if (lower is not None and day + pd.Timedelta(days=1) <= lower) or (upper is not None and day >= upper):
            continue
        files.append(storage.join(log_dir, relative))
    if not files:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    frame = pd.concat([storage.read_parquet(location) for location in files], ignore_index=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    keep = pd.Series(True, index=frame.index)
    if lower is not None:
        keep &= frame["timestamp"] >= lower
    if upper is not None:
        keep &= frame["timestamp"] < upper
    if model_name is not None:
        keep &= frame["model_name"] == model_name
    return frame[keep].sort_values("timestamp", kind="stable").reset_index(drop=True)


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet")


def _utc(value: str | pd.Timestamp | None) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
