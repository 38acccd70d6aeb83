"""manifests/: every overlay renders with kubectl kustomize, validates against the CRDs and passes the policy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.config import load_config, parse_config
from pipelines.images import image_tags
from tests.helpers import kserve_crd_validator, spark_crd_validator
from tests.manifest_policy import violations
from tests.servers import ensure_debian_package

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
OVERLAYS = sorted(p.parent.name for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))


@pytest.fixture(scope="module")
def kubectl() -> str:
    return shutil.which("kubectl") or ensure_debian_package("kubectl", "kubernetes-client")


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl, "kustomize", str(MANIFESTS / "overlays" / overlay)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_overlays_exist_and_render_everything(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert OVERLAYS == ["production", "staging"]
    for overlay, docs in rendered.items():
        kinds = sorted({d["kind"] for d in docs})
        assert kinds == [
            "ConfigMap",
            "CronJob",
            "InferenceService",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "ScheduledSparkApplication",
            "ServiceAccount",
        ], overlay
        namespaces = {d["metadata"].get("namespace") for d in docs}
        assert namespaces == {f"ctpipe-{overlay}"}
        for binding in by_kind(docs, "RoleBinding"):
            assert binding["subjects"][0]["namespace"] == f"ctpipe-{overlay}"


def test_canary_differs_per_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    predictors = {o: by_kind(docs, "InferenceService")[0]["spec"]["predictor"] for o, docs in rendered.items()}
    assert predictors["staging"]["canaryTrafficPercent"] == 50
    assert predictors["production"]["canaryTrafficPercent"] == 10
    assert predictors["production"]["minReplicas"] >= 2
    for predictor in predictors.values():  # the strategic merge kept the container
        assert predictor["containers"][0]["name"] == "kserve-container"
        assert predictor["serviceAccountName"] == "ctpipe-serving"


def test_every_overlay_passes_the_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        assert violations(docs) == [], overlay


def test_policy_catches_a_bad_manifest() -> None:
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "tests/fixtures/manifests/bad.yaml").read_text()) if d]
    found = violations(docs)
    expected = [
        "Secret/leaked: a Secret with values",
        "Deployment/careless: contains a URL with a password",
        "Deployment/careless: container app: image 'example/app:latest' uses the latest tag",
        "Deployment/careless: container app: no requests for cpu, memory",
        "Deployment/careless: container app: no limits for cpu, memory",
        "Deployment/careless: container app: runAsNonRoot is not true",
        "Deployment/careless: container app: runAsUser is 0 (root)",
        "Deployment/careless: container app: allowPrivilegeEscalation is not false",
        "Deployment/careless: container app: readOnlyRootFilesystem is not true",
        "Deployment/careless: container app: capabilities are not dropped",
        "Deployment/careless: container app: env MLFLOW_TRACKING_PASSWORD has a literal value",
        "Deployment/careless: container sidecar: image 'example/sidecar' has no tag",
        "Deployment/careless: container sidecar: no limits for memory",
        "InferenceService/rooted: container kserve-container: privileged",
        "InferenceService/rooted: container kserve-container: runAsNonRoot is not true",
        "InferenceService/rooted: container kserve-container: allowPrivilegeEscalation is not false",
    ]
    for line in expected:
        assert any(f.startswith(line) for f in found), f"policy missed: {line}\nfound: {found}"
    assert len(found) == len(expected), found


def test_images_in_manifests_are_the_ones_make_images_builds(rendered: dict[str, list[dict[str, Any]]]) -> None:
    tags = image_tags(load_config(REPO_ROOT / "ctpipe.yaml"))
    for docs in rendered.values():
        isvc = by_kind(docs, "InferenceService")[0]
        assert isvc["spec"]["predictor"]["containers"][0]["image"] == tags["serving"]
        cron = by_kind(docs, "CronJob")[0]
        container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == tags["components"]
        assert container["command"][:3] == ["ctpipe", "submit", "continuous_training"]
        spark = by_kind(docs, "ScheduledSparkApplication")[0]
        assert spark["spec"]["template"]["image"] == tags["components"]


def test_mounted_config_is_a_valid_cluster_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        config_map = by_kind(docs, "ConfigMap")[0]
        config = parse_config(yaml.safe_load(config_map["data"]["ctpipe.yaml"]), "/etc/ctpipe")
        assert config.infra.profile == "cluster"
        isvc = by_kind(docs, "InferenceService")[0]
        assert isvc["metadata"]["name"] == config.serving.model_name
        policy = by_kind(docs, "NetworkPolicy")[0]
        assert policy["spec"]["podSelector"]["matchLabels"] == {
            "serving.kserve.io/inferenceservice": config.serving.model_name
        }


def test_inference_services_validate_against_the_kserve_crd(rendered: dict[str, list[dict[str, Any]]]) -> None:
    validator = kserve_crd_validator()
    for overlay, docs in rendered.items():
        for isvc in by_kind(docs, "InferenceService"):
            errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(isvc)]
            assert not errors, f"{overlay}: " + "\n".join(errors)
        broken = by_kind(docs, "InferenceService")[0]
        broken["spec"]["predictor"]["canaryTraficPercent"] = 10
        assert any("canaryTraficPercent" in e.message for e in validator.iter_errors(broken))


def test_spark_applications_validate_and_run_as_their_accounts(rendered: dict[str, list[dict[str, Any]]]) -> None:
    validator = spark_crd_validator("ScheduledSparkApplication")
    for overlay, docs in rendered.items():
        (app,) = by_kind(docs, "ScheduledSparkApplication")
        errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(app)]
        assert not errors, f"{overlay}: " + "\n".join(errors)
        template = app["spec"]["template"]
        # The ConfigMap the driver mounts is the overlay's, at the path its --config names.
        (config_map,) = by_kind(docs, "ConfigMap")
        volumes = {v["name"]: v for v in template["volumes"]}
        assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
        mount = next(m for m in template["driver"]["volumeMounts"] if m["name"] == "config")
        config_arg = template["arguments"][template["arguments"].index("--config") + 1]
        assert config_arg == f"{mount['mountPath']}/ctpipe.yaml" and "ctpipe.yaml" in config_map["data"]
        # The driver's account may manage its executors' pods; the executors' has no Role and no token.
        accounts = {a["metadata"]["name"]: a for a in by_kind(docs, "ServiceAccount")}
        bindings = {b["subjects"][0]["name"]: b for b in by_kind(docs, "RoleBinding")}
        roles = {r["metadata"]["name"]: r for r in by_kind(docs, "Role")}
        driver, executor = template["driver"]["serviceAccount"], template["executor"]["serviceAccount"]
        assert driver in accounts and executor in accounts
        assert roles[bindings[driver]["roleRef"]["name"]]["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["pods", "services", "configmaps", "persistentvolumeclaims"],
                "verbs": ["create", "get", "list", "watch", "delete"],
            }
        ]
        assert executor not in bindings and accounts[executor]["automountServiceAccountToken"] is False


def test_each_environment_names_an_existing_overlay_and_its_namespace() -> None:
    from components.common.environments import ENVIRONMENTS, EnvironmentsSpec

    environments = EnvironmentsSpec()
    with_overlay = {env: environments.of(env) for env in ENVIRONMENTS if environments.of(env).overlay}
    assert sorted(with_overlay) == ["prod", "staging"]
    for env, spec in with_overlay.items():
        kustomization = REPO_ROOT / str(spec.overlay) / "kustomization.yaml"
        assert kustomization.is_file(), f"environments.{env}.overlay: {spec.overlay} has no kustomization.yaml"
        assert yaml.safe_load(kustomization.read_text())["namespace"] == spec.namespace, env
