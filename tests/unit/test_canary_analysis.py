"""Canary analysis on traffic a real server logged: one canary is promoted, one is rolled back."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import requests

from components.canary_analysis import canary_analysis
from components.common.registry import CANARY_DECISION_TAG, CANARY_TAG, CANARY_VERSION_TAG
from components.common.server_process import start_local_server, stop_local_server
from components.serving_spec import CanaryAnalysisSpec, ServingSpec
from tests.helpers import free_port
from tests.serving_helpers import POLL, Registry, build_registry, instances, make_frame
from tests.serving_helpers import wait_for_log as wait_for_logged
from tests.unit.test_infra_validate import DATASET


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return build_registry(tmp_path_factory.mktemp("canary-registry"))


# Enough requests that the PSI between the two versions' answers is not sampling noise.
REQUESTS = 400


def run_canary(registry: Registry, name: str, challenger: str, workspace: Path, requests_sent: int = REQUESTS) -> Path:
    """Serve champion 'a' and ``challenger`` at 50%, send real requests, return the inference log folder."""
    registry.create(name, ["a", challenger], {"champion": 1, "challenger": 2})
    client = registry.client()
    for version in ("1", "2"):
        client.set_model_version_tag(name, version, "ctpipe.blessed", "true")
    client.set_registered_model_tag(name, CANARY_VERSION_TAG, "2")
    client.set_registered_model_tag(name, CANARY_TAG, "50")
    spec = ServingSpec(model_name=name, port=free_port(), inference_log_flush_seconds=0.2)
    server = start_local_server(spec, registry.tracking_uri, str(workspace), poll_seconds=POLL)
    try:
        session = requests.Session()
        rows = make_frame(requests_sent, seed=7)
        ids = set()
        for index in range(requests_sent):
            url = f"{server.endpoint}/v1/models/{name}:predict"
            answer = session.post(url, json={"instances": instances(rows.iloc[[index]])}, timeout=10).json()
            ids.add(answer["request_id"])
        log_dir = workspace / "inference_log"
        wait_for_logged(log_dir, ids)
    finally:
        stop_local_server(str(workspace))
    return log_dir


def labels_for(log_dir: Path, path: Path) -> str:
    """Labels that arrived later: the same rule the models were trained on."""
    from components.common.inference_log import read_window

    log = read_window(log_dir)
    label = ((log.tenure < 20) & (log.plan == "basic") | (log.calls > 5)).astype(int)
    pd.DataFrame({"request_id": log.request_id, "row": log.row, "churned": label}).to_parquet(path)
    return str(path)


@pytest.mark.server
def test_similar_challenger_is_promoted(registry: Registry, tmp_path: Path) -> None:
    log_dir = run_canary(registry, "can-good", "a", tmp_path / "ws")  # the same model as a new version
    # ~80 labeled rows per version: accuracy's standard error is ~0.04, so allow a 0.15 drop here.
    limits = CanaryAnalysisSpec(min_requests=30, min_labeled=20, max_accuracy_drop=0.15)
    spec = ServingSpec(model_name="can-good", canary_analysis=limits)
    result = canary_analysis(
        spec,
        registry.tracking_uri,
        str(log_dir),
        str(tmp_path / "result.json"),
        str(tmp_path / "report.md"),
        labels_for(log_dir, tmp_path / "labels.parquet"),
        DATASET,
    )
    assert result.decision == "promote", result.reason
    assert {c.name for c in result.checks} == {"error_rate", "latency_p95", "prediction_psi", "accuracy"}
    assert result.champion is not None and result.challenger is not None
    assert result.champion.requests + result.challenger.requests == REQUESTS
    assert result.challenger.labeled >= 20 and result.challenger.accuracy is not None
    aliases = {k: str(v) for k, v in registry.client().get_registered_model("can-good").aliases.items()}
    assert aliases.get("champion") == "2" and "challenger" not in aliases
    tags = registry.client().get_model_version("can-good", "2").tags
    assert tags[CANARY_DECISION_TAG] == "promote"
    # Without serving.environment the canary is prod's: its verdict is prod's and the move is stamped.
    assert tags["ctpipe.env.prod.canary_decision"] == "promote" and "ctpipe.env.prod.since" in tags
    assert "ctpipe.env.prod.until" in registry.client().get_model_version("can-good", "1").tags
    assert json.loads((tmp_path / "result.json").read_text())["decision"] == "promote"
    assert "Decision: promote" in (tmp_path / "report.md").read_text()


@pytest.mark.server
def test_shifted_challenger_is_rolled_back(registry: Registry, tmp_path: Path) -> None:
    log_dir = run_canary(registry, "can-bad", "b", tmp_path / "ws")  # b: strong regularisation, other scores
    spec = ServingSpec(model_name="can-bad", canary_analysis=CanaryAnalysisSpec(min_requests=30))
    result = canary_analysis(
        spec, registry.tracking_uri, str(log_dir), str(tmp_path / "result.json"), str(tmp_path / "report.md")
    )
    assert result.decision == "rollback", result.reason
    assert "prediction_psi failed" in result.reason
    assert result.prediction_psi is not None and result.prediction_psi > spec.canary_analysis.max_prediction_psi
    model = registry.client().get_registered_model("can-bad")
    aliases = {k: str(v) for k, v in model.aliases.items()}
    assert aliases == {"champion": "1"}, "the champion stays; the challenger alias is gone"
    assert model.tags[CANARY_TAG] == "0"
    assert registry.client().get_model_version("can-bad", "2").tags[CANARY_DECISION_TAG] == "rollback"


def test_too_little_traffic_waits(registry: Registry, tmp_path: Path) -> None:
    registry.create("can-wait", ["a", "b"], {"champion": 1, "challenger": 2})
    (tmp_path / "log").mkdir()
    spec = ServingSpec(model_name="can-wait")
    result = canary_analysis(
        spec, registry.tracking_uri, str(tmp_path / "log"), str(tmp_path / "r.json"), str(tmp_path / "r.md")
    )
    assert result.decision == "wait" and not result.acted
    aliases = registry.client().get_registered_model("can-wait").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "challenger": "2"}
