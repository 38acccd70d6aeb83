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
  ``close_canary``) and every traffic change (``set_traffic``) happens under a registry lock: a
  registered model ``<name>.ctpipe-lock`` whose creation is atomic in every MLflow backend
  (sqlite, PostgreSQL behind a server), so two writers cannot interleave their read-check-write
  of the aliases. The lock is a lease its holder renews while it holds it (``LOCK_LEASE_SECONDS``):
  a live holder keeps it however long it works, a dead or hung holder's lease expires and the
  lock is broken; a holder whose lease could not be renewed stops with ``LockLost`` instead of
  writing on (see :func:`registry_lock`);
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
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from components.common import tracking
from components.common.errors import CtpipeError, DeployError, ModelNotFound
from components.common.logs import get_logger

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


def is_missing(exc: Exception) -> bool:
    """Whether an MLflow error says the model, version or run does not exist."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def registered_model(client: Any, model_name: str) -> Any | None:
    """The registered model, or None when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model_name)
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise


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


# --- Registry lock --------------------------------------------------------------------------------
#: Suffix of the registered model that serves as the registry lock of a model.
LOCK_SUFFIX = ".ctpipe-lock"
#: Infix of the name a broken lock is renamed to: ``<lock>.broken.<token of the holder it belonged to>``.
LOCK_BROKEN_INFIX = ".broken."
_LOCK_HOLDER_TAG = "ctpipe.lock_holder"
_LOCK_SINCE_TAG = "ctpipe.lock_acquired_at"
#: Rewritten by every renewal (holder's wall clock + lease, for people reading it); contenders only watch it change.
_LOCK_EXPIRES_TAG = "ctpipe.lock_expires_at"
_LOCK_LEASE_TAG = "ctpipe.lock_lease_seconds"
#: How long a lock lives without renewal. The holder renews it every third of this while it holds it.
LOCK_LEASE_SECONDS = 30.0
#: How long a writer waits for the lock before giving up.
LOCK_WAIT_SECONDS = 300.0
#: The holder stops trusting its lock this far into a lease after its last successful renewal started,
#: a quarter of a lease before any contender may break it.
_LOCK_TRUST_FRACTION = 0.75
#: Broken locks (renamed) are deleted once this many leases old; until then their names fence late breakers.
_LOCK_BROKEN_KEEP_LEASES = 20


class LockLost(CtpipeError):
    """The registry lock's lease could not be renewed or was taken over: writes under it are no longer safe."""


class RegistryLock:
    """A held registry lock: its holder id, and whether its lease can still be trusted.

    Made by :func:`registry_lock`; a background thread renews the lease while it is held.
    """

    def __init__(self, client: Any, model_name: str, holder: str, lease_seconds: float) -> None:
        self.client = client
        self.model_name = model_name
        self.lock_name = f"{model_name}{LOCK_SUFFIX}"
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.renewals = 0
        self._valid_until = time.monotonic() + lease_seconds * _LOCK_TRUST_FRACTION
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"ctpipe-lock-{model_name}", daemon=True)

    def __str__(self) -> str:
        return self.holder

    @property
    def lost(self) -> str | None:
        """Why the lock can no longer be trusted, or None while it can."""
        if self._lost is None and time.monotonic() > self._valid_until:
            return f"its lease ({self.lease_seconds:g}s) was not renewed in time"
        return self._lost

    def check(self) -> None:
        """Raise :class:`LockLost` when the lease can no longer be trusted; call before each write under the lock."""
        reason = self.lost
        if reason is not None:
            raise LockLost(
                f"registry lock {self.lock_name!r} held by {self.holder} is lost: {reason}",
                hint="The registry was unreachable or this process stalled; check the aliases and retry.",
            )

    def _renew_loop(self) -> None:
        interval = self.lease_seconds / 3
        while not self._stop.wait(interval):
            started = time.monotonic()
            if self.lost is not None:
                self._lost = self.lost
                return
            try:
                lock = registered_model(self.client, self.lock_name)
                current = (lock.tags or {}).get(_LOCK_HOLDER_TAG) if lock is not None else None
                if current != self.holder:
                    self._lost = f"it was taken over (holder now {current})"
                    return
                expires = time.time() + self.lease_seconds
                self.client.set_registered_model_tag(self.lock_name, _LOCK_EXPIRES_TAG, f"{expires:.3f}")
            except Exception as exc:  # the registry is unreachable: keep trying until the lease runs out
                log.warning(
                    "could not renew the registry lock", extra={"lock": self.lock_name, "error": str(exc)[:500]}
                )
                continue
            self.renewals += 1
            self._valid_until = started + self.lease_seconds * _LOCK_TRUST_FRACTION

    def _start(self) -> None:
        self._thread.start()

    def _stop_renewing(self) -> None:
        self._stop.set()
        self._thread.join()


def release_registry_lock(client: Any, model_name: str, holder: str) -> bool:
    """Delete the registry lock of ``model_name`` if ``holder`` holds it; True when it did.

    A caller that does not hold the lock (another holder id, or no lock at all) changes nothing.
    """
    from mlflow.exceptions import MlflowException

    lock_name = f"{model_name}{LOCK_SUFFIX}"
    lock = registered_model(client, lock_name)
    if lock is None or (lock.tags or {}).get(_LOCK_HOLDER_TAG) != holder:
        return False
    try:
        client.delete_registered_model(lock_name)
    except MlflowException as exc:
        if not is_missing(exc):
            raise
        return False
    return True


def _lease_of(tags: Mapping[str, str]) -> float:
    try:
        lease = float(tags.get(_LOCK_LEASE_TAG, ""))
    except ValueError:
        return LOCK_LEASE_SECONDS
    return lease if 0 < lease <= 3600 else LOCK_LEASE_SECONDS


def _token_of(holder: str) -> str:
    token = holder.rpartition("|")[2]
    return token if token.isalnum() else uuid.uuid5(uuid.NAMESPACE_OID, holder).hex


def _break(client: Any, lock_name: str, holder: str, lease: float) -> bool:
    """Break the lease of ``holder`` by renaming its lock to ``<lock>.broken.<its token>``; True when this call did.

    Renaming fails when the lock no longer exists or when the new name is taken, so of any number of
    contenders that saw the same expired holder exactly one succeeds; a late one that would rename the
    next holder's fresh lock fails, because the broken name of the expired holder is still taken.
    """
    from mlflow.exceptions import MlflowException

    broken = f"{lock_name}{LOCK_BROKEN_INFIX}{_token_of(holder)}"
    try:
        client.rename_registered_model(lock_name, broken)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        if is_missing(exc) or code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            return False
        raise
    log.warning("broke an expired registry lock", extra={"lock": lock_name, "holder": holder, "lease": lease})
    _delete_old_broken(client, lock_name, lease)
    return True


def _delete_old_broken(client: Any, lock_name: str, lease: float) -> None:
    """Best effort: delete broken locks old enough that no contender can still be about to break their holder."""
    try:
        found = client.search_registered_models(f"name LIKE '{lock_name}{LOCK_BROKEN_INFIX}%'")
        keep_ms = 1000 * max(600.0, _LOCK_BROKEN_KEEP_LEASES * lease)
        for model in found:
            if time.time() * 1000 - float(model.last_updated_timestamp or 0) > keep_ms:
                client.delete_registered_model(model.name)
    except Exception as exc:
        log.warning("could not delete old broken registry locks", extra={"lock": lock_name, "error": str(exc)[:300]})


@contextlib.contextmanager
def registry_lock(
    client: Any, model_name: str, wait_seconds: float | None = None, lease_seconds: float | None = None
) -> Iterator[RegistryLock]:
    """Hold the registry lock of ``model_name``: a lease on the registered model ``<name>.ctpipe-lock``.

    Protocol (MLflow has no compare-and-set on tags, so only operations that fail for the second
    of two callers decide anything):

    - **take**: create the registered model ``<name>.ctpipe-lock`` with the holder id (host, pid,
      random token), the lease length and an expiry time as tags. Creating a registered model fails
      for the second of two creators in every MLflow backend, so exactly one contender holds it.
    - **renew**: while the ``with`` block runs, a thread checks every third of the lease that the
      lock still names this holder and rewrites its ``ctpipe.lock_expires_at`` tag. A live holder's
      lock therefore never looks idle, however long it is held.
    - **expire**: a contender that cannot create the lock watches the holder and expiry tags. Only
      when they have not changed for a whole lease, measured on the contender's own monotonic clock
      (so clock skew between hosts does not matter), is the holder dead or hung, and the contender
      breaks the lock by renaming it to ``<lock>.broken.<holder token>``. That rename succeeds once
      per holder: a second contender that saw the same holder fails, even after the first took a
      fresh lock (the broken name is taken), so a fresh lock is never broken by a stale observation.
    - **distrust**: the holder trusts its lock only until three quarters of a lease after its last
      successful renewal started, a quarter of a lease before anyone may break it. A renewal that
      fails (registry unreachable) is retried at the next third; once the trust runs out, or when
      the lock names another holder, :meth:`RegistryLock.check` raises :class:`LockLost`, and leaving
      the block raises it too, so the holder never goes on silently.
    - **release**: on exit the lock is deleted only if it still names this holder and the lease is
      still trusted; otherwise it is left to expire (:func:`release_registry_lock`).

    Args:
        client: An ``MlflowClient``.
        model_name: The model whose aliases are about to change.
        wait_seconds: Give up after this long; default ``LOCK_WAIT_SECONDS``.
        lease_seconds: Lease length; default ``LOCK_LEASE_SECONDS``. Contenders use the holder's.

    Yields:
        The held lock (``str()`` is the holder id written on it).

    Raises:
        CtpipeError: The lock stayed taken for ``wait_seconds``.
        LockLost: The lease was lost while the block ran (raised on leaving a block that succeeded).
    """
    from mlflow.exceptions import MlflowException

    lease = LOCK_LEASE_SECONDS if lease_seconds is None else float(lease_seconds)
    if not 0 < lease <= 3600:
        raise CtpipeError(f"lease_seconds must be in (0, 3600], got {lease_seconds!r}")
    wait = LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds
    lock_name = f"{model_name}{LOCK_SUFFIX}"
    holder = f"{socket.gethostname()}|{os.getpid()}|{uuid.uuid4().hex}"
    deadline = time.monotonic() + wait
    seen: tuple[str, str] | None = None
    seen_since = time.monotonic()
    attempt = 0
    while True:
        now = time.time()
        try:
            client.create_registered_model(
                lock_name,
                tags={
                    _LOCK_HOLDER_TAG: holder,
                    _LOCK_SINCE_TAG: f"{now:.3f}",
                    _LOCK_EXPIRES_TAG: f"{now + lease:.3f}",
                    _LOCK_LEASE_TAG: f"{lease:g}",
                },
                description=f"ctpipe registry lock of {model_name!r} (not a model; deleted when released)",
            )
            break
        except MlflowException as exc:
            # "Not found" from a create: the insert clashed with the holder's lock, which was released
            # before MLflow's store read it back to report the clash. Taken either way: retry.
            taken = getattr(exc, "error_code", "") in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
            if not taken and not is_missing(exc):
                raise
        current = registered_model(client, lock_name)
        if current is not None:
            tags = current.tags or {}
            state = (tags.get(_LOCK_HOLDER_TAG, ""), tags.get(_LOCK_EXPIRES_TAG, tags.get(_LOCK_SINCE_TAG, "")))
            if state != seen:
                seen, seen_since = state, time.monotonic()
            elif time.monotonic() - seen_since > _lease_of(tags):
                _break(client, lock_name, state[0], _lease_of(tags))
                seen = None
                continue
        if time.monotonic() > deadline:
            raise CtpipeError(
                f"registry lock {lock_name!r} stayed taken for {wait:.0f}s (held by {seen[0] if seen else 'unknown'})",
                hint="Another training run or promotion is writing and renewing its lease; retry when it is done.",
            )
        # Jittered backoff: many contenders polling fast would slow the holder's own requests down.
        attempt += 1
        time.sleep(random.uniform(0.05, min(1.0, lease / 4, 0.1 * 1.5**attempt)))
    lock = RegistryLock(client, model_name, holder, lease)
    lock._start()
    failed = True
    try:
        yield lock
        failed = False
    finally:
        lock._stop_renewing()
        reason = lock.lost
        if reason is None:
            release_registry_lock(client, model_name, holder)
        else:
            log.error("registry lock lost while held", extra={"lock": lock_name, "holder": holder, "reason": reason})
        if reason is not None and not failed:
            lock.check()


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
