"""The registry lock is a lease: a live holder keeps it by renewing, a dead holder's lease expires,
only the holder releases it, and a holder that cannot renew stops trusting it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from components.common import registry_lease
from components.common.registry_lease import (
    LOCK_SUFFIX,
    LockLost,
    registry_lock,
    release_registry_lock,
)

ROOT = Path(__file__).resolve().parents[2]

_HOLD = """
import sys, time
from mlflow import MlflowClient
from components.common.registry_lease import registry_lock
uri, name, lease, hold = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
with registry_lock(MlflowClient(uri), name, lease_seconds=lease) as lock:
    print(f"held {time.time():.3f}", flush=True)
    time.sleep(hold)
    lock.check()
    released = time.time()
print(f"released {released:.3f} renewals {lock.renewals}", flush=True)
"""


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('lock-registry') / 'mlflow.db'}"
    MlflowClient(uri).search_registered_models()  # create the schema once, before processes race to
    return uri


def _holder(uri: str, name: str, lease: float, hold: float) -> Iterator[Any]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, uri, name, str(lease), str(hold)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("held"), process.stderr.read() if process.stderr else ""
    yield process, float(line.split()[1])


def test_a_live_holder_keeps_its_lock_past_many_leases(uri: str) -> None:
    client = MlflowClient(uri)
    # Leases of 3 s: a 1 s lease left the holder too little slack on a busy 2-core CI machine, where one
    # sqlite write can take most of a third of a second.
    process, _ = next(_holder(uri, "live", lease=3.0, hold=9.0))
    start = time.time()
    with registry_lock(client, "live", wait_seconds=60, lease_seconds=3.0):
        acquired = time.time()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err[-2000:]
    released, renewals = float(out.split()[1]), int(out.split()[3])
    # The contender waited for the whole hold (3 leases), not just one lease.
    assert acquired >= released, (acquired, released)
    assert acquired - start > 6.0
    assert renewals >= 6  # every third of a lease
    assert client.search_registered_models(f"name='live{LOCK_SUFFIX}'") == []


def test_a_killed_holder_loses_its_lock_after_the_lease(uri: str) -> None:
    client = MlflowClient(uri)
    process, _ = next(_holder(uri, "dead", lease=1.5, hold=600))
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    killed = time.monotonic()
    with registry_lock(client, "dead", wait_seconds=30, lease_seconds=1.5) as lock:
        waited = time.monotonic() - killed
        assert client.get_registered_model(f"dead{LOCK_SUFFIX}").tags["ctpipe.lock_holder"] == lock.holder
    # At least one whole lease of silence, and not much more.
    assert 1.5 <= waited < 6, waited
    broken = client.search_registered_models(f"name LIKE 'dead{LOCK_SUFFIX}.broken.%'")
    assert len(broken) == 1  # the killed holder's lock, renamed


def test_a_stale_break_never_breaks_the_next_holders_lock(uri: str) -> None:
    client = MlflowClient(uri)
    lock_name = f"fence{LOCK_SUFFIX}"
    client.create_registered_model(lock_name, tags={"ctpipe.lock_holder": "h|1|dead1"})
    assert registry_lease._break(client, lock_name, "h|1|dead1", 1.0)
    with registry_lock(client, "fence", wait_seconds=5, lease_seconds=5) as lock:
        # A second contender that also saw the dead holder comes late: the fresh lock survives.
        assert not registry_lease._break(client, lock_name, "h|1|dead1", 1.0)
        assert client.get_registered_model(lock_name).tags["ctpipe.lock_holder"] == lock.holder
        lock.check()


def test_only_the_holder_releases(uri: str) -> None:
    client = MlflowClient(uri)
    with registry_lock(client, "rel", lease_seconds=5) as lock:
        assert not release_registry_lock(client, "rel", "otherhost|1|0123abcd")
        assert not release_registry_lock(client, "rel", f"{lock.holder}x")
        assert client.get_registered_model(f"rel{LOCK_SUFFIX}").tags["ctpipe.lock_holder"] == lock.holder
    assert client.search_registered_models(f"name='rel{LOCK_SUFFIX}'") == []
    assert not release_registry_lock(client, "rel", lock.holder)  # nothing to release


class _Flaky:
    """An MlflowClient whose registry becomes unreachable on demand."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.down = client, False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise ConnectionError("registry unreachable")
            return attribute(*args, **kwargs)

        return call


def test_a_holder_that_cannot_renew_stops_trusting_the_lock(uri: str) -> None:
    flaky = _Flaky(MlflowClient(uri))
    with pytest.raises(LockLost, match="not renewed in time"), registry_lock(flaky, "flaky", lease_seconds=1.0) as lock:
        time.sleep(0.5)
        assert lock.renewals >= 1
        lock.check()
        flaky.down = True
        time.sleep(1.2)
        assert lock.lost is not None
        with pytest.raises(LockLost):
            lock.check()
        flaky.down = False  # back, but too late: leaving the block still raises
    # The lock was left to expire, not deleted by a holder that no longer trusts it.
    assert MlflowClient(uri).search_registered_models(f"name='flaky{LOCK_SUFFIX}'")


def test_a_holder_whose_lock_was_taken_over_knows(uri: str) -> None:
    client = MlflowClient(uri)
    with pytest.raises(LockLost, match="taken over"), registry_lock(client, "over", lease_seconds=0.6) as lock:
        client.set_registered_model_tag(f"over{LOCK_SUFFIX}", "ctpipe.lock_holder", "thief|1|beef")
        time.sleep(0.5)
        assert lock.lost is not None
