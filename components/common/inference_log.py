"""The serving inference log: what the model server answered, for the monitoring pipeline.

The model server appends batches; ``monitor`` reads a time window of them as its "current"
data. Both sides use this module, so the layout is defined once:

    <log_dir>/date=YYYY-MM-DD/part-<time>-<uuid>.parquet

Each file is written atomically, so a reader never sees half a batch. Columns: ``request_id``,
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
from pathlib import Path

import pandas as pd

from components.common.errors import DataError
from components.common.io import write_parquet

REQUIRED_COLUMNS = ("request_id", "timestamp", "model_name", "model_version", "prediction")


def append_batch(log_dir: str | os.PathLike[str], batch: pd.DataFrame) -> list[Path]:
    """Write a batch of logged predictions, one file per UTC date it spans.

    Args:
        log_dir: The inference log folder.
        batch: Rows with at least :data:`REQUIRED_COLUMNS`.

    Returns:
        The files written (none for an empty batch).

    Raises:
        DataError: A required column is missing.
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
        path = Path(log_dir) / f"date={day}" / f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        write_parquet(path, rows.reset_index(drop=True))
        written.append(path)
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
        log_dir: The inference log folder.
        start: Window start; none means from the beginning.
        end: Window end (exclusive); none means up to now.
        model_name: Keep only this model's rows.

    Returns:
        The rows, sorted by timestamp; an empty frame with the required columns if none.

    Raises:
        DataError: The folder does not exist.
    """
    folder = Path(log_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: no inference log here (the model server writes it once it has answered requests)")
    lower = _utc(start)
    upper = _utc(end)
    files = []
    for partition in sorted(folder.glob("date=*")):
        day = pd.Timestamp(partition.name.removeprefix("date="), tz="UTC")
        if (lower is not None and day + pd.Timedelta(days=1) <= lower) or (upper is not None and day >= upper):
            continue
        files.extend(sorted(partition.glob("part-*.parquet")))
    if not files:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS))
    frame = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    keep = pd.Series(True, index=frame.index)
    if lower is not None:
        keep &= frame["timestamp"] >= lower
    if upper is not None:
        keep &= frame["timestamp"] < upper
    if model_name is not None:
        keep &= frame["model_name"] == model_name
    return frame[keep].sort_values("timestamp", kind="stable").reset_index(drop=True)


def _utc(value: str | pd.Timestamp | None) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
