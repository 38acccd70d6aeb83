"""Policy checks for rendered Kubernetes manifests: what a careful cluster admin would refuse.

``violations(documents)`` returns one line per problem, naming the object and the container:
literal secret values, images without a pinned tag (or ``latest``), containers without CPU and
memory requests and limits, and pods that may run as root or keep privileges.

A spark-operator ``SparkApplication`` (or the template of a ``ScheduledSparkApplication``) describes
its driver and executor pods in Spark's own fields; :func:`spark_pods` reads them as the pods the
operator makes, so the same checks apply to them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)
_REFERENCE_NAME = re.compile(r"_(FILE|PATH|DIR|URI|URL|NAME)$", re.I)  # these hold where a secret is, not it
_LITERAL_SECRETS = (
    (re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"), "a URL with a password"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "an AWS access key id"),
)


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


_SPARK_KINDS = ("SparkApplication", "ScheduledSparkApplication")
_SPARK_ROLES = ("driver", "executor")


def spark_pods(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``(role settings, pod spec)`` of each pod a Spark application asks the operator for: driver, executor.

    The pod spec holds what the operator and spark-submit turn the settings into: the main container
    (named after the role) with the role's image or the application's, its ``securityContext``, ``env``
    and ``envVars``; the ``podSecurityContext``; sidecars and init containers. Spark's resource fields
    are checked apart (:func:`_spark_resource_problems`).
    """
    if doc.get("kind") not in _SPARK_KINDS:
        return
    spec = doc.get("spec") or {}
    app = (spec.get("template") or {}) if doc.get("kind") == "ScheduledSparkApplication" else spec
    for role in _SPARK_ROLES:
        settings = app.get(role) or {}
        env = [
            *(settings.get("env") or []),
            *({"name": k, "value": v} for k, v in (settings.get("envVars") or {}).items()),
        ]
        main = {
            "name": role,
            "image": settings.get("image") or app.get("image", ""),
            "securityContext": settings.get("securityContext"),
            "env": env,
        }
        yield (
            settings,
            {
                "securityContext": settings.get("podSecurityContext"),
                "containers": [main, *(settings.get("sidecars") or [])],
                "initContainers": settings.get("initContainers") or [],
            },
        )


def _spark_resource_problems(settings: dict[str, Any]) -> list[str]:
    """Spark sizes the pod: CPU request ``coreRequest`` (else ``cores``), limit ``coreLimit``; memory ``memory``.

    Spark makes the memory request and limit both ``memory`` + ``memoryOverhead`` (or ``memoryLimit``),
    and without ``memory`` picks its own default, so an unset ``memory`` counts as missing.
    """
    problems = []
    if not (settings.get("coreRequest") or settings.get("cores")):
        problems.append("no cpu request (coreRequest or cores)")
    if not settings.get("coreLimit"):
        problems.append("no cpu limit (coreLimit)")
    if not settings.get("memory"):
        problems.append("no memory (memory sets the pod's memory request and limit)")
    return problems


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod specs inside a manifest (Pod, workload templates, CronJob, InferenceService components)."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind in _SPARK_KINDS:
        return  # their pods are in Spark's fields: spark_pods
    if kind == "Pod":
        yield spec
    elif kind == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})
    elif kind == "InferenceService":
        for component in ("predictor", "transformer", "explainer"):
            if component in spec:
                yield spec[component]
    elif "template" in spec:
        yield spec["template"].get("spec", {})


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _image_problem(image: str, require_digest: bool) -> str | None:
    if "@sha256:" in image:
        return None
    if require_digest:
        return f"image {image!r} is not pinned by digest (@sha256:...)"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (that means latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses the latest tag"
    return None


def _container_problems(
    container: dict[str, Any], pod: dict[str, Any], resources_checked: bool = True, require_digest: bool = False
) -> list[str]:
    problems = []
    image_problem = _image_problem(str(container.get("image", "")), require_digest)
    if image_problem:
        problems.append(image_problem)
    resources = container.get("resources") or {}
    for section in ("requests", "limits") if resources_checked else ():
        missing = [r for r in ("cpu", "memory") if r not in (resources.get(section) or {})]
        if missing:
            problems.append(f"no {section} for {', '.join(missing)}")
    own, shared = container.get("securityContext") or {}, pod.get("securityContext") or {}

    def setting(key: str) -> Any:
        return own.get(key, shared.get(key))

    if setting("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if setting("runAsUser") == 0:
        problems.append("runAsUser is 0 (root)")
    if own.get("privileged"):
        problems.append("privileged")
    if own.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if own.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem is not true")
    if "ALL" not in ((own.get("capabilities") or {}).get("drop") or []):
        problems.append("capabilities are not dropped (drop: [ALL])")
    for env in container.get("env") or []:
        if "value" in env and _SECRET_NAME.search(env["name"]) and not _REFERENCE_NAME.search(env["name"]):
            problems.append(f"env {env['name']} has a literal value; use valueFrom.secretKeyRef")
    return problems


def violations(documents: list[dict[str, Any]], require_digest: bool = False) -> list[str]:
    """Every policy violation in ``documents`` (rendered manifests), one line each.

    Args:
        documents: The rendered objects.
        require_digest: A released overlay (``python -m pipelines.release pin``): every image by digest.
    """
    found: list[str] = []
    for doc in documents:
        name = _name(doc)
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            found.append(f"{name}: a Secret with values; reference Secrets created outside the repository")
        if doc.get("kind") == "NetworkPolicy" and set(doc["spec"].get("policyTypes") or []) != {"Ingress", "Egress"}:
            found.append(f"{name}: a NetworkPolicy that does not restrict both Ingress and Egress")
        for text in _strings(doc):
            for pattern, what in _LITERAL_SECRETS:
                if pattern.search(text):
                    found.append(f"{name}: contains {what}")
        for pod in pod_specs(doc):
            for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
                for problem in _container_problems(container, pod, require_digest=require_digest):
                    found.append(f"{name}: container {container.get('name')}: {problem}")
        for settings, pod in spark_pods(doc):
            main, *others = pod["containers"]
            for problem in [
                *_spark_resource_problems(settings),
                *_container_problems(main, pod, resources_checked=False, require_digest=require_digest),
            ]:
                found.append(f"{name}: container {main['name']}: {problem}")
            for container in [*pod["initContainers"], *others]:
                for problem in _container_problems(container, pod, require_digest=require_digest):
                    found.append(f"{name}: container {main['name']}/{container.get('name')}: {problem}")
    return found
