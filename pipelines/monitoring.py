"""The monitoring pipeline: drift and live performance of a window against a reference window or the champion's data.

:func:`add_monitoring_tasks` builds its tasks (window, champion, snapshot, monitor); the
monitoring pipeline and the ``continuous_training`` pipeline both call it, so both monitor a
window with the same arguments (the inference log and the window bounds included).

The window comes from :mod:`pipelines.schedule`: explicit bounds, else T-1 of the run's
scheduled time, monitored against T-2 (explicit bounds without reference bounds: against the
champion's training reference).
"""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact
from kfp.dsl.pipeline_task import PipelineTask

from pipelines.config import CtpipeConfig
from pipelines.kfp_components import Components
from pipelines.params import describe
from pipelines.platform import finish
from pipelines.schedule import add_first_tasks

Value = Any  # a constant or a pipeline channel (str at run time)

# The pipeline's outputs, declared once: KFP reads the annotation, the body returns an instance.
MonitoringOutputs = NamedTuple("MonitoringOutputs", [("decision", str), ("result", Artifact), ("report", HTML)])


@dataclass
class MonitoringTasks:
    """The tasks that monitor one window, for wiring outputs and further steps."""

    window: PipelineTask
    champion: PipelineTask
    snapshot: PipelineTask
    monitor: PipelineTask


def add_monitoring_tasks(
    ops: Components,
    *,
    local: bool,
    schedule: Value,
    serving: Value,
    tracking_uri: Value,
    source: Value,
    source_fingerprint: Value,
    dataset: Value,
    window_start: Value,
    window_end: Value,
    reference_start: Value,
    reference_end: Value,
    monitoring: Value,
    evaluation: Value,
    inference_log_dir: Value,
) -> MonitoringTasks:
    """Add window → current champion and snapshot of the window → monitor against the reference.

    Args:
        ops: The components.
        local: Built for kfp.local (no scheduled time).
        schedule: Schedule section (JSON): window length and anchor.
        serving: Serving section (JSON); its model name is the champion's.
        tracking_uri: MLflow tracking URI.
        source: Source table.
        source_fingerprint: Declared source version; empty to hash the source.
        dataset: Dataset section (JSON).
        window_start: Inclusive window start (ISO-8601); empty for the scheduled window.
        window_end: Exclusive window end (ISO-8601); empty for the scheduled window.
        reference_start: Inclusive start of the reference window; empty for T-2 or the champion's.
        reference_end: Exclusive end of the reference window.
        monitoring: Monitoring section (JSON).
        evaluation: Evaluation section (JSON): the metrics of live performance.
        inference_log_dir: Serving inference log, the current data with ``current_source: inference_log``.

    Returns:
        The tasks it added; ``monitor.outputs["Output"]`` is the decision.
    """
    first = add_first_tasks(
        ops,
        local=local,
        schedule=schedule,
        serving=serving,
        tracking_uri=tracking_uri,
        source=source,
        source_fingerprint=source_fingerprint,
        dataset=dataset,
        window_start=window_start,
        window_end=window_end,
        reference_start=reference_start,
        reference_end=reference_end,
    )
    window, champion, snapshot = first.window, first.champion, first.snapshot
    checked = ops.monitor(
        current=snapshot.outputs["snapshot"],
        dataset=dataset,
        monitoring=monitoring,
        evaluation=evaluation,
        champion_run_id=champion.outputs["run_id"],
        champion_uri=champion.outputs["model_uri"],
        tracking_uri=tracking_uri,
        inference_log_dir=inference_log_dir,
        window_start=window.outputs["window_start"],
        window_end=window.outputs["window_end"],
        source=source,
        # The reference window is keyed on the same fingerprint of the source as the snapshot.
        source_fingerprint=snapshot.inputs["source_fingerprint"],
        reference_start=window.outputs["reference_start"],
        reference_end=window.outputs["reference_end"],
    )
    return MonitoringTasks(window, champion, snapshot, checked)


def build(
    config: CtpipeConfig, ops: Components, code_version: str = "unknown", local: bool = False
) -> Callable[..., Any]:
    """Return the monitoring pipeline with every parameter defaulting to ``config``.

    ``local`` builds it for kfp.local, which has no scheduled time (:mod:`pipelines.schedule`).
    """

    @dsl.pipeline(
        name="ctpipe-monitoring",
        description="Measure per-feature and prediction drift (and live performance when labels "
        "arrived) of a window against the champion's training reference; decide ok, warn or retrain.",
    )
    @describe("Decide ok, warn or retrain from the drift of one window.")
    def monitoring(
        source: str = config.dataset.source,
        source_fingerprint: str = "",
        window_start: str = "",
        window_end: str = "",
        reference_start: str = "",
        reference_end: str = "",
        schedule: str = config.schedule.model_dump_json(),
        dataset: str = config.dataset.model_dump_json(),
        monitoring: str = config.monitoring.model_dump_json(),
        evaluation: str = config.evaluation.model_dump_json(),
        serving: str = config.serving.model_dump_json(),
        tracking_uri: str = config.tracking_uri,
        inference_log_dir: str = config.inference_log_dir,
    ) -> MonitoringOutputs:
        tasks = add_monitoring_tasks(
            ops,
            local=local,
            schedule=schedule,
            serving=serving,
            tracking_uri=tracking_uri,
            source=source,
            source_fingerprint=source_fingerprint,
            dataset=dataset,
            window_start=window_start,
            window_end=window_end,
            reference_start=reference_start,
            reference_end=reference_end,
            monitoring=monitoring,
            evaluation=evaluation,
            inference_log_dir=inference_log_dir,
        )
        # After monitoring read the window: retention and compaction of the inference log.
        upkeep = ops.maintain_inference_log(serving=serving, inference_log_dir=inference_log_dir).after(tasks.monitor)
        upkeep.set_display_name("maintain inference log")
        finish(config)
        checked = tasks.monitor
        return MonitoringOutputs(checked.outputs["Output"], checked.outputs["result"], checked.outputs["report"])

    return monitoring
