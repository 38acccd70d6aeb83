"""The first tasks of every windowed pipeline (window, champion, snapshot), and the time they take from KFP.

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

from dataclasses import dataclass
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


@dataclass
class FirstTasks:
    """The tasks every windowed pipeline starts with: the window, the current champion and the window's snapshot."""

    window: PipelineTask
    champion: PipelineTask
    snapshot: PipelineTask


def add_first_tasks(
    ops: Components,
    *,
    local: bool,
    schedule: Any,
    serving: Any,
    tracking_uri: Any,
    source: Any,
    source_fingerprint: Any,
    dataset: Any,
    window_start: Any,
    window_end: Any,
    reference_start: Any = "",
    reference_end: Any = "",
) -> FirstTasks:
    """Add the window task, then the champion lookup and the snapshot of the window it resolved.

    Args:
        ops: The components.
        local: Built for kfp.local (no scheduled time) rather than compiled for KFP.
        schedule: The schedule section (JSON).
        serving: Serving section (JSON); its model name is the champion's.
        tracking_uri: MLflow tracking URI.
        source: Source table.
        source_fingerprint: Declared source version; empty to hash the source.
        dataset: Dataset section (JSON).
        window_start: Explicit window start; empty for the scheduled window.
        window_end: Explicit window end; empty for the scheduled window.
        reference_start: Explicit monitoring reference start; empty for T-2 (or the champion's reference).
        reference_end: Explicit monitoring reference end.

    Returns:
        The three tasks; the window's outputs are the bounds later tasks read.
    """
    window = add_window_task(
        ops,
        local=local,
        schedule=schedule,
        window_start=window_start,
        window_end=window_end,
        reference_start=reference_start,
        reference_end=reference_end,
    )
    champion, snapshot = ops.champion_and_snapshot(
        serving=serving,
        tracking_uri=tracking_uri,
        source=source,
        source_fingerprint=source_fingerprint,
        dataset=dataset,
        window_start=window.outputs["window_start"],
        window_end=window.outputs["window_end"],
    )
    return FirstTasks(window, champion, snapshot)
