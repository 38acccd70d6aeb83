"""A throwaway ``redis-server`` on 127.0.0.1 (Feast's Redis online store)."""

from __future__ import annotations

from pathlib import Path

from tests.servers.process import ensure_debian_package, start_and_wait


class RedisServer:
    """A throwaway ``redis-server`` on 127.0.0.1: no persistence, its own folder, stopped by :meth:`stop`."""

    def __init__(self, folder: Path, port: int) -> None:
        """Install Debian's ``redis-server`` if needed and start it on ``port``; return once it accepts connections.

        Args:
            folder: Working folder for the server (its log and any files it writes).
            port: A free TCP port on 127.0.0.1.
        """
        binary = ensure_debian_package("redis-server", "redis-server")
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.process = start_and_wait(
            "redis-server",
            # No snapshots, no append-only file: nothing outlives the test session.
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
            ],
            folder / "redis.log",
            cwd=folder,
            port=port,
            timeout=30,
        )

    @property
    def connection_string(self) -> str:
        """``host:port``, the form Feast's Redis online store takes."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the server this object started."""
        self.process.stop()
