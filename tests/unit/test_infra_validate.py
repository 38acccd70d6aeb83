"""Infra validation in a real sandbox server, and the rollout path that must skip a failing challenger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from components.common.errors import DeployError
from components.common.registry import (
    CANARY_TAG,
    INFRA_BLESSED_TAG,
    ONNX_PARITY_TAG,
    ONNX_TAG,
    SERVING_RUNTIME_TAG,
)
from components.common.registry_state import read_state
from components.common.server_process import start_local_server, stop_local_server
from components.deploy import deploy, wait_for_serving
from components.infra_validate import already_infra_blessed, infra_validate
from components.register import register
from components.serving_spec import ServingSpec
from components.specs import DatasetSpec
from tests.helpers import float32_sensitive_model, free_port
from tests.serving_helpers import FEATURES, GOOD, POLL, Registry, build_registry

DATASET = DatasetSpec(
    source="unused.parquet",
    entity_column="customer_id",
    timestamp_column="ts",
    label_column="churned",
    numeric_features=["tenure", "charges", "calls"],
    categorical_features=["plan"],
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return build_registry(tmp_path_factory.mktemp("infra-registry"))


@pytest.fixture
def eval_set(registry: Registry, tmp_path: Path) -> str:
    path = tmp_path / "eval.parquet"
    registry.rows[FEATURES].to_parquet(path)
    return str(path)


def _register(registry: Registry, name: str, key: str) -> str:
    """Register a logged model as ``register`` does in the pipeline: compiled to ONNX, blessed, challenger."""
    uri, run_id, _ = registry.sources[key]
    result = register(uri, run_id, name, True, registry.tracking_uri)
    assert result.onnx == "compiled"
    return result.version


@pytest.mark.server
def test_good_version_is_infra_blessed(registry: Registry, eval_set: str, tmp_path: Path) -> None:
    version = _register(registry, "infra-good", "a")
    spec = ServingSpec(model_name="infra-good")
    result = infra_validate(
        version, spec, registry.tracking_uri, str(tmp_path), eval_set, DATASET, str(tmp_path / "b.json")
    )
    assert result.blessed, result.reason
    names = {c.name: c.passed for c in result.checks}
    assert names == {
        "onnx_parity": True,
        "ready": True,
        "v1_predict": True,
        "v2_metadata": True,
        "v2_infer": True,
        "bad_request_rejected": True,
        "alive_after_bad_request": True,
    }
    # ONNX answers like sklearn on every evaluation row, so it serves; the sandbox already saw that.
    assert result.serving_runtime == "onnx"
    assert result.onnx_parity.startswith("passed: max |Δ probability|")
    assert result.onnx_parity.endswith(f"over {len(registry.rows)} rows, labels equal")
    blessing = json.loads((tmp_path / "b.json").read_text())
    assert blessing["blessed"] is True and blessing["serving_runtime"] == "onnx"
    tags = registry.client().get_model_version("infra-good", version).tags
    assert tags[INFRA_BLESSED_TAG] == "true"
    assert (tags[SERVING_RUNTIME_TAG], tags[ONNX_PARITY_TAG]) == ("onnx", result.onnx_parity)

    # Run again on the registry as it is now: already blessed, so no sandbox and no registry write.
    state = read_state("infra-good", registry.tracking_uri)
    again_workspace = tmp_path / "again"
    again = infra_validate(
        version,
        spec,
        registry.tracking_uri,
        str(again_workspace),
        eval_set,
        DATASET,
        str(tmp_path / "again.json"),
        known_state=state,
    )
    assert (
        again.blessed
        and again.skipped
        == f"version {version} is already infra-blessed (ctpipe.infra_blessed=true, serving runtime onnx)"
    )
    assert (again.serving_runtime, again.onnx_parity) == ("onnx", result.onnx_parity)
    assert [c.name for c in again.checks] == ["already_infra_blessed"]
    assert not (again_workspace / "infra_validation").exists(), "no sandbox was started"
    assert json.loads((tmp_path / "again.json").read_text())["skipped"] == again.skipped
    assert read_state("infra-good", registry.tracking_uri).digest == state.digest


@pytest.mark.server
def test_a_model_without_onnx_parity_is_served_by_sklearn_and_still_blessed(registry: Registry, tmp_path: Path) -> None:
    """float32 inputs send every row down one branch of this tree; the sklearn model serves it instead."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from components.common import tracking

    model, frame, _ = float32_sensitive_model()
    tracking.ensure_experiment("serving-tests", registry.tracking_uri)
    with mlflow.start_run() as run:
        info = tracking.log_sklearn_model(
            model,
            registry.tracking_uri,
            signature=infer_signature(frame, model.predict_proba(frame)),
            input_example=frame.head(3),
        )
    version = register(info.model_uri, run.info.run_id, "infra-float32", True, registry.tracking_uri).version
    assert registry.client().get_model_version("infra-float32", version).tags[ONNX_TAG] == "compiled"
    eval_set = tmp_path / "eval.parquet"
    frame.to_parquet(eval_set)
    dataset = DATASET.model_copy(update={"numeric_features": ["x"], "categorical_features": []})
    result = infra_validate(
        version,
        ServingSpec(model_name="infra-float32"),
        registry.tracking_uri,
        str(tmp_path),
        str(eval_set),
        dataset,
        str(tmp_path / "b.json"),
    )
    assert result.blessed, result.reason
    assert result.serving_runtime == "sklearn"
    assert result.onnx_parity == (
        "failed: max |Δ probability| 1.0e+00 over 200 rows, 100 of 200 labels differ (tolerance 1e-05)"
    )
    parity = next(c for c in result.checks if c.name == "onnx_parity")
    assert parity.passed and "serving runtime sklearn" in parity.detail and result.onnx_parity in parity.detail
    tags = registry.client().get_model_version("infra-float32", version).tags
    assert tags[INFRA_BLESSED_TAG] == "true"
    assert (tags[SERVING_RUNTIME_TAG], tags[ONNX_PARITY_TAG]) == ("sklearn", result.onnx_parity)


@pytest.mark.server
def test_corrupted_challenger_never_gets_traffic(registry: Registry, eval_set: str, tmp_path: Path) -> None:
    """A challenger whose pickle is garbage fails infra validation; deploy refuses it; the champion serves on."""
    registry.create("infra-bad", ["a", "broken"], {"champion": 1, "challenger": 2})
    workspace = str(tmp_path / "ws")
    spec = ServingSpec(model_name="infra-bad", port=free_port(), canary_percent=50)
    server = start_local_server(spec, registry.tracking_uri, workspace, poll_seconds=POLL)
    try:
        before = registry.client().get_registered_model("infra-bad")
        result = infra_validate(
            "2", spec, registry.tracking_uri, workspace, eval_set, DATASET, str(tmp_path / "blessing.json")
        )
        assert not result.blessed
        assert "cannot load version 2" in result.reason or "did not become ready" in result.reason, result.reason
        # Created without register, it was never compiled: the reason says so (and sklearn would serve it).
        assert result.serving_runtime == "sklearn"
        assert result.onnx_parity == "no ONNX: the version has no ctpipe.onnx tag (registered without ONNX compilation)"
        assert registry.client().get_model_version("infra-bad", "2").tags[INFRA_BLESSED_TAG] == "false"
        # A failed validation is never skipped: the next run tries the sandbox again.
        assert already_infra_blessed(read_state("infra-bad", registry.tracking_uri), "2") is None

        with pytest.raises(DeployError, match="failed infra validation"):
            deploy("2", spec, registry.tracking_uri, workspace)
        after = registry.client().get_registered_model("infra-bad")
        assert dict(after.aliases) == dict(before.aliases), "no alias moved"
        assert CANARY_TAG not in after.tags, "no traffic was opened"
        wait_for_serving(server.endpoint, "infra-bad", "1", None, timeout=10)
        session = requests.Session()
        url = f"{server.endpoint}/v1/models/infra-bad:predict"
        for _ in range(30):
            response = session.post(url, json={"instances": [GOOD]}, timeout=10)
            assert response.status_code == 200 and response.json()["model_version"] == "1"
    finally:
        stop_local_server(workspace)


def test_parity_not_yet_checked_on_a_compiled_model_means_validate_again() -> None:
    from components.common.registry_state import RegistryState, VersionState

    tags = {
        INFRA_BLESSED_TAG: "true",
        SERVING_RUNTIME_TAG: "sklearn",
        ONNX_TAG: "unsupported: x",
        ONNX_PARITY_TAG: "no ONNX: x",
    }
    version = VersionState(version="3", status="READY", run_id="r", model_id="m-1", first_of_run=True, tags=tags)
    state = RegistryState(model_name="m", exists=True, digest="d", versions={"3": version})
    assert already_infra_blessed(state, "3") is not None
    version.tags[ONNX_TAG] = "compiled"  # compiled after the validation that found no ONNX model
    assert already_infra_blessed(state, "3") is None
    assert already_infra_blessed(state, "4") is None, "a version the state does not detail is validated"
