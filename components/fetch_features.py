"""Fetch features: point-in-time training sets and online lookups through Feast.

The Feast entity, source and feature view are generated from the dataset spec, so a new
dataset needs no Python. Each snapshot's feature rows go into the offline store as one
Parquet file named by its content hash (``snapshot=<hash>.parquet``), so a re-run adds
nothing; its timestamps are microseconds, which both Feast's file (Dask) and Spark offline
stores read (files from earlier versions, in nanoseconds, are migrated in place). The
training set comes from ``get_historical_features``, which is point-in-time correct: a row
sees only the newest feature value at or before its own timestamp and no older than the TTL.
The online store is then materialized for serving.

Feast's file (Dask) offline store handles entity rows without a feature value inside the
TTL in two silent ways: it returns them with null features (the entity has no feature
row at all) or drops them (every feature row is too old or too new). Both are counted as
``missing_entities``, logged, and left out of the training set. The label never passes
through Feast: it is joined back from the snapshot by (entity, timestamp).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel

from components.common.errors import DataError
from components.common.io import frame_sha256, read_table, write_parquet
from components.common.logs import get_logger
from components.specs import DatasetSpec, FeastSpec

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

# Feast is imported inside the functions (it is slow to import); this must precede that.
os.environ.setdefault("FEAST_USAGE", "False")
logger = get_logger("fetch_features")

# Bump when ``definitions`` changes in a way the inputs of its fingerprint do not show.
_DEFINITIONS_VERSION = "1"
_FINGERPRINT_TAG = "ctpipe.definitions"


class FeatureSetResult(BaseModel):
    """The training set written by :func:`build_training_set`."""

    path: str
    rows: int
    feature_view: str
    missing_entities: int
    """Entity rows with no feature value inside the TTL; they are not in the training set."""
    materialized_until: str | None
    """Newest event time the online store holds values up to (ISO-8601, UTC)."""


class OnlineFeatures(BaseModel):
    """Online feature values for a list of entity ids."""

    rows: list[dict[str, Any]]
    """One row per id found: the entity column, then the features in spec order."""
    missing: list[Any]
    """Ids with no value in the online store, in request order."""


def feature_view_name(spec: DatasetSpec) -> str:
    """Name of the feature view generated for a dataset: ``<entity_column>_features``."""
    return f"{spec.entity_column}_features"


def feast_root(workspace: str) -> Path:
    """Folder of the embedded Feast state (registry, online store, offline files) in a workspace."""
    return Path(workspace).resolve() / "feast"


def offline_folder(spec: DatasetSpec, workspace: str) -> Path:
    """Folder of Parquet files that is the feature view's offline source (embedded profile)."""
    return feast_root(workspace) / "offline" / feature_view_name(spec)


def store_settings(feast: FeastSpec, workspace: str, relative_to: str | None = None) -> dict[str, Any]:
    """The Feast configuration for the profile in ``feast``, as the mapping ``feature_store.yaml`` holds.

    The registry (and the sqlite online store) live under ``<workspace>/feast``; Redis and
    Spark are named by ``feast.redis_connection_string`` and ``feast.spark_conf``.

    Args:
        feast: Feast settings: project, online store (sqlite or redis), offline store (file or spark).
        workspace: Folder of the embedded stores; the registry always lives here.
        relative_to: Write paths relative to this folder (the folder of a ``feature_store.yaml``).

    Returns:
        ``project``, ``provider``, ``registry``, ``online_store``, ``offline_store`` and
        ``entity_key_serialization_version``, ready for ``yaml.safe_dump`` or ``RepoConfig(**...)``.
    """
    root = feast_root(workspace)

    def where(path: Path) -> str:
        return os.path.relpath(path, Path(relative_to).resolve()) if relative_to else str(path)

    online: dict[str, Any] = {"type": "sqlite", "path": where(root / "online.db")}
    if feast.online_store == "redis":
        online = {"type": "redis", "connection_string": feast.redis_connection_string}
    offline: dict[str, Any] = {"type": "file"}
    if feast.offline_store == "spark":
        # SparkOfflineStoreConfig. UTC sessions, so timestamps mean the same as in the file store.
        offline = {"type": "spark", "spark_conf": {"spark.sql.session.timeZone": "UTC", **feast.spark_conf}}
    return {
        "project": feast.project,
        "provider": "local",
        "registry": where(root / "registry.db"),
        "online_store": online,
        "offline_store": offline,
        "entity_key_serialization_version": 3,  # the only non-deprecated version in Feast 0.67
    }


def feature_store_yaml(feast: FeastSpec, workspace: str, relative_to: str | None = None) -> str:
    """``feature_store.yaml`` for the profile in ``feast``, for the Feast CLI (``feast apply``, ``feast ui``).

    Args:
        feast: Feast settings.
        workspace: Folder of the embedded stores.
        relative_to: Write paths relative to this folder (where the file will live).

    Returns:
        The YAML text, with a header saying it is generated.
    """
    import yaml

    header = (
        "# Generated by feature_repo/render.py from the feast section of the ctpipe configuration;\n"
        "# the pipelines build the same settings in code (components/fetch_features.py: store_settings).\n"
    )
    return header + yaml.safe_dump(store_settings(feast, workspace, relative_to), sort_keys=False)


def repo_config(feast: FeastSpec, workspace: str) -> RepoConfig:
    """The Feast configuration for the profile in ``feast``, with its state under ``<workspace>/feast``.

    Args:
        feast: Feast settings: project, online store (sqlite or redis), offline store (file or spark).
        workspace: Folder of the embedded stores; the registry always lives here.

    Returns:
        A ``RepoConfig`` (:func:`store_settings`, validated by Feast); nothing is written yet.
    """
    from feast.repo_config import RepoConfig

    _restore_feast_sqlite_timestamps()
    return RepoConfig(**store_settings(feast, workspace), repo_path=str(feast_root(workspace)))


def _restore_feast_sqlite_timestamps() -> None:
    """Make sqlite's process-wide ``timestamp`` converter Feast's again if another library replaced it.

    Feast's sqlite online store writes event times as epoch seconds and registers a converter
    for them when it is imported; IPython (imported later by notebooks, nbclient or GX) replaces
    that converter with an ISO-8601 parser, and every online read then fails on ``'1767398400'``.
    """
    import sqlite3

    from feast.infra.online_stores import sqlite as feast_sqlite

    if sqlite3.converters.get("TIMESTAMP") is not feast_sqlite.convert_timestamp:
        logger.warning("sqlite's timestamp converter was replaced by another library; restoring Feast's")
        sqlite3.register_converter("timestamp", feast_sqlite.convert_timestamp)


def _fingerprint(spec: DatasetSpec, feast: FeastSpec, source_path: str) -> str:
    payload = {
        "version": _DEFINITIONS_VERSION,
        "entity": [spec.entity_column, feast.entity_type],
        "timestamp": spec.timestamp_column,
        "numeric": spec.numeric_features,
        "categorical": spec.categorical_features,
        "ttl_days": feast.ttl_days,
        "source": [feast.offline_store, source_path],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def definitions(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> list[Any]:
    """The Feast entity and feature view for ``spec`` (also what ``feature_repo/features.py`` exposes).

    Numeric features are ``Float64`` and categorical features ``String``; the label is never
    part of the feature view. The view carries a fingerprint tag of its inputs, so
    :func:`feature_store` re-applies only when something changed.

    Args:
        spec: The dataset spec (entity, timestamp and feature columns).
        feast: Feast settings (entity type, TTL, offline store).
        workspace: Folder whose ``feast/offline/<feature_view>`` holds the source Parquet files.

    Returns:
        ``[entity, feature_view]``.
    """
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, String

    value_type = ValueType.INT64 if feast.entity_type == "int64" else ValueType.STRING
    entity = Entity(name=spec.entity_column, join_keys=[spec.entity_column], value_type=value_type)
    path = str(offline_folder(spec, workspace))
    name = f"{feature_view_name(spec)}_source"
    if feast.offline_store == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        source: Any = SparkSource(name=name, path=path, file_format="parquet", timestamp_field=spec.timestamp_column)
    else:
        source = FileSource(name=name, path=path, timestamp_field=spec.timestamp_column)
    schema = [Field(name=c, dtype=Float64) for c in spec.numeric_features]
    schema += [Field(name=c, dtype=String) for c in spec.categorical_features]
    view = FeatureView(
        name=feature_view_name(spec),
        entities=[entity],
        ttl=timedelta(days=feast.ttl_days),
        schema=schema,
        source=source,
        online=True,
        tags={_FINGERPRINT_TAG: _fingerprint(spec, feast, path)},
    )
    return [entity, view]


def _is_applied(store: FeatureStore, entity: Any, view: Any) -> bool:
    from feast.errors import FeastObjectNotFoundException

    try:
        registered = store.get_feature_view(view.name)
        store.get_entity(entity.name)
    except FeastObjectNotFoundException:
        return False
    return bool(registered.tags.get(_FINGERPRINT_TAG) == view.tags[_FINGERPRINT_TAG])


def feature_store(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> FeatureStore:
    """A Feast store for the profile in ``feast``, with the generated definitions applied.

    Applying is idempotent and skipped when the registry already holds definitions with the
    same fingerprint.

    Args:
        spec: The dataset spec.
        feast: Feast settings.
        workspace: Folder of the embedded stores (``<workspace>/feast``).

    Returns:
        The ``feast.FeatureStore``.
    """
    return _feature_store(spec, feast, workspace)[0]


def _feature_store(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> tuple[FeatureStore, bool]:
    """The store, and whether the definitions were (re)applied just now."""
    from feast import FeatureStore

    offline_folder(spec, workspace).mkdir(parents=True, exist_ok=True)
    store = FeatureStore(config=repo_config(feast, workspace))
    entity, view = definitions(spec, feast, workspace)
    if _is_applied(store, entity, view):
        return store, False
    store.apply([entity, view])
    logger.info("feast definitions applied", extra={"feature_view": view.name, "project": feast.project})
    return store, True


def _check_snapshot(snapshot: pd.DataFrame, spec: DatasetSpec, feast: FeastSpec, source: str) -> pd.Series:
    """Check the columns the feature view needs; return the timestamps as UTC."""
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
    is_int = pd.api.types.is_integer_dtype(entity)
    if (feast.entity_type == "int64") != is_int:
        expected = "integers" if feast.entity_type == "int64" else "strings"
        raise DataError(
            f"{source}: entity column {spec.entity_column!r} has dtype {entity.dtype}, "
            f"but feast.entity_type is {feast.entity_type!r} (expected {expected})"
        )
    stamps = snapshot[spec.timestamp_column]
    if not pd.api.types.is_datetime64_any_dtype(stamps):
        raise DataError(f"{source}: column {spec.timestamp_column!r} has dtype {stamps.dtype}, expected timestamps")
    if stamps.isna().any():
        raise DataError(f"{source}: column {spec.timestamp_column!r} has {int(stamps.isna().sum())} empty timestamp(s)")
    # Naive timestamps are UTC, as in ingest and in Feast.
    return stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")


def _feature_rows(snapshot: pd.DataFrame, spec: DatasetSpec, feast: FeastSpec) -> pd.DataFrame:
    """The offline-store rows of a snapshot: entity, timestamp, features, typed like the feature view."""
    rows = snapshot[[*spec.key_columns, *spec.feature_columns]].copy()
    rows[spec.entity_column] = rows[spec.entity_column].astype("int64" if feast.entity_type == "int64" else str)
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


def _store_offline(rows: pd.DataFrame, spec: DatasetSpec, workspace: str) -> Path:
    """Add ``rows`` to the offline source folder once: the file name is the content hash."""
    folder = offline_folder(spec, workspace)
    # Hashed as read (nanoseconds), as before timestamps were stored in microseconds, so a
    # snapshot stored by an earlier version keeps its name and is not added a second time.
    part = folder / f"snapshot={frame_sha256(rows)[:16]}.parquet"
    if part.exists():
        logger.info("snapshot already in the offline store", extra={"path": str(part)})
        return part
    _stage_into(_microseconds(rows, spec.timestamp_column), part, workspace)
    logger.info("snapshot added to the offline store", extra={"path": str(part), "rows": len(rows)})
    return part


def _stage_into(rows: pd.DataFrame, part: Path, workspace: str) -> None:
    """Write an offline file atomically: outside the folder, then renamed in.

    Feast's Dask reader lists every Parquet file under the folder, hidden ones included, so the
    temporary file cannot live inside it (a rename is atomic on one filesystem).
    """
    staged = write_parquet(feast_root(workspace) / "staging" / part.name, rows)
    part.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, part)


def _migrate_offline_files(spec: DatasetSpec, workspace: str) -> int:
    """Rewrite offline files that hold nanosecond timestamps (earlier versions) in microseconds.

    Each file is replaced atomically under its own name, so a reader sees the old or the new
    file and an interrupted migration is finished by the next run. Returns the files rewritten.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    migrated = 0
    for path in sorted(offline_folder(spec, workspace).glob("*.parquet")):
        schema = pq.read_schema(path)
        if spec.timestamp_column not in schema.names:
            continue  # _check_offline_files names it
        kind = schema.field(spec.timestamp_column).type
        if pa.types.is_timestamp(kind) and kind.unit == "ns":
            _stage_into(_microseconds(pd.read_parquet(path), spec.timestamp_column), path, workspace)
            migrated += 1
    if migrated:
        logger.info("offline files rewritten with microsecond timestamps", extra={"files": migrated})
    return migrated


def _check_offline_files(spec: DatasetSpec, workspace: str) -> None:
    """All offline files must have the columns the spec names now: Feast's Dask reader fails obscurely otherwise."""
    import pyarrow.parquet as pq

    expected = [*spec.key_columns, *spec.feature_columns]
    for path in sorted(offline_folder(spec, workspace).glob("*.parquet")):
        found = pq.read_schema(path).names
        if set(found) != set(expected):
            lacking = [c for c in expected if c not in found]
            extra = [c for c in found if c not in expected]
            raise DataError(
                f"{path}: offline feature file has columns {found}, expected {expected} "
                f"(lacking {lacking}, extra {extra}); the feature set changed since it was written",
                hint=f"Remove {path.parent} and re-run the snapshots whose history you need, or use a new workspace.",
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
        workspace: Folder of the embedded stores.
        output_path: Where to write the training set (one Parquet file, written atomically).

    Returns:
        Rows written, rows left out for lack of a feature value, and how far the online store
        is materialized.

    Raises:
        DataError: The snapshot lacks a column the spec names, is empty, has empty or
            mistyped entity ids or timestamps, or neither it nor the offline store has any
            feature value.
    """
    snapshot = read_table(snapshot_path)
    stamps = _check_snapshot(snapshot, spec, feast, snapshot_path)
    snapshot = snapshot.assign(**{spec.timestamp_column: stamps})
    rows = _feature_rows(snapshot, spec, feast)
    _check_offline_files(spec, workspace)
    _migrate_offline_files(spec, workspace)
    if not rows.empty:
        _store_offline(rows, spec, workspace)
    elif not any(offline_folder(spec, workspace).glob("*.parquet")):
        raise DataError(
            f"{snapshot_path}: every row has all feature columns {spec.feature_columns} empty "
            f"and the offline store {offline_folder(spec, workspace)} is empty; no feature values to join"
        )
    store, applied = _feature_store(spec, feast, workspace)
    view = feature_view_name(spec)

    # Ask Feast once per distinct (entity, timestamp); it collapses duplicates anyway.
    entity_dtype = "int64" if feast.entity_type == "int64" else str
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


def online_features(entity_ids: list[Any], spec: DatasetSpec, feast: FeastSpec, workspace: str) -> OnlineFeatures:
    """Latest online feature values for ``entity_ids``, fetched in one call.

    Args:
        entity_ids: Ids to look up (ints for ``entity_type: int64``, strings otherwise).
        spec: The dataset spec.
        feast: Feast settings.
        workspace: Folder of the embedded stores.

    Returns:
        One row per id found (entity column, then features in spec order), and the ids with
        no online value.

    Raises:
        DataError: An id does not match the entity type, or the feature view is not registered yet.
    """
    from feast.errors import FeastObjectNotFoundException
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    ids = _typed_ids(entity_ids, spec, feast)
    if not ids:
        return OnlineFeatures(rows=[], missing=[])
    view = feature_view_name(spec)
    registry = feast_root(workspace) / "registry.db"
    not_registered = DataError(
        f"feature view {view!r} is not registered in {registry}; run the training pipeline (build_training_set) first"
    )
    if not registry.is_file():
        raise not_registered
    store = _online_store(feast, workspace)
    features = [f"{view}:{c}" for c in spec.feature_columns]
    entity_rows = [{spec.entity_column: entity_id} for entity_id in ids]
    try:
        response = store.get_online_features(features=features, entity_rows=entity_rows)
    except FeastObjectNotFoundException:
        # Applied since this store last read the registry: read it again, once.
        store.refresh_registry()
        try:
            response = store.get_online_features(features=features, entity_rows=entity_rows)
        except FeastObjectNotFoundException as exc:
            raise not_registered from exc
    values = response.to_dict()
    names = list(response.proto.metadata.feature_names.val)
    statuses = {name: response.proto.results[i].statuses for i, name in enumerate(names)}
    rows, missing = [], []
    for index, entity_id in enumerate(ids):
        # sqlite marks an unknown id NOT_FOUND, Redis marks it PRESENT with every value null. A stored
        # row always has a value (rows with every feature empty are not stored), so both mean "missing".
        found = any(
            statuses[c][index] == FieldStatus.PRESENT and values[c][index] is not None for c in spec.feature_columns
        )
        if found:
            rows.append({spec.entity_column: entity_id, **{c: values[c][index] for c in spec.feature_columns}})
        else:
            missing.append(entity_id)
    return OnlineFeatures(rows=rows, missing=missing)


# One FeatureStore per thread and store settings: building one reads the registry and opens
# the online store (milliseconds per request otherwise), and Feast's sqlite online store keeps
# one connection per store that concurrent requests must not share.
_ONLINE_STORES = threading.local()
_ONLINE_STORES_PER_THREAD = 8


def _online_store(feast: FeastSpec, workspace: str) -> FeatureStore:
    """This thread's cached FeatureStore for these settings (built on first use).

    A registry applied later (a new or changed feature view) is still seen: Feast's file
    registry, in its default ``sync`` cache mode, re-reads the file whenever its modification
    time changed, and :func:`online_features` also refreshes once when a view is not found.
    """
    from feast import FeatureStore

    # With the registry file's identity: a workspace deleted and built again (a notebook, a test)
    # gets a new store, not one holding a connection to the deleted online database. Feast
    # rewrites the registry in place, so applying definitions keeps the same store.
    registry = feast_root(workspace) / "registry.db"
    identity = registry.stat() if registry.exists() else None
    key = json.dumps(
        [store_settings(feast, workspace), identity and [identity.st_dev, identity.st_ino]], sort_keys=True
    )
    stores: OrderedDict[str, FeatureStore] | None = getattr(_ONLINE_STORES, "stores", None)
    if stores is None:
        stores = _ONLINE_STORES.stores = OrderedDict()
    store = stores.get(key)
    if store is None:
        store = FeatureStore(config=repo_config(feast, workspace))
        stores[key] = store
        while len(stores) > _ONLINE_STORES_PER_THREAD:
            stores.popitem(last=False)  # least recently used; its connection closes with it
    else:
        _restore_feast_sqlite_timestamps()  # repo_config does this for a new store
    stores.move_to_end(key)
    return store


def _typed_ids(entity_ids: list[Any], spec: DatasetSpec, feast: FeastSpec) -> list[Any]:
    typed: list[Any] = []
    for entity_id in entity_ids:
        if feast.entity_type == "string":
            typed.append(str(entity_id))
            continue
        try:
            if isinstance(entity_id, bool) or int(entity_id) != entity_id:
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(
                f"entity id {entity_id!r} for column {spec.entity_column!r} is not an integer "
                "(feast.entity_type is 'int64')"
            ) from None
        typed.append(int(entity_id))
    return typed
