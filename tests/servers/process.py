"""What every test server shares: installing it from Debian, a free port, starting and stopping its process.

A server module starts its process with :func:`start_and_wait`, which returns only once the
server answers and otherwise stops what it started, and stops it with :meth:`ServerProcess.stop`.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (see :func:`free_ports`)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing is bound to right now.

    Two things made a port chosen by binding port 0 collide with a server's own bind:
    the kernel may hand the same ephemeral port to two calls in a row (a SeaweedFS server
    got one port for its volume server and its filer's gRPC), and an outgoing connection
    of any process may take an ephemeral port before the server binds it. So every port
    is held until all are chosen, and they are drawn at random from below the kernel's
    ephemeral range, where no outgoing connection lands.

    Raises:
        RuntimeError: ``count`` free ports were not found.
    """
    low = _ephemeral_range_start()
    pool = range(_PORT_FLOOR, low) if low - _PORT_FLOOR >= 1000 else None  # else let the kernel choose
    held: list[socket.socket] = []
    try:
        for _attempt in range(50 * count):
            if len(held) == count:
                break
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", random.choice(pool) if pool else 0))
            except OSError:  # bound by something else, or lingering in TIME_WAIT
                sock.close()
                continue
            held.append(sock)
        if len(held) < count:
            raise RuntimeError(f"found {len(held)} free ports on 127.0.0.1, needed {count}")
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


# Below this are well-known and registered services' ports.
_PORT_FLOOR = 20000


def _ephemeral_range_start() -> int:
    """The first port of the kernel's range for outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


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


def start_and_wait(
    name: str,
    args: Sequence[str],
    log_path: Path,
    *,
    port: int | None,
    timeout: float = 60.0,
    ready: Callable[[ServerProcess], object] | None = None,
    stop_timeout: float = 20.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> ServerProcess:
    """Start ``args`` as a :class:`ServerProcess` and return it once it answers.

    It answers when something accepts TCP connections on ``127.0.0.1:port`` within ``timeout``
    seconds, and then ``ready(process)`` returns. If either fails (or the test run is interrupted),
    the process is stopped before the error goes on: a server that never became ready must not
    outlive the test that started it.

    Args:
        name: What it is, for messages.
        args: The command line.
        log_path: Where its stdout and stderr go.
        port: The port on 127.0.0.1 the server listens on; None to rely on ``ready`` alone.
        timeout: Seconds to wait for the port.
        ready: A further check after the port opened (a health probe); it raises, with the log
            tail in its message, when the server never answers it.
        stop_timeout: Seconds :meth:`ServerProcess.stop` waits after SIGTERM when it must stop it.
        env: Extra environment variables.
        cwd: Working directory.
        user: Run as this user.

    Returns:
        The running process.

    Raises:
        TimeoutError: Nothing listened on ``port`` in time, or the process exited first; the
            message has its log tail. Whatever ``ready`` raises goes on unchanged.
    """
    process = ServerProcess(name, args, log_path, env=env, cwd=cwd, user=user)
    try:
        if port is not None:
            wait_for_port(port, process=process, timeout=timeout)
        if ready is not None:
            ready(process)
    except BaseException:
        process.stop(timeout=stop_timeout)
        raise
    return process
