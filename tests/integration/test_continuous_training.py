"""The continuous-training pipeline on kfp.local: a drifted window retrains, a calm one does not."""

import pytest
from mlflow import MlflowClient

from components import register
from components.common import tracking
from components.ingest import ingest
from pipelines.retrain import retrain_on_drift
from pipelines.runner import run_pipeline, window_params
from tests.helpers import small_config

pytestmark = pytest.mark.slow

TRAINING = {"validate", "fetch-features", "train", "evaluate", "register"}


def test_drift_retrains_on_the_newer_window_and_no_drift_skips_training(tmp_path, stop_server):
    config = small_config(tmp_path)
    stop_server(tmp_path)
    first = run_pipeline("training", config, window_params(config, 1), progress=None)
    assert first.succeeded, first.error
    register.promote(config.serving.model_name, config.tracking_uri)
    tracking.configure(config.tracking_uri)
    client = MlflowClient()
    before = {v.version for v in client.search_model_versions(f"name='{config.serving.model_name}'")}

    # The champion's own window: no drift, so training is skipped and nothing is registered.
    calm = run_pipeline("continuous_training", config, window_params(config, 1), progress=None)
    assert calm.succeeded, calm.error
    statuses = {t.name: t.status for t in calm.tasks}
    assert statuses["monitor"] in ("ran", "cached")
    assert not TRAINING & {name for name, status in statuses.items() if status in ("ran", "cached")}
    assert statuses["notify"] == "ran"  # the exit handler runs every time
    assert {v.version for v in client.search_model_versions(f"name='{config.serving.model_name}'")} == before
    summary = (tmp_path / "reports" / "ctpipe-continuous-training-last-run.md").read_text()
    assert "SUCCEEDED" in summary

    # Window 2 drifted: monitor decides retrain, the training branch runs on window 2 and
    # registers a new version with window 2's snapshot as its data lineage.
    drifted = run_pipeline("continuous_training", config, window_params(config, 2), progress=None)
    assert drifted.succeeded, drifted.error
    statuses = {t.name: t.status for t in drifted.tasks}
    assert {name for name, status in statuses.items() if status == "ran"} >= TRAINING, statuses
    after = client.search_model_versions(f"name='{config.serving.model_name}'")
    (new,) = [v for v in after if v.version not in before]
    window2 = ingest(config.dataset.source, config.dataset, str(tmp_path / "w2.parquet"), **window_params(config, 2))
    assert new.tags["data_snapshot"] == window2.content_hash
    _loop_in_cluster_profile_plans_a_training_run(config, window_params(config, 2))
    assert statuses["notify"] == "ran"


def _loop_in_cluster_profile_plans_a_training_run(config, window):
    """Cluster profile: the same retrain decision becomes a KFP training run (dry run, nothing sent)."""
    cluster = config.model_copy(deep=True)
    cluster.infra.profile = "cluster"
    result = retrain_on_drift(cluster, window, dry_run=True, version="abc123", progress=None)
    assert (result.decision, result.action) == ("retrain", "planned")
    run = result.submitted.calls[-1]
    assert run.method == "run_pipeline"
    assert run.kwargs["params"] == window
    assert result.submitted.calls[2].kwargs["pipeline_version_name"] == "abc123"
