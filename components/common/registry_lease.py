"""The registry lock: a lease on a model's aliases that one writer at a time holds.

Every alias move and traffic change of a registered model (:mod:`components.common.registry`,
:mod:`components.common.environments`) runs under this lock, so two writers cannot interleave their
read-check-write of the aliases. The lock is a registered model ``<name>.ctpipe-lock``, whose
creation is atomic in every MLflow backend (sqlite, PostgreSQL behind a server). It is a lease its
holder renews while it holds it (``LOCK_LEASE_SECONDS``): a live holder keeps it however long it
works, a dead or hung holder's lease expires and the lock is broken; a holder whose lease could
not be renewed stops with :class:`LockLost` instead of writing on (see :func:`registry_lock`).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from components.common.errors import CtpipeError
from components.common.logs import get_logger

log = get_logger("registry")


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
