"""The inference log layout shared by the model server (writer) and monitoring (reader)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from components.common.errors import DataError
from components.common.inference_log import append_batch, compact, maintain, protect, prune, read_window
from serving.observability import InferenceLogWriter, LoggedRequest

if TYPE_CHECKING:
    from components.specs import DatasetSpec


def _batch(stamps: list[str], version: str = "1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(stamps))],
            "timestamp": pd.to_datetime(stamps, utc=True),
            "model_name": "churn",
            "model_version": version,
            "tenure_months": range(len(stamps)),
            "prediction": [0.1 * i for i in range(len(stamps))],
        }
    )


def test_batches_land_in_date_partitions_and_read_back_by_window(tmp_path: Path) -> None:
    written = append_batch(tmp_path, _batch(["2026-01-01T23:59:00Z", "2026-01-02T00:01:00Z", "2026-01-03T12:00:00Z"]))
    assert sorted(Path(path).parent.name for path in written) == [
        "date=2026-01-01",
        "date=2026-01-02",
        "date=2026-01-03",
    ]
    append_batch(tmp_path, _batch(["2026-01-02T05:00:00Z"], version="2"))

    window = read_window(tmp_path, "2026-01-02", "2026-01-03")

    assert list(window["request_id"]) == ["r1", "r0"]
    assert list(window["model_version"]) == ["1", "2"]
    assert len(read_window(tmp_path)) == 4
    assert read_window(tmp_path, model_name="other").empty
    assert not list(tmp_path.rglob(".*")), "no temporary files are left behind"


def test_missing_columns_and_missing_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"lacks column\(s\) \['model_version'\]"):
        append_batch(tmp_path, _batch(["2026-01-01"]).drop(columns="model_version"))
    with pytest.raises(DataError, match="no inference log here"):
        read_window(tmp_path / "absent")


# -- reading as a stream ---------------------------------------------------------------------


def test_read_window_filters_while_scanning_and_reads_only_the_columns_asked_for(tmp_path: Path) -> None:
    append_batch(tmp_path, _batch(["2026-01-02T01:00:00Z", "2026-01-02T02:00:00Z", "2026-01-02T03:00:00Z"]))
    # Another version with another feature: its rows have no tenure_months, the others no plan.
    other = _batch(["2026-01-02T02:30:00Z"], version="2").drop(columns="tenure_months").assign(plan="basic")
    append_batch(tmp_path, other.assign(model_name="other"))

    window = read_window(
        tmp_path,
        "2026-01-02T02:00:00Z",
        "2026-01-02T03:00:00Z",
        columns=["tenure_months", "plan", "prediction", "nope"],
    )
    assert list(window.columns) == ["tenure_months", "plan", "prediction", "timestamp"]
    assert list(window["tenure_months"].fillna(-1)) == [1, -1]
    assert list(window["plan"].fillna("")) == ["", "basic"]
    only_churn = read_window(tmp_path, model_name="churn", columns=["request_id"])
    assert list(only_churn["request_id"]) == ["r0", "r1", "r2"]
    assert read_window(tmp_path, "2026-01-05", columns=["prediction"]).empty


def test_a_value_type_that_changed_between_files_is_read_as_text(tmp_path: Path) -> None:
    append_batch(tmp_path, _batch(["2026-01-02T01:00:00Z"]).assign(plan=1))
    append_batch(tmp_path, _batch(["2026-01-02T02:00:00Z"]).assign(plan="basic"))
    assert list(read_window(tmp_path)["plan"]) == ["1", "basic"]


_MEMORY_CAPPED_READ = r"""
import resource, sys, time

import pandas as pd

from components.common.inference_log import read_window
from components.common.served_window import read_served_window
from components.specs import DatasetSpec


def vm() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmSize"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


log_dir, cap_mb = sys.argv[1], int(sys.argv[2])
# Start pyarrow's thread pools first (a read of a window with no rows): their stacks are not data.
read_window(log_dir, "2026-01-02T00:00:00Z", "2026-01-02T00:00:00.000001Z", columns=["prediction"])
cap = vm() + cap_mb * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
spec = DatasetSpec(
    source="unused.parquet",
    entity_column="customer_id",
    timestamp_column="event_ts",
    label_column="churned",
    numeric_features=[f"f{i}" for i in range(8)],
)
started = time.perf_counter()
frame, served, _ = read_served_window(log_dir, "2026-01-02T13:00:00Z", "2026-01-02T14:00:00Z", spec)
seconds = time.perf_counter() - started
assert frame["timestamp"].min() >= pd.Timestamp("2026-01-02T13:00:00Z")
assert frame["timestamp"].max() < pd.Timestamp("2026-01-02T14:00:00Z")
print(len(frame), len(served), round(seconds, 2), round((vm() - cap + cap_mb * 2**20) / 2**20))
"""


def _large_log(log_dir: Path, days: tuple[str, ...], files_per_day: int, rows_per_file: int) -> int:
    """A log of float features written straight with pyarrow (fast), sorted by time within each file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    size = 0
    hours = 24 / files_per_day
    for day in days:
        folder = log_dir / f"date={day}"
        folder.mkdir(parents=True)
        for k in range(files_per_day):
            start = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=k * hours)
            offsets = np.sort(rng.integers(0, int(hours * 3600e9), rows_per_file))
            columns = {
                "request_id": pc.cast(pa.array(np.arange(rows_per_file) + k * rows_per_file), pa.string()),
                "timestamp": pa.array(start.value + offsets, pa.timestamp("ns", tz="UTC")),
                "model_name": pa.array(np.full(rows_per_file, "churn")),
                "model_version": pa.array(np.full(rows_per_file, "1")),
                **{f"f{i}": pa.array(rng.random(rows_per_file)) for i in range(8)},
                "prediction": pa.array(rng.random(rows_per_file)),
                "status": pa.array(np.full(rows_per_file, "ok")),
            }
            path = folder / f"part-{k:03d}.parquet"
            pq.write_table(pa.table(columns), path, row_group_size=65_536, compression=None)
            size += path.stat().st_size
    return size


def test_monitoring_reads_a_window_of_a_log_larger_than_its_memory_cap(tmp_path: Path) -> None:
    import subprocess
    import sys

    cap_mb = 300
    started = time.perf_counter()
    size = _large_log(tmp_path / "log", ("2026-01-01", "2026-01-02"), files_per_day=3, rows_per_file=1_000_000)
    built = time.perf_counter() - started
    assert size > 2 * cap_mb * 2**20, size
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_CAPPED_READ, str(tmp_path / "log"), str(cap_mb)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        # One malloc arena per thread reserves 64 MiB of address space each: that is not data either.
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows, served, seconds, used_mb = result.stdout.split()
    print(
        f"\n[measure] log {size / 2**20:.0f} MiB (built in {built:.1f}s), address space capped at +{cap_mb} MiB: "
        f"{rows} rows of a 1-hour window read in {seconds}s, +{used_mb} MiB used"
    )
    assert 100_000 < int(rows) == int(served) < 250_000


# -- personal data ---------------------------------------------------------------------------


def test_settings_accept_a_bool_or_a_mapping() -> None:
    from pydantic import ValidationError

    from components.serving_spec import InferenceLogSpec, ServingSpec

    assert ServingSpec(inference_log=False).inference_log == InferenceLogSpec(enabled=False)
    assert not ServingSpec(inference_log=False).inference_log and ServingSpec().inference_log
    spec = ServingSpec(inference_log={"retention_days": 30, "exclude": ["email"], "hash": ["customer_id"]})
    assert spec.inference_log and spec.inference_log.retention_days == 30
    assert ServingSpec.model_validate_json(spec.model_dump_json()) == spec
    assert InferenceLogSpec.of(True) == InferenceLogSpec()
    with pytest.raises(ValidationError, match="both excluded and hashed"):
        InferenceLogSpec(exclude=["email"], hash=["email"])
    with pytest.raises(ValidationError, match="the log's own columns"):
        InferenceLogSpec(exclude=["prediction"])


def _request(request_id: str, email: str, customer: str) -> LoggedRequest:
    import numpy as np

    return LoggedRequest(
        request_id=request_id,
        timestamp=pd.Timestamp("2026-01-02T10:00:00Z").timestamp(),
        model_name="churn",
        model_version="1",
        model_alias="champion",
        features={
            "email": np.asarray([email], dtype=object),
            "customer_id": np.asarray([customer], dtype=object),
            "tenure": np.asarray([3.0]),
        },
        predictions=np.asarray([0.5]),
        latency_ms=1.0,
        status="ok",
    )


def test_the_writer_never_stores_excluded_columns_and_stores_hashed_ones_as_keyed_digests(tmp_path: Path) -> None:
    import hashlib
    import hmac

    writer = InferenceLogWriter(
        tmp_path, "churn", 0.05, 100, exclude=["email"], hash_columns=["customer_id"], hash_key=b"k"
    )
    writer.start()
    assert writer.submit(_request("a", "ann@example.com", "C-1")) and writer.submit(_request("b", None, "C-1"))
    writer.stop()

    log = read_window(tmp_path)
    assert "email" not in log.columns and list(log["tenure"]) == [3.0, 3.0]
    digest = hmac.new(b"k", b"C-1", hashlib.sha256).hexdigest()
    assert list(log["customer_id"]) == [digest, digest]
    assert log.attrs["protection"] == {"excluded": ["email"], "hashed": ["customer_id"]}
    stored = b"".join(path.read_bytes() for path in tmp_path.rglob("*.parquet"))
    assert b"example.com" not in stored and b"C-1" not in stored
    with pytest.raises(ValueError, match="hash key is empty"):
        InferenceLogWriter(tmp_path, "churn", hash_columns=["customer_id"])


def _email_spec(numeric: list[str]) -> DatasetSpec:
    """A spec of ``_batch``'s columns with ``numeric`` features and a personal-data one, ``email``."""
    from components.specs import DatasetSpec

    return DatasetSpec(
        source="x.parquet",
        entity_column="id",
        timestamp_column="ts",
        label_column="y",
        numeric_features=numeric,
        categorical_features=["email"],
    )


def test_monitoring_skips_the_features_the_log_protects_and_reads_the_others(tmp_path: Path) -> None:
    from components.common.served_window import read_served_window

    batch = _batch(["2026-01-02T01:00:00Z", "2026-01-02T02:00:00Z"]).assign(email="ann@example.com", age=[30, 40])
    append_batch(tmp_path, protect(batch, exclude=["email"], hash_columns=["tenure_months"], key=b"k"))
    spec = _email_spec(["tenure_months", "age"])
    frame, served, unmeasured = read_served_window(str(tmp_path), None, None, spec)
    assert unmeasured == {
        "email": "excluded from the inference log by serving.inference_log.exclude",
        "tenure_months": "hashed in the inference log by serving.inference_log.hash (its values are digests)",
    }
    assert list(frame["age"]) == [30, 40] and list(served) == pytest.approx([0.0, 0.1])
    assert "email" not in frame.columns


def test_monitoring_refuses_a_log_that_protects_every_feature(tmp_path: Path) -> None:
    from components.common.served_window import read_served_window

    batch = _batch(["2026-01-02T01:00:00Z"]).assign(email="ann@example.com")
    append_batch(tmp_path, protect(batch, exclude=["email"], hash_columns=["tenure_months"], key=b"k"))
    spec = _email_spec(["tenure_months"])
    expected = (
        rf"{re.escape(str(tmp_path))}: every monitored feature is excluded from or hashed in the inference log "
        r"\(serving\.inference_log\.exclude / \.hash\): \{'email': 'excluded', 'tenure_months': 'hashed'\}"
        r".*current_source 'snapshot'"
    )
    with pytest.raises(DataError, match=expected):
        read_served_window(str(tmp_path), None, None, spec)


# -- dropped rows ----------------------------------------------------------------------------


def _metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_dropped_rows_are_counted_by_reason_and_warned_about_at_most_once_a_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue_full = _metric("ctpipe_inference_log_dropped_rows_total", model="drops", reason="queue_full")
    writer = InferenceLogWriter(tmp_path, "drops", flush_seconds=60, max_rows=2)  # not started: the queue fills
    with caplog.at_level(logging.WARNING):
        results = [writer.submit(_request(str(i), "e", "c")) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert writer.dropped_rows == 3
    assert _metric("ctpipe_inference_log_dropped_rows_total", model="drops", reason="queue_full") == queue_full + 3
    warnings = [r for r in caplog.records if r.getMessage() == "inference log rows dropped"]
    assert len(warnings) == 1 and warnings[0].queue_full_rows == 1  # type: ignore[attr-defined]

    broken = tmp_path / "file"
    broken.write_text("not a folder")
    failing = InferenceLogWriter(broken, "drops", flush_seconds=0.05, max_rows=10)
    failing.start()
    failing.submit(_request("x", "e", "c"))
    assert failing.stop()
    assert _metric("ctpipe_inference_log_dropped_rows_total", model="drops", reason="write_failed") >= 1


# -- maintenance -----------------------------------------------------------------------------


def test_retention_deletes_only_the_partitions_past_the_limit(tmp_path: Path) -> None:
    for day in ("2026-11-05", "2026-11-06", "2026-11-07", "2026-12-07"):
        append_batch(tmp_path, _batch([f"{day}T12:00:00Z"]))
    (tmp_path / "README").write_text("not a partition")
    (tmp_path / "date=garbage").mkdir()

    deleted = prune(tmp_path, 30, now="2026-12-07T08:00:00Z")

    assert deleted == ["2026-11-05", "2026-11-06"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["README", "date=2026-11-07", "date=2026-12-07", "date=garbage"]
    assert prune(tmp_path, 30, now="2026-12-07T08:00:00Z") == []
    with pytest.raises(ValueError):
        prune(tmp_path, 0)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("part-*.parquet"))


def test_compaction_makes_one_file_per_past_day_and_readers_see_each_row_once(tmp_path: Path) -> None:
    for hour in range(5):
        append_batch(tmp_path, _batch([f"2026-01-01T0{hour}:00:00Z", f"2026-01-02T0{hour}:30:00Z"], version=str(hour)))
    before = read_window(tmp_path)
    day = tmp_path / "date=2026-01-01"
    small = _names(day)

    assert compact(tmp_path, now="2026-01-02T12:00:00Z") == {"2026-01-01": 5}

    assert len(_names(day)) == 1 and _names(day)[0].startswith("part-compacted-2026-01-01-")
    assert len(_names(tmp_path / "date=2026-01-02")) == 5, "today is left to the server"
    after = read_window(tmp_path)
    pd.testing.assert_frame_equal(after[before.columns], before, check_dtype=False)

    # A reader whose listing has both the compacted file and the small files it replaces
    # (published, not yet deleted) reads each row once.
    compacted = day / _names(day)[0]
    for name in small:
        shutil.copy(compacted, day / name)  # stand-ins: same names as the replaced files
    assert len(read_window(tmp_path, "2026-01-01", "2026-01-02")) == 5
    # The next run deletes those leftovers, then merges a late file with the compacted one.
    append_batch(tmp_path, _batch(["2026-01-01T23:59:59Z"], version="late"))
    assert compact(tmp_path, now="2026-01-02T12:00:00Z") == {"2026-01-01": 2}
    assert len(_names(day)) == 1 and not (set(_names(day)) & set(small))
    assert len(read_window(tmp_path, "2026-01-01", "2026-01-02")) == 6
    assert not list(tmp_path.rglob(".*")), "no temporary files are left behind"
    assert compact(tmp_path, now="2026-01-02T12:00:00Z") == {}


def test_a_reader_lists_again_when_compaction_deleted_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.common import inference_log

    for hour in range(3):
        append_batch(tmp_path, _batch([f"2026-01-01T0{hour}:00:00Z"]))
    real = inference_log._list
    calls = []

    def list_then_compact(log_dir: str) -> dict:
        listing = real(log_dir)
        calls.append(1)
        if len(calls) == 1:
            compact(tmp_path, now="2026-01-03")  # between this reader's listing and its read
        return listing

    monkeypatch.setattr(inference_log, "_list", list_then_compact)
    assert len(read_window(tmp_path)) == 3
    assert len(calls) == 3  # the reader listed twice (compaction listed once in between)


def test_maintain_applies_retention_then_compaction(tmp_path: Path) -> None:
    for stamp in ("2025-12-01T01:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"):
        append_batch(tmp_path, _batch([stamp]))
    result = maintain(tmp_path, 7, now="2026-01-03")
    assert result["pruned_days"] == ["2025-12-01"] and result["compacted_days"] == {"2026-01-01": 2}
    assert len(read_window(tmp_path)) == 2


@pytest.mark.server  # starts (once per session) the SeaweedFS S3 server
def test_streaming_read_compaction_and_retention_work_on_an_object_store(s3_prefix: str) -> None:
    from components.common import storage

    log_dir = storage.join(s3_prefix, "inference_log")
    for stamp in ("2025-12-01T01:00:00Z", "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z", "2026-01-03T01:00:00Z"):
        append_batch(log_dir, _batch([stamp]))
    before = read_window(log_dir, "2026-01-01", columns=["request_id", "prediction"])

    result = maintain(log_dir, 7, now="2026-01-03T12:00:00Z")

    assert result["pruned_days"] == ["2025-12-01"] and result["compacted_days"] == {"2026-01-01": 2}
    files = storage.find(log_dir)
    assert not [f for f in files if f.startswith("date=2025-12-01/")]
    assert len([f for f in files if f.startswith("date=2026-01-01/")]) == 1
    after = read_window(log_dir, "2026-01-01", columns=["request_id", "prediction"])
    pd.testing.assert_frame_equal(after, before)
    assert len(read_window(log_dir, "2026-01-01T01:30:00Z", "2026-01-01T03:00:00Z")) == 1
