"""Pipelines on kfp.local: caching both ways, and a blocked validation that registers nothing."""

import pandas as pd
import pytest
from mlflow import MlflowClient

from components.common import tracking
from pipelines.runner import run_pipeline, window_params
from tests.helpers import small_config

pytestmark = pytest.mark.slow

CACHEABLE = {"ingest", "validate", "fetch-features", "train", "evaluate"}


def test_training_twice_hits_the_cache_for_every_cacheable_task(tmp_path, stop_server):
    config = small_config(tmp_path)
    stop_server(tmp_path)
    window = window_params(config, 1)

    first = run_pipeline("training", config, window, progress=None)
    assert first.succeeded, first.error
    assert {t.name for t in first.tasks if t.status == "ran"} >= CACHEABLE | {"register", "deploy"}
    assert first.outputs["blessed"] is True

    second = run_pipeline("training", config, window, progress=None)
    assert second.succeeded, second.error
    assert set(second.cache_hits) == CACHEABLE
    # Side effects run every time, and registration is idempotent: same version, no new one.
    assert {t.name for t in second.tasks if t.status == "ran"} == {"current-champion", "register", "deploy"}
    assert second.outputs["version"] == first.outputs["version"]

    # A changed source (one value in one row) is never served from cache.
    frame = pd.read_parquet(config.dataset.source)
    frame.loc[0, "tenure_months"] += 1.0
    frame.to_parquet(config.dataset.source, index=False)
    third = run_pipeline("training", config, window, progress=None)
    assert third.succeeded, third.error
    assert "ingest" not in third.cache_hits


def test_missing_feature_column_fails_in_validate_and_registers_nothing(tmp_path):
    config = small_config(tmp_path)
    frame = pd.read_parquet(config.dataset.source).drop(columns=["support_calls"])
    frame.to_parquet(config.dataset.source, index=False)

    report = run_pipeline("training", config, window_params(config, 1), progress=None)

    assert not report.succeeded
    assert "support_calls" in report.error
    statuses = {t.name: t.status for t in report.tasks}
    assert statuses["validate"] == "failed"
    assert "train" not in statuses or statuses["train"] != "ran"
    tracking.configure(config.tracking_uri)
    assert MlflowClient().search_model_versions(f"name='{config.serving.model_name}'") == []
