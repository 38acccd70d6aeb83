"""Compile pipelines to KFP IR YAML, and run them on one machine with ``kfp.local``.

``ctpipe run`` executes the very functions that ``ctpipe compile`` compiles: the same
components, the same DAG, with kfp.local's SubprocessRunner and its cache. Task output
goes to a log file per run; the console gets one progress line per task and a summary.

Each task ends in one of: ``ran``; ``no-op`` (it ran, found its work already done and changed
nothing: an idempotent skip it logged with its reason, :mod:`components.common.skips`); ``cached``
(served from the pipeline cache, not started); ``skipped`` (its condition was false); ``failed``.
Every status but ``ran`` and ``failed`` comes with the reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from components.common import errors
from components.common.errors import ConfigError
from components.common.schedule import parse_time, scheduled_windows
from components.common.skips import skip_reason
from pipelines import batch_scoring, canary_analysis, continuous_training, monitoring, training
from pipelines.config import CtpipeConfig
from pipelines.kfp_components import REGISTRY_KEYED, build_components
from pipelines.submit import UNKNOWN_VERSION, VERSION_ENV
from pipelines.windows import load_windows

PIPELINES: dict[str, Callable[..., Callable[..., Any]]] = {
    "training": training.build,
    "batch_scoring": batch_scoring.build,
    "monitoring": monitoring.build,
    "continuous_training": continuous_training.build,
    "canary_analysis": canary_analysis.build,
}

# Pipelines that read a time window, and those of them that also monitor it against a reference window.
WINDOWED = ("training", "batch_scoring", "monitoring", "continuous_training")
MONITORED = ("monitoring", "continuous_training")
REFERENCE_PARAMS = ("reference_start", "reference_end")

_CTPIPE_ERRORS = {name for name, obj in vars(errors).items() if isinstance(obj, type)}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EVENTS = [
    ("start", re.compile(r"Executing task '?([\w-]+)'?")),
    ("done", re.compile(r"Task '?([\w-]+)'? finished with status (\w+)")),
    ("cached", re.compile(r"Task '?([\w-]+)'? cache hit")),
    ("skipped", re.compile(r"Skipping conditional task '?([\w-]+)'?")),
]
# Why a task did not run. kfp.local names a task after its component (dashes, "-2" for a second use).
CACHE_HIT = "cache hit: same inputs as an earlier run"
REGISTRY_CACHE_HIT = "cache hit: same inputs and the same registry state as an earlier run"
CONDITION_FALSE = "its condition was false"


def cache_reason(task: str) -> str:
    """Why a cached task was not run: its inputs, and for the registry-keyed steps the registry too."""
    component = re.sub(r"-\d+$", "", task).replace("-", "_")
    return REGISTRY_CACHE_HIT if component in REGISTRY_KEYED else CACHE_HIT


def git_commit(cwd: str | Path = ".") -> str:
    """The current git commit, or 'unknown' outside a checkout (see :func:`resolve_code_version`)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN_VERSION
    return out.stdout.strip() if out.returncode == 0 else UNKNOWN_VERSION


def resolve_code_version(environ: dict[str, str] | None = None, cwd: str | Path = ".") -> str:
    """The version of the code: ``$CTPIPE_VERSION``, else the git commit, else ``unknown``.

    The images set ``CTPIPE_VERSION`` to the commit they were built from, so code running in
    an image (the CronJob's ``ctpipe submit``) knows its version without a checkout. It is the
    pipelines' ``code_version`` lineage tag and the default pipeline version of an upload.

    Args:
        environ: Environment to read ``CTPIPE_VERSION`` from; default ``os.environ``.
        cwd: Where to look for the git checkout.
    """
    env = os.environ if environ is None else environ
    declared = env.get(VERSION_ENV, "").strip()
    if declared and declared != UNKNOWN_VERSION:
        return declared
    return git_commit(cwd)


def build_pipeline(
    name: str, config: CtpipeConfig, code_version: str | None = None, local: bool = False
) -> Callable[..., Any]:
    """Build one pipeline function for ``config``.

    Args:
        name: A pipeline in :data:`PIPELINES`.
        config: The configuration; parameter defaults come from it.
        code_version: The ``code_version`` lineage tag; default :func:`resolve_code_version`.
        local: Build for kfp.local, which cannot resolve KFP's scheduled-time placeholder
            (:mod:`pipelines.schedule`); compiled pipelines take their time from KFP.

    Raises:
        ConfigError: If ``name`` is not a known pipeline.
    """
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline {name!r}; expected one of {', '.join(PIPELINES)}")
    ops = build_components(config.infra.images)
    pipeline = PIPELINES[name](config, ops, code_version or resolve_code_version(), local=local)
    if config.infra.pipeline_root and not local:
        # Where a cluster run keeps its artifacts (the IR's defaultPipelineRoot, e.g. s3://...). kfp.local
        # ignores it anyway: `ctpipe run` keeps the local root it mounts into each task (<workspace>/kfp/runs).
        pipeline.pipeline_spec.default_pipeline_root = config.infra.pipeline_root  # type: ignore[attr-defined]
    return pipeline


def compile_pipelines(config: CtpipeConfig, out_dir: str | Path, names: list[str] | None = None) -> list[Path]:
    """Write one KFP IR YAML per pipeline into ``out_dir`` and return their paths."""
    from kfp import compiler

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or list(PIPELINES):
        path = out / f"{name}.yaml"
        compiler.Compiler().compile(build_pipeline(name, config), str(path))
        written.append(path)
    return written


def source_fingerprint(source: str) -> str:
    """Content hash of the source, as the pipelines' ``fingerprint_source`` task computes it."""
    from components.ingest import source_fingerprint as fingerprint

    return fingerprint(source)


def window_params(config: CtpipeConfig, window: int) -> dict[str, str]:
    """Bounds of window ``window`` (1-based) from the window manifest beside the source (:mod:`pipelines.windows`)."""
    windows = load_windows(config.dataset.source)
    for item in windows:
        if item.window == window:
            return {"window_start": item.start, "window_end": item.end}
    raise ConfigError(f"window {window} not in {config.dataset.source} (it has windows 1..{len(windows)})")


def parse_at(text: str, now: datetime | None = None) -> datetime:
    """The time ``--at`` names: ``now`` (this machine's clock, as the CronJob uses) or an ISO-8601 timestamp.

    Raises:
        ConfigError: ``text`` is neither.
    """
    if text.strip().lower() == "now":
        return now or datetime.now(UTC)
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ConfigError(f"--at: {exc}, or 'now'") from None


def scheduled_params(config: CtpipeConfig, pipeline: str, at: datetime) -> dict[str, str]:
    """The window parameters of a run for time ``at``: T-1, and T-2 as the monitoring reference.

    The same computation as the pipelines' ``schedule_window`` task
    (:func:`components.common.schedule.scheduled_windows`, with ``schedule.window`` and
    ``schedule.anchor``), done here so the bounds are explicit run parameters: the run shows
    them, and running it again reads the same window.

    Args:
        config: The configuration (its ``schedule`` section).
        pipeline: The pipeline the parameters are for; only monitoring pipelines get reference bounds.
        at: The run's time T.

    Returns:
        ``window_start`` and ``window_end`` (T-1), and for monitoring pipelines ``reference_start``
        and ``reference_end`` (T-2).

    Raises:
        ConfigError: The pipeline reads no time window.
    """
    if pipeline not in WINDOWED:
        raise ConfigError(f"--at: the {pipeline} pipeline reads no time window; expected one of {', '.join(WINDOWED)}")
    current, previous = scheduled_windows(at, config.schedule.window, config.schedule.anchor)
    params = dict(zip(("window_start", "window_end"), current.bounds, strict=True))
    if pipeline in MONITORED:
        params.update(zip(REFERENCE_PARAMS, previous.bounds, strict=True))
    return params


@dataclass
class TaskRecord:
    """What happened to one task in a local run."""

    name: str
    status: str = "running"  # ran, no-op, cached, skipped, failed
    seconds: float = 0.0
    reason: str = ""  # why it did not run (cached, skipped) or changed nothing (no-op)
    _started: float = field(default=0.0, repr=False)
    _skip: str = field(default="", repr=False)  # the idempotent skip its log reported


@dataclass
class RunReport:
    """Summary of one local pipeline run."""

    pipeline: str
    succeeded: bool
    seconds: float
    tasks: list[TaskRecord]
    outputs: dict[str, Any]
    pipeline_root: str
    log_path: str
    error: str = ""

    @property
    def cache_hits(self) -> list[str]:
        """Names of the tasks served from the cache."""
        return [t.name for t in self.tasks if t.status == "cached"]

    @property
    def no_ops(self) -> list[str]:
        """Names of the tasks that ran and found nothing to do (idempotent skips)."""
        return [t.name for t in self.tasks if t.status == "no-op"]

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary for ``--json``."""
        return {
            "pipeline": self.pipeline,
            "succeeded": self.succeeded,
            "seconds": round(self.seconds, 2),
            "tasks": [
                {"name": t.name, "status": t.status, "seconds": round(t.seconds, 2), "reason": t.reason}
                for t in self.tasks
            ],
            "outputs": self.outputs,
            "pipeline_root": self.pipeline_root,
            "log": self.log_path,
            "error": self.error,
        }


class _TaskLog(io.TextIOBase):
    """Stdout replacement during a run: writes everything to the log, turns task events into records."""

    def __init__(self, log: TextIO, on_event: Callable[[TaskRecord], None]) -> None:
        self._log, self._on_event, self._pending = log, on_event, ""
        self.records: dict[str, TaskRecord] = {}
        # kfp.local runs one task at a time and streams its log between start and finish.
        self._current: TaskRecord | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._parse(_ANSI.sub("", line))
        return len(text)

    def _parse(self, line: str) -> None:
        reason = skip_reason(line)
        if reason is not None:
            if self._current is not None:
                self._current._skip = reason
            return
        for kind, pattern in _EVENTS:
            match = pattern.search(line)
            if not match:
                continue
            name = match.group(1)
            record = self.records.setdefault(name, TaskRecord(name))
            if kind == "start":
                record._started = time.monotonic()
                self._current = record
            elif kind == "done":
                record.seconds = time.monotonic() - record._started
                if match.group(2) != "SUCCESS":
                    record.status = "failed"
                elif record._skip:
                    record.status, record.reason = "no-op", record._skip
                else:
                    record.status = "ran"
                self._current = None
            else:
                record.status = kind
                record.reason = cache_reason(name) if kind == "cached" else CONDITION_FALSE
            if kind != "start":
                self._on_event(record)
            return


@contextlib.contextmanager
def _captured(log_path: Path, on_event: Callable[[TaskRecord], None]) -> Iterator[_TaskLog]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        tee = _TaskLog(log, on_event)
        handler = logging.StreamHandler(tee)
        root = logging.getLogger()
        old_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(tee):
                yield tee
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)


def _plain(value: Any) -> Any:
    """Pipeline outputs as JSON-able values (artifacts become their path and metadata)."""
    if hasattr(value, "uri") and hasattr(value, "metadata"):
        return {"path": getattr(value, "path", value.uri), "metadata": dict(value.metadata)}
    return value


def run_pipeline(
    name: str,
    config: CtpipeConfig,
    params: dict[str, Any] | None = None,
    enable_cache: bool = True,
    progress: TextIO | None = sys.stderr,
    runner: Any = None,
) -> RunReport:
    """Run a pipeline locally with kfp.local (SubprocessRunner, caching on by default).

    Args:
        name: A pipeline in :data:`PIPELINES`.
        config: The configuration; pipeline parameters default to it.
        params: Overrides of pipeline parameters (e.g. window bounds).
        enable_cache: Whether unchanged tasks are served from the cache.
        progress: Where to print one line per finished task; None for silence.
        runner: The kfp.local runner; default ``SubprocessRunner(use_venv=False)`` (this virtualenv is
            the image). A ``local.DockerRunner`` runs each task in its component's image instead.

    Returns:
        The run report; ``succeeded`` is False (with ``error``) when a task failed.
    """
    from kfp import local

    pipeline = build_pipeline(name, config, local=True)
    # No fingerprint is passed: the pipeline hashes its source when it runs, as on a cluster.
    params = dict(params or {})
    kfp_root = config.workspace / "kfp"
    local.init(
        runner=runner or local.SubprocessRunner(use_venv=False),
        pipeline_root=str(kfp_root / "runs"),
        cache_root=str(kfp_root / "cache"),
        enable_caching=enable_cache,
        raise_on_error=True,
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    log_path = config.workspace / "logs" / f"{name}-{stamp}.log"

    def report_event(record: TaskRecord) -> None:
        if progress is None:
            return
        detail = f"{record.seconds:5.1f}s" if record.status in ("ran", "no-op") else ""
        why = f"  {record.reason}" if record.status == "no-op" else ""
        print(f"  {record.status:>7}  {record.name:<28} {detail}{why}", file=progress, flush=True)

    if progress is not None:
        print(f"▶ {name}: running locally (task logs: {log_path})", file=progress, flush=True)
    started = time.monotonic()
    outputs: dict[str, Any] = {}
    failure: Exception | None = None
    with _captured(log_path, report_event) as tee, warnings.catch_warnings():
        # kfp.local warns that display names are ignored locally and that a custom image name is
        # not used by the SubprocessRunner; both are expected here (the venv is the image).
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        try:
            result = pipeline(**params)
            raw = result.outputs if hasattr(result, "outputs") else {"Output": result}
            outputs = {key: _plain(value) for key, value in (raw or {}).items()}
        except Exception as exc:  # kfp.local raises RuntimeError naming the failed task
            failure = exc
    # Read the task log only once it is closed (flushed).
    error = _failure_message(failure, log_path) if failure else ""
    for record in tee.records.values():
        if record.status == "running":
            record.status = "failed"
    return RunReport(
        pipeline=name,
        succeeded=not error,
        seconds=time.monotonic() - started,
        tasks=list(tee.records.values()),
        outputs=outputs,
        pipeline_root=str(kfp_root / "runs"),
        log_path=str(log_path),
        error=error,
    )


_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w]+\.)*(\w+(?:Error|Failed|NotFound|Exception)): (.+)$")


def _failure_message(exc: Exception, log_path: Path) -> str:
    """The most useful line of a failed run: the component's own exception, if the log has one."""
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    found = [m for m in (_EXCEPTION_LINE.match(_ANSI.sub("", line)) for line in lines) if m]
    ours = [m for m in found if m.group(1) in _CTPIPE_ERRORS]
    best = ours or found
    return f"{best[-1].group(1)}: {best[-1].group(2)}" if best else str(exc)
