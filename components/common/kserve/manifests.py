"""KServe ``InferenceService`` manifests for the cluster profile.

The predictor is a custom container: the ctpipe serving image running ``python -m
serving.server`` (the same kserve app as the embedded profile) on port 8080. How a new model
version reaches traffic depends on ``serving.deployment_mode``:

Pods are never pinned to a version: each traffic target runs the server with ``--alias``, so it
serves the registry version behind that alias and follows it (``models:/NAME@alias`` on the
MLflow server, artifacts from wherever the server keeps them). The ``champion`` target therefore
picks up a promotion or a rollback by itself, without a restart; re-rendering the manifest moves
KServe's traffic split.

``Serverless`` (KServe's ``Knative`` mode; ``Serverless`` is its deprecated name)
    A canary is a new Knative revision whose pods follow ``challenger``;
    ``spec.predictor.canaryTrafficPercent`` sends that share to it and the rest to the last
    ready revision, whose pods follow ``champion``. Promoting means rendering again without a
    canary percent: a revision following ``champion`` takes all traffic. A revision whose
    model cannot load never turns ready, so it never gets traffic.

``Standard`` (KServe's raw Kubernetes ``Deployment``; ``RawDeployment`` is the old name)
    There are no Knative revisions to split between, so a canary is rendered as ``spec.canary``:
    ``spec.predictor`` follows ``champion`` and one ``spec.canary`` entry follows ``challenger``
    with ``trafficPercent``. Promoting means rendering again without a canary percent, which
    drops ``spec.canary``.

The container gets the serving settings as flags (``--max-batch-rows``, the inference log's flush
interval and queue size) and, when ``serving.inference_log_dir`` is set (an object-store prefix such
as ``s3://bucket/inference_log`` on a cluster), ``--inference-log-dir``: every pod appends its
inference log there through :mod:`components.common.storage`. Without it a cluster pod writes no
inference log (a local folder would be the pod's own ``emptyDir``). With an entity lookup (the
dataset and Feast settings) the pod also answers requests that name entity ids, reading Feast's
registry and online store (Redis). The object store's keys reach the pod only through the Secret
named by ``serving.credentials_secret`` (``envFrom``), never through the manifest.

Both modes set ``serving.kserve.io/deploymentMode`` explicitly, because the cluster default
(``defaultDeploymentMode`` in the ``inferenceservice-config`` ConfigMap) varies by install.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from components.common import environments
from components.common.errors import DeployError
from components.common.feast import EntityLookup
from components.common.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
from components.common.server_process import ENTITY_LOOKUP_ENV, serving_args
from components.serving_spec import ServingSpec

API_VERSION = "serving.kserve.io/v1beta1"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# ServingSpec.deployment_mode -> the annotation value KServe >= 0.15 expects.
KSERVE_MODE = {"Serverless": "Knative", "Standard": "Standard"}
CONTAINER_NAME = "kserve-container"
CONTAINER_PORT = 8080
POLL_SECONDS_IN_CLUSTER = 5.0
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


def isvc_name(model_name: str) -> str:
    """The InferenceService name for a registered model; it must be a DNS-1035 label.

    Raises:
        DeployError: The model name is not a valid Kubernetes object name.
    """
    if len(model_name) > 63 or not _DNS_1035.match(model_name):
        raise DeployError(
            f"serving.model_name {model_name!r} cannot name an InferenceService: use at most 63 lowercase "
            "letters, digits and '-', starting with a letter and ending with a letter or digit"
        )
    return model_name


def _check_tracking_uri(tracking_uri: str) -> None:
    parts = urlsplit(tracking_uri)
    if parts.password is not None:
        raise DeployError(
            "the tracking URI contains a password, which would be written into the manifest; pass the URI "
            "without credentials and put MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in a Secret "
            "(credentials_secret)"
        )


def _predictor(
    serving: ServingSpec,
    image: str,
    alias: str | None,
    tracking_uri: str,
    knative: bool,
    credentials_secret: str | None,
    resources: dict[str, dict[str, str]] | None,
    entity_lookup: EntityLookup | None,
) -> dict[str, Any]:
    """A predictor block (custom ctpipe container) that serves and follows one registry alias.

    ``alias`` None: the pods serve champion and challenger and route by ``serving.rollout`` (its
    ``--rollout`` flag comes with :func:`serving_args`).
    """
    args = [
        "--model-name",
        serving.model_name,
        "--host",
        "0.0.0.0",  # inside the pod: kubelet probes and the Knative queue-proxy connect to the pod IP
        "--port",
        str(CONTAINER_PORT),
        "--poll-seconds",
        str(POLL_SECONDS_IN_CLUSTER),
        *serving_args(serving),
    ]
    if serving.inference_log and serving.inference_log_dir:
        # An object-store prefix (s3://...) that monitoring and canary analysis read; the pod writes it
        # with the keys its Secret puts in the environment (envFrom), never with keys in this manifest.
        args += ["--inference-log-dir", serving.inference_log_dir]
    if alias is not None:
        args += ["--alias", alias]  # each traffic target follows one alias; KServe splits between targets
    ready_path = f"/v2/models/{serving.model_name}/ready"
    readiness: dict[str, Any] = {
        "httpGet": {"path": ready_path},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    liveness: dict[str, Any] = {
        "httpGet": {"path": "/v2/health/live"},
        "initialDelaySeconds": 30,
        "periodSeconds": 15,
        "failureThreshold": 4,
    }
    if not knative:  # a plain Deployment needs the port; Knative fills in the container port itself
        readiness["httpGet"]["port"] = CONTAINER_PORT
        liveness["httpGet"]["port"] = CONTAINER_PORT

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": ["python", "-m", "serving.server"],
        "args": args,
        "env": [
            {"name": "MLFLOW_TRACKING_URI", "value": tracking_uri},
            {"name": "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "value": "false"},
            {"name": "CTPIPE_MODEL_NAME", "value": serving.model_name},
            {"name": "HOME", "value": "/tmp"},
            # Settings, not secrets: where the Feast registry and Redis are (their keys come from the Secret).
            *([{"name": ENTITY_LOOKUP_ENV, "value": entity_lookup.model_dump_json()}] if entity_lookup else []),
        ],
        "ports": [{"containerPort": CONTAINER_PORT, "name": "http1", "protocol": "TCP"}],
        "readinessProbe": readiness,
        "livenessProbe": liveness,
        "resources": resources or DEFAULT_RESOURCES,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    if credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": credentials_secret}}]

    return {
        "minReplicas": 1,
        "maxReplicas": 3,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        "securityContext": {"runAsNonRoot": True, "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    }


def render_inference_service(
    serving: ServingSpec,
    image: str,
    model_version: str,
    tracking_uri: str,
    canary_percent: int | None,
    credentials_secret: str | None = None,
    resources: dict[str, dict[str, str]] | None = None,
    stable_version: str | None = None,
    alias: str | None = CHAMPION_ALIAS,
    entity_lookup: EntityLookup | None = None,
) -> dict[str, Any]:
    """Render a KServe v1beta1 InferenceService that rolls out one registered model version.

    Args:
        serving: Model name, namespace and deployment mode.
        image: The ctpipe serving image (pin by digest in production).
        model_version: The registry version being rolled out (recorded in an annotation; the
            pods follow aliases, not versions).
        tracking_uri: MLflow URI the pods read the registry and artifacts from.
        canary_percent: Share of traffic for the ``challenger`` target; None sends all traffic
            to the one target following ``alias`` (first deployment or promotion).
        credentials_secret: Name of a Secret whose keys become environment variables
            (e.g. ``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``, S3 keys); default
            ``serving.credentials_secret``.
        resources: Container requests and limits; defaults to :data:`DEFAULT_RESOURCES`.
        stable_version: The champion during a canary. Needed in Standard mode, where
            ``spec.predictor`` keeps serving it; Knative keeps the last ready revision itself.
        alias: The alias the single target follows when ``canary_percent`` is None:
            ``champion``, or ``challenger`` while there is no champion yet; None (only with a
            ``serving.rollout`` strategy other than ``canary``): the pods follow both aliases and
            route between them themselves.
        entity_lookup: Dataset and Feast settings, so the pods answer requests by entity id.

    Returns:
        The manifest as a plain dict (YAML/JSON serialisable).

    Raises:
        DeployError: The name, version, percent or tracking URI cannot be used.
    """
    name = isvc_name(serving.model_name)
    if not str(model_version).isdigit():
        raise DeployError(f"model_version must be a registry version number, got {model_version!r}")
    if canary_percent is not None and not 0 <= canary_percent <= 100:
        raise DeployError(f"canary_percent must be between 0 and 100, got {canary_percent}")
    _check_tracking_uri(tracking_uri)
    mode = KSERVE_MODE[serving.deployment_mode]
    knative = mode == "Knative"
    split = canary_percent is not None and not knative
    if split and not str(stable_version or "").isdigit():
        raise DeployError(
            f"Standard mode renders a canary as spec.canary and needs the stable (champion) version, "
            f"got {stable_version!r}"
        )

    if alias is None and (serving.rollout.strategy == "canary" or canary_percent is not None):
        raise DeployError(
            "alias None (pods that route between champion and challenger themselves) needs serving.rollout.strategy "
            f"ab, shadow or blue_green and no KServe split; found strategy {serving.rollout.strategy!r}, "
            f"canary_percent {canary_percent!r}"
        )
    if alias is not None and alias not in (CHAMPION_ALIAS, CHALLENGER_ALIAS):
        raise DeployError(f"alias must be {CHAMPION_ALIAS!r} or {CHALLENGER_ALIAS!r}, got {alias!r}")
    secret = credentials_secret if credentials_secret is not None else serving.credentials_secret

    env = serving.environment or environments.PROD
    if alias is None and env != environments.PROD:
        # Pods that route themselves hold the champion and challenger aliases, which are prod's.
        raise DeployError(
            f"serving.rollout.strategy {serving.rollout.strategy!r} routes inside the model server, which follows "
            f"prod's aliases only; found serving.environment {env!r}: use strategy 'canary' outside prod"
        )

    def following(role: str | None) -> dict[str, Any]:
        """The predictor block of one traffic target: pods that serve and follow the alias of ``role``.

        The role's alias in ``serving.environment``: ``staging-champion`` for the champion in staging;
        prod's (and a configuration without an environment) are ``champion`` and ``challenger``. No role:
        pods that hold both and route between them (``serving.rollout``).
        """
        if role is None:
            target_alias = None
        elif role == CHAMPION_ALIAS:
            target_alias = environments.serving_alias(env)
        else:
            target_alias = environments.challenger_alias(env)
        return _predictor(serving, image, target_alias, tracking_uri, knative, secret, resources, entity_lookup)

    # With a canary, Standard keeps the champion in spec.predictor; in Knative the predictor is the new revision.
    canary_target = CHAMPION_ALIAS if split else CHALLENGER_ALIAS
    predictor = following(alias if canary_percent is None else canary_target)
    annotations = {
        DEPLOYMENT_MODE_ANNOTATION: mode,
        "ctpipe.io/model-name": serving.model_name,
        "ctpipe.io/model-version": str(model_version),
    }
    if knative:
        if canary_percent is not None:
            predictor["canaryTrafficPercent"] = int(canary_percent)
        annotations["ctpipe.io/traffic"] = "knative-revisions"
    else:
        annotations["ctpipe.io/traffic"] = "spec.canary"

    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": serving.namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "ctpipe"},
            "annotations": annotations,
        },
        "spec": {
            "predictor": predictor,
            **(
                {"canary": [{"predictor": following(CHALLENGER_ALIAS), "trafficPercent": int(canary_percent)}]}
                if split and canary_percent is not None
                else {}
            ),
        },
    }
