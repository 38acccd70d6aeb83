"""Registry: idempotent registration, blessing-gated aliases, promotion and stepwise rollback."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.common import tracking
from components.common.errors import CtpipeError, ModelNotFound
from components.register import (
    BLESSED_TAG,
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    PREVIOUS_CHAMPION_TAG,
    promote,
    register,
    resolve_alias,
    rollback,
)
from components.specs import DatasetSpec, ModelSpec
from components.train import TrainResult, train

_names = itertools.count()


@dataclass
class Runs:
    uri: str
    runs: list[TrainResult]


@pytest.fixture(scope="module")
def runs(demo_data: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Four training runs (different seeds) in one sqlite MLflow."""
    from pipelines.demo_data import CATEGORICAL_FEATURES, ENTITY, LABEL, NUMERIC_FEATURES, TIMESTAMP

    workspace = tmp_path_factory.mktemp("register")
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    spec = DatasetSpec(
        source=str(demo_data[0]),
        entity_column=ENTITY,
        timestamp_column=TIMESTAMP,
        label_column=LABEL,
        numeric_features=list(NUMERIC_FEATURES),
        categorical_features=list(CATEGORICAL_FEATURES),
    )
    results = [
        train(
            str(demo_data[0]),
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
    return resolve_alias(name, CHAMPION, runs.uri).version


def test_resolve_alias_missing_model_or_alias(runs: Runs, name: str) -> None:
    missing_model = resolve_alias(name, CHAMPION, runs.uri)
    assert not missing_model.found and missing_model.version is None and missing_model.name == name
    _register(runs, 0, name, blessed=False)
    assert not resolve_alias(name, CHAMPION, runs.uri).found


def test_register_tags_lineage_and_is_idempotent_by_run(runs: Runs, name: str) -> None:
    first = _register(runs, 0, name, data_snapshot="abc123", git_commit="deadbeef")
    assert first.created and first.version == "1" and first.blessed
    again = _register(runs, 0, name, data_snapshot="abc123", git_commit="deadbeef")
    assert not again.created and again.version == "1"
    assert again.aliases == [CHALLENGER]
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
    assert not resolve_alias(name, CHALLENGER, runs.uri).found


def test_blessed_version_becomes_challenger(runs: Runs, name: str) -> None:
    first = _register(runs, 0, name)
    ref = resolve_alias(name, CHALLENGER, runs.uri)
    assert ref.found and ref.version == first.version and ref.run_id == runs.runs[0].run_id
    assert ref.model_uri == f"models:/{name}/{first.version}" and ref.alias == CHALLENGER
    second = _register(runs, 1, name)
    assert resolve_alias(name, CHALLENGER, runs.uri).version == second.version == "2"
    # Re-registering the first run unblessed must not leave an alias on it.
    _register(runs, 1, name, blessed=False)
    assert not resolve_alias(name, CHALLENGER, runs.uri).found


def test_reserved_lineage_keys_are_rejected(runs: Runs, name: str) -> None:
    with pytest.raises(CtpipeError, match=BLESSED_TAG):
        _register(runs, 0, name, **{BLESSED_TAG: "true"})


def test_promote_moves_champion_and_records_previous(runs: Runs, name: str) -> None:
    v1 = _register(runs, 0, name).version
    change = promote(name, runs.uri)
    assert (change.previous, change.current, change.alias) == (None, v1, CHAMPION)
    assert not resolve_alias(name, CHALLENGER, runs.uri).found  # challenger consumed

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
    champion = resolve_alias(name, CHAMPION, runs.uri)
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
    assert not resolve_alias(name, CHAMPION, runs.uri).found


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
    with pytest.raises(CtpipeError, match="belongs to run"):
        register(f"runs:/{run.run_id}/model", runs.runs[1].run_id, name, True, runs.uri)


def test_register_accepts_a_runs_uri(runs: Runs, name: str) -> None:
    run = runs.runs[2]
    result = register(f"runs:/{run.run_id}/{tracking.MODEL_ARTIFACT}", run.run_id, name, True, runs.uri)
    assert result.created and result.aliases == [CHALLENGER]
    assert resolve_alias(name, CHALLENGER, runs.uri).run_id == run.run_id
    assert tracking.load_sklearn_model(f"models:/{name}@{CHALLENGER}", runs.uri) is not None
