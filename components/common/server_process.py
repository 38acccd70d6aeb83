"""Start, find and stop ctpipe model server processes on this machine.

The model server itself lives in :mod:`serving.server`; this module only launches it as a
process (``python -m serving.server``) and talks to it over HTTP, so the steps that need a
server (deploy in the embedded profile, infra validation's sandbox) do not import the
serving package. The command-line flags built here are the ones ``serving.server`` parses.

- :func:`start_local_server` starts the embedded profile's server detached (new session, log
  in ``<workspace>/serving/server.log``, pid in ``<workspace>/serving/server.pid``), or reuses
  the one already serving the same model; :func:`stop_local_server` stops it again.
- :func:`start_sandbox_server` starts a server pinned to one version on a free loopback port.

A server writes its JSON log lines to ``server.log`` itself and rotates it (``--log-file``);
what a process prints outside logging (a crash while starting) goes to ``server.out`` beside it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from pydantic import BaseModel

from components.common.errors import DeployError
from components.common.feast import EntityLookup
from components.common.io import write_json, write_text
from components.common.logs import get_logger
from components.common.registry import STATUS_ROUTE, redact_uri
from components.serving_spec import InferenceLogSpec, RolloutSpec, ServingSpec

logger = get_logger("server_process")

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The module a server process runs (``python -m``); named, not imported: imports run components <- serving.
SERVER_MODULE = "serving.server"
#: Seconds a server gets to finish requests and flush its inference log after SIGTERM.
GRACEFUL_SHUTDOWN_SECONDS = 5
#: Environment variable carrying the EntityLookup JSON to a server process.
ENTITY_LOOKUP_ENV = "CTPIPE_ENTITY_LOOKUP"
#: Bearer token of the inference routes when ``serving.require_token`` is on (a Secret on the cluster).
SERVING_TOKEN_ENV = "CTPIPE_SERVING_TOKEN"
#: Bearer token of the model-repository routes (load, unload) when ``serving.model_repository_api`` is on.
ADMIN_TOKEN_ENV = "CTPIPE_SERVING_ADMIN_TOKEN"
# Popen handles of servers this process started, so they are reaped and never warned about.
_children: dict[int, subprocess.Popen[bytes]] = {}


class LocalServer(BaseModel):
    """A model server process on this machine."""

    pid: int
    host: str
    port: int
    model_name: str
    endpoint: str
    log_path: str
    pid_path: str
    reused: bool
    start_seconds: float


def _paths(workspace: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    folder = Path(workspace) / "serving"
    return folder / "server.pid", folder / "server.log", folder / "server.json"


def endpoint_url(host: str, port: int) -> str:
    """Base URL to reach a server bound to ``host``:``port`` from this machine."""
    connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in connect:
        connect = f"[{connect}]"
    return f"http://{connect}:{port}"


def get_status(endpoint: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's ``/ctpipe/status``, or None when nothing listens there.

    Raises:
        DeployError: Something listens there but it is not a ctpipe model server.
    """
    url = endpoint.rstrip("/") + STATUS_ROUTE
    try:
        response = requests.get(url, timeout=timeout)
    except requests.ConnectionError:
        return None
    except requests.RequestException as exc:
        raise DeployError(f"{url} did not answer: {exc}") from exc
    if response.status_code != 200:
        raise DeployError(
            f"{endpoint} is in use by something that is not a ctpipe model server "
            f"({url} -> HTTP {response.status_code})"
        )
    try:
        status = response.json()
    except ValueError:
        raise DeployError(f"{endpoint} is in use by something that is not a ctpipe model server") from None
    if not isinstance(status, dict) or "model_name" not in status:
        raise DeployError(f"{endpoint} is in use by something that is not a ctpipe model server")
    return status


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    try:
        result = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return result.stdout.strip()


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            _children.pop(pid, None)
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _is_our_server(pid: int) -> bool:
    return _alive(pid) and SERVER_MODULE in _cmdline(pid)


def _output_path(log_path: Path) -> Path:
    """Where a server process's own stdout and stderr go: ``server.out`` beside ``server.log``."""
    return log_path.with_suffix(".out")


def _log_tail(path: Path, lines: int = 15) -> str:
    tails = []
    for source in (_output_path(path), path):
        try:
            tails.extend(source.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            continue
    return "\n".join(tails)


def client_headers() -> dict[str, str]:
    """Headers a ctpipe step sends to a model server: the bearer token when one is set in the environment."""
    token = os.environ.get(SERVING_TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)


def _same_model(status: dict[str, Any], serving: ServingSpec, tracking_uri: str) -> bool:
    return bool(
        status.get("model_name") == serving.model_name and status.get("tracking_uri") == redact_uri(tracking_uri)
    )


def _wait_ready(
    endpoint: str,
    model_name: str,
    deadline: float,
    proc: subprocess.Popen[bytes] | None,
    log_path: Path,
    version: str | None = None,
) -> None:
    url = f"{endpoint}/v2/models/{quote(model_name, safe='')}/ready"
    while True:
        if version is not None:  # a pinned server reports a load failure at once: no need to wait it out
            failed: dict[str, str] = {}
            with contextlib.suppress(DeployError):
                failed = (get_status(endpoint) or {}).get("failed_versions") or {}
            if version in failed:
                raise DeployError(f"the model server cannot load version {version}: {failed[version]}")
        if proc is not None and proc.poll() is not None:
            raise DeployError(
                f"model server exited with code {proc.returncode} while starting; last lines of {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            detail = ""
            with contextlib.suppress(DeployError):
                status = get_status(endpoint)
                if status and status.get("last_error"):
                    detail = f": {status['last_error']['message']}"
            raise DeployError(f"model server at {endpoint} did not become ready in time{detail}; see {log_path}")
        time.sleep(0.1)


def start_local_server(
    serving: ServingSpec,
    tracking_uri: str,
    workspace: str,
    timeout: float = 60,
    poll_seconds: float = 2.0,
    entity_lookup: EntityLookup | None = None,
) -> LocalServer:
    """Start the model server detached, or reuse the one already serving this model.

    Args:
        serving: Model name, host and port.
        tracking_uri: MLflow tracking URI the server reads (passed in the environment, not argv).
        workspace: Folder for ``serving/server.log``, ``serving/server.pid`` and ``serving/server.json``.
        timeout: Seconds to wait for the model to be ready.
        poll_seconds: Registry poll interval of a newly started server.
        entity_lookup: Feast settings so the server answers requests by entity id.

    Returns:
        The running server; ``reused`` says whether it was already running.

    Raises:
        DeployError: The port is taken by another server, or the server does not become ready
            (a server this call started is stopped again).
    """
    started = time.perf_counter()
    pid_path, log_path, info_path = _paths(workspace)
    endpoint = endpoint_url(serving.host, serving.port)

    def result(pid: int, reused: bool) -> LocalServer:
        return LocalServer(
            pid=pid,
            host=serving.host,
            port=serving.port,
            model_name=serving.model_name,
            endpoint=endpoint,
            log_path=str(log_path),
            pid_path=str(pid_path),
            reused=reused,
            start_seconds=round(time.perf_counter() - started, 3),
        )

    status = get_status(endpoint)
    if status is not None:
        if not _same_model(status, serving, tracking_uri):
            raise DeployError(
                f"port {serving.port} on {serving.host} is used by a ctpipe server for model "
                f"{status.get('model_name')!r} from {status.get('tracking_uri')} (wanted {serving.model_name!r} "
                f"from {redact_uri(tracking_uri)}); set serving.port to a free port or stop that server"
            )
        _wait_ready(endpoint, serving.model_name, time.monotonic() + timeout, None, log_path)
        return result(int(status.get("pid", 0)), reused=True)

    old_pid = _read_pid(pid_path)
    if old_pid is not None and _is_our_server(old_pid):
        raise DeployError(
            f"this workspace already runs a model server (pid {old_pid}, see {info_path}) that does not answer "
            f"on {endpoint}; stop it with stop_local_server({str(workspace)!r}) first"
        )

    args = local_server_args(serving, workspace, poll_seconds)
    proc = spawn_server(serving.model_name, serving.host, serving.port, tracking_uri, log_path, args, entity_lookup)
    write_text(pid_path, f"{proc.pid}\n")

    write_json(
        info_path,
        {
            "pid": proc.pid,
            "host": serving.host,
            "port": serving.port,
            "endpoint": endpoint,
            "model_name": serving.model_name,
            "tracking_uri": redact_uri(tracking_uri),
            "log": str(log_path),
            "started_at": time.time(),
        },
    )
    try:
        _wait_ready(endpoint, serving.model_name, time.monotonic() + timeout, proc, log_path)
    except DeployError:
        _terminate(proc.pid, GRACEFUL_SHUTDOWN_SECONDS + 2)
        for path in (pid_path, info_path):
            path.unlink(missing_ok=True)
        raise
    server = result(proc.pid, reused=False)
    logger.info("local model server ready", extra={"server": server.model_dump()})
    return server


def inference_log_dir(workspace: str | os.PathLike[str], serving: ServingSpec | None = None) -> str:
    """Where the local server writes its inference log: ``serving.inference_log_dir`` or ``<workspace>/inference_log``.

    ``serving.inference_log_dir`` may be a URI (``s3://...``); the server process inherits
    this process's environment, where the object store's credentials are.
    """
    if serving is not None and serving.inference_log_dir:
        return serving.inference_log_dir
    return str(Path(workspace) / "inference_log")


def local_server_args(serving: ServingSpec, workspace: str | os.PathLike[str], poll_seconds: float = 2.0) -> list[str]:
    """Flags of the embedded profile's server (``ctpipe serve``, detached or not): settings, poll, inference log."""
    args = ["--poll-seconds", str(poll_seconds), *serving_args(serving)]
    if serving.inference_log:
        args += ["--inference-log-dir", inference_log_dir(workspace, serving)]
    return args


def inference_log_args(serving: ServingSpec) -> list[str]:
    """Flags of ``python -m serving.server`` that protect personal data in the inference log (exclude, hash)."""
    settings = InferenceLogSpec.of(serving.inference_log)
    args = [arg for name in settings.exclude for arg in ("--log-exclude", name)]
    args += [arg for name in settings.hash for arg in ("--log-hash", name)]
    if settings.hash:
        args += ["--log-hash-key-env", settings.hash_key_env]
    return args


def serving_args(serving: ServingSpec) -> list[str]:
    """Command-line flags of ``python -m serving.server`` that come from the serving settings."""
    return [
        "--max-batch-rows",
        str(serving.max_batch_rows),
        "--max-request-bytes",
        str(serving.max_request_bytes),
        "--worker-threads",
        str(serving.worker_threads),
        "--log-flush-seconds",
        str(serving.inference_log_flush_seconds),
        "--log-queue-rows",
        str(serving.inference_log_queue_rows),
        *(["--require-token"] if serving.require_token else []),
        *(["--model-repository-api"] if serving.model_repository_api else []),
        *inference_log_args(serving),
        # Only a changed strategy is passed, so the default canary renders the same command as before.
        *(["--rollout", serving.rollout.model_dump_json()] if serving.rollout != RolloutSpec() else []),
    ]


def spawn_server(
    model_name: str,
    host: str,
    port: int,
    tracking_uri: str,
    log_path: Path,
    extra_args: list[str],
    entity_lookup: EntityLookup | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m serving.server`` detached (own session), logging to ``log_path`` (rotated).

    The tracking URI and the entity lookup travel in the environment, not on the command line,
    where ``ps`` would show credentials.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        SERVER_MODULE,
        "--model-name",
        model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--log-file",
        str(log_path),
        *extra_args,
    ]
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.pop(ENTITY_LOOKUP_ENV, None)
    if entity_lookup is not None:
        env[ENTITY_LOOKUP_ENV] = entity_lookup.model_dump_json()
    with open(_output_path(log_path), "ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    _children[proc.pid] = proc
    return proc


class SandboxServer(BaseModel):
    """A model server pinned to one version on a free loopback port, for infra validation."""

    pid: int
    endpoint: str
    model_name: str
    version: str
    log_path: str
    start_seconds: float


def start_sandbox_server(
    model_name: str,
    version: str,
    tracking_uri: str,
    folder: str | os.PathLike[str],
    timeout: float,
    serving: ServingSpec | None = None,
) -> SandboxServer:
    """Start a server that serves exactly ``version`` on 127.0.0.1 and wait until it is ready.

    It ignores the registry aliases (``--model-version``), writes no inference log and shares
    nothing with the live server but the registry.

    Raises:
        DeployError: The server exits or is not ready within ``timeout`` (it is stopped again).
    """
    import socket

    started = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log_path = Path(folder) / "sandbox-server.log"
    args = ["--model-version", str(version), *serving_args(serving or ServingSpec(model_name=model_name))]
    proc = spawn_server(model_name, "127.0.0.1", port, tracking_uri, log_path, args)
    endpoint = endpoint_url("127.0.0.1", port)
    try:
        _wait_ready(endpoint, model_name, time.monotonic() + timeout, proc, log_path, str(version))
    except DeployError:
        _terminate(proc.pid, GRACEFUL_SHUTDOWN_SECONDS + 2)
        raise
    return SandboxServer(
        pid=proc.pid,
        endpoint=endpoint,
        model_name=model_name,
        version=str(version),
        log_path=str(log_path),
        start_seconds=round(time.perf_counter() - started, 3),
    )


def stop_sandbox_server(server: SandboxServer, timeout: float = 15.0) -> None:
    """Stop a sandbox server this process started (by its own pid, nothing else)."""
    if server.pid in _children:
        _terminate(server.pid, timeout)


def stop_local_server(workspace: str, timeout: float = 15.0) -> bool:
    """Stop the server this workspace started (the pid in ``<workspace>/serving/server.pid``).

    The pid is only signalled when it is alive and its command line runs ``serving.server``,
    so a stale pid file never kills an unrelated process.

    Returns:
        Whether a running server was stopped.
    """
    pid_path, _, info_path = _paths(workspace)
    pid = _read_pid(pid_path)
    stopped = False
    if pid is not None and _is_our_server(pid):
        _terminate(pid, timeout)
        stopped = True
        logger.info("local model server stopped", extra={"pid": pid, "workspace": str(workspace)})
    elif pid is not None:
        logger.info("stale pid file removed", extra={"pid": pid, "pid_path": str(pid_path)})
    for path in (pid_path, info_path):
        path.unlink(missing_ok=True)
    return stopped
