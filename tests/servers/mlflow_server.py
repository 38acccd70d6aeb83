"""An ``mlflow server`` on 127.0.0.1 (on the PostgreSQL of :mod:`tests.servers.postgres_server`)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from tests.servers.process import ServerProcess, free_port, start_and_wait


class MlflowServer:
    """``mlflow server`` on 127.0.0.1: metadata in a database, artifacts served from a folder or an object store.

    The server proxies every artifact request (``--serve-artifacts``): clients see ``mlflow-artifacts:/``
    URIs and need no object-store credentials; only this process gets them, through its environment.
    """

    def __init__(
        self,
        backend_store_uri: str,
        base: Path,
        artifacts_destination: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start the server and wait until its health endpoint answers.

        Args:
            backend_store_uri: E.g. ``postgresql://user@127.0.0.1:PORT/mlflow``.
            base: Folder for the log, the working directory and (by default) the artifact store.
            artifacts_destination: Where the server stores artifacts, e.g. ``s3://bucket/prefix``;
                ``base/mlflow-artifacts`` if not given.
            env: Extra environment of the server process only, e.g. ``AWS_ACCESS_KEY_ID``,
                ``AWS_SECRET_ACCESS_KEY`` and ``MLFLOW_S3_ENDPOINT_URL`` for an S3 destination.
        """
        import sys

        self.port = free_port()
        self.base = base
        self.artifacts = base / "mlflow-artifacts"
        if artifacts_destination is None:
            self.artifacts.mkdir(parents=True, exist_ok=True)
        self.artifacts_destination = artifacts_destination or str(self.artifacts)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = start_and_wait(
            "mlflow server",
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                backend_store_uri,
                "--artifacts-destination",
                self.artifacts_destination,
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            base / "mlflow-server.log",
            # No job runner: it starts a handful of huey consumers the registry does not need.
            env={"MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
            # A default ./mlartifacts (or mlruns/) would land in base, never in the caller's directory.
            cwd=base,
            port=self.port,
            timeout=180,
            ready=self._wait_healthy,
        )

    def _wait_healthy(self, process: ServerProcess) -> None:
        """Its port opens before the app behind it answers: wait (60 s at most) until ``/health`` does."""
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.uri}/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or process.popen.poll() is not None:
                raise TimeoutError(f"mlflow server at {self.uri} is not healthy:\n{process.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server, then anything of its process group that outlived it."""
        self.process.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.popen.pid, signal.SIGKILL)
