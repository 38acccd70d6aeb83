"""A private ``dockerd`` for the containers tier (``tests/containers/``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.servers.process import ServerProcess, ensure_debian_package, start_and_wait, unavailable

DOCKER_STORAGE_DRIVERS = ("overlay2", "fuse-overlayfs", "vfs")


class _NotReady(RuntimeError):
    """One dockerd configuration did not come up; the message is the tail of its log."""


def containers_cache() -> Path:
    """Where the containers tier keeps dockerd's data, the base image tarball and the wheelhouse."""
    root = os.environ.get("CTPIPE_CONTAINERS_CACHE") or Path.home() / ".cache" / "ctpipe-containers"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def debian_docker_cli() -> str:
    """The docker CLI shipped with Debian's ``docker.io`` (it builds with BuildKit without buildx).

    A newer CLI elsewhere on PATH may lack the buildx plugin, which ``DOCKER_BUILDKIT=1`` then needs.
    """
    ensure_debian_package("dockerd", "docker.io", ["/usr/sbin"])
    listing = subprocess.run(["dpkg-query", "-L", "docker.io"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        if line.endswith("/bin/docker") and os.access(line, os.X_OK):
            return line
    found = shutil.which("docker")
    if not found:
        unavailable("docker.io is installed but has no docker CLI")
    assert found is not None
    return found


class DockerDaemon:
    """A ``dockerd`` this session started: own data-root (cached), exec-root and socket.

    It listens only on its unix socket, so it never clashes with a system daemon's socket;
    its containers reach the host only through ports published on 127.0.0.1.
    """

    def __init__(self, cache: Path, log_dir: Path) -> None:
        """Start dockerd, trying storage drivers (and bridge networking) until one works.

        Raises:
            RuntimeError: No configuration starts on this machine; the message has each attempt's log tail.
        """
        import fcntl
        import tempfile

        self.dockerd = ensure_debian_package("dockerd", "docker.io", ["/usr/sbin"])
        self.cli = debian_docker_cli()
        # One daemon per data-root: a second test session waits here instead of corrupting it.
        self._lock = (cache / "dockerd.lock").open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self._owner = cache / "dockerd.owner"
        _stop_stale_dockerd(self._owner, cache / "dockerd")
        # unix socket paths are limited to 108 bytes, so the runtime folder is short and in /tmp.
        self.run_dir = Path(tempfile.mkdtemp(prefix="ctpd-"))
        self.socket = self.run_dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.bridge = True
        attempts: list[str] = []
        for driver in DOCKER_STORAGE_DRIVERS:
            if driver == "fuse-overlayfs" and not shutil.which("fuse-overlayfs"):
                try:
                    ensure_debian_package("fuse-overlayfs", "fuse-overlayfs")
                except pytest.skip.Exception:
                    continue
            for bridge in (True, False):
                try:  # start_and_wait stops a dockerd that does not come up, before the next attempt
                    server = start_and_wait(
                        f"dockerd ({driver})",
                        self._args(cache, driver, bridge),
                        log_dir / f"dockerd-{driver}.log",
                        port=None,  # it listens on its unix socket only
                        ready=self._ready,
                    )
                except _NotReady as exc:
                    attempts.append(f"--storage-driver={driver} bridge={bridge}:\n{exc}")
                    continue
                self.server, self.storage_driver, self.bridge = server, driver, bridge
                self._owner.write_text(f"{server.popen.pid}\n")
                return
        self._release()
        raise RuntimeError("dockerd did not start with any storage driver:\n" + "\n".join(attempts))

    def _args(self, cache: Path, driver: str, bridge: bool) -> list[str]:
        """The dockerd command line for one attempt (and no socket left from the attempt before)."""
        self.socket.unlink(missing_ok=True)
        args = [
            self.dockerd,
            f"--data-root={cache / 'dockerd'}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--pidfile={self.run_dir / 'dockerd.pid'}",
            f"--host={self.host}",
            f"--storage-driver={driver}",
            # No netfilter changes on the host: containers get no outbound NAT, published ports
            # go through docker-proxy on 127.0.0.1.
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
        ]
        if not bridge:
            args.append("--bridge=none")
        return args

    def _ready(self, server: ServerProcess, timeout: float = 60.0) -> None:
        """Wait until ``server`` answers on its socket and can store a layer.

        Raises:
            _NotReady: It exited, did not answer in ``timeout`` seconds, or could not import a layer.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.popen.poll() is not None:
                break
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                # A storage driver can start yet fail at the first layer: prove it with an import.
                probe = subprocess.run(
                    [self.cli, "import", "-", "ctpipe-test/probe:1"],
                    input=_empty_tar(),
                    env=self.env,
                    capture_output=True,
                    check=False,
                )
                if probe.returncode == 0:
                    return
                break
            time.sleep(0.3)
        raise _NotReady(server.log_tail(8))

    @property
    def env(self) -> dict[str, str]:
        """Environment for docker clients (the CLI, docker-py as used by kfp.local) of this daemon."""
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this daemon.

        Raises:
            RuntimeError: ``check`` and a non-zero exit; the message has the command and its output.
        """
        result = subprocess.run(
            [self.cli, *args], env=self.env, capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def _release(self) -> None:
        import fcntl

        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def stop(self) -> None:
        """Stop the daemon (it stops its containerd) and release the data-root."""
        self.server.stop(timeout=30)
        self._owner.unlink(missing_ok=True)
        self._release()


def _stop_stale_dockerd(owner: Path, data_root: Path) -> None:
    """Stop a dockerd an earlier, killed test session left running on our data-root.

    Only the pid recorded in ``owner`` is signalled, and only if its command line is dockerd
    with this data-root, so nothing else is ever touched.
    """
    try:
        pid = int(owner.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        owner.unlink(missing_ok=True)
        return
    if "dockerd" in cmdline and f"--data-root={data_root}" in cmdline:
        import contextlib

        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # ServerProcess started it as a process-group leader
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    owner.unlink(missing_ok=True)


def _empty_tar() -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("probe")
        info.size = 0
        tar.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()
