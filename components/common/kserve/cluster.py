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
from components.common.logs import get_logger

logger = get_logger("kserve")

Verb = Literal["apply", "get", "delete"]


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

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create the InferenceService, or replace it with this manifest when it exists.

        Returns:
            The object the API server returned; None in dry-run mode.

        Raises:
            DeployError: The manifest has no name, or the API server refused it.
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

        group, version, plural = self._api_coordinates()
        api = self.client.api_instance
        try:
            try:
                current = api.get_namespaced_custom_object(group, version, namespace, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return dict(api.create_namespaced_custom_object(group, version, namespace, plural, manifest))
            body = {**manifest, "metadata": {**metadata, "resourceVersion": current["metadata"]["resourceVersion"]}}
            return dict(api.replace_namespaced_custom_object(group, version, namespace, plural, name, body))
        except ApiException as exc:
            raise DeployError(
                f"the cluster refused InferenceService {namespace}/{name}: HTTP {exc.status} {exc.reason}: {exc.body}"
            ) from exc

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The InferenceService, or None when it does not exist (always None in dry-run mode)."""
        namespace = namespace or self.namespace
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
