"""A real server process on 127.0.0.1: its address, both protocols, latency, metrics and inference log, lifecycle."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from components.common.errors import DeployError
from components.common.server_process import LocalServer, start_local_server, stop_local_server
from components.serving_spec import ServingSpec
from tests.helpers import ROOT, free_port
from tests.serving_helpers import FEATURES, GOOD, POLL, Registry, columnar, instances, status, v1, v2, wait_for_log


def _listening_addresses(port: int) -> set[str]:
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                addresses.add(address)
    return addresses


@pytest.mark.server
def test_server_binds_loopback_and_reports_ready(champion_server: LocalServer) -> None:
    assert champion_server.endpoint.startswith("http://127.0.0.1:")
    assert requests.get(f"{champion_server.endpoint}/v2/health/ready", timeout=5).json() == {"ready": True}
    ready = requests.get(f"{champion_server.endpoint}/v2/models/solo/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    addresses = _listening_addresses(champion_server.port)
    if not addresses:
        pytest.skip("no /proc/net/tcp to check the bound address")
    assert addresses == {"0100007F"}, f"server must listen on 127.0.0.1 only, found {addresses}"
    current = status(champion_server)
    assert current["champion_version"] == "1" and current["challenger_version"] is None
    assert current["features"] == FEATURES
    metadata = requests.get(f"{champion_server.endpoint}/v2/models/solo", timeout=5).json()
    assert [i["name"] for i in metadata["inputs"]] == FEATURES
    assert metadata["outputs"][0]["name"] == "score"


@pytest.mark.server
def test_v1_and_v2_predictions_equal_predict_proba(champion_server: LocalServer, registry: Registry) -> None:
    rows = registry.rows.head(7)
    expected = registry.expected("a", rows)
    session = requests.Session()

    by_name = v1(session, champion_server, {"instances": instances(rows)})
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["model_version"] == "1" and by_name.json()["model_alias"] == "champion"
    np.testing.assert_allclose(by_name.json()["predictions"], expected, rtol=1e-12)

    in_order = v1(session, champion_server, {"instances": rows[FEATURES].astype(object).values.tolist()})
    assert in_order.status_code == 200, in_order.text
    np.testing.assert_allclose(in_order.json()["predictions"], expected, rtol=1e-12)

    infer = v2(session, champion_server, columnar(rows))
    assert infer.status_code == 200, infer.text
    body = infer.json()
    assert body["model_version"] == "1" and body["parameters"]["model_alias"] == "champion"
    assert body["outputs"][0]["name"] == "score" and body["outputs"][0]["shape"] == [7]
    np.testing.assert_allclose(body["outputs"][0]["data"], expected, rtol=1e-12)

    matrix = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [7, 4],
                "datatype": "BYTES",
                "data": rows[FEATURES].astype(object).values.tolist(),
            }
        ]
    }
    infer = v2(session, champion_server, matrix)
    assert infer.status_code == 200, infer.text
    np.testing.assert_allclose(infer.json()["outputs"][0]["data"], expected, rtol=1e-12)


@pytest.mark.server
def test_v1_latency(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    body = {"instances": instances(registry.rows.head(1))}
    latencies = []
    for _ in range(200):
        started = time.perf_counter()
        response = v1(session, champion_server, body)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200
    p50 = statistics.median(latencies)
    p95 = sorted(latencies)[int(0.95 * len(latencies))]
    print(f"\n[measure] 1-row V1 latency over 200 requests: p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms")
    assert p50 < 0.25


@pytest.mark.server
def test_metrics_and_inference_log_record_real_requests(champion_server: LocalServer, registry: Registry) -> None:
    from components.common.inference_log import read_window

    session = requests.Session()
    rows = registry.rows.head(4)
    ids = []
    for _ in range(5):
        answer = v1(session, champion_server, {"instances": instances(rows)}).json()
        ids.append(answer["request_id"])
    v1(session, champion_server, {"instances": [{**GOOD, "tenure": "x"}]})  # one rejected request
    metrics = requests.get(f"{champion_server.endpoint}/metrics", timeout=5).text
    ok = [line for line in metrics.splitlines() if line.startswith("ctpipe_requests_total{") and 'status="ok"' in line]
    assert ok and all('version="1"' in line for line in ok), ok
    assert float(ok[0].rsplit(" ", 1)[1]) >= 5
    assert any(
        line.startswith("ctpipe_requests_total{") and 'status="rejected"' in line for line in metrics.splitlines()
    )
    assert 'ctpipe_request_latency_seconds_bucket{le="0.1",model="solo",version="1"}' in metrics
    assert 'ctpipe_prediction_count{model="solo",version="1"}' in metrics

    log_dir = Path(champion_server.log_path).parents[1] / "inference_log"
    logged = wait_for_log(log_dir, set(ids))
    mine = logged[logged["request_id"].isin(ids)]
    assert len(mine) == 5 * len(rows)
    assert set(mine["model_version"]) == {"1"} and set(mine["status"]) == {"ok"}
    first = mine[mine["request_id"] == ids[0]].sort_values("row")
    np.testing.assert_allclose(first["prediction"], registry.expected("a", rows), rtol=1e-12)
    np.testing.assert_allclose(first["tenure"], rows["tenure"], rtol=1e-12)
    assert (mine["latency_ms"] > 0).all()
    assert list(log_dir.glob("date=*/part-*.parquet")), "partitioned by date"
    assert read_window(log_dir, model_name="solo")["request_id"].isin(ids).sum() == len(mine)


@pytest.mark.server
def test_start_is_idempotent_and_stop_only_stops_ours(registry: Registry, tmp_path: Path) -> None:
    registry.create("life", ["a"], {"champion": 1})
    spec = ServingSpec(model_name="life", port=free_port())
    workspace = str(tmp_path / "ws")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        first = start_local_server(spec, registry.tracking_uri, workspace, poll_seconds=POLL)
        again = start_local_server(spec, registry.tracking_uri, workspace)
        assert not first.reused and again.reused and again.pid == first.pid
        other = spec.model_copy(update={"model_name": "someone-else"})
        with pytest.raises(DeployError, match="used by a ctpipe server for model 'life'"):
            start_local_server(other, registry.tracking_uri, str(tmp_path / "other"))

        # A pid file naming an unrelated process must never kill it.
        foreign = tmp_path / "foreign"
        (foreign / "serving").mkdir(parents=True)
        (foreign / "serving" / "server.pid").write_text(f"{bystander.pid}\n")
        assert stop_local_server(str(foreign)) is False
        assert bystander.poll() is None

        assert stop_local_server(workspace) is True
        assert not Path(first.pid_path).exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{first.endpoint}/v2/health/live", timeout=2)
        assert stop_local_server(workspace) is False
    finally:
        stop_local_server(workspace)
        os.kill(bystander.pid, signal.SIGKILL)
        bystander.wait()


def test_cli_help_names_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving.server", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    for option in ("--model-name", "--tracking-uri", "--host", "--port", "--poll-seconds", "--model-version"):
        assert option in result.stdout
    assert "127.0.0.1" in result.stdout
