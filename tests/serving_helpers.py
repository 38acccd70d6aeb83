"""The model server's test kit: a sqlite MLflow with tiny models, request builders and waits.

Used by the model server's tests (``tests/unit/model_server/``) and by the tests of the components
that drive a server (deploy, infra validation, canary analysis), the serving benchmark and the
containers tier.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests

from components.common.server_process import LocalServer

FEATURES = ["tenure", "charges", "calls", "plan"]
POLL = 0.2
MAX_ROWS = 50  # serving.max_batch_rows of the shared server, so an oversized batch is cheap to send
# One valid V1 instance.
GOOD = {"tenure": 12.0, "charges": 70.5, "calls": 2, "plan": "basic"}
GOOD_JSON = '{"instances": [{"tenure": 12.0, "charges": 70.5, "calls": 2, "plan": "basic"}]}'


def make_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "tenure": rng.uniform(0, 60, rows),
            "charges": rng.uniform(20, 120, rows),
            "calls": rng.integers(0, 8, rows),
            "plan": rng.choice(["basic", "standard", "premium"], rows),
        }
    )


@dataclass
class Registry:
    """A sqlite MLflow with three logged models: two good ones and one whose pickle is garbage."""

    tracking_uri: str
    sources: dict[str, tuple[str, str, str]]  # key -> (model uri, run id, model id)
    pipelines: dict[str, Any]
    rows: pd.DataFrame

    def client(self) -> Any:
        from components.common import tracking

        # Also sets MLflow's process-wide URIs: create_model_version resolves models:/m-... with them.
        return tracking.registry_client(self.tracking_uri)

    def create(self, name: str, versions: list[str], aliases: dict[str, int]) -> None:
        """Register ``name`` with one version per key in ``versions`` and set the aliases."""
        client = self.client()
        client.create_registered_model(name)
        for key in versions:
            self.add_version(name, key)
        for alias, version in aliases.items():
            client.set_registered_model_alias(name, alias, str(version))

    def add_version(self, name: str, key: str) -> str:
        uri, run_id, model_id = self.sources[key]
        version = self.client().create_model_version(name, source=uri, run_id=run_id, model_id=model_id)
        return str(version.version)

    def expected(self, key: str, rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.pipelines[key].predict_proba(rows[FEATURES])[:, 1])


def build_registry(folder: Path) -> Registry:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from components.common import tracking

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracking.ensure_experiment("serving-tests", tracking_uri)
    train = make_frame(300, seed=1)
    label = ((train.tenure < 20) & (train.plan == "basic") | (train.calls > 5)).astype(int)
    pipelines: dict[str, Any] = {}
    sources: dict[str, tuple[str, str, str]] = {}
    for key, c in (("a", 1.0), ("b", 0.02), ("broken", 1.0)):
        pipeline = Pipeline(
            [
                (
                    "prep",
                    ColumnTransformer(
                        [
                            ("num", StandardScaler(), ["tenure", "charges", "calls"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                        ]
                    ),
                ),
                ("clf", LogisticRegression(C=c)),
            ]
        ).fit(train[FEATURES], label)
        with warnings.catch_warnings():  # the integer column's "no missing values" hint
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(train[FEATURES], pipeline.predict_proba(train[FEATURES]))
        with mlflow.start_run() as run:
            info = tracking.log_sklearn_model(
                pipeline, tracking_uri, signature=signature, input_example=train[FEATURES].head(3)
            )
        pipelines[key] = pipeline
        sources[key] = (info.model_uri, run.info.run_id, info.model_id)
        if key == "broken":
            local = Path(info.artifact_path.removeprefix("file://"))
            (local / "model.pkl").write_bytes(b"this is not a pickle")
            # The hash is recorded again after the garbage write, so "broken" passes the hash check and
            # fails where it is unpickled.
            tracking.record_model_sha256(info.model_id, tracking_uri)
    return Registry(tracking_uri, sources, pipelines, make_frame(20, seed=2))


# start(model name, poll_seconds=..., **ServingSpec fields) -> a started server (the ``serve_model`` fixture).
ServerFactory = Callable[..., LocalServer]


def v1(
    session: requests.Session,
    server: LocalServer,
    body: Any,
    content_type: str = "application/json",
    model: str | None = None,
    **kwargs: Any,
) -> requests.Response:
    url = f"{server.endpoint}/v1/models/{model or server.model_name}:predict"
    if isinstance(body, str | bytes):
        return session.post(url, data=body, headers={"content-type": content_type}, timeout=10, **kwargs)
    return session.post(url, json=body, timeout=10, **kwargs)


def v2(session: requests.Session, server: LocalServer, body: Any) -> requests.Response:
    url = f"{server.endpoint}/v2/models/{server.model_name}/infer"
    if isinstance(body, str | bytes):
        return session.post(url, data=body, headers={"content-type": "application/json"}, timeout=10)
    return session.post(url, data=json.dumps(body), headers={"content-type": "application/json"}, timeout=10)


def instances(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for _, row in rows[FEATURES].iterrows()
    ]


def columnar(rows: pd.DataFrame) -> dict[str, Any]:
    types = {"tenure": "FP64", "charges": "FP64", "calls": "INT64", "plan": "BYTES"}
    return {
        "inputs": [{"name": f, "shape": [len(rows)], "datatype": types[f], "data": rows[f].tolist()} for f in FEATURES]
    }


def status(server: LocalServer) -> dict[str, Any]:
    return dict(requests.get(f"{server.endpoint}/ctpipe/status", timeout=5).json())


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def wait_for_log(log_dir: Path, ids: set[str], timeout: float = 15) -> pd.DataFrame:
    from components.common.inference_log import read_window

    deadline = time.monotonic() + timeout
    while True:
        if log_dir.is_dir():
            frame = read_window(log_dir)
            if ids <= set(frame["request_id"]):
                return frame
        if time.monotonic() > deadline:
            raise AssertionError(f"requests {sorted(ids)[:3]}... not in the inference log at {log_dir}")
        time.sleep(0.1)
