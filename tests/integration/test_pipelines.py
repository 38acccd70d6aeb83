"""Pipelines on kfp.local: caching and idempotent skips both ways, and a blocked validation that registers nothing."""

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from components.common import tracking
from components.common.server_process import stop_local_server
from pipelines.cli import main
from pipelines.config import CtpipeConfig
from pipelines.runner import CACHE_HIT, REGISTRY_CACHE_HIT, RunReport, run_pipeline, window_params
from tests.helpers import small_config

pytestmark = pytest.mark.slow(seconds=190)

# Steps keyed on the data and config only; register and infra validation are keyed on the registry too.
DATA_STEPS = {"ingest", "validate", "fetch-features", "train", "evaluate"}
REGISTRY_KEYED = {"register", "infra-validate"}
# Lookups of what moves outside the pipeline: they run on every run.
LOOKUPS = {"schedule-window", "current-champion", "fingerprint-source"}
SIDE_EFFECTS = REGISTRY_KEYED | {"deploy"}


def _statuses(report: RunReport) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for task in report.tasks:
        found.setdefault(task.status, set()).add(task.name)
    return found


def test_training_reruns_exactly_what_changed(tmp_path, stop_server):
    """One workspace, run after run: unchanged, unchanged, server stopped, config changed, data changed."""
    config = small_config(tmp_path)
    stop_server(tmp_path)
    window = window_params(config, 1)
    client = MlflowClient(config.tracking_uri)

    first = run_pipeline("training", config, window, progress=None)
    assert first.succeeded, first.error
    assert _statuses(first) == {"ran": DATA_STEPS | LOOKUPS | SIDE_EFFECTS}
    assert first.outputs["blessed"] is True
    version = first.outputs["version"]

    # Unchanged data and config: the data steps are cache hits; the side-effect steps run, find their
    # work done on the registry current-champion read (and on the server deploy started), and say so.
    second = run_pipeline("training", config, window, progress=None)
    assert second.succeeded, second.error
    assert _statuses(second) == {"ran": LOOKUPS, "cached": DATA_STEPS, "no-op": SIDE_EFFECTS}
    reasons = {task.name: task.reason for task in second.tasks}
    assert reasons["register"].startswith(f"version {version} already holds run ")
    assert reasons["infra-validate"].startswith(f"version {version} is already infra-blessed")
    assert f"already serves challenger version {version} at 100% (no champion)" in reasons["deploy"]
    assert {reasons[name] for name in DATA_STEPS} == {CACHE_HIT}
    assert second.outputs["version"] == version
    assert len(client.search_model_versions(f"name='{config.serving.model_name}'")) == 1

    # Again: nothing touched the registry since, so register and infra validation are cache hits too.
    third = run_pipeline("training", config, window, progress=None)
    assert third.succeeded, third.error
    assert _statuses(third) == {"ran": LOOKUPS, "cached": DATA_STEPS | REGISTRY_KEYED, "no-op": {"deploy"}}
    assert {task.reason for task in third.tasks if task.name in REGISTRY_KEYED} == {REGISTRY_CACHE_HIT}
    assert third.outputs["version"] == version

    # The server deploy started is stopped (the registry does not change): deploy is never cached, and runs.
    _ctpipe_serve_answers_by_entity_id(config, tmp_path)
    fourth = run_pipeline("training", config, window, progress=None)
    assert fourth.succeeded, fourth.error
    assert _statuses(fourth) == {"ran": LOOKUPS | {"deploy"}, "cached": DATA_STEPS | REGISTRY_KEYED}

    # Another model setting: what reads the model config runs again, on the same snapshot and features.
    params = {**config.model.params, "max_iter": int(config.model.params["max_iter"]) + 1}
    tuned = config.model_copy(update={"model": config.model.model_copy(update={"params": params})})
    fifth = run_pipeline("training", tuned, window, progress=None)
    assert fifth.succeeded, fifth.error
    assert _statuses(fifth) == {
        "ran": LOOKUPS | {"train", "evaluate"} | SIDE_EFFECTS,
        "cached": {"ingest", "validate", "fetch-features"},
    }
    assert fifth.outputs["version"] == str(int(version) + 1)

    # One value in one row of the window changes: ingest and everything downstream run again.
    frame = pd.read_parquet(config.dataset.source)
    seen = pd.to_datetime(frame[config.dataset.timestamp_column], utc=True)
    inside = (seen >= pd.Timestamp(window["window_start"])) & (seen < pd.Timestamp(window["window_end"]))
    in_window = frame.index[inside][0]
    frame.loc[in_window, "tenure_months"] += 1.0
    frame.to_parquet(config.dataset.source, index=False)
    sixth = run_pipeline("training", tuned, window, progress=None)
    assert sixth.succeeded, sixth.error
    assert _statuses(sixth) == {"ran": DATA_STEPS | LOOKUPS | SIDE_EFFECTS}
    assert sixth.outputs["version"] == str(int(version) + 2)


def _ctpipe_serve_answers_by_entity_id(config: CtpipeConfig, tmp_path: Path) -> None:
    """`ctpipe serve --detach` starts the server the deploy step starts: it reads entity ids' features from Feast."""
    stop_local_server(str(config.workspace))  # the one deploy started
    config_file = tmp_path / "ctpipe-serve.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    started = CliRunner().invoke(main, ["--config", str(config_file), "serve", "--detach"])
    assert started.exit_code == 0, started.output
    try:
        some_id = int(pd.read_parquet(config.dataset.source)[config.dataset.entity_column].iloc[0])
        url = f"http://{config.serving.host}:{config.serving.port}/v1/models/{config.serving.model_name}:predict"
        answer = requests.post(url, json={"entity_ids": [some_id]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert 0.0 <= answer.json()["predictions"][0] <= 1.0
    finally:
        stopped = CliRunner().invoke(main, ["--config", str(config_file), "serve", "--stop"])
        assert "stopped the local model server" in stopped.output


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


def test_another_dataset_needs_only_a_config_file(tmp_path, stop_server):
    """Other column names, estimator and metrics: no code change, only configuration."""
    base = small_config(tmp_path)
    stop_server(tmp_path)
    features = base.dataset.feature_columns
    renames = {name: f"f{index}" for index, name in enumerate(features)}
    renames.update(customer_id="account", event_timestamp="seen_at", churned="left")
    frame = pd.read_parquet(base.dataset.source).rename(columns=renames)
    source = tmp_path / "other.csv"
    frame.to_csv(source, index=False)
    raw = {
        "dataset": {
            "source": str(source),
            "entity_column": "account",
            "timestamp_column": "seen_at",
            "label_column": "left",
            "numeric_features": [renames[c] for c in base.dataset.numeric_features],
            "categorical_features": [renames[c] for c in base.dataset.categorical_features],
        },
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
        "evaluation": {"metrics": [{"name": "sklearn.metrics.f1_score", "threshold": {"lower_bound": 0.3}}]},
        "serving": {"model_name": "other", "port": base.serving.port},
        "infra": {"workspace": str(tmp_path)},
    }
    _train_a_blessed_challenger(raw, tmp_path)


def _train_a_blessed_challenger(raw: dict, tmp_path: Path) -> tuple[CtpipeConfig, Any]:
    """Run training on the first window of a config given as a mapping; its version must be the blessed challenger.

    Returns:
        The parsed config and the challenger's model version.
    """
    from pipelines.config import parse_config

    config = parse_config(raw, tmp_path)
    window = {"window_start": "2026-01-05T00:00:00+00:00", "window_end": "2026-01-12T00:00:00+00:00"}
    report = run_pipeline("training", config, window, progress=None)
    assert report.succeeded, report.error
    assert report.outputs["blessed"] is True
    tracking.configure(config.tracking_uri)
    version = MlflowClient().get_model_version_by_alias(config.serving.model_name, "challenger")
    assert version.tags["ctpipe.blessed"] == "true"
    return config, version


def test_a_multiclass_dataset_needs_only_a_config_file(tmp_path, stop_server):
    """Five classes, macro and weighted thresholds: train, gate, register, infra-validate and deploy from config."""
    from tests.data import MULTICLASS_CATEGORICAL, MULTICLASS_NUMERIC, SEGMENT, SEGMENTS, write_multiclass
    from tests.helpers import free_port

    stop_server(tmp_path)
    source = tmp_path / "segments.parquet"
    write_multiclass(source, windows=2, rows=800, seed=5)
    raw = {
        "dataset": {
            "source": str(source),
            "entity_column": "customer_id",
            "timestamp_column": "event_timestamp",
            "label_column": SEGMENT,
            "numeric_features": MULTICLASS_NUMERIC,
            "categorical_features": MULTICLASS_CATEGORICAL,
            "task": "multiclass_classification",
        },
        "model": {"estimator": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}},
        "evaluation": {
            "metrics": [
                {"name": "f1_score", "average": "macro", "threshold": {"lower_bound": 0.3}},
                {"name": "roc_auc_score", "average": "weighted", "threshold": {"lower_bound": 0.7}},
                {"name": "log_loss"},
            ],
            "slice_column": "region",
        },
        "serving": {"model_name": "segments", "port": free_port()},
        "infra": {"workspace": str(tmp_path)},
    }
    config, version = _train_a_blessed_challenger(raw, tmp_path)
    instance = pd.read_parquet(source).head(2)[MULTICLASS_NUMERIC + MULTICLASS_CATEGORICAL].to_dict(orient="records")
    answer = requests.post(
        f"http://127.0.0.1:{config.serving.port}/v1/models/segments:predict", json={"instances": instance}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["classes"] == SEGMENTS and len(answer.json()["probabilities"][0]) == len(SEGMENTS)

    # Promoted as canary analysis or `ctpipe promote` would, it monitors and scores the next window.
    from components.common.registry import promote

    promote("segments", config.tracking_uri)
    assert MlflowClient().get_model_version_by_alias("segments", "champion").version == version.version
    week2 = {"window_start": "2026-01-12T00:00:00+00:00", "window_end": "2026-01-19T00:00:00+00:00"}
    monitored = run_pipeline("monitoring", config, week2, progress=None)
    assert monitored.succeeded, monitored.error
    result = json.loads(Path(monitored.outputs["result"]["path"]).read_text())
    assert set(result["class_drift"]["probability_psi"]) == set(SEGMENTS), result["reasons"]
    assert result["performance"]["f1_score_macro"] > 0.3
    scored = run_pipeline("batch_scoring", config, week2, progress=None)
    assert scored.succeeded, scored.error
    predictions = pd.read_parquet(scored.outputs["Output"]["path"])
    assert len(predictions) == 800
    assert {f"proba_{name}" for name in ("budget", "family_plan", "premium", "pro_user", "student")} <= set(
        predictions.columns
    )
    assert set(predictions["prediction"]) <= set(SEGMENTS)
