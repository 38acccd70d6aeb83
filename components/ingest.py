"""Ingest: snapshot one time window of a tabular source into a content-hashed Parquet file.

The snapshot is sorted deterministically, so the same source rows always give the same
bytes and the same ``content_hash``; that hash keys every downstream cache entry and is
recorded as the model's data lineage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from components.common.errors import DataError
from components.common.logs import get_logger

# pandas and the storage layer are imported where a snapshot is taken: the fingerprint task, which
# runs on every pipeline run, needs only the source's bytes (tests/unit/test_import_budget.py).
if TYPE_CHECKING:
    import pandas as pd

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
    """A window bound as a UTC timestamp; naive means UTC, empty means unbounded."""
    import pandas as pd

    if not value:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{name} {value!r} is not an ISO-8601 timestamp (e.g. '2026-01-05T00:00:00Z')") from exc
    if pd.isna(stamp):
        raise DataError(f"{name} {value!r} is not an ISO-8601 timestamp (e.g. '2026-01-05T00:00:00Z')")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def parse_timestamps(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    """The timestamp column as UTC datetimes in nanoseconds; naive values are taken as UTC.

    Datetime columns are converted; strings (what CSV gives) are parsed as ISO-8601 first
    and, for whatever that leaves, in pandas' lenient mixed mode. Numbers are refused:
    epoch values are ambiguous (seconds? milliseconds?) and would silently land in 1970.

    Args:
        frame: The table.
        column: The timestamp column.
        source: The file name, for error messages.

    Returns:
        The parsed column, dtype ``datetime64[ns, UTC]``.

    Raises:
        DataError: The column is missing, is numeric, or holds values that are not timestamps.
    """
    import pandas as pd

    from components.common.timestamps import parse_string_timestamps

    if column not in frame.columns:
        raise DataError(
            f"{source}: timestamp column {column!r} is missing; found columns {sorted(map(str, frame.columns))}"
        )
    raw = frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = pd.to_datetime(raw, utc=True)
    elif pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        example = next(iter(raw.dropna().head(1).tolist()), None)
        raise DataError(
            f"{source}: column {column!r} has dtype {raw.dtype} (e.g. {example!r}), expected timestamps "
            "(datetimes or ISO-8601 strings); convert epoch numbers to datetimes before ingesting"
        )
    else:
        parsed, bad = parse_string_timestamps(raw)
        if bad.any():
            example = raw[bad].head(1).tolist()[0]
            raise DataError(
                f"{source}: column {column!r} has {int(bad.sum())} value(s) that are not timestamps, "
                f"e.g. {example!r} in row {int(bad.to_numpy().nonzero()[0][0])}"
            )
    if parsed.isna().any():
        first = int(parsed.isna().to_numpy().nonzero()[0][0])
        raise DataError(
            f"{source}: column {column!r} has {int(parsed.isna().sum())} empty timestamp(s), first in row {first}"
        )
    try:
        # One unit whatever the storage (CSV parses to ns, Spark writes us), so equal data hashes equal.
        return parsed.dt.as_unit("ns")
    except (OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        raise DataError(
            f"{source}: column {column!r} has timestamps outside 1677-2262 ({parsed.min()} to {parsed.max()})"
        ) from exc


def ingest(
    source: str,
    spec: DatasetSpec,
    output_path: str,
    window_start: str | None = None,
    window_end: str | None = None,
) -> IngestResult:
    """Snapshot the rows of ``source`` with ``window_start <= timestamp < window_end``.

    Feature columns are not checked here: ``validate`` does that against the schema suite,
    so a missing feature column is reported there with its name. Every column is kept.

    Args:
        source: CSV or Parquet file, or a folder of Parquet files: a path or a URI (``s3://...``).
        spec: The dataset spec (entity and timestamp columns).
        output_path: Where to write the snapshot (one Parquet file, written atomically).
        window_start: Inclusive lower bound (ISO-8601); naive means UTC; empty means unbounded.
        window_end: Exclusive upper bound (ISO-8601); naive means UTC; empty means unbounded.

    Returns:
        Rows, content hash and bounds of the snapshot.

    Raises:
        DataError: The source is missing or unreadable, lacks the timestamp column or has
            unparseable timestamps, the bounds are invalid, or no rows fall in the window.
    """
    import pandas as pd

    from components.common import storage
    from components.common.io import frame_sha256, write_parquet
    from components.common.storage import read_table

    start, end = _utc_bound(window_start, "window_start"), _utc_bound(window_end, "window_end")
    if start is not None and end is not None and start >= end:
        raise DataError(f"window_start {window_start} is not before window_end {window_end}")
    frame = read_table(source)
    shown = storage.redact(source)  # what messages and the result show: never a credential
    timestamps = parse_timestamps(frame, spec.timestamp_column, shown)
    frame = frame.assign(**{spec.timestamp_column: timestamps})
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= timestamps >= start
    if end is not None:
        keep &= timestamps < end
    snapshot = frame[keep]
    if snapshot.empty:
        span = (
            f"the source spans {timestamps.min()} to {timestamps.max()} ({len(frame)} rows)"
            if len(frame)
            else "the source has no rows at all"
        )
        raise DataError(f"{shown}: no rows in window [{window_start or '-inf'}, {window_end or '+inf'}); {span}")
    # Stable sort on (timestamp, entity): the same rows in any input order give the same bytes.
    order = [spec.timestamp_column] + ([spec.entity_column] if spec.entity_column in snapshot.columns else [])
    try:
        snapshot = snapshot.sort_values(order, kind="stable").reset_index(drop=True)
    except TypeError as exc:
        raise DataError(
            f"{shown}: entity column {spec.entity_column!r} mixes types that cannot be ordered ({exc})"
        ) from exc
    content_hash = frame_sha256(snapshot)
    write_parquet(output_path, snapshot)
    result = IngestResult(
        path=str(output_path),
        rows=len(snapshot),
        content_hash=content_hash,
        source=shown,
        window_start=window_start or None,
        window_end=window_end or None,
        columns=[str(c) for c in snapshot.columns],
    )
    logger.info(
        "snapshot written",
        extra={
            "rows": result.rows,
            "source_rows": len(frame),
            "content_hash": result.content_hash,
            "path": result.path,
            "window": [result.window_start, result.window_end],
        },
    )
    return result


def source_fingerprint(source: str) -> str:
    """Content hash of the source (a file, or every file below a folder), as ``sha256:<hex>``.

    It keys ``ingest``'s cache entry: computed when the pipeline runs (not when it is
    submitted), so a recurring run whose parameters never change still sees new data. The
    source may be a path or a URI (``s3://...``); the same bytes give the same fingerprint
    wherever they are.

    Raises:
        DataError: The source does not exist.
        StorageError: The object store refused the request or cannot be reached.
    """
    from components.common import storage

    if not storage.exists(source):
        raise DataError(
            f"{storage.redact(source)}: source data not found", hint="Run 'ctpipe data generate' or fix dataset.source."
        )
    return f"sha256:{storage.fingerprint(source)}"
