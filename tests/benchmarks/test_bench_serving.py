"""Model server latency and throughput over V1 and V2 on loopback, next to raw predict on the same rows."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from components.common.server_process import start_local_server, stop_local_server
from components.specs import ServingSpec
from tests.benchmarks.conftest import bench_rows
from tests.helpers import free_port
from tests.serving_helpers import POLL, build_registry, columnar, instances

pytestmark = pytest.mark.bench


def _summary(seconds: list[float], rows: int) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {
        "requests": len(seconds),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 3),
        "requests_per_s": round(len(seconds) / sum(seconds), 1),
        "rows_per_s": round(rows * len(seconds) / sum(seconds), 1),
    }


def test_serving_latency_vs_raw_predict(tmp_path: Path, record_bench: Any) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.create("bench", ["a"], {"champion": 1})
    workspace = str(tmp_path / "ws")
    spec = ServingSpec(model_name="bench", port=free_port(), inference_log=True)
    server = start_local_server(spec, registry.tracking_uri, workspace, poll_seconds=POLL)
    n = bench_rows(300)
    results: dict[str, Any] = {}
    try:
        session = requests.Session()
        model = registry.pipelines["a"]
        for batch in (1, 100):
            rows = registry.rows.sample(batch, replace=True, random_state=batch).reset_index(drop=True)
            features = rows[list(model.feature_names_in_)]
            raw = []
            for _ in range(n):
                started = time.perf_counter()
                model.predict_proba(features)
                raw.append(time.perf_counter() - started)
            results[f"raw_predict_{batch}_rows"] = _summary(raw, batch)
            bodies = {"v1": {"instances": instances(rows)}, "v2": columnar(rows)}
            urls = {
                "v1": f"{server.endpoint}/v1/models/bench:predict",
                "v2": f"{server.endpoint}/v2/models/bench/infer",
            }
            for protocol in ("v1", "v2"):
                for _ in range(10):  # warm up
                    session.post(urls[protocol], json=bodies[protocol], timeout=30)
                seconds = []
                for _ in range(n):
                    started = time.perf_counter()
                    response = session.post(urls[protocol], json=bodies[protocol], timeout=30)
                    seconds.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                results[f"{protocol}_{batch}_rows"] = _summary(seconds, batch)
            results[f"overhead_ratio_v1_{batch}_rows_p50"] = round(
                results[f"v1_{batch}_rows"]["p50_ms"] / max(results[f"raw_predict_{batch}_rows"]["p50_ms"], 1e-6), 1
            )
    finally:
        stop_local_server(workspace)
    assert np.isfinite([v["p50_ms"] for v in results.values() if isinstance(v, dict)]).all()
    record_bench("serving_latency", {"requests_per_case": n, "loopback": True, **results})
