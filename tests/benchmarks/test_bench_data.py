"""Data benchmarks: suite validation throughput, historical retrieval, online lookup latency (sqlite, Redis)."""

import time

import numpy as np
import pandas as pd
import pytest

from components.common.feast import feature_store, feature_view_name, online_features
from components.common.suites import infer_suite
from components.fetch_features import _feature_rows, _store_offline, build_training_set
from components.specs import FeastSpec
from components.validate import validate
from pipelines.demo_data import generate
from tests.benchmarks.conftest import bench_rows

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    rows = bench_rows(1_000_000)
    path = tmp_path_factory.mktemp("bench_data") / "data.parquet"
    generate(path, windows=1, rows_per_window=rows, seed=5)
    return path, rows


def test_validation_throughput(big, dataset_spec, tmp_path, record_bench):
    path, rows = big
    frame = pd.read_parquet(path)
    spec = dataset_spec.model_copy(update={"source": str(path)})
    started = time.perf_counter()
    suite = infer_suite(frame, spec)
    infer_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = validate(str(path), spec, suite, str(tmp_path / "r.json"), str(tmp_path / "r.html"), str(tmp_path / "q"))
    seconds = time.perf_counter() - started
    assert result.rows == rows and result.success
    record_bench(
        "validation",
        {
            "rows": rows,
            "expectations": len(result.outcomes),
            "infer_suite_seconds": round(infer_seconds, 3),
            "validate_seconds_including_read": round(seconds, 3),
            "validate_rows_per_second": round(rows / seconds),
        },
    )


def test_historical_retrieval(big, dataset_spec, tmp_path, record_bench):
    path, rows = big
    spec = dataset_spec.model_copy(update={"source": str(path)})
    snapshot = pd.read_parquet(path)
    workspace = str(tmp_path / "ws")
    feast = FeastSpec()
    entity_type = "int64"  # the generated customer ids; fetch_features infers it from the data the same way
    _store_offline(_feature_rows(snapshot, spec, entity_type), spec, feast, workspace)
    store = feature_store(spec, feast, workspace, entity_type)
    keys = snapshot[spec.key_columns]
    features = [f"{feature_view_name(spec)}:{c}" for c in spec.feature_columns]
    started = time.perf_counter()
    joined = store.get_historical_features(entity_df=keys, features=features).to_df()
    seconds = time.perf_counter() - started
    assert len(joined) == rows
    record_bench(
        "historical_retrieval",
        {
            "entity_rows": rows,
            "feature_rows": rows,
            "offline_store": "file (dask)",
            "seconds": round(seconds, 3),
            "entity_rows_per_second": round(rows / seconds),
        },
    )


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    from tests.helpers import free_port
    from tests.servers import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    yield server
    server.stop()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


@pytest.mark.server
def test_online_lookup_latency(dataset_spec, redis_server, tmp_path, record_bench):
    entities = 10_000
    source = tmp_path / "online.parquet"
    generate(source, windows=1, rows_per_window=entities, seed=9)
    spec = dataset_spec.model_copy(update={"source": str(source)})
    ids = pd.read_parquet(source).customer_id.unique()
    rng = np.random.default_rng(0)
    stores = {
        "sqlite": FeastSpec(),
        "redis": FeastSpec(online_store="redis", redis_connection_string=redis_server.connection_string),
    }
    calls = 200
    results: dict[str, dict[str, float]] = {}
    for name, feast in stores.items():
        workspace = str(tmp_path / name)
        build_training_set(str(source), spec, feast, workspace, str(tmp_path / f"{name}.ts"))
        store = feature_store(spec, feast, workspace)
        features = [f"{feature_view_name(spec)}:{c}" for c in spec.feature_columns]
        for size in (1, 100):
            samples = []
            for _ in range(calls):
                batch = [{spec.entity_column: int(i)} for i in rng.choice(ids, size, replace=False)]
                started = time.perf_counter()
                store.get_online_features(features=features, entity_rows=batch).to_dict()
                samples.append(time.perf_counter() - started)
            results[f"{name}_{size}_entities"] = _percentiles(samples)
        # ctpipe's own call builds the store (reads the registry) every time: what a cold caller pays.
        samples = []
        for _ in range(20):
            started = time.perf_counter()
            found = online_features([int(i) for i in rng.choice(ids, 100, replace=False)], spec, feast, workspace)
            samples.append(time.perf_counter() - started)
            assert not found.missing
        results[f"{name}_100_entities_ctpipe_online_features"] = _percentiles(samples)
    record_bench("online_lookup", {"entities_in_store": len(ids), "calls_per_size": calls, **results})
