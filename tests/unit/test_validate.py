import html
import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from components.common.errors import ConfigError, DataError, ValidationFailed
from components.common.suites import BETWEEN, infer_suite, load_suite, save_suite, suite_hash
from components.validate import QUARANTINE_REASON, ValidationResult, validate
from tests.helpers import data_docs_sections


@pytest.fixture(scope="module")
def windows(churn_frame, churn_data):
    bounds = churn_data[1]
    stamp = churn_frame.event_timestamp
    first = churn_frame[stamp < bounds[0].end].reset_index(drop=True)
    second = churn_frame[(stamp >= bounds[1].start) & (stamp < bounds[1].end)].reset_index(drop=True)
    return first, second


@pytest.fixture(scope="module")
def spec(churn_data):
    from tests.data import churn_spec

    return churn_spec(churn_data[0])


@pytest.fixture(scope="module")
def suite(windows, spec):
    return infer_suite(windows[0], spec)


def run(frame, spec, suite, tmp_path, name="data.parquet", docs=False, **kwargs):
    """Validate ``frame`` written to ``tmp_path``; with ``docs`` also GX's Data Docs page (docs.html)."""
    path = tmp_path / name
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    if docs:
        kwargs["data_docs_path"] = str(tmp_path / "docs.html")
    return validate(
        str(path), spec, suite, str(tmp_path / "r.json"), str(tmp_path / "r.html"), str(tmp_path / "q"), **kwargs
    )


def failed(result, expectation, column=None):
    return [o for o in result.outcomes if not o.success and o.expectation == expectation and o.column == column]


# --- the suite --------------------------------------------------------------------------------


def test_suite_is_gx_json_with_a_severity_on_every_expectation(suite, spec):
    import great_expectations as gx

    assert os.environ["GX_ANALYTICS_ENABLED"] == "False"
    gx.get_context(mode="ephemeral")
    loaded = gx.ExpectationSuite(**suite)  # GX reads its own form back, dropping nothing
    assert len(loaded.expectations) == len(suite["expectations"])
    severities = {(e["type"], e["meta"]["ctpipe"]["severity"], e["severity"]) for e in suite["expectations"]}
    assert ("expect_column_to_exist", "blocking", "critical") in severities
    assert ("expect_column_values_to_be_between", "warning", "warning") in severities
    assert {(ours, theirs) for _, ours, theirs in severities} == {("blocking", "critical"), ("warning", "warning")}
    exists = {e["kwargs"]["column"] for e in suite["expectations"] if e["type"] == "expect_column_to_exist"}
    assert exists == {spec.entity_column, spec.timestamp_column, spec.label_column, *spec.feature_columns}
    ranges = {e["kwargs"]["column"] for e in suite["expectations"] if e["type"] == "expect_column_values_to_be_between"}
    assert set(ranges) == set(spec.numeric_features)
    sets = {e["kwargs"]["column"]: e["kwargs"]["value_set"] for e in suite["expectations"] if "in_set" in e["type"]}
    assert sets == {
        "plan": ["basic", "premium", "standard"],
        "region": ["east", "north", "south", "west"],
        "churned": [0, 1],
    }
    assert suite["meta"]["ctpipe"]["types"]["plan"] == "string"


def test_ranges_are_widened_by_the_tolerance(windows, spec):
    tenure = windows[0].tenure_months
    for tolerance in (0.0, 0.5):
        kwargs = next(
            e["kwargs"]
            for e in infer_suite(windows[0], spec, tolerance)["expectations"]
            if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "tenure_months"
        )
        slack = tolerance * (tenure.max() - tenure.min())
        assert kwargs["min_value"] == pytest.approx(tenure.min() - slack)
        assert kwargs["max_value"] == pytest.approx(tenure.max() + slack)


def test_suite_round_trips_with_a_stable_hash(suite, windows, spec, tmp_path):
    digest = save_suite(suite, str(tmp_path / "suite.json"))
    assert digest == suite_hash(load_suite(str(tmp_path / "suite.json"))) == suite_hash(suite)
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert suite_hash(infer_suite(windows[0], spec)) == digest  # inference is deterministic
    assert suite_hash(infer_suite(windows[1], spec)) != digest


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such expectation suite file"), ("{oops", "not a JSON expectation suite"), ("[]", "not an expectation")],
)
def test_load_suite_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "suite.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        load_suite(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["payment_delays"]), r"lacks column\(s\) \['payment_delays'\] named in the dataset"),
        (lambda f: f.assign(region=None), r"column\(s\) \['region'\] are entirely null in the training data"),
        (lambda f: f.assign(tenure_months=f.tenure_months.astype(str)), "'tenure_months' .* type object .*numeric"),
        (lambda f: f.head(0), "the training data has no rows"),
    ],
    ids=["missing-column", "all-null", "numbers-as-strings", "empty"],
)
def test_infer_refuses_a_reference_that_contradicts_the_config(windows, spec, mutate, message):
    with pytest.raises(ValidationFailed, match=message):
        infer_suite(mutate(windows[0].copy()), spec)


def test_invalid_expectation_in_a_suite_is_a_config_error(windows, spec, suite, tmp_path):
    broken = json.loads(json.dumps(suite))
    broken["expectations"].append({"type": "expect_column_values_to_be_between", "kwargs": {"colum": "x"}})
    with pytest.raises(ConfigError, match="not a valid GX expectation"):
        run(windows[0], spec, broken, tmp_path)


# --- good data -------------------------------------------------------------------------------


def test_reference_passes_its_own_suite(windows, spec, suite, tmp_path):
    result = run(windows[0], spec, suite, tmp_path)
    assert result.success and not result.blocking and not result.warnings
    assert result.rows == len(windows[0]) and result.quarantined_rows == 0 and result.quarantine_path is None
    assert not (tmp_path / "q").exists()
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["success"] is True and saved["suite_hash"] == suite_hash(suite)
    assert ValidationResult.model_validate(saved) == result
    assert all(o["success"] for o in saved["outcomes"])
    # Every suite expectation ran, plus the run-time future-timestamp check.
    assert len(saved["outcomes"]) == len(suite["expectations"]) + 1
    assert "PASSED" in (tmp_path / "r.html").read_text()


def test_reference_as_csv_with_string_timestamps_passes(windows, spec, suite, tmp_path):
    result = run(windows[0], spec, suite, tmp_path, name="data.csv")
    assert result.success and not result.warnings


def test_nullable_and_string_dtypes_pass(windows, spec, suite, tmp_path):
    frame = windows[0].astype({"payment_delays": "Int64", "plan": "string", "region": "category"})
    result = run(frame, spec, suite, tmp_path)
    assert result.success and not result.warnings, [o.message for o in result.warnings]


def test_drifted_window_passes_with_warnings_only(windows, spec, suite, tmp_path):
    result = run(windows[1], spec, suite, tmp_path)
    assert result.success and not result.blocking
    assert all(o.severity == "warning" and o.message for o in result.warnings)
    assert json.loads((tmp_path / "r.json").read_text())["success"] is True


# --- blocking failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "column", "expectation", "message"),
    [
        (
            lambda f: f.drop(columns=["support_calls"]),
            "support_calls",
            "expect_column_to_exist",
            "column 'support_calls' is missing (expect_column_to_exist)",
        ),
        (
            lambda f: f.assign(tenure_months=f.tenure_months.astype(str)),
            "tenure_months",
            "expect_column_values_to_be_in_type_list",
            "column 'tenure_months' has type object, expected numeric; 600 of 600 values are not numeric",
        ),
        (
            lambda f: f.assign(plan=None),
            "plan",
            "expect_column_proportion_of_non_null_values_to_be_between",
            "column 'plan' is entirely null (600 rows)",
        ),
        (
            lambda f: pd.concat([f, f.head(3)]),
            None,
            "expect_compound_columns_to_be_unique",
            "6 rows share a ('customer_id', 'event_timestamp') key with another row",
        ),
        (
            lambda f: f.head(0),
            None,
            "expect_table_row_count_to_be_between",
            "0 rows, expected at least 1 (expect_table_row_count_to_be_between)",
        ),
    ],
    ids=["missing-column", "numbers-as-strings", "all-null", "duplicate-keys", "empty-table"],
)
def test_blocking_failures_name_the_file_column_and_expectation(
    windows, spec, suite, tmp_path, mutate, column, expectation, message
):
    with pytest.raises(ValidationFailed) as err:
        run(mutate(windows[0].copy()), spec, suite, tmp_path, docs=True)
    text = str(err.value)
    assert text.startswith("data.parquet: ") and message in text and text.endswith("; 1 blocking failure")
    # The result and the report are written before the error, for the run summary and the UI.
    saved = ValidationResult.model_validate_json((tmp_path / "r.json").read_text())
    assert not saved.success
    [blocking] = saved.blocking
    assert (blocking.expectation, blocking.column, blocking.severity) == (expectation, column, "blocking")
    assert message in blocking.message
    page = (tmp_path / "r.html").read_text()
    assert "BLOCKED" in page and expectation in page
    if column:
        assert f"column &#x27;{column}&#x27;" in page
    # GX's Data Docs page too: its overview says the run failed, ctpipe's section says why.
    docs = data_docs_sections((tmp_path / "docs.html").read_text())
    assert "Failed" in docs["Overview"] and "Succeeded" not in docs["Overview"]
    assert "BLOCKED" in docs["ctpipe"] and html.escape(blocking.message) in docs["ctpipe"]


def test_missing_columns_skip_their_expectations_and_are_all_named(windows, spec, suite, tmp_path):
    result = run(windows[0].drop(columns=["plan", "tenure_months"]), spec, suite, tmp_path, raise_on_blocking=False)
    assert not result.success
    assert [(o.column, o.expectation) for o in result.blocking] == [
        ("tenure_months", "expect_column_to_exist"),
        ("plan", "expect_column_to_exist"),
    ]
    # Nothing else about those columns ran (and so nothing crashed); the report says what was skipped.
    assert {o.column for o in result.outcomes if o.column in {"plan", "tenure_months"}} == {"plan", "tenure_months"}
    assert len([o for o in result.outcomes if o.column in {"plan", "tenure_months"}]) == 2
    assert "Skipped (" in (tmp_path / "r.html").read_text()
    with pytest.raises(ValidationFailed) as err:
        run(windows[0].drop(columns=["plan", "tenure_months"]), spec, suite, tmp_path)
    assert str(err.value) == (
        "data.parquet: column 'tenure_months' is missing (expect_column_to_exist); "
        "column 'plan' is missing (expect_column_to_exist); 2 blocking failures"
    )


def test_wrong_type_skips_range_but_still_checks_nulls(windows, spec, suite, tmp_path):
    frame = windows[0].assign(tenure_months=windows[0].tenure_months.astype(str))
    frame.loc[:9, "tenure_months"] = None
    result = run(frame, spec, suite, tmp_path, raise_on_blocking=False)
    assert failed(result, "expect_column_values_to_be_in_type_list", "tenure_months")
    assert failed(result, "expect_column_values_to_not_be_null", "tenure_months")[0].unexpected_count == 10
    assert not [o for o in result.outcomes if (o.column, o.expectation) == ("tenure_months", BETWEEN)]


def test_unparseable_csv_timestamp_is_a_wrong_type_naming_an_example(windows, spec, suite, tmp_path):
    frame = windows[0].astype({"event_timestamp": str})
    frame.loc[7, "event_timestamp"] = "yesterday-ish"
    with pytest.raises(
        ValidationFailed, match=r"column 'event_timestamp' has type object, expected datetime; .*'yesterday-ish'"
    ):
        run(frame, spec, suite, tmp_path, name="data.csv")


# --- warnings and quarantine ------------------------------------------------------------------


def test_warnings_are_recorded_and_rows_quarantined(windows, spec, suite, tmp_path):
    frame = windows[0].copy()
    frame.loc[0, "tenure_months"] = 10_000.0
    frame.loc[1, "plan"] = "platinum"
    frame.loc[2, "event_timestamp"] = pd.Timestamp("2099-01-01", tz="UTC")
    frame.loc[0, "region"] = "moon"  # a second reason on row 0
    result = run(frame, spec, suite, tmp_path)
    assert result.success and not result.blocking
    [tenure] = failed(result, "expect_column_values_to_be_between", "tenure_months")
    assert tenure.severity == "warning" and tenure.unexpected_count == 1 and tenure.sample == [10_000.0]
    assert "column 'tenure_months' has 1 values (0.17%) outside [" in tenure.message
    assert "max 10000.0" in tenure.message
    [plan] = failed(result, "expect_column_values_to_be_in_set", "plan")
    assert plan.sample == ["platinum"] and "unseen categories ['platinum']" in plan.message
    [future] = failed(result, "expect_column_values_to_be_between", "event_timestamp")
    assert "1 timestamps after the time of validation" in future.message
    assert future.sample == ["2099-01-01T00:00:00+00:00"]

    quarantined = pd.read_parquet(tmp_path / "q")
    assert len(quarantined) == result.quarantined_rows == 3
    assert result.quarantine_path == str(tmp_path / "q")
    assert quarantined.customer_id.tolist() == frame.loc[:2, "customer_id"].tolist()
    assert quarantined.columns.tolist() == [*frame.columns, QUARANTINE_REASON]
    reasons = quarantined[QUARANTINE_REASON].tolist()
    assert reasons[0] == (
        "tenure_months: expect_column_values_to_be_between; region: expect_column_values_to_be_in_set"
    )
    assert reasons[1] == "plan: expect_column_values_to_be_in_set"
    assert reasons[2] == "event_timestamp: expect_column_values_to_be_between"

    page = (tmp_path / "r.html").read_text()
    assert "PASSED WITH 4 WARNINGS" in page and "Warnings (4)" in page
    assert "platinum" in page and "tenure_months" in page and "Quarantine" in page


def test_data_docs_page_is_gx_rendering_showing_every_warning(windows, spec, suite, tmp_path):
    frame = windows[0].copy()
    frame.loc[0, "tenure_months"] = 10_000.0  # out of range
    frame.loc[1, "region"] = "<i>mars</i>"  # unseen category, with markup the page must escape
    frame.loc[:299, "satisfaction_score"] = np.nan  # null rate up (none in training)
    result = run(frame, spec, suite, tmp_path, docs=True)
    assert result.success and len(result.warnings) == 3

    page = (tmp_path / "docs.html").read_text()
    assert "Data documentation compiled by Great Expectations" in page  # GX's page template
    docs = data_docs_sections(page)
    assert {"ctpipe", "Overview", "Table-Level Expectations", *spec.feature_columns} <= set(docs)
    assert "Succeeded" in docs["Overview"]
    # GX's own rendering of each failure: its failure icon, the count and the unexpected values.
    tenure, region, nulls = docs["tenure_months"], docs["region"], docs["satisfaction_score"]
    assert "1 unexpected values found" in tenure and "10000" in tenure
    assert "1 unexpected values found" in region and "&lt;i&gt;mars&lt;/i&gt;" in region
    assert "300 unexpected values found. 50% of 600 total rows" in re.sub(r"\s+", " ", nulls)
    for body in (tenure, region, nulls):
        assert "fa-times text-danger" in body
    assert "fa-times" not in docs["plan"] and "fa-check-circle" in docs["plan"]
    # ctpipe's section: the verdict and every warning with its severity and message.
    assert "PASSED WITH 3 WARNINGS" in docs["ctpipe"]
    for warning in result.warnings:
        assert html.escape(warning.message) in docs["ctpipe"]
    assert docs["ctpipe"].count(">warning<") == 3
    # One file: no markup from the data, no links into a Data Docs site that is not there.
    assert "<i>mars</i>" not in page
    assert not re.search(r'(href|src)="\.\./', page)
    assert "great-expectations-web-assets" not in page  # no request to GX when the page is opened


def test_extra_column_is_a_warning(windows, spec, suite, tmp_path):
    result = run(windows[0].assign(extra_column=1), spec, suite, tmp_path)
    assert result.success
    [warning] = result.warnings
    assert warning.expectation == "expect_table_columns_to_match_set"
    assert "extra ['extra_column']" in warning.message
    assert result.quarantined_rows == 0
    assert "extra_column" in (tmp_path / "r.html").read_text()


def test_unseen_category_is_a_warning(windows, spec, suite, tmp_path):
    frame = windows[0].copy()
    frame.loc[[3, 4, 5], "region"] = ["mars", "mars", "venus"]
    result = run(frame, spec, suite, tmp_path)
    assert result.success
    [warning] = result.warnings
    assert (warning.column, warning.unexpected_count, warning.sample) == ("region", 3, ["mars", "venus"])
    assert result.quarantined_rows == 3


def test_null_rate_up_is_a_warning(windows, spec, suite, tmp_path):
    frame = windows[0].copy()
    frame.loc[:299, "satisfaction_score"] = np.nan
    result = run(frame, spec, suite, tmp_path)
    assert result.success
    [warning] = result.warnings
    assert warning.column == "satisfaction_score" and warning.unexpected_count == 300
    assert "has 300 nulls (50.00%), training allowed at most 0.00%" in warning.message
    assert result.quarantined_rows == 300


def test_null_rate_of_the_reference_is_allowed(windows, spec, tmp_path):
    reference = windows[0].copy()
    reference.loc[::3, "satisfaction_score"] = np.nan  # a null rate of 1/3, which rounds up
    suite = infer_suite(reference, spec)
    assert run(reference, spec, suite, tmp_path).warnings == []
    more = reference.copy()
    more.loc[::2, "satisfaction_score"] = np.nan
    assert [o.column for o in run(more, spec, suite, tmp_path).warnings] == ["satisfaction_score"]


# --- unreadable input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.parquet", None, "no such file"),
        ("empty.csv", b"", "file is empty"),
        ("ragged.csv", b"customer_id,event_timestamp\n1,2026-01-05\n2,2026-01-05,oops,extra\n", "not a readable csv"),
        ("image.parquet", b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a readable parquet"),
    ],
    ids=["missing", "empty", "ragged-csv", "not-tabular"],
)
def test_unreadable_files_are_data_errors_naming_the_file(spec, suite, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        validate(str(path), spec, suite, str(tmp_path / "r.json"), str(tmp_path / "r.html"))
    assert name in str(err.value)
    assert not (tmp_path / "r.json").exists()


def test_header_only_csv_is_blocking_empty(windows, spec, suite, tmp_path):
    result = run(windows[0].head(0), spec, suite, tmp_path, name="data.csv", raise_on_blocking=False)
    assert [o.expectation for o in result.blocking] == ["expect_table_row_count_to_be_between"]


# --- settings ---------------------------------------------------------------------------------


def test_row_count_far_from_the_reference_is_a_warning(windows, spec, suite, tmp_path):
    # 600 reference rows: fewer than 60 (min_row_ratio 0.1) warns, and so would more than 6000.
    result = run(windows[0].head(50), spec, suite, tmp_path)
    assert result.success
    [warning] = [o for o in result.warnings if o.expectation == "expect_table_row_count_to_be_between"]
    assert warning.severity == "warning"
    assert "50 rows, expected between 60 and 6000 (the training snapshot had 600)" in warning.message
    assert run(windows[0].head(60), spec, suite, tmp_path).warnings == []


def test_validation_settings_come_from_the_dataset_spec(windows, spec, tmp_path):
    from components.specs import ValidationSpec

    strict = spec.model_copy(
        update={"validation": ValidationSpec(tolerance=0.0, min_rows=700, min_row_ratio=None, max_row_ratio=None)}
    )
    suite = infer_suite(windows[0], strict)
    counts = [e["kwargs"] for e in suite["expectations"] if e["type"] == "expect_table_row_count_to_be_between"]
    assert counts == [{"min_value": 700}]
    tenure = next(
        e["kwargs"] for e in suite["expectations"] if e["type"] == BETWEEN and e["kwargs"]["column"] == "tenure_months"
    )
    observed = windows[0].tenure_months
    assert (tenure["min_value"], tenure["max_value"]) == (observed.min(), observed.max())
    assert suite["meta"]["ctpipe"]["validation"]["min_rows"] == 700
    with pytest.raises(ValidationFailed, match=r"600 rows, expected at least 700"):
        run(windows[0], strict, suite, tmp_path)
    with pytest.raises(ValueError, match="min_row_ratio"):
        ValidationSpec(min_row_ratio=2, max_row_ratio=1)


# --- which suite a run uses ---------------------------------------------------------------------


def test_a_run_uses_the_champions_suite_unless_told_to_reinfer(windows, spec, suite, tracking_uri):
    import mlflow

    from components.common import tracking
    from components.common.suites import suite_for_run

    tracking.configure(tracking_uri)
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("suites", tracking_uri)) as champion_run:
        mlflow.log_dict(suite, tracking.SUITE_ARTIFACT)
    newer = windows[1]  # drifted: its own suite has other ranges
    own = infer_suite(newer, spec)
    assert suite_hash(own) != suite_hash(suite)

    kept, origin = suite_for_run(newer, spec, champion_run.info.run_id, tracking_uri)
    assert origin == "champion" and suite_hash(kept) == suite_hash(suite)
    fresh, origin = suite_for_run(newer, spec, champion_run.info.run_id, tracking_uri, reinfer=True)
    assert origin == "inferred" and fresh == own
    first, origin = suite_for_run(newer, spec, "", tracking_uri)  # no champion yet
    assert origin == "inferred" and first == own
    # Re-inferring still refuses data that contradicts the config.
    with pytest.raises(ValidationFailed, match="lacks column"):
        suite_for_run(newer.drop(columns=["plan"]), spec, champion_run.info.run_id, tracking_uri, reinfer=True)
