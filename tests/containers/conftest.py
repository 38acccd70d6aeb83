"""The containers tier's fixtures, defined in :mod:`tests.containers.fixtures` (shared with ``tests/cluster``)."""

from tests.containers.fixtures import (
    CA_MARKER,
    base_image,
    build_commit,
    ca_bundle,
    cache,
    config,
    docker,
    images,
    registry,
    released,
    timings,
    wheelhouse,
)

# Importing a fixture into a conftest registers it for the tests below; CA_MARKER is for test_images.
__all__ = [
    "CA_MARKER",
    "base_image",
    "build_commit",
    "ca_bundle",
    "cache",
    "config",
    "docker",
    "images",
    "registry",
    "released",
    "timings",
    "wheelhouse",
]
