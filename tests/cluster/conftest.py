"""The cluster-in-a-box tier: ctpipe's cluster profile run for real, without Kubernetes.

The containers tier's private dockerd and images (:mod:`tests.containers.fixtures`, imported
here, defined once) run every pipeline task, through kfp.local's ``DockerRunner`` on the host
network, and the predictor. The servers a cluster would have run on 127.0.0.1
(:mod:`tests.servers`): SeaweedFS as the object store, PostgreSQL under an MLflow tracking server
whose artifacts live in the object store, and Redis as Feast's online store.

The configuration is the shipped ``manifests/base/ctpipe.yaml`` with only what names the
cluster's servers changed: endpoints and bucket names (:func:`cluster_raw_config`). The object
store's keys are never in it; like the ``ctpipe-object-store`` Secret on a cluster, they reach
each container as environment variables (:attr:`Cluster.secret_env`).

Everything started here is stopped at the end of the session, on failure too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.config import CtpipeConfig, load_config
from tests.containers.fixtures import (
    base_image,
    build_commit,
    ca_bundle,
    cache,
    config,
    docker,
    images,
    registry,
    timings,
    wheelhouse,
)
from tests.data import churn_spec
from tests.servers import MlflowServer, PostgresServer, RedisServer, S3Server, free_port

# Importing a fixture into a conftest registers it for the tests below: one definition for both tiers.
__all__ = [
    "base_image",
    "build_commit",
    "ca_bundle",
    "cache",
    "config",
    "docker",
    "images",
    "registry",
    "timings",
    "wheelhouse",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO_ROOT / "manifests" / "base" / "ctpipe.yaml"
# The locations of the cluster configuration that name a bucket (dotted keys); feast.root only
# once FeastSpec has it.
LOCATION_KEYS = (
    "dataset.source",
    "infra.pipeline_root",
    "infra.reports_dir",
    "serving.inference_log_dir",
    "feast.root",
)


def _get(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value


def cluster_raw_config(
    shipped: dict[str, Any], suffix: str, tracking_uri: str, redis: str, workspace: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """The shipped cluster configuration pointed at this tier's servers; nothing else changes.

    Args:
        shipped: ``manifests/base/ctpipe.yaml`` as loaded.
        suffix: Makes each bucket name unique to this run (``<shipped bucket>-<suffix>``).
        tracking_uri: The MLflow server.
        redis: Feast's Redis (``host:port``).
        workspace: The folder of this machine's own state: kfp.local's pipeline root and run logs.

    Returns:
        The configuration mapping and the buckets it names (shipped name -> test name).
    """
    raw = yaml.safe_load(yaml.safe_dump(shipped))  # a deep copy
    buckets: dict[str, str] = {}
    for key in LOCATION_KEYS:
        location = _get(raw, key)
        if location is None:
            continue
        assert location.startswith("s3://"), f"{key}: the cluster configuration should name an s3:// location"
        bucket, _, rest = location.removeprefix("s3://").partition("/")
        buckets.setdefault(bucket, f"{bucket}-{suffix}")
        _set(raw, key, f"s3://{buckets[bucket]}/{rest}")
    raw["infra"]["tracking_uri"] = tracking_uri
    raw["feast"]["redis_connection_string"] = redis
    # kfp.local's own root (mounted into each task) and its logs; tasks get no other host folder.
    raw["infra"]["workspace"] = str(workspace)
    # The tier's data comes from tests/data.py, whose feature columns differ from the demo's the
    # shipped file lists: the columns follow the data, every name (entity, time, label) stays.
    spec = churn_spec("unused")
    for key in ("entity_column", "timestamp_column", "label_column"):
        assert raw["dataset"][key] == getattr(spec, key), key
    raw["dataset"]["numeric_features"] = list(spec.numeric_features)
    raw["dataset"]["categorical_features"] = list(spec.categorical_features)
    return raw, buckets


@dataclass
class Cluster:
    """The servers of the tier and the cluster configuration that names them."""

    config: CtpipeConfig
    config_path: Path
    s3: S3Server
    postgres: PostgresServer
    mlflow: MlflowServer
    redis: RedisServer
    buckets: dict[str, str]
    secret_name: str
    secret_data: dict[str, str]
    """The Secret itself (key -> value): a pod's ``envFrom`` turns each key into a variable."""
    secret_env: dict[str, str]
    """What ``infra.kubernetes.secrets`` gives each pipeline task: the Secret's keys mapped to variables."""
    logs: list[Path] = field(default_factory=list)
    """Every server log of the tier (dockerd's, task and container logs are added by the tests)."""

    @property
    def secret_key(self) -> str:
        """The object store's secret key, which no log, IR or manifest may contain."""
        return self.s3.secret_key


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Cluster]:
    """PostgreSQL, an MLflow server with S3 artifacts, Redis, the buckets, and the cluster configuration."""
    suffix = uuid.uuid4().hex[:8]
    base = tmp_path_factory.mktemp("cluster")
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    (secret,) = shipped["infra"]["kubernetes"]["secrets"]
    # The Secret's data, as an operator would create it (kubectl create secret generic ctpipe-object-store ...).
    secret_data = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint,
    }
    secret_env = {variable: secret_data[key] for key, variable in secret["env"].items()}

    started: list[Any] = []
    try:
        postgres = PostgresServer(base / "postgres")
        started.append(postgres)
        redis = RedisServer(base / "redis", free_port())
        started.append(redis)
        raw, buckets = cluster_raw_config(shipped, suffix, "http://127.0.0.1:0", redis.connection_string, base / "ws")
        for bucket in buckets.values():
            s3_server.create_bucket(bucket)
        artifacts_bucket = buckets.get("ctpipe-artifacts") or next(iter(buckets.values()))
        # Only the tracking server holds keys for MLflow's artifacts (docs/storage.md); MLflow's S3
        # repository reads its endpoint from MLFLOW_S3_ENDPOINT_URL.
        mlflow = MlflowServer(
            postgres.sqlalchemy_uri,
            base / "mlflow",
            artifacts_destination=f"s3://{artifacts_bucket}/mlflow",
            env={
                "AWS_ACCESS_KEY_ID": s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
                "AWS_DEFAULT_REGION": s3_server.region,
                "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true",
            },
        )
        started.append(mlflow)
        raw["infra"]["tracking_uri"] = mlflow.uri
        config_path = base / "ctpipe.yaml"
        config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        (base / "ws").mkdir()
        yield Cluster(
            config=load_config(config_path),
            config_path=config_path,
            s3=s3_server,
            postgres=postgres,
            mlflow=mlflow,
            redis=redis,
            buckets=buckets,
            secret_name=secret["secret_name"],
            secret_data=secret_data,
            secret_env=secret_env,
            logs=[
                s3_server.process.log_path,
                postgres.process.log_path,
                mlflow.process.log_path,
                redis.process.log_path,
            ],
        )
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture(scope="session")
def host_env(cluster: Cluster) -> Iterator[dict[str, str]]:
    """This test process reaches the object store as a pod does: the Secret's variables, no ~/.aws."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", os.devnull)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name, value in cluster.secret_env.items():
            patch.setenv(name, value)
        yield dict(cluster.secret_env)
