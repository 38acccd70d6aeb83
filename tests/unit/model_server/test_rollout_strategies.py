"""Rollout strategies routed inside the model server: sticky A/B, shadow and blue-green, on real servers."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from components.common.errors import DeployError
from components.common.registry import CANARY_TAG, CANARY_VERSION_TAG, INFRA_BLESSED_TAG, LIVE_VERSION_TAG
from components.common.server_process import LocalServer
from components.serving_spec import CanaryAnalysisSpec, ServingSpec
from serving.routing import BUCKETS, sticky_bucket
from tests.serving_helpers import Registry, ServerFactory, instances, make_frame, status, v1, wait_for_log, wait_until


def _open_canary(registry: Registry, name: str, percent: int) -> None:
    client = registry.client()
    client.set_registered_model_tag(name, CANARY_VERSION_TAG, "2")
    client.set_registered_model_tag(name, CANARY_TAG, str(percent))


@pytest.mark.server
def test_sticky_ab_gives_each_user_one_version_on_every_replica(registry: Registry, serve_model: ServerFactory) -> None:
    registry.create("abtest", ["a", "b"], {"champion": 1, "challenger": 2})
    _open_canary(registry, "abtest", 50)
    rollout = {"strategy": "ab", "sticky_header": "x-user-id", "salt": "exp-1"}
    first = serve_model("abtest", inference_log=False, rollout=rollout)
    rows = registry.rows.head(2)
    expected = {"1": registry.expected("a", rows), "2": registry.expected("b", rows)}
    session = requests.Session()
    users = [f"user-{i}" for i in range(300)]

    body = {"instances": instances(rows)}

    def assignment(server: LocalServer) -> dict[str, str]:
        seen: dict[str, set[str]] = {}
        for user in users:
            for _ in range(2):
                answer = v1(session, server, body, headers={"x-user-id": user}).json()
                np.testing.assert_allclose(answer["predictions"], expected[answer["model_version"]], rtol=1e-12)
                seen.setdefault(user, set()).add(answer["model_version"])
        flapping = {user: versions for user, versions in seen.items() if len(versions) > 1}
        assert not flapping, f"users answered by both versions: {flapping}"
        return {user: versions.pop() for user, versions in seen.items()}

    started = time.perf_counter()
    on_first = assignment(first)
    challenger_users = sum(version == "2" for version in on_first.values())
    sigma = (len(users) * 0.25) ** 0.5  # binomial at 50 %
    assert abs(challenger_users - len(users) / 2) < 4 * sigma, challenger_users
    # The assignment is the documented SHA-256 bucket, nothing process-local.
    for user, version in on_first.items():
        assert (version == "2") == (sticky_bucket("abtest", "exp-1", user) < 50 * BUCKETS // 100), user
    # A request without the key goes to the champion (unkeyed: champion).
    assert {v1(session, first, {"instances": instances(rows)}).json()["model_version"] for _ in range(20)} == {"1"}
    assert status(first)["rollout"]["strategy"] == "ab"

    # A second replica (another process, started later, like a restart) assigns every user the same way.
    second = serve_model("abtest", inference_log=False, rollout=rollout)
    assert assignment(second) == on_first
    print(f"\n[measure] sticky A/B: {4 * len(users)} requests on two replicas in {time.perf_counter() - started:.1f}s")

    # An over-long key is the client's mistake: 400 with the reason, and the server keeps serving.
    answer = v1(session, first, {"instances": instances(rows)}, headers={"x-user-id": "u" * 300})
    assert answer.status_code == 400 and "sticky routing key" in answer.json()["error"]
    assert v1(session, first, {"instances": instances(rows)}).status_code == 200


@pytest.mark.server
def test_shadow_answers_are_logged_never_returned(
    registry: Registry, serve_model: ServerFactory, tmp_path: Path
) -> None:
    from components.canary_analysis import canary_analysis

    registry.create("shadowed", ["a", "b"], {"champion": 1, "challenger": 2})
    _open_canary(registry, "shadowed", 50)  # ignored by shadow: the champion answers everything
    server = serve_model("shadowed", inference_log_flush_seconds=0.2, rollout={"strategy": "shadow"})
    traffic = make_frame(120, seed=7)  # distinct rows, so the paired test sees 120 different differences
    rows = traffic.head(3)
    session = requests.Session()
    ids = []
    sent = {}
    for i in range(40):
        chunk = traffic.iloc[3 * i : 3 * i + 3]
        answer = v1(session, server, {"instances": instances(chunk)}).json()
        assert (answer["model_version"], answer["model_alias"]) == ("1", "champion")
        np.testing.assert_allclose(answer["predictions"], registry.expected("a", chunk), rtol=1e-12)
        ids.append(answer["request_id"])
        sent[answer["request_id"]] = chunk
    log_dir = Path(server.log_path).parents[1] / "inference_log"
    wait_until(lambda: status(server)["rollout"]["shadow"]["scored"] >= 40, 15, "the shadow to score every copy")
    deadline = time.monotonic() + 15
    while True:
        logged = wait_for_log(log_dir, set(ids))
        shadow = logged[(logged["model_alias"] == "shadow") & logged["request_id"].isin(ids)]
        if len(shadow) == 40 * len(rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(shadow["model_version"]) == {"2"} and set(shadow["status"]) == {"ok"}
    assert len(shadow) == 40 * len(rows), "every row of every request was scored by the shadow"
    for request_id in ids:
        mine = shadow[shadow["request_id"] == request_id].sort_values("row")
        np.testing.assert_allclose(mine["prediction"], registry.expected("b", sent[request_id]), rtol=1e-12)
    answered = logged[(logged["model_alias"] == "champion") & logged["request_id"].isin(ids)]
    assert len(answered) == 40 * len(rows) and set(answered["model_version"]) == {"1"}
    current = status(server)
    assert current["rollout"]["shadow"]["dropped"] == 0 and current["challenger_share"] == 0

    # Canary analysis compares both on the same requests: a paired test sees the (real) difference.
    serving = ServingSpec(model_name="shadowed", canary_analysis=CanaryAnalysisSpec(min_requests=20))
    result = canary_analysis(
        serving, registry.tracking_uri, str(log_dir), str(tmp_path / "r.json"), str(tmp_path / "r.md"), act=False
    )
    tests = {t.name: t for t in result.significance}
    difference = float(np.mean(registry.expected("b", traffic) - registry.expected("a", traffic)))
    assert tests["paired_prediction"].detail.startswith(f"120 rows scored by both; mean difference {difference:+.4f}")
    # Paired on the right rows: the p-value is the Wilcoxon test of the two models' own differences.
    from scipy.stats import wilcoxon

    own = wilcoxon(registry.expected("b", traffic) - registry.expected("a", traffic))
    assert tests["paired_prediction"].p_value == pytest.approx(float(own.pvalue), rel=1e-9)
    assert tests["prediction"].test == "Mann-Whitney U" and tests["error_rate"].champion == 0.0
    assert "Wilcoxon" in (tmp_path / "r.md").read_text()


@pytest.mark.server
def test_blue_green_switches_all_at_once_after_infra_validation_and_back(
    registry: Registry, serve_model: ServerFactory
) -> None:
    from components.common.registry import switch_live

    registry.create("bluegreen", ["a", "b"], {"champion": 1, "challenger": 2})
    _open_canary(registry, "bluegreen", 30)  # ignored by blue-green: all or nothing
    server = serve_model("bluegreen", inference_log=False, rollout={"strategy": "blue_green"})
    rows = registry.rows.head(2)
    session = requests.Session()

    def answers(n: int = 40) -> set[str]:
        return {v1(session, server, {"instances": instances(rows)}).json()["model_version"] for _ in range(n)}

    assert answers() == {"1"}
    with pytest.raises(DeployError, match="not infra-blessed"):
        switch_live("bluegreen", registry.tracking_uri)
    client = registry.client()
    # A tag set by hand on an unvalidated version does not move traffic either.
    client.set_registered_model_tag("bluegreen", LIVE_VERSION_TAG, "2")
    wait_until(lambda: "not infra-blessed" in str(status(server)["last_error"]), 10, "the refusal to be reported")
    assert answers() == {"1"}
    client.delete_registered_model_tag("bluegreen", LIVE_VERSION_TAG)  # so that only switch_live moves traffic

    loaded = {v: r["loaded_at"] for v, r in status(server)["runtimes"].items()}
    # Requests flow from two threads through both switches: none fails.
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        own = requests.Session()
        while not stop.is_set():
            response = v1(own, server, {"instances": instances(rows)})
            if response.status_code != 200:
                failures.append(f"HTTP {response.status_code}: {response.text}")

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    client.set_model_version_tag("bluegreen", "2", INFRA_BLESSED_TAG, "true")
    assert switch_live("bluegreen", registry.tracking_uri) == "2"
    seconds = wait_until(lambda: status(server)["rollout"]["live_version"] == "2", 10, "the switch")
    assert answers() == {"2"}, "all traffic moved at once"
    assert status(server)["challenger_share"] == 100
    assert switch_live("bluegreen", registry.tracking_uri, back=True) == "1"
    back = wait_until(lambda: status(server)["rollout"]["live_version"] == "1", 10, "the switch back")
    assert answers() == {"1"}
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == []
    after = {v: r["loaded_at"] for v, r in status(server)["runtimes"].items()}
    assert after == loaded, "neither switch loaded a model again: both versions stayed in memory"
    print(f"\n[measure] blue-green switch seen after {seconds:.2f}s, rollback after {back:.2f}s (poll 0.2s)")


def test_shadow_queue_never_blocks_and_counts_drops() -> None:
    from serving.routing import ShadowScorer

    scorer = ShadowScorer("queue-test", max_queued=5)

    def slow() -> None:
        time.sleep(0.3)

    def failing() -> None:
        raise RuntimeError("the challenger blew up")

    started = time.perf_counter()
    accepted = [scorer.submit(slow) for _ in range(50)]
    submit_seconds = time.perf_counter() - started
    assert submit_seconds < 0.1, f"submitting 50 copies to a slow shadow took {submit_seconds:.3f}s"
    assert sum(accepted) <= 6 and scorer.status()["dropped"] == 50 - sum(accepted) >= 44
    wait_until(lambda: scorer.status()["queued"] == 0, 5, "the queue to drain")
    scorer.submit(failing)
    scorer.submit(lambda: None)
    wait_until(lambda: scorer.status()["scored"] == sum(accepted) + 1, 5, "the work after a failure")
    assert scorer.status()["failed"] == 1, "a failing shadow is counted and the thread keeps working"
    scorer.stop()


def test_routing_rules_without_a_server() -> None:
    import random

    from components.serving_spec import RolloutSpec
    from serving.routing import RoutingState
    from serving.versions import LoadedVersion

    one = LoadedVersion(version="1", model=None, features=(), output="score")
    two = LoadedVersion(version="2", model=None, features=(), output="score")
    rng = random.Random(0)
    ab = RoutingState(one, two, 50, RolloutSpec(strategy="ab"))
    # The first entity id is the key when no header is configured: the same id, the same version.
    for key in ("17", "42", "customer-9"):
        assert len({ab.pick(rng, "m", key).version.version for _ in range(20)}) == 1
    assert {ab.pick(rng, "m", None).alias for _ in range(50)} == {"champion"}
    random_unkeyed = RoutingState(one, two, 50, RolloutSpec(strategy="ab", unkeyed="random"))
    assert {random_unkeyed.pick(rng, "m", None).version.version for _ in range(100)} == {"1", "2"}
    everyone = RoutingState(one, two, 100, RolloutSpec(strategy="ab"))
    assert {everyone.pick(rng, "m", str(i)).version.version for i in range(200)} == {"2"}
    shadow = RoutingState(one, two, 100, RolloutSpec(strategy="shadow"))
    route = shadow.pick(rng, "m")
    assert route.version is one and route.shadow is two
    assert RoutingState(one, None, 0, RolloutSpec(strategy="shadow")).pick(rng, "m").shadow is None
    assert RoutingState(one, two, 0, RolloutSpec(strategy="blue_green"), True).pick(rng, "m").version is two
    assert RoutingState(one, two, 90, RolloutSpec(strategy="blue_green"), False).pick(rng, "m").version is one
    # Two processes agree: the bucket is SHA-256 of name, salt and key, not Python's salted hash().
    assert sticky_bucket("m", "", "17") == sticky_bucket("m", "", "17") != sticky_bucket("m", "other", "17")
    digest = hashlib.sha256(b"m\x00\x0017").digest()
    assert sticky_bucket("m", "", "17") == int.from_bytes(digest[:8], "big") % BUCKETS


def test_significance_detects_a_known_effect_and_not_a_null_one() -> None:
    from components.canary_analysis import significance_tests

    def log(scores: np.ndarray, errors: int, ids: list[str]) -> pd.DataFrame:
        status = np.array(["error"] * errors + ["ok"] * (len(scores) - errors))
        return pd.DataFrame({"request_id": ids, "row": 0, "status": status, "prediction": scores})

    runs, hits_effect, hits_null, paired_effect, paired_null = 100, 0, 0, 0, 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        n = 400
        a = rng.beta(2, 5, n)
        ids_a, ids_b = [f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)]
        null = significance_tests(log(a, 0, ids_a), log(rng.beta(2, 5, n), 0, ids_b), 0.05)
        effect = significance_tests(log(a, 0, ids_a), log(rng.beta(2.6, 5, n), 0, ids_b), 0.05)
        hits_null += {t.name: t for t in null}["prediction"].significant
        hits_effect += {t.name: t for t in effect}["prediction"].significant
        # Shadow: both scored the same requests; a tiny shift is visible to the paired test.
        noise = rng.normal(0, 0.01, n)
        shifted = significance_tests(log(a, 0, ids_a), log(a + 0.003 + noise, 0, ids_a), 0.05)
        same = significance_tests(log(a, 0, ids_a), log(a + noise, 0, ids_a), 0.05)
        paired_effect += {t.name: t for t in shifted}["paired_prediction"].significant
        paired_null += {t.name: t for t in same}["paired_prediction"].significant
    assert hits_effect >= 0.9 * runs and paired_effect >= 0.9 * runs, (hits_effect, paired_effect)
    # At the 5 % level about 5 of 100 null runs are false alarms; 12 is far beyond chance (p < 0.01).
    assert hits_null <= 12 and paired_null <= 12, (hits_null, paired_null)

    rng = np.random.default_rng(1)
    ids = [f"r{i}" for i in range(2000)]
    scores = rng.uniform(size=2000)
    worse = {t.name: t for t in significance_tests(log(scores, 20, ids), log(scores, 80, ids), 0.05)}
    assert worse["error_rate"].significant and worse["error_rate"].challenger == pytest.approx(0.04)
    equal = {t.name: t for t in significance_tests(log(scores, 40, ids), log(scores, 40, ids), 0.05)}
    assert not equal["error_rate"].significant and equal["error_rate"].p_value == pytest.approx(1.0)
