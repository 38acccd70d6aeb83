"""Helpers for tests that need a whole ctpipe setup: a private workspace, small data, a free port."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from components.specs import DatasetSpec
from pipelines.config import CtpipeConfig, parse_config
from pipelines.demo_data import CATEGORICAL_FEATURES, ENTITY, LABEL, NUMERIC_FEATURES, TIMESTAMP, DriftSpec, generate

ROOT = Path(__file__).resolve().parents[1]


def demo_spec(source: str | Path) -> DatasetSpec:
    """A dataset spec describing data written by ``pipelines.demo_data.generate``."""
    return DatasetSpec(
        source=str(source),
        entity_column=ENTITY,
        timestamp_column=TIMESTAMP,
        label_column=LABEL,
        numeric_features=list(NUMERIC_FEATURES),
        categorical_features=list(CATEGORICAL_FEATURES),
        task="binary_classification",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
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
