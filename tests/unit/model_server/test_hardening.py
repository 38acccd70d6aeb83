"""A server on an open port: closed by default, bounded input, and no request that stalls the others.

Every test talks HTTP to a real server process (``python -m serving.server``) on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from components.common.server_process import ADMIN_TOKEN_ENV, SERVING_TOKEN_ENV, LocalServer
from tests.serving_helpers import GOOD, Registry, ServerFactory, columnar, instances, status, v1, v2

pytestmark = pytest.mark.server


def _metric(server: LocalServer, name: str) -> float:
    """A counter's value, summed over its labels."""
    text = requests.get(f"{server.endpoint}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE))


def _good_answer(session: requests.Session, server: LocalServer, registry: Registry, key: str = "a") -> None:
    rows = registry.rows.head(5)
    answer = v1(session, server, {"instances": instances(rows)})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(answer.json()["predictions"], registry.expected(key, rows), rtol=1e-9)


def test_model_repository_api_is_off_by_default(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    for action in ("unload", "load"):
        answer = session.post(f"{champion_server.endpoint}/v2/repository/models/solo/{action}", timeout=5)
        assert answer.status_code == 404, answer.text
        assert "switched off" in answer.json()["error"]
    assert session.get(f"{champion_server.endpoint}/v2/health/ready", timeout=5).status_code == 200
    _good_answer(session, champion_server, registry)


def test_unload_needs_the_admin_token_and_readiness_follows_it(
    serve_model: ServerFactory, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.create("admin", ["a"], {"champion": 1})
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret-admin")
    server = serve_model("admin", model_repository_api=True)
    session = requests.Session()
    unload = f"{server.endpoint}/v2/repository/models/admin/unload"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LWFkbWlu"}):
        refused = session.post(unload, headers=headers, timeout=5)
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
    _good_answer(session, server, registry)  # still serving after the refused unloads

    admin = {"Authorization": "Bearer s3cret-admin"}
    assert session.post(unload, headers=admin, timeout=10).json() == {"name": "admin", "unload": True}
    assert session.get(f"{server.endpoint}/v2/health/ready", timeout=5).status_code == 503
    assert session.get(f"{server.endpoint}/v2/models/admin/ready", timeout=5).status_code == 503
    assert v1(session, server, {"instances": [GOOD]}).status_code == 503
    assert status(server)["ready"] is False

    load = session.post(f"{server.endpoint}/v2/repository/models/admin/load", headers=admin, timeout=30)
    assert load.status_code == 200, load.text
    assert session.get(f"{server.endpoint}/v2/health/ready", timeout=5).status_code == 200
    _good_answer(session, server, registry)


def test_inference_token_when_required(
    serve_model: ServerFactory, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.create("guarded", ["a"], {"champion": 1})
    monkeypatch.setenv(SERVING_TOKEN_ENV, "s3cret-infer")
    server = serve_model("guarded", require_token=True)
    session = requests.Session()
    assert v1(session, server, {"instances": [GOOD]}).status_code == 401
    assert v2(session, server, columnar(registry.rows.head(2))).status_code == 401
    assert session.get(f"{server.endpoint}/v2/health/live", timeout=5).status_code == 200  # probes stay open
    session.headers["Authorization"] = "Bearer s3cret-infer"
    _good_answer(session, server, registry)
    assert _metric(server, "ctpipe_unauthorized_requests_total") >= 2


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(serve_model: ServerFactory, registry: Registry) -> None:
    registry.create("bounded", ["a"], {"champion": 1})
    server = serve_model("bounded", max_request_bytes=1024 * 1024)
    decoded_before = _metric(server, "ctpipe_request_bodies_decoded_total")
    body = json.dumps({"instances": [GOOD] * 300_000}).encode()  # about 20 MB
    assert len(body) > 19_000_000

    # Declared length: the answer comes before the client sends a byte of the body.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.putrequest("POST", "/v1/models/bounded:predict")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders()
    started = time.perf_counter()
    answer = connection.getresponse()
    assert answer.status == 413
    assert "max_request_bytes" in json.loads(answer.read())["error"]
    print(f"\n[measure] 413 for a 20 MB body {1000 * (time.perf_counter() - started):.1f} ms after its headers")
    connection.close()

    # The whole body sent with Content-Length, and a chunked body without one.
    assert requests.post(f"{server.endpoint}/v1/models/bounded:predict", data=body, timeout=30).status_code == 413
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    chunked = requests.post(f"{server.endpoint}/v2/models/bounded/infer", data=chunks, timeout=30)
    assert chunked.status_code == 413
    assert _metric(server, "ctpipe_request_bodies_decoded_total") == decoded_before
    assert _metric(server, "ctpipe_request_bodies_too_large_total") >= 3
    _good_answer(requests.Session(), server, registry)
    # A small chunked body still works: it is read, then handed on whole.
    small = json.dumps({"instances": instances(registry.rows.head(3))}).encode()
    answered = requests.post(f"{server.endpoint}/v1/models/bounded:predict", data=iter([small[:10], small[10:]]))
    assert answered.status_code == 200, answered.text


def _slowest_probe(server: LocalServer, busy: threading.Event) -> tuple[float, int]:
    """Worst latency of liveness and readiness probes sent while ``busy`` is set, and their count."""
    worst, count = 0.0, 0
    session = requests.Session()
    while not busy.is_set():
        time.sleep(0.001)
    while busy.is_set():
        for route in ("/v2/health/live", "/v2/health/ready"):
            started = time.perf_counter()
            assert session.get(f"{server.endpoint}{route}", timeout=5).status_code == 200
            worst = max(worst, time.perf_counter() - started)
            count += 1
    return worst, count


@pytest.mark.parametrize("request_kind", ["v1_10000_rows", "v2_30000_inputs"])
def test_probes_answer_while_a_large_request_is_served(
    serve_model: ServerFactory, registry: Registry, request_kind: str
) -> None:
    registry.create(f"big-{request_kind}", ["a"], {"champion": 1})
    big_server = serve_model(f"big-{request_kind}", max_batch_rows=10_000)
    rows = registry.rows.sample(10_000, replace=True, random_state=1).reset_index(drop=True)
    if request_kind == "v1_10000_rows":
        url, body = f"{big_server.endpoint}/v1/models/{big_server.model_name}:predict", {"instances": instances(rows)}
    else:
        inputs = [{"name": f"x{i}", "shape": [1], "datatype": "FP64", "data": [1.0]} for i in range(30_000)]
        url, body = f"{big_server.endpoint}/v2/models/{big_server.model_name}/infer", {"inputs": inputs}
    payload = json.dumps(body).encode()
    busy = threading.Event()
    result: dict[str, Any] = {}

    def send() -> None:
        session = requests.Session()
        for _ in range(3):  # three in a row: probes overlap the work for long enough to count
            busy.set()
            started = time.perf_counter()
            answer = session.post(url, data=payload, headers={"content-type": "application/json"}, timeout=60)
            result.setdefault("seconds", []).append(time.perf_counter() - started)
            result["answer"] = answer
        busy.clear()

    sender = threading.Thread(target=send)
    sender.start()
    worst, probes = _slowest_probe(big_server, busy)
    sender.join()
    answer = result["answer"]
    print(f"\n[measure] {request_kind}: {probes} probes, worst {1000 * worst:.1f} ms, requests {result['seconds']}")
    if request_kind == "v1_10000_rows":
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 10_000
    else:
        assert answer.status_code == 400
        assert len(answer.content) < 2000 and "and 29990 more" in answer.json()["error"]
    assert probes >= 5
    assert worst < 0.05, f"a probe took {1000 * worst:.1f} ms while {request_kind} was served"


def test_error_answers_and_log_lines_are_short(champion_server: LocalServer) -> None:
    session = requests.Session()
    unknown = {**GOOD, **{f"unknown_{i}": 1 for i in range(100_000)}}
    answer = v1(session, champion_server, {"instances": [unknown]})
    assert answer.status_code == 400
    assert len(answer.content) < 2000, len(answer.content)
    assert "and 99990 more" in answer.json()["error"]
    log = Path(champion_server.log_path).read_text(errors="replace").splitlines()
    rejected = [line for line in log if '"request rejected"' in line and "unknown_0" in line]
    assert rejected and all(len(line) < 1000 for line in rejected)
    assert not any("Traceback" in line for line in log)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", "[" * 100_000 + "]" * 100_000),
        ("application/json", '{"instances": ' + "[" * 5000 + "]" * 5000 + "}"),
        ("application/x-www-form-urlencoded", '{"a":' * 3000 + "1" + "}" * 3000),
        ("text/plain", b"\xff\xfe{not utf-8"),
    ],
    ids=["deep-text-plain", "deep-json", "deep-objects-form", "not-utf8"],
)
def test_malformed_bodies_of_any_content_type_are_400(
    champion_server: LocalServer, registry: Registry, content_type: str, body: str | bytes
) -> None:
    session = requests.Session()
    for route in ("v1", "v2"):
        send = v1 if route == "v1" else v2
        answer = (
            send(session, champion_server, body, content_type)
            if route == "v1"
            else send(session, champion_server, body)
        )
        assert answer.status_code == 400, answer.text[:300]
    _good_answer(session, champion_server, registry)


@pytest.mark.parametrize(
    "request_id",
    ["x" * 129, "has space", "semi;colon", "new\tline", ""],
    ids=["long", "space", "semicolon", "tab", "empty"],
)
def test_request_ids_are_checked_before_they_are_logged(champion_server: LocalServer, request_id: str) -> None:
    session = requests.Session()
    answer = v1(session, champion_server, {"instances": [GOOD]}, headers={"x-request-id": request_id})
    assert answer.status_code == 400 and "x-request-id" in answer.json()["error"]
    body = {**columnar(pd.DataFrame([GOOD])), "id": request_id}
    answer = v2(session, champion_server, body)
    assert answer.status_code == 400 and "'id'" in answer.json()["error"]
    good = v1(session, champion_server, {"instances": [GOOD]}, headers={"x-request-id": "trace-01:ab/c+=@"})
    assert good.status_code == 200 and good.json()["request_id"] == "trace-01:ab/c+=@"


def test_server_log_rotates(tmp_path: Path) -> None:
    import logging

    from serving import server

    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate) for name in ("ctpipe",)}
    log_file = tmp_path / "server.log"
    try:
        server._configure_logging(str(log_file))
        logger = logging.getLogger("ctpipe.test")
        line = "x" * 1000
        for _ in range(server.LOG_FILE_BYTES * (server.LOG_FILE_BACKUPS + 2) // 1000):
            logger.warning(line)
    finally:
        for name in ("ctpipe", "kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
            for handler in logging.getLogger(name).handlers:
                handler.close()
        for name, (handlers, propagate) in saved.items():
            logging.getLogger(name).handlers = handlers
            logging.getLogger(name).propagate = propagate
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["server.log"] + [f"server.log.{i}" for i in range(1, server.LOG_FILE_BACKUPS + 1)]
    assert all(p.stat().st_size <= server.LOG_FILE_BYTES for p in tmp_path.iterdir())
