"""The cluster-like MLflow profile: the training pipeline against a real tracking server on PostgreSQL.

Starts PostgreSQL and ``mlflow server`` (served artifacts) on 127.0.0.1, runs the training
pipeline on kfp.local with ``infra.tracking_uri`` pointing at the server, and checks that the
version, its aliases and lineage live in PostgreSQL and its artifacts come back through the server.
A second server keeps its artifacts in the S3 store (SeaweedFS): only the server holds the keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
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
from components.specs import ModelSpec
from components.train import train
from pipelines.runner import run_pipeline, window_params
from tests.data import churn_spec, write_churn
from tests.helpers import small_config
from tests.servers import MlflowServer, PostgresServer, S3Server

pytestmark = [pytest.mark.server, pytest.mark.slow(seconds=110)]


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


@pytest.fixture(scope="module")
def s3_mlflow_server(
    postgres: PostgresServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """An ``mlflow server`` (own database) whose artifacts go to ``s3://bucket/mlflow-<id>``; only it has the keys."""
    suffix = uuid.uuid4().hex[:8]
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
        # MLflow's S3 artifact repository reads its endpoint from here (boto3 would also take AWS_ENDPOINT_URL).
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    server = MlflowServer(
        postgres.create_database(f"mlflow_s3_{suffix}"),
        tmp_path_factory.mktemp("mlflow-s3-server"),
        artifacts_destination=f"s3://{s3_server.bucket}/mlflow-{suffix}",
        env=env,
    )
    yield server
    server.stop()


def _env_without_object_store_credentials() -> dict[str, str]:
    """This process's environment without any ``AWS_*`` / ``MLFLOW_S3_*`` variable, and no credential file either."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3_"))}
    env.update(
        {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
    )
    return env


def test_mlflow_server_keeps_artifacts_in_the_object_store(
    tmp_path: Path, s3_server: S3Server, s3_mlflow_server: MlflowServer
) -> None:
    server = s3_mlflow_server
    source = tmp_path / "churn.parquet"
    write_churn(source, windows=1, rows=400, seed=5)
    model = ModelSpec(estimator="sklearn.linear_model.LogisticRegression", params={"max_iter": 300})
    trained = train(str(source), churn_spec(source), model, server.uri, "s3-artifacts", str(tmp_path / "eval.parquet"))
    name = f"churn-s3-{uuid.uuid4().hex[:6]}"
    version = register(trained.model_uri, trained.run_id, name, True, server.uri).version

    # The client only ever saw mlflow-artifacts:/ URIs; the bytes are in the bucket under the prefix.
    client = tracking.registry_client(server.uri)
    run = client.get_run(trained.run_id)
    assert client.get_experiment(run.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    assert server.artifacts_destination.startswith("s3://")
    stored = s3_server.client().find(server.artifacts_destination.removeprefix("s3://"))
    assert any(key.endswith("/MLmodel") for key in stored), stored
    assert any(key.endswith("/model.pkl") for key in stored), stored
    assert not server.artifacts.exists() and not (server.base / "mlartifacts").exists()

    # A pod with only the tracking URI (no AWS_* at all) loads the registered version through the server.
    script = (
        "import sys; from components.common import tracking; "
        "m = tracking.load_sklearn_model(sys.argv[1], sys.argv[2]); "
        "print(type(m).__name__, hasattr(m, 'predict_proba'))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script, f"models:/{name}/{version}", server.uri],
        env={**_env_without_object_store_credentials(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip().endswith("True"), loaded.stdout

    # The keys reached the server through its environment only: never its command line or its log.
    assert s3_server.secret_key not in " ".join(server.process.popen.args)  # type: ignore[arg-type]
    assert s3_server.secret_key not in server.process.log_path.read_text(errors="replace")


# --- Registry concurrency: promote and rollback racing on the server -------------------------------

_RACE_WORKER = """
import json, os, random, sys, time
from pathlib import Path
from components.common import registry
from components.common.errors import ModelNotFound

uri, name, state, worker, ops = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
choices = json.loads(sys.argv[6])
records = []


def instrument(kind, locked):
    # Runs inside the registry lock: an exclusive marker file proves no two workers are inside at once,
    # and a plain file counter (safe only under the lock) numbers the operations in their true order.
    def wrapped(client, model_name, *args):
        try:
            os.close(os.open(state / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            overlap = False
        except FileExistsError:
            overlap = True
        seq = int((state / "seq").read_text()) + 1
        (state / "seq").write_text(str(seq))
        record = {"seq": seq, "worker": worker, "kind": kind, "overlap": overlap}
        if kind == "promote":
            record["version"] = args[0]
        try:
            change = locked(client, model_name, *args)
            record.update(previous=change.previous, current=change.current)
            return change
        except ModelNotFound as exc:
            record["error"] = str(exc)
            raise
        finally:
            records.append(record)
            if not overlap:
                os.unlink(state / "inside")

    return wrapped


registry._promote_locked = instrument("promote", registry._promote_locked)
registry._rollback_locked = instrument("rollback", registry._rollback_locked)
(state / f"ready-{worker}").touch()
while not (state / "go").exists():
    time.sleep(0.01)
rng = random.Random(worker)
for _ in range(ops):
    try:
        if rng.random() < 0.5:
            registry.promote(name, uri, rng.choice(choices))
        else:
            registry.rollback(name, uri)
    except ModelNotFound:
        pass
(state / f"worker-{worker}.json").write_text(json.dumps(records))
"""


def _replay(records: list[dict], champion: str, challenger: str | None) -> tuple[str, list[str], str | None]:
    """Apply the operations in lock order to a model of the registry; assert each matches what it returned."""
    history: list[str] = []
    for record in records:
        if record["kind"] == "promote":
            version = record["version"] or challenger
            if version is None:
                assert "error" in record, record
                continue
            assert "error" not in record and (record["previous"], record["current"]) == (champion, version), record
            if version != champion:
                history.append(champion)
            if version == challenger:
                challenger = None
            champion = version
        else:
            while history and history[-1] == champion:
                history.pop()
            if not history:
                assert "error" in record, record
                continue
            target = history.pop()
            assert "error" not in record and (record["previous"], record["current"]) == (champion, target), record
            champion = target
    return champion, history, challenger


def test_racing_promotions_and_rollbacks_keep_aliases_and_history_consistent(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    import json
    import time

    from components.common.registry import HISTORY_TAG
    from components.common.registry_lease import LOCK_SUFFIX

    workers, ops = 8, 4
    uri, name = mlflow_server.uri, f"race-{uuid.uuid4().hex[:6]}"
    client = tracking.registry_client(uri)
    client.create_registered_model(name)
    experiment = client.create_experiment(f"race-{name}")
    for _ in range(5):
        run = client.create_run(experiment)
        client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id, tags={BLESSED_TAG: "true"})
    client.set_registered_model_alias(name, CHAMPION_ALIAS, "1")
    client.set_registered_model_alias(name, CHALLENGER_ALIAS, "5")
    state = tmp_path / "state"
    state.mkdir()
    (state / "seq").write_text("0")

    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RACE_WORKER,
                uri,
                name,
                str(state),
                str(worker),
                str(ops),
                '["1","2","3","4",null]',
            ],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(workers)
    ]
    deadline = time.monotonic() + 120
    while len(list(state.glob("ready-*"))) < workers and time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), [p.communicate()[1][-2000:] for p in processes if p.poll()]
        time.sleep(0.05)
    started = time.monotonic()
    (state / "go").touch()  # all imported: race from here
    for process in processes:
        _, err = process.communicate(timeout=240)
        assert process.returncode == 0, err[-3000:]
    elapsed = time.monotonic() - started

    records = sorted(
        (r for w in range(workers) for r in json.loads((state / f"worker-{w}.json").read_text())),
        key=lambda r: r["seq"],
    )
    assert not [r for r in records if r["overlap"]]  # never two writers inside the lock at once
    assert [r["seq"] for r in records] == list(range(1, workers * ops + 1))  # none lost, none doubled
    assert sum("error" not in r for r in records) >= workers  # real work, not only refusals

    champion, history, challenger = _replay(records, "1", "5")
    model = client.get_registered_model(name)
    aliases = {alias: str(version) for alias, version in model.aliases.items()}
    assert aliases.get(CHAMPION_ALIAS) == champion and aliases.get(CHALLENGER_ALIAS) == challenger
    assert aliases.get(CHAMPION_ALIAS) != aliases.get(CHALLENGER_ALIAS)
    for version in aliases.values():
        assert client.get_model_version(name, version).tags[BLESSED_TAG] == "true"
    stored = json.loads(model.tags.get(HISTORY_TAG, "[]"))
    # The stored history is the replayed one, up to entries equal to the champion that rollback skips.
    assert [v for v in stored if v != champion] == [v for v in history if v != champion], (stored, history)
    assert all(v in {"1", "2", "3", "4", "5"} for v in stored)
    assert client.search_registered_models(f"name LIKE '{name}{LOCK_SUFFIX}%'") == []  # released, none broken
    print(f"race: {workers} processes x {ops} operations in {elapsed:.1f}s")
    assert elapsed < 90
