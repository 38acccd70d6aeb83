import json

import pandas as pd
import pytest

from components.common.errors import DataError
from components.common.io import file_sha256
from components.ingest import ingest


def test_each_window_matches_the_manifest(churn_data, dataset_spec, tmp_path):
    source, windows = churn_data
    for w in windows:
        result = ingest(str(source), dataset_spec, str(tmp_path / f"w{w.window}"), w.start, w.end)
        assert result.rows == w.rows
        snapshot = pd.read_parquet(tmp_path / f"w{w.window}")
        assert len(snapshot) == w.rows
        assert str(snapshot.event_timestamp.dtype) == "datetime64[ns, UTC]"
        assert snapshot.event_timestamp.min() >= pd.Timestamp(w.start)
        assert snapshot.event_timestamp.max() < pd.Timestamp(w.end)
        assert result.columns == list(snapshot.columns)
        assert (result.window_start, result.window_end) == (w.start, w.end)


def test_unbounded_window_takes_everything(churn_data, churn_frame, dataset_spec, tmp_path):
    result = ingest(str(churn_data[0]), dataset_spec, str(tmp_path / "all"))
    assert result.rows == len(churn_frame) == sum(w.rows for w in churn_data[1])
    assert result.window_start is None and result.window_end is None


def test_same_rows_in_any_order_give_the_same_bytes_and_hash(churn_data, churn_frame, dataset_spec, tmp_path):
    source, windows = churn_data
    w = windows[1]
    first = ingest(str(source), dataset_spec, str(tmp_path / "a"), w.start, w.end)
    again = ingest(str(source), dataset_spec, str(tmp_path / "b"), w.start, w.end)
    shuffled_path = tmp_path / "shuffled.parquet"
    churn_frame.sample(frac=1.0, random_state=0).to_parquet(shuffled_path)
    shuffled = ingest(str(shuffled_path), dataset_spec, str(tmp_path / "c"), w.start, w.end)
    assert first.content_hash == again.content_hash == shuffled.content_hash
    assert file_sha256(tmp_path / "a") == file_sha256(tmp_path / "b") == file_sha256(tmp_path / "c")
    snapshot = pd.read_parquet(tmp_path / "a")
    keys = list(zip(snapshot.event_timestamp, snapshot.customer_id, strict=True))
    assert keys == sorted(keys)


def test_changed_row_changes_the_hash(churn_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.parquet"
    churn_frame.to_parquet(path)
    before = ingest(str(path), dataset_spec, str(tmp_path / "s1")).content_hash
    changed = churn_frame.copy()
    changed.loc[5, "tenure_months"] += 1
    changed.to_parquet(path)
    assert ingest(str(path), dataset_spec, str(tmp_path / "s2")).content_hash != before


def test_csv_with_string_timestamps_gives_the_same_snapshot(churn_data, churn_frame, dataset_spec, tmp_path):
    source, windows = churn_data
    csv = tmp_path / "data.csv"
    churn_frame.to_csv(csv, index=False)
    assert pd.read_csv(csv).event_timestamp.dtype == object  # really strings
    w = windows[0]
    # Naive bounds are UTC.
    from_csv = ingest(str(csv), dataset_spec, str(tmp_path / "c"), "2026-01-05", "2026-01-12")
    from_parquet = ingest(str(source), dataset_spec, str(tmp_path / "p"), w.start, w.end)
    assert from_csv.rows == w.rows
    assert from_csv.content_hash == from_parquet.content_hash


def test_naive_and_offset_timestamps_are_utc(churn_frame, dataset_spec, tmp_path):
    frame = churn_frame.head(4).copy()
    frame["event_timestamp"] = ["2026-01-05T10:00:00", "2026-01-05T12:00:00+02:00", "2026-01-05 09:00", "2026-01-06"]
    frame.to_csv(tmp_path / "d.csv", index=False)
    ingest(str(tmp_path / "d.csv"), dataset_spec, str(tmp_path / "s"), "2026-01-05T09:30:00Z", "2026-01-05T11:00Z")
    snapshot = pd.read_parquet(tmp_path / "s")
    # 12:00+02:00 is 10:00 UTC, so both 10:00 rows are in; 09:00 and the next day are not.
    assert snapshot.event_timestamp.tolist() == [pd.Timestamp("2026-01-05T10:00:00Z")] * 2


def test_folder_of_parquet_files(churn_data, churn_frame, dataset_spec, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    half = len(churn_frame) // 2
    churn_frame.iloc[:half].to_parquet(folder / "part-0.parquet", index=False)
    churn_frame.iloc[half:].to_parquet(folder / "part-1.parquet", index=False)
    w = churn_data[1][2]
    from_folder = ingest(str(folder), dataset_spec, str(tmp_path / "f"), w.start, w.end)
    from_file = ingest(str(churn_data[0]), dataset_spec, str(tmp_path / "p"), w.start, w.end)
    assert from_folder.rows == w.rows
    assert from_folder.content_hash == from_file.content_hash


def test_extra_columns_are_kept(churn_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.parquet"
    churn_frame.assign(notes="x").to_parquet(path)
    result = ingest(str(path), dataset_spec, str(tmp_path / "s"))
    assert "notes" in result.columns
    assert "notes" in pd.read_parquet(tmp_path / "s").columns


def test_logs_rows_and_hash(churn_frame, dataset_spec, tmp_path, capsys):
    path = tmp_path / "d.parquet"
    churn_frame.to_parquet(path)
    result = ingest(str(path), dataset_spec, str(tmp_path / "s"))
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    logged = [line for line in lines if line.get("logger") == "ctpipe.ingest"]
    assert logged and logged[-1]["rows"] == result.rows and logged[-1]["content_hash"] == result.content_hash


def test_missing_timestamp_column_is_named(churn_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.parquet"
    churn_frame.drop(columns=["event_timestamp"]).to_parquet(path)
    with pytest.raises(DataError, match=r"d.parquet: timestamp column 'event_timestamp' is missing; found columns"):
        ingest(str(path), dataset_spec, str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


def test_unparseable_timestamp_names_the_file_column_and_an_example(churn_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.csv"
    frame = churn_frame.head(20).astype({"event_timestamp": str})
    frame.loc[3, "event_timestamp"] = "yesterday-ish"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        ingest(str(path), dataset_spec, str(tmp_path / "s"))
    message = str(err.value)
    assert str(path) in message
    assert "column 'event_timestamp' has 1 value(s) that are not timestamps, e.g. 'yesterday-ish' in row 3" in message


def test_numeric_timestamps_are_refused(churn_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.parquet"
    churn_frame.assign(event_timestamp=churn_frame.event_timestamp.astype("int64") // 10**9).to_parquet(path)
    with pytest.raises(
        DataError, match=r"column 'event_timestamp' has dtype int64 \(e.g. 17\d+\), expected timestamps"
    ):
        ingest(str(path), dataset_spec, str(tmp_path / "s"))


def test_empty_timestamps_are_refused(churn_frame, dataset_spec, tmp_path):
    path = tmp_path / "d.parquet"
    frame = churn_frame.head(10).copy()
    frame.loc[4, "event_timestamp"] = pd.NaT
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"column 'event_timestamp' has 1 empty timestamp\(s\), first in row 4"):
        ingest(str(path), dataset_spec, str(tmp_path / "s"))


def test_empty_window_reports_the_bounds_and_the_source_span(churn_data, dataset_spec, tmp_path):
    with pytest.raises(DataError) as err:
        ingest(str(churn_data[0]), dataset_spec, str(tmp_path / "s"), "2030-01-01", "2030-02-01")
    message = str(err.value)
    assert "no rows in window [2030-01-01, 2030-02-01)" in message
    assert "the source spans 2026-01-05" in message and "to 2026-01-25" in message
    assert "(1800 rows)" in message
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-02-01", "2026-01-01", "window_start 2026-02-01 is not before window_end 2026-01-01"),
        ("last tuesday", None, "window_start 'last tuesday' is not an ISO-8601 timestamp"),
    ],
)
def test_bad_window_bounds(churn_data, dataset_spec, tmp_path, start, end, message):
    with pytest.raises(DataError, match=message):
        ingest(str(churn_data[0]), dataset_spec, str(tmp_path / "s"), start, end)


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
