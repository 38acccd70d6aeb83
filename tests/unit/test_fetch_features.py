"""fetch_features against a real embedded Feast: file offline store, sqlite online store, local registry."""

import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from feast import FeatureStore

from components.common.errors import DataError
from components.common.feast import feast_root, feature_view_name, offline_folder, online_features
from components.fetch_features import (
    build_training_set,
)
from components.specs import DatasetSpec, FeastSpec

FEAST = FeastSpec()


def _window(churn_frame, churn_data, number: int) -> pd.DataFrame:
    window = churn_data[1][number - 1]
    stamps = churn_frame.event_timestamp
    in_window = (stamps >= pd.Timestamp(window.start)) & (stamps < pd.Timestamp(window.end))
    return churn_frame[in_window].reset_index(drop=True)


@pytest.fixture
def window1(churn_frame, churn_data, tmp_path):
    frame = _window(churn_frame, churn_data, 1)
    path = tmp_path / "window1.parquet"
    frame.to_parquet(path)
    return path, frame


def _tiny_spec(tmp_path) -> DatasetSpec:
    return DatasetSpec(
        source=str(tmp_path / "unused.parquet"),
        entity_column="user",
        timestamp_column="ts",
        label_column="label",
        numeric_features=["signal"],
    )


def _write(tmp_path, name: str, rows: list[tuple]) -> str:
    frame = pd.DataFrame(rows, columns=["user", "ts", "signal", "label"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["signal"] = frame["signal"].astype("float64")
    path = tmp_path / f"{name}.parquet"
    frame.to_parquet(path)
    return str(path)


def test_training_set_equals_the_snapshot_features(window1, dataset_spec, tmp_path):
    path, frame = window1
    result = build_training_set(str(path), dataset_spec, FEAST, str(tmp_path / "ws"), str(tmp_path / "ts"))
    training = pd.read_parquet(tmp_path / "ts")

    assert result.rows == len(frame) == len(training)
    assert result.missing_entities == 0
    assert result.feature_view == feature_view_name(dataset_spec) == "customer_id_features"
    assert result.materialized_until == frame.event_timestamp.max().isoformat()
    columns = [*dataset_spec.key_columns, *dataset_spec.feature_columns, dataset_spec.label_column]
    assert training.columns.tolist() == columns
    expected = frame.sort_values(["event_timestamp", "customer_id"]).reset_index(drop=True)[columns]
    pd.testing.assert_frame_equal(training, expected.astype(training.dtypes))


def test_point_in_time_join_does_not_leak_later_values(tmp_path):
    """User 1 has feature rows on day 1 (0.5) and day 3 (1.0 = the label); asked as of day 2 it must get 0.5.

    The day-2 row has no feature observation of its own (empty), so its value can only come from
    the join. A latest-value join would give 1.0 there; a first-value join would give 0.5 on day 4.
    User 2 only has a feature row after the time it is asked about, so it has no value at all.
    """
    spec = _tiny_spec(tmp_path)
    snapshot = _write(
        tmp_path,
        "snapshot",
        [
            (1, "2026-01-01", 0.5, 0),
            (1, "2026-01-02", None, 1),  # asked as of day 2; the label is 1
            (1, "2026-01-03", 1.0, 1),  # a later feature value equal to the label: a leak if used on day 2
            (1, "2026-01-04", None, 1),
            (2, "2026-01-02", None, 0),
            (2, "2026-01-05", 7.0, 0),
        ],
    )
    result = build_training_set(snapshot, spec, FEAST, str(tmp_path / "ws"), str(tmp_path / "out"))
    training = pd.read_parquet(tmp_path / "out")

    expected = pd.DataFrame(
        {
            "user": [1, 1, 1, 1, 2],
            "ts": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"], utc=True),
            "signal": [0.5, 0.5, 1.0, 1.0, 7.0],
            "label": [0, 1, 1, 1, 0],
        }
    )
    pd.testing.assert_frame_equal(training, expected, check_dtype=False)
    assert result.missing_entities == 1  # user 2 as of day 2: its only value is from day 5

    # The same rows through a plain join (each entity's latest stored value, whatever the row's
    # time) would leak: the day-2 row would see the day-3 value, which equals its label.
    workspace = str(tmp_path / "ws")
    stored = pd.concat(pd.read_parquet(p) for p in Path(offline_folder(spec, FEAST, workspace)).glob("*.parquet"))
    latest = stored.sort_values("ts").groupby("user")["signal"].last()
    plain = pd.read_parquet(snapshot)[["user", "ts", "label"]].merge(latest, left_on="user", right_index=True)
    day2 = pd.Timestamp("2026-01-02", tz="UTC")
    leaked = plain[(plain.user == 1) & (plain.ts == day2)]
    assert leaked.signal.item() == 1.0 == leaked.label.item()
    ours = training[(training.user == 1) & (training.ts == day2)]
    assert ours.signal.item() == 0.5 != ours.label.item()
    # The online store holds exactly those latest values (for serving); training never reads it.
    assert online_features([1], spec, FEAST, workspace).rows == [{"user": 1, "signal": 1.0}]


def test_point_in_time_across_snapshots(tmp_path):
    """The same guarantee when the later value arrived with an earlier snapshot."""
    spec = _tiny_spec(tmp_path)
    workspace = str(tmp_path / "ws")
    history = _write(tmp_path, "history", [(1, "2026-01-01", 0.5, 0), (1, "2026-01-03", 1.0, 1)])
    build_training_set(history, spec, FEAST, workspace, str(tmp_path / "h"))
    question = _write(tmp_path, "question", [(1, "2026-01-02", None, 1)])
    build_training_set(question, spec, FEAST, workspace, str(tmp_path / "q"))
    assert pd.read_parquet(tmp_path / "q")["signal"].tolist() == [0.5]


LEAKAGE_CASE = [
    (1, "2026-01-01", 0.5, 0),
    (1, "2026-01-02", None, 1),
    (1, "2026-01-03", 1.0, 1),
    (1, "2026-01-04", None, 1),
    (2, "2026-01-02", None, 0),
    (2, "2026-01-05", 7.0, 0),
]


def _as_written_before_microseconds(spec, workspace) -> list:
    """Rewrite the offline files with nanosecond timestamps, as ctpipe wrote them before."""
    import pyarrow.parquet as pq

    files = sorted(Path(offline_folder(spec, FEAST, workspace)).glob("*.parquet"))
    for path in files:
        frame = pd.read_parquet(path)
        frame.assign(ts=frame.ts.astype("datetime64[ns, UTC]")).to_parquet(path)
        assert str(pq.read_schema(path).field("ts").type) == "timestamp[ns, tz=UTC]"
    return files


def test_offline_files_are_microseconds_and_old_nanosecond_files_are_migrated_in_place(tmp_path):
    import pyarrow.parquet as pq

    spec = _tiny_spec(tmp_path)
    workspace = str(tmp_path / "ws")
    snapshot = _write(tmp_path, "snapshot", LEAKAGE_CASE)
    first = build_training_set(snapshot, spec, FEAST, workspace, str(tmp_path / "a"))
    [written] = _as_written_before_microseconds(spec, workspace)

    again = build_training_set(snapshot, spec, FEAST, workspace, str(tmp_path / "b"))
    # The same file, under the same name (no second copy of the snapshot), now in microseconds.
    assert sorted(Path(offline_folder(spec, FEAST, workspace)).glob("*.parquet")) == [written]
    assert str(pq.read_schema(written).field("ts").type) == "timestamp[us, tz=UTC]"
    assert again.missing_entities == first.missing_entities == 1
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b"), pd.read_parquet(tmp_path / "a"))
    assert not list((Path(feast_root(FEAST, workspace)) / "staging").glob("*.parquet"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The spark (offline store|data source API) is an experimental feature")
def test_spark_offline_store_gives_the_file_stores_training_set(tmp_path):
    """get_historical_features through Feast's Spark offline store, on a local Spark session."""
    from pyspark.sql import SparkSession

    spec = _tiny_spec(tmp_path)
    snapshot = _write(tmp_path, "snapshot", LEAKAGE_CASE)
    via_file = build_training_set(snapshot, spec, FEAST, str(tmp_path / "file"), str(tmp_path / "a"))
    # The Spark workspace starts with the snapshot stored by an earlier version (nanoseconds,
    # which Spark 4 refuses): the run migrates it first.
    spark_ws = str(tmp_path / "spark")
    build_training_set(snapshot, spec, FEAST, spark_ws, str(tmp_path / "unused"))
    _as_written_before_microseconds(spec, spark_ws)
    on_spark = FeastSpec(
        offline_store="spark",
        spark_conf={
            "spark.master": "local[1]",
            "spark.sql.shuffle.partitions": "1",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
        },
    )
    existing = SparkSession.getActiveSession()
    try:
        via_spark = build_training_set(snapshot, spec, on_spark, spark_ws, str(tmp_path / "b"))
    finally:
        session = SparkSession.getActiveSession()
        if existing is None and session is not None:  # Feast started it; leave no JVM for later tests
            session.stop()

    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b"), pd.read_parquet(tmp_path / "a"))
    assert via_spark.missing_entities == via_file.missing_entities == 1
    assert pd.read_parquet(tmp_path / "b").signal.tolist() == [0.5, 0.5, 1.0, 1.0, 7.0]


def test_rerun_is_idempotent(window1, dataset_spec, tmp_path):
    path, _ = window1
    workspace = str(tmp_path / "ws")
    first = build_training_set(str(path), dataset_spec, FEAST, workspace, str(tmp_path / "a"))
    second = build_training_set(str(path), dataset_spec, FEAST, workspace, str(tmp_path / "b"))

    files = list(Path(offline_folder(dataset_spec, FEAST, workspace)).iterdir())
    assert len(files) == 1 and files[0].name.startswith("snapshot=") and files[0].suffix == ".parquet"
    assert list((Path(feast_root(FEAST, workspace)) / "staging").iterdir()) == []
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a"), pd.read_parquet(tmp_path / "b"))
    assert first.model_dump(exclude={"path"}) == second.model_dump(exclude={"path"})


def test_entities_without_a_value_inside_the_ttl_are_counted_and_left_out(tmp_path):
    spec = _tiny_spec(tmp_path)
    rows = [
        (7, "2026-01-01", 3.0, 0),
        (7, "2026-01-11", None, 0),  # the only feature value of user 7 is 10 days old
        (8, "2026-01-11", 1.0, 1),
        (9, "2026-01-11", None, 1),  # user 9 never had a feature value
    ]
    snapshot = _write(tmp_path, "snapshot", rows)

    short = build_training_set(snapshot, spec, FeastSpec(ttl_days=1), str(tmp_path / "ws1"), str(tmp_path / "a"))
    kept = pd.read_parquet(tmp_path / "a")
    assert short.missing_entities == 2 and short.rows == 2
    assert list(zip(kept.user, kept.ts.dt.day, kept.signal, strict=True)) == [(7, 1, 3.0), (8, 11, 1.0)]

    # With a 30-day TTL the 10-day-old value is still valid, so user 7 keeps its day-1 value.
    long = build_training_set(snapshot, spec, FeastSpec(ttl_days=30), str(tmp_path / "ws30"), str(tmp_path / "b"))
    kept = pd.read_parquet(tmp_path / "b")
    assert long.missing_entities == 1 and long.rows == 3
    assert list(zip(kept.user, kept.ts.dt.day, kept.signal, strict=True)) == [(7, 1, 3.0), (7, 11, 3.0), (8, 11, 1.0)]


def test_online_lookup_returns_latest_values_in_one_call(churn_frame, churn_data, dataset_spec, tmp_path, monkeypatch):
    workspace = str(tmp_path / "ws")
    windows = [_window(churn_frame, churn_data, n) for n in (1, 2)]
    for number, frame in enumerate(windows, start=1):
        frame.to_parquet(tmp_path / f"w{number}.parquet")
    build_training_set(str(tmp_path / "w1.parquet"), dataset_spec, FEAST, workspace, str(tmp_path / "t1"))
    build_training_set(str(tmp_path / "w2.parquet"), dataset_spec, FEAST, workspace, str(tmp_path / "t2"))
    # Re-running the older window must not roll the online store back.
    again = build_training_set(str(tmp_path / "w1.parquet"), dataset_spec, FEAST, workspace, str(tmp_path / "t3"))
    assert again.materialized_until == windows[1].event_timestamp.max().isoformat()

    calls = []
    original = FeatureStore.get_online_features
    monkeypatch.setattr(
        FeatureStore, "get_online_features", lambda self, **kw: calls.append(kw) or original(self, **kw)
    )
    ids = windows[1].customer_id.head(5).tolist()
    found = online_features([*ids, 10_000_000, -1], dataset_spec, FEAST, workspace)

    assert len(calls) == 1
    assert found.missing == [10_000_000, -1]
    assert [row["customer_id"] for row in found.rows] == ids
    assert list(found.rows[0]) == ["customer_id", *dataset_spec.feature_columns]
    latest = windows[1].set_index("customer_id")
    first = windows[0].set_index("customer_id")
    for row in found.rows:
        entity = row["customer_id"]
        assert row["tenure_months"] == pytest.approx(latest.loc[entity, "tenure_months"])
        assert row["tenure_months"] != pytest.approx(first.loc[entity, "tenure_months"])
        assert row["plan"] == latest.loc[entity, "plan"]


def test_online_lookup_survives_ipython_replacing_the_sqlite_timestamp_converter(
    churn_frame, churn_data, dataset_spec, tmp_path, monkeypatch
):
    """IPython registers an ISO-8601 ``timestamp`` converter process-wide; Feast stores epoch seconds."""
    import sqlite3

    workspace = str(tmp_path / "ws")
    window = _window(churn_frame, churn_data, 1)
    window.to_parquet(tmp_path / "w1.parquet")
    build_training_set(str(tmp_path / "w1.parquet"), dataset_spec, FEAST, workspace, str(tmp_path / "t1"))
    # What `import IPython` does (monkeypatch puts Feast's converter back after the test).
    monkeypatch.setitem(sqlite3.converters, "TIMESTAMP", lambda value: datetime.fromisoformat(value.decode()))

    ids = window.customer_id.head(3).tolist()
    found = online_features(ids, dataset_spec, FEAST, workspace)

    assert [row["customer_id"] for row in found.rows] == ids and found.missing == []


def test_online_store_is_kept_per_thread_and_sees_views_applied_later(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from components.common.feast import _online_store

    workspace = str(tmp_path / "ws")
    users = _tiny_spec(tmp_path)
    rows = [(1, "2026-01-01", 0.5, 0), (2, "2026-01-02", 1.5, 1)]
    build_training_set(_write(tmp_path, "users", rows), users, FEAST, workspace, str(tmp_path / "a"))
    first = online_features([1, 2, 3], users, FEAST, workspace)
    assert first.rows == [{"user": 1, "signal": 0.5}, {"user": 2, "signal": 1.5}] and first.missing == [3]
    store = _online_store(FEAST, workspace)
    assert _online_store(FEAST, workspace) is store  # the lookup above built it; it is reused

    # Requests from a thread pool (as the model server makes them) each get a correct answer
    # from their thread's own store: Feast's sqlite store holds one connection per store.
    def lookup(_):
        return online_features([1, 2, 3], users, FEAST, workspace), _online_store(FEAST, workspace)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lookup, range(16)))
    assert all(found == first for found, _ in answers)
    assert all(other is not store for _, other in answers)

    # A new feature view applied afterwards (by another FeatureStore, as a training run in another
    # process would) is found by the store this thread already holds.
    accounts = users.model_copy(update={"entity_column": "account"})
    frame = pd.DataFrame({"account": [10], "ts": pd.to_datetime(["2026-01-03"], utc=True), "signal": [7.0]})
    frame.assign(label=1).to_parquet(tmp_path / "accounts.parquet")
    build_training_set(str(tmp_path / "accounts.parquet"), accounts, FEAST, workspace, str(tmp_path / "b"))
    assert feature_view_name(accounts) != feature_view_name(users)
    found = online_features([10, 11], accounts, FEAST, workspace)
    assert found.rows == [{"account": 10, "signal": 7.0}] and found.missing == [11]
    assert _online_store(FEAST, workspace) is store
    assert online_features([1, 2, 3], users, FEAST, workspace) == first

    # The workspace deleted and built again with other values: not the old store's answer.
    shutil.rmtree(workspace)
    rows = [(1, "2026-01-01", 9.5, 0)]
    build_training_set(_write(tmp_path, "rebuilt", rows), users, FEAST, workspace, str(tmp_path / "c"))
    assert online_features([1, 2], users, FEAST, workspace).rows == [{"user": 1, "signal": 9.5}]


def test_online_lookup_before_training_names_the_registry(dataset_spec, tmp_path):
    with pytest.raises(DataError, match=r"customer_id_features.*registry\.db"):
        online_features([1], dataset_spec, FEAST, str(tmp_path / "ws"))


def test_snapshot_missing_a_column_is_named(window1, dataset_spec, tmp_path):
    path, frame = window1
    frame.drop(columns=["region"]).to_parquet(path)
    with pytest.raises(DataError, match=r"missing column\(s\) \['region'\]"):
        build_training_set(str(path), dataset_spec, FEAST, str(tmp_path / "ws"), str(tmp_path / "ts"))


def test_entity_type_mismatch_is_named(window1, dataset_spec, tmp_path):
    path, _ = window1
    with pytest.raises(DataError, match=r"'customer_id' has dtype int64, but feast.entity_type is 'string'"):
        build_training_set(
            str(path), dataset_spec, FeastSpec(entity_type="string"), str(tmp_path / "ws"), str(tmp_path / "ts")
        )


def test_changed_feature_list_is_named_with_the_old_file(tmp_path):
    spec = _tiny_spec(tmp_path)
    workspace = str(tmp_path / "ws")
    build_training_set(
        _write(tmp_path, "old", [(1, "2026-01-01", 0.5, 0)]), spec, FEAST, workspace, str(tmp_path / "a")
    )
    wider = spec.model_copy(update={"numeric_features": ["signal", "extra"]})
    snapshot = pd.read_parquet(tmp_path / "old.parquet").assign(extra=1.0)
    snapshot.to_parquet(tmp_path / "new.parquet")
    with pytest.raises(
        DataError, match=r"snapshot=.*\.parquet: offline feature file has columns .*\(lacking \['extra'\]"
    ):
        build_training_set(str(tmp_path / "new.parquet"), wider, FEAST, workspace, str(tmp_path / "b"))


# --- Redis online store, against a real redis-server ------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from tests.helpers import free_port
    from tests.servers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    yield server
    server.stop()


@pytest.mark.server
def test_redis_online_store_gives_the_same_results_as_sqlite(
    churn_frame, churn_data, dataset_spec, redis_server, tmp_path
):
    import redis

    windows = [_window(churn_frame, churn_data, n) for n in (1, 2)]
    for number, frame in enumerate(windows, start=1):
        frame.to_parquet(tmp_path / f"w{number}.parquet")
    on_redis = FeastSpec(online_store="redis", redis_connection_string=redis_server.connection_string)
    results = {}
    for name, feast in (("sqlite", FEAST), ("redis", on_redis)):
        workspace = str(tmp_path / name)
        for number in (1, 2):
            built = build_training_set(
                str(tmp_path / f"w{number}.parquet"), dataset_spec, feast, workspace, str(tmp_path / f"{name}{number}")
            )
        assert built.materialized_until == windows[1].event_timestamp.max().isoformat()
        # Twenty known ids (their window-2 values are the latest) and two that were never seen.
        ids = [*windows[1].customer_id.head(20).tolist(), 10_000_000, -1]
        results[name] = online_features(ids, dataset_spec, feast, workspace)

    # The values really are in Redis (not in a sqlite file next to the registry).
    assert redis.Redis(port=redis_server.port).dbsize() > 0
    assert not (tmp_path / "redis" / "feast" / "online.db").exists()
    assert results["redis"].missing == results["sqlite"].missing == [10_000_000, -1]
    assert len(results["sqlite"].rows) == 20
    latest = windows[1].set_index("customer_id")
    assert [row["plan"] for row in results["redis"].rows] == latest.loc[ids[:20], "plan"].tolist()
    assert results["redis"].rows == results["sqlite"].rows


# --- store profiles: feature_store.yaml -------------------------------------------------------


def test_committed_feature_store_yaml_is_the_rendered_default_profile():
    from feature_repo.render import render
    from tests.helpers import ROOT

    assert (ROOT / "feature_repo" / "feature_store.yaml").read_text() == render(ROOT / "ctpipe.yaml")


def test_spark_and_redis_profile_renders_a_config_feast_accepts(tmp_path):
    import yaml
    from feast.infra.offline_stores.contrib.spark_offline_store.spark import SparkOfflineStoreConfig
    from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.repo_config import RepoConfig

    from components.common.feast import definitions, feature_store_yaml

    feast = FeastSpec(
        online_store="redis",
        redis_connection_string="redis.ctpipe.svc:6379,ssl=true",
        offline_store="spark",
        spark_conf={"spark.master": "spark://spark-master:7077"},
    )
    repo = tmp_path / "repo"
    text = feature_store_yaml(feast, str(tmp_path / "ws"), relative_to=str(repo))
    settings = yaml.safe_load(text)
    assert settings["registry"] == "../ws/feast/registry.db"
    config = RepoConfig(**settings, repo_path=str(repo))
    assert isinstance(config.offline_store, SparkOfflineStoreConfig)
    assert config.offline_store.spark_conf == {
        "spark.sql.session.timeZone": "UTC",
        "spark.master": "spark://spark-master:7077",
    }
    assert isinstance(config.online_store, RedisOnlineStoreConfig)
    assert config.online_store.connection_string == "redis.ctpipe.svc:6379,ssl=true"
    # The same feature view, read through Spark from the same Parquet folder.
    spec = _tiny_spec(tmp_path)
    _, view = definitions(spec, feast, str(tmp_path / "ws"), entity_type="int64")
    assert isinstance(view.batch_source, SparkSource)
    assert view.batch_source.path == str(Path(offline_folder(spec, FEAST, str(tmp_path / "ws"))))
    assert view.batch_source.file_format == "parquet"


# --- the Feast root in an object store (the cluster profile's feast.root) ----------------------


@pytest.mark.server
def test_feast_root_in_an_object_store_gives_the_local_roots_results(
    churn_frame, churn_data, dataset_spec, redis_server, s3_prefix, tmp_path
):
    """Registry and offline files in S3 (SeaweedFS), online values in Redis, no workspace: a cluster task.

    The training sets and online values equal those of a local root; a re-run adds no object;
    and nothing of Feast's state is written to a local folder.
    """
    from components.common import storage

    windows = [_window(churn_frame, churn_data, n) for n in (1, 2)]
    for number, frame in enumerate(windows, start=1):
        frame.to_parquet(tmp_path / f"w{number}.parquet")
    in_s3 = FeastSpec(
        root=f"{s3_prefix}/feast",
        online_store="redis",
        redis_connection_string=redis_server.connection_string,
        project="cluster",  # its own keys in the shared Redis
    )
    local = str(tmp_path / "local")
    ids = [*windows[1].customer_id.head(10).tolist(), 10_000_000]
    for number in (1, 2):
        snapshot = str(tmp_path / f"w{number}.parquet")
        remote = build_training_set(snapshot, dataset_spec, in_s3, "", str(tmp_path / f"s3-{number}"))
        here = build_training_set(snapshot, dataset_spec, FEAST, local, str(tmp_path / f"local-{number}"))
        assert remote.model_dump(exclude={"path"}) == here.model_dump(exclude={"path"})
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / f"s3-{number}"), pd.read_parquet(tmp_path / f"local-{number}")
        )

    objects = storage.find(in_s3.root)
    assert "registry.db" in objects
    assert sorted(o for o in objects if o.startswith("offline/")) == sorted(
        f"offline/customer_id_features/{p.name}" for p in Path(offline_folder(dataset_spec, FEAST, local)).iterdir()
    )
    build_training_set(str(tmp_path / "w2.parquet"), dataset_spec, in_s3, "", str(tmp_path / "again"))
    assert storage.find(in_s3.root) == objects  # idempotent: the snapshot's file is already there

    found = online_features(ids, dataset_spec, in_s3, "")
    assert found == online_features(ids, dataset_spec, FEAST, local)
    assert found.missing == [10_000_000]


def test_no_feast_root_and_no_workspace_is_named(window1, dataset_spec, tmp_path):
    from components.common.errors import ConfigError

    path, _ = window1
    with pytest.raises(ConfigError, match=r"feast\.root is empty and this task has no workspace"):
        build_training_set(str(path), dataset_spec, FEAST, "", str(tmp_path / "ts"))
    with pytest.raises(ConfigError, match=r"online_store is 'sqlite'.*no workspace"):
        online_features([1], dataset_spec, FeastSpec(root=str(tmp_path / "feast")), "")


def test_online_lookup_before_training_names_the_remote_registry(dataset_spec, s3_prefix, redis_server):
    feast = FeastSpec(
        root=f"{s3_prefix}/feast", online_store="redis", redis_connection_string=redis_server.connection_string
    )
    with pytest.raises(DataError, match=r"customer_id_features.*s3://.*/feast/registry\.db"):
        online_features([1], dataset_spec, feast, "")
