"""Time windows of a scheduled run: the last complete window before a time (T-1) and the one before (T-2).

A recurring run has a time T (its scheduled time on Kubeflow Pipelines, the clock of the
CronJob that submits it, or ``--at`` on the command line). Windows have a fixed length
(``schedule.window``) and are aligned to a fixed anchor (``schedule.anchor``): every window
is ``[anchor + k * length, anchor + (k + 1) * length)`` for some integer ``k``. So any time
inside the same window gives the same bounds, and running again for the same T (a retry, a
rerun, a second CronJob firing) reads the same rows and hits the same caches.

- **T-1** is the last complete window that ends at or before T: the run trains on it and
  monitors it. A T exactly on a boundary ends T-1 there (that window is complete).
- **T-2** is the window before T-1: the reference T-1 is monitored against.

Every time is handled as a timezone-aware UTC datetime; a naive one is taken as UTC, as the
window bounds of ``ingest`` are. This module is plain Python: the runner, the CLI (and so the
CronJob) and the pipelines' ``schedule_window`` task all compute windows here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# A Monday, midnight UTC: weekly windows run Monday to Monday, daily ones midnight to midnight.
DEFAULT_ANCHOR = "1970-01-05T00:00:00+00:00"
DEFAULT_WINDOW = "7d"

_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """A window length such as ``7d``, ``1w``, ``24h`` or ``90m`` as a timedelta.

    Args:
        text: A positive whole number and one unit: ``m`` minutes, ``h`` hours, ``d`` days, ``w`` weeks.

    Returns:
        The length.

    Raises:
        ValueError: The text is not a number and one of those units, or the length is zero.
    """
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(
            "expected a window length such as 7d, 1w, 24h or 90m (a whole number and one of m, h, d, w), "
            f"found {text!r}"
        )
    amount, unit = int(match.group(1)), match.group(2)
    if amount == 0:
        raise ValueError(f"expected a window length above zero, found {text!r}")
    return timedelta(**{_UNITS[unit]: amount})


def as_utc(moment: datetime) -> datetime:
    """``moment`` as a timezone-aware UTC datetime; a naive one is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_time(text: str) -> datetime:
    """An ISO-8601 timestamp (``Z`` or an offset; naive means UTC) as a UTC datetime.

    Args:
        text: For example ``2026-01-12T03:00:00Z``, KFP's rendering of a scheduled time.

    Returns:
        The time, timezone-aware, in UTC.

    Raises:
        ValueError: The text is not an ISO-8601 timestamp.
    """
    try:
        return as_utc(datetime.fromisoformat(str(text).strip()))
    except ValueError:
        raise ValueError(f"expected an ISO-8601 timestamp such as 2026-01-12T03:00:00Z, found {text!r}") from None


@dataclass(frozen=True)
class TimeWindow:
    """One window ``[start, end)``, both ends timezone-aware UTC."""

    start: datetime
    end: datetime

    @property
    def bounds(self) -> tuple[str, str]:
        """``(start, end)`` as ISO-8601 strings with ``+00:00``: what ``window_start``/``window_end`` take."""
        return self.start.isoformat(), self.end.isoformat()


def window_before(moment: datetime, length: timedelta, anchor: datetime, back: int = 1) -> TimeWindow:
    """The ``back``-th last complete window that ends at or before ``moment``.

    Windows are ``[anchor + k * length, anchor + (k + 1) * length)``; ``back=1`` is T-1 (the
    last complete one), ``back=2`` is T-2 (the one before it). A ``moment`` exactly on a
    boundary ends T-1 at that boundary. Times before the anchor work the same way.

    Args:
        moment: The run's time T; naive means UTC.
        length: The window length (positive).
        anchor: Any window boundary; naive means UTC.
        back: How many windows back: 1 for T-1, 2 for T-2.

    Returns:
        The window, in UTC.

    Raises:
        ValueError: ``length`` is not positive or ``back`` is below 1.
    """
    if length <= timedelta(0):
        raise ValueError(f"window length must be positive, found {length}")
    if back < 1:
        raise ValueError(f"back must be 1 (T-1) or more, found {back}")
    origin = as_utc(anchor)
    boundaries = (as_utc(moment) - origin) // length  # floor division: the last boundary at or before T
    end = origin + (boundaries - (back - 1)) * length
    return TimeWindow(end - length, end)


def scheduled_windows(moment: datetime, window: str, anchor: str = DEFAULT_ANCHOR) -> tuple[TimeWindow, TimeWindow]:
    """T-1 (the window a run at ``moment`` trains on and monitors) and T-2 (its monitoring reference).

    Args:
        moment: The run's time T; naive means UTC.
        window: The window length, as ``schedule.window`` spells it (``7d``).
        anchor: A window boundary, as ``schedule.anchor`` spells it (ISO-8601).

    Returns:
        ``(T-1, T-2)``.

    Raises:
        ValueError: ``window`` or ``anchor`` is malformed.
    """
    length, origin = parse_duration(window), parse_time(anchor)
    return window_before(moment, length, origin, 1), window_before(moment, length, origin, 2)


@dataclass(frozen=True)
class RunWindows:
    """The bounds a run reads: its window and the monitoring reference window (empty: unbounded / none)."""

    window_start: str
    window_end: str
    reference_start: str
    reference_end: str
    origin: str  # "explicit", "scheduled <time>" or "unbounded"


def run_windows(
    scheduled_time: str,
    window_start: str,
    window_end: str,
    reference_start: str,
    reference_end: str,
    window: str = DEFAULT_WINDOW,
    anchor: str = DEFAULT_ANCHOR,
) -> RunWindows:
    """The window a run reads: its explicit bounds if it has any, else T-1 (and T-2) of its scheduled time.

    A manual run that names ``window_start`` or ``window_end`` reads exactly that (and its
    explicit reference bounds, if any). A run without bounds that has a scheduled time, which
    on Kubeflow Pipelines every run has (a recurring run's scheduled time, a one-off run's
    creation time), reads T-1 and is monitored against T-2 (unless reference bounds are given).
    Without either (kfp.local has no scheduled time) the bounds stay empty: the whole source.

    Args:
        scheduled_time: The run's time T (ISO-8601), or empty.
        window_start: Explicit inclusive start (ISO-8601), or empty.
        window_end: Explicit exclusive end (ISO-8601), or empty.
        reference_start: Explicit start of the monitoring reference, or empty.
        reference_end: Explicit end of the monitoring reference, or empty.
        window: Window length (``schedule.window``).
        anchor: A window boundary (``schedule.anchor``).

    Returns:
        The bounds, as ISO-8601 strings (empty for unbounded), and where they came from.

    Raises:
        ValueError: ``scheduled_time``, ``window`` or ``anchor`` is malformed.
    """
    if window_start or window_end:
        return RunWindows(window_start, window_end, reference_start, reference_end, "explicit")
    if not scheduled_time:
        return RunWindows("", "", reference_start, reference_end, "unbounded")
    moment = parse_time(scheduled_time)
    current, previous = scheduled_windows(moment, window, anchor)
    reference = (reference_start, reference_end) if reference_start or reference_end else previous.bounds
    return RunWindows(*current.bounds, *reference, f"scheduled {moment.isoformat()}")
