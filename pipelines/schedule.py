"""The window task every windowed pipeline starts with, and the time it takes from KFP.

On Kubeflow Pipelines the ``schedule_window`` task gets the run's time from KFP's placeholder
``{{$.pipeline_job_schedule_time_utc}}`` (``dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER``):
the compiled IR holds it as the task input's constant, and KFP's driver replaces it with the
scheduled time of a recurring run (the creation time of a one-off run) when the task starts.
kfp.local cannot resolve that placeholder, so a pipeline built for a local run passes an empty
time instead: without explicit bounds a local run reads the whole source, as before, and
``--at TIME`` (the runner and the CLI) gives it explicit T-1/T-2 bounds computed by the same
function (:func:`components.common.schedule.run_windows`).
"""

from __future__ import annotations

from typing import Any

from kfp import dsl
from kfp.dsl.pipeline_task import PipelineTask

from pipelines.kfp_components import Components

KFP_SCHEDULED_TIME = dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER  # '{{$.pipeline_job_schedule_time_utc}}'


def scheduled_time(local: bool) -> str:
    """The ``scheduled_time`` input of the window task: KFP's placeholder, or empty under kfp.local."""
    return "" if local else KFP_SCHEDULED_TIME


def add_window_task(
    ops: Components,
    *,
    local: bool,
    schedule: Any,
    window_start: Any,
    window_end: Any,
    reference_start: Any = "",
    reference_end: Any = "",
) -> PipelineTask:
    """Add the ``schedule_window`` task; its outputs are the bounds the rest of the pipeline reads.

    Args:
        ops: The components.
        local: Built for kfp.local (no scheduled time) rather than compiled for KFP.
        schedule: The schedule section (JSON).
        window_start: Explicit window start (the pipeline parameter); empty for a scheduled run.
        window_end: Explicit window end; empty for a scheduled run.
        reference_start: Explicit monitoring reference start; empty for T-2 (or the champion's reference).
        reference_end: Explicit monitoring reference end.

    Returns:
        The task; ``outputs["window_start"]``, ``["window_end"]``, ``["reference_start"]`` and
        ``["reference_end"]`` are the bounds.
    """
    task = ops.schedule_window(
        scheduled_time=scheduled_time(local),
        window_start=window_start,
        window_end=window_end,
        reference_start=reference_start,
        reference_end=reference_end,
        schedule=schedule,
    )
    task.set_display_name("window")
    return task
