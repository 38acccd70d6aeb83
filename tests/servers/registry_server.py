"""A throwaway container registry on 127.0.0.1: Debian's ``docker-registry`` (the CNCF distribution registry).

The containers tier pushes the images it built here and uses the digests the registry returns,
as a release would with the team's registry (``python -m pipelines.release push``). dockerd
treats registries on 127.0.0.0/8 as insecure by default, so plain HTTP on loopback needs no
daemon setting.
"""

from __future__ import annotations

from pathlib import Path

import requests
import yaml

from tests.servers.process import ensure_debian_package, start_and_wait

# The manifest types a pushed image may have; the registry answers with the one it stored.
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


class RegistryServer:
    """``docker-registry serve`` on 127.0.0.1 with its storage in its own folder, stopped by :meth:`stop`."""

    def __init__(self, folder: Path, port: int) -> None:
        """Install Debian's ``docker-registry`` if needed and start it on ``port``; return once it answers.

        Args:
            folder: Working folder (the configuration, the stored blobs and the log).
            port: A free TCP port on 127.0.0.1.
        """
        binary = ensure_debian_package("docker-registry", "docker-registry")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(folder / "data")}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
        }
        (folder / "config.yml").write_text(yaml.safe_dump(config))
        self.process = start_and_wait(
            "docker-registry",
            [binary, "serve", str(folder / "config.yml")],
            folder / "registry.log",
            cwd=folder,
            port=port,
            timeout=30,
        )

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    def manifest_digest(self, repository: str, reference: str) -> str:
        """The digest the registry itself reports for ``repository:reference`` (its Docker-Content-Digest header)."""
        response = requests.head(
            f"http://{self.address}/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            timeout=10,
        )
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]

    def stop(self) -> None:
        """Stop the registry this object started."""
        self.process.stop()
