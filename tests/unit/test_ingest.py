import pandas as pd
import pytest

from components.common.errors import DataError
from components.ingest import ingest


def test_window_snapshot_matches_manifest_and_is_deterministic(demo_data, dataset_spec, tmp_path):
    source, windows = demo_data
    w = windows[1]
    first = ingest(str(source), dataset_spec, str(tmp_path / "a"), w.start, w.end)
    again = ingest(str(source), dataset_spec, str(tmp_path / "b"), w.start, w.end)
    assert first.rows == w.rows
    assert first.content_hash == again.content_hash
    snapshot = pd.read_parquet(tmp_path / "a")
    assert snapshot.event_timestamp.min() >= pd.Timestamp(w.start)
    assert snapshot.event_timestamp.max() < pd.Timestamp(w.end)
    assert snapshot.event_timestamp.is_monotonic_increasing


def test_csv_with_string_timestamps_gives_the_same_snapshot(demo_data, demo_frame, dataset_spec, tmp_path):
    source, windows = demo_data
    csv = tmp_path / "data.csv"
    demo_frame.to_csv(csv, index=False)
    w = windows[0]
    from_csv = ingest(str(csv), dataset_spec, str(tmp_path / "c"), "2026-01-05", "2026-01-12")
    from_parquet = ingest(str(source), dataset_spec, str(tmp_path / "p"), w.start, w.end)
    assert from_csv.content_hash == from_parquet.content_hash


def test_changed_row_changes_the_hash(demo_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.parquet"
    demo_frame.to_parquet(path)
    before = ingest(str(path), dataset_spec, str(tmp_path / "s1")).content_hash
    changed = demo_frame.copy()
    changed.loc[5, "tenure_months"] += 1
    changed.to_parquet(path)
    assert ingest(str(path), dataset_spec, str(tmp_path / "s2")).content_hash != before


def test_missing_timestamp_column_is_named(demo_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.parquet"
    demo_frame.drop(columns=["event_timestamp"]).to_parquet(path)
    with pytest.raises(DataError, match=r"d.parquet: timestamp column 'event_timestamp' is missing"):
        ingest(str(path), dataset_spec, str(tmp_path / "s"))


def test_unparseable_timestamp_names_an_example(demo_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.csv"
    frame = demo_frame.head(20).astype({"event_timestamp": str})
    frame.loc[3, "event_timestamp"] = "yesterday-ish"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"1 value\(s\) that are not timestamps, e.g. 'yesterday-ish'"):
        ingest(str(path), dataset_spec, str(tmp_path / "s"))


def test_empty_window_reports_the_source_span(demo_data, dataset_spec, tmp_path):
    with pytest.raises(DataError, match=r"no rows in window \[2030-01-01, \+inf\); the source spans 2026-01-05"):
        ingest(str(demo_data[0]), dataset_spec, str(tmp_path / "s"), "2030-01-01", None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file or folder"),
        (b"", "file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a readable"),
        (b"a,b\n1,2\n3,4,5,6\n", "not a readable csv table"),
    ],
    ids=["missing", "empty", "not-tabular", "ragged-csv"],
)
def test_bad_files_fail_with_the_file_named(content, message, dataset_spec, tmp_path):
    suffix = ".parquet" if content and content.startswith(b"\x89") else ".csv"
    path = tmp_path / f"bad{suffix}"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        ingest(str(path), dataset_spec, str(tmp_path / "s"))
    assert str(path) in str(err.value)
    assert not (tmp_path / "s").exists()
