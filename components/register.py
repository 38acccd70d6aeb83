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

Registry writes are safe against races and crashes:

- every alias move (``register``'s challenger, ``promote``, ``rollback``) happens under a
  registry lock: a registered model ``<name>.ctpipe-lock`` whose creation is atomic in every
  MLflow backend (sqlite, PostgreSQL behind a server), so two training runs cannot interleave
  their read-check-write of the aliases. A lock left by a crashed holder is broken when its
  process is gone (same host) or after ``LOCK_STALE_SECONDS``;
- under the lock an alias is only pointed at a version that the registry itself reports as
  ``READY`` and tagged ``ctpipe.blessed=true`` (re-read, not taken from the caller), and
  ``challenger`` never moves back to an older version than the blessed one it holds, so
  racing registrations end with the newest blessed candidate as challenger;
- writes are ordered so that a crash between any two of them leaves no alias on an
  unblessed version: a new version is created with its blessing tag in the same call; an
  alias is removed before its version is marked unblessed, and set only after it is marked
  blessed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, Field

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
# Lineage tags the training pipeline writes on every version (pipelines/kfp_components.register).
PIPELINE_RUN_TAG = "pipeline_run"
DATA_SNAPSHOT_TAG = "data_snapshot"
SUITE_HASH_TAG = "suite_hash"
CONFIG_HASH_TAG = "config_hash"
CODE_VERSION_TAG = "code_version"
#: Suffix of the registered model that serves as the registry lock of a model.
LOCK_SUFFIX = ".ctpipe-lock"
_LOCK_HOLDER_TAG = "ctpipe.lock_holder"
_LOCK_SINCE_TAG = "ctpipe.lock_acquired_at"
#: A lock held longer than this is considered left behind by a crash and broken.
LOCK_STALE_SECONDS = 120.0
#: How long a writer waits for the lock before giving up.
LOCK_WAIT_SECONDS = 300.0


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
    quiet_mlflow()
    return tracking.registry_client(tracking_uri)


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


def _holder_alive(holder: str) -> bool:
    """False only when the holder ran on this host and its process is gone."""
    host, _, rest = holder.partition("|")
    pid_text = rest.partition("|")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _break_if_stale(client: Any, lock_name: str) -> None:
    from mlflow.exceptions import MlflowException

    lock = _registered_model(client, lock_name)
    if lock is None:
        return
    tags = lock.tags or {}
    holder = tags.get(_LOCK_HOLDER_TAG, "")
    try:
        age = time.time() - float(tags.get(_LOCK_SINCE_TAG, "0"))
    except ValueError:
        age = LOCK_STALE_SECONDS + 1
    if age <= LOCK_STALE_SECONDS and _holder_alive(holder):
        return
    log.warning("breaking a stale registry lock", extra={"lock": lock_name, "holder": holder, "age": round(age, 1)})
    try:
        client.delete_registered_model(lock_name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise


@contextlib.contextmanager
def registry_lock(client: Any, model_name: str, wait_seconds: float | None = None) -> Iterator[str]:
    """Hold the registry lock of ``model_name`` (the registered model ``<name>.ctpipe-lock``).

    Creating a registered model fails for the second of two creators in every MLflow backend,
    which makes it a lock that works the same on sqlite and on a tracking server.

    Args:
        client: An ``MlflowClient``.
        model_name: The model whose aliases are about to change.
        wait_seconds: Give up after this long; default ``LOCK_WAIT_SECONDS``.

    Yields:
        The holder id written on the lock.

    Raises:
        CtpipeError: The lock stayed taken for ``wait_seconds``.
    """
    from mlflow.exceptions import MlflowException

    lock_name = f"{model_name}{LOCK_SUFFIX}"
    holder = f"{socket.gethostname()}|{os.getpid()}|{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + (LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds)
    while True:
        try:
            client.create_registered_model(
                lock_name,
                tags={_LOCK_HOLDER_TAG: holder, _LOCK_SINCE_TAG: f"{time.time():.3f}"},
                description=f"ctpipe registry lock of {model_name!r} (not a model; deleted when released)",
            )
            break
        except MlflowException as exc:
            # "Not found" from a create: the insert clashed with the holder's lock, which was released
            # before MLflow's store read it back to report the clash. Taken either way: retry.
            taken = getattr(exc, "error_code", "") in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
            if not taken and not _is_missing(exc):
                raise
        _break_if_stale(client, lock_name)
        if time.monotonic() > deadline:
            raise CtpipeError(
                f"registry lock {lock_name!r} stayed taken for {wait_seconds or LOCK_WAIT_SECONDS:.0f}s",
                hint="Another training run or promotion is writing; if none is, delete that registered model.",
            )
        time.sleep(random.uniform(0.05, 0.25))
    try:
        yield holder
    finally:
        lock = _registered_model(client, lock_name)
        # Never release a lock someone else took after breaking ours as stale.
        if lock is not None and (lock.tags or {}).get(_LOCK_HOLDER_TAG) == holder:
            try:
                client.delete_registered_model(lock_name)
            except MlflowException as exc:
                if not _is_missing(exc):
                    raise


def _set_alias(client: Any, model_name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``, which the registry must report READY and blessed right now."""
    current = _version(client, model_name, version)
    if current.status != "READY" or _blessing(current) != "true":
        raise CtpipeError(
            f"refusing to point {model_name}@{alias} at version {version}: it is {current.status} "
            f"with {BLESSED_TAG}={_blessing(current)!r}"
        )
    client.set_registered_model_alias(model_name, alias, version)


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
    tags and alias are applied again. A new version is created with its blessing tag in the
    same call; the alias moves under the registry lock, only after the registry reports the
    version READY and blessed. An unblessed version gets no alias, and loses ``challenger``
    (before its tag changes) if it had it. ``challenger`` is not moved back to an older
    version than the blessed one it holds: of racing registrations, the newest wins.

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
    blessing = str(blessed).lower()
    tags = {**lineage, BLESSED_TAG: blessing, RUN_ID_TAG: run_id}

    client = _client(tracking_uri)
    _ensure_registered_model(client, model_name)
    existing = _existing_version(client, model_name, run_id)
    if existing is None:
        version = str(_create_version(client, model_uri, run_id, model_name, tags).version)
        created = True
    else:
        version = str(existing.version)
        created = False
        for key, value in tags.items():
            if key != BLESSED_TAG:
                client.set_model_version_tag(model_name, version, key, value)
        if blessed:
            # Blessed first, alias after (below): no alias ever sees a stale "false".
            client.set_model_version_tag(model_name, version, BLESSED_TAG, blessing)
    _wait_ready(client, model_name, version)

    with registry_lock(client, model_name):
        aliases = _aliases(client, model_name)
        if blessed:
            holder = aliases.get(CHALLENGER)
            if (
                holder is not None
                and int(holder) > int(version)
                and _blessing(_version(client, model_name, holder)) == "true"
            ):
                log.info(
                    "a newer blessed challenger is waiting; leaving it",
                    extra={"model": model_name, "version": version, "challenger": holder},
                )
            else:
                _set_alias(client, model_name, CHALLENGER, version)
        elif not created:
            if aliases.get(CHAMPION) == version:
                raise CtpipeError(
                    f"model {model_name!r} version {version} serves as {CHAMPION}; "
                    "refusing to mark it unblessed in place",
                    hint="Roll back or promote another version first.",
                )
            # Alias off first, then the tag: a crash in between leaves a blessed version without alias.
            if aliases.get(CHALLENGER) == version:
                client.delete_registered_model_alias(model_name, CHALLENGER)
            client.set_model_version_tag(model_name, version, BLESSED_TAG, blessing)
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
    with registry_lock(client, model_name):
        return _promote_locked(client, model_name, version)


def _promote_locked(client: Any, model_name: str, version: str | None) -> AliasChange:
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
        _set_alias(client, model_name, CHAMPION, version)
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
    with registry_lock(client, model_name):
        return _rollback_locked(client, model_name)


def _rollback_locked(client: Any, model_name: str) -> AliasChange:
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
    _set_alias(client, model_name, CHAMPION, target)
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(model_name, current, ROLLED_BACK_TAG, "true")
    log.info("rolled back", extra={"model": model_name, "previous": current, "current": target})
    return AliasChange(name=model_name, alias=CHAMPION, previous=current, current=target)


class LineageLink(BaseModel):
    """One link of a model version's lineage: what it is, its id, and what is known about it."""

    kind: str = Field(description="model, run, data snapshot, suite or config.")
    id: str | None = Field(description="Its identifier (version, run id, content hash); None when not recorded.")
    details: dict[str, str] = Field(default_factory=dict)


class Lineage(BaseModel):
    """The chain model ← run ← data snapshot ← suite ← config of one registered version."""

    name: str
    version: str
    chain: list[LineageLink]

    def text(self) -> str:
        """The chain as indented lines, one link per line, for the terminal."""
        lines = []
        for depth, link in enumerate(self.chain):
            arrow = "" if depth == 0 else "  " * (depth - 1) + "← "
            details = ", ".join(f"{key}={value}" for key, value in link.details.items())
            lines.append(f"{arrow}{link.kind} {link.id or 'unknown'}" + (f" ({details})" if details else ""))
        return "\n".join(lines)


def lineage(model_name: str, version: str, tracking_uri: str) -> Lineage:
    """Trace a registered version back to its training run, data snapshot, suite and config.

    Reads only the registry and the run: the version's lineage tags (written by the training
    pipeline's register step) and the run's own tags, params and metrics (written by ``train``).

    Args:
        model_name: Registered model name.
        version: Version number.
        tracking_uri: MLflow tracking (and registry) URI.

    Returns:
        The chain, model first; an id is None when it was not recorded.

    Raises:
        ModelNotFound: The model or version does not exist.
    """
    from mlflow.exceptions import MlflowException

    from components.train import FEATURES_TAG, TRAINING_SET_HASH_TAG
    from components.train import SUITE_HASH_TAG as RUN_SUITE_HASH_TAG

    client = _client(tracking_uri)
    if _registered_model(client, model_name) is None:
        raise ModelNotFound(f"no registered model named {model_name!r}")
    model_version = _version(client, model_name, str(version))
    tags = dict(model_version.tags or {})
    aliases = sorted(alias for alias, v in _aliases(client, model_name).items() if v == str(model_version.version))
    model_details = {
        "blessed": tags.get(BLESSED_TAG, "missing"),
        "aliases": ",".join(aliases) or "none",
        "status": str(model_version.status),
        "source": str(model_version.source),
    }
    if tags.get(PREVIOUS_CHAMPION_TAG):
        model_details["replaced_champion"] = tags[PREVIOUS_CHAMPION_TAG]
    run_id = model_version.run_id or tags.get(RUN_ID_TAG)
    run_tags: dict[str, str] = {}
    run_details: dict[str, str] = {}
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if not _is_missing(exc):
                raise
            run_details["missing"] = "the run was deleted"
        else:
            run_tags = dict(run.data.tags or {})
            run_details["experiment"] = str(run.info.experiment_id)
            for key in ("estimator", "random_seed", "train_rows", "eval_rows"):
                if key in run.data.params:
                    run_details[key] = run.data.params[key]
            for key in sorted(run.data.metrics):
                if key != "log_model_seconds":
                    run_details[key] = f"{run.data.metrics[key]:.4g}"
            if FEATURES_TAG in run_tags:
                run_details["features"] = ",".join(json.loads(run_tags[FEATURES_TAG]))

    def tag(key: str) -> str | None:
        return tags.get(key) or run_tags.get(key) or None

    data_details = {"training_set_sha256": run_tags[TRAINING_SET_HASH_TAG]} if TRAINING_SET_HASH_TAG in run_tags else {}
    suite_details = {"file_sha256": run_tags[RUN_SUITE_HASH_TAG]} if RUN_SUITE_HASH_TAG in run_tags else {}
    if run_id and RUN_SUITE_HASH_TAG in run_tags:
        suite_details["artifact"] = f"runs:/{run_id}/{tracking.SUITE_ARTIFACT}"
    config_details = {
        "code_version": tag(CODE_VERSION_TAG) or "unknown",
        "pipeline_run": tag(PIPELINE_RUN_TAG) or "unknown",
    }
    chain = [
        LineageLink(kind="model", id=f"{model_name}/{model_version.version}", details=model_details),
        LineageLink(kind="run", id=run_id, details=run_details),
        LineageLink(kind="data snapshot", id=tag(DATA_SNAPSHOT_TAG), details=data_details),
        LineageLink(kind="suite", id=tag(SUITE_HASH_TAG), details=suite_details),
        LineageLink(kind="config", id=tag(CONFIG_HASH_TAG), details=config_details),
    ]
    return Lineage(name=model_name, version=str(model_version.version), chain=chain)
