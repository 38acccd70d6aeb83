"""Benchmarks write one JSON file each under out/bench/ (override with CTPIPE_BENCH_DIR).

``demo_model`` (session scope) is the model a user gets: the training pipeline run on demo data
with the repository's ctpipe.yaml, its version made champion.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import pandas as pd

    from components.common.model_input import Feature
    from pipelines.config import CtpipeConfig

ROOT = Path(__file__).resolve().parents[2]


def bench_rows(default: int) -> int:
    """Rows to benchmark on; CTPIPE_BENCH_ROWS shrinks a run for a quick check."""
    return int(os.environ.get("CTPIPE_BENCH_ROWS", default))


def bench_dir() -> Path:
    """Results, and state kept between runs (a reference server's virtualenv): out/bench or CTPIPE_BENCH_DIR."""
    return Path(os.environ.get("CTPIPE_BENCH_DIR", ROOT / "out" / "bench"))


def progress(message: str) -> None:
    """A progress line on the terminal even under pytest's output capture (slow steps: training, installs)."""
    print(f"[bench] {message}", file=sys.__stderr__, flush=True)


@dataclass(frozen=True)
class DemoModel:
    """The champion that the training pipeline registered from demo data, and what a benchmark needs of it."""

    config: CtpipeConfig
    """ctpipe.yaml pointed at a private workspace (MLflow on sqlite, Feast's sqlite online store) and a free port."""
    version: str
    """The registered version, alias ``champion``."""
    tags: dict[str, str]
    """The version's tags (``ctpipe.onnx_sha256``, ``ctpipe.serving_runtime``, ...)."""
    artifacts: Path
    """The version's artifacts downloaded as the model server downloads them (MLmodel, model.pkl, model.onnx)."""
    model: Any
    """The scikit-learn pipeline, loaded as the model server loads it."""
    features: tuple[Feature, ...]
    """The model's input columns in order, from its MLflow signature."""
    rows: pd.DataFrame
    """Rows of the training window with no missing value: the entity column, then the features."""
    training_seconds: float


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Train the demo model the way a user does and make it champion; no server is left running.

    ``ctpipe data generate`` (4 weekly windows of 5,000 rows, drift from window 2), then the training
    pipeline on window 1 on kfp.local (``ctpipe run training --window 1``), then ``ctpipe promote``
    when the pipeline left the version as challenger. The pipeline's deploy step starts a model
    server in the workspace; it is stopped, so each benchmark starts its own.
    """
    import mlflow.artifacts
    import pandas as pd
    import yaml
    from mlflow.models import Model as MlflowModel

    from components.common import registry, server_process, tracking
    from components.common.model_input import features_of
    from components.common.storage import read_table
    from pipelines.config import parse_config
    from pipelines.demo_data import DriftSpec, generate
    from pipelines.runner import run_pipeline, window_params
    from tests.helpers import free_port

    workspace = tmp_path_factory.mktemp("demo-model")
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["dataset"]["source"] = str(workspace / "data" / "churn.parquet")
    raw["infra"]["workspace"] = str(workspace)
    raw["serving"]["port"] = free_port()
    config = parse_config(raw, ROOT, source="ctpipe.yaml")
    name = config.serving.model_name
    started = time.perf_counter()
    generate(config.dataset.source, drift=DriftSpec(start_window=2))
    progress("training the demo model: the training pipeline on window 1 (kfp.local)")
    try:
        report = run_pipeline("training", config, window_params(config, 1), progress=None)
        assert report.succeeded, f"the training pipeline failed: {report.error} (log: {report.log_path})"
        version = str(report.outputs["version"])
        client = tracking.registry_client(config.tracking_uri)
        if registry.aliases_of(client, name).get(registry.CHAMPION_ALIAS) != version:
            registry.promote(name, config.tracking_uri, version)
    finally:
        server_process.stop_local_server(str(config.workspace))
    training_seconds = time.perf_counter() - started
    progress(f"{name} version {version} is champion ({training_seconds:.0f}s)")

    artifacts = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(workspace / "downloaded-model")
        )
    )
    model = tracking.load_sklearn_model(str(artifacts))
    features = features_of(MlflowModel.load(str(artifacts)), model)
    frame = read_table(config.dataset.source)
    window = window_params(config, 1)
    seen = frame[config.dataset.timestamp_column]
    frame = frame[(seen >= pd.Timestamp(window["window_start"])) & (seen < pd.Timestamp(window["window_end"]))]
    columns = [config.dataset.entity_column, *(f.name for f in features)]
    rows = frame[columns].dropna().reset_index(drop=True)
    tags = dict(client.get_model_version(name, version).tags or {})
    return DemoModel(config, version, tags, artifacts, model, features, rows, round(training_seconds, 1))


@pytest.fixture
def record_bench():
    """Write a benchmark result as JSON, with the machine it ran on."""

    def write(name: str, result: dict[str, Any]) -> Path:
        out_dir = bench_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                # Other work on the machine skews every figure; a load near the core count means a busy machine.
                "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            },
            **result,
        }
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(json.dumps(payload, indent=2))
        return path

    return write
