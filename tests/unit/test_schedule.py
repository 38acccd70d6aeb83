"""Scheduled windows: T-1 and T-2 of a run's time, aligned to a fixed anchor, the same everywhere they are computed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from components.common.errors import ConfigError
from components.common.schedule import (
    DEFAULT_ANCHOR,
    TimeWindow,
    parse_duration,
    parse_time,
    run_windows,
    scheduled_windows,
    window_before,
)
from pipelines.config import load_config, parse_config
from tests.helpers import ROOT

WEEK = timedelta(days=7)
ANCHOR = datetime(1970, 1, 5, tzinfo=UTC)  # a Monday: weekly windows run Monday to Monday
MONDAY = datetime(2026, 1, 19, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("1w", timedelta(weeks=1)),
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        (" 2d ", timedelta(days=2)),
    ],
)
def test_window_lengths(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7", "7 days", "1mo", "-1d", "1.5d", "d", ""])
def test_a_malformed_window_length_says_what_was_expected_and_found(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a window length such as 7d.*found"):
        parse_duration(text)
    with pytest.raises(ValueError, match="above zero"):
        parse_duration("0d")


def test_inside_a_window_t1_is_the_window_before_it_and_t2_the_one_before_that() -> None:
    wednesday = utc(2026, 1, 21, 15, 30)
    assert window_before(wednesday, WEEK, ANCHOR) == TimeWindow(utc(2026, 1, 12), utc(2026, 1, 19))
    assert window_before(wednesday, WEEK, ANCHOR, back=2) == TimeWindow(utc(2026, 1, 5), utc(2026, 1, 12))


def test_exactly_on_a_boundary_t1_ends_there_and_a_microsecond_earlier_it_ends_a_window_before() -> None:
    assert window_before(MONDAY, WEEK, ANCHOR) == TimeWindow(utc(2026, 1, 12), MONDAY)
    just_before = MONDAY - timedelta(microseconds=1)
    assert window_before(just_before, WEEK, ANCHOR) == TimeWindow(utc(2026, 1, 5), utc(2026, 1, 12))


def test_times_are_utc_whatever_zone_they_come_in_and_naive_means_utc() -> None:
    expected = window_before(MONDAY, WEEK, ANCHOR)
    # 02:00 on Monday in UTC+2 is midnight UTC: exactly the boundary.
    assert window_before(datetime(2026, 1, 19, 2, tzinfo=timezone(timedelta(hours=2))), WEEK, ANCHOR) == expected
    # 20:00 on Sunday in UTC-5 is 01:00 Monday UTC: still the same T-1.
    assert window_before(datetime(2026, 1, 18, 20, tzinfo=timezone(timedelta(hours=-5))), WEEK, ANCHOR) == expected
    assert window_before(datetime(2026, 1, 19), WEEK, datetime(1970, 1, 5)) == expected
    assert expected.start.tzinfo == UTC and expected.end.tzinfo == UTC
    assert expected.bounds == ("2026-01-12T00:00:00+00:00", "2026-01-19T00:00:00+00:00")


def test_kfps_scheduled_time_rendering_parses() -> None:
    assert parse_time("2026-01-19T03:00:00Z") == utc(2026, 1, 19, 3)
    assert parse_time("2026-01-19T04:00:00+01:00") == utc(2026, 1, 19, 3)
    assert parse_time("2026-01-19T03:00:00") == utc(2026, 1, 19, 3)
    with pytest.raises(ValueError, match=r"expected an ISO-8601 timestamp.*found 'monday'"):
        parse_time("monday")


def test_windows_align_to_the_anchor_so_reruns_read_the_same_bounds() -> None:
    daily = timedelta(days=1)
    anchor = utc(2026, 1, 1, 6)  # days that start at 06:00 UTC
    runs = [utc(2026, 3, 10, 6), utc(2026, 3, 10, 12), utc(2026, 3, 11, 5, 59, 59)]  # one window, three firings
    assert {window_before(run, daily, anchor) for run in runs} == {TimeWindow(utc(2026, 3, 9, 6), utc(2026, 3, 10, 6))}
    # Before the anchor too: the same grid extends backwards.
    assert window_before(utc(2025, 12, 31, 12), daily, anchor) == TimeWindow(utc(2025, 12, 30, 6), utc(2025, 12, 31, 6))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        window_before(MONDAY, timedelta(0), ANCHOR)
    with pytest.raises(ValueError, match="back"):
        window_before(MONDAY, WEEK, ANCHOR, back=0)


@given(
    moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    length=st.integers(min_value=1, max_value=60 * 24 * 60).map(lambda minutes: timedelta(minutes=minutes)),
)
def test_t1_is_the_last_complete_aligned_window_and_t2_precedes_it(moment: datetime, length: timedelta) -> None:
    t1 = window_before(moment, length, ANCHOR)
    t2 = window_before(moment, length, ANCHOR, back=2)
    assert t1.end - t1.start == length and t2.end == t1.start
    assert t1.end <= moment < t1.end + length  # complete, and the last one that is
    assert (t1.start - ANCHOR) % length == timedelta(0)  # on the anchor's grid


def test_scheduled_windows_read_the_config_spelling() -> None:
    t1, t2 = scheduled_windows(parse_time("2026-01-19T03:00:00Z"), "7d", DEFAULT_ANCHOR)
    assert t1.bounds == ("2026-01-12T00:00:00+00:00", "2026-01-19T00:00:00+00:00")
    assert t2.bounds == ("2026-01-05T00:00:00+00:00", "2026-01-12T00:00:00+00:00")


def test_explicit_bounds_win_and_without_a_time_the_run_is_unbounded() -> None:
    explicit = run_windows("2026-01-19T03:00:00Z", "2026-01-05T00:00:00+00:00", "", "", "")
    assert (explicit.window_start, explicit.window_end, explicit.reference_start, explicit.origin) == (
        "2026-01-05T00:00:00+00:00",
        "",
        "",
        "explicit",
    )
    local = run_windows("", "", "", "", "")
    assert (local.window_start, local.window_end, local.reference_start, local.origin) == ("", "", "", "unbounded")
    scheduled = run_windows("2026-01-19T03:00:00Z", "", "", "", "", "7d", DEFAULT_ANCHOR)
    assert (scheduled.window_start, scheduled.window_end) == ("2026-01-12T00:00:00+00:00", "2026-01-19T00:00:00+00:00")
    assert (scheduled.reference_start, scheduled.reference_end) == (
        "2026-01-05T00:00:00+00:00",
        "2026-01-12T00:00:00+00:00",
    )
    assert scheduled.origin == "scheduled 2026-01-19T03:00:00+00:00"
    # Explicit reference bounds stay explicit in a scheduled run.
    other = run_windows("2026-01-19T03:00:00Z", "", "", "2025-06-02T00:00:00+00:00", "2025-06-09T00:00:00+00:00")
    assert (other.reference_start, other.reference_end) == ("2025-06-02T00:00:00+00:00", "2025-06-09T00:00:00+00:00")


def test_schedule_window_in_the_config_is_validated_naming_the_key() -> None:
    assert load_config(ROOT / "ctpipe.yaml").schedule.window == "7d"
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["schedule"] = {"window": "7 days", "anchor": "next monday"}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, ROOT)
    message = str(err.value)
    assert "schedule.window: Value error, expected a window length such as 7d" in message
    assert "found '7 days'" in message and message.count("found '7 days'") == 1
    assert "schedule.anchor: Value error, expected an ISO-8601 timestamp" in message
    raw["schedule"] = {"window": "1d", "anchro": DEFAULT_ANCHOR}
    with pytest.raises(ConfigError, match=r"schedule\.anchro: unknown key"):
        parse_config(raw, ROOT)


def test_the_cli_the_runner_and_the_pipelines_window_task_compute_the_same_bounds() -> None:
    from pipelines.kfp_components import schedule_window
    from pipelines.runner import parse_at, scheduled_params

    config = load_config(ROOT / "ctpipe.yaml")
    at = parse_at("2026-01-21T03:00:00Z")
    # What the CronJob sends (`ctpipe submit --at now`, here at a fixed time) ...
    sent = scheduled_params(config, "continuous_training", at)
    # ... is what the window task derives from KFP's scheduled time in a recurring run.
    task = schedule_window("2026-01-21T03:00:00Z", "", "", "", "", config.schedule.model_dump_json())
    assert sent == {
        "window_start": task.window_start,
        "window_end": task.window_end,
        "reference_start": task.reference_start,
        "reference_end": task.reference_end,
    }
    assert sent["window_start"] == "2026-01-12T00:00:00+00:00"
    # A run given those bounds explicitly (what the CronJob's run carries) reads the same again.
    again = schedule_window("2026-02-01T00:00:00Z", *sent.values(), config.schedule.model_dump_json())
    assert (again.window_start, again.reference_end, again.origin) == (
        sent["window_start"],
        sent["reference_end"],
        "explicit",
    )
    # Pipelines that do not monitor get no reference bounds; one that reads no window refuses --at.
    assert set(scheduled_params(config, "training", at)) == {"window_start", "window_end"}
    with pytest.raises(ConfigError, match="canary_analysis pipeline reads no time window"):
        scheduled_params(config, "canary_analysis", at)


def test_at_is_now_or_a_timestamp() -> None:
    from pipelines.runner import parse_at

    clock = utc(2026, 1, 21, 3)
    assert parse_at("now", now=clock) == clock
    assert parse_at("NOW").tzinfo == UTC
    assert parse_at("2026-01-21T04:00:00+01:00") == clock
    with pytest.raises(ConfigError, match=r"--at: expected an ISO-8601 timestamp.*or 'now'"):
        parse_at("yesterday")
