"""The cluster-like MLflow profile: the training pipeline against a real tracking server on PostgreSQL.

Starts PostgreSQL and ``mlflow server`` (served artifacts) on 127.0.0.1, runs the training
pipeline on kfp.local with ``infra.tracking_uri`` pointing at the server, and checks that the
version, its aliases and lineage live in PostgreSQL and its artifacts come back through the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from components.common import tracking
from components.common.registry import (
    BLESSED_TAG,
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    CODE_VERSION_TAG,
    CONFIG_HASH_TAG,
    DATA_SNAPSHOT_TAG,
    PIPELINE_RUN_TAG,
    SUITE_HASH_TAG,
    promote,
)
from components.register import lineage, register
from pipelines.runner import run_pipeline, window_params
from tests.helpers import small_config
from tests.servers import MlflowServer, PostgresServer

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(postgres.sqlalchemy_uri, tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def test_training_pipeline_against_an_mlflow_server_on_postgresql(
    tmp_path: Path, postgres: PostgresServer, mlflow_server: MlflowServer
) -> None:
    config = small_config(tmp_path, rows=500)
    config.infra.tracking_uri = mlflow_server.uri
    name = config.serving.model_name

    report = run_pipeline("training", config, {**window_params(config, 1), "dry_run": True}, progress=None)
    assert report.succeeded, report.error
    assert report.outputs["blessed"] is True

    client = tracking.registry_client(mlflow_server.uri)
    version = client.get_model_version_by_alias(name, CHALLENGER_ALIAS)
    assert str(version.version) == report.outputs["version"]
    assert version.status == "READY" and version.tags[BLESSED_TAG] == "true"
    for key in (PIPELINE_RUN_TAG, DATA_SNAPSHOT_TAG, SUITE_HASH_TAG, CONFIG_HASH_TAG, CODE_VERSION_TAG):
        assert version.tags[key], key

    # The metadata is in PostgreSQL, not in a local file.
    rows = postgres.query("SELECT name, version FROM model_versions")
    assert (name, int(version.version)) in rows
    assert not (config.workspace / "mlflow.db").exists()

    # Artifacts go through the server: the experiment stores them under mlflow-artifacts:/ and
    # they land in the server's own folder.
    run = client.get_run(version.run_id)
    tracking.configure(mlflow_server.uri)
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    downloaded = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}", dst_path=str(tmp_path / "m"))
    )
    assert (downloaded / "MLmodel").is_file()
    suite = tracking.download_run_artifact(version.run_id, tracking.SUITE_ARTIFACT, tmp_path / "suite")
    assert suite.stat().st_size > 0
    assert list(mlflow_server.artifacts.rglob("MLmodel"))
    model = tracking.load_sklearn_model(f"models:/{name}@{CHALLENGER_ALIAS}", mlflow_server.uri)
    assert hasattr(model, "predict_proba")

    # Promotion, an unblessed re-registration and the lineage work the same on the server.
    assert promote(name, mlflow_server.uri).current == str(version.version)
    chain = lineage(name, str(version.version), mlflow_server.uri)
    assert chain.chain[1].id == version.run_id and chain.chain[2].id == version.tags["data_snapshot"]
    logged = run.outputs.model_outputs[0].model_id if run.outputs and run.outputs.model_outputs else None
    assert logged is not None
    again = register(f"models:/{logged}", version.run_id, name, True, mlflow_server.uri)
    assert not again.created and again.version == str(version.version)
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == version.version
