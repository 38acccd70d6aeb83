"""Registry: idempotent registration, blessing-gated aliases, promotion and stepwise rollback."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from components.common import tracking
from components.common.errors import ConfigError, CtpipeError, ModelNotFound
from components.common.io import file_sha256
from components.common.registry import (
    BLESSED_TAG,
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    HISTORY_TAG,
    ONNX_ARTIFACT,
    ONNX_SHA256_TAG,
    ONNX_TAG,
    PIPELINE_RUN_TAG,
    PREVIOUS_CHAMPION_TAG,
    RUN_ID_TAG,
    SUITE_HASH_TAG,
    promote,
    resolve_alias,
    rollback,
)
from components.common.registry_lease import registered_model
from components.common.registry_state import (
    DETAIL_VERSIONS,
    EPOCH_TAG,
    RegistryState,
    VersionState,
    read_state,
)
from components.register import register
from components.specs import DatasetSpec, ModelSpec
from components.train import TrainResult, train

_names = itertools.count()


@dataclass
class Runs:
    uri: str
    runs: list[TrainResult]


@pytest.fixture(scope="module")
def runs(churn_data: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Four training runs (different seeds) in one sqlite MLflow."""
    from tests.data import CATEGORICAL_FEATURES, ENTITY, LABEL, NUMERIC_FEATURES, TIMESTAMP

    workspace = tmp_path_factory.mktemp("register")
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    spec = DatasetSpec(
        source=str(churn_data[0]),
        entity_column=ENTITY,
        timestamp_column=TIMESTAMP,
        label_column=LABEL,
        numeric_features=list(NUMERIC_FEATURES),
        categorical_features=list(CATEGORICAL_FEATURES),
    )
    results = [
        train(
            str(churn_data[0]),
            spec,
            ModelSpec(estimator="sklearn.linear_model.LogisticRegression", random_seed=seed),
            uri,
            "register-tests",
            str(workspace / f"eval-{seed}.parquet"),
        )
        for seed in range(4)
    ]
    return Runs(uri, results)


@pytest.fixture
def name() -> str:
    """A fresh registered-model name per test, so tests share runs but not registry state."""
    return f"churn-{next(_names)}"


def _register(runs: Runs, index: int, name: str, blessed: bool = True, **lineage: str):
    run = runs.runs[index]
    return register(run.model_uri, run.run_id, name, blessed, runs.uri, lineage or None)


def _champion(runs: Runs, name: str) -> str | None:
    return resolve_alias(name, CHAMPION_ALIAS, runs.uri).version


def test_resolve_alias_missing_model_or_alias(runs: Runs, name: str) -> None:
    missing_model = resolve_alias(name, CHAMPION_ALIAS, runs.uri)
    assert not missing_model.found and missing_model.version is None and missing_model.name == name
    _register(runs, 0, name, blessed=False)
    assert not resolve_alias(name, CHAMPION_ALIAS, runs.uri).found


def test_register_tags_lineage_and_is_idempotent_by_run(runs: Runs, name: str) -> None:
    first = _register(runs, 0, name, data_snapshot="abc123", git_commit="deadbeef")
    assert first.created and first.version == "1" and first.blessed
    again = _register(runs, 0, name, data_snapshot="abc123", git_commit="deadbeef")
    assert not again.created and again.version == "1"
    assert again.aliases == [CHALLENGER_ALIAS]
    client = MlflowClient(runs.uri)
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    version = client.get_model_version(name, "1")
    assert version.run_id == runs.runs[0].run_id
    assert version.tags[BLESSED_TAG] == "true"
    assert version.tags["ctpipe.run_id"] == runs.runs[0].run_id
    assert version.tags["data_snapshot"] == "abc123" and version.tags["git_commit"] == "deadbeef"
    # The registered version loads as the trained model.
    model = tracking.load_sklearn_model(f"models:/{name}/1", runs.uri)
    assert list(model.classes_) == [0, 1]


def test_unblessed_version_gets_no_alias(runs: Runs, name: str) -> None:
    result = _register(runs, 0, name, blessed=False)
    assert result.created and not result.blessed and result.aliases == []
    assert MlflowClient(runs.uri).get_model_version(name, result.version).tags[BLESSED_TAG] == "false"
    assert not resolve_alias(name, CHALLENGER_ALIAS, runs.uri).found


def test_blessed_version_becomes_challenger(runs: Runs, name: str) -> None:
    first = _register(runs, 0, name)
    ref = resolve_alias(name, CHALLENGER_ALIAS, runs.uri)
    assert ref.found and ref.version == first.version and ref.run_id == runs.runs[0].run_id
    assert ref.model_uri == f"models:/{name}/{first.version}" and ref.alias == CHALLENGER_ALIAS
    second = _register(runs, 1, name)
    assert resolve_alias(name, CHALLENGER_ALIAS, runs.uri).version == second.version == "2"
    # Re-registering the first run unblessed must not leave an alias on it.
    _register(runs, 1, name, blessed=False)
    assert not resolve_alias(name, CHALLENGER_ALIAS, runs.uri).found


def test_reserved_lineage_keys_are_rejected(runs: Runs, name: str) -> None:
    with pytest.raises(CtpipeError, match=BLESSED_TAG):
        _register(runs, 0, name, **{BLESSED_TAG: "true"})


def test_promote_moves_champion_and_records_previous(runs: Runs, name: str) -> None:
    v1 = _register(runs, 0, name).version
    change = promote(name, runs.uri)
    assert (change.previous, change.current, change.alias) == (None, v1, CHAMPION_ALIAS)
    assert not resolve_alias(name, CHALLENGER_ALIAS, runs.uri).found  # challenger consumed

    v2 = _register(runs, 1, name).version
    change = promote(name, runs.uri)
    assert (change.previous, change.current) == (v1, v2)
    assert _champion(runs, name) == v2
    client = MlflowClient(runs.uri)
    assert client.get_model_version(name, v2).tags[PREVIOUS_CHAMPION_TAG] == v1
    assert json.loads(client.get_registered_model(name).tags[HISTORY_TAG]) == [v1]

    # Promoting the champion again changes nothing.
    same = promote(name, runs.uri, version=v2)
    assert (same.previous, same.current) == (v2, v2)
    assert json.loads(client.get_registered_model(name).tags[HISTORY_TAG]) == [v1]


def test_rollback_restores_the_exact_previous_version(runs: Runs, name: str) -> None:
    v1 = _register(runs, 0, name).version
    promote(name, runs.uri)
    v2 = _register(runs, 1, name).version
    promote(name, runs.uri)
    change = rollback(name, runs.uri)
    assert (change.previous, change.current) == (v2, v1)
    champion = resolve_alias(name, CHAMPION_ALIAS, runs.uri)
    assert champion.version == v1 and champion.run_id == runs.runs[0].run_id
    assert MlflowClient(runs.uri).get_model_version(name, v2).tags["ctpipe.rolled_back"] == "true"


def test_two_promotions_then_two_rollbacks(runs: Runs, name: str) -> None:
    versions = []
    for index in range(3):
        versions.append(_register(runs, index, name).version)
        promote(name, runs.uri)
    assert _champion(runs, name) == versions[2]
    assert rollback(name, runs.uri).current == versions[1]
    assert rollback(name, runs.uri).current == versions[0]
    with pytest.raises(ModelNotFound, match="no previous champion"):
        rollback(name, runs.uri)
    assert _champion(runs, name) == versions[0]
    # After the rollbacks, a new promotion starts a fresh history.
    versions.append(_register(runs, 3, name).version)
    promote(name, runs.uri)
    assert rollback(name, runs.uri).current == versions[0]


def test_promote_refuses_an_unblessed_version(runs: Runs, name: str) -> None:
    v1 = _register(runs, 0, name, blessed=False).version
    with pytest.raises(CtpipeError, match=rf"version {v1} .*'false'"):
        promote(name, runs.uri, version=v1)
    with pytest.raises(ModelNotFound, match="no challenger"):
        promote(name, runs.uri)
    assert not resolve_alias(name, CHAMPION_ALIAS, runs.uri).found


def test_champion_cannot_be_unblessed_in_place(runs: Runs, name: str) -> None:
    v1 = _register(runs, 0, name).version
    promote(name, runs.uri)
    with pytest.raises(CtpipeError, match="serves as champion"):
        _register(runs, 0, name, blessed=False)
    version = MlflowClient(runs.uri).get_model_version(name, v1)
    assert version.tags[BLESSED_TAG] == "true"


def test_errors_name_the_problem(runs: Runs, name: str) -> None:
    with pytest.raises(ModelNotFound, match=f"no registered model named '{name}'"):
        promote(name, runs.uri)
    with pytest.raises(ModelNotFound, match="no registered model"):
        rollback(name, runs.uri)
    _register(runs, 0, name)
    with pytest.raises(ModelNotFound, match="no champion alias"):
        rollback(name, runs.uri)
    with pytest.raises(ModelNotFound, match="no version 9"):
        promote(name, runs.uri, version="9")
    run = runs.runs[0]
    with pytest.raises(CtpipeError, match=f"was logged by run {run.run_id}, not by run {runs.runs[1].run_id}"):
        register(run.model_uri, runs.runs[1].run_id, name, True, runs.uri)


# --- what register accepts: only the logged model train hands over (issue 20) ------------------


@pytest.mark.parametrize(
    "uri",
    [
        "runs:/{run_id}/model",
        "/tmp/model",
        "file:///tmp/model",
        "models:/{name}/1",
        "models:/{name}@challenger",
        "s3://bucket/model",
        "models://other-registry/m-0123abcd",
    ],
)
def test_register_refuses_anything_but_a_logged_model_uri(runs: Runs, name: str, uri: str) -> None:
    run = runs.runs[2]
    with pytest.raises(ConfigError, match=r"register: model_uri .* is not accepted; expected models:/m-<id>"):
        register(uri.format(run_id=run.run_id, name=name), run.run_id, name, True, runs.uri)
    assert registered_model(MlflowClient(runs.uri), name) is None, "refused before anything was written"


def test_register_refuses_a_logged_model_the_tracking_server_does_not_hold(runs: Runs, name: str) -> None:
    with pytest.raises(ModelNotFound, match="no such logged model on the tracking server"):
        register("models:/m-0123456789abcdef0123456789abcdef", runs.runs[0].run_id, name, True, runs.uri)
    assert registered_model(MlflowClient(runs.uri), name) is None


def test_register_refuses_a_logged_model_without_the_hash_loaders_check(runs: Runs, name: str) -> None:
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"calls": [0.0, 1.0, 2.0, 3.0]})
    model = LogisticRegression().fit(frame, [0, 0, 1, 1])
    tracking.ensure_experiment("register-tests", runs.uri)
    with mlflow.start_run() as run:
        # Logged outside ctpipe's train step: no ctpipe.model_sha256 tag, so no step could load it.
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=tracking.pip_requirements())
    with pytest.raises(tracking.ModelIntegrityError, match="no recorded SHA-256"):
        register(info.model_uri, run.info.run_id, name, True, runs.uri)
    assert MlflowClient(runs.uri).search_model_versions(f"name='{name}'") == []


# --- idempotent skips on the registry state the pipeline read -----------------------------------


def test_a_candidate_registered_so_is_left_alone_given_the_registry_state(runs: Runs, name: str) -> None:
    first = _register(runs, 0, name, data_snapshot="s1", pipeline_run="run-1")
    state = read_state(name, runs.uri)
    run = runs.runs[0]

    again = register(
        run.model_uri, run.run_id, name, True, runs.uri, {"data_snapshot": "s1", "pipeline_run": "run-2"}, state
    )

    assert again.skipped.startswith(f"version {first.version} already holds run {run.run_id}'s logged model")
    assert (again.version, again.created, again.aliases, again.onnx) == (
        first.version,
        False,
        [CHALLENGER_ALIAS],
        "compiled",
    )
    after = read_state(name, runs.uri)
    assert after.digest == state.digest, "an idempotent skip writes nothing"
    # pipeline_run keeps naming the run that last changed the registration.
    assert after.versions[first.version].tags[PIPELINE_RUN_TAG] == "run-1"

    # Another lineage is work to do: applied, and the registry epoch renewed.
    changed = register(run.model_uri, run.run_id, name, True, runs.uri, {"data_snapshot": "s2"}, state)
    assert not changed.skipped and changed.version == first.version
    renewed = read_state(name, runs.uri)
    assert renewed.versions[first.version].tags["data_snapshot"] == "s2"
    assert renewed.tags[EPOCH_TAG] != state.tags[EPOCH_TAG]
    # Unblessing the challenger is work too (the alias goes), even from a state that knew it.
    demoted = register(run.model_uri, run.run_id, name, False, runs.uri, {"data_snapshot": "s2"}, renewed)
    assert not demoted.skipped and demoted.aliases == []


def _state(**versions: VersionState) -> RegistryState:
    return RegistryState(model_name="m", exists=True, digest="d", versions=versions)


def _version(number: str, run_id: str = "r1", **tags: str) -> VersionState:
    base = {BLESSED_TAG: "true", RUN_ID_TAG: run_id, ONNX_TAG: "compiled"}
    return VersionState(
        version=number, status="READY", run_id=run_id, model_id="m-1", first_of_run=True, tags={**base, **tags}
    )


def test_what_counts_as_already_registered() -> None:
    from components.register import _already_registered

    tags = {BLESSED_TAG: "true", RUN_ID_TAG: "r1"}
    challenger = _state(**{"1": _version("1")})
    challenger.aliases = {CHALLENGER_ALIAS: "1"}
    assert _already_registered(challenger, "m-1", "r1", True, tags) is not None
    assert _already_registered(challenger, "m-2", "r1", True, tags) is None, "another logged model: other content"
    no_alias = _state(**{"1": _version("1")})
    assert _already_registered(no_alias, "m-1", "r1", True, tags) is None, "a blessed candidate needs the alias"
    no_onnx = _state(**{"1": _version("1")})
    no_onnx.versions["1"].tags.pop(ONNX_TAG)
    no_onnx.aliases = {CHALLENGER_ALIAS: "1"}
    assert _already_registered(no_onnx, "m-1", "r1", True, tags) is None, "ONNX compilation is still to do"
    later = _version("1")
    later.first_of_run = False
    assert _already_registered(_state(**{"1": later}), "m-1", "r1", True, tags) is None

    # A newer blessed challenger waiting: the older candidate has nothing to do; an unblessed newer one is replaced.
    waiting = _state(**{"1": _version("1"), "2": _version("2", run_id="r2")})
    waiting.aliases = {CHALLENGER_ALIAS: "2"}
    done = _already_registered(waiting, "m-1", "r1", True, tags)
    assert done is not None and "a newer blessed challenger (version 2) is waiting" in done[1]
    waiting.versions["2"].tags[BLESSED_TAG] = "false"
    assert _already_registered(waiting, "m-1", "r1", True, tags) is None

    # Unblessed: done when it holds no alias; the champion is never unblessed by a skip.
    unblessed = {BLESSED_TAG: "false", RUN_ID_TAG: "r1"}
    rejected = _state(**{"1": _version("1", **{BLESSED_TAG: "false"})})
    assert _already_registered(rejected, "m-1", "r1", False, unblessed) is not None
    rejected.aliases = {CHAMPION_ALIAS: "1"}
    assert _already_registered(rejected, "m-1", "r1", False, unblessed) is None
    assert (
        _already_registered(RegistryState(model_name="m", exists=False, digest="absent"), "m-1", "r1", True, tags)
        is None
    )


def test_the_registry_state_digests_everything_and_details_a_bounded_few(runs: Runs, name: str) -> None:
    assert not read_state(name, runs.uri).exists
    first = _register(runs, 1, name)
    promote(name, runs.uri)
    state = read_state(name, runs.uri)
    assert state.exists and state.aliases == {CHAMPION_ALIAS: first.version}
    assert RegistryState.from_json(state.to_json(), name) == state
    assert RegistryState.from_json(state.to_json(), "another-model") is None
    assert RegistryState.from_json("", name) is None and RegistryState.from_json("{not json", name) is None

    client = MlflowClient(runs.uri)
    run = runs.runs[1]
    model_id = run.model_uri.removeprefix("models:/")
    for _ in range(DETAIL_VERSIONS + 1):  # more versions than are detailed, all of the same run
        client.create_model_version(name, source=run.model_uri, run_id=run.run_id, model_id=model_id)
    many = read_state(name, runs.uri)
    newest = DETAIL_VERSIONS + 2
    assert set(many.versions) == {first.version} | {str(v) for v in range(newest - DETAIL_VERSIONS + 1, newest + 1)}
    assert many.versions[first.version].first_of_run and not many.versions[str(newest)].first_of_run
    assert many.digest != state.digest

    # A tag on a version that is not detailed still changes the digest.
    client.set_model_version_tag(name, "2", "note", "x")
    tagged = read_state(name, runs.uri)
    assert "2" not in tagged.versions and tagged.digest != many.digest
    assert read_state(name, runs.uri).digest == tagged.digest  # reading changes nothing


# --- ONNX ------------------------------------------------------------------------------------


def _download(uri: str, tracking_uri: str, folder: Path) -> Path:
    import mlflow.artifacts

    tracking.configure(tracking_uri)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))


def _logged_onnx(runs: Runs, name: str, version: str) -> Path:
    """Where the artifact store keeps the version's model.onnx (a local folder for sqlite MLflow)."""
    from urllib.parse import urlparse

    client = MlflowClient(runs.uri)
    model_id = client.get_model_version(name, version).source.removeprefix("models:/")
    return Path(urlparse(client.get_logged_model(model_id).artifact_location).path) / ONNX_ARTIFACT


def test_register_logs_onnx_with_the_version(runs: Runs, name: str, dataset_spec: DatasetSpec, tmp_path: Path) -> None:
    from mlflow.models import Model as MlflowModel

    from components.common.compiled_model import OnnxScorer, check_parity
    from components.common.model_input import features_of, prepare_features

    result = _register(runs, 0, name)
    assert result.onnx == "compiled"
    tags = MlflowClient(runs.uri).get_model_version(name, result.version).tags
    assert tags[ONNX_TAG] == "compiled"
    # models:/NAME/VERSION brings model.onnx along with the model, as the model server downloads it.
    local = _download(f"models:/{name}/{result.version}", runs.uri, tmp_path / "version")
    assert {"MLmodel", "model.pkl", ONNX_ARTIFACT} <= {p.name for p in local.iterdir()}
    assert file_sha256(local / ONNX_ARTIFACT) == tags[ONNX_SHA256_TAG]
    model = tracking.load_sklearn_model(str(local))
    features = features_of(MlflowModel.load(str(local)), model)
    scorer = OnnxScorer.from_file(local / ONNX_ARTIFACT, tags[ONNX_SHA256_TAG], features, "score")
    rows = prepare_features(pd.read_parquet(runs.runs[0].eval_path), dataset_spec)
    parity = check_parity(model, scorer, rows, "score")
    assert parity.passed and parity.rows == runs.runs[0].eval_rows, parity.reason


def test_onnx_compilation_is_idempotent(runs: Runs, name: str, tmp_path: Path) -> None:
    first = _register(runs, 1, name)
    stored = _logged_onnx(runs, name, first.version)
    sha = MlflowClient(runs.uri).get_model_version(name, first.version).tags[ONNX_SHA256_TAG]
    written = stored.stat().st_mtime_ns
    # Again: the version has its tag, so nothing is compiled or uploaded.
    again = _register(runs, 1, name)
    assert (again.created, again.onnx) == (False, "compiled")
    assert stored.stat().st_mtime_ns == written
    # Another registered model's version of the same run keeps the file its logged model holds.
    other = register(runs.runs[1].model_uri, runs.runs[1].run_id, f"{name}-other", True, runs.uri)
    assert other.onnx == "compiled" and stored.stat().st_mtime_ns == written
    assert MlflowClient(runs.uri).get_model_version(f"{name}-other", other.version).tags[ONNX_SHA256_TAG] == sha
    # The tag, not the file, says the work is done: without the tag the file is compiled again, identically.
    stored.unlink()
    _register(runs, 1, name)
    assert not stored.exists()
    third = register(runs.runs[1].model_uri, runs.runs[1].run_id, f"{name}-third", True, runs.uri)
    assert third.onnx == "compiled" and file_sha256(stored) == sha


def test_a_model_onnx_cannot_express_is_registered_with_the_reason(runs: Runs, name: str) -> None:
    import mlflow
    import mlflow.sklearn
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    frame = pd.DataFrame({"calls": np.arange(40.0)})
    model = Pipeline([("log", FunctionTransformer(np.log1p)), ("estimator", LogisticRegression())])
    model.fit(frame, (frame["calls"] > 20).astype(int))
    tracking.ensure_experiment("register-tests", runs.uri)
    with mlflow.start_run() as run:
        info = tracking.log_sklearn_model(model, runs.uri, signature=infer_signature(frame, model.predict_proba(frame)))
    result = register(info.model_uri, run.info.run_id, name, True, runs.uri)
    assert result.created and result.blessed and result.aliases == [CHALLENGER_ALIAS]
    assert result.onnx.startswith("unsupported: skl2onnx cannot compile Pipeline: RuntimeError: FunctionTransformer")
    tags = MlflowClient(runs.uri).get_model_version(name, result.version).tags
    assert tags[ONNX_TAG] == result.onnx and ONNX_SHA256_TAG not in tags
    assert register(info.model_uri, run.info.run_id, name, True, runs.uri).onnx == result.onnx


# --- lineage ---------------------------------------------------------------------------------


# The suite hash tag, and the name it had before (versions registered earlier keep it).
@pytest.mark.parametrize("suite_tag", [SUITE_HASH_TAG, "suite_hash"])
def test_lineage_follows_model_run_snapshot_suite_config(runs: Runs, name: str, suite_tag: str) -> None:
    from components.register import lineage

    run = runs.runs[1]
    tags = {
        "data_snapshot": "snap123",
        suite_tag: "suite456",
        "config_hash": "cfg789",
        "code_version": "abc1234",
        "pipeline_run": "ctpipe-training-1",
    }
    version = _register(runs, 1, name, **tags).version
    promote(name, runs.uri)
    chain = lineage(name, version, runs.uri)
    assert [link.kind for link in chain.chain] == ["model", "run", "data snapshot", "suite", "config"]
    model, run_link, data, suite, config = chain.chain
    assert model.id == f"{name}/{version}"
    assert model.details["blessed"] == "true" and model.details["aliases"] == CHAMPION_ALIAS
    assert run_link.id == run.run_id
    assert run_link.details["estimator"] == "sklearn.linear_model.LogisticRegression"
    assert float(run_link.details["roc_auc"]) == pytest.approx(run.metrics["roc_auc"], rel=1e-3)
    assert data.id == "snap123" and len(data.details["training_set_sha256"]) == 64
    assert suite.id == "suite456"
    assert config.id == "cfg789" and config.details == {"code_version": "abc1234", "pipeline_run": "ctpipe-training-1"}
    text = chain.text()
    assert text.splitlines()[0].startswith(f"model {name}/{version}")
    assert "← run " + run.run_id in text and "← config cfg789" in text

    with pytest.raises(ModelNotFound, match="no version 99"):
        lineage(name, "99", runs.uri)


def _cli_config(tmp_path: Path, runs: Runs, name: str) -> Path:
    import yaml

    from tests.helpers import ROOT

    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["infra"] = {"workspace": str(tmp_path), "tracking_uri": runs.uri}
    raw["serving"]["model_name"] = name
    path = tmp_path / "ctpipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_promote_rollback_and_lineage(runs: Runs, name: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from pipelines.cli import main

    config = str(_cli_config(tmp_path, runs, name))
    cli = CliRunner()
    v1 = _register(runs, 0, name, config_hash="c1").version
    assert cli.invoke(main, ["--config", config, "promote"]).exit_code == 0
    v2 = _register(runs, 1, name, config_hash="c2").version
    promoted = cli.invoke(main, ["--config", config, "promote", "--json"])
    assert json.loads(promoted.stdout) == {"name": name, "alias": CHAMPION_ALIAS, "previous": v1, "current": v2}

    rolled = cli.invoke(main, ["--config", config, "rollback"])
    assert rolled.exit_code == 0, rolled.output
    assert rolled.stdout.strip() == f"{name}@{CHAMPION_ALIAS}: version {v2} → {v1}"
    assert _champion(runs, name) == v1

    shown = cli.invoke(main, ["--config", config, "lineage", name, v1, "--json"])
    assert shown.exit_code == 0, shown.output
    chain = json.loads(shown.stdout)["chain"]
    assert chain[1]["id"] == runs.runs[0].run_id and chain[4]["id"] == "c1"
    assert "aliases=champion" in cli.invoke(main, ["--config", config, "lineage", name, v1]).stdout
    missing = cli.invoke(main, ["--config", config, "lineage", name, "42", "--json"])
    assert missing.exit_code == 1 and "no version 42" in json.loads(missing.stdout.splitlines()[0])["error"]


# --- safety: races and crashes, with real processes on one sqlite registry -------------------

_WRITES = (
    "create_registered_model",
    "create_model_version",
    "set_model_version_tag",
    "set_registered_model_alias",
    "delete_registered_model_alias",
    "set_registered_model_tag",
    "delete_registered_model",
)


def _processes():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    # Children fork from a server that imported these once (and holds no database connection).
    context.set_forkserver_preload(
        [
            "mlflow",
            "mlflow.store.tracking.sqlalchemy_store",
            "mlflow.store.model_registry.sqlalchemy_store",
            "components.register",
            "tests.unit.test_register",
            # What register's ONNX compilation imports (about a second in every child otherwise).
            "skl2onnx",
            "onnxruntime",
        ]
    )
    return context


def _race_worker(uri: str, name: str, model_uri: str, run_id: str, blessed: bool, go) -> None:
    go.wait(60)
    register(model_uri, run_id, name, blessed, uri, {"worker": run_id})


def _crash_worker(uri: str, name: str, model_uri: str, run_id: str, blessed: bool, die_at: int) -> None:
    """Register, but die like a killed pod (no cleanup, no finally) right before registry write ``die_at``.

    The worker's lock lease is 6 s instead of 30 s: the recovering registration must still wait out
    the dead holder's whole lease (contenders use the lease the holder recorded), just not 30 s of it
    for each of the crashes that happen under the lock.
    """
    import os

    from components.common import registry_lease

    registry_lease.LOCK_LEASE_SECONDS = 6.0
    calls = itertools.count(1)
    for method in _WRITES:
        original = getattr(MlflowClient, method)

        def write(self, *args, _original=original, **kwargs):
            if next(calls) == die_at:
                os._exit(70)
            return _original(self, *args, **kwargs)

        setattr(MlflowClient, method, write)
    register(model_uri, run_id, name, blessed, uri)


def _assert_aliases_safe(uri: str, name: str) -> dict[str, str]:
    """Every alias points at a READY version tagged blessed; tags match the runs they came from."""
    client = MlflowClient(uri)
    model = client.get_registered_model(name)
    for alias, version in model.aliases.items():
        target = client.get_model_version(name, version)
        assert target.status == "READY", (alias, version)
        assert target.tags.get(BLESSED_TAG) == "true", f"{alias} -> v{version} tagged {target.tags.get(BLESSED_TAG)}"
    for version in client.search_model_versions(f"name='{name}'"):
        assert version.tags["ctpipe.run_id"] == version.run_id
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_racing_registrations_leave_the_newest_blessed_version_as_challenger(runs: Runs) -> None:
    from components.common.registry_lease import LOCK_SUFFIX

    context = _processes()
    for round_ in range(2):
        name = f"race-{round_}-{next(_names)}"
        go = context.Event()
        blessings = [True, True, False, True]
        workers = [
            context.Process(
                target=_race_worker, args=(runs.uri, name, run.model_uri, run.run_id, blessed, go), daemon=True
            )
            for run, blessed in zip(runs.runs, blessings, strict=True)
        ]
        for worker in workers:
            worker.start()
        go.set()
        for worker in workers:
            worker.join(120)
            assert worker.exitcode == 0
        client = MlflowClient(runs.uri)
        versions = client.search_model_versions(f"name='{name}'")
        assert len(versions) == 4  # one per run, none lost or doubled
        by_run = {v.run_id: v for v in versions}
        for run, blessed in zip(runs.runs, blessings, strict=True):
            assert by_run[run.run_id].tags[BLESSED_TAG] == str(blessed).lower()
            assert by_run[run.run_id].tags["worker"] == run.run_id
        aliases = _assert_aliases_safe(runs.uri, name)
        newest_blessed = max(int(v.version) for v in versions if v.tags[BLESSED_TAG] == "true")
        assert aliases == {CHALLENGER_ALIAS: str(newest_blessed)}
        assert client.search_registered_models(f"name='{name}{LOCK_SUFFIX}'") == []  # lock released


def _crash_at_every_write(runs: Runs, name: str, index: int, blessed: bool, reset) -> int:
    """Kill a registration before each of its writes in turn; check the aliases after every crash."""
    context = _processes()
    run = runs.runs[index]
    for die_at in itertools.count(1):
        reset()
        worker = context.Process(
            target=_crash_worker, args=(runs.uri, name, run.model_uri, run.run_id, blessed, die_at)
        )
        worker.start()
        worker.join(120)
        assert worker.exitcode in (0, 70)
        _assert_aliases_safe(runs.uri, name)
        # The next registration recovers: it breaks the dead holder's lock and finishes the job.
        result = register(run.model_uri, run.run_id, name, blessed, runs.uri)
        assert (CHALLENGER_ALIAS in result.aliases) == blessed
        _assert_aliases_safe(runs.uri, name)
        if worker.exitcode == 0:
            return die_at - 1
    raise AssertionError("unreachable")


def test_a_crash_at_any_write_leaves_no_alias_on_an_unblessed_version(runs: Runs, name: str) -> None:
    _register(runs, 0, name)  # v1, blessed challenger

    # A new blessed candidate: killed before each write (create version, lock, alias, unlock).
    writes = _crash_at_every_write(runs, name, 1, True, lambda: None)
    assert writes >= 3
    assert resolve_alias(name, CHALLENGER_ALIAS, runs.uri).run_id == runs.runs[1].run_id

    # The challenger re-evaluated as not blessed: the alias must go before its tag says false.
    writes = _crash_at_every_write(runs, name, 1, False, lambda: _register(runs, 1, name))
    assert writes >= 4
    assert not resolve_alias(name, CHALLENGER_ALIAS, runs.uri).found


def test_cli_switch_needs_blue_green_and_an_infra_blessed_challenger(runs: Runs, name: str, tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from components.common import tracking
    from components.common.registry import INFRA_BLESSED_TAG, LIVE_VERSION_TAG
    from pipelines.cli import main

    path = _cli_config(tmp_path, runs, name)
    cli = CliRunner()
    v1 = _register(runs, 0, name).version
    assert cli.invoke(main, ["--config", str(path), "promote"]).exit_code == 0
    v2 = _register(runs, 1, name).version  # the challenger
    canary = cli.invoke(main, ["--config", str(path), "switch"])
    assert canary.exit_code != 0 and "needs 'blue_green'" in canary.output, canary.output

    raw = yaml.safe_load(path.read_text())
    raw["serving"]["rollout"] = {"strategy": "blue_green"}
    path.write_text(yaml.safe_dump(raw))
    client = tracking.registry_client(runs.uri)
    client.set_model_version_tag(name, v2, INFRA_BLESSED_TAG, "false")
    refused = cli.invoke(main, ["--config", str(path), "switch"])
    assert refused.exit_code != 0 and "not infra-blessed" in refused.output and "'false'" in refused.output
    assert LIVE_VERSION_TAG not in (client.get_registered_model(name).tags or {})

    client.set_model_version_tag(name, v2, INFRA_BLESSED_TAG, "true")
    switched = cli.invoke(main, ["--config", str(path), "switch", "--json"])
    assert switched.exit_code == 0, switched.output
    assert json.loads(switched.stdout) == {"model_name": name, "live_version": v2, "back": False}
    assert client.get_registered_model(name).tags[LIVE_VERSION_TAG] == v2
    back = cli.invoke(main, ["--config", str(path), "switch", "--back"])
    assert back.exit_code == 0 and back.stdout.strip() == f"{name}: all traffic to version {v1}"
    assert client.get_registered_model(name).tags[LIVE_VERSION_TAG] == v1
