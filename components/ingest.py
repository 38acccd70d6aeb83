"""Ingest: snapshot one time window of a tabular source into a content-hashed Parquet file.

The snapshot is sorted deterministically, so the same source rows always give the same
bytes and the same ``content_hash``; that hash keys every downstream cache entry and is
recorded as the model's data lineage.
"""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel

from components.common.errors import DataError
from components.common.io import frame_sha256, read_table, write_parquet
from components.common.logs import get_logger
from components.specs import DatasetSpec

logger = get_logger("ingest")


class IngestResult(BaseModel):
    """Where the snapshot went and what it holds."""

    path: str
    rows: int
    content_hash: str
    source: str
    window_start: str | None
    window_end: str | None
    columns: list[str]


def _utc_bound(value: str | None, name: str) -> pd.Timestamp | None:
    if not value:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{name} {value!r} is not an ISO-8601 timestamp") from exc
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def parse_timestamps(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    """The timestamp column as UTC datetimes; naive values are taken as UTC.

    Raises:
        DataError: The column is missing or holds values that are not timestamps.
    """
    if column not in frame.columns:
        raise DataError(
            f"{source}: timestamp column {column!r} is missing; found columns {sorted(map(str, frame.columns))}"
        )
    raw = frame[column]
    parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed") if raw.dtype == object else None
    if parsed is None:
        try:
            parsed = pd.to_datetime(raw, utc=True)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{source}: column {column!r} has dtype {raw.dtype}, expected timestamps") from exc
    bad = parsed.isna() & raw.notna()
    if bad.any():
        example = raw[bad].iloc[0]
        raise DataError(
            f"{source}: column {column!r} has {int(bad.sum())} value(s) that are not timestamps, e.g. {example!r}"
        )
    if parsed.isna().any():
        raise DataError(f"{source}: column {column!r} has {int(parsed.isna().sum())} empty timestamp(s)")
    return parsed


def ingest(
    source: str,
    spec: DatasetSpec,
    output_path: str,
    window_start: str | None = None,
    window_end: str | None = None,
) -> IngestResult:
    """Snapshot the rows of ``source`` with ``window_start <= timestamp < window_end``.

    Feature columns are not checked here: ``validate`` does that against the schema suite,
    so a missing feature column is reported there with its name.

    Args:
        source: CSV or Parquet file, or a folder of Parquet files.
        spec: The dataset spec (entity and timestamp columns).
        output_path: Where to write the snapshot (one Parquet file, written atomically).
        window_start: Inclusive lower bound (ISO-8601); naive means UTC; empty means unbounded.
        window_end: Exclusive upper bound (ISO-8601); naive means UTC; empty means unbounded.

    Returns:
        Rows, content hash and bounds of the snapshot.

    Raises:
        DataError: The source is missing or unreadable, lacks the timestamp column, or has no
            rows in the window.
    """
    start, end = _utc_bound(window_start, "window_start"), _utc_bound(window_end, "window_end")
    if start is not None and end is not None and start >= end:
        raise DataError(f"window_start {window_start} is not before window_end {window_end}")
    frame = read_table(source)
    timestamps = parse_timestamps(frame, spec.timestamp_column, source)
    frame = frame.assign(**{spec.timestamp_column: timestamps})
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= timestamps >= start
    if end is not None:
        keep &= timestamps < end
    snapshot = frame[keep]
    if snapshot.empty:
        raise DataError(
            f"{source}: no rows in window [{window_start or '-inf'}, {window_end or '+inf'}); "
            f"the source spans {timestamps.min()} to {timestamps.max()} ({len(frame)} rows)"
        )
    order = [spec.timestamp_column] + ([spec.entity_column] if spec.entity_column in snapshot.columns else [])
    snapshot = snapshot.sort_values(order, kind="stable").reset_index(drop=True)
    write_parquet(output_path, snapshot)
    result = IngestResult(
        path=str(output_path),
        rows=len(snapshot),
        content_hash=frame_sha256(snapshot),
        source=str(source),
        window_start=window_start or None,
        window_end=window_end or None,
        columns=[str(c) for c in snapshot.columns],
    )
    logger.info("snapshot written", extra={"rows": result.rows, "hash": result.content_hash[:12], "path": result.path})
    return result
