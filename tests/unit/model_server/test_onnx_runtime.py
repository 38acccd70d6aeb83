"""The ONNX fast path in a real server: a version is scored by onnxruntime only once infra validation proved parity.

Each version goes the way the pipeline takes it: ``register`` compiles it, ``infra_validate``
compares ONNX with scikit-learn on the evaluation rows and records the runtime, and the server
(which may have loaded the version before that verdict) switches to ONNX without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from components.common.registry import SERVING_RUNTIME_TAG
from components.infra_validate import infra_validate
from components.register import register
from components.serving_spec import ServingSpec
from components.specs import DatasetSpec
from tests.serving_helpers import (
    FEATURES,
    POLL,
    Registry,
    ServerFactory,
    columnar,
    instances,
    status,
    v1,
    v2,
    wait_until,
)

pytestmark = pytest.mark.server

DATASET = DatasetSpec(
    source="unused.parquet",
    entity_column="customer_id",
    timestamp_column="ts",
    label_column="target",
    numeric_features=["tenure", "charges", "calls"],
    categorical_features=["plan"],
)


def _validate(registry: Registry, name: str, version: str, tmp_path: Path) -> str:
    eval_set = tmp_path / f"{name}-eval.parquet"
    registry.rows[FEATURES].to_parquet(eval_set)
    result = infra_validate(
        version,
        ServingSpec(model_name=name),
        registry.tracking_uri,
        str(tmp_path),
        str(eval_set),
        DATASET,
        str(tmp_path / f"{name}-blessing.json"),
    )
    assert result.blessed, result.reason
    return result.serving_runtime


def _regressor(registry: Registry) -> tuple[str, str, Any]:
    """A gradient-boosted regressor on the serving test features, logged like train logs a model."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from components.common import tracking
    from tests.serving_helpers import make_frame

    train = make_frame(400, seed=5)
    target = 3.0 * train.tenure - 0.5 * train.charges + 10.0 * (train.plan == "premium") + train.calls**2
    model = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", "passthrough", ["tenure", "charges", "calls"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["plan"]),
                    ]
                ),
            ),
            ("reg", HistGradientBoostingRegressor(max_iter=60, random_state=0)),
        ]
    ).fit(train[FEATURES], target)
    tracking.ensure_experiment("serving-tests", registry.tracking_uri)
    with mlflow.start_run() as run:
        info = tracking.log_sklearn_model(
            model,
            registry.tracking_uri,
            signature=infer_signature(train[FEATURES], model.predict(train[FEATURES])),
            input_example=train[FEATURES].head(3),
        )
    return info.model_uri, run.info.run_id, model


def _answers(server: Any, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
    session = requests.Session()
    first = v1(session, server, {"instances": instances(rows)})
    second = v2(session, server, columnar(rows))
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    output = second.json()["outputs"][0]
    return np.asarray(first.json()["predictions"]), np.asarray(output["data"]), output["name"]


def test_a_binary_classifier_switches_to_onnx_once_infra_validation_proves_parity(
    serve_model: ServerFactory, registry: Registry, tmp_path: Path
) -> None:
    uri, run_id, _ = registry.sources["a"]
    version = register(uri, run_id, "onnx-binary", True, registry.tracking_uri).version
    registry.client().set_registered_model_alias("onnx-binary", "champion", version)
    server = serve_model("onnx-binary")
    # Loaded before infra validation: scikit-learn scores it, and the status says why.
    before = status(server)["runtimes"][version]
    assert before["runtime"] == "sklearn" and "not checked" in before["reason"]
    rows = registry.rows
    sklearn_v1, _, _ = _answers(server, rows)

    assert _validate(registry, "onnx-binary", version, tmp_path) == "onnx"
    wait_until(lambda: status(server)["runtimes"][version]["runtime"] == "onnx", 10 * POLL + 10, "the ONNX runtime")
    answer_v1, answer_v2, output = _answers(server, rows)
    expected = registry.expected("a", rows)
    assert output == "score"
    np.testing.assert_allclose(answer_v1, expected, atol=1e-5)
    np.testing.assert_allclose(answer_v2, expected, atol=1e-5)
    np.testing.assert_allclose(sklearn_v1, expected, rtol=1e-12)
    assert status(server)["runtimes"][version]["reason"].startswith("passed: ")


def test_a_regressor_is_served_through_onnx(serve_model: ServerFactory, registry: Registry, tmp_path: Path) -> None:
    uri, run_id, model = _regressor(registry)
    version = register(uri, run_id, "onnx-regressor", True, registry.tracking_uri).version
    assert _validate(registry, "onnx-regressor", version, tmp_path) == "onnx"
    assert registry.client().get_model_version("onnx-regressor", version).tags[SERVING_RUNTIME_TAG] == "onnx"
    registry.client().set_registered_model_alias("onnx-regressor", "champion", version)
    server = serve_model("onnx-regressor")
    assert status(server)["runtimes"][version]["runtime"] == "onnx"
    answer_v1, answer_v2, output = _answers(server, registry.rows)
    expected = model.predict(registry.rows[FEATURES])
    assert output == "prediction"
    tolerance = 1e-5 * np.maximum(1.0, np.abs(expected))
    assert (np.abs(answer_v1 - expected) <= tolerance).all() and (np.abs(answer_v2 - expected) <= tolerance).all()
