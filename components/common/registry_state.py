"""One registered model's registry state, read once per run and handed from step to step.

Why: on a re-run with unchanged data and config, the side-effect steps (``register``,
``infra_validate``, ``deploy``) have nothing to do, yet each is a kfp.local subprocess, and reading
the registry costs importing MLflow and opening its store, seconds per task. ``current_champion``
reads the registry anyway, so it reads this state once and passes it on as a JSON parameter:

- each step decides from it, without MLflow, whether it has anything to do (an idempotent skip,
  logged with :func:`components.common.skips.log_skip`);
- ``register`` and ``infra_validate`` take it as an input, so the pipeline cache key changes exactly
  when the registry changes, and on a registry nobody touched they are cache hits.

A step that changed the registry hands the state it left on (read again), so the next step decides
on what is there now.

``digest`` covers the whole state of the model: its tags and aliases and every version's status,
source, run, timestamps and tags. ``versions`` details only the versions a skip can be about (those
an alias or the canary points at, and the newest :data:`DETAIL_VERSIONS`), so the parameter stays
small however many versions the model has; a step whose version is not detailed does its full work.

Cache soundness: a cached step may be replayed only where running it would change nothing. A
cacheable step that did more than skip writes a fresh :data:`EPOCH_TAG` before it finishes, so the
state its cache entry is keyed on cannot recur; only entries of idempotent skips are ever replayed.
The state is read when the run starts, seconds before a re-run's steps use it; a writer in between
is seen by the next run, as with the champion version that evaluation is keyed on.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from components.common import tracking
from components.common.registry import CANARY_VERSION_TAG, registered_model

#: Registered-model tag a cacheable step renews whenever it changed the registry (see the module docstring).
EPOCH_TAG = "ctpipe.registry_epoch"
#: How many of the newest versions are detailed, besides those an alias or the canary points at.
DETAIL_VERSIONS = 10


class VersionState(BaseModel):
    """What the skip checks read of one model version."""

    version: str
    status: str
    run_id: str
    model_id: str = Field(description="The logged model behind the version (m-...); empty when it has none.")
    first_of_run: bool = Field(description="Whether no older version of the model comes from the same run.")
    tags: dict[str, str] = Field(default_factory=dict)


class RegistryState(BaseModel):
    """A registered model as the registry had it at one moment (``exists`` False: no such model)."""

    model_name: str
    exists: bool
    digest: str
    aliases: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    versions: dict[str, VersionState] = Field(default_factory=dict, description="Detailed versions, by number.")

    def to_json(self) -> str:
        """The JSON parameter the pipeline passes between tasks (sorted, so equal states give equal text)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, model_name: str) -> RegistryState | None:
        """The state a task received, or None when there is none (``""``) or it is for another model.

        None means "not known": the step does its full work, so a malformed or foreign parameter
        can make a run slower but never skip something.
        """
        if not text:
            return None
        try:
            state = cls.model_validate_json(text)
        except ValidationError:
            return None
        return state if state.model_name == model_name else None

    def version(self, version: str) -> VersionState | None:
        """A detailed version, None when the state does not detail it."""
        return self.versions.get(str(version))


def _model_id(model_version: Any) -> str:
    """The logged model behind a version (MLflow 3), empty when it has none."""
    return tracking._logged_model_id(model_version) or ""


def _all_versions(client: Any, model_name: str) -> list[Any]:
    quoted = model_name.replace("'", "\\'")
    found: list[Any] = []
    token = None
    while True:
        page = client.search_model_versions(f"name='{quoted}'", page_token=token)
        found.extend(v for v in page if v.name == model_name)
        token = getattr(page, "token", None)
        if not token:
            return found


def _digest(model: Any, versions: list[Any]) -> str:
    payload = {
        "name": model.name,
        "created": model.creation_timestamp,
        "updated": model.last_updated_timestamp,
        "tags": dict(model.tags or {}),
        "aliases": {str(k): str(v) for k, v in (model.aliases or {}).items()},
        "versions": [
            {
                "version": str(v.version),
                "status": str(v.status),
                "run_id": v.run_id or "",
                "source": str(v.source or ""),
                "model_id": _model_id(v),
                "created": v.creation_timestamp,
                "updated": v.last_updated_timestamp,
                "tags": dict(v.tags or {}),
            }
            for v in sorted(versions, key=lambda v: int(v.version))
        ],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_state(model_name: str, tracking_uri: str) -> RegistryState:
    """Read a registered model's state from the registry of ``tracking_uri`` (MLflow is imported here).

    Args:
        model_name: Registered model name.
        tracking_uri: MLflow tracking (and registry) URI.

    Returns:
        The state; ``exists`` is False when the model is not registered.
    """
    client = tracking.registry_client(tracking_uri)
    model = registered_model(client, model_name)
    if model is None:
        return RegistryState(model_name=model_name, exists=False, digest="absent")
    versions = _all_versions(client, model_name)
    aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
    tags = {str(k): str(v) for k, v in (model.tags or {}).items()}
    first: dict[str, int] = {}
    for v in versions:
        if v.run_id:
            first[v.run_id] = min(first.get(v.run_id, int(v.version)), int(v.version))
    wanted = set(aliases.values()) | ({tags[CANARY_VERSION_TAG]} if tags.get(CANARY_VERSION_TAG) else set())
    newest = sorted(versions, key=lambda v: int(v.version), reverse=True)[:DETAIL_VERSIONS]
    wanted |= {str(v.version) for v in newest}
    detail = {
        str(v.version): VersionState(
            version=str(v.version),
            status=str(v.status),
            run_id=v.run_id or "",
            model_id=_model_id(v),
            first_of_run=bool(v.run_id) and first[v.run_id] == int(v.version),
            tags={str(k): str(value) for k, value in (v.tags or {}).items()},
        )
        for v in versions
        if str(v.version) in wanted
    }
    return RegistryState(
        model_name=model_name,
        exists=True,
        digest=_digest(model, versions),
        aliases=aliases,
        tags=tags,
        versions=detail,
    )


def renew_epoch(client: Any, model_name: str) -> None:
    """Write a fresh :data:`EPOCH_TAG`: the state a cached step was keyed on before this change never recurs."""
    client.set_registered_model_tag(model_name, EPOCH_TAG, uuid.uuid4().hex)
