"""ctpipe's manifests and InferenceServices on a real ``kube-apiserver`` (etcd under it), with the CRDs installed.

What an offline schema check cannot show, a real API server does: that every object of the overlays is
admitted (RBAC, NetworkPolicy, CronJob, ConfigMap, the batch scoring ScheduledSparkApplication, ...) into
existing namespaces, that the Spark job is checked by its CRD (unknown fields and wrong types refused), that an
InferenceService rendered by :func:`components.common.kserve.manifests.render_inference_service` keeps
every field it sends (the CRD's structural schema prunes what it does not know), that status is written
only through the status subresource (no controller runs here, so the test writes it the way KServe's
controller would), that a stale ``resourceVersion`` gets 409 Conflict, and that ``managedFields``
records who owns what. Skipped only with ``CTPIPE_K8S=off``; the server is built on first use
(``tests/servers/kubernetes.py``).
"""

from __future__ import annotations

import copy
import datetime
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.common.kserve.manifests import render_inference_service
from components.serving_spec import ServingSpec
from tests.servers import ensure_debian_package
from tests.servers.kubernetes import FIELD_MANAGER, KubeApiServer, server_side_apply

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.parent.name for p in (REPO_ROOT / "manifests" / "overlays").glob("*/kustomization.yaml"))
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
ISVC_NAMESPACE = "ctpipe-api"
CTPIPE = "ctpipe"  # the field manager of ctpipe's own writes
KSERVE = "kserve-controller"  # plays KServe's controller, which alone writes .status
OTHER = "other-team"  # someone else editing the same InferenceService
EXPECTED_CRDS = {
    "inferenceservices.serving.kserve.io",
    "servingruntimes.serving.kserve.io",
    "clusterservingruntimes.serving.kserve.io",
    "sparkapplications.sparkoperator.k8s.io",
    "scheduledsparkapplications.sparkoperator.k8s.io",
}


@pytest.fixture(scope="module")
def server(kube_apiserver: KubeApiServer, kube_crds: list[str]) -> KubeApiServer:
    """The session's API server with the CRDs installed, and a namespace for this module's InferenceServices."""
    kube_apiserver.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISVC_NAMESPACE}})
    return kube_apiserver


@pytest.fixture(scope="module")
def custom(server: KubeApiServer) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(server.api_client())


@pytest.fixture(scope="module")
def kubectl() -> str:
    return shutil.which("kubectl") or ensure_debian_package("kubectl", "kubernetes-client")


def api_error(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The ``ApiException`` that ``call`` raises (fails the test if it succeeds)."""
    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException) as info:
        call(*args, **kwargs)
    return info.value


def contains(stored: Any, sent: Any) -> bool:
    """Whether everything in ``sent`` is in ``stored`` (the server may add defaults, never drop or change)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(k in stored and contains(stored[k], v) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(stored, list) and len(stored) == len(sent) and all(map(contains, stored, sent))
    return bool(stored == sent)


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """``(manager, subresource) -> fieldsV1`` from an object's ``managedFields``."""
    return {(m["manager"], m.get("subresource", "")): m.get("fieldsV1", {}) for m in obj["metadata"]["managedFields"]}


def owns(fields: dict[str, Any], *path: str) -> bool:
    """Whether a ``fieldsV1`` set names ``path`` (``f:spec``, ``f:predictor``, ...)."""
    node: Any = fields
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def render(name: str, mode: str, canary: int | None = 20) -> dict[str, Any]:
    serving = ServingSpec(
        model_name=name,
        namespace=ISVC_NAMESPACE,
        deployment_mode=mode,  # type: ignore[arg-type]
        credentials_secret="ctpipe-object-store",
        inference_log_dir="s3://ctpipe-data/inference_log",
    )
    return render_inference_service(
        serving,
        "ctpipe/serving:0.1.0",
        "4",
        "http://mlflow.ctpipe-system.svc:5000",
        canary,
        stable_version="3" if canary is not None else None,
    )


def kserve_status(isvc: dict[str, Any]) -> dict[str, Any]:
    """The status KServe's controller writes once the predictor is ready, with the traffic split of the spec."""
    name, namespace = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    spec = isvc["spec"]
    canary = spec["predictor"].get("canaryTrafficPercent")
    if canary is None and spec.get("canary"):
        canary = spec["canary"][0]["trafficPercent"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    latest, previous = f"{name}-predictor-00002", f"{name}-predictor-00001"
    traffic = [{"revisionName": latest, "latestRevision": True, "percent": 100 if canary is None else canary}]
    if canary is not None:
        traffic[0]["tag"] = "latest"
        traffic.append({"revisionName": previous, "latestRevision": False, "percent": 100 - canary, "tag": "prev"})
    return {
        "observedGeneration": isvc["metadata"]["generation"],
        "deploymentMode": isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"],
        "url": f"http://{name}.{namespace}.example.com",
        "address": {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
        "conditions": [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("IngressReady", "PredictorReady", "Ready")
        ],
        "components": {
            "predictor": {
                "url": f"http://{name}-predictor.{namespace}.example.com",
                "latestCreatedRevision": latest,
                "latestReadyRevision": latest,
                "previousRolledoutRevision": previous,
                "traffic": traffic,
            }
        },
    }


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl, "kustomize", str(REPO_ROOT / "manifests" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def test_crds_are_installed_server_side_and_established(
    server: KubeApiServer, kube_crds: list[str], kubectl: str, tmp_path: Path
) -> None:
    assert set(kube_crds) >= EXPECTED_CRDS
    crd = server.request(
        "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/inferenceservices.serving.kserve.io"
    )
    # Client-side apply would have to store the whole CRD in an annotation, which is limited to 256 KiB.
    assert len(json.dumps(crd["spec"])) > 256 * 1024
    assert "kubectl.kubernetes.io/last-applied-configuration" not in (crd["metadata"].get("annotations") or {})
    assert any(m["manager"] == FIELD_MANAGER and m["operation"] == "Apply" for m in crd["metadata"]["managedFields"])
    # The kubeconfig helper works for kubectl, over TLS with the generated CA and the static token.
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    result = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "get", "crd", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert {line.split("/", 1)[1] for line in result.stdout.split()} >= EXPECTED_CRDS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_the_overlay_is_accepted(
    server: KubeApiServer, rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    from kubernetes import client

    docs = rendered[overlay]
    manager = f"ctpipe-overlay-{overlay}"
    for namespace in sorted({d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")}):
        server.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, field_manager=manager)
    stored = [server_side_apply(server.api_client(), doc, manager, force=False) for doc in docs]
    for doc, obj in zip(docs, stored, strict=True):
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        assert obj["metadata"]["uid"], where
        assert contains(
            obj.get("spec", obj.get("data", obj.get("rules"))), doc.get("spec", doc.get("data", doc.get("rules")))
        ), f"{where}: the server dropped or changed a field"
        assert (manager, "") in managers(obj), where
    kinds = {d["kind"] for d in docs}
    assert {
        "ConfigMap",
        "CronJob",
        "InferenceService",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "ScheduledSparkApplication",
        "ServiceAccount",
    } <= kinds
    # Applying the same objects again changes nothing: the server writes no new resourceVersion.
    again = [server_side_apply(server.api_client(), doc, manager, force=False) for doc in docs]
    assert [o["metadata"]["resourceVersion"] for o in again] == [o["metadata"]["resourceVersion"] for o in stored]

    # The overlay's RBAC is in force: the pipeline runner may patch InferenceServices in its own namespace only.
    namespace = f"ctpipe-{overlay}"
    authz = client.AuthorizationV1Api(server.api_client())

    def allowed(
        verb: str, resource_namespace: str, resource: str = "inferenceservices", account: str = "ctpipe-pipeline-runner"
    ) -> bool:
        review = authz.create_subject_access_review(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": {
                    "user": f"system:serviceaccount:{namespace}:{account}",
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                    "resourceAttributes": {
                        "group": GROUP if resource == "inferenceservices" else "",
                        "resource": resource,
                        "verb": verb,
                        "namespace": resource_namespace,
                    },
                },
            }
        )
        return bool(review.status.allowed)

    assert allowed("patch", namespace)
    assert allowed("create", namespace)
    assert not allowed("delete", namespace)
    assert not allowed("patch", "default")
    assert not allowed("list", namespace, resource="secrets")

    # The Spark driver manages its executors' pods, services, configmaps and volume claims in its namespace only;
    # the executors' account may do nothing.
    for resource in ("pods", "services", "configmaps", "persistentvolumeclaims"):
        for verb in ("create", "get", "list", "watch", "delete"):
            assert allowed(verb, namespace, resource, account="ctpipe-spark"), (verb, resource)
        assert not allowed("create", "default", resource, account="ctpipe-spark"), resource
        assert not allowed("create", namespace, resource, account="ctpipe-spark-executor"), resource
    assert not allowed("get", namespace, resource="secrets", account="ctpipe-spark")
    assert not allowed("patch", namespace, account="ctpipe-spark")


@pytest.mark.parametrize("mode", ["Serverless", "Standard"])
def test_rendered_inference_service_and_its_status_round_trip(custom: Any, mode: str) -> None:
    name = f"churn-{mode.lower()}"
    manifest = render(name, mode)
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, ISVC_NAMESPACE, PLURAL, manifest, field_manager=CTPIPE, field_validation="Strict"
    )
    # Nothing ctpipe renders is pruned by the CRD's structural schema (an unknown field would vanish silently).
    assert contains(created["spec"], manifest["spec"])
    assert contains(created["metadata"]["labels"], manifest["metadata"]["labels"])
    assert contains(created["metadata"]["annotations"], manifest["metadata"]["annotations"])
    if mode == "Standard":
        assert created["spec"]["canary"][0]["trafficPercent"] == 20
    else:
        assert created["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert "status" not in created or not created["status"].get("conditions")

    # KServe's controller writes .status through the status subresource (PUT .../status).
    status = kserve_status(created)
    written = custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, ISVC_NAMESPACE, PLURAL, name, {**created, "status": status}, field_manager=KSERVE
    )
    read = custom.get_namespaced_custom_object(GROUP, VERSION, ISVC_NAMESPACE, PLURAL, name)
    assert read["status"] == status == written["status"]
    assert read["spec"] == created["spec"]
    # A status write is no spec change: same generation, new resourceVersion.
    assert read["metadata"]["generation"] == created["metadata"]["generation"]
    assert read["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    traffic = {t["revisionName"]: t["percent"] for t in read["status"]["components"]["predictor"]["traffic"]}
    assert traffic == {f"{name}-predictor-00002": 20, f"{name}-predictor-00001": 80}
    ready = {c["type"]: c["status"] for c in read["status"]["conditions"]}
    assert ready["Ready"] == "True"

    fields = managers(read)
    assert owns(fields[(CTPIPE, "")], "f:spec", "f:predictor", "f:containers")
    assert owns(fields[(KSERVE, "status")], "f:status", "f:components")
    assert not owns(fields[(CTPIPE, "")], "f:status")

    # Through the main resource, .status is ignored; through the status subresource, .spec is.
    tampered = copy.deepcopy(read)
    tampered["status"]["conditions"][-1]["status"] = "False"
    tampered["metadata"]["annotations"]["ctpipe.io/touched"] = "1"
    after = custom.replace_namespaced_custom_object(GROUP, VERSION, ISVC_NAMESPACE, PLURAL, name, tampered)
    assert after["status"] == status
    assert after["metadata"]["annotations"]["ctpipe.io/touched"] == "1"
    tampered = copy.deepcopy(after)
    tampered["spec"]["predictor"]["minReplicas"] = 7
    after = custom.replace_namespaced_custom_object_status(GROUP, VERSION, ISVC_NAMESPACE, PLURAL, name, tampered)
    assert after["spec"]["predictor"]["minReplicas"] == 1


def test_the_server_enforces_what_a_schema_check_does_not(custom: Any, server: KubeApiServer) -> None:
    name = "churn-enforced"
    manifest = render(name, "Serverless")

    # A misspelt field: refused under strict validation, silently pruned without it (as kubectl < 1.27 did).
    misspelt = copy.deepcopy(manifest)
    misspelt["spec"]["predictor"]["canaryTraficPercent"] = 10
    error = api_error(
        custom.create_namespaced_custom_object,
        GROUP,
        VERSION,
        ISVC_NAMESPACE,
        PLURAL,
        misspelt,
        field_validation="Strict",
    )
    assert error.status in (400, 422) and "canaryTraficPercent" in error.body, error.body
    pruned = custom.create_namespaced_custom_object(
        GROUP, VERSION, ISVC_NAMESPACE, PLURAL, misspelt, field_validation="Ignore", dry_run="All"
    )
    assert "canaryTraficPercent" not in pruned["spec"]["predictor"]

    # A wrong type: the structural schema refuses it whatever the validation level.
    wrong = copy.deepcopy(manifest)
    wrong["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    error = api_error(custom.create_namespaced_custom_object, GROUP, VERSION, ISVC_NAMESPACE, PLURAL, wrong)
    assert error.status == 422 and "canaryTrafficPercent" in error.body, error.body

    # No namespace, no object: admission (NamespaceLifecycle) refuses it.
    elsewhere = copy.deepcopy(manifest)
    elsewhere["metadata"]["namespace"] = "ctpipe-absent"
    error = api_error(custom.create_namespaced_custom_object, GROUP, VERSION, "ctpipe-absent", PLURAL, elsewhere)
    assert error.status == 404, error.body

    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, ISVC_NAMESPACE, PLURAL, manifest, field_manager=CTPIPE, field_validation="Strict"
    )
    stale = copy.deepcopy(created)

    # Another team adds an env var inside the predictor container (read-modify-write, as kubectl edit does).
    theirs = copy.deepcopy(created)
    theirs["spec"]["predictor"]["containers"][0]["env"].append({"name": "OTHER_TEAM_FLAG", "value": "on"})
    theirs = custom.replace_namespaced_custom_object(
        GROUP, VERSION, ISVC_NAMESPACE, PLURAL, name, theirs, field_manager=OTHER
    )

    # ctpipe writing from its stale read gets 409 Conflict instead of dropping that env var.
    stale["spec"]["predictor"]["canaryTrafficPercent"] = 50
    error = api_error(
        custom.replace_namespaced_custom_object,
        GROUP,
        VERSION,
        ISVC_NAMESPACE,
        PLURAL,
        name,
        stale,
        field_manager=CTPIPE,
    )
    assert error.status == 409 and "the object has been modified" in error.body, error.body

    # Read again, modify, write: both changes survive.
    fresh = custom.get_namespaced_custom_object(GROUP, VERSION, ISVC_NAMESPACE, PLURAL, name)
    fresh["spec"]["predictor"]["canaryTrafficPercent"] = 50
    merged = custom.replace_namespaced_custom_object(
        GROUP, VERSION, ISVC_NAMESPACE, PLURAL, name, fresh, field_manager=CTPIPE
    )
    assert merged["spec"]["predictor"]["canaryTrafficPercent"] == 50
    env = {e["name"]: e.get("value") for e in merged["spec"]["predictor"]["containers"][0]["env"]}
    assert env["OTHER_TEAM_FLAG"] == "on" and env["CTPIPE_MODEL_NAME"] == name

    # managedFields: the other team's edit of one env var made it the owner of the whole containers list
    # (the CRD leaves it atomic); ctpipe still owns what it wrote last.
    fields = managers(merged)
    assert owns(fields[(OTHER, "")], "f:spec", "f:predictor", "f:containers")
    assert not owns(fields[(CTPIPE, "")], "f:spec", "f:predictor", "f:containers")
    assert owns(fields[(CTPIPE, "")], "f:spec", "f:predictor", "f:canaryTrafficPercent")

    # Server-side apply by yet another manager of a field ctpipe owns: 409, naming the owner and the field.
    apply = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": ISVC_NAMESPACE},
        "spec": {"predictor": {"canaryTrafficPercent": 5}},
    }
    error = api_error(server_side_apply, server.api_client(), apply, "canary-bot", force=False)
    assert error.status == 409, error.body
    assert CTPIPE in error.body and ".spec.predictor.canaryTrafficPercent" in error.body, error.body
    forced = server_side_apply(server.api_client(), apply, "canary-bot", force=True)
    assert forced["spec"]["predictor"]["canaryTrafficPercent"] == 5
    assert not owns(managers(forced)[(CTPIPE, "")], "f:spec", "f:predictor", "f:canaryTrafficPercent")


def test_the_spark_application_is_checked_by_its_crd(custom: Any, server: KubeApiServer) -> None:
    from pipelines.config import load_config
    from pipelines.spark_application import render_scheduled_spark_application

    group, version, plural = "sparkoperator.k8s.io", "v1beta2", "scheduledsparkapplications"
    app = render_scheduled_spark_application(load_config(REPO_ROOT / "manifests" / "base" / "ctpipe.yaml"))
    app["metadata"]["namespace"] = ISVC_NAMESPACE
    stored = server_side_apply(server.api_client(), app, CTPIPE, dry_run=True)
    assert contains(stored["spec"], app["spec"]), "the server dropped or changed a field of the rendering"

    # The CRD's schema is enforced, not preserved blindly: a misspelt field and a wrong type are refused.
    misspelt = copy.deepcopy(app)
    misspelt["spec"]["template"]["driver"]["coreLimt"] = "1"
    error = api_error(
        custom.create_namespaced_custom_object,
        group,
        version,
        ISVC_NAMESPACE,
        plural,
        misspelt,
        field_validation="Strict",
        dry_run="All",
    )
    assert error.status in (400, 422) and "coreLimt" in error.body, error.body
    wrong = copy.deepcopy(app)
    wrong["spec"]["template"]["executor"]["instances"] = "two"
    error = api_error(
        custom.create_namespaced_custom_object, group, version, ISVC_NAMESPACE, plural, wrong, dry_run="All"
    )
    assert error.status == 422 and "instances" in error.body, error.body
