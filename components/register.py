"""Register candidates in the MLflow model registry and move the ``champion`` alias safely.

Aliases, not stages (deprecated in MLflow 3), mark roles:

- ``challenger``: the newest blessed version, waiting for promotion (e.g. after a canary);
- ``champion``: the version that serves.

Safety rules:

- every version carries ``ctpipe.blessed`` (``true``/``false``) from the moment it is created,
  before any alias can point at it;
- only a blessed version gets ``challenger``, and ``promote`` refuses an unblessed version;
- each promotion pushes the previous champion onto a history kept in the registered-model
  tag ``ctpipe.champion_history`` (a JSON list of versions, oldest first), so ``rollback``
  can step back one promotion at a time.

Concurrent promotions of the same model are not serialised; the pipeline runs them one at a time.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel

from components.common import tracking
from components.common.errors import CtpipeError, ModelNotFound
from components.common.logs import get_logger
from components.train import quiet_mlflow

log = get_logger("register")

CHAMPION = "champion"
CHALLENGER = "challenger"
BLESSED_TAG = "ctpipe.blessed"
RUN_ID_TAG = "ctpipe.run_id"
#: Model-version tag: the champion version this version replaced when promoted ("" if none).
PREVIOUS_CHAMPION_TAG = "ctpipe.previous_champion"
#: Model-version tag set on a version that lost the champion alias through a rollback.
ROLLED_BACK_TAG = "ctpipe.rolled_back"
#: Registered-model tag: JSON list of previous champion versions, oldest first.
HISTORY_TAG = "ctpipe.champion_history"
_RESERVED_TAGS = (BLESSED_TAG, RUN_ID_TAG, PREVIOUS_CHAMPION_TAG, ROLLED_BACK_TAG)
_READY_TIMEOUT_SECONDS = 300


class ModelRef(BaseModel):
    """A registered model version found through an alias (``found`` False if there is none)."""

    name: str
    found: bool
    version: str | None = None
    model_uri: str | None = None
    run_id: str | None = None
    alias: str | None = None


class RegisterResult(BaseModel):
    """The version that holds a candidate, and the aliases it has after registration."""

    name: str
    version: str
    blessed: bool
    aliases: list[str]
    created: bool


class AliasChange(BaseModel):
    """Which version an alias pointed to before and after a promotion or rollback."""

    name: str
    alias: str
    previous: str | None
    current: str | None


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    quiet_mlflow()
    tracking.configure(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _registered_model(client: Any, model_name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise


def _aliases(client: Any, model_name: str) -> dict[str, str]:
    model = _registered_model(client, model_name)
    return {str(k): str(v) for k, v in (model.aliases or {}).items()} if model is not None else {}


def _version(client: Any, model_name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, version)
    except MlflowException as exc:
        if _is_missing(exc):
            raise ModelNotFound(f"model {model_name!r} has no version {version}") from exc
        raise


def _history(client: Any, model_name: str) -> list[str]:
    model = _registered_model(client, model_name)
    raw = (model.tags or {}).get(HISTORY_TAG) if model is not None else None
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CtpipeError(f"model {model_name!r}: tag {HISTORY_TAG} is not valid JSON: {raw!r}") from exc
    return [str(version) for version in history]


def _blessing(version: Any) -> str:
    return str((version.tags or {}).get(BLESSED_TAG, "missing"))


def resolve_alias(model_name: str, alias: str, tracking_uri: str) -> ModelRef:
    """Resolve ``alias`` of a registered model to a fixed version.

    Args:
        model_name: Registered model name.
        alias: Alias, e.g. ``champion``.
        tracking_uri: MLflow tracking (and registry) URI.

    Returns:
        The version with ``model_uri`` ``models:/NAME/VERSION``, or ``found=False`` when the
        model or the alias does not exist.
    """
    client = _client(tracking_uri)
    version = _aliases(client, model_name).get(alias)
    if version is None:
        return ModelRef(name=model_name, found=False, alias=alias)
    model_version = _version(client, model_name, version)
    return ModelRef(
        name=model_name,
        found=True,
        version=str(model_version.version),
        model_uri=f"models:/{model_name}/{model_version.version}",
        run_id=model_version.run_id,
        alias=alias,
    )


def _ensure_registered_model(client: Any, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    if _registered_model(client, model_name) is not None:
        return
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _existing_version(client: Any, model_name: str, run_id: str) -> Any | None:
    quoted_name = model_name.replace("'", "\\'")
    quoted_run = run_id.replace("'", "\\'")
    versions = client.search_model_versions(f"name='{quoted_name}' and run_id='{quoted_run}'")
    versions = [v for v in versions if v.name == model_name and v.run_id == run_id]
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _create_version(client: Any, model_uri: str, run_id: str, model_name: str, tags: dict[str, str]) -> Any:
    import mlflow
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if RunsArtifactRepository.is_runs_uri(model_uri):
        uri_run_id, _ = RunsArtifactRepository.parse_runs_uri(model_uri)
        if uri_run_id != run_id:
            raise CtpipeError(f"model URI {model_uri} belongs to run {uri_run_id}, not to run {run_id}")
        # MLflow resolves a runs:/ URI to the logged model it names.
        return mlflow.register_model(model_uri, model_name, tags=tags)
    model_id = None
    if model_uri.startswith("models:/m-") and "/" not in model_uri.removeprefix("models:/"):
        model_id = model_uri.removeprefix("models:/")
    return client.create_model_version(model_name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)


def _wait_ready(client: Any, model_name: str, version: str) -> Any:
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while True:
        model_version = client.get_model_version(model_name, version)
        if model_version.status == "READY":
            return model_version
        if model_version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise CtpipeError(
                f"model {model_name!r} version {version} is {model_version.status}: "
                f"{model_version.status_message or 'no message'}"
            )
        time.sleep(0.5)


def register(
    model_uri: str,
    run_id: str,
    model_name: str,
    blessed: bool,
    tracking_uri: str,
    lineage: dict[str, str] | None = None,
) -> RegisterResult:
    """Register a trained model (once per run) with lineage tags; a blessed one becomes ``challenger``.

    Idempotent: if a version from ``run_id`` exists it is reused (``created=False``) and its
    tags and alias are applied again. The blessing tag is written before any alias. An
    unblessed version gets no alias, and loses ``challenger`` if it had it.

    Args:
        model_uri: ``models:/m-...`` (as returned by ``train``) or ``runs:/RUN/model``.
        run_id: The training run.
        model_name: Registered model name, created if missing.
        blessed: The evaluation decision.
        tracking_uri: MLflow tracking (and registry) URI.
        lineage: Extra version tags: data snapshot hash, suite hash, config hash, pipeline run, git commit...

    Returns:
        The version, whether it was created now, and its aliases.

    Raises:
        CtpipeError: A lineage key collides with a ctpipe tag, the URI belongs to another run,
            registration failed, or an unblessed decision targets the serving champion.
    """
    lineage = {str(key): str(value) for key, value in (lineage or {}).items()}
    clashes = sorted(set(lineage) & set(_RESERVED_TAGS))
    if clashes:
        raise CtpipeError(f"lineage keys {clashes} are reserved for ctpipe's own version tags")
    tags = {**lineage, BLESSED_TAG: str(blessed).lower(), RUN_ID_TAG: run_id}

    client = _client(tracking_uri)
    _ensure_registered_model(client, model_name)
    existing = _existing_version(client, model_name, run_id)
    if existing is None:
        version = str(_create_version(client, model_uri, run_id, model_name, tags).version)
        created = True
    else:
        version = str(existing.version)
        created = False
        aliases = _aliases(client, model_name)
        if not blessed and aliases.get(CHAMPION) == version:
            raise CtpipeError(
                f"model {model_name!r} version {version} serves as {CHAMPION}; refusing to mark it unblessed in place",
                hint="Roll back or promote another version first.",
            )
        # The blessing tag first: no alias may ever point at a version without the current decision.
        client.set_model_version_tag(model_name, version, BLESSED_TAG, tags[BLESSED_TAG])
        for key, value in tags.items():
            if key != BLESSED_TAG:
                client.set_model_version_tag(model_name, version, key, value)
    _wait_ready(client, model_name, version)

    if blessed:
        client.set_registered_model_alias(model_name, CHALLENGER, version)
    elif _aliases(client, model_name).get(CHALLENGER) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    final_aliases = sorted(alias for alias, v in _aliases(client, model_name).items() if v == version)
    log.info(
        "registered",
        extra={
            "model": model_name,
            "version": version,
            "new_version": created,
            "blessed": blessed,
            "aliases": final_aliases,
        },
    )
    return RegisterResult(name=model_name, version=version, blessed=blessed, aliases=final_aliases, created=created)


def promote(model_name: str, tracking_uri: str, version: str | None = None) -> AliasChange:
    """Make a blessed version the ``champion``; by default the current ``challenger``.

    The replaced champion is recorded in the new version's ``ctpipe.previous_champion`` tag
    and pushed onto the model's ``ctpipe.champion_history`` before the alias moves. The
    ``challenger`` alias is removed when it pointed to the promoted version. Promoting the
    current champion again changes nothing.

    Args:
        model_name: Registered model name.
        tracking_uri: MLflow tracking (and registry) URI.
        version: Version to promote; defaults to the ``challenger``.

    Returns:
        The champion alias before and after.

    Raises:
        ModelNotFound: The model, version or challenger alias does not exist.
        CtpipeError: The version is not blessed.
    """
    client = _client(tracking_uri)
    if _registered_model(client, model_name) is None:
        raise ModelNotFound(f"no registered model named {model_name!r}")
    aliases = _aliases(client, model_name)
    if version is None:
        version = aliases.get(CHALLENGER)
        if version is None:
            raise ModelNotFound(
                f"model {model_name!r} has no {CHALLENGER} alias to promote",
                hint="Register a blessed version first, or pass the version explicitly.",
            )
    version = str(version)
    model_version = _version(client, model_name, version)
    if _blessing(model_version) != "true":
        raise CtpipeError(
            f"refusing to make model {model_name!r} version {version} {CHAMPION}: "
            f"its {BLESSED_TAG} tag is {_blessing(model_version)!r}, not 'true'",
            hint="Only versions that passed evaluation can serve; retrain or promote a blessed version.",
        )
    previous = aliases.get(CHAMPION)
    if previous != version:
        client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, previous or "")
        if previous is not None:
            history = _history(client, model_name)
            client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps([*history, previous]))
        client.set_registered_model_alias(model_name, CHAMPION, version)
    if aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    log.info("promoted", extra={"model": model_name, "previous": previous, "current": version})
    return AliasChange(name=model_name, alias=CHAMPION, previous=previous, current=version)


def rollback(model_name: str, tracking_uri: str) -> AliasChange:
    """Point ``champion`` back at the version it had before the last promotion.

    Steps back one promotion per call, so two rollbacks undo two promotions. History entries
    equal to the current champion (left by an interrupted promotion) or whose version was
    deleted are skipped. The demoted version gets the tag ``ctpipe.rolled_back=true``.

    Args:
        model_name: Registered model name.
        tracking_uri: MLflow tracking (and registry) URI.

    Returns:
        The champion alias before and after.

    Raises:
        ModelNotFound: The model has no champion, or no previous champion is recorded.
    """
    client = _client(tracking_uri)
    if _registered_model(client, model_name) is None:
        raise ModelNotFound(f"no registered model named {model_name!r}")
    current = _aliases(client, model_name).get(CHAMPION)
    if current is None:
        raise ModelNotFound(f"model {model_name!r} has no {CHAMPION} alias, so there is nothing to roll back")
    history = _history(client, model_name)
    target: str | None = None
    while history and target is None:
        candidate = history.pop()
        if candidate == current:
            continue
        try:
            _version(client, model_name, candidate)
        except ModelNotFound:
            log.warning(
                "skipping deleted version in champion history", extra={"model": model_name, "version": candidate}
            )
            continue
        target = candidate
    if target is None:
        raise ModelNotFound(
            f"model {model_name!r}: no previous {CHAMPION} is recorded to roll back to "
            f"(the {CHAMPION} is version {current})",
            hint="Promote an earlier version explicitly with promote(..., version=...).",
        )
    # Alias first: if the history write is lost, the next rollback skips the entry equal to the champion.
    client.set_registered_model_alias(model_name, CHAMPION, target)
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(model_name, current, ROLLED_BACK_TAG, "true")
    log.info("rolled back", extra={"model": model_name, "previous": current, "current": target})
    return AliasChange(name=model_name, alias=CHAMPION, previous=current, current=target)
