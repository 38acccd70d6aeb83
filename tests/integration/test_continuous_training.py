"""The continuous-training pipeline on kfp.local: a drifted window retrains, a calm one does not."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.common import registry, tracking
from components.common.inference_log import append_batch
from components.ingest import ingest
from pipelines.demo_data import generate
from pipelines.retrain import retrain_on_drift
from pipelines.runner import parse_at, run_pipeline, scheduled_params, window_params
from tests.helpers import small_config

pytestmark = pytest.mark.slow(seconds=130)

TRAINING = {"validate", "fetch-features", "train", "evaluate", "register"}


@pytest.fixture(scope="module")
def champion_config(tmp_path_factory):
    """A small workspace whose champion the training pipeline trained on window 1, shared by the tests here.

    The tests may add versions and a canary but never move the champion alias; the local model
    server the training pipeline's canary step started is stopped at the end.
    """
    from components.common.server_process import stop_local_server

    workspace = tmp_path_factory.mktemp("continuous-training")
    config = small_config(workspace)
    try:
        first = run_pipeline("training", config, window_params(config, 1), progress=None)
        assert first.succeeded, first.error
        registry.promote(config.serving.model_name, config.tracking_uri)
        yield config
    finally:
        stop_local_server(str(workspace))


def test_drift_retrains_on_the_newer_window_and_no_drift_skips_training(champion_config, tmp_path):
    config = champion_config
    client = tracking.registry_client(config.tracking_uri)
    before = {v.version for v in client.search_model_versions(f"name='{config.serving.model_name}'")}

    # The champion's own window: no feature drift, so training is skipped and nothing is registered. (Its
    # scores of its own training rows are more confident than of its holdout: prediction PSI gives warn.)
    calm = run_pipeline("continuous_training", config, window_params(config, 1), progress=None)
    assert calm.succeeded, calm.error
    statuses = {t.name: t.status for t in calm.tasks}
    assert statuses["monitor"] in ("ran", "cached")
    assert not TRAINING & {name for name, status in statuses.items() if status in ("ran", "cached")}
    assert statuses["notify"] == "ran"  # the exit handler runs every time
    assert {v.version for v in client.search_model_versions(f"name='{config.serving.model_name}'")} == before
    summary = (config.workspace / "reports" / "ctpipe-continuous-training-last-run.md").read_text()
    assert "SUCCEEDED" in summary
    # The training pipeline recorded evaluate's holdout metrics on the champion's version, and monitor
    # judged live performance against them (its result's metadata says so).
    champion = client.get_model_version_by_alias(config.serving.model_name, registry.CHAMPION_ALIAS)
    record = json.loads(champion.tags[registry.HOLDOUT_METRICS_TAG])
    assert set(record["metrics"]) == {m.short_name for m in config.evaluation.metrics} and record["rows"] > 0
    notes = [
        json.loads(path.read_text())
        for path in Path(calm.pipeline_root).rglob("executor_output.json")
        if "performance_baseline" in path.read_text()
    ]
    assert notes, "the monitor task recorded no performance_baseline"
    assert f"holdout metrics of models:/{config.serving.model_name}/{champion.version}" in json.dumps(notes)

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
    assert json.loads(new.tags[registry.HOLDOUT_METRICS_TAG])["rows"] > 0
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
    assert result.submitted.calls[2].kwargs["pipeline_version_name"].startswith("abc123-")  # + the package digest


def test_a_run_for_a_time_monitors_the_last_complete_window_against_the_one_before(champion_config):
    """``--at T`` (the CronJob's path): T-1 is monitored against T-2, not against the champion's training data."""
    config = champion_config
    # Monday 2026-01-19 03:00 UTC: T-1 is the demo's window 2 (drifted), T-2 its window 1.
    params = scheduled_params(config, "monitoring", parse_at("2026-01-19T03:00:00Z"))
    window1, window2 = window_params(config, 1), window_params(config, 2)
    assert (params["window_start"], params["window_end"]) == (window2["window_start"], window2["window_end"])
    assert (params["reference_start"], params["reference_end"]) == (window1["window_start"], window1["window_end"])

    report = run_pipeline("monitoring", config, params, progress=None)

    assert report.succeeded, report.error
    assert {t.name: t.status for t in report.tasks}["schedule-window"] == "ran"
    metadata = report.outputs["result"]["metadata"]
    assert metadata["reference"] == (f"window [{window1['window_start']}, {window1['window_end']}) of the source")
    assert metadata["decision"] == "retrain", metadata["reasons"]  # window 2 drifted from window 1
    result = json.loads(Path(report.outputs["result"]["path"]).read_text())
    assert result["rows_reference"] == len(pd.read_parquet(config.dataset.source).pipe(_rows_in, config, window1))


def _rows_in(frame, config, window):
    stamps = pd.to_datetime(frame[config.dataset.timestamp_column], utc=True)
    return frame[(stamps >= pd.Timestamp(window["window_start"])) & (stamps < pd.Timestamp(window["window_end"]))]


def test_monitoring_inside_continuous_training_reads_the_inference_log_of_the_window(champion_config, tmp_path):
    """``monitoring.current_source: inference_log``: the monitor step reads what the server answered in the window.

    Window 2's snapshot drifted (monitoring it decides retrain, see above). The log holds requests
    like the champion's training data: most answered inside window 2, some the day before it. If
    monitoring read the log of the window, it saw only those requests, found no drift and trained nothing.
    """
    config = champion_config.model_copy(deep=True)
    config.monitoring.current_source = "inference_log"
    spec, name = config.dataset, config.serving.model_name
    window = window_params(config, 2)
    start = pd.Timestamp(window["window_start"])
    # New customers from the distribution the champion was trained on, but none of its training rows: a
    # model scores its own training rows more confidently than new ones (prediction drift would say so).
    generate(tmp_path / "fresh.parquet", windows=1, rows_per_window=800, seed=41)
    calm = pd.read_parquet(tmp_path / "fresh.parquet")
    champion = registry.resolve_alias(name, "champion", config.tracking_uri)
    served = tracking.load_sklearn_model(champion.model_uri, config.tracking_uri).predict_proba(
        calm[spec.feature_columns]
    )[:, 1]
    before_window = 100
    minutes = pd.to_timedelta(np.arange(len(calm)), unit="min")
    log_dir = tmp_path / "inference_log"
    append_batch(
        log_dir,
        calm[[spec.entity_column, *spec.feature_columns]].assign(
            # No ground truth arrived for these customers, so drift alone decides (no live performance).
            **{spec.entity_column: calm[spec.entity_column] + 1_000_000},
            request_id=[f"r{i}" for i in range(len(calm))],
            timestamp=np.where(
                np.arange(len(calm)) < before_window, start - pd.Timedelta(days=1) + minutes, start + minutes
            ),
            model_name=name,
            model_version=champion.version,
            prediction=served,
            status="ok",
        ),
    )
    runs = config.workspace / "kfp" / "runs"
    earlier = set(runs.iterdir())

    report = run_pipeline("continuous_training", config, {**window, "inference_log_dir": str(log_dir)}, progress=None)

    assert report.succeeded, report.error
    statuses = {t.name: t.status for t in report.tasks}
    assert statuses["monitor"] == "ran"
    assert not TRAINING & {task for task, status in statuses.items() if status in ("ran", "cached")}, statuses
    (run,) = set(runs.iterdir()) - earlier
    result = json.loads((run / "monitor" / "result").read_text())
    # The requests answered in window 2, not the window's 800-row drifted snapshot nor the whole log.
    assert result["rows_current"] == len(calm) - before_window
    assert result["decision"] == "ok", result["reasons"]
    assert result["performance"] is None
