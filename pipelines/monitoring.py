"""The monitoring pipeline: drift and live performance of a window against the champion's training data.

:func:`add_monitoring_tasks` builds its tasks (champion, snapshot, monitor); the monitoring
pipeline and the ``continuous_training`` pipeline both call it, so both monitor a window
with the same arguments (the inference log and the window bounds included).
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

Value = Any  # a constant or a pipeline channel (str at run time)

# The pipeline's outputs, declared once: KFP reads the annotation, the body returns an instance.
MonitoringOutputs = NamedTuple("MonitoringOutputs", [("decision", str), ("result", Artifact), ("report", HTML)])


@dataclass
class MonitoringTasks:
    """The tasks that monitor one window, for wiring outputs and further steps."""

    champion: PipelineTask
    snapshot: PipelineTask
    monitor: PipelineTask


def add_monitoring_tasks(
    ops: Components,
    *,
    serving: Value,
    tracking_uri: Value,
    source: Value,
    source_fingerprint: Value,
    dataset: Value,
    window_start: Value,
    window_end: Value,
    monitoring: Value,
    evaluation: Value,
    inference_log_dir: Value,
) -> MonitoringTasks:
    """Add current champion and snapshot of the window → monitor against the champion.

    Args:
        ops: The components.
        serving: Serving section (JSON); its model name is the champion's.
        tracking_uri: MLflow tracking URI.
        source: Source table.
        source_fingerprint: Declared source version; empty to hash the source.
        dataset: Dataset section (JSON).
        window_start: Inclusive window start (ISO-8601); empty for unbounded.
        window_end: Exclusive window end (ISO-8601); empty for unbounded.
        monitoring: Monitoring section (JSON).
        evaluation: Evaluation section (JSON): the metrics of live performance.
        inference_log_dir: Serving inference log, the current data with ``current_source: inference_log``.

    Returns:
        The tasks it added; ``monitor.outputs["Output"]`` is the decision.
    """
    champion, snapshot = ops.champion_and_snapshot(
        serving=serving,
        tracking_uri=tracking_uri,
        source=source,
        source_fingerprint=source_fingerprint,
        dataset=dataset,
        window_start=window_start,
        window_end=window_end,
    )
    checked = ops.monitor(
        current=snapshot.outputs["snapshot"],
        dataset=dataset,
        monitoring=monitoring,
        evaluation=evaluation,
        champion_run_id=champion.outputs["run_id"],
        champion_uri=champion.outputs["model_uri"],
        tracking_uri=tracking_uri,
        inference_log_dir=inference_log_dir,
        window_start=window_start,
        window_end=window_end,
    )
    return MonitoringTasks(champion, snapshot, checked)


def build(config: CtpipeConfig, ops: Components, code_version: str = "unknown") -> Callable[..., Any]:
    """Return the monitoring pipeline with every parameter defaulting to ``config``."""

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
        dataset: str = config.dataset.model_dump_json(),
        monitoring: str = config.monitoring.model_dump_json(),
        evaluation: str = config.evaluation.model_dump_json(),
        serving: str = config.serving.model_dump_json(),
        tracking_uri: str = config.tracking_uri,
        inference_log_dir: str = str(config.workspace / "inference_log"),
    ) -> MonitoringOutputs:
        tasks = add_monitoring_tasks(
            ops,
            serving=serving,
            tracking_uri=tracking_uri,
            source=source,
            source_fingerprint=source_fingerprint,
            dataset=dataset,
            window_start=window_start,
            window_end=window_end,
            monitoring=monitoring,
            evaluation=evaluation,
            inference_log_dir=inference_log_dir,
        )
        finish(config)
        checked = tasks.monitor
        return MonitoringOutputs(checked.outputs["Output"], checked.outputs["result"], checked.outputs["report"])

    return monitoring
