"""Thin KFP v2 components around the plain functions in ``components/``, all listed in ``Components``.

Each wrapper converts KFP inputs (parameters, typed artifacts) into the core function's
arguments, calls it, and fills typed outputs so the KFP UI shows datasets, models,
metrics, HTML reports and markdown. The wrappers import the core function inside their
body: KFP ships only the wrapper's source into the task, where the ctpipe package is
installed (the components image, or the local virtualenv). The wrappers of the data, training,
scoring and monitoring steps are here; those of the release steps (champion, register, infra
validation, deploy, canary analysis, inference-log maintenance) are in
``pipelines/kfp_rollout_components.py``.

The image is a setting (``infra.images.components``), so components are built by
``build_components(image)`` rather than decorated at import time. Each task gets only
the config sections it uses, so its cache key covers exactly its settings: changing a
monitoring threshold does not retrain the model. Sections travel as JSON strings, not
``dict`` parameters: KFP stores dicts as protobuf Structs, which turn every number into a
float (``max_iter: 60`` would arrive as ``60.0``).
"""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
    PipelineTaskFinalStatus,
)
from kfp.dsl.pipeline_task import PipelineTask
from kfp.dsl.python_component import PythonComponent

from pipelines.kfp_rollout_components import (
    canary_analysis,
    current_champion,
    deploy,
    infra_validate,
    maintain_inference_log,
    register,
)

if TYPE_CHECKING:
    from pipelines.config import ImagesSpec

# Never cached, by component name: steps with side effects that must happen on every run
# (changing traffic, notifying), steps whose target lives outside the registry (the model server
# deploy checks), and lookups of things that change outside the pipeline (the registry, the
# source's content). ``pipelines.platform.finish`` applies it.
UNCACHED = (
    "schedule_window",
    "current_champion",
    "fingerprint_source",
    "deploy",
    "canary_analysis",
    "maintain_inference_log",
    "notify",
)
# Side-effect steps that are cached anyway, keyed on the registry: their ``registry_state`` input
# is the model's registry state as the run found it (``current_champion``) or as the previous step
# left it, so their cache key changes exactly when the registry changes. Running one changes the
# registry (or it skips, changing nothing), so only idempotent skips are ever replayed from the
# cache (components.common.registry_state).
REGISTRY_KEYED = ("register", "infra_validate")


def schedule_window(
    scheduled_time: str,
    window_start: str,
    window_end: str,
    reference_start: str,
    reference_end: str,
    schedule: str,
) -> NamedTuple(  # type: ignore[valid-type]
    "Window",
    [("window_start", str), ("window_end", str), ("reference_start", str), ("reference_end", str), ("origin", str)],
):
    """The window this run reads: its explicit bounds, else T-1 of its scheduled time (and T-2 as reference).

    ``scheduled_time`` is KFP's scheduled-time placeholder on a cluster (a recurring run's
    scheduled time, a one-off run's creation time) and empty under kfp.local.
    Never cached: the time is an input that moves outside the pipeline. Ingest is keyed on the
    bounds it returns, so runs for the same window still share ingest's cache entry.
    """
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    # No placeholder may be spelled out in this function: KFP ships its source in the task's
    # command, and kfp.local tries to resolve every placeholder it finds there.
    from collections import namedtuple

    from components.common.process_lifetime import freeze_for_exit
    from components.common.schedule import run_windows
    from components.specs import ScheduleSpec

    spec = ScheduleSpec.model_validate_json(schedule)
    resolved = run_windows(
        scheduled_time, window_start, window_end, reference_start, reference_end, spec.window, spec.anchor
    )
    print(
        f"window [{resolved.window_start or '-inf'}, {resolved.window_end or '+inf'}), "
        f"reference [{resolved.reference_start or '-'}, {resolved.reference_end or '-'}) ({resolved.origin})"
    )
    Window = namedtuple("Window", ["window_start", "window_end", "reference_start", "reference_end", "origin"])
    freeze_for_exit()  # it runs on every run: its exit need not walk what the specs imported
    return Window(
        resolved.window_start, resolved.window_end, resolved.reference_start, resolved.reference_end, resolved.origin
    )


def fingerprint_source(source: str, declared: str) -> str:
    """The source's version when the run starts; it keys ``ingest``'s cache, never wall-clock time.

    ``declared`` (an object version or ETag the caller knows) is used as is; empty means
    hash the source's content now.
    """
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common.process_lifetime import freeze_for_exit
    from components.ingest import source_fingerprint

    fingerprint = declared or source_fingerprint(source)
    freeze_for_exit()  # it runs on every run: its exit need not walk what the storage layer imported
    return fingerprint


def ingest(
    source: str,
    source_fingerprint: str,
    dataset: str,
    window_start: str,
    window_end: str,
    snapshot: Output[Dataset],
) -> str:
    """Snapshot one time window of the source; returns the snapshot's content hash.

    ``source_fingerprint`` (size, mtime and hash of the source, computed by the caller) is
    part of the cache key, so a changed source file is never served from cache.
    """
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common.process_lifetime import freeze_for_exit
    from components.ingest import ingest as run_ingest
    from components.specs import DatasetSpec
    from pipelines.artifacts import attach

    result = run_ingest(
        source, DatasetSpec.model_validate_json(dataset), snapshot.path, window_start or None, window_end or None
    )
    attach(snapshot, result)
    snapshot.metadata["source_fingerprint"] = source_fingerprint
    freeze_for_exit()
    return result.content_hash


def validate(
    snapshot: Input[Dataset],
    dataset: str,
    champion_run_id: str,
    tracking_uri: str,
    reinfer_suite: bool,
    suite: Output[Artifact],
    result: Output[Artifact],
    report: Output[HTML],
    data_docs: Output[HTML],
    quarantine: Output[Dataset],
) -> str:
    """Validate a snapshot against the champion's suite (or one inferred from it); returns the suite hash.

    ``report`` is ctpipe's summary (verdict, failures with messages, skipped checks);
    ``data_docs`` is Great Expectations' Data Docs page of the same run, every expectation
    with its observed values. Raises on blocking failures, which stops the pipeline before training.
    """
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    import os

    import pandas as pd

    from components.common.process_lifetime import freeze_for_exit
    from components.common.suites import save_suite, suite_for_run
    from components.specs import DatasetSpec
    from components.validate import validate as run_validate
    from pipelines.artifacts import attach, ensure_file

    spec = DatasetSpec.model_validate_json(dataset)
    suite_dict, origin = suite_for_run(
        pd.read_parquet(snapshot.path), spec, champion_run_id, tracking_uri, reinfer=reinfer_suite
    )
    suite_hash = save_suite(suite_dict, suite.path)
    suite.metadata["suite_hash"] = suite_hash
    suite.metadata["origin"] = origin
    # Messages name the file the user gave, not the snapshot artifact.
    source_name = os.path.basename(str(snapshot.metadata.get("source") or "")) or None
    outcome = run_validate(
        snapshot.path,
        spec,
        suite_dict,
        result.path,
        report.path,
        quarantine.path,
        source_name=source_name,
        data_docs_path=data_docs.path,
    )
    attach(result, {"success": outcome.success, "warnings": len(outcome.warnings), "rows": outcome.rows})
    # On the report too: it is a pipeline output, so the run summary can show the warnings.
    report.metadata["warnings"] = [o.message for o in outcome.warnings]
    report.metadata["quarantined_rows"] = outcome.quarantined_rows
    ensure_file(quarantine)
    freeze_for_exit()
    return suite_hash


def fetch_features(
    snapshot: Input[Dataset], dataset: str, feast: str, workspace: str, training_set: Output[Dataset]
) -> int:
    """Point-in-time training set from Feast; materializes the online store. Returns missing entities."""
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common.process_lifetime import freeze_for_exit
    from components.fetch_features import build_training_set
    from components.specs import DatasetSpec, FeastSpec
    from pipelines.artifacts import attach

    result = build_training_set(
        snapshot.path,
        DatasetSpec.model_validate_json(dataset),
        FeastSpec.model_validate_json(feast),
        workspace,
        training_set.path,
    )
    attach(training_set, result)
    freeze_for_exit()
    return result.missing_entities


def train(
    training_set: Input[Dataset],
    suite: Input[Artifact],
    dataset: str,
    model: str,
    tracking_uri: str,
    experiment: str,
    lineage: dict,
    snapshot_hash: str,
    suite_hash: str,
    trained_model: Output[Model],
    eval_set: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Train the scikit-learn pipeline and log it to MLflow with lineage tags; returns the model URI."""
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common.io import write_json
    from components.common.process_lifetime import freeze_for_exit
    from components.common.registry import lineage_tags
    from components.specs import DatasetSpec, ModelSpec
    from components.train import train as run_train
    from pipelines.artifacts import attach, write_metrics

    tags = lineage_tags(lineage, snapshot_hash, suite_hash)
    result = run_train(
        training_set.path,
        DatasetSpec.model_validate_json(dataset),
        ModelSpec.model_validate_json(model),
        tracking_uri,
        experiment,
        eval_set.path,
        suite.path,
        tags,
    )
    write_json(trained_model.path, result.model_dump(mode="json"))
    attach(trained_model, result)
    write_metrics(metrics, result.metrics)
    freeze_for_exit()
    return result.model_uri


def evaluate(
    trained_model: Input[Model],
    eval_set: Input[Dataset],
    dataset: str,
    evaluation: str,
    tracking_uri: str,
    champion_uri: str,
    blessing: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    curves: Output[ClassificationMetrics],
) -> bool:
    """Score candidate and champion on the same held-out data; returns whether the candidate is blessed."""
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common.process_lifetime import freeze_for_exit
    from components.evaluate import evaluate as run_evaluate
    from components.specs import DatasetSpec, EvaluationSpec
    from pipelines.artifacts import attach, per_class_values, write_classification_metrics, write_metrics

    result = run_evaluate(
        trained_model.metadata["model_uri"],
        eval_set.path,
        DatasetSpec.model_validate_json(dataset),
        EvaluationSpec.model_validate_json(evaluation),
        tracking_uri,
        champion_uri or None,
        blessing.path,
        report.path,
    )
    values = {f"candidate_{k}": v for k, v in result.candidate.items()}
    values.update({f"champion_{k}": v for k, v in (result.champion or {}).items()})
    failed = [c.reason for c in result.checks if not c.passed]
    # Multiclass: the candidate's per-class precision, recall and F1 show in the KFP UI's metrics table.
    values.update(per_class_values(result.per_class))
    # The metric values ride on the blessing too, so run summaries can show them.
    attach(blessing, {"blessed": result.blessed, "failed_checks": failed, **values})
    write_metrics(metrics, values)
    write_classification_metrics(curves, result.curves)
    freeze_for_exit()
    return result.blessed


def batch_predict(
    snapshot: Input[Dataset],
    dataset: str,
    model_uri: str,
    model_version: str,
    tracking_uri: str,
    spark_master: str,
    predictions: Output[Dataset],
) -> int:
    """Score a snapshot with Spark using a fixed model version; returns the rows scored."""
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.batch_predict import batch_predict as run_batch_predict
    from components.common.process_lifetime import freeze_for_exit
    from components.specs import DatasetSpec
    from pipelines.artifacts import attach

    result = run_batch_predict(
        snapshot.path,
        DatasetSpec.model_validate_json(dataset),
        model_uri,
        tracking_uri,
        predictions.path,
        spark_master,
        model_version,
    )
    attach(predictions, result)
    freeze_for_exit()
    return result.rows


def monitor(
    current: Input[Dataset],
    dataset: str,
    monitoring: str,
    evaluation: str,
    champion_run_id: str,
    champion_uri: str,
    tracking_uri: str,
    result: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    inference_log_dir: str = "",
    window_start: str = "",
    window_end: str = "",
    source: str = "",
    source_fingerprint: str = "",
    reference_start: str = "",
    reference_end: str = "",
) -> str:
    """Drift of the current window against a reference; returns ok, warn or retrain.

    The reference is the window ``[reference_start, reference_end)`` of ``source`` when a
    bound is given (T-2 in a scheduled run; ``source_fingerprint`` keys the cache on the
    source's content), else the champion's training reference. With ``current_source:
    inference_log`` the requests the server answered in the window are the current data and
    the window's snapshot supplies the labels.
    """
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    import os
    import tempfile

    from components.common import tracking
    from components.common.process_lifetime import freeze_for_exit
    from components.ingest import ingest as run_ingest
    from components.monitor import monitor as run_monitor
    from components.specs import DatasetSpec, EvaluationSpec, MonitoringSpec
    from pipelines.artifacts import attach, write_metrics

    tracking.configure(tracking_uri)
    if reference_start or reference_end:
        reference = os.path.join(tempfile.mkdtemp(), "reference.parquet")
        run_ingest(source, DatasetSpec.model_validate_json(dataset), reference, reference_start, reference_end)
        reference_note = f"window [{reference_start or '-inf'}, {reference_end or '+inf'}) of the source"
    else:
        reference = str(
            tracking.download_run_artifact(champion_run_id, tracking.REFERENCE_ARTIFACT, tempfile.mkdtemp())
        )
        reference_note = f"training reference of the champion (run {champion_run_id})"
    thresholds = MonitoringSpec.model_validate_json(monitoring)
    from_log = thresholds.current_source == "inference_log"
    outcome = run_monitor(
        reference,
        inference_log_dir if from_log else current.path,
        DatasetSpec.model_validate_json(dataset),
        thresholds,
        result.path,
        report.path,
        champion_uri,
        tracking_uri,
        EvaluationSpec.model_validate_json(evaluation).metrics,
        labels_path=current.path if from_log else None,
        window_start=window_start or None,
        window_end=window_end or None,
    )
    facts = {"decision": outcome.decision, "reasons": outcome.reasons, "reference": reference_note}
    if outcome.baseline is not None:
        # Where the reference values of live performance came from: the champion's holdout, or none.
        facts["performance_baseline"] = outcome.baseline.note
    attach(result, facts)
    values = {f"psi_{f.feature}": f.psi for f in outcome.features}
    if outcome.prediction_psi is not None:
        values["prediction_psi"] = outcome.prediction_psi
    values.update({f"live_{k}": v for k, v in (outcome.performance or {}).items()})
    write_metrics(metrics, values)
    freeze_for_exit()
    return outcome.decision


def notify(pipeline: str, reports_dir: str, status: PipelineTaskFinalStatus, summary: Output[Markdown]) -> str:
    """Exit handler: write the run's Markdown summary, also when the run failed; posts nothing."""
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common.process_lifetime import freeze_for_exit
    from components.notify import run_summary

    result = run_summary(
        pipeline, status.state, status.pipeline_job_resource_name, status.error_message or "", summary.path, reports_dir
    )
    freeze_for_exit()
    return result.state


@dataclass(frozen=True)
class Components:
    """The KFP components, built for one image."""

    schedule_window: PythonComponent
    current_champion: PythonComponent
    ingest: PythonComponent
    validate: PythonComponent
    fetch_features: PythonComponent
    train: PythonComponent
    evaluate: PythonComponent
    register: PythonComponent
    deploy: PythonComponent
    batch_predict: PythonComponent
    monitor: PythonComponent
    infra_validate: PythonComponent
    canary_analysis: PythonComponent
    fingerprint_source: PythonComponent
    maintain_inference_log: PythonComponent
    notify: PythonComponent

    def champion_and_snapshot(
        self,
        *,
        serving: str,
        tracking_uri: str,
        source: str,
        source_fingerprint: str,
        dataset: str,
        window_start: str,
        window_end: str,
    ) -> tuple[PipelineTask, PipelineTask]:
        """Resolve the champion and snapshot the window (after the window task: ``pipelines.schedule.add_first_tasks``).

        The champion task reads the model name from ``serving`` (the pipeline's ``serving``
        parameter) and outputs it as ``model_name``, for every later task that needs it.

        An uncached task fingerprints the source when the run starts (``source_fingerprint``,
        if not empty, is a version the caller declares instead), so ingest is keyed on the
        data it reads: a schedule whose parameters never change still sees new data.
        """
        champion = self.current_champion(serving=serving, tracking_uri=tracking_uri)
        champion.set_display_name("current champion")
        fingerprint = self.fingerprint_source(source=source, declared=source_fingerprint)
        fingerprint.set_display_name("fingerprint source")
        snapshot = self.ingest(
            source=source,
            source_fingerprint=fingerprint.output,
            dataset=dataset,
            window_start=window_start,
            window_end=window_end,
        )
        return champion, snapshot


def build_components(images: "str | ImagesSpec") -> Components:
    """Build every component to run in its image (which already has ctpipe and kfp installed).

    Args:
        images: One image for all, or the images section (a default plus per-component overrides).
    """
    from pipelines.config import ImagesSpec

    spec = ImagesSpec(components=images) if isinstance(images, str) else images

    def make(func: Any) -> PythonComponent:
        return dsl.component(func, base_image=spec.for_component(func.__name__), install_kfp_package=False)

    return Components(
        schedule_window=make(schedule_window),
        current_champion=make(current_champion),
        ingest=make(ingest),
        validate=make(validate),
        fetch_features=make(fetch_features),
        train=make(train),
        evaluate=make(evaluate),
        register=make(register),
        deploy=make(deploy),
        batch_predict=make(batch_predict),
        monitor=make(monitor),
        infra_validate=make(infra_validate),
        canary_analysis=make(canary_analysis),
        fingerprint_source=make(fingerprint_source),
        maintain_inference_log=make(maintain_inference_log),
        notify=make(notify),
    )
