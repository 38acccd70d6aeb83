"""The monitoring pipeline: drift and live performance of a window against the champion's training data."""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from collections.abc import Callable
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact

from pipelines.config import CtpipeConfig
from pipelines.kfp_components import Components
from pipelines.params import describe
from pipelines.platform import finish


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
        tracking_uri: str = config.tracking_uri,
        inference_log_dir: str = str(config.workspace / "inference_log"),
    ) -> NamedTuple("MonitoringOutputs", [("decision", str), ("result", Artifact), ("report", HTML)]):  # type: ignore[valid-type]
        champion, current = ops.champion_and_snapshot(
            config.serving.model_name, tracking_uri, source, source_fingerprint, dataset, window_start, window_end
        )
        checked = ops.monitor(
            current=current.outputs["snapshot"],
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
        finish(config)
        MonitoringOutputs = NamedTuple("MonitoringOutputs", [("decision", str), ("result", Artifact), ("report", HTML)])
        return MonitoringOutputs(checked.outputs["Output"], checked.outputs["result"], checked.outputs["report"])

    return monitoring
