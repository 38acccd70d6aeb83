"""Validate: a Great Expectations suite inferred from training data, applied to new data.

The suite is inferred from a training snapshot, stored and looked up by
:mod:`components.common.suites`. ``validate`` runs it on new data with an ephemeral GX
context. Each expectation carries a ctpipe severity in ``meta.ctpipe.severity`` (mirrored in
GX's own ``severity``: blocking is ``critical``):

- *blocking* (missing column, wrong type, all nulls, empty data, duplicate keys) stops the
  pipeline before training, with a message naming the file, column, expectation and counts;
- *warning* (out-of-range values, unseen categories, more nulls, extra columns, future
  timestamps) is recorded and shown, and the rows that broke a row-level expectation are
  copied to a quarantine file with the reason, never silently dropped.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from components.common import report
from components.common.data_docs import render_validation_page
from components.common.errors import ConfigError, ValidationFailed
from components.common.io import write_json, write_parquet, write_text
from components.common.logs import get_logger
from components.common.storage import read_table
from components.common.suites import (
    BETWEEN,
    COLUMN_SET,
    EXIST,
    IN_SET,
    NON_NULL_SHARE,
    NOT_NULL,
    ROW_COUNT,
    ROW_LEVEL,
    TABLE_LEVEL,
    TYPE_LIST,
    UNIQUE_KEYS,
    Severity,
    gx_context,
    suite_hash,
)
from components.common.timestamps import parse_timestamp_column
from components.specs import DatasetSpec

logger = get_logger("validate")

QUARANTINE_REASON = "_ctpipe_reason"
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


# ---------------------------------------------------------------------------------------------
# Running a suite
# ---------------------------------------------------------------------------------------------


def _severity(item: dict[str, Any]) -> Severity:
    """A ctpipe severity from the expectation's meta, else from GX's own (critical = blocking)."""
    meta = item.get("meta") or {}
    value = (meta.get("ctpipe") or {}).get("severity") or meta.get("ctpipe_severity")
    if value in ("blocking", "warning"):
        return "blocking" if value == "blocking" else "warning"
    return "blocking" if item.get("severity", "critical") == "critical" else "warning"


def targets_of(item: dict[str, Any]) -> set[str]:
    """The columns an expectation (GX JSON form) reads."""
    kwargs = item.get("kwargs") or {}
    return {str(c) for c in [kwargs.get("column"), *(kwargs.get("column_list") or [])] if c is not None}


def _gx_view(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as GX's pandas type checks understand it (they do not know pandas extension dtypes).

    Timestamps become naive UTC, nullable numbers become numpy numbers (float where there are
    nulls), strings and categories become object columns. Values are unchanged.
    """
    view = frame.copy(deep=False)
    view.columns = [str(c) for c in view.columns]
    for name in view.columns:
        column = view[name]
        dtype = column.dtype
        if isinstance(dtype, pd.DatetimeTZDtype):
            view[name] = column.dt.tz_convert("UTC").dt.tz_localize(None)
        elif isinstance(dtype, np.dtype):
            continue
        elif pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            numpy_dtype = getattr(dtype, "numpy_dtype", np.dtype("float64"))
            view[name] = column.to_numpy(dtype="float64" if column.hasnans else numpy_dtype, na_value=np.nan)
        else:
            view[name] = column.astype(object).where(column.notna(), None)
    return view


def _run_gx(view: pd.DataFrame, items: list[dict[str, Any]]) -> list[Any]:
    """Run expectations (GX JSON form) on a frame; results in the order of ``items``."""
    import great_expectations as gx
    from great_expectations.exceptions import GreatExpectationsError
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from great_expectations.expectations.metadata_types import FailureSeverity

    if not items:
        return []
    context = gx_context()
    asset = context.data_sources.add_pandas("ctpipe").add_dataframe_asset("data")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": view})
    suite = gx.ExpectationSuite(name="ctpipe-run")
    for index, item in enumerate(items):
        # The index in meta maps results back, and keeps GX from merging look-alike expectations.
        meta = {**(item.get("meta") or {}), "ctpipe_index": index}
        try:
            config = ExpectationConfiguration(
                type=item["type"],
                kwargs=dict(item.get("kwargs") or {}),
                meta=meta,
                severity=FailureSeverity(item.get("severity") or "critical"),
            )
            suite.add_expectation(config.to_domain_obj())
        except (GreatExpectationsError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"expectation suite: {item.get('type', '?')} {item.get('kwargs')} is not a valid GX expectation: {exc}"
            ) from exc
    # COMPLETE lists every unexpected row, for the quarantine file; its cost grows with the failures only
    # (on 1M rows, a third of them failing two checks adds about half a second).
    run = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    by_index = {int(r.expectation_config.meta["ctpipe_index"]): r for r in run.results}
    return [by_index[i] for i in range(len(items))]


def _jsonable(value: Any) -> Any:
    """A sample value as plain JSON: numbers, strings, bools, None; timestamps as ISO strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    return str(value)


def _sample(kind: str, targets: list[str], details: dict[str, Any], frame: pd.DataFrame) -> list[Any]:
    """Up to SAMPLE_SIZE unexpected values, taken from the data as read (not GX's copy of it).

    Sets and types give distinct values, most frequent first; key checks give the keys;
    null checks give nothing, since every unexpected value is a null.
    """
    if kind in (NOT_NULL, NON_NULL_SHARE):
        return []
    positions = [int(i) for i in details.get("unexpected_index_list") or [] if isinstance(i, int | np.integer)]
    if kind in (BETWEEN, UNIQUE_KEYS) and positions and set(targets) <= set(frame.columns):
        picked = frame.iloc[positions[:SAMPLE_SIZE]]
        if kind == BETWEEN:
            return [_jsonable(v) for v in picked[targets[0]].tolist()]
        return [_jsonable(row) for row in picked[targets].to_dict(orient="records")]
    values = details.get("unexpected_list")
    if values is None:
        values = details.get("partial_unexpected_list") or []
    if kind in (IN_SET, TYPE_LIST) and values:
        counts = pd.Series([_jsonable(v) for v in values], dtype=object).value_counts(sort=True)
        return list(counts.index[:SAMPLE_SIZE])
    return [_jsonable(v) for v in values[:SAMPLE_SIZE]]


def _fmt(value: Any) -> str:
    """A bound for a message: floats to 6 significant digits, anything else as is."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _describe(
    kind: str,
    column: str | None,
    kwargs: dict[str, Any],
    details: dict[str, Any],
    sample: list[Any],
    frame: pd.DataFrame,
    context: dict[str, Any],
) -> str:
    """One line on a failed expectation: column, what was expected, what was found, counts."""
    count = int(details.get("unexpected_count") or 0)
    share = float(details.get("unexpected_percent") or 0.0)
    rows = len(frame)
    where = f"column {column!r}"
    if kind == EXIST:
        return f"{where} is missing ({kind})"
    if kind == ROW_COUNT:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        found = details.get("observed_value", rows)
        if high is None:
            return f"{found} rows, expected at least {low} ({kind})"
        bound = f"at most {high}" if low is None else f"between {low} and {high}"
        reference = (context["meta"] or {}).get("reference_rows")
        return f"{found} rows, expected {bound} (the training snapshot had {reference}) ({kind})"
    if kind == UNIQUE_KEYS:
        keys = tuple(kwargs.get("column_list") or [])
        return f"{count} rows share a {keys} key with another row, e.g. {sample[:1]} ({kind})"
    if kind == TYPE_LIST:
        family = context["families"].get(column) or f"one of {kwargs.get('type_list')}"
        found = frame[column].dtype if column in frame.columns else "?"
        line = f"{where} has type {found}, expected {family}"
        if column in context["bad_timestamps"]:
            line += f"; values that are not timestamps, e.g. {context['bad_timestamps'][column]}"
        elif count:
            line += f"; {count} of {rows} values are not {family}, e.g. {sample[:3]}"
        return f"{line} ({kind})"
    if kind == NON_NULL_SHARE:
        return f"{where} is entirely null ({rows} rows) ({kind})"
    if kind == NOT_NULL:
        allowed = 100 * (1 - float(kwargs.get("mostly", 1.0)))
        return f"{where} has {count} nulls ({share:.2f}%), training allowed at most {allowed:.2f}% ({kind})"
    if kind == BETWEEN:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        values = frame[column] if column in frame.columns else pd.Series(dtype=float)
        found = f"found min {values.min()}, max {values.max()}"
        if context["runtime"] and low is None:
            return f"{where} has {count} timestamps after the time of validation ({high} UTC); {found} ({kind})"
        if low is None or high is None:
            bound = f"above {_fmt(high)}" if low is None else f"below {_fmt(low)}"
            return f"{where} has {count} values ({share:.2f}%) {bound}; {found} ({kind})"
        return f"{where} has {count} values ({share:.2f}%) outside [{_fmt(low)}, {_fmt(high)}]; {found} ({kind})"
    if kind == IN_SET:
        known = len(kwargs.get("value_set") or [])
        return f"{where} has {count} values ({share:.2f}%) in unseen categories {sample}, training had {known} ({kind})"
    if kind == COLUMN_SET:
        observed, expected = set(details.get("observed_value") or []), set(kwargs.get("column_set") or [])
        line = f"columns not in the dataset config: extra {sorted(observed - expected)}"
        if expected - observed:
            line += f", missing {sorted(expected - observed)}"
        return f"{line} ({kind})"
    return f"{where if column else 'table'} failed {kind} ({count} unexpected of {rows})"


def validate(
    data_path: str,
    spec: DatasetSpec,
    suite: dict[str, Any],
    result_path: str,
    report_path: str,
    quarantine_path: str | None = None,
    raise_on_blocking: bool = True,
    source_name: str | None = None,
    data_docs_path: str | None = None,
) -> ValidationResult:
    """Validate a dataset against a suite; write the result, HTML reports and quarantined rows.

    Expectations on a missing column are skipped (its ``expect_column_to_exist`` fails), and
    so are range and set checks on a column of the wrong type; the report lists what was
    skipped. Two checks are added at run time and are not part of the suite: existence of
    spec columns the suite does not cover, and no timestamps after the time of validation.

    Args:
        data_path: The data to check (CSV or Parquet; a KFP artifact path is Parquet).
            String timestamps (a CSV) are parsed to UTC first.
        spec: The dataset spec.
        suite: A suite from :func:`infer_suite` or :func:`load_suite`.
        result_path: Where to write the result as JSON.
        report_path: Where to write the HTML report.
        quarantine_path: Where to write the rows that broke row-level expectations (Parquet),
            with a ``_ctpipe_reason`` column; written only when there are such rows.
        raise_on_blocking: Raise after writing the result and report if a blocking expectation failed.
        source_name: The name messages and the report give the data; default the file name of
            ``data_path`` (a pipeline passes the ingested source's, not the snapshot artifact's).
        data_docs_path: Where to write GX's own Data Docs page for this run (one self-contained
            HTML file, see :mod:`components.common.data_docs`), headed by ctpipe's verdict and the
            severity of every failure.

    Returns:
        The result: every expectation's outcome, the blocking failures and the warnings.

    Raises:
        ValidationFailed: A blocking expectation failed and ``raise_on_blocking`` is set.
        DataError: The file does not exist, is empty or is not a table.
        ConfigError: The suite holds an expectation GX does not accept.
    """
    source = source_name or Path(data_path).name
    frame = read_table(data_path).reset_index(drop=True)
    frame, bad_stamps = parse_timestamp_column(frame, spec.timestamp_column)
    view = _gx_view(frame)
    columns = set(view.columns)
    rows = len(view)

    items = [dict(item) for item in suite.get("expectations") or []]
    covered = {(item.get("kwargs") or {}).get("column") for item in items if item.get("type") == EXIST}
    spec_columns = [spec.entity_column, spec.timestamp_column, spec.label_column, *spec.feature_columns]
    for name in spec_columns:
        if name not in covered:
            items.append({"type": EXIST, "kwargs": {"column": name}, "meta": {"ctpipe": {"severity": "blocking"}}})
    if spec.timestamp_column in columns and pd.api.types.is_datetime64_any_dtype(view[spec.timestamp_column]):
        # Checked against the time of validation, so it is not part of the saved suite.
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
        items.append(
            {
                "type": BETWEEN,
                "kwargs": {"column": spec.timestamp_column, "max_value": now},
                "meta": {"ctpipe": {"severity": "warning", "runtime": True}},
                "severity": "warning",
            }
        )

    skipped: list[tuple[dict[str, Any], str]] = []
    runnable: list[int] = []
    for index, item in enumerate(items):
        absent = targets_of(item) - columns
        if item.get("type") != EXIST and absent:
            skipped.append((item, f"column {sorted(absent)[0]!r} is missing"))
        elif rows == 0 and item.get("type") not in TABLE_LEVEL:
            skipped.append((item, "no rows"))
        else:
            runnable.append(index)

    # Types first: a range or set check on a column of the wrong type means nothing (and makes GX raise).
    typed = [i for i in runnable if items[i].get("type") == TYPE_LIST]
    results: dict[int, Any] = dict(zip(typed, _run_gx(view, [items[i] for i in typed]), strict=True))
    wrong_type = {str(items[i]["kwargs"]["column"]) for i in typed if not results[i].success}
    rest = []
    for index in runnable:
        if index in results:
            continue
        item = items[index]
        value_check = item.get("type") in (BETWEEN, IN_SET)
        if value_check and targets_of(item) & wrong_type:
            skipped.append((item, f"column {sorted(targets_of(item) & wrong_type)[0]!r} has the wrong type"))
        else:
            rest.append(index)
    results.update(zip(rest, _run_gx(view, [items[i] for i in rest]), strict=True))

    context = {
        "meta": (suite.get("meta") or {}).get("ctpipe") or {},
        "families": dict((suite.get("meta") or {}).get("ctpipe", {}).get("types") or {}),
        "bad_timestamps": {spec.timestamp_column: bad_stamps} if bad_stamps else {},
    }
    outcomes: list[ExpectationOutcome] = []
    all_null: set[str] = set()
    reasons = np.full(rows, "", dtype=object)
    for index in sorted(results):
        result, item = results[index], items[index]
        kind = str(item["type"])
        kwargs = dict(item.get("kwargs") or {})
        column: str | None = kwargs.get("column")
        severity = _severity(item)
        details = dict(result.result or {})
        key = [str(c) for c in ([column] if column is not None else kwargs.get("column_list") or [])]
        sample = [] if result.success else _sample(kind, key, details, frame)
        exception = result.exception_info if isinstance(result.exception_info, dict) else {}
        if exception.get("raised_exception"):
            first_line = next(iter(str(exception.get("exception_message") or "").splitlines()), "unknown error")
            message = f"{'column ' + repr(column) if column else 'table'}: GX could not evaluate {kind}: {first_line}"
            logger.warning("expectation raised", extra={"expectation": kind, "column": column, "error": first_line})
        elif result.success:
            message = f"{'column ' + repr(column) if column else 'table'}: {kind} passed"
        else:
            runtime = bool(((item.get("meta") or {}).get("ctpipe") or {}).get("runtime"))
            message = _describe(kind, column, kwargs, details, sample, frame, {**context, "runtime": runtime})
        if kind == NON_NULL_SHARE and not result.success and column:
            all_null.add(str(column))
        outcomes.append(
            ExpectationOutcome(
                expectation=kind,
                column=str(column) if column is not None else None,
                success=bool(result.success),
                severity=severity,
                unexpected_count=int(details.get("unexpected_count") or 0),
                unexpected_percent=float(details.get("unexpected_percent") or 0.0),
                sample=sample,
                message=f"{source}: {message}",
            )
        )
        # Row-level failures name their rows; an all-null column would only copy every row.
        if not result.success and kind in ROW_LEVEL and not targets_of(item) & all_null:
            positions = [int(i) for i in details.get("unexpected_index_list") or [] if isinstance(i, int | np.integer)]
            if positions:
                label = f"{column}: {kind}" if column else f"{tuple(kwargs.get('column_list') or [])}: {kind}"
                reasons[positions] = np.where(reasons[positions] == "", label, reasons[positions] + "; " + label)

    quarantined = 0
    flagged = np.flatnonzero(reasons != "")
    if quarantine_path and len(flagged):
        bad_rows = frame.iloc[flagged].copy()
        bad_rows[QUARANTINE_REASON] = reasons[flagged]
        write_parquet(quarantine_path, bad_rows)
        quarantined = len(bad_rows)
    outcome = ValidationResult(
        success=not any(not o.success and o.severity == "blocking" for o in outcomes),
        rows=rows,
        suite_hash=suite_hash(suite),
        outcomes=outcomes,
        quarantine_path=quarantine_path if quarantined else None,
        quarantined_rows=quarantined,
    )
    # Result and report first: the run summary and the KFP UI need them even when this step fails.
    write_json(result_path, outcome.model_dump(mode="json"))
    write_text(report_path, _render(outcome, source, skipped))
    if data_docs_path:
        order = sorted(results)
        page = render_validation_page(
            [results[i] for i in order],
            [_severity(items[i]) for i in order],
            str(suite.get("name") or "ctpipe"),
            source,
            _docs_summary(outcome, skipped),
        )
        write_text(data_docs_path, page)
    logger.info(
        "validated",
        extra={
            "source": source,
            "rows": rows,
            "success": outcome.success,
            "blocking": len(outcome.blocking),
            "warnings": len(outcome.warnings),
            "skipped": len(skipped),
            "quarantined": quarantined,
            "suite_hash": outcome.suite_hash,
        },
    )
    if raise_on_blocking and not outcome.success:
        failures = outcome.blocking
        lines = "; ".join(o.message.removeprefix(f"{source}: ") for o in failures)
        plural = "" if len(failures) == 1 else "s"
        raise ValidationFailed(f"{source}: {lines}; {len(failures)} blocking failure{plural}")
    return outcome


def _status(result: ValidationResult) -> str:
    """The run's verdict in words."""
    if not result.success:
        return "BLOCKED"
    return f"PASSED WITH {len(result.warnings)} WARNINGS" if result.warnings else "PASSED"


def _docs_summary(
    result: ValidationResult, skipped: list[tuple[dict[str, Any], str]]
) -> list[tuple[str, list[list[str]]]]:
    """The ctpipe part of the Data Docs page: the verdict, the failures with messages, skips, quarantine."""
    verdict = [
        ["Status", "Rows", "Blocking", "Warnings", "Quarantined rows", "Suite hash"],
        [
            _status(result),
            str(result.rows),
            str(len(result.blocking)),
            str(len(result.warnings)),
            str(result.quarantined_rows),
            result.suite_hash,
        ],
    ]
    failures = [["Severity", "Column", "Expectation", "Unexpected", "Message"]] + [
        [o.severity, o.column or "", o.expectation, str(o.unexpected_count), o.message]
        for o in [*result.blocking, *result.warnings]
    ]
    skips = [["Expectation", "Column", "Why skipped"]] + [
        [str(item.get("type")), ", ".join(sorted(targets_of(item))), why] for item, why in skipped
    ]
    quarantine = [["Rows", "File (with the reason in _ctpipe_reason)"]]
    if result.quarantined_rows:
        quarantine.append([str(result.quarantined_rows), result.quarantine_path or ""])
    return [
        ("Verdict", verdict),
        (f"Failures ({len(failures) - 1})", failures),
        (f"Skipped ({len(skipped)})", skips),
        ("Quarantine", quarantine),
    ]


def _render(result: ValidationResult, source: str, skipped: list[tuple[dict[str, Any], str]]) -> str:
    """A self-contained HTML page: status, blocking failures, warnings, skipped checks, every expectation."""
    status = report.badge(_status(result), "bad" if not result.success else ("warn" if result.warnings else "ok"))

    def rows_of(outcomes: list[ExpectationOutcome]) -> list[dict[str, Any]]:
        rows = []
        for o in outcomes:
            state = "ok" if o.success else ("bad" if o.severity == "blocking" else "warn")
            rows.append(
                {
                    "status": report.badge("pass" if o.success else "FAIL", state),
                    "severity": report.badge(o.severity, "bad" if o.severity == "blocking" else "warn"),
                    "expectation": html.escape(o.expectation),
                    "column": f"<b>{html.escape(o.column or '')}</b>",
                    "unexpected": o.unexpected_count,
                    "unexpected %": round(o.unexpected_percent, 3),
                    "sample": html.escape(", ".join(map(str, o.sample))),
                    "message": html.escape(o.message),
                }
            )
        return rows

    sections: list[tuple[str, str]] = []
    if result.blocking:
        sections.append((f"Blocking failures ({len(result.blocking)})", report.table(rows_of(result.blocking), False)))
    if result.warnings:
        sections.append((f"Warnings ({len(result.warnings)})", report.table(rows_of(result.warnings), False)))
    if result.quarantined_rows:
        sections.append(
            (
                "Quarantine",
                f"<p>{result.quarantined_rows} rows that broke row-level expectations were copied, with the reason "
                f"in <code>_ctpipe_reason</code>, to <code>{html.escape(result.quarantine_path or '')}</code>.</p>",
            )
        )
    if skipped:
        listed = [
            {
                "expectation": str(item.get("type")),
                "column": ", ".join(sorted(targets_of(item))),
                "why skipped": why,
            }
            for item, why in skipped
        ]
        sections.append((f"Skipped ({len(skipped)})", report.table(listed)))
    ordered = sorted(result.outcomes, key=lambda o: (o.success, o.severity != "blocking"))
    sections.append((f"Every expectation ({len(result.outcomes)})", report.table(rows_of(ordered), False)))
    summary = (
        f"{status} &nbsp; <b>{html.escape(source)}</b>: {result.rows} rows, "
        f"{report.badge(f'{len(result.blocking)} blocking', 'bad' if result.blocking else 'ok')}, "
        f"{report.badge(f'{len(result.warnings)} warnings', 'warn' if result.warnings else 'ok')}, "
        f"{result.quarantined_rows} rows quarantined, {len(skipped)} checks skipped; suite {result.suite_hash}"
    )
    return report.page(f"Data validation: {source}", sections, summary)
