"""Validate: a Great Expectations suite inferred from training data, applied to new data.

``infer_suite`` turns a training snapshot into a GX Core 1.x expectation suite (columns,
types, nullability, ranges, category sets, row count, key uniqueness); ``validate`` runs
it on new data. Each expectation carries a ctpipe severity:

- *blocking* (missing column, wrong type, all nulls, empty data, duplicate keys) stops the
  pipeline before training, with a message naming the column, expectation and counts;
- *warning* (out-of-range values, unseen categories, more nulls, extra columns, future
  timestamps) is recorded and shown, and the rows that broke it go to a quarantine file.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

from components.common import report
from components.common.errors import ValidationFailed
from components.common.io import read_table, write_json, write_parquet, write_text
from components.common.logs import get_logger
from components.specs import DatasetSpec

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logger = get_logger("validate")

Severity = Literal["blocking", "warning"]
SEVERITY_KEY = "ctpipe_severity"
QUARANTINE_REASON = "_ctpipe_reason"
NUMERIC_TYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "Int8", "Int16", "Int32", "Int64", "Float32", "Float64",
]  # fmt: skip
STRING_TYPES = ["object", "str", "string", "category"]
# Row-level expectations: their failing rows can be quarantined.
ROW_LEVEL = {
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_not_be_null",
}
SAMPLE_SIZE = 10


class ExpectationOutcome(BaseModel):
    """The result of one expectation, with a readable message."""

    expectation: str
    column: str | None
    success: bool
    severity: Severity
    unexpected_count: int = 0
    unexpected_percent: float = 0.0
    sample: list[Any] = []
    message: str


class ValidationResult(BaseModel):
    """The result of validating one dataset against a suite."""

    success: bool
    rows: int
    suite_hash: str
    outcomes: list[ExpectationOutcome]
    quarantine_path: str | None = None
    quarantined_rows: int = 0

    @property
    def blocking(self) -> list[ExpectationOutcome]:
        """Failed blocking expectations."""
        return [o for o in self.outcomes if not o.success and o.severity == "blocking"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        """Failed warning expectations."""
        return [o for o in self.outcomes if not o.success and o.severity == "warning"]


def _expectation(kind: str, severity: Severity, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {SEVERITY_KEY: severity}}


def infer_suite(reference: pd.DataFrame, spec: DatasetSpec, tolerance: float = 0.1) -> dict[str, Any]:
    """Infer an expectation suite from a training snapshot.

    Args:
        reference: The training snapshot.
        spec: The dataset spec; every column it names must be in ``reference``.
        tolerance: How far beyond the observed range numeric values may go, as a share of the range.

    Returns:
        The suite as a JSON-able dict (GX's own suite form: name, expectations, meta).

    Raises:
        ValidationFailed: The reference lacks a column the config names.
    """
    expected = [spec.entity_column, spec.timestamp_column, *spec.feature_columns, spec.label_column]
    missing = [c for c in expected if c not in reference.columns]
    if missing:
        raise ValidationFailed(
            f"the training data lacks column(s) {missing} named in the dataset config; "
            f"found columns {sorted(map(str, reference.columns))}"
        )
    rows = len(reference)
    expectations = [_expectation("expect_table_row_count_to_be_between", "blocking", min_value=1)]
    expectations += [_expectation("expect_column_to_exist", "blocking", column=c) for c in expected]
    expectations.append(
        _expectation("expect_table_columns_to_match_set", "warning", column_set=expected, exact_match=True)
    )
    expectations.append(_expectation("expect_compound_columns_to_be_unique", "blocking", column_list=spec.key_columns))
    for column in [spec.entity_column, spec.timestamp_column, spec.label_column, *spec.feature_columns]:
        values = reference[column]
        null_rate = float(values.isna().mean()) if rows else 0.0
        # Blocking when a column is entirely null; a warning when more nulls than in training.
        expectations.append(_expectation("expect_column_values_to_not_be_null", "blocking", column=column, mostly=1e-9))
        expectations.append(
            _expectation(
                "expect_column_values_to_not_be_null", "warning", column=column, mostly=round(1.0 - null_rate, 6)
            )
        )
    for column in spec.numeric_features:
        values = pd.to_numeric(reference[column], errors="coerce")
        expectations.append(
            _expectation("expect_column_values_to_be_in_type_list", "blocking", column=column, type_list=NUMERIC_TYPES)
        )
        low, high = float(values.min()), float(values.max())
        slack = tolerance * (high - low)
        expectations.append(
            _expectation(
                "expect_column_values_to_be_between",
                "warning",
                column=column,
                min_value=low - slack,
                max_value=high + slack,
            )
        )
    for column in spec.categorical_features:
        observed = sorted(str(v) for v in reference[column].dropna().unique())
        expectations.append(
            _expectation("expect_column_values_to_be_in_type_list", "blocking", column=column, type_list=STRING_TYPES)
        )
        expectations.append(
            _expectation("expect_column_values_to_be_in_set", "warning", column=column, value_set=observed)
        )
    suite = {
        "name": f"ctpipe-{spec.entity_column}",
        "expectations": expectations,
        "meta": {"ctpipe": {"reference_rows": rows, "tolerance": tolerance, "columns": expected}},
    }
    return suite


def suite_hash(suite: dict[str, Any]) -> str:
    """Content hash of a suite (its expectations and meta), 16 hex characters."""
    canonical = json.dumps({k: suite[k] for k in ("expectations", "meta") if k in suite}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def save_suite(suite: dict[str, Any], path: str) -> str:
    """Write a suite as JSON, atomically; returns its content hash."""
    write_json(path, suite)
    return suite_hash(suite)


def load_suite(path: str) -> dict[str, Any]:
    """Read a suite written by :func:`save_suite`."""
    suite: dict[str, Any] = json.loads(Path(path).read_text())
    return suite


def _run_gx(frame: pd.DataFrame, expectations: list[dict[str, Any]]) -> list[Any]:
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
    asset = context.data_sources.add_pandas("ctpipe").add_dataframe_asset("data")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name="ctpipe")
    for item in expectations:
        # add_expectation_configuration would collapse same-type expectations on different columns.
        suite.add_expectation(ExpectationConfiguration(**item).to_domain_obj())
    outcome = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    return list(outcome.results)


def _message(
    source: str, kind: str, column: str | None, kwargs: dict[str, Any], result: dict[str, Any], rows: int
) -> str:
    count = int(result.get("unexpected_count") or 0)
    where = f"column {column!r}" if column else "table"
    if kind == "expect_column_to_exist":
        return f"{source}: column {column!r} is missing ({kind})"
    if kind == "expect_table_row_count_to_be_between":
        return f"{source}: no rows, expected at least {kwargs.get('min_value')} ({kind})"
    if kind == "expect_compound_columns_to_be_unique":
        return f"{source}: {count} rows share a {tuple(kwargs['column_list'])} key with another row ({kind})"
    if kind == "expect_column_values_to_not_be_null" and kwargs.get("mostly", 1) < 1e-6:
        return f"{source}: {where} is entirely null ({rows} rows) ({kind})"
    if kind == "expect_column_values_to_not_be_null":
        share, allowed = result.get("unexpected_percent") or 0.0, 100 * (1 - kwargs.get("mostly", 1.0))
        return f"{source}: {where} has {count} nulls ({share:.1f}%), training had {allowed:.1f}% ({kind})"
    if kind == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value", "-inf"), kwargs.get("max_value", "+inf")
        return f"{source}: {where} has {count} values outside [{low}, {high}] ({kind})"
    if kind == "expect_column_values_to_be_in_set":
        unseen = sorted({str(v) for v in result.get("partial_unexpected_list") or []})[:5]
        return f"{source}: {where} has {count} values in unseen categories {unseen} ({kind})"
    if kind == "expect_table_columns_to_match_set":
        observed, expected = set(result.get("observed_value") or []), set(kwargs["column_set"])
        return (
            f"{source}: columns differ from the dataset config: extra {sorted(observed - expected)}, "
            f"missing {sorted(expected - observed)} ({kind})"
        )
    return f"{source}: {where} failed {kind} ({count} unexpected)"


def validate(
    data_path: str,
    spec: DatasetSpec,
    suite: dict[str, Any],
    result_path: str,
    report_path: str,
    quarantine_path: str | None = None,
    raise_on_blocking: bool = True,
) -> ValidationResult:
    """Validate a dataset against a suite; write the result, an HTML report and quarantined rows.

    Args:
        data_path: The data to check (CSV or Parquet; a KFP artifact path is Parquet).
        spec: The dataset spec.
        suite: A suite from :func:`infer_suite` or :func:`load_suite`.
        result_path: Where to write the result as JSON.
        report_path: Where to write the HTML report.
        quarantine_path: Where to write rows that broke row-level expectations (Parquet).
        raise_on_blocking: Raise after writing the result and report if a blocking expectation failed.

    Returns:
        The result: every expectation's outcome, the blocking failures and the warnings.

    Raises:
        ValidationFailed: A blocking expectation failed and ``raise_on_blocking`` is set.
        DataError: The file does not exist or is not a table.
    """
    source = Path(data_path).name
    frame = read_table(data_path)
    expectations = list(suite["expectations"])
    if spec.timestamp_column in frame.columns and pd.api.types.is_datetime64_any_dtype(frame[spec.timestamp_column]):
        # Future timestamps are checked against the time of validation, so this one is not in the saved suite.
        now = pd.Timestamp(datetime.now(UTC))
        expectations.append(
            _expectation(
                "expect_column_values_to_be_between", "warning", column=spec.timestamp_column, max_value=now.isoformat()
            )
        )
    missing = {e["kwargs"]["column"] for e in expectations if e["type"] == "expect_column_to_exist"} - set(
        frame.columns
    )
    # A column of the wrong type makes its range and set checks meaningless; check types first.
    type_checks = [e for e in expectations if e["type"] == "expect_column_values_to_be_in_type_list"]
    type_results = (
        _run_gx(frame, [e for e in type_checks if e["kwargs"]["column"] not in missing]) if len(frame) else []
    )
    wrong_type = {r.expectation_config.kwargs["column"] for r in type_results if not r.success}
    skipped = missing | wrong_type
    runnable = [
        e
        for e in expectations
        if e["type"] == "expect_column_to_exist"
        or (e["kwargs"].get("column") not in skipped and not set(e["kwargs"].get("column_list", [])) & missing)
    ]
    results = _run_gx(frame, runnable)
    outcomes: list[ExpectationOutcome] = []
    bad_rows: dict[int, list[str]] = {}
    for result in results:
        config = result.expectation_config
        kind, kwargs = config.type, dict(config.kwargs)
        column = kwargs.get("column")
        severity: Severity = (config.meta or {}).get(SEVERITY_KEY, "warning")
        details = result.result or {}
        raised = isinstance(result.exception_info, dict) and result.exception_info.get("raised_exception")
        if raised and kind != "expect_column_to_exist":
            logger.warning("expectation raised", extra={"expectation": kind, "column": column})
        message = "" if result.success else _message(source, kind, column, kwargs, details, len(frame))
        sample = [
            v if isinstance(v, int | float | str | bool) else str(v)
            for v in (details.get("partial_unexpected_list") or [])
        ]
        outcomes.append(
            ExpectationOutcome(
                expectation=kind,
                column=column,
                success=bool(result.success),
                severity=severity,
                unexpected_count=int(details.get("unexpected_count") or 0),
                unexpected_percent=float(details.get("unexpected_percent") or 0.0),
                sample=sample[:SAMPLE_SIZE],
                message=message,
            )
        )
        if not result.success and severity == "warning" and kind in ROW_LEVEL:
            for index in details.get("unexpected_index_list") or []:
                bad_rows.setdefault(int(index), []).append(f"{column}: {kind}")
    for column in sorted(wrong_type):
        expected_kind = "numeric" if column in spec.numeric_features else "string"
        outcomes.append(
            ExpectationOutcome(
                expectation="expect_column_values_to_be_in_type_list",
                column=column,
                success=False,
                severity="blocking",
                message=f"{source}: column {column!r} has type {frame[column].dtype}, expected {expected_kind} "
                "(expect_column_values_to_be_in_type_list)",
            )
        )
    quarantined = 0
    if quarantine_path and bad_rows:
        rows = frame.loc[sorted(bad_rows)].copy()
        rows[QUARANTINE_REASON] = ["; ".join(bad_rows[i]) for i in sorted(bad_rows)]
        write_parquet(quarantine_path, rows)
        quarantined = len(rows)
    outcome = ValidationResult(
        success=not any(not o.success and o.severity == "blocking" for o in outcomes),
        rows=len(frame),
        suite_hash=suite_hash(suite),
        outcomes=outcomes,
        quarantine_path=quarantine_path if quarantined else None,
        quarantined_rows=quarantined,
    )
    write_json(result_path, outcome.model_dump(mode="json"))
    write_text(report_path, _render(outcome, source))
    logger.info(
        "validated",
        extra={
            "rows": outcome.rows,
            "blocking": len(outcome.blocking),
            "warnings": len(outcome.warnings),
            "quarantined": quarantined,
        },
    )
    if raise_on_blocking and not outcome.success:
        lines = "; ".join(o.message for o in outcome.blocking)
        raise ValidationFailed(f"{lines}; {len(outcome.blocking)} blocking failure(s)")
    return outcome


def _render(result: ValidationResult, source: str) -> str:
    status = report.badge("PASSED", "ok") if result.success else report.badge("BLOCKED", "bad")
    if result.success and result.warnings:
        status = report.badge("PASSED WITH WARNINGS", "warn")
    rows = []
    for outcome in sorted(result.outcomes, key=lambda o: (o.success, o.severity != "blocking")):
        state = "ok" if outcome.success else ("bad" if outcome.severity == "blocking" else "warn")
        rows.append(
            {
                "status": report.badge("pass" if outcome.success else "FAIL", state),
                "severity": outcome.severity,
                "expectation": html.escape(outcome.expectation),
                "column": html.escape(outcome.column or ""),
                "unexpected": outcome.unexpected_count,
                "unexpected %": round(outcome.unexpected_percent, 2),
                "sample": html.escape(", ".join(map(str, outcome.sample[:5]))),
                "message": html.escape(outcome.message),
            }
        )
    problems = [o.message for o in result.blocking + result.warnings]
    sections = (
        [("Problems", "<ul>" + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul>")] if problems else []
    )
    sections.append(("Every expectation", report.table(rows, escape=False)))
    summary = (
        f"{status} &nbsp; {html.escape(source)}: {result.rows} rows, {len(result.blocking)} blocking, "
        f"{len(result.warnings)} warnings, {result.quarantined_rows} rows quarantined; suite {result.suite_hash}"
    )
    return report.page("Data validation", sections, summary)
