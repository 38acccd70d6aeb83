"""``ctpipe config --check-data``: the dataset source's columns against the configuration, before any run.

A pipeline finds a wrong column type late: a string entity column with ``feast.entity_type:
int64`` fails in fetch-features, after ingest and validate. This check reads only the
source's schema (a Parquet footer, the footers of a folder of Parquet files, or the first
rows of a CSV file; never every row) and compares it with what the ``dataset`` and ``feast``
sections declare:

- every column the configuration names is there;
- the entity column holds integers or strings, and what ``feast.entity_type`` says when it is set;
- numeric features are numbers, the timestamp column is timestamps (or strings, which ingest parses);
- the label fits ``dataset.task``: class labels (integers, booleans or strings) for
  ``binary_classification`` and ``multiclass_classification``, numbers for ``regression``. How
  many classes it has (exactly two, or at least three) needs every row, so it is left to training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from components.common import storage
from components.common.errors import DataError
from components.common.feast import ENTITY_KINDS, EntityType, entity_type_of_arrow
from components.specs import DatasetSpec, FeastSpec

if TYPE_CHECKING:
    import pyarrow as pa

    from pipelines.config import CtpipeConfig

CSV_SAMPLE_ROWS = 1000
"""Rows of a CSV source read to infer its column types (CSV has no schema)."""
_CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}
_SHOWN_COLUMNS = 20


@dataclass
class DataCheck:
    """What ``--check-data`` found."""

    source: str
    """The dataset source, redacted for messages."""
    problems: list[str] = field(default_factory=list)
    """One line per disagreement: the config key, the column, expected vs found."""
    entity_type: EntityType | None = None
    """The entity type the pipelines will apply (configured, or inferred from the entity column)."""
    entity_type_origin: str = ""
    """``feast.entity_type`` or ``the data``."""

    @property
    def ok(self) -> bool:
        """Whether the data agrees with the configuration."""
        return not self.problems


def _parquet_schema(location: str) -> pa.Schema:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with storage.open_read(location) as handle:
            return pq.read_schema(handle)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{storage.redact(location)}: not a readable Parquet file: {exc}") from exc


def _csv_schema(location: str) -> pa.Schema:
    import pandas as pd
    import pyarrow as pa

    sep = "\t" if location.lower().endswith(".tsv") else ","
    try:
        with storage.open_read(location) as handle:
            sample = pd.read_csv(handle, sep=sep, nrows=CSV_SAMPLE_ROWS)
        return pa.Schema.from_pandas(sample, preserve_index=False)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError, pa.ArrowException) as exc:
        raise DataError(f"{storage.redact(location)}: not a readable CSV file: {exc}") from exc


def source_schema(source: str) -> tuple[dict[str, pa.DataType], list[str]]:
    """The column types of a dataset source, read without reading its rows (a CSV file: a sample of rows).

    Args:
        source: A Parquet file, a folder (or prefix) of Parquet files, or a CSV file; local or ``s3://``.

    Returns:
        Column name -> Arrow type, and problems found on the way (files of a folder that disagree
        on a column's type).

    Raises:
        DataError: Nothing is at ``source``, a folder holds no Parquet file, or a file is not readable.
    """
    shown = storage.redact(source)
    if not storage.exists(source):
        raise DataError(f"{shown}: no such file or folder (dataset.source)")
    if storage.is_dir(source):
        files = [storage.join(source, name) for name in storage.find(source) if name.endswith(".parquet")]
        if not files:
            raise DataError(f"{shown}: folder has no .parquet file (dataset.source)")
    else:
        files = [source]
    suffix = PurePosixPath(str(source)).suffix.lower()
    types: dict[str, pa.DataType] = {}
    first_file: dict[str, str] = {}
    problems: list[str] = []
    for file in files:
        schema = _csv_schema(file) if suffix in _CSV_SUFFIXES else _parquet_schema(file)
        for item in schema:
            if item.name not in types:
                types[item.name], first_file[item.name] = item.type, file
            elif types[item.name] != item.type:
                problems.append(
                    f"dataset.source: column {item.name!r} has type {types[item.name]} in "
                    f"{storage.redact(first_file[item.name])} but {item.type} in {storage.redact(file)}; "
                    "expected one type in every file"
                )
    return types, problems


def _is_number(kind: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind) or pa.types.is_null(kind)
    )


def _is_text(kind: pa.DataType) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def check_schema(types: dict[str, pa.DataType], dataset: DatasetSpec, feast: FeastSpec, check: DataCheck) -> None:
    """Compare column types with the ``dataset`` and ``feast`` sections; add each disagreement to ``check``.

    Args:
        types: Column name -> Arrow type, as :func:`source_schema` gives.
        dataset: The dataset section.
        feast: The feast section (its ``entity_type``).
        check: Where the problems and the entity type go.
    """
    import pyarrow as pa

    found = sorted(types)
    shown_found = ", ".join(found[:_SHOWN_COLUMNS]) + (
        f", ... ({len(found)} columns)" if len(found) > _SHOWN_COLUMNS else ""
    )
    named = [
        ("dataset.entity_column", dataset.entity_column),
        ("dataset.timestamp_column", dataset.timestamp_column),
        ("dataset.label_column", dataset.label_column),
        *(("dataset.numeric_features", c) for c in dataset.numeric_features),
        *(("dataset.categorical_features", c) for c in dataset.categorical_features),
    ]
    for key, column in named:
        if column not in types:
            check.problems.append(
                f"{key}: column {column!r} is not in {check.source}; expected it, found columns [{shown_found}]"
            )

    entity = types.get(dataset.entity_column)
    if entity is not None:
        inferred = entity_type_of_arrow(entity)
        if feast.entity_type is not None:
            check.entity_type, check.entity_type_origin = feast.entity_type, "feast.entity_type"
            if inferred != feast.entity_type:
                expected = "integers" if feast.entity_type == "int64" else "strings"
                check.problems.append(
                    f"feast.entity_type: is {feast.entity_type!r} but column {dataset.entity_column!r} "
                    f"(dataset.entity_column) has type {entity}; expected {expected}"
                    + (f", or leave feast.entity_type out to use {inferred!r}" if inferred else "")
                )
        elif inferred is None:
            check.problems.append(
                f"dataset.entity_column: column {dataset.entity_column!r} has type {entity}; expected {ENTITY_KINDS}"
            )
        else:
            check.entity_type, check.entity_type_origin = inferred, "the data"

    stamps = types.get(dataset.timestamp_column)
    if stamps is not None and not (pa.types.is_timestamp(stamps) or _is_text(stamps)):
        check.problems.append(
            f"dataset.timestamp_column: column {dataset.timestamp_column!r} has type {stamps}; expected timestamps "
            "(or ISO-8601 strings, which ingest parses)"
        )

    for column in dataset.numeric_features:
        kind = types.get(column)
        if kind is not None and not (_is_number(kind) or pa.types.is_boolean(kind)):
            check.problems.append(
                f"dataset.numeric_features: column {column!r} has type {kind}; expected numbers (integers or floats)"
            )

    label = types.get(dataset.label_column)
    if label is None:
        return
    if dataset.is_classification:
        plain = label.value_type if pa.types.is_dictionary(label) else label
        if not (pa.types.is_integer(plain) or pa.types.is_boolean(plain) or _is_text(plain)):
            check.problems.append(
                f"dataset.label_column: column {dataset.label_column!r} has type {label}; expected class labels "
                f"(integers, booleans or strings) for dataset.task {dataset.task!r}"
            )
    elif not (_is_number(label) or pa.types.is_boolean(label)):
        check.problems.append(
            f"dataset.label_column: column {dataset.label_column!r} has type {label}; expected numbers "
            f"for dataset.task {dataset.task!r}"
        )


def check_data(config: CtpipeConfig) -> DataCheck:
    """Read the schema of ``dataset.source`` and compare it with the configuration.

    Args:
        config: The loaded configuration.

    Returns:
        The problems (empty when the data agrees) and the entity type the pipelines will apply.

    Raises:
        DataError: The source is missing or not a readable table.
        StorageError: The store refused the request or cannot be reached.
    """
    source = config.dataset.source
    types, problems = source_schema(source)
    check = DataCheck(source=storage.redact(source), problems=problems)
    check_schema(types, config.dataset, config.feast, check)
    return check
