"""Spark batch scoring throughput against single-threaded predict on the same rows, same run."""

import time

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from components.batch_predict import batch_predict
from components.common import tracking
from components.specs import ModelSpec
from components.train import build_pipeline
from pipelines.demo_data import generate
from tests.benchmarks.conftest import bench_rows

pytestmark = pytest.mark.bench


def test_spark_vs_single_threaded_predict(tmp_path, dataset_spec, record_bench):
    rows = bench_rows(1_000_000)
    source = tmp_path / "data.parquet"
    generate(source, windows=1, rows_per_window=rows, seed=5)
    frame = pd.read_parquet(source)
    spec = dataset_spec.model_copy(update={"source": str(source)})
    model = build_pipeline(spec, ModelSpec(params={"max_iter": 100}))
    train = frame.head(20_000)
    model.fit(train[spec.feature_columns], train[spec.label_column])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_experiment("bench", uri)
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(
            model, name="model", serialization_format="cloudpickle", pip_requirements=tracking.pip_requirements()
        )
    client = MlflowClient()
    client.create_registered_model("bench")
    version = client.create_model_version("bench", f"runs:/{run.info.run_id}/model", run.info.run_id)
    model_uri = f"models:/bench/{version.version}"

    features = frame[spec.feature_columns]
    started = time.perf_counter()
    model.predict_proba(features)
    model.predict(features)
    baseline_seconds = time.perf_counter() - started

    started = time.perf_counter()
    result = batch_predict(str(source), spec, model_uri, uri, str(tmp_path / "out"), "local[2]", version.version)
    spark_seconds = time.perf_counter() - started
    assert result.rows == rows

    record_bench(
        "batch_predict",
        {
            "rows": rows,
            "baseline": "single-threaded sklearn predict_proba + predict, in process",
            "baseline_seconds": round(baseline_seconds, 3),
            "baseline_rows_per_second": round(rows / baseline_seconds),
            "spark_master": "local[2]",
            "spark_seconds_including_session_start": round(spark_seconds, 3),
            "spark_rows_per_second": round(rows / spark_seconds),
            "spark_over_baseline_throughput_ratio": round(baseline_seconds / spark_seconds, 3),
        },
    )
