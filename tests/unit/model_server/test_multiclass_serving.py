"""A multiclass version served by a real model server: class and probabilities over V1 and V2, metadata, log."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from components.common import tracking
from components.common.multiclass import probability_columns
from components.common.server_process import LocalServer, start_local_server, stop_local_server
from components.serving_spec import ServingSpec
from components.specs import ModelSpec
from components.train import TrainResult, train
from tests.data import SEGMENTS, multiclass_spec
from tests.helpers import free_port
from tests.serving_helpers import POLL, wait_for_log

NAME = "segments"
LOGISTIC = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 1000})


@dataclass
class Served:
    server: LocalServer
    trained: TrainResult
    rows: pd.DataFrame
    model: Any
    workspace: Path
    tracking_uri: str


@pytest.fixture(scope="module")
def served(multiclass_data: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("multiclass-serving")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    source = str(multiclass_data[0])
    spec = multiclass_spec(source)
    trained = train(source, spec, LOGISTIC, uri, "serving", str(folder / "eval.parquet"))
    client = tracking.registry_client(uri)
    client.create_registered_model(NAME)
    version = client.create_model_version(
        NAME, source=trained.model_uri, run_id=trained.run_id, model_id=trained.model_uri.removeprefix("models:/")
    )
    client.set_registered_model_alias(NAME, "champion", str(version.version))
    workspace = folder / "ws"
    serving = ServingSpec(model_name=NAME, port=free_port(), inference_log_flush_seconds=0.2)
    server = start_local_server(serving, uri, str(workspace), timeout=60, poll_seconds=POLL)
    rows = pd.read_parquet(trained.eval_path).head(7)
    model = tracking.load_sklearn_model(trained.model_uri, uri)
    yield Served(server, trained, rows, model, workspace, uri)
    assert stop_local_server(str(workspace))


def _instances(rows: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for _, row in rows[columns].iterrows()]


def test_v1_answers_the_class_and_every_probability(served: Served) -> None:
    features = served.trained.feature_columns
    response = requests.post(
        f"{served.server.endpoint}/v1/models/{NAME}:predict",
        json={"instances": _instances(served.rows, features)},
        headers={"x-request-id": "mc-v1"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = served.model.predict_proba(served.rows[features])
    assert body["classes"] == SEGMENTS
    np.testing.assert_allclose(body["probabilities"], expected, atol=1e-9)
    assert body["predictions"] == list(served.model.predict(served.rows[features]))


def test_v2_outputs_predict_and_predict_proba_and_the_metadata_names_the_classes(served: Served) -> None:
    features = served.trained.feature_columns
    rows = served.rows
    numeric = set(multiclass_spec("x").numeric_features)
    inputs = [
        {
            "name": f,
            "shape": [len(rows)],
            "datatype": "FP64" if f in numeric else "BYTES",
            "data": rows[f].tolist(),
        }
        for f in features
    ]
    response = requests.post(f"{served.server.endpoint}/v2/models/{NAME}/infer", json={"inputs": inputs}, timeout=10)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert set(outputs) == {"predict", "predict_proba"}
    assert outputs["predict"]["datatype"] == "BYTES" and outputs["predict"]["shape"] == [len(rows)]
    assert outputs["predict"]["data"] == list(served.model.predict(rows[features]))
    proba = outputs["predict_proba"]
    assert proba["shape"] == [len(rows), len(SEGMENTS)]
    assert proba["parameters"]["class_names"] == SEGMENTS
    np.testing.assert_allclose(
        np.asarray(proba["data"]).reshape(proba["shape"]), served.model.predict_proba(rows[features]), atol=1e-9
    )

    metadata = requests.get(f"{served.server.endpoint}/v2/models/{NAME}", timeout=10).json()
    described = {o["name"]: o for o in metadata["outputs"]}
    assert described["predict"] == {"name": "predict", "datatype": "BYTES", "shape": [-1]}
    assert described["predict_proba"]["shape"] == [-1, len(SEGMENTS)]
    assert described["predict_proba"]["parameters"]["class_names"] == SEGMENTS


def test_the_inference_log_holds_the_class_and_one_probability_column_per_class(served: Served) -> None:
    features = served.trained.feature_columns
    requests.post(
        f"{served.server.endpoint}/v1/models/{NAME}:predict",
        json={"instances": _instances(served.rows, features)},
        headers={"x-request-id": "mc-log"},
        timeout=10,
    ).raise_for_status()
    frame = wait_for_log(served.workspace / "inference_log", {"mc-log"})
    logged = frame[frame["request_id"] == "mc-log"].sort_values("row")
    expected = served.model.predict_proba(served.rows[features])
    names = probability_columns(SEGMENTS)
    assert "proba_family_plan" in names and "proba_pro_user" in names
    np.testing.assert_allclose(logged[names].to_numpy(dtype=float), expected, atol=1e-9)
    assert logged["predicted_class"].tolist() == list(served.model.predict(served.rows[features]))
    np.testing.assert_allclose(logged["prediction"].to_numpy(dtype=float), expected.max(axis=1), atol=1e-9)


@pytest.mark.server
def test_infra_validation_blesses_a_multiclass_version_and_picks_its_runtime(served: Served, tmp_path: Path) -> None:
    from components.common.registry import SERVING_RUNTIME_TAG
    from components.infra_validate import infra_validate
    from components.register import register

    registered = register(served.trained.model_uri, served.trained.run_id, "segments-iv", True, served.tracking_uri)
    assert registered.onnx == "compiled"
    spec = multiclass_spec("unused.parquet")
    result = infra_validate(
        registered.version,
        ServingSpec(model_name="segments-iv"),
        served.tracking_uri,
        str(tmp_path),
        served.trained.eval_path,
        spec,
        str(tmp_path / "blessing.json"),
    )
    assert result.blessed, result.reason
    checks = {c.name: c.passed for c in result.checks}
    assert checks["v1_predict"] and checks["v2_infer"] and checks["v2_metadata"], result.checks
    # Whichever runtime parity chose, it is recorded with its reason on the version.
    tags = tracking.registry_client(served.tracking_uri).get_model_version("segments-iv", registered.version).tags
    assert tags[SERVING_RUNTIME_TAG] == result.serving_runtime in ("onnx", "sklearn")
    print(f"\n[multiclass] serving runtime {result.serving_runtime}: {result.onnx_parity}")
