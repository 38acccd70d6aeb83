"""The demo on small data: the whole story, then a replay served from the kfp.local cache."""

import pandas as pd
import pytest
from mlflow import MlflowClient

from components.common import tracking
from pipelines.demo import run_demo
from tests.helpers import small_config

pytestmark = pytest.mark.slow(seconds=200)


def test_demo_tells_the_whole_story_and_replays_from_cache(tmp_path, stop_server, capsys):
    config = small_config(tmp_path, rows=1000)
    stop_server(tmp_path)

    summary = run_demo(config, rows_per_window=1000)
    out = capsys.readouterr().out

    assert summary["monitoring_decision"] == "retrain"
    assert summary["champion"] != summary["previous_champion"]
    assert 5 <= summary["canary_share_percent"] <= 35  # 20% of 400 requests, with room for chance
    for phrase in ("blessed=True", "@champion", "decision: RETRAIN", "Canary", "Promote version"):
        assert phrase in out
    predictions = pd.read_parquet(summary["predictions"])
    assert len(predictions) == 1000
    assert {"prediction", "model_version"} <= set(predictions.columns)
    tracking.configure(config.tracking_uri)
    client = MlflowClient()
    champion = client.get_model_version_by_alias(config.serving.model_name, "champion")
    assert str(champion.version) == summary["champion"]

    # A replay: every cacheable task is served from cache and no version is added.
    versions_before = len(client.search_model_versions(f"name='{config.serving.model_name}'"))
    replay = run_demo(config, rows_per_window=1000)
    out = capsys.readouterr().out
    assert replay["champion"] == summary["champion"]
    assert len(client.search_model_versions(f"name='{config.serving.model_name}'")) == versions_before
    lines = [line.strip() for line in out.splitlines() if "tasks ran" in line]
    assert len(lines) == 4, out  # training, batch_scoring, monitoring, training
    for line in lines:
        ran = int(line.split(":")[1].split("tasks ran")[0])
        # Only the never-cached steps run again: the schedule window, champion lookup, source
        # fingerprint, register, infra validation and deploy.
        assert ran <= 6, line
