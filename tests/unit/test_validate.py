import json

import numpy as np
import pandas as pd
import pytest

from components.common.errors import DataError, ValidationFailed
from components.validate import QUARANTINE_REASON, infer_suite, load_suite, save_suite, suite_hash, validate


@pytest.fixture
def windows(demo_frame, demo_data):
    bounds = demo_data[1]
    stamp = demo_frame.event_timestamp
    first = demo_frame[stamp < bounds[0].end].reset_index(drop=True)
    second = demo_frame[(stamp >= bounds[1].start) & (stamp < bounds[1].end)].reset_index(drop=True)
    return first, second


@pytest.fixture
def suite(windows, dataset_spec):
    return infer_suite(windows[0], dataset_spec)


def run(frame, spec, suite, tmp_path, **kwargs):
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    return validate(
        str(path), spec, suite, str(tmp_path / "r.json"), str(tmp_path / "r.html"), str(tmp_path / "q"), **kwargs
    )


def test_reference_passes_its_own_suite(windows, dataset_spec, suite, tmp_path):
    result = run(windows[0], dataset_spec, suite, tmp_path)
    assert result.success and not result.warnings and result.quarantined_rows == 0
    assert json.loads((tmp_path / "r.json").read_text())["success"] is True
    assert "PASSED" in (tmp_path / "r.html").read_text()


def test_suite_round_trips_with_a_stable_hash(suite, tmp_path):
    digest = save_suite(suite, str(tmp_path / "suite.json"))
    assert digest == suite_hash(load_suite(str(tmp_path / "suite.json"))) == suite_hash(suite)
    assert len(digest) == 16


def test_drifted_window_passes_with_warnings(windows, dataset_spec, suite, tmp_path):
    result = run(windows[1], dataset_spec, suite, tmp_path)
    assert result.success
    assert all(o.severity == "warning" for o in result.warnings)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["support_calls"]), "column 'support_calls' is missing (expect_column_to_exist)"),
        (
            lambda f: f.assign(tenure_months=f.tenure_months.astype(str)),
            "column 'tenure_months' has type object, expected numeric",
        ),
        (lambda f: f.assign(plan=None), "column 'plan' is entirely null"),
        (lambda f: pd.concat([f, f.head(3)]), "6 rows share a ('customer_id', 'event_timestamp') key"),
        (lambda f: f.head(0), "no rows, expected at least 1"),
    ],
    ids=["missing-column", "numbers-as-strings", "all-null", "duplicate-keys", "empty"],
)
def test_blocking_failures_name_the_column_and_expectation(windows, dataset_spec, suite, tmp_path, mutate, message):
    with pytest.raises(ValidationFailed) as err:
        run(mutate(windows[0].copy()), dataset_spec, suite, tmp_path)
    assert message in str(err.value)
    assert "data.parquet" in str(err.value)
    # The result and the report are written before the error, for the run summary and the UI.
    assert json.loads((tmp_path / "r.json").read_text())["success"] is False
    assert "BLOCKED" in (tmp_path / "r.html").read_text()


def test_warnings_are_recorded_and_rows_quarantined(windows, dataset_spec, suite, tmp_path):
    frame = windows[0].copy()
    frame.loc[0, "tenure_months"] = 10_000.0
    frame.loc[1, "plan"] = "platinum"
    frame.loc[2, "event_timestamp"] = pd.Timestamp("2099-01-01", tz="UTC")
    frame["extra_column"] = 1
    result = run(frame, dataset_spec, suite, tmp_path)
    assert result.success
    messages = " | ".join(o.message for o in result.warnings)
    assert "column 'tenure_months' has 1 values outside" in messages
    assert "unseen categories ['platinum']" in messages
    assert "column 'event_timestamp' has 1 values outside" in messages
    assert "extra ['extra_column']" in messages
    quarantined = pd.read_parquet(tmp_path / "q")
    assert len(quarantined) == result.quarantined_rows == 3
    assert set(quarantined.customer_id) == set(frame.loc[:2, "customer_id"])
    assert quarantined[QUARANTINE_REASON].str.contains("expect_column_values").all()
    assert "platinum" in (tmp_path / "r.html").read_text()


def test_null_rate_up_is_a_warning(windows, dataset_spec, suite, tmp_path):
    frame = windows[0].copy()
    frame.loc[: len(frame) // 2, "satisfaction_score"] = np.nan
    result = run(frame, dataset_spec, suite, tmp_path)
    assert result.success
    assert any("column 'satisfaction_score' has" in o.message and "nulls" in o.message for o in result.warnings)


def test_config_column_missing_from_training_data(windows, dataset_spec):
    with pytest.raises(ValidationFailed, match=r"lacks column\(s\) \['payment_delays'\]"):
        infer_suite(windows[0].drop(columns=["payment_delays"]), dataset_spec)


def test_no_raise_mode_returns_blocking_failures(windows, dataset_spec, suite, tmp_path):
    result = run(windows[0].drop(columns=["plan"]), dataset_spec, suite, tmp_path, raise_on_blocking=False)
    assert not result.success
    assert [o.column for o in result.blocking] == ["plan"]


def test_missing_file(dataset_spec, suite, tmp_path):
    with pytest.raises(DataError, match="no such file"):
        validate(str(tmp_path / "nope.parquet"), dataset_spec, suite, str(tmp_path / "r"), str(tmp_path / "h"))
