"""Fetch features: point-in-time training sets and online lookups through Feast.

The Feast entity, source and feature view are generated from the dataset spec, so a new
dataset needs no Python. Each ingested snapshot is added to the offline store (one
Parquet file per snapshot, named by its content hash, so a re-run adds nothing), the
training set comes from ``get_historical_features`` (point-in-time correct: a row sees
only feature values from at or before its own timestamp), and the online store is
materialized up to the snapshot's newest row for serving.
"""

from __future__ import annotations

import os
from datetime import timedelta
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

os.environ.setdefault("FEAST_USAGE", "False")
logger = get_logger("fetch_features")


class FeatureSetResult(BaseModel):
    """The training set written by :func:`build_training_set`."""

    path: str
    rows: int
    feature_view: str
    missing_entities: int
    materialized_until: str | None


class OnlineFeatures(BaseModel):
    """Online feature values for a list of entity ids."""

    rows: list[dict[str, Any]]
    missing: list[Any]


def feature_view_name(spec: DatasetSpec) -> str:
    """Name of the feature view generated for a dataset."""
    return f"{spec.entity_column}_features"


def offline_folder(spec: DatasetSpec, workspace: str) -> Path:
    """Folder of Parquet files that is the feature view's offline source (embedded profile)."""
    return Path(workspace) / "feast" / "offline" / feature_view_name(spec)


def _repo_config(feast: FeastSpec, workspace: str) -> Any:
    from feast.repo_config import RepoConfig

    root = Path(workspace) / "feast"
    root.mkdir(parents=True, exist_ok=True)
    online: dict[str, Any] = {"type": "sqlite", "path": str(root / "online.db")}
    if feast.online_store == "redis":
        online = {"type": "redis", "connection_string": feast.redis_connection_string}
    offline: dict[str, Any] = {"type": "file"}
    if feast.offline_store == "spark":
        offline = {"type": "spark", "spark_conf": {"spark.sql.session.timeZone": "UTC"}}
    return RepoConfig(
        project=feast.project,
        registry=str(root / "registry.db"),
        provider="local",
        online_store=online,
        offline_store=offline,
        entity_key_serialization_version=3,
        repo_path=str(root),
    )


def definitions(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> list[Any]:
    """The Feast entity and feature view for ``spec`` (what ``feature_repo/features.py`` exposes)."""
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
    )
    return [entity, view]


def feature_store(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> FeatureStore:
    """A Feast store for the profile in ``feast``, with the generated definitions applied."""
    from feast import FeatureStore

    offline_folder(spec, workspace).mkdir(parents=True, exist_ok=True)
    store = FeatureStore(config=_repo_config(feast, workspace))
    store.apply(definitions(spec, feast, workspace))
    return store


def _feature_rows(snapshot: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    columns = [spec.entity_column, spec.timestamp_column, *spec.feature_columns]
    rows = snapshot[columns].copy()
    rows[spec.numeric_features] = rows[spec.numeric_features].astype("float64")
    rows[spec.categorical_features] = rows[spec.categorical_features].astype("string").astype(object)
    return rows


def build_training_set(
    snapshot_path: str, spec: DatasetSpec, feast: FeastSpec, workspace: str, output_path: str
) -> FeatureSetResult:
    """Add a snapshot to the offline store, build its point-in-time training set, materialize online.

    Args:
        snapshot_path: The ingested (and validated) snapshot.
        spec: The dataset spec.
        feast: Feast settings (project, stores, TTL).
        workspace: Folder of the embedded stores.
        output_path: Where to write the training set (entity, timestamp, features, label; Parquet).

    Returns:
        Rows written, and how many entity rows had no feature value inside the TTL.

    Raises:
        DataError: The snapshot lacks a column the spec names.
    """
    snapshot = read_table(snapshot_path)
    needed = [spec.entity_column, spec.timestamp_column, spec.label_column, *spec.feature_columns]
    missing_columns = [c for c in needed if c not in snapshot.columns]
    if missing_columns:
        raise DataError(f"{snapshot_path}: missing column(s) {missing_columns} for the feature view")
    if snapshot.empty:
        raise DataError(f"{snapshot_path}: the snapshot has no rows")
    # One file per snapshot content: re-running the same snapshot adds nothing.
    part = offline_folder(spec, workspace) / f"snapshot-{frame_sha256(snapshot)[:16]}.parquet"
    if not part.exists():
        write_parquet(part, _feature_rows(snapshot, spec))
    store = feature_store(spec, feast, workspace)

    entity_df = snapshot[[spec.entity_column, spec.timestamp_column, spec.label_column]]
    view = feature_view_name(spec)
    joined = store.get_historical_features(
        entity_df=entity_df, features=[f"{view}:{c}" for c in spec.feature_columns]
    ).to_df()
    joined = joined.sort_values([spec.timestamp_column, spec.entity_column], kind="stable").reset_index(drop=True)
    # Feast's file store returns entities with no value inside the TTL as all-null rows; count, never hide.
    no_features = joined[spec.feature_columns].isna().all(axis=1)
    missing = int(no_features.sum())
    if missing:
        logger.warning(
            "entity rows without feature values inside the TTL are left out of the training set",
            extra={"rows": missing, "ttl_days": feast.ttl_days},
        )
    training = joined.loc[~no_features, [*spec.key_columns, *spec.feature_columns, spec.label_column]]
    write_parquet(output_path, training)

    until = snapshot[spec.timestamp_column].max()
    start = until - timedelta(days=feast.ttl_days)
    store.materialize(start_date=start.to_pydatetime(), end_date=(until + timedelta(seconds=1)).to_pydatetime())
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

    Returns:
        One row per known id (entity column, then features in spec order) and the ids with no
        online value.
    """
    from feast import FeatureStore

    store = FeatureStore(config=_repo_config(feast, workspace))
    view = feature_view_name(spec)
    values = store.get_online_features(
        features=[f"{view}:{c}" for c in spec.feature_columns],
        entity_rows=[{spec.entity_column: entity_id} for entity_id in entity_ids],
    ).to_dict()
    rows, missing = [], []
    for index, entity_id in enumerate(entity_ids):
        row = {c: values[c][index] for c in spec.feature_columns}
        if all(value is None for value in row.values()):
            missing.append(entity_id)
        else:
            rows.append({spec.entity_column: entity_id, **row})
    return OnlineFeatures(rows=rows, missing=missing)
