"""Expectation suites: inferred from a training snapshot, hashed, stored, and looked up for a run.

:func:`infer_suite` turns a training snapshot into a GX Core 1.x expectation suite (columns,
types, nullability, ranges, category sets, row count, key uniqueness) and returns it in GX's
own JSON form (``ExpectationSuite.to_json_dict()``), so ``gx.ExpectationSuite(**suite)`` loads
it back. Each expectation carries a ctpipe severity in ``meta.ctpipe.severity`` (mirrored in
GX's own ``severity``: blocking is ``critical``). :func:`save_suite` and :func:`load_suite`
keep a suite as a JSON file, versioned by :func:`suite_hash`; :func:`suite_for_run` picks the
suite a training run validates against (the champion's, or one inferred from the run's data).
Running a suite on new data is :func:`components.validate.validate`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from components.common.errors import DataError, ValidationFailed
from components.common.io import write_json
from components.common.logs import get_logger
from components.common.timestamps import parse_timestamp_column
from components.specs import DatasetSpec

# Must be set before great_expectations is first imported, so it never sends usage statistics.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# Suites are inferred and looked up by the validate step: its logger.
logger = get_logger("validate")

Severity = Literal["blocking", "warning"]
# A "categorical" column with more distinct values than this is an identifier; a value set would only bloat the suite.
MAX_CATEGORIES = 1000

# Type names GX's expect_column_values_to_be_in_type_list accepts for each family. Python's
# "int"/"float"/"str" cover object columns, which GX checks value by value.
TYPE_FAMILIES: dict[str, list[str]] = {
    "numeric": [
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64", "int", "float",
    ],
    "string": ["str"],
    "datetime": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
    "bool": ["bool"],
}  # fmt: skip

EXIST = "expect_column_to_exist"
ROW_COUNT = "expect_table_row_count_to_be_between"
COLUMN_SET = "expect_table_columns_to_match_set"
UNIQUE_KEYS = "expect_compound_columns_to_be_unique"
TYPE_LIST = "expect_column_values_to_be_in_type_list"
NON_NULL_SHARE = "expect_column_proportion_of_non_null_values_to_be_between"
NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
# Expectations whose failing rows can be named, and so quarantined.
ROW_LEVEL = {NOT_NULL, BETWEEN, IN_SET, UNIQUE_KEYS}
# Expectations about the table rather than column values: they run even on an empty table.
TABLE_LEVEL = {EXIST, ROW_COUNT, COLUMN_SET}


def gx_context() -> Any:
    """A fresh in-memory GX context without progress bars; nothing is written to disk."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}  # type: ignore[assignment]
    return context


def _family(values: pd.Series) -> str | None:
    """The type family of a column (numeric, string, datetime, bool), or None if mixed."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _family(pd.Series(dtype.categories))
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    inferred = pd.api.types.infer_dtype(values, skipna=True)
    families = {"string": "string", "integer": "numeric", "floating": "numeric", "mixed-integer-float": "numeric"}
    return families.get(inferred, "bool" if inferred == "boolean" else None)


def _floor(value: float, digits: int = 6) -> float:
    """Round down, so a bound taken from the reference never excludes the reference itself."""
    scale = 10**digits
    return math.floor(value * scale) / scale


def infer_suite(reference: pd.DataFrame, spec: DatasetSpec, tolerance: float | None = None) -> dict[str, Any]:
    """Infer an expectation suite from a training snapshot.

    Every column the spec names gets: existence, type family, not entirely null (all
    blocking) and a null-rate bound (warning). Numeric features (and a regression label)
    get a ``[min, max]`` range widened by ``tolerance`` times the range; categorical features
    (and a classification label) get their observed value set (both warnings). The table
    gets a row count of at least one and unique (entity, timestamp) keys (blocking) and
    the spec's column set (extra columns are a warning); a row count far from the
    reference's (``spec.validation.min_row_ratio`` / ``max_row_ratio``) is a warning.

    Args:
        reference: The training snapshot.
        spec: The dataset spec; every column it names must be in ``reference``.
        tolerance: How far beyond the observed range values may go, as a share of the range;
            the observed null rate is widened by the same share. Default ``spec.validation.tolerance``.

    Returns:
        The suite as a JSON-able dict in GX's own form (``name``, ``expectations``, ``meta``, ...),
        with ``meta.ctpipe`` describing the reference and each expectation's severity in its
        ``meta.ctpipe.severity``.

    Raises:
        ValidationFailed: The reference lacks a column the config names, has no rows, has a
            spec column that is entirely null or of mixed types, or a numeric feature or the
            timestamp holds values of another type.
        ValueError: ``tolerance`` is negative.
    """
    import great_expectations as gx
    from great_expectations.expectations.metadata_types import FailureSeverity

    settings = spec.validation
    tolerance = settings.tolerance if tolerance is None else tolerance
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    columns = [spec.entity_column, spec.timestamp_column, spec.label_column, *spec.feature_columns]
    found = sorted(map(str, reference.columns))
    missing = [c for c in columns if c not in reference.columns]
    if missing:
        raise ValidationFailed(
            f"the training data lacks column(s) {missing} named in the dataset config; found columns {found}"
        )
    if reference.empty:
        raise ValidationFailed("the training data has no rows; cannot infer an expectation suite from it")
    reference, _ = parse_timestamp_column(reference, spec.timestamp_column)
    all_null = [c for c in columns if reference[c].isna().all()]
    if all_null:
        raise ValidationFailed(f"column(s) {all_null} are entirely null in the training data ({len(reference)} rows)")
    families: dict[str, str] = {}
    for column in columns:
        family = _family(reference[column])
        if family is None:
            kind = pd.api.types.infer_dtype(reference[column], skipna=True)
            raise ValidationFailed(
                f"column {column!r} of the training data holds values of mixed or unsupported types ({kind})"
            )
        families[column] = family
    expected_family = {c: "numeric" for c in spec.numeric_features} | {spec.timestamp_column: "datetime"}
    for column, family in expected_family.items():
        if families[column] != family:
            raise ValidationFailed(
                f"column {column!r} of the training data has type {reference[column].dtype} ({families[column]}), "
                f"expected {family}"
            )

    gx_context()  # GX suites need an active context, even ones that are never saved.
    suite = gx.ExpectationSuite(name=f"ctpipe-{spec.label_column}")

    def add(expectation: Any, severity: Severity) -> None:
        expectation.meta = {"ctpipe": {"severity": severity}}
        expectation.severity = FailureSeverity.CRITICAL if severity == "blocking" else FailureSeverity.WARNING
        suite.add_expectation(expectation)

    rows = len(reference)
    add(gx.expectations.ExpectTableRowCountToBeBetween(min_value=settings.min_rows), "blocking")
    low_rows = None if settings.min_row_ratio is None else math.ceil(rows * settings.min_row_ratio)
    high_rows = None if settings.max_row_ratio is None else math.floor(rows * settings.max_row_ratio)
    if low_rows is not None or high_rows is not None:
        # Not the same check as the blocking one above: a window much smaller or larger than the
        # training snapshot is suspicious (a partial export, a duplicated one), not unusable.
        add(gx.expectations.ExpectTableRowCountToBeBetween(min_value=low_rows, max_value=high_rows), "warning")
    for column in columns:
        add(gx.expectations.ExpectColumnToExist(column=column), "blocking")
    add(gx.expectations.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True), "warning")
    add(gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=spec.key_columns), "blocking")
    for column in columns:
        types = TYPE_FAMILIES[families[column]]
        add(gx.expectations.ExpectColumnValuesToBeInTypeList(column=column, type_list=types), "blocking")
        # Blocking only when nothing is there at all; a higher null rate is the warning below.
        non_null = gx.expectations.ExpectColumnProportionOfNonNullValuesToBeBetween(
            column=column, min_value=0, strict_min=True
        )
        add(non_null, "blocking")
        null_rate = min(1.0, float(reference[column].isna().mean()) * (1.0 + tolerance))
        add(gx.expectations.ExpectColumnValuesToNotBeNull(column=column, mostly=_floor(1.0 - null_rate)), "warning")

    is_classifier = spec.is_classification
    ranged = [*spec.numeric_features, *([] if is_classifier else [spec.label_column])]
    for column in ranged:
        values = pd.to_numeric(reference[column], errors="coerce")
        low, high = float(values.min()), float(values.max())
        slack = tolerance * (high - low)
        between = gx.expectations.ExpectColumnValuesToBeBetween(
            column=column, min_value=low - slack, max_value=high + slack
        )
        add(between, "warning")
    category_sizes: dict[str, int] = {}
    for column in [*spec.categorical_features, *([spec.label_column] if is_classifier else [])]:
        observed = reference[column].dropna().unique()
        category_sizes[column] = len(observed)
        if len(observed) > MAX_CATEGORIES:
            logger.warning("no value set: too many categories", extra={"column": column, "categories": len(observed)})
            continue
        value_set = sorted(pd.Series(observed).astype(object).tolist(), key=lambda v: (str(type(v)), v))
        add(gx.expectations.ExpectColumnValuesToBeInSet(column=column, value_set=value_set), "warning")

    payload: dict[str, Any] = suite.to_json_dict()
    payload["meta"]["ctpipe"] = {
        "columns": columns,
        "entity_column": spec.entity_column,
        "timestamp_column": spec.timestamp_column,
        "label_column": spec.label_column,
        "types": families,
        "categories": category_sizes,
        "reference_rows": rows,
        "tolerance": tolerance,
        "validation": settings.model_dump(mode="json"),
    }
    # Through JSON once, so the returned dict equals what load_suite reads back (and hashes the same).
    result: dict[str, Any] = json.loads(json.dumps(payload, default=str))
    return result


def suite_hash(suite: dict[str, Any]) -> str:
    """Content hash of a suite: SHA-256 of its canonical JSON, first 16 hex characters."""
    canonical = json.dumps(suite, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def save_suite(suite: dict[str, Any], path: str) -> str:
    """Write a suite as JSON, atomically.

    Args:
        suite: A suite from :func:`infer_suite`.
        path: The JSON file to write.

    Returns:
        The suite's content hash (:func:`suite_hash`).
    """
    write_json(path, suite)
    return suite_hash(suite)


def load_suite(path: str) -> dict[str, Any]:
    """Read a suite written by :func:`save_suite`.

    Raises:
        DataError: The file is missing, not JSON, or has no ``expectations`` list.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: no such expectation suite file")
    try:
        suite = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON expectation suite: {exc}") from exc
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise DataError(f"{path}: not an expectation suite; expected a JSON object with an 'expectations' list")
    return suite


SuiteOrigin = Literal["champion", "inferred"]


def suite_for_run(
    snapshot: pd.DataFrame,
    spec: DatasetSpec,
    champion_run_id: str,
    tracking_uri: str,
    reinfer: bool = False,
) -> tuple[dict[str, Any], SuiteOrigin]:
    """The suite a training run validates its snapshot against, and where it came from.

    The champion's suite (logged with it at ``tracking.SUITE_ARTIFACT``), so new data is held
    to what the model in production was trained on. A suite is inferred from ``snapshot``
    instead when there is no champion yet, or on purpose with ``reinfer`` (the data changed
    intentionally, e.g. a new category or a wider range): the model trained on this run is
    then logged with the new suite, which becomes the reference once it is promoted.

    Args:
        snapshot: The run's training snapshot.
        spec: The dataset spec.
        champion_run_id: The champion's MLflow run id; empty if there is no champion.
        tracking_uri: MLflow tracking URI.
        reinfer: Infer from ``snapshot`` even if there is a champion.

    Returns:
        The suite and ``"champion"`` or ``"inferred"``.

    Raises:
        ValidationFailed: A suite must be inferred and ``snapshot`` contradicts the config
            (see :func:`infer_suite`).
        DataError: The champion's suite file is missing or not a suite.
    """
    if champion_run_id and not reinfer:
        import tempfile

        from components.common import tracking

        with tempfile.TemporaryDirectory(prefix="ctpipe-suite-") as folder:
            local = tracking.download_run_artifact(champion_run_id, tracking.SUITE_ARTIFACT, folder, tracking_uri)
            return load_suite(str(local)), "champion"
    if champion_run_id:
        logger.info("re-inferring the suite on purpose", extra={"champion_run_id": champion_run_id})
    return infer_suite(snapshot, spec), "inferred"
