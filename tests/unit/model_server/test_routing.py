"""Which version answers: aliases, canary split, promote and rollback under load, unloadable versions."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from components.common.errors import DeployError
from components.common.registry import CANARY_TAG, CANARY_VERSION_TAG
from components.common.server_process import start_local_server
from components.serving_spec import ServingSpec
from tests.helpers import free_port
from tests.serving_helpers import GOOD, Registry, ServerFactory, instances, status, v1, wait_until


@pytest.mark.server
def test_canary_splits_traffic_by_percent(registry: Registry, serve_model: ServerFactory) -> None:
    registry.create("canary", ["a", "b"], {"champion": 1, "challenger": 2})
    client = registry.client()
    client.set_registered_model_tag("canary", CANARY_VERSION_TAG, "2")
    client.set_registered_model_tag("canary", CANARY_TAG, "20")
    server = serve_model("canary", inference_log=False)
    assert status(server)["canary_percent"] == 20
    rows = registry.rows.head(1)
    expected = {"1": registry.expected("a", rows)[0], "2": registry.expected("b", rows)[0]}
    session = requests.Session()
    counts = {"1": 0, "2": 0}
    n = 2000
    for _ in range(n):
        body = v1(session, server, {"instances": instances(rows)}).json()
        counts[body["model_version"]] += 1
        assert body["predictions"][0] == pytest.approx(expected[body["model_version"]], rel=1e-12)
    sigma = (n * 0.2 * 0.8) ** 0.5  # binomial; the server's routing is not seeded, so allow 4 sigma (+-72)
    assert abs(counts["2"] - 0.2 * n) < 4 * sigma, counts

    # A percent set for another version does not leak to this challenger.
    client.set_registered_model_tag("canary", CANARY_VERSION_TAG, "7")
    wait_until(lambda: status(server)["canary_percent"] == 0, 10, "canary to drop to 0")
    answers = {v1(session, server, {"instances": instances(rows)}).json()["model_version"] for _ in range(30)}
    assert answers == {"1"}


@pytest.mark.server
def test_promote_and_rollback_under_load_fail_no_request(registry: Registry, serve_model: ServerFactory) -> None:
    """Requests flow from 4 threads while champion moves 1 -> 2 (promote) -> 1 (rollback)."""
    from components.common.registry import promote, rollback

    registry.create("swap", ["a", "b"], {"champion": 1, "challenger": 2})
    client = registry.client()
    for version in ("1", "2"):
        client.set_model_version_tag("swap", version, "ctpipe.blessed", "true")
    server = serve_model("swap", inference_log=False)
    rows = registry.rows.head(3)
    body = {"instances": instances(rows)}
    expected = {"1": registry.expected("a", rows), "2": registry.expected("b", rows)}
    seen: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        session = requests.Session()
        while not stop.is_set() and len(seen) < 20_000:
            try:
                response = v1(session, server, body)
                if response.status_code != 200:
                    failures.append(f"HTTP {response.status_code}: {response.text}")
                    continue
                answer = response.json()
                version = answer["model_version"]
                if not np.allclose(answer["predictions"], expected[version], rtol=1e-12):
                    failures.append(f"version {version} answered with another version's predictions")
                seen.append((time.monotonic(), version))
            except requests.RequestException as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(seen) > 50, 20, "requests before the promotion")
        promote("swap", registry.tracking_uri)
        wait_until(lambda: bool(seen) and seen[-1][1] == "2", 20, "responses from version 2 after promote")
        count = len(seen)
        wait_until(lambda: len(seen) > count + 50, 20, "more requests on version 2")
        rollback("swap", registry.tracking_uri)
        wait_until(lambda: bool(seen) and seen[-1][1] == "1", 20, "responses from version 1 after rollback")
        count = len(seen)
        wait_until(lambda: len(seen) > count + 50, 20, "more requests on version 1")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    print(f"\n[measure] {len(seen)} requests during promote + rollback, {len(failures)} failed")
    assert failures == []
    versions = [version for _, version in sorted(seen)]
    switches = sum(1 for a, b in itertools.pairwise(versions) if a != b)
    assert versions[0] == "1" and versions[-1] == "1" and "2" in versions
    # Four threads' answers interleave around a switch, but versions never flap back and forth.
    assert switches <= 2 + 2 * len(threads), f"{switches} switches: {versions}"


@pytest.mark.server
def test_unloadable_version_never_gets_traffic(registry: Registry, serve_model: ServerFactory) -> None:
    registry.create("fragile", ["a", "broken"], {"champion": 1})
    server = serve_model("fragile")
    client = registry.client()
    client.set_registered_model_alias("fragile", "champion", "2")  # the broken one
    wait_until(lambda: "2" in status(server)["failed_versions"], 10, "the load failure to be reported")
    current = status(server)
    assert current["champion_version"] == "1"
    assert current["last_error"]["version"] == "2" and "still serving version 1" in current["last_error"]["message"]
    session = requests.Session()
    for _ in range(20):
        response = v1(session, server, {"instances": [GOOD]})
        assert response.status_code == 200 and response.json()["model_version"] == "1"


@pytest.mark.server
def test_server_without_any_alias_is_not_ready(registry: Registry, tmp_path: Path) -> None:
    registry.create("empty", ["a"], {})
    spec = ServingSpec(model_name="empty", port=free_port())
    with pytest.raises(DeployError, match="did not become ready"):
        start_local_server(spec, registry.tracking_uri, str(tmp_path), timeout=3)
    assert not (tmp_path / "serving" / "server.pid").exists(), "a server that never got ready is stopped again"


def test_model_follows_aliases_and_never_drops_its_champion(registry: Registry) -> None:
    from serving.model import CtpipeModel

    registry.create("inproc", ["a", "b"], {"champion": 1, "challenger": 2})
    client = registry.client()
    model = CtpipeModel("inproc", registry.tracking_uri, poll_seconds=60)
    assert model.load() is True
    assert (model.status()["champion_version"], model.status()["challenger_version"]) == ("1", "2")
    assert model.status()["canary_percent"] == 0, "no canary tag: the challenger gets nothing"

    client.delete_registered_model_alias("inproc", "challenger")
    client.delete_registered_model_alias("inproc", "champion")
    model.refresh()
    current = model.status()
    assert current["challenger_version"] is None, "a removed challenger stops serving"
    assert current["champion_version"] == "1", "a removed champion alias never takes the endpoint down"

    pinned = CtpipeModel("inproc", registry.tracking_uri, pinned_version="2")
    pinned.load()
    assert (pinned.status()["champion_version"], pinned.status()["challenger_version"]) == ("2", None)
