"""Reference model servers that benchmarks compare ctpipe's model server with.

MLServer (Seldon) with its scikit-learn runtime, serving the same pickled pipeline over the V2
protocol. MLServer pins FastAPI and friends to versions ctpipe's environment does not use, so it
runs from its own virtualenv, created on first use and reused while its pins are unchanged:
MLServer's version, and scikit-learn, numpy, pandas, scipy and joblib at exactly the versions of
this interpreter, so the pickled pipeline loads and scores as it does here.

Anything that goes wrong (no package index, a failed install, a server that does not start) is a
:class:`ReferenceServerError` naming the cause; a benchmark that needs the reference fails with it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

from tests.servers.process import free_ports

MLSERVER_VERSION = "1.7.1"
#: MLServer 1.7.1's inference workers die at start with uvloop 0.22+ ("There is no current event loop",
#: SeldonIO/MLServer#2286); the last uvloop they work with.
UVLOOP_PIN = "uvloop==0.21.0"
#: Packages the pickled pipeline needs, pinned in MLServer's virtualenv to the versions installed here.
SHARED_PACKAGES = ("scikit-learn", "numpy", "pandas", "scipy", "joblib")
#: The file in the virtualenv that records what it was built with; a mismatch rebuilds it.
PINS_FILE = "ctpipe-pins.txt"
INSTALL_TIMEOUT_SECONDS = 1200


class ReferenceServerError(RuntimeError):
    """A reference server cannot be installed or started; the message says why."""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def mlserver_requirements() -> list[str]:
    """MLServer and its sklearn runtime pinned, and the packages the pickle needs at this interpreter's versions."""
    pins = [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}", UVLOOP_PIN]
    return pins + [f"{name}=={installed_version(name)}" for name in SHARED_PACKAGES]


def venv_python(folder: Path) -> Path:
    """The interpreter of the virtualenv in ``folder``."""
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(command: list[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ReferenceServerError(f"{what}: still running after {timeout:.0f}s ({' '.join(command)})") from None
    except OSError as exc:
        raise ReferenceServerError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise ReferenceServerError(
            f"{what} failed (exit code {done.returncode}): {' '.join(command)}\n{_tail(done.stdout + done.stderr)}"
        )


def ensure_mlserver_venv(folder: Path, progress: Callable[[str], None] = lambda _: None) -> Path:
    """A virtualenv in ``folder`` with MLServer and its scikit-learn runtime; reused when its pins match.

    Args:
        folder: Where the virtualenv lives (created, or replaced when it was built with other pins).
        progress: Receives one line per slow step.

    Returns:
        The virtualenv's python.

    Raises:
        ReferenceServerError: The virtualenv cannot be created or the packages cannot be installed.
    """
    requirements = mlserver_requirements()
    wanted = "\n".join(requirements) + "\n"
    python = venv_python(folder)
    stamp = folder / PINS_FILE
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    if folder.exists():
        progress(f"rebuilding {folder}: its pins differ from {', '.join(requirements)}")
        shutil.rmtree(folder)
    progress(f"creating the MLServer virtualenv in {folder} ({', '.join(requirements)})")
    started = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(folder)], "creating MLServer's virtualenv", 300)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "install", "--quiet", *requirements], "installing MLServer", INSTALL_TIMEOUT_SECONDS)
    _run([str(python), "-c", "import mlserver, mlserver_sklearn, sklearn"], "importing MLServer", 120)
    stamp.write_text(wanted)  # last: an interrupted install is rebuilt next time
    progress(f"MLServer virtualenv ready in {time.perf_counter() - started:.0f}s")
    return python


def write_sklearn_model(model: Any, repository: Path, name: str, version: str) -> Path:
    """Save ``model`` with joblib as MLServer's scikit-learn runtime loads it: ``<repository>/<name>/model.joblib``.

    Returns:
        The model's folder, beside its ``model-settings.json``.
    """
    import joblib

    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, folder / "model.joblib")
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": version},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


@dataclass
class MLServerProcess:
    """An ``mlserver start`` process this benchmark started (its own session, so its workers stop with it)."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    model_name: str
    settings: dict[str, Any]
    """Its ``settings.json``, and the ``OMP_NUM_THREADS`` it runs with."""
    log_path: Path
    start_seconds: float

    @property
    def infer_path(self) -> str:
        """The V2 inference route of the model."""
        return f"/v2/models/{self.model_name}/infer"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the process group the server leads (it and its workers), then SIGKILL if it does not exit."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        # Parallel-inference workers are in the same group; give a straggler the same end.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _ready(host: str, port: int, model_name: str) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=2)
    try:
        connection.request("GET", f"/v2/models/{model_name}/ready")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        connection.close()


def start_mlserver(
    python: Path,
    repository: Path,
    model_name: str,
    parallel_workers: int | None = None,
    omp_threads: int | None = 1,
    timeout: float = 120.0,
) -> MLServerProcess:
    """``mlserver start <repository>`` on free 127.0.0.1 ports; returns once the model is ready.

    MLServer's defaults except: every server (REST, gRPC, metrics) binds 127.0.0.1 on a free port,
    ``debug`` is off (no access-log line per request, as in production), and its working files
    (``.metrics``, ``.envs``) stay in ``repository``. ``parallel_workers`` left None keeps MLServer's
    default (1: inference in a worker process); 0 runs inference in the server process.

    ``omp_threads`` sets ``OMP_NUM_THREADS`` (None leaves it as inherited). One thread by default,
    as ctpipe's ONNX scorer uses: scikit-learn's tree ensembles otherwise start an OpenMP team of
    one thread per core for every 1-row predict, and on a small machine with anything else
    running the team's spin-waits turn into stalls (p99 of 0.5-1.5 s seen on 2 cores).

    Raises:
        ReferenceServerError: The server exits, or the model is not ready within ``timeout``.
    """
    host = "127.0.0.1"
    http_port, grpc_port, metrics_port = free_ports(3)
    settings: dict[str, Any] = {
        "host": host,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "debug": False,
        "metrics_dir": str(repository / ".metrics"),
        "environments_dir": str(repository / ".envs"),
    }
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (repository / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    mlserver = python.parent / "mlserver"
    # Nothing of this environment's Python setup may leak into MLServer's, and no MLSERVER_* override.
    leaks = ("PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_") and k not in leaks}
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
    log_path = repository / "mlserver.log"
    started = time.perf_counter()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(mlserver), "start", str(repository)],
            cwd=repository,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    recorded = {**settings, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS")}
    server = MLServerProcess(process, host, settings["http_port"], model_name, recorded, log_path, 0.0)
    deadline = time.monotonic() + timeout
    while not _ready(host, server.port, model_name):
        failure = None
        if process.poll() is not None:
            failure = f"mlserver exited with code {process.returncode} while starting"
        elif time.monotonic() > deadline:
            failure = f"mlserver was not ready within {timeout:.0f}s"
        if failure:
            server.stop()
            log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
            raise ReferenceServerError(f"{failure}; last lines of {log_path}:\n{_tail(log_text)}")
        time.sleep(0.2)
    server.start_seconds = round(time.perf_counter() - started, 2)
    return server
