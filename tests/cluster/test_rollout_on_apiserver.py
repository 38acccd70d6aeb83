"""Deploy, promote, rollback and canary close through the KServe seam, against a real kube-apiserver.

The InferenceService is created by "the platform team" first (another field manager) with fields
ctpipe does not own: a service account, an env var and an ``envFrom`` entry inside the predictor
container, resources, replicas, an annotation. Every rollout step moves registry aliases (a real
MLflow registry) and writes the InferenceService back through :class:`KServeSeam`; the server's
answers (resourceVersion preconditions, 409 Conflicts, managedFields, the status subresource)
are the real ones. No controller runs, so the test writes ``.status`` as KServe's would.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from components.common import registry
from components.common.errors import DeployError
from components.common.kserve.cluster import KServeSeam
from components.common.kserve.rollout import OWNED_ANNOTATION
from components.common.kserve.traffic import ClusterTarget, render_for_state, sync_inference_service, traffic_state
from components.common.registry import BLESSED_TAG
from components.serving_spec import ServingSpec
from tests.helpers import followed_alias, kserve_container
from tests.servers.kubernetes import KubeApiServer
from tests.serving_helpers import Registry, build_registry

pytestmark = [pytest.mark.cluster, pytest.mark.server]

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
IMAGE = "registry.example/ctpipe/serving:1.0"
FOREIGN_ENV = {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel.observability:4317"}
INJECTED_ENV = {"name": "INJECTED_BY_WEBHOOK", "value": "yes"}
FOREIGN_ENV_FROM = {"configMapRef": {"name": "platform-defaults"}}


class BlessedRegistry(Registry):
    """Every version blessed, as evaluation leaves the versions it registers: promote refuses others."""

    def add_version(self, name: str, key: str) -> str:
        version = super().add_version(name, key)
        self.client().set_model_version_tag(name, version, BLESSED_TAG, "true")
        return version


@pytest.fixture(scope="module")
def model_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    built = build_registry(tmp_path_factory.mktemp("rollout-registry"))
    return BlessedRegistry(built.tracking_uri, built.sources, built.pipelines, built.rows)


@pytest.fixture(scope="module")
def custom(kube_apiserver: KubeApiServer, kube_crds: list[str]) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(kube_apiserver.api_client())


def _namespace(server: KubeApiServer, name: str) -> str:
    from kubernetes import client

    client.CoreV1Api(server.api_client()).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture(scope="module")
def kubeconfig(kube_apiserver: KubeApiServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kubeconfig for the test server: what ``KServeClient`` (the seam's client) reads, as on a laptop."""
    return str(kube_apiserver.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config"))


def _seam(kubeconfig: str, namespace: str) -> KServeSeam:
    from kserve import KServeClient

    return KServeSeam(namespace=namespace, client_factory=lambda: KServeClient(config_file=kubeconfig))


def _read(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))


def _platform_team_creates(custom: Any, serving: ServingSpec, tracking_uri: str) -> None:
    """The overlay's object, created by another field manager before ctpipe ever writes it."""
    state = traffic_state(serving, {"champion": "1"})
    isvc = render_for_state(serving, state, tracking_uri, ClusterTarget(image=IMAGE))
    isvc["metadata"]["annotations"]["team.example/owner"] = "ml-platform"
    predictor = isvc["spec"]["predictor"]
    predictor["serviceAccountName"] = "ctpipe-serving"
    predictor["minReplicas"] = 2
    container = predictor["containers"][0]
    container["env"].append(FOREIGN_ENV)
    container["envFrom"] = [FOREIGN_ENV_FROM]
    container["resources"] = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    custom.create_namespaced_custom_object(
        GROUP, VERSION, serving.namespace, PLURAL, isvc, field_manager="platform-team"
    )


def _controller_reports(custom: Any, namespace: str, name: str, traffic: list[dict[str, Any]]) -> None:
    """What KServe's controller writes: Ready, the URL and the traffic split, through the status subresource."""
    current = _read(custom, namespace, name)
    current["status"] = {
        "url": f"http://{name}.{namespace}.example.com",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-07T00:00:00Z"}],
        "components": {"predictor": {"traffic": traffic}},
    }
    custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, current, field_manager="kserve-controller"
    )


def _assert_foreign_fields_kept(isvc: dict[str, Any], canary: bool = False) -> None:
    assert isvc["metadata"]["annotations"]["team.example/owner"] == "ml-platform"
    predictor = isvc["spec"]["canary"][0]["predictor"] if canary else isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "ctpipe-serving"
    assert predictor["minReplicas"] == 2
    container = kserve_container(isvc, canary)
    assert FOREIGN_ENV in container["env"]
    assert FOREIGN_ENV_FROM in container["envFrom"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"}


@pytest.mark.parametrize("mode", ["Serverless", "Standard"])
def test_rollout_moves_traffic_and_keeps_foreign_fields(
    kubeconfig: str, kube_apiserver: KubeApiServer, custom: Any, model_registry: Registry, mode: str
) -> None:
    name = f"churn-{mode.lower()}"
    namespace = _namespace(kube_apiserver, f"rollout-{mode.lower()}")
    serving = ServingSpec(model_name=name, namespace=namespace, deployment_mode=mode, canary_percent=20)
    tracking_uri = model_registry.tracking_uri
    model_registry.create(name, ["a", "b"], {"champion": 1})
    client = model_registry.client()
    target = ClusterTarget(image=IMAGE)
    seam = _seam(kubeconfig, namespace)
    _platform_team_creates(custom, serving, tracking_uri)
    _controller_reports(
        custom, namespace, name, [{"revisionName": f"{name}-1", "percent": 100, "latestRevision": True}]
    )

    # Deploy v2 as a canary: 20% moves to the challenger target; nothing of the platform team's is lost.
    client.set_registered_model_alias(name, "challenger", "2")
    sync_inference_service(serving, tracking_uri, target, seam)
    canary = _read(custom, namespace, name)
    _assert_foreign_fields_kept(canary)
    if mode == "Serverless":
        assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 20
        assert followed_alias(kserve_container(canary)) == "challenger"
    else:
        assert canary["spec"]["canary"][0]["trafficPercent"] == 20
        assert followed_alias(kserve_container(canary)) == "champion"
        assert followed_alias(kserve_container(canary, canary=True)) == "challenger"
        _assert_foreign_fields_kept(canary, canary=True)
    assert canary["status"]["url"] == f"http://{name}.{namespace}.example.com", "the controller's status is kept"

    # A webhook adds an env var inside the predictor container (it now "owns" the whole atomic list).
    injected = _read(custom, namespace, name)
    injected["spec"]["predictor"]["containers"][0]["env"].append(INJECTED_ENV)
    custom.replace_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, injected, field_manager="env-injector"
    )

    # Promote: the champion alias moves, the canary's traffic goes with it, both foreign env vars stay.
    registry.promote(name, tracking_uri)
    sync_inference_service(serving, tracking_uri, target, seam)
    promoted = _read(custom, namespace, name)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"] and "canary" not in promoted["spec"]
    assert followed_alias(kserve_container(promoted)) == "champion"
    _assert_foreign_fields_kept(promoted)
    assert INJECTED_ENV in kserve_container(promoted)["env"]
    _controller_reports(
        custom, namespace, name, [{"revisionName": f"{name}-3", "percent": 100, "latestRevision": True}]
    )

    # Rollback: one write; the champion target follows the alias back to v1.
    before = _read(custom, namespace, name)
    registry.rollback(name, tracking_uri)
    sync_inference_service(serving, tracking_uri, target, seam)
    rolled_back = _read(custom, namespace, name)
    assert rolled_back["spec"] == before["spec"]
    assert rolled_back["metadata"]["annotations"]["ctpipe.io/model-version"] == "1"
    assert INJECTED_ENV in kserve_container(rolled_back)["env"]
    assert int(rolled_back["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])

    # A canary closed by canary analysis: the challenger alias goes, and so does its traffic.
    client.set_registered_model_alias(name, "challenger", "2")
    sync_inference_service(serving, tracking_uri, target, seam)
    reopened = _read(custom, namespace, name)["spec"]
    assert reopened.get("canary") or reopened["predictor"].get("canaryTrafficPercent") == 20
    client.delete_registered_model_alias(name, "challenger")
    sync_inference_service(serving, tracking_uri, target, seam)
    closed = _read(custom, namespace, name)
    assert "canaryTrafficPercent" not in closed["spec"]["predictor"] and "canary" not in closed["spec"]
    _assert_foreign_fields_kept(closed)

    # Field managers as a real server records them. The webhook owned only the atomic containers list,
    # which ctpipe's writes took over: its entry may be gone, but its env var is still there.
    managers = {entry["manager"] for entry in closed["metadata"]["managedFields"]}
    assert {"ctpipe", "platform-team", "kserve-controller"} <= managers
    assert INJECTED_ENV in kserve_container(closed)["env"]
    assert len([c for c in seam.calls if c.verb == "apply"]) == 5


def test_a_changed_owned_field_stops_the_write_and_force_overwrites_it(
    kubeconfig: str, kube_apiserver: KubeApiServer, custom: Any, model_registry: Registry
) -> None:
    name = "churn-conflict"
    namespace = _namespace(kube_apiserver, "rollout-conflict")
    serving = ServingSpec(model_name=name, namespace=namespace, canary_percent=20)
    model_registry.create(name, ["a", "b"], {"champion": 1, "challenger": 2})
    seam = _seam(kubeconfig, namespace)
    target = ClusterTarget(image=IMAGE)
    sync_inference_service(serving, model_registry.tracking_uri, target, seam)

    # Someone sends the canary all traffic by hand.
    edited = _read(custom, namespace, name)
    edited["spec"]["predictor"]["canaryTrafficPercent"] = 100
    custom.replace_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, edited, field_manager="kubectl-edit"
    )

    with pytest.raises(DeployError) as raised:
        sync_inference_service(serving, model_registry.tracking_uri, target, seam)
    message = str(raised.value)
    assert "spec.predictor.canaryTrafficPercent was changed by field manager 'kubectl-edit'" in message
    assert "ctpipe wrote 20, found 100" in message
    assert _read(custom, namespace, name)["spec"]["predictor"]["canaryTrafficPercent"] == 100, "nothing written"

    sync_inference_service(serving, model_registry.tracking_uri, target.model_copy(update={"force": True}), seam)
    assert _read(custom, namespace, name)["spec"]["predictor"]["canaryTrafficPercent"] == 20


def test_a_write_in_between_is_a_409_and_both_changes_survive(
    kubeconfig: str, kube_apiserver: KubeApiServer, custom: Any, model_registry: Registry
) -> None:
    """Another writer changes the object between ctpipe's read and its write: the real 409, then a new read."""
    from kserve import KServeClient

    name = "churn-race"
    namespace = _namespace(kube_apiserver, "rollout-race")
    serving = ServingSpec(model_name=name, namespace=namespace, canary_percent=20)
    model_registry.create(name, ["a", "b"], {"champion": 1})
    target = ClusterTarget(image=IMAGE)
    sync_inference_service(serving, model_registry.tracking_uri, target, _seam(kubeconfig, namespace))

    raced = {"writes": 0}

    class RacingClient(KServeClient):  # type: ignore[misc]
        """The real client; right after ctpipe's first read, another team writes the object."""

        def __init__(self) -> None:
            super().__init__(config_file=kubeconfig)
            api = self.api_instance
            read = api.get_namespaced_custom_object

            def read_then_someone_writes(*args: Any, **kwargs: Any) -> Any:
                obj = read(*args, **kwargs)
                if raced["writes"] == 0:
                    raced["writes"] += 1
                    theirs = copy.deepcopy(obj)
                    theirs["metadata"]["labels"]["team.example/cost-center"] = "ml-42"
                    custom.replace_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name, theirs, field_manager="cost-labeller"
                    )
                return obj

            api.get_namespaced_custom_object = read_then_someone_writes

    model_registry.client().set_registered_model_alias(name, "challenger", "2")
    seam = KServeSeam(namespace=namespace, client_factory=RacingClient)
    sync_inference_service(serving, model_registry.tracking_uri, target, seam)

    final = _read(custom, namespace, name)
    assert raced["writes"] == 1
    assert final["metadata"]["labels"]["team.example/cost-center"] == "ml-42", "their write survived"
    assert final["spec"]["predictor"]["canaryTrafficPercent"] == 20, "ours landed on the second try"
    assert OWNED_ANNOTATION in final["metadata"]["annotations"]


def test_deploy_patches_the_object_in_the_configured_namespace_and_never_creates_a_second(
    kube_apiserver: KubeApiServer,
    custom: Any,
    model_registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``components.deploy.deploy`` (cluster profile) through its own KServeClient (KUBECONFIG), MLflow over HTTP."""
    from components.deploy import deploy
    from tests.servers import MlflowServer

    name = "churn-deploy"
    namespace = _namespace(kube_apiserver, "rollout-deploy")
    other = _namespace(kube_apiserver, "rollout-deploy-other")
    model_registry.create(name, ["a", "b"], {"champion": 1, "challenger": 2})
    serving = ServingSpec(model_name=name, namespace=namespace, canary_percent=10)
    _platform_team_creates(custom, serving, model_registry.tracking_uri)
    # KUBECONFIG as a laptop would set it; the kubernetes package reads the variable once, at import.
    config = str(kube_apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace=other))
    monkeypatch.setenv("KUBECONFIG", config)
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", config)
    server = MlflowServer(model_registry.tracking_uri, tmp_path / "mlflow")
    try:
        result = deploy("2", serving, server.uri, str(tmp_path / "ws"), profile="cluster", image=IMAGE)
    finally:
        server.stop()

    assert (result.champion_version, result.challenger_version, result.canary_percent) == ("1", "2", 10)
    (isvc,) = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    assert not custom.list_namespaced_custom_object(GROUP, VERSION, other, PLURAL)["items"]
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    _assert_foreign_fields_kept(isvc)
