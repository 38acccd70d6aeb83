"""A small, isolated ctpipe setup: its own workspace, data, MLflow and model-server port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from pipelines.config import CtpipeConfig, parse_config
from pipelines.demo_data import DriftSpec, generate

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def small_config(workspace: Path, rows: int = 800) -> CtpipeConfig:
    """The repository's ctpipe.yaml, pointed at a private workspace with small data and a free port."""
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["dataset"]["source"] = str(workspace / "data" / "churn.parquet")
    raw["infra"]["workspace"] = str(workspace)
    raw["serving"]["port"] = free_port()
    raw["model"]["params"] = {"max_iter": 60, "learning_rate": 0.1, "max_leaf_nodes": 15}
    config = parse_config(raw, ROOT)
    generate(config.dataset.source, windows=3, rows_per_window=rows, seed=11, drift=DriftSpec(start_window=2))
    return config


@pytest.fixture
def stop_server():
    """Stops the local model server of every workspace a test registers here."""
    workspaces: list[Path] = []
    yield workspaces.append
    from serving.server import stop_local_server

    for workspace in workspaces:
        stop_local_server(str(workspace))
