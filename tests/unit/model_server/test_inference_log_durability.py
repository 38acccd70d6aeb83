"""SIGTERM under load loses no answered request from the inference log; protected columns never reach it raw."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from components.common import server_process
from components.common.inference_log import read_window
from components.serving_spec import INFERENCE_LOG_HASH_KEY_ENV
from serving.server import main as server_main
from tests.serving_helpers import Registry, ServerFactory, instances, v1

HASH_KEY = "durability-test-key"
THREADS = 4
ROWS_PER_REQUEST = 5


@pytest.mark.server
def test_sigterm_under_load_keeps_every_answered_request_in_the_log(
    serve_model: ServerFactory, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.create("durable", ["a"], {"champion": 1})
    monkeypatch.setenv(INFERENCE_LOG_HASH_KEY_ENV, HASH_KEY)  # the server process inherits it
    # A long flush interval: at SIGTERM the answered rows are still queued, so only the drain writes them.
    server = serve_model(
        "durable",
        inference_log_flush_seconds=60,
        inference_log_queue_rows=1_000_000,
        inference_log={"exclude": ["plan"], "hash": ["calls"]},
    )
    child = server_process._children.get(server.pid)
    body = {"instances": instances(registry.rows.head(ROWS_PER_REQUEST))}
    answered: list[list[str]] = [[] for _ in range(THREADS)]
    failures = [0] * THREADS
    stop = threading.Event()

    def load(slot: int) -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                response = v1(session, server, body)
            except requests.RequestException:
                failures[slot] += 1  # in flight when the server closed: not answered, not counted
                time.sleep(0.01)
                continue
            if response.status_code == 200:
                answered[slot].append(response.json()["request_id"])

    threads = [threading.Thread(target=load, args=(slot,), daemon=True) for slot in range(THREADS)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    in_flight_at_kill = sum(map(len, answered))
    started = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + 40
    while server_process._alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    exit_seconds = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(15)
    assert not server_process._alive(server.pid), "the server did not exit within 40 s of SIGTERM"
    if child is not None:
        assert child.wait(5) == 0, "SIGTERM ends the server normally (exit 0) once the log is written"

    ids = {request_id for slot in answered for request_id in slot}
    total_rows = len(ids) * ROWS_PER_REQUEST
    print(
        f"\n[measure] {len(ids)} answered requests ({total_rows} rows) from {THREADS} threads, "
        f"{in_flight_at_kill} before SIGTERM, {sum(failures)} connection errors after; exit {exit_seconds:.2f}s"
    )
    assert total_rows < 1_000_000, "the load stayed below the queue size"
    assert len(ids) > in_flight_at_kill // 2 > 0
    log = read_window(Path(server.log_path).parents[1] / "inference_log")
    missing = ids - set(log["request_id"])
    assert not missing, f"{len(missing)} answered requests are not in the inference log, e.g. {sorted(missing)[:3]}"
    mine = log[log["request_id"].isin(ids)]
    assert len(mine) == total_rows

    # Personal data settings applied by the server's writer: excluded never stored, hashed as keyed digests.
    assert "plan" not in log.columns
    assert log.attrs["protection"] == {"excluded": ["plan"], "hashed": ["calls"]}
    sent = registry.rows.head(ROWS_PER_REQUEST)["calls"]
    expected = {hmac.new(HASH_KEY.encode(), str(v).encode(), hashlib.sha256).hexdigest() for v in sent}
    assert set(mine["calls"]) <= expected, "a value was stored raw or under another key"
    files = list((Path(server.log_path).parents[1] / "inference_log").rglob("*.parquet"))
    assert all(b"basic" not in path.read_bytes() for path in files), "an excluded value reached storage"


def test_server_refuses_to_start_when_hashing_without_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(INFERENCE_LOG_HASH_KEY_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        server_main(["--model-name", "m", "--tracking-uri", "sqlite:///x.db", "--log-hash", "email"])
    assert exit_info.value.code == 2
    assert INFERENCE_LOG_HASH_KEY_ENV in capsys.readouterr().err


def test_serving_settings_become_the_servers_protection_flags() -> None:
    from components.serving_spec import ServingSpec

    spec = ServingSpec(inference_log={"exclude": ["email"], "hash": ["customer_id"], "hash_key_env": "MY_KEY"})
    args = server_process.serving_args(spec)
    assert args[args.index("--log-exclude") + 1] == "email"
    assert args[args.index("--log-hash") + 1] == "customer_id"
    assert args[args.index("--log-hash-key-env") + 1] == "MY_KEY"
    assert "--log-hash" not in server_process.serving_args(ServingSpec(inference_log=True))
    assert "--inference-log-dir" not in server_process.local_server_args(ServingSpec(inference_log=False), "/ws")
