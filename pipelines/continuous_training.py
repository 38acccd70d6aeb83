"""The continuous-training pipeline: monitor a window, and if it drifted, retrain on it and roll out a canary.

monitoring → (if the decision is ``retrain``) the training DAG → (if blessed) canary, all
inside an exit handler that writes a Markdown run summary whether the run succeeded or
failed. The retrain branch reuses the monitored window's snapshot and the training DAG of
:mod:`pipelines.training` (one DAG, built by ``add_training_tasks``), so the candidate is
trained on exactly the newer data that triggered it.

It needs a champion to monitor against: train and promote a first model with the
``training`` pipeline.
"""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from collections.abc import Callable
from typing import Any

from kfp import dsl

from pipelines.config import CtpipeConfig
from pipelines.kfp_components import Components
from pipelines.params import describe
from pipelines.platform import finish
from pipelines.training import add_training_tasks, lineage_defaults

PIPELINE_NAME = "ctpipe-continuous-training"
RETRAIN = "retrain"  # the monitor component's decision that starts the training branch


def build(config: CtpipeConfig, ops: Components, code_version: str = "unknown") -> Callable[..., Any]:
    """Return the continuous-training pipeline with every parameter defaulting to ``config``."""
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
        dataset: str = config.dataset.model_dump_json(),
        model: str = config.model.model_dump_json(),
        evaluation: str = config.evaluation.model_dump_json(),
        serving: str = config.serving.model_dump_json(),
        feast: str = config.feast.model_dump_json(),
        monitoring: str = config.monitoring.model_dump_json(),
        tracking_uri: str = config.tracking_uri,
        workspace: str = str(config.workspace),
        profile: str = config.infra.profile,
        serving_image: str = config.infra.images.serving,
        dry_run: bool = False,
        lineage: dict = lineage_default,
        reports_dir: str = str(config.workspace / "reports"),
    ):
        model_name = config.serving.model_name
        summary = ops.notify(pipeline=PIPELINE_NAME, reports_dir=reports_dir)
        summary.set_display_name("run summary")
        with dsl.ExitHandler(summary, name="monitor-then-retrain"):
            champion, snapshot = ops.champion_and_snapshot(
                model_name, tracking_uri, source, source_fingerprint, dataset, window_start, window_end
            )
            checked = ops.monitor(
                current=snapshot.outputs["snapshot"],
                dataset=dataset,
                monitoring=monitoring,
                evaluation=evaluation,
                champion_run_id=champion.outputs["run_id"],
                champion_uri=champion.outputs["model_uri"],
                tracking_uri=tracking_uri,
            )
            with dsl.If(checked.outputs["Output"] == RETRAIN, name="drift-retrain"):
                add_training_tasks(
                    ops,
                    model_name,
                    champion,
                    snapshot,
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
                )
        finish(config)

    return continuous_training
