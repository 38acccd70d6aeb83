"""Model server latency on loopback with the demo model, beside in-process predict and MLServer on the same model.

The model is the one a user gets (``demo_model``: the training pipeline on demo data with
ctpipe.yaml, promoted to champion). The server is started as ``ctpipe serve`` starts it: the
local model server with the inference log on and Feast's sqlite online store for requests that
name entity ids.

One client (``http.client``, one keep-alive connection with TCP_NODELAY, one request at a time)
sends, per case, 200 warm-up requests and then 2,000 timed ones (``CTPIPE_BENCH_WARMUP``,
``CTPIPE_BENCH_REQUESTS`` change the counts for a quick check). Cases, with 1 and 100 rows:
V1 instances, V2 columnar, entity ids over V1 (``{"entity_ids": [...]}``) and over V2 (one input
named ``entity_ids``). Every answer must be HTTP 200 and equal the in-process model's scores for
those rows (1e-5); the timing stops when the body is read, before it is checked.

In the same run, on the same rows and with the same counts:

- scikit-learn ``predict_proba`` on a pandas frame, one thread;
- the version's ONNX model (``components.common.compiled_model.OnnxScorer``), on columns and on a frame;
- Feast's online lookup of the same entity ids (``components.common.feast.online_features``), the part
  of an entity-id request that a feature-value request does not have;
- MLServer's scikit-learn runtime on the same pickled pipeline (its own virtualenv, ``reference_servers``),
  V2 with the pandas content type, with MLServer's default inference worker process and with
  inference in the server process (``parallel_workers: 0``), both with one OpenMP thread (as the
  ONNX scorer and the sklearn baseline; see ``start_mlserver``); the faster is the reference.

Results: ``out/bench/serving_latency.json``, with the ratios the issue's goals are stated in
(1 row on loopback: p99 <= 3 ms over V1 and V2, <= 4 ms by entity id; ctpipe p50 <= 1/3 of
MLServer's). Goals are reported, not asserted: the numbers depend on the machine.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from components.common.compiled_model import OnnxScorer
from components.common.feast import EntityLookup, online_features
from components.common.model_input import Feature, prepare_features
from components.common.registry import ONNX_ARTIFACT, ONNX_PARITY_TAG, ONNX_SHA256_TAG, SERVING_RUNTIME_TAG
from components.common.server_process import get_status, start_local_server, stop_local_server
from tests.benchmarks.conftest import DemoModel, bench_dir, progress
from tests.benchmarks.reference_servers import (
    MLSERVER_VERSION,
    ReferenceServerError,
    ensure_mlserver_venv,
    start_mlserver,
    write_sklearn_model,
)

pytestmark = pytest.mark.bench

BATCHES = (1, 100)
TOLERANCE = 1e-5
GOAL_P99_MS = {"v1": 3.0, "v2": 3.0, "entity_v1": 4.0, "entity_v2": 4.0}
GOAL_P50_VS_MLSERVER = 1 / 3
JSON_HEADERS = {"Content-Type": "application/json"}
# Open Inference Protocol datatypes of the feature kinds (serving.decoding.OIP_DATATYPE).
OIP_DATATYPE = {"number": "FP64", "integer": "INT64", "string": "BYTES", "boolean": "BOOL"}


def counts() -> tuple[int, int]:
    """Warm-up and timed requests per case: 200 and 2,000 unless CTPIPE_BENCH_WARMUP / CTPIPE_BENCH_REQUESTS say."""
    return int(os.environ.get("CTPIPE_BENCH_WARMUP", 200)), int(os.environ.get("CTPIPE_BENCH_REQUESTS", 2000))


class KeepAliveClient:
    """One HTTP/1.1 connection, kept alive for every request of a case; fails if the server closes it.

    ``http.client`` sends the headers and the body in two writes, so TCP_NODELAY is set: with
    Nagle's algorithm the body would wait for the server's delayed ACK (up to 40 ms).
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self.connection.connect()
        sock = self.connection.sock
        assert sock is not None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send one request and read the whole answer."""
        self.connection.request("POST", path, body=body, headers=JSON_HEADERS)
        response = self.connection.getresponse()
        data = response.read()
        if self.connection.sock is not self._socket:
            raise AssertionError(f"the server closed the keep-alive connection (answer {response.status})")
        return response.status, data

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class Case:
    """One kind of request: where it goes, its body, and how to read the scores out of the answer."""

    name: str
    path: str
    body: bytes
    rows: int
    expected: np.ndarray
    scores: Callable[[dict[str, Any]], np.ndarray]
    version: str | None = None
    """The model version the answer must name (ctpipe's answers say which version answered)."""


def summary(seconds: Sequence[float], rows: int) -> dict[str, Any]:
    """p50/p90/p99/max in milliseconds and throughput of one case."""
    ms = np.asarray(seconds) * 1000
    total = float(np.sum(seconds))
    return {
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "requests_per_s": round(len(ms) / total, 1),
        "rows_per_s": round(rows * len(ms) / total, 1),
    }


def time_calls(call: Callable[[], Any], check: Callable[[Any], None], warmup: int, timed: int) -> list[float]:
    """Run ``call`` ``warmup`` times, then ``timed`` times with each call timed; ``check`` every result, untimed."""
    for _ in range(warmup):
        check(call())
    seconds = []
    for _ in range(timed):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        check(result)
    return seconds


def unchecked(_: Any) -> None:
    """The check of an in-process call: none (its result is compared once, outside the timing loop)."""


def run_case(host: str, port: int, case: Case, warmup: int, timed: int) -> dict[str, Any]:
    """Time one case on a fresh keep-alive connection and check every answer."""
    client = KeepAliveClient(host, port)

    def check(answer: tuple[int, bytes]) -> None:
        status, data = answer
        if status != 200:
            raise AssertionError(f"{case.name}: HTTP {status}: {data[:500]!r}")
        payload = json.loads(data)
        if case.version is not None and str(payload.get("model_version")) != case.version:
            raise AssertionError(f"{case.name}: answered by version {payload.get('model_version')}, not {case.version}")
        got = case.scores(payload)
        worst = float(np.max(np.abs(got - case.expected))) if got.shape == case.expected.shape else np.inf
        if not worst <= TOLERANCE:
            raise AssertionError(f"{case.name}: scores {got[:5]} differ from in-process {case.expected[:5]} ({worst})")

    try:
        seconds = time_calls(lambda: client.post(case.path, case.body), check, warmup, timed)
    finally:
        client.close()
    return summary(seconds, case.rows)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def v1_body(frame: pd.DataFrame) -> bytes:
    return json.dumps({"instances": frame.to_dict(orient="records")}, default=_plain).encode()


def v2_body(frame: pd.DataFrame, features: Sequence[Feature]) -> bytes:
    inputs = [
        {"name": f.name, "shape": [len(frame)], "datatype": OIP_DATATYPE[f.kind], "data": frame[f.name].tolist()}
        for f in features
    ]
    return json.dumps({"inputs": inputs}).encode()


def entity_v1_body(ids: list[Any]) -> bytes:
    return json.dumps({"entity_ids": ids}).encode()


def entity_v2_body(ids: list[Any]) -> bytes:
    datatype = "INT64" if all(isinstance(i, int) for i in ids) else "BYTES"
    return json.dumps(
        {"inputs": [{"name": "entity_ids", "shape": [len(ids)], "datatype": datatype, "data": ids}]}
    ).encode()


def mlserver_body(frame: pd.DataFrame, features: Sequence[Feature]) -> bytes:
    """A V2 request MLServer decodes into a DataFrame: pandas content type, one input per column.

    String columns carry the ``str`` content type, or MLServer hands them to the model as bytes
    (which the one-hot encoder would silently treat as unknown categories).
    """
    inputs = []
    for f in features:
        item: dict[str, Any] = {
            "name": f.name,
            "shape": [len(frame)],
            "datatype": OIP_DATATYPE[f.kind],
            "data": frame[f.name].tolist(),
        }
        if f.kind == "string":
            item["parameters"] = {"content_type": "str"}
        inputs.append(item)
    request = {"parameters": {"content_type": "pd"}, "inputs": inputs, "outputs": [{"name": "predict_proba"}]}
    return json.dumps(request).encode()


def v1_scores(payload: dict[str, Any]) -> np.ndarray:
    return np.asarray(payload["predictions"], dtype=float)


def v2_scores(payload: dict[str, Any]) -> np.ndarray:
    output = next(o for o in payload["outputs"] if o["name"] == "score")
    return np.asarray(output["data"], dtype=float)


def mlserver_scores(payload: dict[str, Any]) -> np.ndarray:
    output = next(o for o in payload["outputs"] if o["name"] == "predict_proba")
    return np.asarray(output["data"], dtype=float).reshape(output["shape"])[:, 1]


def runtime_fields(status: Any) -> dict[str, Any]:
    """Every field of the server status whose name mentions the runtime (``runtime``, ``runtimes``, per version)."""
    found: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if "runtime" in str(key):
                    found[where] = value
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(status, "")
    return found


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else float("inf")


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'case':<34}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>9}")
    for name, row in results.items():
        print(
            f"{name:<34}{row['p50_ms']:>9.3f}{row['p90_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['max_ms']:>9.3f}"
            f"{row['requests_per_s']:>9.1f}"
        )


def test_serving_latency_with_the_demo_model(demo_model: DemoModel, tmp_path: Path, record_bench: Any) -> None:
    warmup, timed = counts()
    load_at_start = round(os.getloadavg()[0], 2)
    model, config, features = demo_model.model, demo_model.config, demo_model.features
    names = [f.name for f in features]
    entity = config.dataset.entity_column
    # MLServer first: if it cannot be installed, fail before minutes of measuring.
    try:
        mlserver_python = ensure_mlserver_venv(bench_dir() / "mlserver-venv", progress)
    except ReferenceServerError as exc:
        pytest.fail(f"MLServer, the reference server, cannot be installed: {exc}")

    sample = demo_model.rows.sample(max(BATCHES), random_state=19).reset_index(drop=True)
    batches = {n: sample.head(n) for n in BATCHES}
    frames = {n: prepare_features(rows, config.dataset, names) for n, rows in batches.items()}
    expected = {n: np.asarray(model.predict_proba(frames[n]))[:, 1] for n in BATCHES}
    ids = {n: [int(i) for i in rows[entity]] for n, rows in batches.items()}
    # What the server reads for those ids: the online store, looked up in this process the same way.
    online = {
        n: pd.DataFrame(online_features(ids[n], config.dataset, config.feast, str(config.workspace)).rows)
        for n in BATCHES
    }
    for n in BATCHES:
        assert len(online[n]) == n, f"Feast's online store lacks ids of the sample: {ids[n]}"
    expected_by_id = {
        n: np.asarray(model.predict_proba(prepare_features(online[n], config.dataset, names)))[:, 1] for n in BATCHES
    }

    results: dict[str, dict[str, Any]] = {}
    problems: list[str] = []

    # -- in process ----------------------------------------------------------------------------
    progress("in-process baselines: sklearn predict_proba (one thread), ONNX, Feast online lookup")
    tags = demo_model.tags
    onnx = OnnxScorer.from_file(demo_model.artifacts / ONNX_ARTIFACT, tags[ONNX_SHA256_TAG], features, "score")
    onnx_differences = {}
    for n in BATCHES:
        frame = frames[n]
        columns = {name: frame[name].tolist() for name in names}
        with threadpool_limits(limits=1):
            seconds = time_calls(partial(model.predict_proba, frame), unchecked, warmup, timed)
        results[f"sklearn_predict_proba_{n}_rows"] = summary(seconds, n)
        seconds = time_calls(partial(onnx.score_columns, columns), unchecked, warmup, timed)
        results[f"onnx_score_columns_{n}_rows"] = summary(seconds, n)
        seconds = time_calls(partial(onnx.score_frame, frame), unchecked, warmup, timed)
        results[f"onnx_score_frame_{n}_rows"] = summary(seconds, n)
        onnx_differences[f"{n}_rows"] = float(np.max(np.abs(onnx.score_columns(columns) - expected[n])))
        lookup_ids = partial(online_features, ids[n], config.dataset, config.feast, str(config.workspace))
        results[f"feast_online_features_{n}_rows"] = summary(time_calls(lookup_ids, unchecked, warmup, timed), n)

    # -- ctpipe, as `ctpipe serve` starts it ------------------------------------------------------
    assert config.serving.inference_log, "ctpipe.yaml turned the inference log off; the benchmark measures it on"
    lookup = EntityLookup(dataset=config.dataset, feast=config.feast, workspace=str(config.workspace))
    progress(f"ctpipe model server: {len(BATCHES) * 4} cases x ({warmup} warm-up + {timed} timed) requests")
    server = start_local_server(config.serving, config.tracking_uri, str(config.workspace), entity_lookup=lookup)
    try:
        assert not server.reused
        status = get_status(server.endpoint) or {}
        assert str(status.get("champion_version")) == demo_model.version, status
        name, version = config.serving.model_name, demo_model.version
        v1_path, v2_path = f"/v1/models/{name}:predict", f"/v2/models/{name}/infer"
        for n in BATCHES:
            cases = [
                Case("v1", v1_path, v1_body(frames[n]), n, expected[n], v1_scores, version),
                Case("v2", v2_path, v2_body(frames[n], features), n, expected[n], v2_scores, version),
                Case("entity_v1", v1_path, entity_v1_body(ids[n]), n, expected_by_id[n], v1_scores, version),
                Case("entity_v2", v2_path, entity_v2_body(ids[n]), n, expected_by_id[n], v2_scores, version),
            ]
            for case in cases:
                results[f"ctpipe_{case.name}_{n}_rows"] = run_case(server.host, server.port, case, warmup, timed)
        status_after = get_status(server.endpoint) or {}
    finally:
        stop_local_server(str(config.workspace))

    # -- MLServer, same pickled pipeline ---------------------------------------------------------
    repository = tmp_path / "mlserver"
    write_sklearn_model(model, repository, config.serving.model_name, demo_model.version)
    mlserver_settings = {}
    for label, workers in (("mlserver", None), ("mlserver_inprocess", 0)):
        progress(f"{label}: {len(BATCHES)} cases x ({warmup} warm-up + {timed} timed) requests")
        try:
            reference = start_mlserver(mlserver_python, repository, config.serving.model_name, parallel_workers=workers)
        except ReferenceServerError as exc:
            pytest.fail(f"MLServer, the reference server, cannot be started: {exc}")
        try:
            shown = {k: v for k, v in reference.settings.items() if not k.endswith("_dir")}  # no tmp paths
            mlserver_settings[label] = {**shown, "start_seconds": reference.start_seconds}
            for n in BATCHES:
                case = Case(
                    label, reference.infer_path, mlserver_body(frames[n], features), n, expected[n], mlserver_scores
                )
                results[f"{label}_v2_{n}_rows"] = run_case(reference.host, reference.port, case, warmup, timed)
        finally:
            reference.stop()

    # -- ratios and goals -------------------------------------------------------------------------
    def p(name: str, key: str = "p50_ms") -> float:
        return float(results[name][key])

    # The runtime the server reports for the version (the version's tag if the status does not say).
    runtimes = status_after.get("runtimes") or {}
    entry = runtimes.get(demo_model.version) if isinstance(runtimes, dict) else None
    served_runtime = str((entry or {}).get("runtime") or tags.get(SERVING_RUNTIME_TAG) or "sklearn")
    scorer = {
        n: f"onnx_score_columns_{n}_rows" if served_runtime == "onnx" else f"sklearn_predict_proba_{n}_rows"
        for n in BATCHES
    }
    ratios: dict[str, Any] = {"served_runtime": served_runtime}
    goals: dict[str, Any] = {}
    for n in BATCHES:
        references = {label: p(f"{label}_v2_{n}_rows") for label in ("mlserver", "mlserver_inprocess")}
        faster = min(references, key=references.__getitem__)
        ratios[f"ctpipe_v2_p50_over_mlserver_p50_{n}_rows"] = {
            "value": ratio(p(f"ctpipe_v2_{n}_rows"), p(f"{faster}_v2_{n}_rows")),
            "reference": faster,
            "over_default_mlserver": ratio(p(f"ctpipe_v2_{n}_rows"), p(f"mlserver_v2_{n}_rows")),
        }
        for protocol in ("v1", "v2"):
            served = p(f"ctpipe_{protocol}_{n}_rows")
            ratios[f"ctpipe_{protocol}_p50_over_sklearn_p50_{n}_rows"] = ratio(
                served, p(f"sklearn_predict_proba_{n}_rows")
            )
            ratios[f"ctpipe_{protocol}_p50_over_onnx_p50_{n}_rows"] = ratio(served, p(f"onnx_score_columns_{n}_rows"))
            ratios[f"ctpipe_{protocol}_p50_minus_sklearn_p50_ms_{n}_rows"] = round(
                served - p(f"sklearn_predict_proba_{n}_rows"), 3
            )
            ratios[f"ctpipe_{protocol}_p50_minus_onnx_p50_ms_{n}_rows"] = round(
                served - p(f"onnx_score_columns_{n}_rows"), 3
            )
            # What the server adds to its own work: p50 less the in-process p50 of the runtime it scores with
            # (and, by entity id, of the Feast lookup).
            ratios[f"ctpipe_{protocol}_p50_minus_served_runtime_p50_ms_{n}_rows"] = round(served - p(scorer[n]), 3)
            ratios[f"ctpipe_entity_{protocol}_p50_minus_feast_and_served_runtime_p50_ms_{n}_rows"] = round(
                p(f"ctpipe_entity_{protocol}_{n}_rows") - p(f"feast_online_features_{n}_rows") - p(scorer[n]), 3
            )
    for kind, goal in GOAL_P99_MS.items():
        value = p(f"ctpipe_{kind}_1_rows", "p99_ms")
        goals[f"ctpipe_{kind}_1_row_p99_ms"] = {"value": value, "goal": goal, "met": value <= goal}
        ratios[f"ctpipe_{kind}_1_row_p99_over_goal"] = ratio(value, goal)
    share = ratios["ctpipe_v2_p50_over_mlserver_p50_1_rows"]["value"]
    goals["ctpipe_v2_1_row_p50_over_mlserver_p50"] = {
        "value": share,
        "goal": round(GOAL_P50_VS_MLSERVER, 3),
        "met": share <= GOAL_P50_VS_MLSERVER,
    }

    for key, worst in onnx_differences.items():
        if tags.get(SERVING_RUNTIME_TAG) == "onnx" and worst > TOLERANCE:
            problems.append(f"the served runtime is onnx but ONNX differs from sklearn by {worst} ({key})")

    record_bench(
        "serving_latency",
        {
            "warmup_per_case": warmup,
            "requests_per_case": timed,
            "loopback": True,
            "load_average_1m_at_start": load_at_start,
            "client": "http.client, one keep-alive connection (TCP_NODELAY), one request at a time",
            "model": {
                "name": config.serving.model_name,
                "version": demo_model.version,
                "estimator": config.model.estimator,
                "params": config.model.params,
                "features": len(features),
                "training_pipeline_seconds": demo_model.training_seconds,
                "serving_runtime_tag": tags.get(SERVING_RUNTIME_TAG),
                "onnx_parity_tag": tags.get(ONNX_PARITY_TAG),
                "onnx_max_abs_difference_from_sklearn": onnx_differences,
            },
            "ctpipe_server": {
                "started_as": "ctpipe serve (start_local_server, inference log on, Feast sqlite online store)",
                "start_seconds": server.start_seconds,
                "reported_runtime": runtime_fields(status_after),
                "served": status_after.get("served"),
            },
            "mlserver": {"version": MLSERVER_VERSION, "settings": mlserver_settings},
            "results": results,
            "ratios": ratios,
            "goals": goals,
        },
    )
    print_table(results)
    print(f"\nserved runtime: {served_runtime}")
    for n in BATCHES:
        mlserver = ratios[f"ctpipe_v2_p50_over_mlserver_p50_{n}_rows"]
        print(f"ctpipe V2 p50 / MLServer p50, {n} rows: {mlserver['value']} (reference {mlserver['reference']})")
    for goal_name, goal in goals.items():
        print(f"goal {goal_name}: {goal['value']} (goal {goal['goal']}) {'met' if goal['met'] else 'NOT MET'}")
    assert not problems, problems
