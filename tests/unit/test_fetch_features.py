import pandas as pd
import pytest

from components.common.errors import DataError
from components.fetch_features import build_training_set, offline_folder, online_features
from components.specs import DatasetSpec, FeastSpec

FEAST = FeastSpec()


@pytest.fixture
def window1(demo_frame, demo_data, tmp_path):
    frame = demo_frame[demo_frame.event_timestamp < demo_data[1][0].end].reset_index(drop=True)
    path = tmp_path / "window1.parquet"
    frame.to_parquet(path)
    return path, frame


def test_training_set_equals_the_snapshot_features(window1, dataset_spec, tmp_path):
    path, frame = window1
    result = build_training_set(str(path), dataset_spec, FEAST, str(tmp_path / "ws"), str(tmp_path / "ts"))
    training = pd.read_parquet(tmp_path / "ts")
    assert result.rows == len(frame) and result.missing_entities == 0
    expected_columns = [*dataset_spec.key_columns, *dataset_spec.feature_columns, dataset_spec.label_column]
    assert training.columns.tolist() == expected_columns
    columns = [*dataset_spec.feature_columns, "churned"]
    expected = frame.sort_values(["event_timestamp", "customer_id"]).reset_index(drop=True)[columns]
    pd.testing.assert_frame_equal(training[columns], expected.astype(training[columns].dtypes))


def test_rerun_is_idempotent(window1, dataset_spec, tmp_path):
    path, _ = window1
    workspace = str(tmp_path / "ws")
    build_training_set(str(path), dataset_spec, FEAST, workspace, str(tmp_path / "a"))
    build_training_set(str(path), dataset_spec, FEAST, workspace, str(tmp_path / "b"))
    assert len(list(offline_folder(dataset_spec, workspace).glob("*.parquet"))) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a"), pd.read_parquet(tmp_path / "b"))


def _leak_spec(tmp_path) -> DatasetSpec:
    return DatasetSpec(
        source=str(tmp_path / "unused.parquet"),
        entity_column="user",
        timestamp_column="ts",
        label_column="label",
        numeric_features=["signal"],
    )


def test_point_in_time_join_does_not_leak_later_values(tmp_path):
    """A later feature row holds the label itself; a training row at an earlier time must not see it."""
    spec = _leak_spec(tmp_path)
    workspace = str(tmp_path / "ws")
    t = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True)
    # Day 1: the feature value is 0.5. Day 3: the feature equals the label observed on day 2 (a leak).
    history = pd.DataFrame({"user": [1, 1], "ts": [t[0], t[2]], "signal": [0.5, 1.0], "label": [0, 1]})
    history_path = tmp_path / "history.parquet"
    history.to_parquet(history_path)
    build_training_set(str(history_path), spec, FEAST, workspace, str(tmp_path / "h"))

    # Ask for user 1 as of day 2: only the day-1 value (0.5) may be used.
    question = pd.DataFrame({"user": [1], "ts": [t[1]], "signal": [0.5], "label": [1]})
    question_path = tmp_path / "question.parquet"
    question.to_parquet(question_path)
    build_training_set(str(question_path), spec, FEAST, workspace, str(tmp_path / "q"))
    as_of_day2 = pd.read_parquet(tmp_path / "q")
    assert as_of_day2.loc[0, "signal"] == 0.5  # a plain latest-value join would give 1.0, the label


def test_entities_outside_the_ttl_are_counted(tmp_path):
    spec = _leak_spec(tmp_path)
    feast = FeastSpec(ttl_days=1)
    workspace = str(tmp_path / "ws")
    old = pd.DataFrame({"user": [7], "ts": pd.to_datetime(["2026-01-01"], utc=True), "signal": [3.0], "label": [0]})
    old.to_parquet(tmp_path / "old.parquet")
    build_training_set(str(tmp_path / "old.parquet"), spec, feast, workspace, str(tmp_path / "o"))
    # A row for a new entity 8 ten days later, plus entity 7 whose only value is now outside the TTL.
    later = pd.DataFrame({"user": [8], "ts": pd.to_datetime(["2026-01-11"], utc=True), "signal": [1.0], "label": [1]})
    stale = pd.concat(
        [
            later,
            pd.DataFrame({"user": [7], "ts": pd.to_datetime(["2026-01-11"], utc=True), "signal": [None], "label": [0]}),
        ]
    )
    stale.to_parquet(tmp_path / "stale.parquet")
    result = build_training_set(str(tmp_path / "stale.parquet"), spec, feast, workspace, str(tmp_path / "s"))
    assert result.missing_entities == 1
    assert pd.read_parquet(tmp_path / "s")["user"].tolist() == [8]


def test_online_lookup_returns_latest_values_and_names_unknown_ids(window1, dataset_spec, tmp_path):
    path, frame = window1
    workspace = str(tmp_path / "ws")
    build_training_set(str(path), dataset_spec, FEAST, workspace, str(tmp_path / "ts"))
    ids = frame.customer_id.head(3).tolist()
    found = online_features([*ids, 10_000_000], dataset_spec, FEAST, workspace)
    assert found.missing == [10_000_000]
    assert [row["customer_id"] for row in found.rows] == ids
    latest = frame.sort_values("event_timestamp").groupby("customer_id").tail(1).set_index("customer_id")
    for row in found.rows:
        assert row["tenure_months"] == pytest.approx(latest.loc[row["customer_id"], "tenure_months"])
        assert row["plan"] == latest.loc[row["customer_id"], "plan"]


def test_snapshot_missing_a_column_is_named(window1, dataset_spec, tmp_path):
    path, frame = window1
    frame.drop(columns=["region"]).to_parquet(path)
    with pytest.raises(DataError, match=r"missing column\(s\) \['region'\]"):
        build_training_set(str(path), dataset_spec, FEAST, str(tmp_path / "ws"), str(tmp_path / "ts"))
