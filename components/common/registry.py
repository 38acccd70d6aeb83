"""The model registry's conventions, and the alias moves that must follow them.

One place for every name ctpipe writes into the MLflow registry (aliases, tags) and for the
operations that move aliases safely. The steps (register, deploy, canary analysis), the CLI
and the model server all read these names from here.

Aliases, not stages (deprecated in MLflow 3), mark roles:

- ``challenger``: the newest blessed version, waiting for promotion (e.g. after a canary);
- ``champion``: the version that serves.

These two are prod's. The environments dev and staging have their own pair of aliases on the same
model (``staging-champion``, ``staging-challenger``, ...), moved by ``ctpipe promote --to ENV``
through a gate: :mod:`components.common.environments`.

Safety rules:

- every version carries ``ctpipe.blessed`` (``true``/``false``) from the moment it is created,
  before any alias can point at it;
- only a blessed version gets ``challenger``, and ``promote`` refuses an unblessed version;
- each promotion pushes the previous champion onto a history kept in the registered-model
  tag ``ctpipe.champion_history`` (a JSON list of versions, oldest first), so ``rollback``
  can step back one promotion at a time.

Registry writes are safe against races and crashes:

- every alias move (``register``'s challenger, ``promote``, ``rollback``, closing a canary with
  ``close_canary``) and every traffic change (``set_traffic``) happens under the registry lock
  (:mod:`components.common.registry_lease`), a lease one writer at a time holds, so two writers
  cannot interleave their read-check-write of the aliases;
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

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from components.common import tracking
from components.common.errors import CtpipeError, DeployError, ModelNotFound
from components.common.logs import get_logger
from components.common.registry_lease import RegistryLock, is_missing, registered_model, registry_lock

log = get_logger("registry")

# --- Aliases ------------------------------------------------------------------------------------
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"

# --- Registered-model tags ----------------------------------------------------------------------
#: The share of requests (0-100) the challenger gets; absent means 0.
CANARY_TAG = "ctpipe.canary_percent"
#: The challenger version the canary percent was set for. When the challenger alias moves to
#: another version, the old percent does not apply to it (it gets 0) until deploy opens traffic for it.
CANARY_VERSION_TAG = "ctpipe.canary_version"
#: JSON list of previous champion versions, oldest first.
HISTORY_TAG = "ctpipe.champion_history"
#: Blue-green rollout: the version that takes all traffic. The server sends everything to the
#: challenger only while this names it and the challenger is infra-blessed; else to the champion.
LIVE_VERSION_TAG = "ctpipe.live_version"

# --- Model-version tags -------------------------------------------------------------------------
BLESSED_TAG = "ctpipe.blessed"
RUN_ID_TAG = "ctpipe.run_id"
#: The champion version this version replaced when promoted ("" if none).
PREVIOUS_CHAMPION_TAG = "ctpipe.previous_champion"
#: Set on a version that lost the champion alias through a rollback.
ROLLED_BACK_TAG = "ctpipe.rolled_back"
#: ``true``/``false``: whether the version served requests in a sandbox server (infra validation).
INFRA_BLESSED_TAG = "ctpipe.infra_blessed"
#: The canary analysis decision on a challenger, and why.
CANARY_DECISION_TAG = "ctpipe.canary_decision"
CANARY_REASON_TAG = "ctpipe.canary_reason"
#: ONNX compilation of the version (``components.register``): ``compiled``, or ``unsupported: <reason>``.
ONNX_TAG = "ctpipe.onnx"
#: SHA-256 of the version's ONNX file; the file is checked against it before it is loaded.
ONNX_SHA256_TAG = "ctpipe.onnx_sha256"
#: What the model server scores the version with: ``onnx`` (parity proven by infra validation) or ``sklearn``.
SERVING_RUNTIME_TAG = "ctpipe.serving_runtime"
#: Infra validation's ONNX parity verdict in one line with figures: ``passed: ...``, ``failed: ...``, ``no ONNX: ...``.
ONNX_PARITY_TAG = "ctpipe.onnx_parity"
#: JSON ``{"metrics": {name: value}, "rows": n}``: what evaluation measured on the version's holdout; the
#: monitor's baseline for live performance (:mod:`components.common.baseline`).
HOLDOUT_METRICS_TAG = "ctpipe.holdout_metrics"
#: File name of the compiled model among the logged model's artifacts (downloaded with ``models:/NAME/VERSION``).
ONNX_ARTIFACT = "model.onnx"
#: Tags only ctpipe writes; a caller's lineage may not use them.
RESERVED_TAGS = (
    BLESSED_TAG,
    RUN_ID_TAG,
    PREVIOUS_CHAMPION_TAG,
    ROLLED_BACK_TAG,
    ONNX_TAG,
    ONNX_SHA256_TAG,
    SERVING_RUNTIME_TAG,
    ONNX_PARITY_TAG,
    HOLDOUT_METRICS_TAG,
)

# --- Lineage tags: on the training run (written by train) and on the version (by register) --------
PIPELINE_RUN_TAG = "pipeline_run"
DATA_SNAPSHOT_TAG = "data_snapshot"
CONFIG_HASH_TAG = "config_hash"
CODE_VERSION_TAG = "code_version"
#: The content hash of the expectation suite the training data passed (``suite_hash`` of the suite).
SUITE_HASH_TAG = "ctpipe.suite_hash"
#: Names the suite hash had before it was one tag: ``suite_hash`` on versions (the content hash)
#: and ``ctpipe.suite_sha256`` on runs (the suite file's SHA-256). Read, never written.
LEGACY_SUITE_HASH_TAGS = ("suite_hash", "ctpipe.suite_sha256")
#: JSON list of the feature columns the model was trained on (run tag).
FEATURES_TAG = "ctpipe.features"
#: SHA-256 of the training set's content (run tag).
TRAINING_SET_HASH_TAG = "ctpipe.training_set_sha256"

# --- Model server ---------------------------------------------------------------------------------
#: JSON route of the model server that reports what it serves.
STATUS_ROUTE = "/ctpipe/status"


def redact_uri(uri: str) -> str:
    """A tracking or registry URI safe to log or report (no password, no query): :func:`storage.redact`."""
    # Imported here: storage imports pandas, which the steps that only read the registry do not need.
    from components.common import storage

    return storage.redact(uri)


def lineage_tags(lineage: Mapping[str, Any], snapshot_hash: str, suite_hash: str) -> dict[str, str]:
    """The lineage tags the training pipeline writes on the training run and on its registered version.

    Args:
        lineage: Tags every run of the pipeline carries (config hash, code version).
        snapshot_hash: Content hash of the data snapshot trained on.
        suite_hash: Content hash of the expectation suite that data passed.
    """
    return {
        **{str(key): str(value) for key, value in lineage.items()},
        DATA_SNAPSHOT_TAG: snapshot_hash,
        SUITE_HASH_TAG: suite_hash,
    }


def suite_hash_of(tags: Mapping[str, str]) -> str | None:
    """The suite hash recorded in run or version ``tags``, under its name or a legacy one."""
    for key in (SUITE_HASH_TAG, *LEGACY_SUITE_HASH_TAGS):
        if tags.get(key):
            return tags[key]
    return None


class ModelRef(BaseModel):
    """A registered model version found through an alias (``found`` False if there is none)."""

    name: str
    found: bool
    version: str | None = None
    model_uri: str | None = None
    run_id: str | None = None
    alias: str | None = None


class AliasChange(BaseModel):
    """Which version an alias pointed to before and after a promotion or rollback."""

    name: str
    alias: str
    previous: str | None
    current: str | None


def aliases_of(client: Any, model_name: str) -> dict[str, str]:
    """Alias -> version of a registered model; empty when the model does not exist."""
    model = registered_model(client, model_name)
    return {str(k): str(v) for k, v in (model.aliases or {}).items()} if model is not None else {}


def get_version(client: Any, model_name: str, version: str) -> Any:
    """A model version.

    Raises:
        ModelNotFound: The version does not exist.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, version)
    except MlflowException as exc:
        if is_missing(exc):
            raise ModelNotFound(f"model {model_name!r} has no version {version}") from exc
        raise


def _history(client: Any, model_name: str) -> list[str]:
    model = registered_model(client, model_name)
    raw = (model.tags or {}).get(HISTORY_TAG) if model is not None else None
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CtpipeError(f"model {model_name!r}: tag {HISTORY_TAG} is not valid JSON: {raw!r}") from exc
    return [str(version) for version in history]


def blessing(version: Any) -> str:
    """A version's ``ctpipe.blessed`` tag: ``true``, ``false`` or ``missing``."""
    return str((version.tags or {}).get(BLESSED_TAG, "missing"))


def set_alias(client: Any, model_name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``, which the registry must report READY and blessed right now."""
    current = get_version(client, model_name, version)
    if current.status != "READY" or blessing(current) != "true":
        raise CtpipeError(
            f"refusing to point {model_name}@{alias} at version {version}: it is {current.status} "
            f"with {BLESSED_TAG}={blessing(current)!r}"
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
    client = tracking.registry_client(tracking_uri)
    version = aliases_of(client, model_name).get(alias)
    if version is None:
        return ModelRef(name=model_name, found=False, alias=alias)
    model_version = get_version(client, model_name, version)
    return ModelRef(
        name=model_name,
        found=True,
        version=str(model_version.version),
        model_uri=f"models:/{model_name}/{model_version.version}",
        run_id=model_version.run_id,
        alias=alias,
    )


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
    client = tracking.registry_client(tracking_uri)
    if registered_model(client, model_name) is None:
        raise ModelNotFound(f"no registered model named {model_name!r}")
    with registry_lock(client, model_name) as lock:
        return _promote_locked(client, model_name, version, lock)


def _check(lock: RegistryLock | None) -> None:
    if lock is not None:
        lock.check()


def _promote_locked(client: Any, model_name: str, version: str | None, lock: RegistryLock | None = None) -> AliasChange:
    aliases = aliases_of(client, model_name)
    if version is None:
        version = aliases.get(CHALLENGER_ALIAS)
        if version is None:
            raise ModelNotFound(
                f"model {model_name!r} has no {CHALLENGER_ALIAS} alias to promote",
                hint="Register a blessed version first, or pass the version explicitly.",
            )
    version = str(version)
    model_version = get_version(client, model_name, version)
    if blessing(model_version) != "true":
        raise CtpipeError(
            f"refusing to make model {model_name!r} version {version} {CHAMPION_ALIAS}: "
            f"its {BLESSED_TAG} tag is {blessing(model_version)!r}, not 'true'",
            hint="Only versions that passed evaluation can serve; retrain or promote a blessed version.",
        )
    previous = aliases.get(CHAMPION_ALIAS)
    if previous != version:
        _check(lock)
        client.set_model_version_tag(model_name, version, PREVIOUS_CHAMPION_TAG, previous or "")
        if previous is not None:
            history = _history(client, model_name)
            client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps([*history, previous]))
        _check(lock)
        set_alias(client, model_name, CHAMPION_ALIAS, version)
    if aliases.get(CHALLENGER_ALIAS) == version:
        _check(lock)
        client.delete_registered_model_alias(model_name, CHALLENGER_ALIAS)
    log.info("promoted", extra={"model": model_name, "previous": previous, "current": version})
    return AliasChange(name=model_name, alias=CHAMPION_ALIAS, previous=previous, current=version)


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
    client = tracking.registry_client(tracking_uri)
    if registered_model(client, model_name) is None:
        raise ModelNotFound(f"no registered model named {model_name!r}")
    with registry_lock(client, model_name) as lock:
        return _rollback_locked(client, model_name, lock)


def _rollback_locked(client: Any, model_name: str, lock: RegistryLock | None = None) -> AliasChange:
    current = aliases_of(client, model_name).get(CHAMPION_ALIAS)
    if current is None:
        raise ModelNotFound(f"model {model_name!r} has no {CHAMPION_ALIAS} alias, so there is nothing to roll back")
    history = _history(client, model_name)
    target: str | None = None
    while history and target is None:
        candidate = history.pop()
        if candidate == current:
            continue
        try:
            get_version(client, model_name, candidate)
        except ModelNotFound:
            log.warning(
                "skipping deleted version in champion history", extra={"model": model_name, "version": candidate}
            )
            continue
        target = candidate
    if target is None:
        raise ModelNotFound(
            f"model {model_name!r}: no previous {CHAMPION_ALIAS} is recorded to roll back to "
            f"(the {CHAMPION_ALIAS} is version {current})",
            hint="Promote an earlier version explicitly with promote(..., version=...).",
        )
    # Alias first: if the history write is lost, the next rollback skips the entry equal to the champion.
    _check(lock)
    set_alias(client, model_name, CHAMPION_ALIAS, target)
    client.set_registered_model_tag(model_name, HISTORY_TAG, json.dumps(history))
    client.set_model_version_tag(model_name, current, ROLLED_BACK_TAG, "true")
    log.info("rolled back", extra={"model": model_name, "previous": current, "current": target})
    return AliasChange(name=model_name, alias=CHAMPION_ALIAS, previous=current, current=target)


def require_registered_model(client: Any, model_name: str, tracking_uri: str) -> Any:
    """The registered model, for callers that cannot go on without it.

    Raises:
        ModelNotFound: It does not exist.
        DeployError: The registry could not be read.
    """
    from mlflow.exceptions import MlflowException

    try:
        found = registered_model(client, model_name)
    except MlflowException as exc:
        raise DeployError(
            f"cannot read registered model {model_name!r} from {redact_uri(tracking_uri)}: {exc}"
        ) from exc
    if found is None:
        raise ModelNotFound(f"registered model {model_name!r} does not exist in {redact_uri(tracking_uri)}")
    return found


def set_traffic(model_name: str, tracking_uri: str, canary_percent: int) -> None:
    """Set the share of requests the current challenger gets (0 gives the champion everything).

    The percent is bound to the version behind ``challenger`` now, so a later challenger does
    not inherit it; the model server applies the change within one poll interval.

    Args:
        model_name: Registered model name.
        tracking_uri: MLflow tracking/registry URI.
        canary_percent: 0-100.

    Raises:
        DeployError: The percent is outside 0-100.
        ModelNotFound: The registered model does not exist.
    """
    if isinstance(canary_percent, bool) or not isinstance(canary_percent, int) or not 0 <= canary_percent <= 100:
        raise DeployError(f"canary_percent must be an integer between 0 and 100, got {canary_percent!r}")
    client = tracking.registry_client(tracking_uri)
    require_registered_model(client, model_name, tracking_uri)
    with registry_lock(client, model_name) as lock:
        challenger = _set_traffic_locked(client, model_name, tracking_uri, canary_percent, lock)
    log.info("traffic set", extra={"model": model_name, "challenger": challenger, "canary_percent": canary_percent})


def _set_traffic_locked(
    client: Any, model_name: str, tracking_uri: str, canary_percent: int, lock: RegistryLock | None
) -> str | None:
    """:func:`set_traffic` under the registry lock; returns the challenger the percent is bound to."""
    registered = require_registered_model(client, model_name, tracking_uri)
    challenger = (registered.aliases or {}).get(CHALLENGER_ALIAS)
    challenger = None if challenger is None else str(challenger)

    def bind_version() -> None:
        if challenger is not None:
            client.set_registered_model_tag(model_name, CANARY_VERSION_TAG, challenger)
        elif CANARY_VERSION_TAG in (registered.tags or {}):
            client.delete_registered_model_tag(model_name, CANARY_VERSION_TAG)

    _check(lock)
    # The server reads both tags at once: lower the percent before rebinding, raise it after.
    if canary_percent == 0:
        client.set_registered_model_tag(model_name, CANARY_TAG, "0")
        bind_version()
    else:
        bind_version()
        client.set_registered_model_tag(model_name, CANARY_TAG, str(canary_percent))
    return challenger


def close_canary(model_name: str, tracking_uri: str, version: str) -> bool:
    """Close the canary of challenger ``version``: its traffic share to 0, then its ``challenger`` alias removed.

    Both happen under the registry lock, like every alias change. The alias is removed only while it
    still points at ``version`` (a newer challenger registered meanwhile keeps it); the champion
    is not touched.

    Args:
        model_name: Registered model name.
        tracking_uri: MLflow tracking/registry URI.
        version: The challenger version whose canary closes.

    Returns:
        Whether the ``challenger`` alias was removed.

    Raises:
        ModelNotFound: The registered model does not exist.
        LockLost: The registry lock was lost before the alias write.
    """
    client = tracking.registry_client(tracking_uri)
    require_registered_model(client, model_name, tracking_uri)
    with registry_lock(client, model_name) as lock:
        _set_traffic_locked(client, model_name, tracking_uri, 0, lock)  # first: the server stops routing to it
        removed = aliases_of(client, model_name).get(CHALLENGER_ALIAS) == str(version)
        if removed:
            lock.check()
            client.delete_registered_model_alias(model_name, CHALLENGER_ALIAS)
    log.info("canary closed", extra={"model": model_name, "version": version, "alias_removed": removed})
    return removed


def switch_live(model_name: str, tracking_uri: str, back: bool = False) -> str:
    """Blue-green: send all traffic to the challenger at once, or (``back``) to the champion again.

    Both versions stay loaded in the model server (``serving.rollout.strategy: blue_green``), so
    either way the switch is one reference swap within a poll interval, with no model load.
    ``promote`` then confirms a switch (the challenger becomes champion); until then switching
    back is instant.

    Args:
        model_name: Registered model name.
        tracking_uri: MLflow tracking/registry URI.
        back: Switch traffic back to the champion.

    Returns:
        The version that now takes all traffic.

    Raises:
        DeployError: No challenger (or champion, for ``back``), or the challenger is not infra-blessed.
        ModelNotFound: The registered model does not exist.
    """
    client = tracking.registry_client(tracking_uri)
    require_registered_model(client, model_name, tracking_uri)
    with registry_lock(client, model_name) as lock:
        aliases = aliases_of(client, model_name)
        alias = CHAMPION_ALIAS if back else CHALLENGER_ALIAS
        version = aliases.get(alias)
        if version is None:
            raise DeployError(f"registered model {model_name!r} has no {alias!r} alias to switch traffic to")
        if not back:
            blessed = (client.get_model_version(model_name, version).tags or {}).get(INFRA_BLESSED_TAG)
            if blessed != "true":
                raise DeployError(
                    f"version {version} of {model_name!r} is not infra-blessed (tag {INFRA_BLESSED_TAG}: expected "
                    f"'true', found {blessed!r}); run infra validation before switching traffic to it"
                )
        lock.check()
        client.set_registered_model_tag(model_name, LIVE_VERSION_TAG, version)
    log.info("blue-green switch", extra={"model": model_name, "live_version": version, "back": back})
    return version
