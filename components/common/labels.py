"""Ground truth for the monitored window: joined from the window itself, or from labels that arrive later.

Two ways labels reach live performance:

- :func:`join_latest_label`: the ground truth is a table of the window (the snapshot, for the
  inference log), matched on the entity column only; the latest label per entity counts.
- :func:`join_late_labels` (``monitoring.labels_source``): labels arrive later, in their own table
  with an entity, a timestamp and a label column. Each current row of entity ``e`` at time ``t``
  takes the label of ``e`` whose timestamp is the *first at or after* ``t`` and no more than
  ``max_delay`` after it (``max_delay: 0`` is an exact-time join). So:

  - a label before the prediction never labels it (it describes an earlier outcome);
  - a label later than ``t + max_delay`` is *late*: it is not used, and the row stays unlabelled;
  - an entity with no label at or after ``t`` is *missing*: the row stays unlabelled;
  - several predictions of one entity before the same label all take that label (one outcome);
  - rows whose label value is empty are not labels (an outcome not known yet);
  - two or more rows with the same entity and timestamp are duplicates: identical ones count once;
    disagreeing ones are an error naming the file and the keys (``duplicates: error``), or the last
    one in the table's order wins (``duplicates: last``: the latest to arrive, in an append-only table).

  Unlabelled rows lower the labelled count, never the rows measured for drift; with fewer labelled
  rows than ``monitoring.min_rows`` live performance gives no verdict (:mod:`components.common.baseline`).

Times are compared in UTC; naive times are taken as UTC, as everywhere in ctpipe.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
from pydantic import BaseModel

from components.common.errors import DataError
from components.common.logs import get_logger
from components.common.storage import read_table, redact
from components.common.timestamps import parse_string_timestamps
from components.specs import DatasetSpec, LabelsSourceSpec

log = get_logger("labels")

# Duplicate keys named in an error message; the count says how many there are in all.
SHOWN_DUPLICATES = 5


class LabelJoin(BaseModel):
    """How the current rows found their labels."""

    source: str
    rows: int
    labelled: int
    missing: int
    late: int
    duplicates_collapsed: int
    conflicts_resolved: int

    def sentence(self) -> str:
        """One line for the monitoring reasons."""
        extra = []
        if self.duplicates_collapsed:
            extra.append(f"{self.duplicates_collapsed} identical duplicate label(s) counted once")
        if self.conflicts_resolved:
            extra.append(f"{self.conflicts_resolved} disagreeing duplicate(s) resolved by the last in the table")
        tail = f"; {', '.join(extra)}" if extra else ""
        return (
            f"Labels from {self.source}: {self.labelled} of {self.rows} current rows labelled "
            f"({self.late} only by labels later than max_delay, not used; {self.missing} with no label){tail}."
        )


def _utc(values: pd.Series, where: str, column: str) -> pd.Series:
    """A timestamp column as UTC datetimes; naive values are UTC.

    Raises:
        DataError: Values that are present but are not timestamps, with examples.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
    else:
        parsed, bad = parse_string_timestamps(values.astype("object"))
        if bad.any():
            raise DataError(
                f"{where}: column '{column}' holds values that are not timestamps, e.g. "
                f"{values[bad].head(3).tolist()}; expected ISO-8601 times (naive means UTC)"
            )
    # One resolution on both sides: merge_asof needs equal dtypes.
    return parsed.astype("datetime64[ns, UTC]")


def _same_entity_type(current: pd.Series, labels: pd.Series, where: str, column: str) -> pd.Series:
    """The labels' entity ids in the current rows' type, so equal ids compare equal."""
    if current.dtype == labels.dtype:
        return labels
    both_integer = pd.api.types.is_integer_dtype(current) and pd.api.types.is_integer_dtype(labels)
    try:
        if both_integer:
            return labels.astype(current.dtype)
        if pd.api.types.is_numeric_dtype(current):
            return pd.to_numeric(labels, errors="raise").astype(current.dtype)
        return labels.astype(str).astype(current.dtype)
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{where}: entity column '{column}' is {labels.dtype}, the current rows' is {current.dtype}, and its "
            f"values do not convert ({exc}); expected the same entity ids as the monitored data"
        ) from exc


def _key_text(value: object) -> str:
    """An entity id as the user wrote it: ``6``, ``'C-6'``, not ``np.int64(6)``."""
    item = getattr(value, "item", None)
    return repr(item() if callable(item) else value)


def _deduplicated(labels: pd.DataFrame, where: str, policy: str, key: str, when: str) -> tuple[pd.DataFrame, int, int]:
    """One label per (entity, timestamp): identical duplicates collapse; disagreeing ones follow ``policy``.

    ``labels`` has the columns ``_entity``, ``_label_time`` and ``_label``; ``key`` and ``when`` are
    the file's names of the first two, for the message.

    Returns:
        The labels, the identical duplicate rows dropped and the disagreeing keys resolved by ``last``.

    Raises:
        DataError: ``policy`` is ``error`` and some key has disagreeing labels, naming the file and keys.
    """
    identical = labels.duplicated(["_entity", "_label_time", "_label"], keep="last")
    collapsed = int(identical.sum())
    labels = labels[~identical]
    clashing = labels.duplicated(["_entity", "_label_time"], keep=False)
    conflicts = int(labels.loc[clashing, ["_entity", "_label_time"]].drop_duplicates().shape[0])
    if conflicts and policy == "error":
        shown = (
            labels[clashing]
            .groupby(["_entity", "_label_time"], sort=True)["_label"]
            .agg(lambda values: sorted(map(str, values)))
            .head(SHOWN_DUPLICATES)
        )
        examples = "; ".join(
            f"{key}={_key_text(entity)} {when}={moment.isoformat()}: labels {values}"
            for (entity, moment), values in shown.items()
        )
        raise DataError(
            f"{where}: {conflicts} (entity, timestamp) key(s) have disagreeing labels, e.g. {examples}; expected one "
            "label per entity and time. Fix the table, or set monitoring.labels_source.duplicates: last to take "
            "the last one in the table's order"
        )
    return labels.drop_duplicates(["_entity", "_label_time"], keep="last"), collapsed, conflicts


def read_labels(source: LabelsSourceSpec, spec: DatasetSpec) -> tuple[pd.DataFrame, int, int]:
    """The labels table as ``[entity, _label_time, label]``, validated and deduplicated.

    Returns:
        The labels, sorted by time, and the duplicate counts of :func:`_deduplicated`.

    Raises:
        DataError: The file is unreadable or lacks a column, a timestamp does not parse, or duplicates disagree.
    """
    where = redact(source.path)
    key = source.entity_column or spec.entity_column
    when = source.timestamp_column or spec.timestamp_column
    label = source.label_column or spec.label_column
    table = read_table(source.path)
    missing = [c for c in dict.fromkeys([key, when, label]) if c not in table.columns]
    if missing:
        raise DataError(
            f"{where}: labels source lacks column(s) {missing}; expected the entity, timestamp and label columns "
            f"{[key, when, label]} (monitoring.labels_source.entity_column / timestamp_column / label_column), "
            f"found {sorted(map(str, table.columns))}"
        )
    labels = pd.DataFrame(
        {"_entity": table[key], "_label_time": _utc(table[when], where, when), "_label": table[label]}
    )
    labels = labels[labels["_entity"].notna() & labels["_label_time"].notna() & labels["_label"].notna()]
    labels, collapsed, conflicts = _deduplicated(labels, where, source.duplicates, key, when)
    return labels.sort_values("_label_time", kind="stable"), collapsed, conflicts


def join_late_labels(
    current: pd.DataFrame,
    times: pd.Series,
    source: LabelsSourceSpec,
    spec: DatasetSpec,
    current_path: str = "",
    served: bool = False,
) -> tuple[pd.DataFrame, LabelJoin]:
    """``current`` with the label column taken from ``source``: for each row, the first label at or after its time.

    Args:
        current: The monitored rows; they need the dataset's entity column.
        times: Each row's time ``t`` (aligned with ``current``): its event timestamp, or when it was served.
        source: The labels source, its columns and ``max_delay`` and ``duplicates`` policy.
        spec: Dataset spec: the default column names, and the label column written into ``current``.
        current_path: Where ``current`` was read, for error messages.
        served: ``current`` is the inference log, where only requests by entity id name an entity:
            requests that sent feature values stay unlabelled (drift is still measured), not an error.

    Returns:
        The rows in their order with ``spec.label_column`` set (NaN where unlabelled), and the counts.

    Raises:
        DataError: A column is missing, a timestamp does not parse, entity types do not match, or
            duplicates disagree under ``duplicates: error``.
    """
    where = redact(source.path)
    monitored = redact(current_path) if current_path else "the monitored rows"
    key = spec.entity_column
    if served and key not in current.columns:
        log.warning(
            "the served requests carry no entity ids; no late label can match them",
            extra={"entity_column": key, "rows": len(current), "log": monitored},
        )
        unlabelled = current.drop(columns=[spec.label_column], errors="ignore").assign(**{spec.label_column: np.nan})
        counts = {"rows": len(current), "labelled": 0, "late": 0, "missing": len(current)}
        return unlabelled, LabelJoin(source=where, duplicates_collapsed=0, conflicts_resolved=0, **counts)
    if key not in current.columns:
        raise DataError(
            f"{monitored}: no entity column '{key}' to join monitoring.labels_source on; "
            f"found {sorted(map(str, current.columns))}"
        )
    labels, collapsed, conflicts = read_labels(source, spec)
    entity = current[key].reset_index(drop=True)
    if isinstance(entity.dtype, pd.CategoricalDtype):  # compare ids by value, not by category code
        entity = entity.astype(entity.cat.categories.dtype)
    labels["_entity"] = _same_entity_type(entity, labels["_entity"], where, source.entity_column or key)
    left = pd.DataFrame(
        {
            "_row": np.arange(len(current)),
            "_entity": entity,
            "_time": _utc(times.reset_index(drop=True), monitored, str(times.name)),
        }
    )
    left = left[left["_entity"].notna() & left["_time"].notna()]
    within = _forward(left, labels, source.delay)
    after = _forward(left, labels, None)  # any label at or after t: tells late from missing
    label_of = pd.Series(np.nan, index=np.arange(len(current)), dtype="object")
    label_of.loc[within["_row"].to_numpy()] = within["_label"].to_numpy()
    has_later = np.zeros(len(current), dtype=bool)
    has_later[after["_row"].to_numpy()] = after["_label"].notna().to_numpy()
    labelled = label_of.notna().to_numpy()
    # Object values back to numbers (or strings): 0/1 with gaps become floats, as a label column with NaN is.
    values = pd.Series(label_of.to_numpy(), index=current.index).infer_objects()
    joined = current.drop(columns=[spec.label_column], errors="ignore").assign(**{spec.label_column: values})
    stats = LabelJoin(
        source=where,
        rows=len(current),
        labelled=int(labelled.sum()),
        late=int((has_later & ~labelled).sum()),
        missing=int((~has_later).sum()),
        duplicates_collapsed=collapsed,
        conflicts_resolved=conflicts,
    )
    log.info("joined late labels", extra=stats.model_dump())
    return joined, stats


def _forward(left: pd.DataFrame, labels: pd.DataFrame, delay: timedelta | None) -> pd.DataFrame:
    """Each left row with the first label of its entity at or after its time (within ``delay``, if given)."""
    if left.empty or labels.empty:
        return left.assign(_label=pd.Series(dtype="object"))
    ordered = left.sort_values("_time", kind="stable")
    return pd.merge_asof(
        ordered,
        labels,
        left_on="_time",
        right_on="_label_time",
        by="_entity",
        direction="forward",
        allow_exact_matches=True,
        tolerance=None if delay is None else pd.Timedelta(delay),
    )


def join_latest_label(
    current: pd.DataFrame, current_path: str, labels_path: str, spec: DatasetSpec, served: bool
) -> pd.DataFrame:
    """``current`` with the label column taken from the ground truth, matched on the entity column.

    The latest label per entity (by the timestamp column, if the ground truth has it) counts.
    ``served``: ``current`` is the inference log, where only requests by entity id name an entity.
    """
    truth = read_table(labels_path)
    key, label = spec.entity_column, spec.label_column
    if served and key not in current.columns:
        # Logged requests that sent feature values name no entity: no ground truth can match them.
        # Drift is still measured; live performance is not (it needs labelled rows).
        log.warning(
            "the served requests carry no entity ids; live performance is not measured",
            extra={"entity_column": key, "rows": len(current), "log": current_path},
        )
        return current.drop(columns=[label], errors="ignore").assign(**{label: np.nan})
    for path, frame, needed in ((labels_path, truth, [key, label]), (current_path, current, [key])):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing} needed to join predictions with ground truth on "
                f"'{key}'; found {sorted(map(str, frame.columns))}"
            )
    truth = truth[truth[label].notna()]
    if spec.timestamp_column in truth.columns:
        truth = truth.sort_values(spec.timestamp_column, kind="stable")
    truth = truth.drop_duplicates(key, keep="last")[[key, label]]
    joined = current.drop(columns=[label], errors="ignore").merge(truth, on=key, how="left", validate="many_to_one")
    log.info(
        "joined predictions with ground truth",
        extra={"rows": len(joined), "labelled": int(joined[label].notna().sum()), "labels_path": labels_path},
    )
    return joined
