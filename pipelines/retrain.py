"""Close the loop from the command line: monitor a window, and on a ``retrain`` decision train on it.

In the embedded profile the training pipeline runs here, on kfp.local. In the cluster
profile it becomes a KFP run of the training pipeline, created through the submit seam
(:mod:`pipelines.submit`), so ``--dry-run`` shows the run it would create. The
``continuous_training`` pipeline does the same inside one KFP run; this path is for
monitoring that runs outside KFP (a cron job, CI).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from typing import Any, TextIO

from pydantic import BaseModel

from components.common.errors import CtpipeError
from pipelines.config import CtpipeConfig
from pipelines.continuous_training import RETRAIN
from pipelines.runner import REFERENCE_PARAMS, compile_pipelines, resolve_code_version, run_pipeline
from pipelines.submit import SubmitPlan, submit


class LoopResult(BaseModel):
    """What one turn of the loop did."""

    decision: str
    action: str  # none, trained_locally, submitted, planned (dry run)
    monitoring: dict[str, Any]
    training: dict[str, Any] | None = None
    submitted: SubmitPlan | None = None


def retrain_on_drift(
    config: CtpipeConfig,
    params: dict[str, Any],
    *,
    enable_cache: bool = True,
    dry_run: bool = False,
    version: str | None = None,
    client_factory: Callable[..., Any] | None = None,
    progress: TextIO | None = sys.stderr,
) -> LoopResult:
    """Run monitoring on kfp.local; on ``retrain``, train on the same window (locally or on KFP).

    Args:
        config: The configuration; ``infra.profile`` picks local training or a KFP run.
        params: Pipeline parameters (the window bounds), used for both pipelines (training ignores
            the monitoring reference bounds).
        enable_cache: Serve unchanged local tasks from the kfp.local cache.
        dry_run: Cluster profile: plan the KFP calls, send nothing.
        version: Code version for the upload; default ``$CTPIPE_VERSION``, else the git commit.
        client_factory: Builds ``kfp.Client`` (tests pass a fake of the external API).
        progress: Where local runs print progress; None for silence.

    Returns:
        The decision and what was done about it.

    Raises:
        CtpipeError: Monitoring or local training failed.
    """
    monitored = run_pipeline("monitoring", config, params, enable_cache=enable_cache, progress=progress)
    if not monitored.succeeded:
        raise CtpipeError(f"monitoring failed: {monitored.error} (log: {monitored.log_path})")
    decision = str(monitored.outputs["decision"])
    result = LoopResult(decision=decision, action="none", monitoring=monitored.to_json())
    if decision != RETRAIN:
        return result
    params = {key: value for key, value in params.items() if key not in REFERENCE_PARAMS}
    if config.infra.profile == "embedded":
        trained = run_pipeline("training", config, params, enable_cache=enable_cache, progress=progress)
        if not trained.succeeded:
            raise CtpipeError(f"training failed: {trained.error} (log: {trained.log_path})")
        result.action, result.training = "trained_locally", trained.to_json()
        return result
    (package,) = compile_pipelines(config, tempfile.mkdtemp(prefix="ctpipe-loop-"), ["training"])
    result.submitted = submit(
        config,
        "training",
        package,
        params,
        version=version or resolve_code_version(),
        run_name=f"retrain-{params.get('window_start') or 'all'}",
        enable_caching=enable_cache,
        dry_run=dry_run,
        client_factory=client_factory,
    )
    result.action = "planned" if dry_run else "submitted"
    return result
