"""Entity-id requests with string ids: the model server's Feast lookup reads the entity type from the registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import requests

from components.common.feast import _ENTITY_TYPES, EntityLookup, _online_store, online_features
from components.common.server_process import start_local_server, stop_local_server
from components.fetch_features import build_training_set
from components.serving_spec import ServingSpec
from components.specs import DatasetSpec, FeastSpec
from tests.helpers import free_port
from tests.serving_helpers import FEATURES, POLL, Registry, make_frame

IDS = ["cust-0001", "cust-0002", "cust-0003", "cust-0004"]


def _string_entity_store(tmp_path: Path) -> tuple[DatasetSpec, FeastSpec, str, pd.DataFrame]:
    """A Feast store whose entity column holds strings, applied with no feast.entity_type."""
    spec = DatasetSpec(
        source=str(tmp_path / "unused.parquet"),
        entity_column="customer",
        timestamp_column="ts",
        label_column="label",
        numeric_features=["tenure", "charges", "calls"],
        categorical_features=["plan"],
    )
    rows = make_frame(len(IDS), seed=5).assign(
        customer=IDS, ts=pd.date_range("2026-01-01", periods=len(IDS), freq="h", tz="UTC"), label=[0, 1, 0, 1]
    )
    rows["calls"] = rows["calls"].astype("float64")  # Feast serves numeric features as Float64
    rows.to_parquet(tmp_path / "snapshot.parquet")
    feast = FeastSpec()
    workspace = str(tmp_path / "ws")
    build_training_set(str(tmp_path / "snapshot.parquet"), spec, feast, workspace, str(tmp_path / "training"))
    return spec, feast, workspace, rows


def test_lookup_types_string_ids_from_the_registry_and_caches_it_per_store(tmp_path: Path) -> None:
    spec, feast, workspace, rows = _string_entity_store(tmp_path)

    found = online_features(["cust-0002", "nobody"], spec, feast, workspace)

    assert [row["customer"] for row in found.rows] == ["cust-0002"]
    assert found.rows[0]["plan"] == rows.plan[1]
    assert found.missing == ["nobody"]
    store = _online_store(feast, workspace)
    assert store is not None and _ENTITY_TYPES[store] == {"customer": "string"}


def test_server_answers_entity_id_requests_with_string_ids(tmp_path: Path, registry: Registry) -> None:
    spec, feast, workspace, rows = _string_entity_store(tmp_path)
    registry.create("strings", ["a"], {"champion": 1})
    serving = ServingSpec(model_name="strings", port=free_port())
    lookup = EntityLookup(dataset=spec, feast=feast, workspace=workspace)
    server_workspace = str(tmp_path / "server")
    server = start_local_server(
        serving, registry.tracking_uri, server_workspace, timeout=60, poll_seconds=POLL, entity_lookup=lookup
    )
    try:
        url = f"{server.endpoint}/v1/models/strings:predict"
        answer = requests.post(url, json={"entity_ids": ["cust-0003", "cust-0001"]}, timeout=30)
        assert answer.status_code == 200, answer.text
        expected = registry.expected("a", rows.iloc[[2, 0]].reset_index(drop=True)[FEATURES])
        assert answer.json()["predictions"] == [float(p) for p in expected]

        unknown = requests.post(url, json={"entity_ids": ["cust-0001", "cust-9999"]}, timeout=30)
        assert unknown.status_code == 422, unknown.text
        assert "cust-9999" in unknown.text
    finally:
        stop_local_server(server_workspace)


def test_sticky_ab_keys_on_the_entity_id_when_no_header_is_configured(tmp_path: Path, registry: Registry) -> None:
    from components.common.registry import CANARY_TAG, CANARY_VERSION_TAG
    from components.serving_spec import RolloutSpec
    from serving.routing import BUCKETS, sticky_bucket

    spec, feast, workspace, rows = _string_entity_store(tmp_path)
    registry.create("abentities", ["a", "b"], {"champion": 1, "challenger": 2})
    client = registry.client()
    client.set_registered_model_tag("abentities", CANARY_VERSION_TAG, "2")
    client.set_registered_model_tag("abentities", CANARY_TAG, "50")
    serving = ServingSpec(
        model_name="abentities", port=free_port(), inference_log=False, rollout=RolloutSpec(strategy="ab")
    )
    lookup = EntityLookup(dataset=spec, feast=feast, workspace=workspace)
    server_workspace = str(tmp_path / "server")
    server = start_local_server(
        serving, registry.tracking_uri, server_workspace, timeout=60, poll_seconds=POLL, entity_lookup=lookup
    )
    try:
        session = requests.Session()
        url = f"{server.endpoint}/v1/models/abentities:predict"
        wanted_versions = {"2" if sticky_bucket("abentities", "", e) < 50 * BUCKETS // 100 else "1" for e in IDS}
        assert wanted_versions == {"1", "2"}, "these ids reach both versions"
        for index, entity in enumerate(IDS):
            wanted = "2" if sticky_bucket("abentities", "", entity) < 50 * BUCKETS // 100 else "1"
            for _ in range(3):
                answer = session.post(url, json={"entity_ids": [entity]}, timeout=30).json()
                assert answer["model_version"] == wanted, (entity, answer)
                key = "b" if wanted == "2" else "a"
                expected = registry.expected(key, rows.iloc[[index]].reset_index(drop=True)[FEATURES])
                assert answer["predictions"] == [float(p) for p in expected]
    finally:
        stop_local_server(server_workspace)
