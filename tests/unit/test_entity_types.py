"""Entity types from the data: string ids through fetch_features with no feast.entity_type; the registry records it."""

from pathlib import Path

import pandas as pd
import pytest

from components.common.errors import ConfigError, DataError
from components.common.feast import (
    definitions,
    feature_store,
    online_features,
    recorded_entity_type,
)
from components.fetch_features import build_training_set
from components.specs import DatasetSpec, FeastSpec

FROM_DATA = FeastSpec()  # entity_type left out


def _spec(tmp_path: Path) -> DatasetSpec:
    return DatasetSpec(
        source=str(tmp_path / "unused.parquet"),
        entity_column="customer",
        timestamp_column="ts",
        label_column="label",
        numeric_features=["signal"],
        categorical_features=["plan"],
    )


def _snapshot(tmp_path: Path, name: str, ids: list, signals: list[float]) -> str:
    frame = pd.DataFrame(
        {
            "customer": ids,
            "ts": pd.to_datetime([f"2026-01-0{i + 1}" for i in range(len(ids))], utc=True),
            "signal": signals,
            "plan": ["basic", "premium", "basic", "premium"][: len(ids)],
            "label": [0, 1, 0, 1][: len(ids)],
        }
    )
    path = tmp_path / f"{name}.parquet"
    frame.to_parquet(path)
    return str(path)


def test_feast_entity_type_defaults_to_from_the_data():
    assert FeastSpec().entity_type is None
    assert FeastSpec(entity_type="string").entity_type == "string"


def test_string_entity_ids_work_end_to_end_without_feast_entity_type(tmp_path):
    spec = _spec(tmp_path)
    workspace = str(tmp_path / "ws")
    ids = ["cust-0001", "cust-0002", "cust-0003"]
    snapshot = _snapshot(tmp_path, "s1", ids, [0.5, 1.5, 2.5])

    result = build_training_set(snapshot, spec, FROM_DATA, workspace, str(tmp_path / "out"))

    training = pd.read_parquet(tmp_path / "out")
    assert result.rows == 3 and result.missing_entities == 0
    assert training.customer.tolist() == ids
    assert training.signal.tolist() == [0.5, 1.5, 2.5]
    assert training.plan.tolist() == ["basic", "premium", "basic"]
    # The registry records the type the data had, for everything that has no data.
    assert recorded_entity_type(spec, FROM_DATA, workspace) == "string"
    entity, _ = definitions(spec, FROM_DATA, workspace)
    assert entity.value_type.name == "STRING"
    found = online_features(["cust-0003", "cust-0001", "cust-9999"], spec, FROM_DATA, workspace)
    assert found.rows == [
        {"customer": "cust-0003", "signal": 2.5, "plan": "basic"},
        {"customer": "cust-0001", "signal": 0.5, "plan": "basic"},
    ]
    assert found.missing == ["cust-9999"]


def test_integer_entity_ids_are_int64_and_a_stated_type_gives_the_same_definitions(tmp_path):
    spec = _spec(tmp_path)
    workspace = str(tmp_path / "ws")
    snapshot = _snapshot(tmp_path, "s1", [1, 2], [0.5, 1.5])
    build_training_set(snapshot, spec, FROM_DATA, workspace, str(tmp_path / "a"))
    assert recorded_entity_type(spec, FROM_DATA, workspace) == "int64"
    assert online_features([2, 7], spec, FROM_DATA, workspace).missing == [7]
    with pytest.raises(DataError, match=r"entity id 'x' for column 'customer' is not an integer \(the Feast registry"):
        online_features(["x"], spec, FROM_DATA, workspace)

    # Naming the type the data has is the same definition: the fingerprint uses the effective type,
    # so nothing is re-applied; a different effective type is a different fingerprint.
    _, implicit = definitions(spec, FROM_DATA, workspace, "int64")
    _, explicit = definitions(spec, FeastSpec(entity_type="int64"), workspace)
    _, other = definitions(spec, FROM_DATA, workspace, "string")
    tag = "ctpipe.definitions"
    assert implicit.tags[tag] == explicit.tags[tag] != other.tags[tag]
    again = build_training_set(snapshot, spec, FeastSpec(entity_type="int64"), workspace, str(tmp_path / "b"))
    assert again.rows == 2


def test_entity_column_of_another_type_is_named_with_file_column_and_kinds(tmp_path):
    spec = _spec(tmp_path)
    snapshot = _snapshot(tmp_path, "floats", [1.5, 2.5], [0.5, 1.5])
    with pytest.raises(
        DataError,
        match=r"floats\.parquet: entity column 'customer' has dtype float64; expected integers "
        r"\(feast.entity_type 'int64'\) or strings",
    ):
        build_training_set(snapshot, spec, FROM_DATA, str(tmp_path / "ws"), str(tmp_path / "out"))
    flags = _snapshot(tmp_path, "flags", [True, False], [0.5, 1.5])
    with pytest.raises(DataError, match=r"flags\.parquet: entity column 'customer' has dtype bool; expected"):
        build_training_set(flags, spec, FROM_DATA, str(tmp_path / "ws"), str(tmp_path / "out"))


def test_stated_string_type_is_still_checked_against_the_data(tmp_path):
    spec = _spec(tmp_path)
    snapshot = _snapshot(tmp_path, "ints", [1, 2], [0.5, 1.5])
    with pytest.raises(DataError, match=r"'customer' has dtype int64, but feast.entity_type is 'string'"):
        build_training_set(snapshot, spec, FeastSpec(entity_type="string"), str(tmp_path / "ws"), str(tmp_path / "o"))


def test_entity_type_changed_in_the_data_names_the_old_offline_file(tmp_path):
    spec = _spec(tmp_path)
    workspace = str(tmp_path / "ws")
    build_training_set(_snapshot(tmp_path, "ints", [1, 2], [0.5, 1.5]), spec, FROM_DATA, workspace, str(tmp_path / "a"))
    strings = _snapshot(tmp_path, "strings", ["cust-1"], [0.5])
    with pytest.raises(
        DataError,
        match=r"snapshot=.*\.parquet: offline feature file has entity column 'customer' of type int64, "
        r"but this snapshot's entity ids are 'string'",
    ):
        build_training_set(strings, spec, FROM_DATA, workspace, str(tmp_path / "b"))


def test_no_type_anywhere_is_a_config_error_naming_the_registry(tmp_path):
    spec = _spec(tmp_path)
    workspace = str(tmp_path / "ws")
    assert recorded_entity_type(spec, FROM_DATA, workspace) is None
    with pytest.raises(ConfigError, match=r"feast.entity_type is not set and the Feast registry .*registry\.db"):
        definitions(spec, FROM_DATA, workspace)
    with pytest.raises(ConfigError, match=r"has no entity 'customer' yet"):
        feature_store(spec, FROM_DATA, workspace)
    assert definitions(spec, FeastSpec(entity_type="string"), workspace)[0].value_type.name == "STRING"
