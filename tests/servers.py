"""Real servers for the tests: install from Debian's packages if missing, start on 127.0.0.1, stop after.

Every server a test needs (Redis, PostgreSQL, an MLflow server, a Spark master, dockerd) goes
through this one seam, so each is installed, started, waited for and stopped the same way, and a
test stops only the processes it started itself.

Installing needs root and ``apt-get``. Where that is not possible the test is skipped with the
reason, except under CI (``CI`` set), where a missing server is a failure: CI must run them.
"""

from __future__ import annotations

import contextlib
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


class SparkStandaloneCluster:
    """A Spark standalone master and workers on 127.0.0.1, started with the pyspark package's ``spark-class``.

    Every daemon binds 127.0.0.1 (``SPARK_LOCAL_IP``) on free ports, keeps its work folder
    under ``root`` and runs in its own process group, so :meth:`stop` ends exactly these
    processes and the executors they launched.
    """

    def __init__(self, root: Path, workers: int = 2, cores: int = 1, memory: str = "1g") -> None:
        """Start a master and ``workers`` workers, and wait until every worker has registered.

        Args:
            root: Folder for logs and the workers' work folders.
            workers: Number of workers.
            cores: Cores each worker offers.
            memory: Memory each worker offers (executors default to 1g, so at least that).
        """
        import json
        import urllib.request

        from pyspark.find_spark_home import _find_spark_home

        spark_class = Path(_find_spark_home()) / "bin" / "spark-class"
        if not os.access(spark_class, os.X_OK):
            unavailable(f"{spark_class} is missing or not executable")
        if not shutil.which("java"):
            unavailable("java is not installed; Spark needs Java 17+")

        def port() -> int:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                return int(sock.getsockname()[1])

        env = {"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(root / "logs"), "SPARK_NO_DAEMONIZE": "1"}
        self.port, self.webui_port = port(), port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.processes: list[ServerProcess] = []
        try:
            master = ServerProcess(
                "spark-master",
                [
                    str(spark_class),
                    "org.apache.spark.deploy.master.Master",
                    *("--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.webui_port)),
                ],
                root / "master.log",
                env=env,
            )
            self.processes.append(master)
            wait_for_port(self.port, process=master)
            wait_for_port(self.webui_port, process=master)
            for index in range(workers):
                work_dir = root / f"worker-{index}"
                work_dir.mkdir(parents=True, exist_ok=True)
                self.processes.append(
                    ServerProcess(
                        f"spark-worker-{index}",
                        [
                            str(spark_class),
                            "org.apache.spark.deploy.worker.Worker",
                            *("--host", "127.0.0.1", "--port", str(port()), "--webui-port", str(port())),
                            *("--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir), self.url),
                        ],
                        root / f"worker-{index}.log",
                        env=env,
                    )
                )
            # The master's JSON status lists the workers that registered.
            deadline = time.monotonic() + 120
            alive = 0
            while time.monotonic() < deadline:
                for process in self.processes:
                    if process.popen.poll() is not None:
                        raise RuntimeError(
                            f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}"
                        )
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/", timeout=2) as response:
                        alive = int(json.load(response).get("aliveworkers", 0))
                except OSError:
                    alive = 0
                if alive >= workers:
                    break
                time.sleep(0.5)
            else:
                raise TimeoutError(f"only {alive} of {workers} Spark workers registered:\n{master.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the workers (and their executors), then the master."""
        for process in reversed(self.processes):
            process.stop()


# --- PostgreSQL and an MLflow tracking server on it (the cluster-like MLflow profile) ---------


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temporary folder, on 127.0.0.1 and a free port.

    PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres``
    system user (created with ``useradd`` if the Debian package did not). Authentication is
    ``trust`` for 127.0.0.1: it is a test database that lives as long as the test session.
    """

    def __init__(self, base: Path, database: str = "mlflow", user: str = "ctpipe") -> None:
        """Initialise a cluster, start it and create ``database``.

        Args:
            base: Folder for its log (the data folder is a fresh one under the system temp dir).
            database: Database to create.
            user: PostgreSQL superuser name.
        """
        import tempfile

        search = ["/usr/lib/postgresql/*/bin"]
        initdb = ensure_debian_package("initdb", "postgresql", search_dirs=search)
        postgres = str(Path(initdb).with_name("postgres"))
        self.os_user = _postgres_os_user()
        # Under root, base (pytest's tmp, mode 0700) is unreadable for postgres: use a fresh temp dir.
        self.root = Path(tempfile.mkdtemp(prefix="ctpipe-pg-"))
        data, sockets = self.root / "data", self.root / "sockets"
        for folder in (data, sockets):
            folder.mkdir()
            if self.os_user is not None:
                shutil.chown(folder, self.os_user, self.os_user)
        if self.os_user is not None:
            shutil.chown(self.root, self.os_user, self.os_user)
        init = subprocess.run(
            [initdb, "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            user=self.os_user,
        )
        if init.returncode != 0:
            unavailable(f"initdb failed (exit {init.returncode}): {init.stderr.strip()[-500:]}")
        from tests.helpers import free_port

        self.port = free_port()
        self.process = ServerProcess(
            "postgres",
            [
                postgres,
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            base / "postgres.log",
            user=self.os_user,
        )
        wait_for_port(self.port, process=self.process)
        self.uri = f"postgresql://{user}@127.0.0.1:{self.port}/{database}"
        # SQLAlchemy (MLflow's store) defaults to psycopg 3 for postgresql://; name the installed driver.
        self.sqlalchemy_uri = self.uri.replace("postgresql://", "postgresql+psycopg2://", 1)
        self._create_database(user, database)

    def _create_database(self, user: str, database: str) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=user, dbname="postgres")
                break
            except psycopg2.OperationalError:  # the port opens before startup has finished
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        connection.close()

    def query(self, sql: str) -> list[tuple]:
        """Rows of one SQL query against the database (to check what a server wrote)."""
        import psycopg2

        with psycopg2.connect(self.uri) as connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())

    def stop(self) -> None:
        """Stop the server and remove its data folder."""
        self.process.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _postgres_os_user() -> str | None:
    """The OS user to run PostgreSQL as: None (this user) unless root, then ``postgres``."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        created = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            unavailable(f"cannot create the postgres user: {created.stderr.strip()}")
    return "postgres"


class MlflowServer:
    """``mlflow server`` on 127.0.0.1: metadata in a database, artifacts served from a folder."""

    def __init__(self, backend_store_uri: str, base: Path) -> None:
        """Start the server and wait until its health endpoint answers.

        Args:
            backend_store_uri: E.g. ``postgresql://user@127.0.0.1:PORT/mlflow``.
            base: Folder for the artifact store and the log.
        """
        import sys

        import requests

        from tests.helpers import free_port

        self.port = free_port()
        self.artifacts = base / "mlflow-artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.process = ServerProcess(
            "mlflow server",
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                backend_store_uri,
                "--artifacts-destination",
                str(self.artifacts),
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
            env={"MLFLOW_ENABLE_TELEMETRY": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        self.uri = f"http://127.0.0.1:{self.port}"
        wait_for_port(self.port, timeout=180, process=self.process)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.uri}/health", timeout=5).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.process.popen.poll() is not None:
                raise TimeoutError(f"mlflow server at {self.uri} is not healthy:\n{self.process.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server, then anything of its process group that outlived it."""
        self.process.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.popen.pid, signal.SIGKILL)


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
        self.process = ServerProcess(
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
        )
        try:
            wait_for_port(port, process=self.process, timeout=30)
        except TimeoutError:
            self.process.stop()
            raise

    @property
    def connection_string(self) -> str:
        """``host:port``, the form Feast's Redis online store takes."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop the server this object started."""
        self.process.stop()


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
