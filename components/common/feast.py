"""The Feast seam: one place that knows how ctpipe configures and reads Feast.

The entity, source and feature view are generated from the dataset spec (so a new dataset
needs no Python), the store settings from the ``feast`` config section, and online lookups
go through one cached ``FeatureStore`` per thread. The fetch-features step builds training
sets on top of this module; the model server uses it for requests that name entity ids.
Feast is imported inside the functions: it is slow to import.

The entity's value type is ``feast.entity_type`` when the configuration sets it; otherwise it
comes from the data (:func:`entity_type_of_values`, when fetch-features applies the
definitions) and is recorded in the Feast registry, where everything without data (the model
server's lookups, ``feature_repo/features.py``) reads it (:func:`recorded_entity_type`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import weakref
from collections import OrderedDict
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from components.common import storage
from components.common.errors import ConfigError, DataError
from components.common.io import scratch_folder
from components.common.logs import get_logger
from components.specs import DatasetSpec, FeastSpec

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

EntityType = Literal["int64", "string"]
"""The Feast value types ctpipe applies to an entity: ``INT64`` or ``STRING``."""
ENTITY_KINDS = "integers (feast.entity_type 'int64') or strings (feast.entity_type 'string')"
"""What an entity column may hold, for error messages."""

# Feast reads this when it is imported; it must be set before the first import.
os.environ.setdefault("FEAST_USAGE", "False")
logger = get_logger("feast")

# Bump when ``definitions`` changes in a way the inputs of its fingerprint do not show.
_DEFINITIONS_VERSION = "1"
_FINGERPRINT_TAG = "ctpipe.definitions"


class EntityLookup(BaseModel):
    """Where a model server finds online features for requests that carry entity ids."""

    dataset: DatasetSpec
    feast: FeastSpec
    workspace: str

    @classmethod
    def from_json(cls, dataset: str, feast: str, workspace: str) -> EntityLookup | None:
        """Built from the JSON parameters of a pipeline step; None when either is empty (no lookups)."""
        if not (dataset and feast):
            return None
        return cls(
            dataset=DatasetSpec.model_validate_json(dataset),
            feast=FeastSpec.model_validate_json(feast),
            workspace=workspace,
        )


class OnlineFeatures(BaseModel):
    """Online feature values for a list of entity ids."""

    rows: list[dict[str, Any]]
    """One row per id found: the entity column, then the features in spec order."""
    missing: list[Any]
    """Ids with no value in the online store, in request order."""


def feature_view_name(spec: DatasetSpec) -> str:
    """Name of the feature view generated for a dataset: ``<entity_column>_features``."""
    return f"{spec.entity_column}_features"


def feast_root(feast: FeastSpec, workspace: str) -> str:
    """Where Feast's registry and offline files live: ``feast.root`` (a folder or a URI), else ``<workspace>/feast``.

    Raises:
        ConfigError: ``feast.root`` is empty and there is no workspace (a cluster task has none).
    """
    if feast.root:
        return feast.root if storage.is_remote(feast.root) else str(storage.local_path(feast.root).resolve())
    if not workspace:
        raise ConfigError(
            "feast.root is empty and this task has no workspace; on a cluster set feast.root to a location every "
            "pod reaches, e.g. s3://bucket/feast"
        )
    return str(Path(workspace).resolve() / "feast")


def registry_location(feast: FeastSpec, workspace: str) -> str:
    """The Feast registry file: ``<feast root>/registry.db`` (Feast reads and writes ``s3://`` and ``gs://`` itself)."""
    return storage.join(feast_root(feast, workspace), "registry.db")


def offline_folder(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> str:
    """Folder (or prefix) of Parquet files that is the feature view's offline source."""
    return storage.join(feast_root(feast, workspace), "offline", feature_view_name(spec))


def _local_state(workspace: str) -> Path:
    """Local folder of what cannot live in an object store: the sqlite online store, the repo path."""
    return scratch_folder(workspace).resolve() / "feast"


def store_settings(feast: FeastSpec, workspace: str, relative_to: str | None = None) -> dict[str, Any]:
    """The Feast configuration for the profile in ``feast``, as the mapping ``feature_store.yaml`` holds.

    The registry lives under the Feast root (:func:`feast_root`: ``feast.root`` or
    ``<workspace>/feast``); the sqlite online store always in ``<workspace>/feast``; Redis and
    Spark are named by ``feast.redis_connection_string`` and ``feast.spark_conf``.

    Args:
        feast: Feast settings: project, root, online store (sqlite or redis), offline store (file or spark).
        workspace: Folder of the local stores.
        relative_to: Write local paths relative to this folder (the folder of a ``feature_store.yaml``).

    Returns:
        ``project``, ``provider``, ``registry``, ``online_store``, ``offline_store`` and
        ``entity_key_serialization_version``, ready for ``yaml.safe_dump`` or ``RepoConfig(**...)``.

    Raises:
        ConfigError: The sqlite online store is asked for without a workspace.
    """

    def where(location: str) -> str:
        if relative_to and not storage.is_remote(location):
            return os.path.relpath(location, Path(relative_to).resolve())
        return location

    online: dict[str, Any] = {"type": "redis", "connection_string": feast.redis_connection_string}
    if feast.online_store == "sqlite":
        if not workspace:
            raise ConfigError(
                "feast.online_store is 'sqlite', a file on one machine, and this task has no workspace; "
                "on a cluster use feast.online_store: redis"
            )
        online = {"type": "sqlite", "path": where(str(_local_state(workspace) / "online.db"))}
    offline: dict[str, Any] = {"type": "file"}
    if feast.offline_store == "spark":
        # SparkOfflineStoreConfig. UTC sessions, so timestamps mean the same as in the file store.
        offline = {"type": "spark", "spark_conf": {"spark.sql.session.timeZone": "UTC", **feast.spark_conf}}
    return {
        "project": feast.project,
        "provider": "local",
        "registry": where(registry_location(feast, workspace)),
        "online_store": online,
        "offline_store": offline,
        "entity_key_serialization_version": 3,  # the only non-deprecated version in Feast 0.67
    }


def feature_store_yaml(feast: FeastSpec, workspace: str, relative_to: str | None = None) -> str:
    """``feature_store.yaml`` for the profile in ``feast``, for the Feast CLI (``feast apply``, ``feast ui``).

    Args:
        feast: Feast settings.
        workspace: Folder of the local stores.
        relative_to: Write local paths relative to this folder (where the file will live).

    Returns:
        The YAML text, with a header saying it is generated.
    """
    import yaml

    header = (
        "# Generated by feature_repo/render.py from the feast section of the ctpipe configuration;\n"
        "# the pipelines build the same settings in code (components/common/feast.py: store_settings).\n"
    )
    return header + yaml.safe_dump(store_settings(feast, workspace, relative_to), sort_keys=False)


def repo_config(feast: FeastSpec, workspace: str) -> RepoConfig:
    """The Feast configuration for the profile in ``feast`` (registry under :func:`feast_root`).

    Args:
        feast: Feast settings: project, online store (sqlite or redis), offline store (file or spark).
        workspace: Folder of the local stores; empty in a cluster task.

    Returns:
        A ``RepoConfig`` (:func:`store_settings`, validated by Feast); nothing is written yet.
    """
    from feast.repo_config import RepoConfig

    _restore_feast_sqlite_timestamps()
    # Every path in the settings is absolute or a URI; repo_path only anchors relative ones.
    return RepoConfig(**store_settings(feast, workspace), repo_path=str(_local_state(workspace)))


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


def entity_type_of_values(values: pd.Series) -> EntityType | None:
    """The entity type a column of ids has: integers are ``int64``, strings ``string``, anything else None.

    A categorical column counts as the type of its categories; booleans, floats (an integer
    column with an empty value reads as floats) and columns mixing types are None.
    """
    import pandas as pd

    if isinstance(values.dtype, pd.CategoricalDtype):
        return entity_type_of_values(pd.Series(values.cat.categories))
    if pd.api.types.is_bool_dtype(values):
        return None
    if pd.api.types.is_integer_dtype(values):
        return "int64"
    if pd.api.types.infer_dtype(values, skipna=True) == "string":
        return "string"
    return None


def entity_type_of_arrow(kind: pa.DataType) -> EntityType | None:
    """The entity type of a Parquet/Arrow column type (what :func:`entity_type_of_values` gives once read)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_integer(kind):
        return "int64"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "string"
    return None


def resolve_entity_type(values: pd.Series, feast: FeastSpec, source: str, column: str) -> EntityType:
    """The entity type to apply for a snapshot's entity column: ``feast.entity_type``, checked, or the data's.

    Args:
        values: The entity column (no empty values: the caller checks those first).
        feast: Feast settings; ``entity_type`` None means "from the data".
        source: The file the column was read from, for messages.
        column: The entity column's name, for messages.

    Returns:
        ``"int64"`` or ``"string"``.

    Raises:
        DataError: The column holds neither integers nor strings, or not what ``feast.entity_type`` says.
    """
    found = entity_type_of_values(values)
    if feast.entity_type is not None:
        if found != feast.entity_type:
            expected = "integers" if feast.entity_type == "int64" else "strings"
            raise DataError(
                f"{source}: entity column {column!r} has dtype {values.dtype}, "
                f"but feast.entity_type is {feast.entity_type!r} (expected {expected})"
            )
        return feast.entity_type
    if found is None:
        raise DataError(
            f"{source}: entity column {column!r} has dtype {values.dtype}; expected {ENTITY_KINDS} "
            "(feast.entity_type is not set, so the type comes from the data)"
        )
    return found


def _entity_type_in(store: FeatureStore, spec: DatasetSpec, registry: str) -> EntityType | None:
    """The value type of the entity applied in ``store``'s registry; None when it is not applied yet.

    Raises:
        DataError: The applied entity has a value type ctpipe does not apply (someone else applied it).
    """
    from feast import ValueType
    from feast.errors import FeastObjectNotFoundException

    try:
        entity = store.get_entity(spec.entity_column)
    except FeastObjectNotFoundException:
        return None
    if entity.value_type == ValueType.INT64:
        return "int64"
    if entity.value_type == ValueType.STRING:
        return "string"
    raise DataError(
        f"{storage.redact(registry)}: Feast entity {spec.entity_column!r} has value type {entity.value_type.name}, "
        "expected INT64 or STRING (what ctpipe applies); set feast.entity_type and re-run the training pipeline"
    )


def recorded_entity_type(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> EntityType | None:
    """The entity type recorded in the Feast registry (applied by fetch-features); None without one.

    For callers that have no data to infer it from, such as ``feature_repo/features.py``.
    """
    from feast import FeatureStore

    registry = registry_location(feast, workspace)
    if not storage.exists(registry):
        return None
    return _entity_type_in(FeatureStore(config=repo_config(feast, workspace)), spec, registry)


def _unknown_entity_type(spec: DatasetSpec, feast: FeastSpec, workspace: str) -> ConfigError:
    return ConfigError(
        f"feast.entity_type is not set and the Feast registry {storage.redact(registry_location(feast, workspace))} "
        f"has no entity {spec.entity_column!r} yet, so its type is unknown",
        hint="Run the training pipeline once (fetch_features applies the entity with the data's type), "
        "or set feast.entity_type to 'int64' or 'string'.",
    )


def _fingerprint(spec: DatasetSpec, feast: FeastSpec, source_path: str, entity_type: EntityType) -> str:
    # The effective type, not feast.entity_type: leaving it out or naming what the data has is the same definition.
    payload = {
        "version": _DEFINITIONS_VERSION,
        "entity": [spec.entity_column, entity_type],
        "timestamp": spec.timestamp_column,
        "numeric": spec.numeric_features,
        "categorical": spec.categorical_features,
        "ttl_days": feast.ttl_days,
        "source": [feast.offline_store, source_path],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def definitions(
    spec: DatasetSpec, feast: FeastSpec, workspace: str, entity_type: EntityType | None = None
) -> list[Any]:
    """The Feast entity and feature view for ``spec`` (also what ``feature_repo/features.py`` exposes).

    Numeric features are ``Float64`` and categorical features ``String``; the label is never
    part of the feature view. The view carries a fingerprint tag of its inputs (with the
    effective entity type), so :func:`feature_store` re-applies only when something changed.

    Args:
        spec: The dataset spec (entity, timestamp and feature columns).
        feast: Feast settings (entity type, TTL, offline store).
        workspace: Folder of the local stores (the Feast root when ``feast.root`` is empty).
        entity_type: The entity's type, as found in the data; None for ``feast.entity_type`` or,
            when that is not set either, the type recorded in the registry.

    Returns:
        ``[entity, feature_view]``.

    Raises:
        ConfigError: No type is given, configured or recorded in the registry.
    """
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, String

    kind = entity_type or feast.entity_type or recorded_entity_type(spec, feast, workspace)
    if kind is None:
        raise _unknown_entity_type(spec, feast, workspace)
    value_type = ValueType.INT64 if kind == "int64" else ValueType.STRING
    entity = Entity(name=spec.entity_column, join_keys=[spec.entity_column], value_type=value_type)
    path = offline_folder(spec, feast, workspace)
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
        tags={_FINGERPRINT_TAG: _fingerprint(spec, feast, path, kind)},
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


def feature_store(
    spec: DatasetSpec, feast: FeastSpec, workspace: str, entity_type: EntityType | None = None
) -> FeatureStore:
    """A Feast store for the profile in ``feast``, with the generated definitions applied.

    Applying is idempotent and skipped when the registry already holds definitions with the
    same fingerprint.

    Args:
        spec: The dataset spec.
        feast: Feast settings.
        workspace: Folder of the local stores (the Feast root when ``feast.root`` is empty).
        entity_type: The data's entity type; None for ``feast.entity_type``, else the registry's.

    Returns:
        The ``feast.FeatureStore``.

    Raises:
        ConfigError: No entity type is given, configured or recorded in the registry.
    """
    return ensure_definitions(spec, feast, workspace, entity_type)[0]


def ensure_definitions(
    spec: DatasetSpec, feast: FeastSpec, workspace: str, entity_type: EntityType | None = None
) -> tuple[FeatureStore, bool]:
    """A Feast store with the generated definitions applied, and whether they were (re)applied just now.

    Args:
        spec: The dataset spec.
        feast: Feast settings.
        workspace: Folder of the local stores.
        entity_type: The data's entity type; None for ``feast.entity_type``, else the registry's.

    Raises:
        ConfigError: No entity type is given, configured or recorded in the registry.
    """
    from feast import FeatureStore

    folder = offline_folder(spec, feast, workspace)
    if not storage.is_remote(folder):  # an object store has no folders to create
        Path(folder).mkdir(parents=True, exist_ok=True)
    store = FeatureStore(config=repo_config(feast, workspace))
    kind = entity_type or feast.entity_type or _entity_type_in(store, spec, registry_location(feast, workspace))
    if kind is None:
        raise _unknown_entity_type(spec, feast, workspace)
    entity, view = definitions(spec, feast, workspace, kind)
    if _is_applied(store, entity, view):
        return store, False
    store.apply([entity, view])
    logger.info("feast definitions applied", extra={"feature_view": view.name, "project": feast.project})
    return store, True


def online_features(entity_ids: list[Any], spec: DatasetSpec, feast: FeastSpec, workspace: str) -> OnlineFeatures:
    """Latest online feature values for ``entity_ids``, fetched in one call.

    Args:
        entity_ids: Ids to look up: ints for an ``int64`` entity, strings for a ``string`` one (the type is
            ``feast.entity_type``, else the one recorded in the registry when the entity was applied).
        spec: The dataset spec.
        feast: Feast settings.
        workspace: Folder of the local stores (empty in a cluster pod).

    Returns:
        One row per id found (entity column, then features in spec order), and the ids with
        no online value.

    Raises:
        DataError: An id does not match the entity type, or the feature view is not registered yet.
    """
    from feast.errors import FeastObjectNotFoundException
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    # A configured type checks the ids before anything is read; otherwise the registry says, below.
    configured = feast.entity_type
    ids = list(entity_ids)
    if configured is not None:
        ids = _typed_ids(ids, spec, configured, f"feast.entity_type is {configured!r}")
    if not ids:
        return OnlineFeatures(rows=[], missing=[])
    view = feature_view_name(spec)
    registry = registry_location(feast, workspace)
    not_registered = DataError(
        f"feature view {view!r} is not registered in {storage.redact(registry)}; "
        "run the training pipeline (build_training_set) first"
    )
    store = _online_store(feast, workspace)
    if store is None:
        raise not_registered
    if configured is None:
        recorded = _recorded_entity_type(store, spec, registry)
        if recorded is None:
            raise not_registered
        ids = _typed_ids(ids, spec, recorded, f"the Feast registry records the entity as {recorded!r}")
    features = [f"{view}:{c}" for c in spec.feature_columns]
    entity_rows = [{spec.entity_column: entity_id} for entity_id in ids]
    try:
        response = store.get_online_features(features=features, entity_rows=entity_rows)
    except FeastObjectNotFoundException:
        # Applied since this store last read the registry: read it again, once.
        store.refresh_registry()
        _forget_entity_types(store)
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


def _online_store(feast: FeastSpec, workspace: str) -> FeatureStore | None:
    """This thread's cached FeatureStore for these settings (built on first use); None while there is no registry.

    A registry applied later (a new or changed feature view) is still seen: Feast's file
    registry, in its default ``sync`` cache mode, re-reads the file (or object) whenever it
    changed, and :func:`online_features` also refreshes once when a view is not found.
    """
    from feast import FeatureStore

    settings = store_settings(feast, workspace)  # first: a setting that cannot work is named before anything else
    registry = registry_location(feast, workspace)
    identity: list[int] | None = None
    if not storage.is_remote(registry):
        # With the registry file's identity: a workspace deleted and built again (a notebook, a test)
        # gets a new store, not one holding a connection to the deleted online database. Feast
        # rewrites the registry in place, so applying definitions keeps the same store.
        #
        # The registry's inode alone can be reused by the rebuilt file (nothing holds the deleted one
        # open), which handed out the old store. The sqlite online database's cannot: the old store's
        # connection keeps the deleted file's inode allocated, so a rebuilt database gets another one.
        if not Path(registry).is_file():
            return None
        identity = []
        for path in (Path(registry), _local_state(workspace) / "online.db"):
            with contextlib.suppress(FileNotFoundError):  # no online database until the first materialize
                stat = path.stat()
                identity += [stat.st_dev, stat.st_ino]
    key = json.dumps([settings, identity], sort_keys=True)
    stores: OrderedDict[str, FeatureStore] | None = getattr(_ONLINE_STORES, "stores", None)
    if stores is None:
        stores = _ONLINE_STORES.stores = OrderedDict()
    store = stores.get(key)
    if store is None:
        # A remote registry is looked for once per new store, not on every request (a round trip).
        if storage.is_remote(registry) and not storage.exists(registry):
            return None
        store = FeatureStore(config=repo_config(feast, workspace))
        stores[key] = store
        while len(stores) > _ONLINE_STORES_PER_THREAD:
            stores.popitem(last=False)  # least recently used; its connection closes with it
    else:
        _restore_feast_sqlite_timestamps()  # repo_config does this for a new store
    stores.move_to_end(key)
    return store


# The entity type each FeatureStore's registry records, per entity name: read once per store,
# not on every request. Weak keys, so a store evicted from _ONLINE_STORES takes its entry along;
# the lock because the stores of several threads share the dictionary.
_ENTITY_TYPES: weakref.WeakKeyDictionary[FeatureStore, dict[str, EntityType]] = weakref.WeakKeyDictionary()
_ENTITY_TYPES_LOCK = threading.Lock()


def _recorded_entity_type(store: FeatureStore, spec: DatasetSpec, registry: str) -> EntityType | None:
    """The entity type in ``store``'s registry, cached per store; read again once if it is not there yet."""
    with _ENTITY_TYPES_LOCK:
        cached = _ENTITY_TYPES.get(store, {}).get(spec.entity_column)
    if cached is not None:
        return cached
    found = _entity_type_in(store, spec, registry)
    if found is None:
        # Applied since this store last read the registry (the sync cache may not have looked yet).
        store.refresh_registry()
        found = _entity_type_in(store, spec, registry)
    if found is not None:
        with _ENTITY_TYPES_LOCK:
            _ENTITY_TYPES.setdefault(store, {})[spec.entity_column] = found
    return found


def _forget_entity_types(store: FeatureStore) -> None:
    """Drop ``store``'s cached entity types: its registry was read again and may have changed."""
    with _ENTITY_TYPES_LOCK:
        _ENTITY_TYPES.pop(store, None)


def _typed_ids(entity_ids: list[Any], spec: DatasetSpec, entity_type: EntityType, origin: str) -> list[Any]:
    """The ids as the entity's type: ints (refusing anything else) for ``int64``, strings for ``string``.

    Args:
        entity_ids: Ids as requested.
        spec: The dataset spec (the entity column, for messages).
        entity_type: The entity's type.
        origin: Where the type comes from, for messages ("feast.entity_type is 'int64'").

    Raises:
        DataError: An id is not an integer for an ``int64`` entity.
    """
    typed: list[Any] = []
    for entity_id in entity_ids:
        if entity_type == "string":
            typed.append(str(entity_id))
            continue
        try:
            if isinstance(entity_id, bool) or int(entity_id) != entity_id:
                raise ValueError
        except (TypeError, ValueError):
            raise DataError(
                f"entity id {entity_id!r} for column {spec.entity_column!r} is not an integer ({origin})"
            ) from None
        typed.append(int(entity_id))
    return typed
