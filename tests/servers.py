"""Real servers for the tests: install from Debian's packages if missing, start on 127.0.0.1, stop after.

Every server a test needs (Redis, PostgreSQL, an MLflow server, a Spark master, dockerd) goes
through this one seam, so each is installed, started, waited for and stopped the same way, and a
test stops only the processes it started itself.

Installing needs root and ``apt-get``. Where that is not possible the test is skipped with the
reason, except under CI (``CI`` set), where a missing server is a failure: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

_APT_UPDATED = False
# Wait for another apt/dpkg (a parallel test run) instead of failing on its lock.
_APT_LOCK_WAIT = ["-o", "DPkg::Lock::Timeout=600"]


def unavailable(reason: str) -> None:
    """Skip the test for a missing server, or fail under CI, where every server must run."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test but cannot: {reason}")
    pytest.skip(reason)


def ensure_debian_package(command: str, package: str, search_dirs: Sequence[str] = ()) -> str:
    """The path of ``command``, installing Debian's ``package`` first if it is missing.

    Args:
        command: Executable name, looked up on PATH and then in ``search_dirs``.
        package: The Debian package that provides it.
        search_dirs: Extra folders to look in (e.g. PostgreSQL's versioned ``bin``), globs allowed.

    Returns:
        The absolute path of the executable.
    """
    global _APT_UPDATED

    def find() -> str | None:
        found = shutil.which(command)
        if found:
            return found
        for pattern in search_dirs:
            for folder in sorted(Path("/").glob(pattern.lstrip("/")), reverse=True):
                candidate = folder / command
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return str(candidate)
        return None

    path = find()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        unavailable(f"{command} is not installed and this user cannot apt-get install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _APT_UPDATED:
        subprocess.run(["apt-get", *_APT_LOCK_WAIT, "update", "-qq"], check=False, env=env, capture_output=True)
        _APT_UPDATED = True
    result = subprocess.run(
        ["apt-get", *_APT_LOCK_WAIT, "install", "-y", "-qq", "--no-install-recommends", package],
        env=env,
        capture_output=True,
        text=True,
    )
    path = find()
    if result.returncode != 0 or not path:
        unavailable(f"apt-get install {package} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    assert path is not None
    return path


def wait_for_port(
    port: int, host: str = "127.0.0.1", timeout: float = 60.0, process: ServerProcess | None = None
) -> None:
    """Block until something accepts TCP connections on ``host:port``.

    Raises:
        TimeoutError: Nothing listened in time (or the process exited first); the message has its log tail.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise TimeoutError(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    tail = process.log_tail() if process is not None else ""
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout:.0f}s\n{tail}")


class ServerProcess:
    """A server process this test session started, with its output in a log file.

    It runs in its own process group so that :meth:`stop` ends it and its children, and
    nothing else.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        """Start ``args`` in the background.

        Args:
            name: What it is, for messages.
            args: The command line.
            log_path: Where its stdout and stderr go.
            env: Extra environment variables.
            cwd: Working directory.
            user: Run as this user (PostgreSQL refuses to run as root).
        """
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            list(args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            user=user,
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout`` seconds."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self._log.close()


# ---------------------------------------------------------------------------------------------
# dockerd and a Debian-built base image (the containers tier, tests/containers/)

DOCKER_STORAGE_DRIVERS = ("overlay2", "fuse-overlayfs", "vfs")
DEBIAN_BASE_SUITE = "bookworm"
DEBIAN_BASE_PACKAGES = ("python3.11", "python3-venv", "openjdk-17-jre-headless", "ca-certificates")


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
                server = self._start(cache, log_dir, driver, bridge)
                if self._ready(server):
                    self.server, self.storage_driver, self.bridge = server, driver, bridge
                    self._owner.write_text(f"{server.popen.pid}\n")
                    return
                attempts.append(f"--storage-driver={driver} bridge={bridge}:\n{server.log_tail(8)}")
                server.stop()
        self._release()
        raise RuntimeError("dockerd did not start with any storage driver:\n" + "\n".join(attempts))

    def _start(self, cache: Path, log_dir: Path, driver: str, bridge: bool) -> ServerProcess:
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
        return ServerProcess(f"dockerd ({driver})", args, log_dir / f"dockerd-{driver}.log")

    def _ready(self, server: ServerProcess, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.popen.poll() is not None:
                return False
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                # A storage driver can start yet fail at the first layer: prove it with an import.
                probe = subprocess.run(
                    [self.cli, "import", "-", "ctpipe-test/probe:1"],
                    input=_empty_tar(),
                    env=self.env,
                    capture_output=True,
                    check=False,
                )
                return probe.returncode == 0
            time.sleep(0.3)
        return False

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


def apt_mirror(suite: str = DEBIAN_BASE_SUITE) -> str:
    """The Debian mirror this machine's apt uses for ``suite``, read from its sources at run time.

    Reads ``/etc/apt/sources.list.d/*.sources`` (deb822) and ``/etc/apt/sources.list``.
    """
    import re

    candidates: list[tuple[str, list[str]]] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for paragraph in path.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in paragraph.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^\]]*\]", " ", line).split()  # drop "[signed-by=...]" options
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], [words[2]]))
    for uri, suites in candidates:
        if suite in suites and uri.startswith(("http://", "https://")):
            return uri
    unavailable(f"no apt source for Debian {suite} on this machine to debootstrap a base image from")
    raise AssertionError  # unreachable: unavailable() raises


def _remove_rootfs(root: Path) -> None:
    """Delete a debootstrap target, first unmounting what debootstrap mounted in it (/proc, /sys).

    Never recurse into a mounted host filesystem: if anything stays mounted, keep the folder.
    """
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True, check=False)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    if any(m.startswith(prefix) for m in mounts):
        raise RuntimeError(f"{root} still has mounts inside; remove it by hand after unmounting them")
    shutil.rmtree(root, ignore_errors=True)


def debian_base_image(daemon: DockerDaemon, cache: Path, tag: str) -> str:
    """A Python 3.11 + Java 17 base image built from Debian packages (debootstrap + ``docker import``).

    The root filesystem is cached as a tarball keyed by the suite and package list, and the
    image carries that key as a label, so later runs reuse the image or re-import the tarball.

    Returns:
        ``tag``.
    """
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([DEBIAN_BASE_SUITE, *DEBIAN_BASE_PACKAGES]).encode()).hexdigest()[:12]
    inspect = daemon.docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag, check=False)
    if inspect.returncode == 0 and (json.loads(inspect.stdout or "null") or {}).get("ctpipe.base-key") == key:
        return tag
    tarball = cache / f"debian-{DEBIAN_BASE_SUITE}-{key}.tar"
    if not tarball.is_file():
        debootstrap = ensure_debian_package("debootstrap", "debootstrap", ["/usr/sbin"])
        root = cache / f"rootfs-{key}.tmp"
        if root.exists():
            _remove_rootfs(root)
        result = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(DEBIAN_BASE_PACKAGES)}",
                DEBIAN_BASE_SUITE,
                str(root),
                apt_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            _remove_rootfs(root)
            raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            for item in (root / junk).glob("*"):
                if item.is_file():
                    item.unlink()
                elif item.is_dir() and item.name != "partial":
                    shutil.rmtree(item, ignore_errors=True)
        partial = tarball.with_suffix(".tar.tmp")
        subprocess.run(
            ["tar", "--one-file-system", "-C", str(root), "-cf", str(partial), "."], check=True, capture_output=True
        )
        partial.replace(tarball)
        _remove_rootfs(root)
    daemon.docker(
        "import",
        "--change",
        f"LABEL ctpipe.base-key={key}",
        "--change",
        "ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["python3"]',
        str(tarball),
        tag,
    )
    return tag
