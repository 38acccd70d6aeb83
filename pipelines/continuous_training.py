"""The continuous-training pipeline: monitor a window, and if it drifted, retrain on it and roll out a canary.

monitoring → (if the decision is ``retrain``) the training DAG → (if blessed) canary, all
inside an exit handler that writes a Markdown run summary whether the run succeeded or
failed. Monitoring is built by :func:`pipelines.monitoring.add_monitoring_tasks` and the
training DAG by :func:`pipelines.training.add_training_tasks`, the helpers the monitoring and
training pipelines use, so each step gets the same arguments here as there. The retrain
branch trains on the monitored window's snapshot: exactly the newer data that triggered it.

It needs a champion to monitor against: train and promote a first model with the
``training`` pipeline.
"""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from collections.abc import Callable
from typing import Any

from kfp import dsl

from pipelines.config import CtpipeConfig
from pipelines.kfp_components import Components
from pipelines.monitoring import add_monitoring_tasks
from pipelines.params import describe
from pipelines.platform import finish
from pipelines.training import add_training_tasks, lineage_defaults

PIPELINE_NAME = "ctpipe-continuous-training"
RETRAIN = "retrain"  # the monitor component's decision that starts the training branch


def build(
    config: CtpipeConfig, ops: Components, code_version: str = "unknown", local: bool = False
) -> Callable[..., Any]:
    """Return the continuous-training pipeline with every parameter defaulting to ``config``.

    ``local`` builds it for kfp.local, which has no scheduled time (:mod:`pipelines.schedule`).
    """
    lineage_default = lineage_defaults(config, code_version)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Monitor a window against the champion; on a retrain decision, train on that window, "
        "evaluate against the champion, register and roll a blessed candidate out as a canary. "
        "An exit handler writes a Markdown run summary.",
    )
    @describe("Monitor one window; retrain on it and roll out a canary when it drifted.")
    def continuous_training(
        source: str = config.dataset.source,
        source_fingerprint: str = "",
        window_start: str = "",
        window_end: str = "",
        reference_start: str = "",
        reference_end: str = "",
        schedule: str = config.schedule.model_dump_json(),
        dataset: str = config.dataset.model_dump_json(),
        model: str = config.model.model_dump_json(),
        evaluation: str = config.evaluation.model_dump_json(),
        serving: str = config.serving.model_dump_json(),
        feast: str = config.feast.model_dump_json(),
        monitoring: str = config.monitoring.model_dump_json(),
        tracking_uri: str = config.tracking_uri,
        inference_log_dir: str = config.inference_log_dir,
        workspace: str = config.task_workspace,
        profile: str = config.infra.profile,
        serving_image: str = config.infra.images.serving,
        dry_run: bool = False,
        lineage: dict = lineage_default,
        reports_dir: str = config.reports_dir,
    ):
        summary = ops.notify(pipeline=PIPELINE_NAME, reports_dir=reports_dir)
        summary.set_display_name("run summary")
        with dsl.ExitHandler(summary, name="monitor-then-retrain"):
            monitored = add_monitoring_tasks(
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
            with dsl.If(monitored.monitor.outputs["Output"] == RETRAIN, name="drift-retrain"):
                add_training_tasks(
                    ops,
                    monitored.champion,
                    monitored.snapshot,
                    dataset=dataset,
                    model=model,
                    evaluation=evaluation,
                    serving=serving,
                    feast=feast,
                    tracking_uri=tracking_uri,
                    workspace=workspace,
                    profile=profile,
                    serving_image=serving_image,
                    dry_run=dry_run,
                    lineage=lineage,
                    reinfer_suite=False,  # drift is not an intended change: validate against the champion's suite
                )
        finish(config)

    return continuous_training
