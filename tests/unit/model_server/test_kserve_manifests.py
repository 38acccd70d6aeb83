"""The cluster side: InferenceService manifests checked against the KServe CRD, and the KServe seam."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.common.errors import DeployError
from components.serving_spec import ServingSpec
from tests.helpers import kserve_crd_validator


@pytest.fixture(scope="module")
def crd_validator() -> Any:
    return kserve_crd_validator()


@pytest.mark.parametrize("mode", ["Serverless", "Standard"])
@pytest.mark.parametrize("canary", [None, 20])
def test_manifest_validates_against_crd(crd_validator: Any, mode: str, canary: int | None) -> None:
    from components.common.kserve.manifests import render_inference_service

    spec = ServingSpec(model_name="churn-model", deployment_mode=mode, namespace="ml")  # type: ignore[arg-type]
    manifest = render_inference_service(
        spec, "registry.example/ctpipe/serving:0.1.0", "7", "http://mlflow:5000", canary, stable_version="6"
    )
    errors = sorted(crd_validator.iter_errors(manifest), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)

    predictor = manifest["spec"]["predictor"]
    container = predictor["containers"][0]
    annotations = manifest["metadata"]["annotations"]
    assert container["name"] == "kserve-container"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in container["env"]
    assert manifest["metadata"]["namespace"] == "ml"
    if mode == "Serverless":
        assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
        # A canary is the new revision, following the challenger; without one the champion.
        assert container["args"][-2:] == ["--alias", "champion" if canary is None else "challenger"]
        assert predictor.get("canaryTrafficPercent") == canary
    else:
        assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
        assert "canaryTrafficPercent" not in predictor
        if canary is None:  # all traffic to the champion
            assert container["args"][-2:] == ["--alias", "champion"]
            assert "canary" not in manifest["spec"]
        else:  # spec.predictor follows the champion; spec.canary follows the challenger with its share
            assert container["args"][-2:] == ["--alias", "champion"]
            (entry,) = manifest["spec"]["canary"]
            assert entry["trafficPercent"] == 20
            assert entry["predictor"]["containers"][0]["args"][-2:] == ["--alias", "challenger"]
    # Pods follow aliases, never a version: nothing in a pod names one.
    assert "--model-version" not in json.dumps(manifest["spec"])
    assert manifest["metadata"]["annotations"]["ctpipe.io/model-version"] == "7"


def test_standard_mode_canary_needs_the_stable_version() -> None:
    from components.common.kserve.manifests import render_inference_service

    spec = ServingSpec(model_name="m", deployment_mode="Standard")
    with pytest.raises(DeployError, match="stable"):
        render_inference_service(spec, "img:1", "7", "http://mlflow:5000", 20)


def test_the_predictor_writes_the_inference_log_where_the_config_says(crd_validator: Any) -> None:
    from components.common.kserve.manifests import render_inference_service

    def args(spec: ServingSpec) -> list[str]:
        manifest = render_inference_service(
            spec, "img:1", "7", "http://mlflow:5000", None, credentials_secret="ctpipe-object-store"
        )
        assert not list(crd_validator.iter_errors(manifest))
        container = manifest["spec"]["predictor"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "ctpipe-object-store"}}]
        assert not any(item["name"].startswith("AWS_") for item in container["env"]), "keys come from the Secret"
        return list(container["args"])

    spec = ServingSpec(
        model_name="m", inference_log_dir="s3://bucket/inference_log", max_batch_rows=99, inference_log_queue_rows=5
    )
    rendered = args(spec)
    assert rendered[rendered.index("--inference-log-dir") + 1] == "s3://bucket/inference_log"
    assert rendered[rendered.index("--max-batch-rows") + 1] == "99"
    assert rendered[rendered.index("--log-queue-rows") + 1] == "5"
    assert rendered[-2:] == ["--alias", "champion"]
    # No location configured (a pod's local folder would be lost with it), or logging off: no log.
    assert "--inference-log-dir" not in args(ServingSpec(model_name="m"))
    assert "--inference-log-dir" not in args(spec.model_copy(update={"inference_log": False}))


def test_strict_crd_check_catches_a_misspelled_field(crd_validator: Any) -> None:
    from components.common.kserve.manifests import render_inference_service

    manifest = render_inference_service(ServingSpec(model_name="m"), "img", "1", "http://mlflow:5000", None)
    manifest["spec"]["predictor"]["canaryTraficPercent"] = 10
    assert any("canaryTraficPercent" in e.message for e in crd_validator.iter_errors(manifest))


def test_manifest_rejects_what_a_cluster_would() -> None:
    from components.common.kserve.manifests import render_inference_service

    with pytest.raises(DeployError, match="cannot name an InferenceService"):
        render_inference_service(ServingSpec(model_name="Churn_Model"), "img", "1", "http://m:5000", None)
    with pytest.raises(DeployError, match="password"):
        render_inference_service(ServingSpec(model_name="m"), "img", "1", "http://u:secret@m:5000", None)
    with pytest.raises(DeployError, match="between 0 and 100"):
        render_inference_service(ServingSpec(model_name="m"), "img", "1", "http://m:5000", 120)


def test_seam_dry_run_records_and_never_builds_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import kserve

    from components.common.kserve.cluster import KServeSeam
    from components.common.kserve.manifests import render_inference_service

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("KServeClient must not be constructed in dry-run mode")

    monkeypatch.setattr(kserve, "KServeClient", forbidden)
    seam = KServeSeam(namespace="ml", dry_run=True, client_factory=forbidden)
    manifest = render_inference_service(ServingSpec(model_name="m", namespace="ml"), "img", "1", "http://m:5000", 10)
    assert seam.apply(manifest) is None
    assert seam.get("m") is None
    assert seam.delete("m") is False
    assert [(c.verb, c.name, c.namespace, c.dry_run) for c in seam.calls] == [
        ("apply", "m", "ml", True),
        ("get", "m", "ml", True),
        ("delete", "m", "ml", True),
    ]
    assert seam.calls[0].manifest == manifest
    with pytest.raises(RuntimeError, match="dry-run"):
        _ = seam.client


def test_seam_builds_the_client_lazily() -> None:
    from components.common.kserve.cluster import KServeSeam

    built: list[int] = []

    def factory() -> str:
        built.append(1)
        return "client"

    seam = KServeSeam(client_factory=factory)
    assert built == []
    assert seam.client == "client" and seam.client == "client"
    assert built == [1]


def test_the_predictor_gets_feast_settings_and_the_configs_secret(crd_validator: Any) -> None:
    """Entity-id requests on a cluster: the pods read Feast's registry and Redis named by the settings in their env."""
    from components.common.feast import EntityLookup
    from components.common.kserve.manifests import render_inference_service
    from components.common.server_process import ENTITY_LOOKUP_ENV
    from components.specs import DatasetSpec, FeastSpec

    lookup = EntityLookup(
        dataset=DatasetSpec(
            source="s3://b/d.parquet",
            entity_column="id",
            timestamp_column="ts",
            label_column="y",
            numeric_features=["a"],
        ),
        feast=FeastSpec(root="s3://b/feast", online_store="redis", redis_connection_string="redis.ns.svc:6379"),
        workspace="",
    )
    spec = ServingSpec(model_name="m", credentials_secret="ctpipe-object-store")
    manifest = render_inference_service(spec, "img:1", "7", "http://mlflow:5000", None, entity_lookup=lookup)
    assert not list(crd_validator.iter_errors(manifest))
    container = manifest["spec"]["predictor"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert EntityLookup.model_validate_json(env[ENTITY_LOOKUP_ENV]) == lookup
    assert container["envFrom"] == [{"secretRef": {"name": "ctpipe-object-store"}}]
    # The first deployment, before there is a champion, follows the challenger.
    first = render_inference_service(spec, "img:1", "7", "http://mlflow:5000", None, alias="challenger")
    assert first["spec"]["predictor"]["containers"][0]["args"][-2:] == ["--alias", "challenger"]
    assert ENTITY_LOOKUP_ENV not in json.dumps(first)
    with pytest.raises(DeployError, match="alias must be"):
        render_inference_service(spec, "img:1", "7", "http://mlflow:5000", None, alias="latest")
