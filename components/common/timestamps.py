"""Timestamps written as strings (what a CSV gives), parsed the one way every step shares."""

from __future__ import annotations

from typing import Any

import pandas as pd


def parse_string_timestamps(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse a column of timestamp strings to UTC; naive values are taken as UTC.

    Values are parsed as ISO-8601 first and, for whatever that leaves, in pandas' lenient
    mixed mode (non-ISO spellings such as ``"05/01/2026 10:00"``, date objects). Nothing is
    raised: each caller decides what a value that is not a timestamp means.

    Args:
        raw: The column as read, holding strings (or other non-numeric values).

    Returns:
        The parsed column (dtype ``datetime64[..., UTC]``, NaT where a value did not parse or
        was null) and the mask of values that are present but are not timestamps.
    """
    parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
    retry = parsed.isna() & raw.notna()
    if retry.any():
        parsed = parsed.where(~retry, pd.to_datetime(raw[retry], utc=True, errors="coerce", format="mixed"))
    return parsed, parsed.isna() & raw.notna()


def parse_timestamp_column(frame: pd.DataFrame, column: str) -> tuple[pd.DataFrame, list[Any]]:
    """Parse a timestamp column that holds strings (a CSV) to UTC; return it and unparseable examples.

    A missing column, and one that already holds datetimes or numbers, is left as it is. If any
    value fails to parse the frame is returned unchanged, so a type check fails on it and the
    examples (up to three) can go into its message.

    Args:
        frame: The table.
        column: The timestamp column.

    Returns:
        The frame, with ``column`` parsed when every value parsed, and the unparseable examples.
    """
    if column not in frame.columns:
        return frame, []
    raw = frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw) or pd.api.types.is_numeric_dtype(raw):
        return frame, []
    parsed, bad = parse_string_timestamps(raw)
    if bad.any():
        return frame, raw[bad].head(3).tolist()
    return frame.assign(**{column: parsed}), []
