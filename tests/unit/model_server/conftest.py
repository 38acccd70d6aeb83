"""Fixtures of the model server's tests: one registry for the session, servers started per test or shared."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.common.server_process import LocalServer, start_local_server, stop_local_server
from components.serving_spec import ServingSpec
from tests.helpers import free_port
from tests.serving_helpers import MAX_ROWS, POLL, Registry, ServerFactory, build_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return build_registry(tmp_path_factory.mktemp("serving-registry"))


@pytest.fixture
def serve_model(tmp_path: Path, registry: Registry) -> Iterator[ServerFactory]:
    """Start real servers for a registered model name; every one is stopped in teardown."""
    workspaces: list[Path] = []

    def start(name: str, poll_seconds: float = POLL, **settings: Any) -> LocalServer:
        workspace = tmp_path / f"ws{len(workspaces)}"
        workspaces.append(workspace)
        spec = ServingSpec(model_name=name, port=free_port(), **settings)
        return start_local_server(spec, registry.tracking_uri, str(workspace), timeout=60, poll_seconds=poll_seconds)

    yield start
    for workspace in workspaces:
        stop_local_server(str(workspace))


@pytest.fixture(scope="session")
def champion_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One champion-only server ("solo", version 1) shared by the request tests of every module here."""
    registry.create("solo", ["a"], {"champion": 1})
    workspace = tmp_path_factory.mktemp("solo-ws")
    started = time.perf_counter()
    spec = ServingSpec(model_name="solo", port=free_port(), max_batch_rows=MAX_ROWS, inference_log_flush_seconds=0.2)
    server = start_local_server(spec, registry.tracking_uri, str(workspace), poll_seconds=POLL)
    print(f"\n[measure] server start to ready: {time.perf_counter() - started:.2f}s")
    yield server
    assert stop_local_server(str(workspace))
