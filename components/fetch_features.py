"""Fetch features: point-in-time training sets through Feast, and the online store materialized for serving.

Each snapshot's feature rows go into the offline store as one Parquet file named by its
content hash (``snapshot=<hash>.parquet``), so a re-run adds nothing; its timestamps are
microseconds, which both Feast's file (Dask) and Spark offline stores read (files from
earlier versions, in nanoseconds, are migrated in place). The training set comes from
``get_historical_features``, which is point-in-time correct: a row sees only the newest
feature value at or before its own timestamp and no older than the TTL. The online store is
then materialized for serving. The Feast definitions, settings and online lookups are in
:mod:`components.common.feast`.

Feast's file (Dask) offline store handles entity rows without a feature value inside the
TTL in two silent ways: it returns them with null features (the entity has no feature
row at all) or drops them (every feature row is too old or too new). Both are counted as
``missing_entities``, logged, and left out of the training set. The label never passes
through Feast: it is joined back from the snapshot by (entity, timestamp).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pydantic import BaseModel

from components.common import storage
from components.common.errors import DataError
from components.common.feast import (
    EntityType,
    ensure_definitions,
    entity_type_of_arrow,
    feast_root,
    feature_view_name,
    offline_folder,
    resolve_entity_type,
)
from components.common.io import frame_sha256, write_parquet
from components.common.logs import get_logger
from components.common.storage import read_table
from components.specs import DatasetSpec, FeastSpec

if TYPE_CHECKING:
    import pyarrow as pa
    from feast import FeatureStore

logger = get_logger("fetch_features")


class FeatureSetResult(BaseModel):
    """The training set written by :func:`build_training_set`."""

    path: str
    rows: int
    feature_view: str
    missing_entities: int
    """Entity rows with no feature value inside the TTL; they are not in the training set."""
    materialized_until: str | None
    """Newest event time the online store holds values up to (ISO-8601, UTC)."""


def _check_snapshot(
    snapshot: pd.DataFrame, spec: DatasetSpec, feast: FeastSpec, source: str
) -> tuple[pd.Series, EntityType]:
    """Check the columns the feature view needs; return the timestamps as UTC and the entity type.

    The entity type is ``feast.entity_type`` (checked against the column) or, when that is not
    set, the column's own: integers are ``int64``, strings ``string``.
    """
    needed = [spec.entity_column, spec.timestamp_column, spec.label_column, *spec.feature_columns]
    missing_columns = [c for c in needed if c not in snapshot.columns]
    if missing_columns:
        raise DataError(
            f"{source}: missing column(s) {missing_columns} for the feature view; "
            f"found {sorted(map(str, snapshot.columns))}"
        )
    if snapshot.empty:
        raise DataError(f"{source}: the snapshot has no rows")
    entity = snapshot[spec.entity_column]
    if entity.isna().any():
        raise DataError(f"{source}: entity column {spec.entity_column!r} has {int(entity.isna().sum())} empty value(s)")
    entity_type = resolve_entity_type(entity, feast, source, spec.entity_column)
    stamps = snapshot[spec.timestamp_column]
    if not pd.api.types.is_datetime64_any_dtype(stamps):
        raise DataError(f"{source}: column {spec.timestamp_column!r} has dtype {stamps.dtype}, expected timestamps")
    if stamps.isna().any():
        raise DataError(f"{source}: column {spec.timestamp_column!r} has {int(stamps.isna().sum())} empty timestamp(s)")
    # Naive timestamps are UTC, as in ingest and in Feast.
    utc = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    return utc, entity_type


def _feature_rows(snapshot: pd.DataFrame, spec: DatasetSpec, entity_type: EntityType) -> pd.DataFrame:
    """The offline-store rows of a snapshot: entity, timestamp, features, typed like the feature view."""
    rows = snapshot[[*spec.key_columns, *spec.feature_columns]].copy()
    rows[spec.entity_column] = rows[spec.entity_column].astype("int64" if entity_type == "int64" else str)
    if spec.numeric_features:
        try:
            rows[spec.numeric_features] = rows[spec.numeric_features].astype("float64")
        except (ValueError, TypeError) as exc:
            raise DataError(f"numeric feature columns {spec.numeric_features} are not all numbers: {exc}") from exc
    for column in spec.categorical_features:
        values = rows[column]
        rows[column] = values.astype(str).where(values.notna(), None).astype(object)
    # A row with every feature empty observes nothing; stored, it would hide older values from
    # point-in-time joins and blank the entity online, so it is not stored.
    rows = rows[rows[spec.feature_columns].notna().any(axis=1)]
    duplicated = rows.duplicated(spec.key_columns, keep="last")
    if duplicated.any():
        logger.warning(
            "duplicate (entity, timestamp) rows in the snapshot; the last one is stored",
            extra={"rows": int(duplicated.sum()), "columns": spec.key_columns},
        )
        rows = rows[~duplicated]
    # A fixed order, so the content hash (the file name) does not depend on how the snapshot was sorted.
    rows = rows.sort_values([spec.timestamp_column, spec.entity_column], kind="stable")
    return rows.reset_index(drop=True)


def _microseconds(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """``rows`` with ``column`` in microseconds (UTC), for the offline files.

    Spark 4 refuses Parquet nanosecond timestamps (``PARQUET_TYPE_ILLEGAL``), so the Spark
    offline store can read only microseconds; Feast's Dask reader takes either, but not a mix.
    Anything below a microsecond is floored away, so a row still sees its own value.
    """
    stamps = pd.to_datetime(rows[column], utc=True).dt.floor("us").astype("datetime64[us, UTC]")
    return rows.assign(**{column: stamps})


def _offline_files(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> list[str]:
    """The Parquet files of the offline source folder (local or in an object store), in name order."""
    folder = offline_folder(spec, feast, workspace)
    return [storage.join(folder, name) for name in storage.find(folder) if name.endswith(".parquet")]


def _read_schema(location: str) -> pa.Schema:
    import pyarrow.parquet as pq

    with storage.open_read(location) as handle:
        return pq.read_schema(handle)


def _store_offline(rows: pd.DataFrame, spec: DatasetSpec, feast: FeastSpec, workspace: str) -> str:
    """Add ``rows`` to the offline source folder once: the file name is the content hash."""
    folder = offline_folder(spec, feast, workspace)
    # Hashed as read (nanoseconds), as before timestamps were stored in microseconds, so a
    # snapshot stored by an earlier version keeps its name and is not added a second time.
    part = storage.join(folder, f"snapshot={frame_sha256(rows)[:16]}.parquet")
    shown = storage.redact(part)
    if storage.exists(part):
        logger.info("snapshot already in the offline store", extra={"path": shown})
        return part
    _write_offline(_microseconds(rows, spec.timestamp_column), part, feast, workspace)
    logger.info("snapshot added to the offline store", extra={"path": shown, "rows": len(rows)})
    return part


def _write_offline(rows: pd.DataFrame, part: str, feast: FeastSpec, workspace: str) -> None:
    """Write an offline file whole: outside the folder and renamed in, or uploaded as one object.

    Feast's Dask reader lists every Parquet file under the folder, hidden ones included, so a
    local temporary file cannot live inside it (a rename is atomic on one filesystem). An
    object is published whole by the store itself (:mod:`components.common.storage`).
    """
    if storage.is_remote(part):
        storage.write_parquet(part, rows)
        storage.forget_shared_listings(part)  # Feast's Dask reader would not see the new object otherwise
        return
    staged = write_parquet(Path(feast_root(feast, workspace)) / "staging" / Path(part).name, rows)
    Path(part).parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, part)


def _migrate_offline_files(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> int:
    """Rewrite offline files that hold nanosecond timestamps (earlier versions) in microseconds.

    Each file is replaced whole under its own name, so a reader sees the old or the new file
    and an interrupted migration is finished by the next run. Returns the files rewritten.
    """
    import pyarrow as pa

    migrated = 0
    for path in _offline_files(spec, feast, workspace):
        schema = _read_schema(path)
        if spec.timestamp_column not in schema.names:
            continue  # _check_offline_files names it
        kind = schema.field(spec.timestamp_column).type
        if pa.types.is_timestamp(kind) and kind.unit == "ns":
            rows = _microseconds(storage.read_parquet(path), spec.timestamp_column)
            _write_offline(rows, path, feast, workspace)
            migrated += 1
    if migrated:
        logger.info("offline files rewritten with microsecond timestamps", extra={"files": migrated})
    return migrated


def _check_offline_files(spec: DatasetSpec, feast: FeastSpec, workspace: str, entity_type: EntityType) -> None:
    """All offline files must have the columns the spec names now, and entity ids of the snapshot's type.

    Feast's Dask reader fails obscurely otherwise (or, for entity ids of another type, joins nothing).
    """
    expected = [*spec.key_columns, *spec.feature_columns]
    for path in _offline_files(spec, feast, workspace):
        schema = _read_schema(path)
        found = schema.names
        if spec.entity_column in found:
            stored = entity_type_of_arrow(schema.field(spec.entity_column).type)
            if stored != entity_type:
                raise DataError(
                    f"{storage.redact(path)}: offline feature file has entity column {spec.entity_column!r} of type "
                    f"{schema.field(spec.entity_column).type}, but this snapshot's entity ids are {entity_type!r}; "
                    "the entity type changed since it was written",
                    hint=f"Remove {storage.redact(offline_folder(spec, feast, workspace))} and re-run the snapshots "
                    "whose history you need, or use a new feast.root or workspace.",
                )
        if set(found) != set(expected):
            lacking = [c for c in expected if c not in found]
            extra = [c for c in found if c not in expected]
            shown = storage.redact(path)
            raise DataError(
                f"{shown}: offline feature file has columns {found}, expected {expected} "
                f"(lacking {lacking}, extra {extra}); the feature set changed since it was written",
                hint=f"Remove {storage.redact(offline_folder(spec, feast, workspace))} and re-run the snapshots "
                "whose history you need, or use a new feast.root or workspace.",
            )


def _materialize(
    store: FeatureStore, view_name: str, stamps: pd.Series, feast: FeastSpec, *, full: bool = False
) -> datetime:
    """Materialize the view up to the snapshot's newest row (or the previous end, if later); return the end.

    A snapshot entirely newer than the previous end only needs that new interval (every
    value it holds is newer than what is online). Otherwise, say a re-run or a backfill, the
    whole TTL window is rewritten up to the later end, so the online store never rolls back
    and a backfilled entity still gets its newest value. ``full`` forces the whole window
    (after the definitions changed: Feast keeps the old materialization intervals). Feast's
    file store includes both ends of the range.
    """
    ttl = timedelta(days=feast.ttl_days)
    newest, oldest = stamps.max().to_pydatetime(), stamps.min().to_pydatetime()
    previous = store.get_feature_view(view_name).most_recent_end_time
    if previous is not None and previous.tzinfo is None:
        previous = previous.replace(tzinfo=UTC)
    if previous is not None and oldest > previous and not full:
        start, end = max(previous, newest - ttl), newest
    else:
        end = newest if previous is None else max(newest, previous)
        start = end - ttl
    store.materialize(start_date=start, end_date=end, feature_views=[view_name])
    return end


def build_training_set(
    snapshot_path: str, spec: DatasetSpec, feast: FeastSpec, workspace: str, output_path: str
) -> FeatureSetResult:
    """Add a snapshot to the offline store, build its point-in-time training set, materialize online.

    The training set has one row per snapshot row that has a feature value inside the TTL:
    the entity and timestamp columns, the features in spec order (from Feast, as of the row's
    timestamp) and the label (from the snapshot), sorted by (timestamp, entity).

    Args:
        snapshot_path: The ingested (and validated) snapshot.
        spec: The dataset spec.
        feast: Feast settings (project, stores, TTL).
        workspace: Folder of the local stores (empty in a cluster task; ``feast.root`` then names the store).
        output_path: Where to write the training set (one Parquet file, written atomically).

    Returns:
        Rows written, rows left out for lack of a feature value, and how far the online store
        is materialized.

    Raises:
        DataError: The snapshot lacks a column the spec names, is empty, has empty or
            mistyped entity ids (neither integers nor strings, or not ``feast.entity_type``)
            or timestamps, its entity type differs from the offline store's files, or neither
            it nor the offline store has any feature value.
    """
    snapshot = read_table(snapshot_path)
    stamps, entity_type = _check_snapshot(snapshot, spec, feast, snapshot_path)
    snapshot = snapshot.assign(**{spec.timestamp_column: stamps})
    rows = _feature_rows(snapshot, spec, entity_type)
    _check_offline_files(spec, feast, workspace, entity_type)
    _migrate_offline_files(spec, feast, workspace)
    if not rows.empty:
        _store_offline(rows, spec, feast, workspace)
    elif not _offline_files(spec, feast, workspace):
        raise DataError(
            f"{snapshot_path}: every row has all feature columns {spec.feature_columns} empty and the offline "
            f"store {storage.redact(offline_folder(spec, feast, workspace))} is empty; no feature values to join"
        )
    # Applied with the data's type: the registry records it for the model server's lookups.
    store, applied = ensure_definitions(spec, feast, workspace, entity_type)
    view = feature_view_name(spec)

    # Ask Feast once per distinct (entity, timestamp); it collapses duplicates anyway.
    entity_dtype = "int64" if entity_type == "int64" else str
    snapshot = snapshot.assign(**{spec.entity_column: snapshot[spec.entity_column].astype(entity_dtype)})
    keys = snapshot[spec.key_columns].drop_duplicates().reset_index(drop=True)
    joined = store.get_historical_features(
        entity_df=keys, features=[f"{view}:{c}" for c in spec.feature_columns]
    ).to_df()
    joined[spec.timestamp_column] = pd.to_datetime(joined[spec.timestamp_column], utc=True)
    joined = joined[[*spec.key_columns, *spec.feature_columns]]

    # The label comes from the snapshot; Feast only supplies features.
    merged = snapshot[[*spec.key_columns, spec.label_column]].merge(
        joined.assign(_ctpipe_returned_by_feast=True),
        on=spec.key_columns,
        how="left",
        validate="many_to_one",
    )
    dropped = merged["_ctpipe_returned_by_feast"].isna()
    no_features = merged[spec.feature_columns].isna().all(axis=1)
    missing = int(no_features.sum())
    if missing:
        logger.warning(
            "entity rows with no feature value inside the TTL as of their time are left out of the training set",
            extra={
                "rows": missing,
                "dropped_by_feast": int(dropped.sum()),
                "null_from_feast": int((no_features & ~dropped).sum()),
                "ttl_days": feast.ttl_days,
                "feature_view": view,
            },
        )
    columns = [*spec.key_columns, *spec.feature_columns, spec.label_column]
    training = merged.loc[~no_features, columns]
    order = [spec.timestamp_column, spec.entity_column]
    training = training.sort_values(order, kind="stable").reset_index(drop=True)
    write_parquet(output_path, training)

    until = _materialize(store, view, stamps, feast, full=applied)
    result = FeatureSetResult(
        path=str(output_path),
        rows=len(training),
        feature_view=view,
        missing_entities=missing,
        materialized_until=until.isoformat(),
    )
    logger.info("training set written", extra=result.model_dump())
    return result
