"""Shared fixtures: small generated data, a dataset spec that describes it, and a sqlite MLflow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from components.specs import DatasetSpec
from pipelines.demo_data import DriftSpec, Window, generate
from tests.helpers import demo_spec

# Spark workers and kfp.local subprocesses must use this interpreter, not whatever is on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Spark drivers started by the tests (local mode or against a test cluster) bind loopback only.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

SMALL_ROWS = 600


@pytest.fixture(autouse=True)
def isolated_mlflow_uris(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no process-wide MLflow tracking or registry URI.

    ``mlflow.set_tracking_uri`` and ``set_registry_uri`` keep module globals and also export
    ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``, so without this a client built later
    with only a tracking URI would read the model registry of an earlier test's database.
    """
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Window]]:
    """Three small windows, with covariate and concept drift from window 2 on. Read-only."""
    path = tmp_path_factory.mktemp("data") / "churn.parquet"
    windows = generate(path, windows=3, rows_per_window=SMALL_ROWS, seed=3, drift=DriftSpec(start_window=2))
    return path, windows


@pytest.fixture(scope="session")
def demo_frame(demo_data: tuple[Path, list[Window]]) -> pd.DataFrame:
    """The generated data as a DataFrame (copy it before changing it)."""
    return pd.read_parquet(demo_data[0])


@pytest.fixture
def dataset_spec(demo_data: tuple[Path, list[Window]]) -> DatasetSpec:
    """A dataset spec describing ``demo_data``."""
    return demo_spec(demo_data[0])


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    """A fresh sqlite-backed MLflow for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def stop_server():
    """Register a workspace; its local model server (if a test started one) is stopped afterwards."""
    workspaces: list[Path] = []
    yield workspaces.append
    from serving.server import stop_local_server

    for workspace in workspaces:
        stop_local_server(str(workspace))
