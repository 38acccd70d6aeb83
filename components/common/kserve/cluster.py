"""The one seam between ctpipe and a Kubernetes cluster running KServe.

Everything that would change a cluster goes through :class:`KServeSeam`, so tests and
``--dry-run`` can replace the cluster with a record of what would have been sent. In dry-run
mode no ``KServeClient`` is constructed (so no kubeconfig is read) and nothing is sent.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from components.common.errors import DeployError
from components.common.kserve import rollout
from components.common.logs import get_logger

logger = get_logger("kserve")

Verb = Literal["apply", "get", "delete"]
# Writes that lose the race to another writer (409 Conflict) before ctpipe gives up.
CONFLICT_RETRIES = 5


class SeamCall(BaseModel):
    """One request the seam sent, or would have sent in dry-run mode."""

    verb: Verb
    name: str
    namespace: str
    manifest: dict[str, Any] | None = None
    dry_run: bool
    at: float = Field(default_factory=time.time)


class KServeSeam:
    """Apply, read and delete InferenceServices through ``kserve.KServeClient``.

    Args:
        namespace: Namespace used when a manifest does not name one.
        dry_run: Record and log every call instead of sending it; no client is built.
        client_factory: Builds the client on first use; default ``kserve.KServeClient()``
            (kubeconfig, or the in-cluster service account).
    """

    def __init__(self, namespace: str = "default", dry_run: bool = False, client_factory: Any = None) -> None:
        self.namespace = namespace
        self.dry_run = dry_run
        self.calls: list[SeamCall] = []
        self._client_factory = client_factory
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The ``KServeClient``, built on first use; never in dry-run mode."""
        if self.dry_run:
            raise RuntimeError("KServeSeam is in dry-run mode; it must not build a cluster client")
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:
                from kserve import KServeClient

                self._client = KServeClient()
        return self._client

    def _record(self, verb: Verb, name: str, namespace: str, manifest: dict[str, Any] | None = None) -> SeamCall:
        call = SeamCall(verb=verb, name=name, namespace=namespace, manifest=manifest, dry_run=self.dry_run)
        self.calls.append(call)
        if self.dry_run:
            text = yaml.safe_dump(manifest, sort_keys=False) if manifest is not None else ""
            logger.info(
                f"dry run: would {verb} InferenceService {namespace}/{name}",
                extra={"verb": verb, "isvc": name, "namespace": namespace, "manifest_yaml": text},
            )
        return call

    @staticmethod
    def _api_coordinates() -> tuple[str, str, str]:
        from kserve import constants

        return constants.KSERVE_GROUP, constants.KSERVE_V1BETA1_VERSION, constants.KSERVE_PLURAL_INFERENCESERVICE

    def apply(self, manifest: dict[str, Any], force: bool = False) -> dict[str, Any] | None:
        """Create the InferenceService, or write ctpipe's fields into the existing one (read-modify-write).

        Every field ctpipe does not own (service account, foreign env and ``envFrom`` entries,
        resources, replicas, annotations) is kept as found (:mod:`components.common.kserve.rollout`).
        The write carries the ``resourceVersion`` it read; a 409 Conflict (a write in between) reads
        and merges again, up to :data:`CONFLICT_RETRIES` times.

        Args:
            manifest: ctpipe's rendering of the InferenceService.
            force: Overwrite fields ctpipe owns that someone else changed since ctpipe wrote them.

        Returns:
            The object the API server stored; None in dry-run mode.

        Raises:
            DeployError: The manifest has no name; someone else changed a field ctpipe owns (and
                ``force`` is False); the API server refused the object; or conflicts went on.
        """
        metadata = manifest.get("metadata") or {}
        name = metadata.get("name")
        if not name:
            raise DeployError("the manifest has no metadata.name")
        namespace = metadata.get("namespace") or self.namespace
        self._record("apply", name, namespace, manifest)
        if self.dry_run:
            return None
        from kubernetes.client.rest import ApiException

        for attempt in range(1, CONFLICT_RETRIES + 1):
            current = self.get(name, namespace, record=False)
            overwritten = rollout.check_foreign_changes(current, force)
            if overwritten:
                logger.warning(
                    "overwriting fields ctpipe owns that someone else changed (--force)",
                    extra={"isvc": f"{namespace}/{name}", "changes": [c.describe() for c in overwritten]},
                )
            body = rollout.merge(current, {**manifest, "metadata": {**metadata, "namespace": namespace}})
            try:
                written = self._write(body, name, namespace, create=current is None)
                stored = rollout.record(written, [path for path, _ in rollout.read_record(body) or []])
                if written["metadata"].get("annotations", {}).get(rollout.OWNED_ANNOTATION) != stored:
                    # The server defaulted some of ctpipe's fields: record them as stored, or the next
                    # write would take the defaults for someone else's change.
                    written["metadata"]["annotations"][rollout.OWNED_ANNOTATION] = stored
                    written["metadata"].pop("managedFields", None)
                    written = self._write(written, name, namespace, create=False)
                return written
            except ApiException as exc:
                if exc.status == 409 and attempt < CONFLICT_RETRIES:
                    logger.info(
                        "InferenceService changed while ctpipe wrote it; reading it again",
                        extra={"isvc": f"{namespace}/{name}", "attempt": attempt},
                    )
                    continue
                raise DeployError(
                    f"the cluster refused InferenceService {namespace}/{name}: HTTP {exc.status} {exc.reason}: "
                    f"{exc.body}"
                ) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _write(self, body: dict[str, Any], name: str, namespace: str, create: bool) -> dict[str, Any]:
        group, version, plural = self._api_coordinates()
        api = self.client.api_instance
        if create:
            return dict(
                api.create_namespaced_custom_object(
                    group, version, namespace, plural, body, field_manager=rollout.FIELD_MANAGER
                )
            )
        return dict(
            api.replace_namespaced_custom_object(
                group, version, namespace, plural, name, body, field_manager=rollout.FIELD_MANAGER
            )
        )

    def get(self, name: str, namespace: str | None = None, record: bool = True) -> dict[str, Any] | None:
        """The InferenceService, or None when it does not exist (always None in dry-run mode)."""
        namespace = namespace or self.namespace
        if record:
            self._record("get", name, namespace)
        if self.dry_run:
            return None
        from kubernetes.client.rest import ApiException

        group, version, plural = self._api_coordinates()
        try:
            return dict(self.client.api_instance.get_namespaced_custom_object(group, version, namespace, plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise DeployError(
                f"cannot read InferenceService {namespace}/{name}: HTTP {exc.status} {exc.reason}"
            ) from exc

    def delete(self, name: str, namespace: str | None = None) -> bool:
        """Delete the InferenceService.

        Returns:
            Whether something was deleted (False when it did not exist or in dry-run mode).
        """
        namespace = namespace or self.namespace
        self._record("delete", name, namespace)
        if self.dry_run:
            return False
        from kubernetes.client.rest import ApiException

        try:
            self.client.delete(name, namespace=namespace)
        except RuntimeError as exc:  # KServeClient wraps ApiException in RuntimeError
            cause = exc.__context__
            if isinstance(cause, ApiException) and cause.status == 404:
                return False
            raise DeployError(f"cannot delete InferenceService {namespace}/{name}: {exc}") from exc
        return True
