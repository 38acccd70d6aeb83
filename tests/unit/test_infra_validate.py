"""Infra validation in a real sandbox server, and the rollout path that must skip a failing challenger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from components.common.errors import DeployError
from components.common.registry import CANARY_TAG, INFRA_BLESSED_TAG
from components.common.server_process import start_local_server, stop_local_server
from components.deploy import deploy, wait_for_serving
from components.infra_validate import infra_validate
from components.specs import DatasetSpec, ServingSpec
from tests.helpers import free_port
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


@pytest.mark.server
def test_good_version_is_infra_blessed(registry: Registry, eval_set: str, tmp_path: Path) -> None:
    registry.create("infra-good", ["a"], {"challenger": 1})
    spec = ServingSpec(model_name="infra-good")
    result = infra_validate(
        "1", spec, registry.tracking_uri, str(tmp_path), eval_set, DATASET, str(tmp_path / "b.json")
    )
    assert result.blessed, result.reason
    names = {c.name: c.passed for c in result.checks}
    assert names == {
        "ready": True,
        "v1_predict": True,
        "v2_metadata": True,
        "v2_infer": True,
        "bad_request_rejected": True,
        "alive_after_bad_request": True,
    }
    assert json.loads((tmp_path / "b.json").read_text())["blessed"] is True
    assert registry.client().get_model_version("infra-good", "1").tags[INFRA_BLESSED_TAG] == "true"


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
        assert registry.client().get_model_version("infra-bad", "2").tags[INFRA_BLESSED_TAG] == "false"

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
