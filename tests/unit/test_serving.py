"""The model server against real server processes on 127.0.0.1, plus manifests and the cluster seam.

Every server is a real ``python -m serving.server`` process started with ``start_local_server``
on a free port and stopped in teardown; the registry is a sqlite MLflow with tiny models.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.common.errors import DeployError
from components.specs import ServingSpec
from serving import CANARY_TAG, CANARY_VERSION_TAG
from serving.server import LocalServer, start_local_server, stop_local_server
from tests.helpers import kserve_crd_validator

REPO_ROOT = Path(__file__).resolve().parents[2]
FEATURES = ["tenure", "charges", "calls", "plan"]
POLL = 0.2
MAX_ROWS = 50  # serving.max_batch_rows of the shared server, so an oversized batch is cheap to send


# ---------------------------------------------------------------------------------------------
# Helpers shared with test_deploy.py


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "tenure": rng.uniform(0, 60, rows),
            "charges": rng.uniform(20, 120, rows),
            "calls": rng.integers(0, 8, rows),
            "plan": rng.choice(["basic", "standard", "premium"], rows),
        }
    )


@dataclass
class Registry:
    """A sqlite MLflow with three logged models: two good ones and one whose pickle is garbage."""

    tracking_uri: str
    sources: dict[str, tuple[str, str, str]]  # key -> (model uri, run id, model id)
    pipelines: dict[str, Any]
    rows: pd.DataFrame

    def client(self) -> Any:
        from components.common import tracking

        # Also sets MLflow's process-wide URIs: create_model_version resolves models:/m-... with them.
        return tracking.registry_client(self.tracking_uri)

    def create(self, name: str, versions: list[str], aliases: dict[str, int]) -> None:
        """Register ``name`` with one version per key in ``versions`` and set the aliases."""
        client = self.client()
        client.create_registered_model(name)
        for key in versions:
            self.add_version(name, key)
        for alias, version in aliases.items():
            client.set_registered_model_alias(name, alias, str(version))

    def add_version(self, name: str, key: str) -> str:
        uri, run_id, model_id = self.sources[key]
        version = self.client().create_model_version(name, source=uri, run_id=run_id, model_id=model_id)
        return str(version.version)

    def expected(self, key: str, rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.pipelines[key].predict_proba(rows[FEATURES])[:, 1])


def build_registry(folder: Path) -> Registry:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from components.common import tracking

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracking.ensure_experiment("serving-tests", tracking_uri)
    train = make_frame(300, seed=1)
    label = ((train.tenure < 20) & (train.plan == "basic") | (train.calls > 5)).astype(int)
    pipelines: dict[str, Any] = {}
    sources: dict[str, tuple[str, str, str]] = {}
    for key, c in (("a", 1.0), ("b", 0.02), ("broken", 1.0)):
        pipeline = Pipeline(
            [
                (
                    "prep",
                    ColumnTransformer(
                        [
                            ("num", StandardScaler(), ["tenure", "charges", "calls"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
                        ]
                    ),
                ),
                ("clf", LogisticRegression(C=c)),
            ]
        ).fit(train[FEATURES], label)
        with warnings.catch_warnings():  # the integer column's "no missing values" hint
            warnings.simplefilter("ignore", UserWarning)
            signature = infer_signature(train[FEATURES], pipeline.predict_proba(train[FEATURES]))
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                serialization_format="cloudpickle",
                signature=signature,
                input_example=train[FEATURES].head(3),
                pip_requirements=tracking.pip_requirements(),
            )
        pipelines[key] = pipeline
        sources[key] = (info.model_uri, run.info.run_id, info.model_id)
        if key == "broken":
            local = Path(info.artifact_path.removeprefix("file://"))
            (local / "model.pkl").write_bytes(b"this is not a pickle")
    return Registry(tracking_uri, sources, pipelines, make_frame(20, seed=2))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return build_registry(tmp_path_factory.mktemp("serving-registry"))


ServerFactory = Callable[..., LocalServer]


@pytest.fixture
def serve_model(tmp_path: Path, registry: Registry) -> Iterator[ServerFactory]:
    """Start real servers for a registered model name; every one is stopped in teardown."""
    workspaces: list[Path] = []

    def start(name: str, poll_seconds: float = POLL, **settings: Any) -> LocalServer:
        workspace = tmp_path / f"ws{len(workspaces)}"
        workspaces.append(workspace)
        spec = ServingSpec(model_name=name, port=free_port(), **settings)
        return start_local_server(spec, registry.tracking_uri, str(workspace), timeout=60, poll_seconds=poll_seconds)

    yield start
    for workspace in workspaces:
        stop_local_server(str(workspace))


def v1(
    session: requests.Session,
    server: LocalServer,
    body: Any,
    content_type: str = "application/json",
    model: str | None = None,
    **kwargs: Any,
) -> requests.Response:
    url = f"{server.endpoint}/v1/models/{model or server.model_name}:predict"
    if isinstance(body, str | bytes):
        return session.post(url, data=body, headers={"content-type": content_type}, timeout=10, **kwargs)
    return session.post(url, json=body, timeout=10, **kwargs)


def v2(session: requests.Session, server: LocalServer, body: Any) -> requests.Response:
    url = f"{server.endpoint}/v2/models/{server.model_name}/infer"
    if isinstance(body, str | bytes):
        return session.post(url, data=body, headers={"content-type": "application/json"}, timeout=10)
    return session.post(url, data=json.dumps(body), headers={"content-type": "application/json"}, timeout=10)


def instances(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for _, row in rows[FEATURES].iterrows()
    ]


def columnar(rows: pd.DataFrame) -> dict[str, Any]:
    types = {"tenure": "FP64", "charges": "FP64", "calls": "INT64", "plan": "BYTES"}
    return {
        "inputs": [{"name": f, "shape": [len(rows)], "datatype": types[f], "data": rows[f].tolist()} for f in FEATURES]
    }


def status(server: LocalServer) -> dict[str, Any]:
    return dict(requests.get(f"{server.endpoint}/ctpipe/status", timeout=5).json())


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# A champion-only server shared by the request tests


@pytest.fixture(scope="module")
def champion_server(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    registry.create("solo", ["a"], {"champion": 1})
    workspace = tmp_path_factory.mktemp("solo-ws")
    started = time.perf_counter()
    spec = ServingSpec(model_name="solo", port=free_port(), max_batch_rows=MAX_ROWS, inference_log_flush_seconds=0.2)
    server = start_local_server(spec, registry.tracking_uri, str(workspace), poll_seconds=POLL)
    print(f"\n[measure] server start to ready: {time.perf_counter() - started:.2f}s")
    yield server
    assert stop_local_server(str(workspace))


def _listening_addresses(port: int) -> set[str]:
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                addresses.add(address)
    return addresses


@pytest.mark.server
def test_server_binds_loopback_and_reports_ready(champion_server: LocalServer) -> None:
    assert champion_server.endpoint.startswith("http://127.0.0.1:")
    assert requests.get(f"{champion_server.endpoint}/v2/health/ready", timeout=5).json() == {"ready": True}
    ready = requests.get(f"{champion_server.endpoint}/v2/models/solo/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    addresses = _listening_addresses(champion_server.port)
    if not addresses:
        pytest.skip("no /proc/net/tcp to check the bound address")
    assert addresses == {"0100007F"}, f"server must listen on 127.0.0.1 only, found {addresses}"
    current = status(champion_server)
    assert current["champion_version"] == "1" and current["challenger_version"] is None
    assert current["features"] == FEATURES
    metadata = requests.get(f"{champion_server.endpoint}/v2/models/solo", timeout=5).json()
    assert [i["name"] for i in metadata["inputs"]] == FEATURES
    assert metadata["outputs"][0]["name"] == "score"


@pytest.mark.server
def test_v1_and_v2_predictions_equal_predict_proba(champion_server: LocalServer, registry: Registry) -> None:
    rows = registry.rows.head(7)
    expected = registry.expected("a", rows)
    session = requests.Session()

    by_name = v1(session, champion_server, {"instances": instances(rows)})
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["model_version"] == "1" and by_name.json()["model_alias"] == "champion"
    np.testing.assert_allclose(by_name.json()["predictions"], expected, rtol=1e-12)

    in_order = v1(session, champion_server, {"instances": rows[FEATURES].astype(object).values.tolist()})
    assert in_order.status_code == 200, in_order.text
    np.testing.assert_allclose(in_order.json()["predictions"], expected, rtol=1e-12)

    infer = v2(session, champion_server, columnar(rows))
    assert infer.status_code == 200, infer.text
    body = infer.json()
    assert body["model_version"] == "1" and body["parameters"]["model_alias"] == "champion"
    assert body["outputs"][0]["name"] == "score" and body["outputs"][0]["shape"] == [7]
    np.testing.assert_allclose(body["outputs"][0]["data"], expected, rtol=1e-12)

    matrix = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [7, 4],
                "datatype": "BYTES",
                "data": rows[FEATURES].astype(object).values.tolist(),
            }
        ]
    }
    infer = v2(session, champion_server, matrix)
    assert infer.status_code == 200, infer.text
    np.testing.assert_allclose(infer.json()["outputs"][0]["data"], expected, rtol=1e-12)


@pytest.mark.server
def test_v1_latency(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    body = {"instances": instances(registry.rows.head(1))}
    latencies = []
    for _ in range(200):
        started = time.perf_counter()
        response = v1(session, champion_server, body)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200
    p50 = statistics.median(latencies)
    p95 = sorted(latencies)[int(0.95 * len(latencies))]
    print(f"\n[measure] 1-row V1 latency over 200 requests: p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms")
    assert p50 < 0.25


GOOD = {"tenure": 12.0, "charges": 70.5, "calls": 2, "plan": "basic"}
GOOD_JSON = '{"instances": [{"tenure": 12.0, "charges": 70.5, "calls": 2, "plan": "basic"}]}'
BAD_REQUESTS: list[tuple[str, str, Any, list[str]]] = [
    ("wrong content type", "v1:text/csv", "tenure,charges\n1,2\n", ["415", "text/csv", "application/json"]),
    ("xml content type", "v1:application/xml", GOOD_JSON, ["415", "application/xml"]),
    # Python's JSON reader (text/plain bodies) accepts NaN/Infinity; the model server must not.
    ("NaN as text/plain", "v1:text/plain", GOOD_JSON.replace("12.0", "NaN"), ["tenure", "nan", "finite"]),
    ("Infinity as text/plain", "v1:text/plain", GOOD_JSON.replace("70.5", "-Infinity"), ["charges", "finite"]),
    ("huge number", "v1", GOOD_JSON.replace("70.5", "1e999"), ["infinity"]),
    ("oversized batch", "v1", {"instances": [GOOD] * (MAX_ROWS + 1)}, ["413", f"{MAX_ROWS + 1} rows", "at most"]),
    ("unknown model name", "v1:model=nosuchmodel", {"instances": [GOOD]}, ["404", "nosuchmodel"]),
    ("entity ids without feature store", "v1", {"entity_ids": [1, 2]}, ["entity ids", "instances"]),
    (
        "v2 oversized batch",
        "v2",
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [MAX_ROWS + 1, 4],
                    "datatype": "BYTES",
                    "data": [[12.0, 70.5, 2, "basic"]] * (MAX_ROWS + 1),
                }
            ]
        },
        ["413", "at most"],
    ),
    (
        "v2 NaN",
        "v2",
        {
            "inputs": [
                {**i, "data": [float("nan")]} if i["name"] == "charges" else i
                for i in columnar(pd.DataFrame([GOOD]))["inputs"]
            ]
        },
        ["charges", "finite"],
    ),
    ("v2 malformed JSON", "v2", '{"inputs": [', []),
    ("missing feature", "v1", {"instances": [{k: v for k, v in GOOD.items() if k != "calls"}]}, ["missing", "calls"]),
    ("extra feature", "v1", {"instances": [{**GOOD, "zodiac": "leo"}]}, ["unknown", "zodiac"]),
    ("string for number", "v1", {"instances": [{**GOOD, "tenure": "twelve"}]}, ["tenure", "number"]),
    ("number for category", "v1", {"instances": [{**GOOD, "plan": 3}]}, ["plan", "string"]),
    ("fraction for integer", "v1", {"instances": [{**GOOD, "calls": 2.5}]}, ["calls", "integer"]),
    ("null value", "v1", {"instances": [{**GOOD, "charges": None}]}, ["charges", "null"]),
    # kserve decodes the body before the model sees it and names the JSON error itself.
    ("NaN literal", "v1", '{"instances": [{"tenure": NaN, "charges": 1, "calls": 1, "plan": "basic"}]}', ["format"]),
    ("empty batch", "v1", {"instances": []}, ["empty"]),
    ("malformed JSON", "v1", '{"instances": [', ["format", "end of data"]),
    ("no instances key", "v1", {"rows": []}, ["instances"]),
    ("instance not an object", "v1", {"instances": [42]}, ["instance 0"]),
    ("short row", "v1", {"instances": [[1.0, 2.0]]}, ["2 values", "expected 4"]),
    (
        "v2 missing input",
        "v2",
        {"inputs": [i for i in columnar(pd.DataFrame([GOOD]))["inputs"] if i["name"] != "plan"]},
        ["missing", "plan"],
    ),
    (
        "v2 unequal lengths",
        "v2",
        {
            "inputs": [
                {**i, "shape": [2], "data": i["data"] * 2} if i["name"] == "plan" else i
                for i in columnar(pd.DataFrame([GOOD]))["inputs"]
            ]
        },
        ["different lengths"],
    ),
    (
        "v2 text for number",
        "v2",
        {
            "inputs": [
                {**i, "datatype": "BYTES", "data": ["x"]} if i["name"] == "charges" else i
                for i in columnar(pd.DataFrame([GOOD]))["inputs"]
            ]
        },
        ["charges", "number"],
    ),
    (
        "v2 shape disagrees with data",
        "v2",
        {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "BYTES", "data": [1, 2, 3, 4]}]},
        ["shape"],
    ),
]


@pytest.mark.server
@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_4xx_naming_the_problem(
    champion_server: LocalServer, case: tuple[str, str, Any, list[str]]
) -> None:
    _, protocol, body, words = case
    session = requests.Session()
    protocol, _, option = protocol.partition(":")
    if protocol == "v1" and option.startswith("model="):
        response = v1(session, champion_server, body, model=option.removeprefix("model="))
    elif protocol == "v1":
        response = v1(session, champion_server, body, content_type=option or "application/json")
    else:
        response = v2(session, champion_server, body)
    assert 400 <= response.status_code < 500, response.text
    text = f"{response.status_code} {response.text}"
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    good = v1(session, champion_server, {"instances": [GOOD]})
    assert good.status_code == 200 and good.json()["model_version"] == "1"


# JSON-ish values a client might send by mistake, including the ones Python's json accepts and JSON does not.
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FEATURE_NAMES = st.sampled_from([*FEATURES, "zodiac", "", "instances"])


@st.composite
def bad_requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(route, content type, body): broken instances, V2 tensors, raw bytes and content types."""
    kind = draw(st.sampled_from(["v1_value", "v1_keys", "v1_any", "v2", "bytes"]))
    route = "v2" if kind == "v2" else "v1"
    content_type = "application/json"
    if kind == "v1_value":
        instance = {**GOOD, draw(st.sampled_from(FEATURES)): draw(_JSON_VALUES)}
        body: Any = {"instances": [instance] * draw(st.integers(0, 3))}
    elif kind == "v1_keys":
        instance = draw(st.dictionaries(_FEATURE_NAMES, _JSON_SCALARS, max_size=6))
        body = {draw(st.sampled_from(["instances", "entity_ids", "inputs"])): [instance]}
    elif kind == "v1_any":
        body = draw(_JSON_VALUES)
    elif kind == "v2":
        inputs = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": _FEATURE_NAMES,
                        "shape": st.lists(st.integers(-2, 5), max_size=3),
                        "datatype": st.sampled_from(["FP64", "INT64", "BYTES", "BOOL", "FP32", "NOPE"]),
                        "data": st.lists(_JSON_SCALARS, max_size=6),
                    }
                ),
                max_size=5,
            )
        )
        body = {"inputs": inputs}
    else:
        content_type = draw(st.sampled_from(["application/json", "text/plain", "text/csv", "application/octet-stream"]))
        return route, content_type, draw(st.binary(max_size=64))
    return route, content_type, json.dumps(body, allow_nan=True).encode()


@pytest.mark.server
def test_fuzzed_bad_requests_never_get_a_5xx(champion_server: LocalServer, registry: Registry) -> None:
    session = requests.Session()
    answered: Counter[int] = Counter()
    base = champion_server.endpoint

    @settings(
        max_examples=1500,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure can be reproduced
        suppress_health_check=list(HealthCheck),
    )
    @given(bad_requests())
    def send(case: tuple[str, str, bytes]) -> None:
        route, content_type, body = case
        url = f"{base}/v1/models/solo:predict" if route == "v1" else f"{base}/v2/models/solo/infer"
        response = session.post(url, data=body, headers={"content-type": content_type}, timeout=10)
        answered[response.status_code] += 1
        assert response.status_code < 500, (
            f"{response.status_code} for {route} {content_type} {body[:200]!r}: " + (response.text[:300])
        )

    started = time.perf_counter()
    send()
    print(f"\n[measure] {sum(answered.values())} fuzzed requests in {time.perf_counter() - started:.1f}s: {answered}")
    assert sum(answered.values()) >= 1000
    assert sum(n for code, n in answered.items() if 400 <= code < 500) > 0.9 * sum(answered.values())
    rows = registry.rows.head(3)
    good = v1(session, champion_server, {"instances": instances(rows)})
    assert good.status_code == 200
    np.testing.assert_allclose(good.json()["predictions"], registry.expected("a", rows), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Canary, hot swap, unloadable versions


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
    from components.register import promote, rollback

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
def test_metrics_and_inference_log_record_real_requests(champion_server: LocalServer, registry: Registry) -> None:
    from components.common.inference_log import read_window

    session = requests.Session()
    rows = registry.rows.head(4)
    ids = []
    for _ in range(5):
        answer = v1(session, champion_server, {"instances": instances(rows)}).json()
        ids.append(answer["request_id"])
    v1(session, champion_server, {"instances": [{**GOOD, "tenure": "x"}]})  # one rejected request
    metrics = requests.get(f"{champion_server.endpoint}/metrics", timeout=5).text
    ok = [line for line in metrics.splitlines() if line.startswith("ctpipe_requests_total{") and 'status="ok"' in line]
    assert ok and all('version="1"' in line for line in ok), ok
    assert float(ok[0].rsplit(" ", 1)[1]) >= 5
    assert any(
        line.startswith("ctpipe_requests_total{") and 'status="rejected"' in line for line in metrics.splitlines()
    )
    assert 'ctpipe_request_latency_seconds_bucket{le="0.1",model="solo",version="1"}' in metrics
    assert 'ctpipe_prediction_count{model="solo",version="1"}' in metrics

    log_dir = Path(champion_server.log_path).parents[1] / "inference_log"
    logged = wait_for_log(log_dir, set(ids))
    mine = logged[logged["request_id"].isin(ids)]
    assert len(mine) == 5 * len(rows)
    assert set(mine["model_version"]) == {"1"} and set(mine["status"]) == {"ok"}
    first = mine[mine["request_id"] == ids[0]].sort_values("row")
    np.testing.assert_allclose(first["prediction"], registry.expected("a", rows), rtol=1e-12)
    np.testing.assert_allclose(first["tenure"], rows["tenure"], rtol=1e-12)
    assert (mine["latency_ms"] > 0).all()
    assert list(log_dir.glob("date=*/part-*.parquet")), "partitioned by date"
    assert read_window(log_dir, model_name="solo")["request_id"].isin(ids).sum() == len(mine)


def wait_for_log(log_dir: Path, ids: set[str], timeout: float = 15) -> pd.DataFrame:
    from components.common.inference_log import read_window

    deadline = time.monotonic() + timeout
    while True:
        if log_dir.is_dir():
            frame = read_window(log_dir)
            if ids <= set(frame["request_id"]):
                return frame
        if time.monotonic() > deadline:
            raise AssertionError(f"requests {sorted(ids)[:3]}... not in the inference log at {log_dir}")
        time.sleep(0.1)


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


# ---------------------------------------------------------------------------------------------
# Local server lifecycle


@pytest.mark.server
def test_start_is_idempotent_and_stop_only_stops_ours(registry: Registry, tmp_path: Path) -> None:
    registry.create("life", ["a"], {"champion": 1})
    spec = ServingSpec(model_name="life", port=free_port())
    workspace = str(tmp_path / "ws")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        first = start_local_server(spec, registry.tracking_uri, workspace, poll_seconds=POLL)
        again = start_local_server(spec, registry.tracking_uri, workspace)
        assert not first.reused and again.reused and again.pid == first.pid
        other = spec.model_copy(update={"model_name": "someone-else"})
        with pytest.raises(DeployError, match="used by a ctpipe server for model 'life'"):
            start_local_server(other, registry.tracking_uri, str(tmp_path / "other"))

        # A pid file naming an unrelated process must never kill it.
        foreign = tmp_path / "foreign"
        (foreign / "serving").mkdir(parents=True)
        (foreign / "serving" / "server.pid").write_text(f"{bystander.pid}\n")
        assert stop_local_server(str(foreign)) is False
        assert bystander.poll() is None

        assert stop_local_server(workspace) is True
        assert not Path(first.pid_path).exists()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{first.endpoint}/v2/health/live", timeout=2)
        assert stop_local_server(workspace) is False
    finally:
        stop_local_server(workspace)
        os.kill(bystander.pid, signal.SIGKILL)
        bystander.wait()


# ---------------------------------------------------------------------------------------------
# Request validation without a server


def test_frame_from_v2_rejects_duplicates_and_bad_shapes() -> None:
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferInput, InferRequest

    from serving.model import Feature, frame_from_v2

    features = [Feature("x", "number"), Feature("c", "string")]
    ok = InferRequest(
        "m",
        [InferInput("x", [2, 1], "FP64", [[1.0], [2.0]]), InferInput("c", [2], "BYTES", ["a", "b"])],
    )
    frame = frame_from_v2(ok, features)
    assert list(frame.columns) == ["x", "c"] and frame["x"].dtype == np.float64
    duplicate = InferRequest("m", [InferInput("x", [1], "FP64", [1.0]), InferInput("x", [1], "FP64", [1.0])])
    with pytest.raises(InvalidInput, match="more than once"):
        frame_from_v2(duplicate, features)
    with pytest.raises(InvalidInput, match="no inputs"):
        frame_from_v2(InferRequest("m", []), features)
    matrix = InferRequest("m", [InferInput("input-0", [1, 3], "FP64", [1.0, 2.0, 3.0])])
    with pytest.raises(InvalidInput, match=r"\[rows, 2\]"):
        frame_from_v2(matrix, features)


# ---------------------------------------------------------------------------------------------
# Manifests and the cluster seam


@pytest.fixture(scope="module")
def crd_validator() -> Any:
    return kserve_crd_validator()


@pytest.mark.parametrize("mode", ["Serverless", "Standard"])
@pytest.mark.parametrize("canary", [None, 20])
def test_manifest_validates_against_crd(crd_validator: Any, mode: str, canary: int | None) -> None:
    from serving.manifests import render_inference_service

    spec = ServingSpec(model_name="churn-model", deployment_mode=mode, namespace="ml")  # type: ignore[arg-type]
    manifest = render_inference_service(
        spec, "registry.example/ctpipe/serving:0.1.0", "7", "http://mlflow:5000", canary, stable_version="6"
    )
    errors = sorted(crd_validator.iter_errors(manifest), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)

    predictor = manifest["spec"]["predictor"]
    container = predictor["containers"][0]
    annotations = manifest["metadata"]["annotations"]
    assert container["name"] == "kserve-container"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in container["env"]
    assert manifest["metadata"]["namespace"] == "ml"
    if mode == "Serverless":
        assert annotations["serving.kserve.io/deploymentMode"] == "Knative"
        assert container["args"][-2:] == ["--model-version", "7"]
        assert predictor.get("canaryTrafficPercent") == canary
    else:
        assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
        assert "canaryTrafficPercent" not in predictor
        if canary is None:  # all traffic to the new version
            assert container["args"][-2:] == ["--model-version", "7"]
            assert "canary" not in manifest["spec"]
        else:  # the champion keeps spec.predictor; spec.canary pins the new version with its share
            assert container["args"][-2:] == ["--model-version", "6"]
            (entry,) = manifest["spec"]["canary"]
            assert entry["trafficPercent"] == 20
            assert entry["predictor"]["containers"][0]["args"][-2:] == ["--model-version", "7"]
            assert {"name": "CTPIPE_MODEL_VERSION", "value": "7"} in entry["predictor"]["containers"][0]["env"]


def test_standard_mode_canary_needs_the_stable_version() -> None:
    from serving.manifests import render_inference_service

    spec = ServingSpec(model_name="m", deployment_mode="Standard")
    with pytest.raises(DeployError, match="stable"):
        render_inference_service(spec, "img:1", "7", "http://mlflow:5000", 20)


def test_strict_crd_check_catches_a_misspelled_field(crd_validator: Any) -> None:
    from serving.manifests import render_inference_service

    manifest = render_inference_service(ServingSpec(model_name="m"), "img", "1", "http://mlflow:5000", None)
    manifest["spec"]["predictor"]["canaryTraficPercent"] = 10
    assert any("canaryTraficPercent" in e.message for e in crd_validator.iter_errors(manifest))


def test_manifest_rejects_what_a_cluster_would() -> None:
    from serving.manifests import render_inference_service

    with pytest.raises(DeployError, match="cannot name an InferenceService"):
        render_inference_service(ServingSpec(model_name="Churn_Model"), "img", "1", "http://m:5000", None)
    with pytest.raises(DeployError, match="password"):
        render_inference_service(ServingSpec(model_name="m"), "img", "1", "http://u:secret@m:5000", None)
    with pytest.raises(DeployError, match="between 0 and 100"):
        render_inference_service(ServingSpec(model_name="m"), "img", "1", "http://m:5000", 120)


def test_seam_dry_run_records_and_never_builds_a_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import kserve

    from serving.cluster import KServeSeam
    from serving.manifests import render_inference_service

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("KServeClient must not be constructed in dry-run mode")

    monkeypatch.setattr(kserve, "KServeClient", forbidden)
    seam = KServeSeam(namespace="ml", dry_run=True, client_factory=forbidden)
    manifest = render_inference_service(ServingSpec(model_name="m", namespace="ml"), "img", "1", "http://m:5000", 10)
    assert seam.apply(manifest) is None
    assert seam.get("m") is None
    assert seam.delete("m") is False
    assert [(c.verb, c.name, c.namespace, c.dry_run) for c in seam.calls] == [
        ("apply", "m", "ml", True),
        ("get", "m", "ml", True),
        ("delete", "m", "ml", True),
    ]
    assert seam.calls[0].manifest == manifest
    with pytest.raises(RuntimeError, match="dry-run"):
        _ = seam.client


def test_seam_builds_the_client_lazily() -> None:
    from serving.cluster import KServeSeam

    built: list[int] = []

    def factory() -> str:
        built.append(1)
        return "client"

    seam = KServeSeam(client_factory=factory)
    assert built == []
    assert seam.client == "client" and seam.client == "client"
    assert built == [1]


# ---------------------------------------------------------------------------------------------
# The model's registry logic in-process (no server)


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


def test_cli_help_names_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving.server", "--help"], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    for option in ("--model-name", "--tracking-uri", "--host", "--port", "--poll-seconds", "--model-version"):
        assert option in result.stdout
    assert "127.0.0.1" in result.stdout
