"""The fixtures of the containers tier: a real dockerd, a Debian-built base image, both ctpipe images built on it.

Defined once here and imported by the conftest of each tier that needs them: ``tests/containers``
and ``tests/cluster`` (which runs the cluster profile on the same daemon and images).

Everything expensive is cached outside the repository (``tests.servers.containers_cache()``,
default ``~/.cache/ctpipe-containers``): dockerd's data-root (so image layers survive), the
debootstrapped root filesystem (keyed by suite and packages) and the wheelhouse (keyed by the
lock files). A repeat run rebuilds only what changed.

If this machine cannot run containers at all (no root to install docker.io, a kernel on which
no storage driver works, no Debian mirror to debootstrap from) the tier is skipped with the
reason. That is the machine's limit, not a defect of ctpipe, so it is a skip even under CI;
set ``CTPIPE_REQUIRE_CONTAINERS=1`` to make it a failure. A failing build or a wrong answer
from an image is always a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.config import CtpipeConfig, load_config
from pipelines.images import build_images, build_wheelhouse, git_commit, lock_key
from pipelines.release import push_images
from tests.servers import DockerDaemon, RegistryServer, containers_cache, debian_base_image, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_TAG = "ctpipe-test/python:3.11-bookworm"
# Looks like a PEM bundle; the build must mount it as a secret and never keep it in a layer.
CA_MARKER = "ctpipe-test-proxy-ca-7f3a"


def not_runnable(reason: str) -> None:
    """Skip: this machine cannot run containers (fail instead with CTPIPE_REQUIRE_CONTAINERS=1)."""
    message = f"containers tier NOT RUN on this machine: {reason}"
    if os.environ.get("CTPIPE_REQUIRE_CONTAINERS"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def machine_limits(what: str) -> Iterator[None]:
    """Turn "this machine cannot" (no root for apt, no mirror, dockerd refused) into not_runnable.

    ``tests.servers`` fails under CI when it cannot install a package; for this tier that is the
    machine's limit, so it becomes a skip (or a failure with CTPIPE_REQUIRE_CONTAINERS=1).
    """
    try:
        yield
    except (RuntimeError, pytest.fail.Exception, pytest.skip.Exception) as exc:
        not_runnable(f"{what}: {exc}")


class Timings:
    """Seconds per setup phase, written to out/containers/timings.json for the report."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def measure(self, name: str, started: float) -> None:
        self.values[name] = round(time.monotonic() - started, 1)
        out = REPO_ROOT / "out" / "containers"
        out.mkdir(parents=True, exist_ok=True)
        (out / "timings.json").write_text(json.dumps(self.values, indent=2) + "\n")


@pytest.fixture(scope="session")
def timings() -> Timings:
    return Timings()


@pytest.fixture(scope="session")
def cache() -> Path:
    return containers_cache()


@pytest.fixture(scope="session")
def docker(cache: Path, tmp_path_factory: pytest.TempPathFactory, timings: Timings) -> Iterator[DockerDaemon]:
    started = time.monotonic()
    with machine_limits("cannot start dockerd"):
        daemon = DockerDaemon(cache, tmp_path_factory.mktemp("dockerd-logs"))
    timings.measure("dockerd_start", started)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A container registry on 127.0.0.1 (Debian's docker-registry): the images are pushed and named by digest."""
    with machine_limits("cannot start a container registry"):
        server = RegistryServer(tmp_path_factory.mktemp("registry"), free_port())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_image(docker: DockerDaemon, cache: Path, timings: Timings, registry: RegistryServer) -> str:
    """The Debian-built base, pushed to the registry and named by the digest it returned (as BASE_IMAGE is)."""
    started = time.monotonic()
    with machine_limits("cannot build the Debian base image"):
        tag = debian_base_image(docker, cache, BASE_TAG)
    pushed = push_images({"base": tag}, registry.address, docker.cli, docker.env)
    timings.measure("base_image", started)
    return pushed["base"]


@pytest.fixture(scope="session")
def wheelhouse(cache: Path, timings: Timings) -> Path:
    from components.common.errors import ConfigError

    started = time.monotonic()
    try:
        path = build_wheelhouse(cache / f"wheelhouse-{lock_key()}")
    except ConfigError as exc:
        not_runnable(f"cannot fill the wheelhouse from the package index: {exc}")
    timings.measure("wheelhouse", started)
    return path


@pytest.fixture(scope="session")
def config() -> CtpipeConfig:
    return load_config(REPO_ROOT / "ctpipe.yaml")


@pytest.fixture(scope="session")
def ca_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "proxy-ca.pem"
    path.write_text(f"-----BEGIN CERTIFICATE-----\n{CA_MARKER}\n-----END CERTIFICATE-----\n")
    return path


@pytest.fixture(scope="session")
def build_commit() -> str:
    """The commit the images are labelled with, read once (a commit made during the build is not it)."""
    return git_commit()


@pytest.fixture(scope="session")
def images(
    build_commit: str,
    docker: DockerDaemon,
    base_image: str,
    wheelhouse: Path,
    config: CtpipeConfig,
    ca_bundle: Path,
    cache: Path,
    timings: Timings,
) -> dict[str, str]:
    """Both images, built exactly as ``make images`` does, with no network inside the build."""
    started = time.monotonic()
    log = REPO_ROOT / "out" / "containers" / "build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    built = build_images(
        config,
        wheelhouse,
        docker=docker.cli,
        base_image=base_image,
        ca_bundle=ca_bundle,
        network="none",
        context=cache / "context",
        env=docker.env,
        log=log,
        commit=build_commit,
    )
    # Older builds of the same tags linger as dangling images and stale build cache: drop them so
    # the cached data-root stays at about one build's size.
    docker.docker("image", "prune", "--force", check=False)
    docker.docker("builder", "prune", "--force", "--keep-storage", "6GB", check=False)
    for kind, tag in built.items():
        size = docker.docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
        timings.values[f"{kind}_image_mb"] = round(int(size) / 1e6)
    timings.measure("build_images", started)
    return dict(built)


@pytest.fixture(scope="session")
def released(
    images: dict[str, str], docker: DockerDaemon, registry: RegistryServer, timings: Timings
) -> dict[str, str]:
    """Both images pushed to the registry: kind -> ``127.0.0.1:PORT/ctpipe/<kind>@sha256:...`` it returned."""
    started = time.monotonic()
    pushed = push_images(images, registry.address, docker.cli, docker.env)
    timings.measure("push_images", started)
    return dict(pushed)
