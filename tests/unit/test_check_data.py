"""`ctpipe config --check-data`: the dataset source's schema against the configuration, before any run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from components.common.errors import DataError
from pipelines.check_data import check_data, source_schema
from pipelines.cli import main
from pipelines.config import parse_config
from tests.data import churn_spec, write_churn
from tests.helpers import ROOT


def _config_file(tmp_path: Path, source: Path, **feast: Any) -> Path:
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["dataset"] = churn_spec(source).model_dump(mode="json")  # the columns of tests/data.py
    raw["infra"]["workspace"] = str(tmp_path / "ws")
    raw["feast"].update(feast)
    path = tmp_path / f"ctpipe-{len(list(tmp_path.glob('ctpipe-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' churn data (tests/data.py), which has the columns ctpipe.yaml names."""
    path = tmp_path_factory.mktemp("churn") / "churn.parquet"
    write_churn(path, windows=2, rows=200, seed=3)
    return path


def _check(config_file: Path) -> Any:
    return CliRunner().invoke(main, ["--config", str(config_file), "config", "--check-data"])


def test_demo_config_and_generated_data_agree(tmp_path, demo_data):
    result = _check(_config_file(tmp_path, demo_data))
    assert result.exit_code == 0, result.output
    assert result.output == f"ok: {demo_data} agrees with the configuration; entity type int64 (from the data)\n"

    stated = _check(_config_file(tmp_path, demo_data, entity_type="int64"))
    assert stated.exit_code == 0, stated.output
    assert "entity type int64 (from feast.entity_type)" in stated.output


def test_broken_data_fails_with_one_line_per_problem(tmp_path, demo_data):
    frame = pd.read_parquet(demo_data)
    broken = frame.drop(columns=["region", "support_calls"]).assign(
        tenure_months=frame.tenure_months.astype(str),
        event_timestamp=frame.event_timestamp.astype("int64"),
        churned=frame.churned.astype("float64"),
    )
    source = tmp_path / "broken.parquet"
    broken.to_parquet(source)

    result = _check(_config_file(tmp_path, source, entity_type="string"))

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[-1] == f"error: 6 problem(s) in {source}"
    problems = lines[:-1]
    assert problems[0].startswith(f"dataset.numeric_features: column 'support_calls' is not in {source}; expected it")
    assert problems[1].startswith(f"dataset.categorical_features: column 'region' is not in {source}; expected it")
    assert "found columns [churned, customer_id, event_timestamp," in problems[0]
    assert problems[2:] == [
        "feast.entity_type: is 'string' but column 'customer_id' (dataset.entity_column) has type int64; "
        "expected strings, or leave feast.entity_type out to use 'int64'",
        "dataset.timestamp_column: column 'event_timestamp' has type int64; "
        "expected timestamps (or ISO-8601 strings, which ingest parses)",
        "dataset.numeric_features: column 'tenure_months' has type string; expected numbers (integers or floats)",
        "dataset.label_column: column 'churned' has type double; expected class labels "
        "(integers, booleans or strings) for dataset.task 'binary_classification'",
    ]


def test_entity_column_of_no_entity_type_and_a_regression_label_are_named(tmp_path, demo_data):
    frame = pd.read_parquet(demo_data)
    source = tmp_path / "floats.parquet"
    frame.assign(customer_id=frame.customer_id.astype("float64"), churned=frame.churned.astype(str)).to_parquet(source)
    raw = yaml.safe_load(_config_file(tmp_path, source).read_text())
    raw["dataset"]["task"] = "regression"
    raw["evaluation"]["metrics"] = [{"name": "mean_absolute_error"}]
    check = check_data(parse_config(raw, tmp_path))
    assert check.entity_type is None
    assert check.problems == [
        "dataset.entity_column: column 'customer_id' has type double; "
        "expected integers (feast.entity_type 'int64') or strings (feast.entity_type 'string')",
        "dataset.label_column: column 'churned' has type string; expected numbers for dataset.task 'regression'",
    ]


def test_string_entities_in_a_csv_and_a_folder_of_parquet_files(tmp_path, demo_data):
    frame = pd.read_parquet(demo_data)
    strings = frame.assign(customer_id="cust-" + frame.customer_id.astype(str))
    csv = tmp_path / "churn.csv"
    strings.to_csv(csv, index=False)
    result = _check(_config_file(tmp_path, csv))
    assert result.exit_code == 0, result.output
    assert "entity type string (from the data)" in result.output

    folder = tmp_path / "parts"
    folder.mkdir()
    strings.iloc[:100].to_parquet(folder / "a.parquet")
    frame.iloc[100:].to_parquet(folder / "b.parquet")
    types, problems = source_schema(str(folder))
    assert str(types["customer_id"]) == "string"
    assert problems == [
        f"dataset.source: column 'customer_id' has type string in {folder / 'a.parquet'} but int64 in "
        f"{folder / 'b.parquet'}; expected one type in every file"
    ]


def test_missing_source_is_one_error_line(tmp_path):
    result = _check(_config_file(tmp_path, tmp_path / "nothing.parquet"))
    assert result.exit_code == 1
    assert "nothing.parquet: no such file or folder (dataset.source)" in result.output
    with pytest.raises(DataError, match=r"not a readable Parquet file"):
        (tmp_path / "junk.parquet").write_text("not parquet")
        source_schema(str(tmp_path / "junk.parquet"))


def test_a_multiclass_config_accepts_text_classes_and_names_a_float_label(tmp_path, multiclass_data):
    from tests.data import multiclass_spec

    source = multiclass_data[0]
    raw = yaml.safe_load(_config_file(tmp_path, source).read_text())
    raw["dataset"] = multiclass_spec(source).model_dump(mode="json")
    raw["evaluation"]["metrics"] = [{"name": "f1_score", "average": "macro", "threshold": {"lower_bound": 0.3}}]
    path = tmp_path / "multiclass.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = _check(path)
    assert result.exit_code == 0, result.output

    floats = tmp_path / "floats.parquet"
    pd.read_parquet(source).assign(segment=lambda f: f["age"]).to_parquet(floats)
    raw["dataset"]["source"] = str(floats)
    check = check_data(parse_config(raw, tmp_path))
    assert check.problems == [
        "dataset.label_column: column 'segment' has type double; expected class labels "
        "(integers, booleans or strings) for dataset.task 'multiclass_classification'"
    ]
