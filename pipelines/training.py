"""The training pipeline: ingest → validate → features → train → evaluate → register → infra validation → canary.

A candidate reaches traffic only if it passed validation, was blessed against the
champion on the same held-out data, was registered with its lineage, and loaded and
answered requests in a sandbox model server (infra validation).

The registry state the champion lookup reads is handed along register → infra validation →
deploy (each passes on the state it leaves): each step skips work already done, and register's
and infra validation's cache is keyed on it (``kfp_components.REGISTRY_KEYED``), so a re-run on
unchanged data and config starts no sandbox and moves nothing.

:func:`add_training_tasks` builds the task graph after the first steps (champion and
snapshot); the training pipeline and the ``continuous_training`` pipeline both call it, so
there is one training DAG.
"""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset
from kfp.dsl.pipeline_task import PipelineTask

from components.common.registry import CODE_VERSION_TAG, CONFIG_HASH_TAG
from pipelines.config import CtpipeConfig
from pipelines.kfp_components import Components
from pipelines.params import describe
from pipelines.platform import finish
from pipelines.schedule import add_first_tasks

Value = Any  # a constant or a pipeline channel (str, bool or dict at run time)


# The pipeline's outputs, declared once: KFP reads the annotation, the body returns an instance.
TrainingOutputs = NamedTuple(
    "TrainingOutputs",
    [
        ("version", str),
        ("blessed", bool),
        ("blessing", Artifact),
        ("validation_report", HTML),
        ("validation_data_docs", HTML),
        ("training_set", Dataset),
        ("evaluation_report", HTML),
    ],
)


@dataclass
class TrainingTasks:
    """The tasks of one training DAG, for wiring outputs and further steps."""

    validated: PipelineTask
    features: PipelineTask
    trained: PipelineTask
    evaluated: PipelineTask
    registered: PipelineTask
    infra_validated: PipelineTask
    canary: PipelineTask


def add_training_tasks(
    ops: Components,
    champion: PipelineTask,
    snapshot: PipelineTask,
    *,
    dataset: Value,
    model: Value,
    evaluation: Value,
    serving: Value,
    feast: Value,
    tracking_uri: Value,
    workspace: Value,
    profile: Value,
    serving_image: Value,
    dry_run: Value,
    lineage: Value,
    reinfer_suite: Value,
) -> TrainingTasks:
    """Add validate → features → train → evaluate → register → (if blessed) infra validation → canary.

    The registered model's name (train's MLflow experiment, register's model) is the
    champion task's ``model_name`` output: ``serving.model_name`` of the run's ``serving``
    parameter, the spec infra validation and deploy read, so all steps agree on the model
    even when ``serving`` is overridden at run time.

    Args:
        ops: The components.
        champion: The ``current_champion`` task.
        snapshot: The ``ingest`` task whose snapshot is trained on.
        dataset: Dataset section (JSON).
        model: Model section (JSON).
        evaluation: Evaluation section (JSON).
        serving: Serving section (JSON).
        feast: Feast section (JSON).
        tracking_uri: MLflow tracking URI.
        workspace: Local state folder.
        profile: 'embedded' or 'cluster'.
        serving_image: Predictor image.
        dry_run: Deploy writes manifests only.
        lineage: Lineage tags.
        reinfer_suite: Validate against a suite inferred from this snapshot, not the champion's.

    Returns:
        The tasks it added.
    """
    checked = ops.validate(
        snapshot=snapshot.outputs["snapshot"],
        dataset=dataset,
        champion_run_id=champion.outputs["run_id"],
        tracking_uri=tracking_uri,
        reinfer_suite=reinfer_suite,
    )
    features = ops.fetch_features(
        snapshot=snapshot.outputs["snapshot"], dataset=dataset, feast=feast, workspace=workspace
    )
    features.after(checked)  # never materialize features from data that failed validation
    trained = ops.train(
        training_set=features.outputs["training_set"],
        suite=checked.outputs["suite"],
        dataset=dataset,
        model=model,
        tracking_uri=tracking_uri,
        experiment=champion.outputs["model_name"],
        lineage=lineage,
        snapshot_hash=snapshot.outputs["Output"],
        suite_hash=checked.outputs["Output"],
    )
    evaluated = ops.evaluate(
        trained_model=trained.outputs["trained_model"],
        eval_set=trained.outputs["eval_set"],
        dataset=dataset,
        evaluation=evaluation,
        tracking_uri=tracking_uri,
        champion_uri=champion.outputs["model_uri"],
    )
    registered = ops.register(
        trained_model=trained.outputs["trained_model"],
        blessed=evaluated.outputs["Output"],
        # Evaluate's result: the holdout metrics the version records, the monitor's live-performance baseline.
        evaluation=evaluated.outputs["blessing"],
        model_name=champion.outputs["model_name"],
        tracking_uri=tracking_uri,
        lineage=lineage,
        snapshot_hash=snapshot.outputs["Output"],
        suite_hash=checked.outputs["Output"],
        pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        # The registry as the run found it: the cache key changes exactly when the registry does.
        registry_state=champion.outputs["registry_state"],
    )
    with dsl.If(evaluated.outputs["Output"] == True, name="candidate-blessed"):  # noqa: E712
        # Infra validation: the version must load and answer in a sandbox server before any traffic.
        infra = ops.infra_validate(
            version=registered.outputs["version"],
            eval_set=trained.outputs["eval_set"],
            dataset=dataset,
            serving=serving,
            tracking_uri=tracking_uri,
            workspace=workspace,
            registry_state=registered.outputs["registry_state_after"],
        )
        infra.set_display_name("infra validation")
        with dsl.If(infra.outputs["Output"] == True, name="infra-blessed"):  # noqa: E712
            canary = ops.deploy(
                version=registered.outputs["version"],
                serving=serving,
                tracking_uri=tracking_uri,
                workspace=workspace,
                profile=profile,
                image=serving_image,
                dry_run=dry_run,
                dataset=dataset,
                feast=feast,
                registry_state=infra.outputs["registry_state_after"],
            )
            canary.set_display_name("deploy canary")
    return TrainingTasks(checked, features, trained, evaluated, registered, infra, canary)


def lineage_defaults(config: CtpipeConfig, code_version: str) -> dict[str, str]:
    """The default ``lineage`` parameter: the config's hash and the code version."""
    return {CONFIG_HASH_TAG: config.section_hash(), CODE_VERSION_TAG: code_version}


def build(
    config: CtpipeConfig, ops: Components, code_version: str = "unknown", local: bool = False
) -> Callable[..., Any]:
    """Return the training pipeline with every parameter defaulting to ``config``.

    ``local`` builds it for kfp.local, which has no scheduled time (:mod:`pipelines.schedule`).
    """
    lineage_default = lineage_defaults(config, code_version)

    @dsl.pipeline(
        name="ctpipe-training",
        description="Ingest a window, validate it, build point-in-time features, train, evaluate "
        "against the champion, register, and roll a blessed candidate out as a canary.",
    )
    @describe("Train on one window and roll a blessed candidate out as a canary.")
    def training(
        source: str = config.dataset.source,
        source_fingerprint: str = "",
        window_start: str = "",
        window_end: str = "",
        schedule: str = config.schedule.model_dump_json(),
        dataset: str = config.dataset.model_dump_json(),
        model: str = config.model.model_dump_json(),
        evaluation: str = config.evaluation.model_dump_json(),
        serving: str = config.serving.model_dump_json(),
        feast: str = config.feast.model_dump_json(),
        tracking_uri: str = config.tracking_uri,
        workspace: str = config.task_workspace,
        profile: str = config.infra.profile,
        serving_image: str = config.infra.images.serving,
        dry_run: bool = False,
        lineage: dict = lineage_default,
        reinfer_suite: bool = False,
    ) -> TrainingOutputs:
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
        )
        champion, snapshot = first.champion, first.snapshot
        tasks = add_training_tasks(
            ops,
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
            reinfer_suite=reinfer_suite,
        )
        finish(config)
        return TrainingOutputs(
            tasks.registered.outputs["version"],
            tasks.registered.outputs["blessed"],
            tasks.evaluated.outputs["blessing"],
            tasks.validated.outputs["report"],
            tasks.validated.outputs["data_docs"],
            tasks.features.outputs["training_set"],
            tasks.evaluated.outputs["report"],
        )

    return training
