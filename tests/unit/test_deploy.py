"""Deploy against a real local model server and a dry-run cluster seam."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from components.common.errors import DeployError, ModelNotFound
from components.common.registry import CANARY_TAG, CANARY_VERSION_TAG, set_traffic
from components.common.registry_state import read_state
from components.common.server_process import stop_local_server
from components.deploy import DeployResult, deploy, wait_for_serving
from components.serving_spec import ServingSpec
from tests.helpers import free_port
from tests.serving_helpers import GOOD, Registry, build_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return build_registry(tmp_path_factory.mktemp("deploy-registry"))


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[str]:
    """A workspace whose local server (if deploy started one) is stopped in teardown."""
    yield str(tmp_path)
    stop_local_server(str(tmp_path))


def tags(registry: Registry, name: str) -> dict[str, str]:
    return dict(registry.client().get_registered_model(name).tags)


def predict(result: DeployResult) -> dict[str, Any]:
    url = f"{result.endpoint}/v1/models/{result.model_name}:predict"
    response = requests.post(url, json={"instances": [GOOD]}, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.server
def test_deploy_opens_the_canary_for_the_challenger(registry: Registry, workspace: str) -> None:
    registry.create("dep-canary", ["a", "b"], {"champion": 1, "challenger": 2})
    spec = ServingSpec(model_name="dep-canary", port=free_port(), canary_percent=30)

    with pytest.raises(DeployError, match=r"version 1 of 'dep-canary' is not the challenger .* points to 2"):
        deploy("1", spec, registry.tracking_uri, workspace)

    result = deploy("2", spec, registry.tracking_uri, workspace, timeout=60)
    assert result.mode == "local" and not result.dry_run
    assert (result.champion_version, result.challenger_version, result.canary_percent) == ("1", "2", 30)
    assert "server started" in result.message
    assert tags(registry, "dep-canary")[CANARY_TAG] == "30"
    assert tags(registry, "dep-canary")[CANARY_VERSION_TAG] == "2"
    status = requests.get(f"{result.endpoint}/ctpipe/status", timeout=5).json()
    assert (status["champion_version"], status["challenger_version"], status["canary_percent"]) == ("1", "2", 30)
    assert {predict(result)["model_version"] for _ in range(60)} == {"1", "2"}

    again = deploy("2", spec, registry.tracking_uri, workspace, timeout=30)
    assert "server reused" in again.message

    # Given the registry state, a canary already open on a server that says so is left alone.
    state = read_state("dep-canary", registry.tracking_uri)
    skipped = deploy("2", spec, registry.tracking_uri, workspace, known_state=state)
    assert skipped.skipped.startswith(f"the server at {result.endpoint} (pid ")
    assert "already serves challenger version 2 at 30% (champion version 1 the rest)" in skipped.skipped
    assert (skipped.champion_version, skipped.challenger_version, skipped.canary_percent) == ("1", "2", 30)
    assert read_state("dep-canary", registry.tracking_uri).digest == state.digest
    # Another share is work to do, whatever the state says.
    wider = deploy(
        "2", spec.model_copy(update={"canary_percent": 40}), registry.tracking_uri, workspace, known_state=state
    )
    assert not wider.skipped and tags(registry, "dep-canary")[CANARY_TAG] == "40"

    set_traffic("dep-canary", registry.tracking_uri, 0)
    wait_for_serving(result.endpoint, "dep-canary", "1", "2", timeout=10, canary_percent=0)
    assert {predict(result)["model_version"] for _ in range(30)} == {"1"}


@pytest.mark.server
def test_deploy_without_champion_serves_the_challenger_fully(registry: Registry, workspace: str) -> None:
    registry.create("dep-first", ["b"], {"challenger": 1})
    spec = ServingSpec(model_name="dep-first", port=free_port(), canary_percent=10)
    result = deploy("1", spec, registry.tracking_uri, workspace)
    assert (result.champion_version, result.challenger_version, result.canary_percent) == (None, "1", 100)
    assert "no champion" in result.message and "100%" in result.message
    answers = [predict(result) for _ in range(10)]
    assert {a["model_version"] for a in answers} == {"1"}
    assert {a["model_alias"] for a in answers} == {"challenger"}

    state = read_state("dep-first", registry.tracking_uri)
    assert "100% (no champion)" in deploy("1", spec, registry.tracking_uri, workspace, known_state=state).skipped
    # The registry is unchanged but the server stopped: the deployment is not in place, so it runs.
    stop_local_server(workspace)
    restarted = deploy("1", spec, registry.tracking_uri, workspace, known_state=state)
    assert not restarted.skipped and "server started" in restarted.message
    assert predict(restarted)["model_version"] == "1"


@pytest.mark.server
def test_unloadable_challenger_fails_and_champion_keeps_traffic(registry: Registry, workspace: str) -> None:
    registry.create("dep-broken", ["a", "broken"], {"champion": 1, "challenger": 2})
    spec = ServingSpec(model_name="dep-broken", port=free_port(), canary_percent=50)
    with pytest.raises(DeployError, match="cannot load challenger version 2"):
        deploy("2", spec, registry.tracking_uri, workspace, timeout=30)
    assert tags(registry, "dep-broken")[CANARY_TAG] == "0"
    endpoint = f"http://127.0.0.1:{spec.port}"
    status = requests.get(f"{endpoint}/ctpipe/status", timeout=5).json()
    assert status["champion_version"] == "1" and status["challenger_version"] is None
    for _ in range(20):
        response = requests.post(f"{endpoint}/v1/models/dep-broken:predict", json={"instances": [GOOD]}, timeout=10)
        assert response.status_code == 200 and response.json()["model_version"] == "1"


@pytest.mark.server
def test_wait_for_serving_times_out_naming_what_it_sees(registry: Registry, workspace: str) -> None:
    registry.create("dep-wait", ["a", "b"], {"challenger": 1})
    spec = ServingSpec(model_name="dep-wait", port=free_port())
    result = deploy("1", spec, registry.tracking_uri, workspace)
    with pytest.raises(DeployError, match=r"did not switch .* it serves champion None, challenger 1"):
        wait_for_serving(result.endpoint, "dep-wait", "9", None, timeout=0.5)
    with pytest.raises(DeployError, match="serves model 'dep-wait', not 'other'"):
        wait_for_serving(result.endpoint, "other", None, "1", timeout=5)


def test_cluster_dry_run_writes_the_manifest_and_touches_no_cluster(
    registry: Registry, workspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kserve

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("dry run must not build a KServeClient")

    monkeypatch.setattr(kserve, "KServeClient", forbidden)
    registry.create("dep-cluster", ["a", "b"], {"champion": 1, "challenger": 2})
    before = tags(registry, "dep-cluster")
    spec = ServingSpec(model_name="dep-cluster", canary_percent=25, namespace="ml")
    result = deploy("2", spec, registry.tracking_uri, workspace, profile="cluster", image="img:1", dry_run=True)
    assert result.mode == "cluster" and result.dry_run
    assert (result.champion_version, result.challenger_version, result.canary_percent) == ("1", "2", 25)
    assert result.endpoint == "http://dep-cluster-predictor.ml.svc.cluster.local"
    assert "tracking URI is local" in result.message
    manifest = yaml.safe_load(Path(result.manifest_path or "").read_text())
    assert manifest["metadata"]["name"] == "dep-cluster"
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert manifest["spec"]["predictor"]["containers"][0]["image"] == "img:1"
    assert tags(registry, "dep-cluster") == before, "a dry run changes no registry tags"

    standard = spec.model_copy(update={"deployment_mode": "Standard"})
    result = deploy("2", standard, registry.tracking_uri, workspace, profile="cluster", dry_run=True)
    manifest = yaml.safe_load(Path(result.manifest_path or "").read_text())
    assert "canaryTrafficPercent" not in manifest["spec"]["predictor"]
    assert manifest["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    # spec.predictor follows the champion; the spec.canary entry follows the challenger with its share.
    assert manifest["spec"]["predictor"]["containers"][0]["args"][-2:] == ["--alias", "champion"]
    (canary,) = manifest["spec"]["canary"]
    assert canary["trafficPercent"] == 25
    assert canary["predictor"]["containers"][0]["args"][-2:] == ["--alias", "challenger"]


def test_cluster_deploy_refuses_a_local_tracking_uri(registry: Registry, workspace: str) -> None:
    registry.create("dep-local-uri", ["a"], {"champion": 1})
    spec = ServingSpec(model_name="dep-local-uri")
    with pytest.raises(DeployError, match="pods cannot read it"):
        deploy("1", spec, registry.tracking_uri, workspace, profile="cluster")


def test_set_traffic_checks_its_input(registry: Registry) -> None:
    with pytest.raises(DeployError, match="between 0 and 100"):
        set_traffic("anything", registry.tracking_uri, 101)
    with pytest.raises(ModelNotFound, match="'no-such-model' does not exist"):
        set_traffic("no-such-model", registry.tracking_uri, 10)
    registry.create("dep-traffic", ["a"], {"champion": 1})
    set_traffic("dep-traffic", registry.tracking_uri, 40)
    assert tags(registry, "dep-traffic")[CANARY_TAG] == "40"
    assert CANARY_VERSION_TAG not in tags(registry, "dep-traffic")


def test_embedded_dry_run_changes_nothing(registry: Registry, workspace: str) -> None:
    registry.create("dep-dry", ["a", "b"], {"champion": 1, "challenger": 2})
    spec = ServingSpec(model_name="dep-dry", port=free_port())
    result = deploy("2", spec, registry.tracking_uri, workspace, dry_run=True)
    assert result.dry_run and result.canary_percent == spec.canary_percent
    assert CANARY_TAG not in tags(registry, "dep-dry")
    assert not (Path(workspace) / "serving" / "server.pid").exists()
