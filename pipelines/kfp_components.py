"""Thin KFP v2 components around the plain functions in ``components/``.

Each wrapper converts KFP inputs (parameters, typed artifacts) into the core function's
arguments, calls it, and fills typed outputs so the KFP UI shows datasets, models,
metrics, HTML reports and markdown. The wrappers import the core function inside their
body: KFP ships only the wrapper's source into the task, where the ctpipe package is
installed (the components image, or the local virtualenv).

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
    OutputPath,
    PipelineTaskFinalStatus,
)
from kfp.dsl.pipeline_task import PipelineTask
from kfp.dsl.python_component import PythonComponent

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
    # No placeholder may be spelled out in this function: KFP ships its source in the task's
    # command, and kfp.local tries to resolve every placeholder it finds there.
    from collections import namedtuple

    from components.common.schedule import run_windows
    from components.common.teardown import freeze_for_exit
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
    from components.common.teardown import freeze_for_exit
    from components.ingest import source_fingerprint

    fingerprint = declared or source_fingerprint(source)
    freeze_for_exit()  # it runs on every run: its exit need not walk what the storage layer imported
    return fingerprint


def current_champion(serving: str, tracking_uri: str) -> NamedTuple(  # type: ignore[valid-type]
    "Champion",
    [
        ("found", bool),
        ("version", str),
        ("model_uri", str),
        ("run_id", str),
        ("model_name", str),
        ("registry_state", str),
    ],
):
    """Resolve the registry alias ``champion`` to a fixed version, so later steps cache on it.

    The model is ``serving``'s ``model_name``, the spec deploy, infra validation and canary
    analysis read it from too; the name is an output, so train and register use the same one.
    ``registry_state`` is the model's whole registry state, read at the same time
    (components.common.registry_state): register, infra validation and deploy decide from it
    whether they have anything to do, and register's and infra validation's cache is keyed on it.
    """
    from collections import namedtuple

    from components.common.errors import ModelNotFound
    from components.common.registry import CHAMPION_ALIAS
    from components.common.registry_state import read_state
    from components.common.teardown import freeze_for_exit
    from components.serving_spec import ServingSpec

    model_name = ServingSpec.model_validate_json(serving).model_name
    # One read for both: the champion is the one the state shows (an aliased version is always detailed).
    state = read_state(model_name, tracking_uri)
    version = state.aliases.get(CHAMPION_ALIAS, "")
    held = state.version(version) if version else None
    if version and held is None:
        raise ModelNotFound(f"model {model_name!r} has no version {version}, which its {CHAMPION_ALIAS} alias names")
    Champion = namedtuple("Champion", ["found", "version", "model_uri", "run_id", "model_name", "registry_state"])
    freeze_for_exit()  # MLflow is loaded: the exit would walk it all
    if held is None:
        return Champion(False, "", "", "", model_name, state.to_json())
    return Champion(True, version, f"models:/{model_name}/{version}", held.run_id, model_name, state.to_json())


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
    from components.ingest import ingest as run_ingest
    from components.specs import DatasetSpec
    from pipelines.artifacts import attach

    result = run_ingest(
        source, DatasetSpec.model_validate_json(dataset), snapshot.path, window_start or None, window_end or None
    )
    attach(snapshot, result)
    snapshot.metadata["source_fingerprint"] = source_fingerprint
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
    import os

    import pandas as pd

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
    return suite_hash


def fetch_features(
    snapshot: Input[Dataset], dataset: str, feast: str, workspace: str, training_set: Output[Dataset]
) -> int:
    """Point-in-time training set from Feast; materializes the online store. Returns missing entities."""
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
    from components.common.io import write_json
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
    return result.blessed


def register(
    trained_model: Input[Model],
    evaluation: Input[Artifact],
    blessed: bool,
    model_name: str,
    tracking_uri: str,
    lineage: dict,
    snapshot_hash: str,
    suite_hash: str,
    pipeline_run: str,
    summary: Output[Markdown],
    registry_state: str = "",
) -> NamedTuple(  # type: ignore[valid-type]
    "Registered", [("version", str), ("blessed", bool), ("registry_state_after", str)]
):
    """Register the candidate with lineage tags; a blessed one gets the ``challenger`` alias.

    ``evaluation`` is evaluate's result (its ``blessing``): the version records the candidate's holdout
    metrics from it, the baseline monitoring compares live performance with.
    ``registry_state`` (current_champion's) keys the cache and lets a candidate that is already
    registered so be left alone; ``registry_state_after`` is the state it leaves, for infra validation.
    Cache this task only with ``registry_state`` wired so; without it, turn its caching off.
    """
    from collections import namedtuple

    from components.common.holdout import HoldoutMetrics
    from components.common.io import write_text
    from components.common.registry import PIPELINE_RUN_TAG, lineage_tags
    from components.common.registry_state import RegistryState, read_state
    from components.common.teardown import freeze_for_exit
    from components.register import register as run_register
    from pipelines.artifacts import markdown_table

    tags = {**lineage_tags(lineage, snapshot_hash, suite_hash), PIPELINE_RUN_TAG: pipeline_run}
    result = run_register(
        trained_model.metadata["model_uri"],
        trained_model.metadata["run_id"],
        model_name,
        blessed,
        tracking_uri,
        tags,
        known_state=RegistryState.from_json(registry_state, model_name),
        holdout=HoldoutMetrics.from_evaluation(evaluation.path),
    )
    write_text(summary.path, markdown_table(result.model_dump(mode="json"), f"Registered {model_name}"))
    # A skip changed nothing: the state it was given is still the state. Otherwise read what it left.
    after = registry_state if result.skipped else read_state(model_name, tracking_uri).to_json()
    Registered = namedtuple("Registered", ["version", "blessed", "registry_state_after"])
    freeze_for_exit()
    return Registered(result.version, result.blessed, after)


def deploy(
    version: str,
    serving: str,
    tracking_uri: str,
    workspace: str,
    profile: str,
    image: str,
    dry_run: bool,
    summary: Output[Markdown],
    dataset: str = "",
    feast: str = "",
    registry_state: str = "",
) -> str:
    """Roll the challenger out as a canary (local server or InferenceService); returns the endpoint.

    With ``dataset`` and ``feast`` a local server this starts also answers requests by entity id.
    ``registry_state`` (as infra validation left it) lets a canary already open, on a local server
    that answers so, be left alone. Never cached: the server can stop without the registry changing.
    """
    from components.common.feast import EntityLookup
    from components.common.io import write_text
    from components.common.registry_state import RegistryState
    from components.common.teardown import freeze_for_exit
    from components.deploy import deploy as run_deploy
    from components.serving_spec import ServingSpec
    from pipelines.artifacts import markdown_table

    spec = ServingSpec.model_validate_json(serving)
    lookup = EntityLookup.from_json(dataset, feast, workspace)
    result = run_deploy(
        version,
        spec,
        tracking_uri,
        workspace,
        profile,  # type: ignore[arg-type]
        image,
        dry_run,
        entity_lookup=lookup,
        known_state=RegistryState.from_json(registry_state, spec.model_name),
    )
    write_text(summary.path, markdown_table(result.model_dump(mode="json"), "Deployment"))
    freeze_for_exit()
    return result.endpoint


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
    from components.batch_predict import batch_predict as run_batch_predict
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
    import os
    import tempfile

    from components.common import tracking
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
    return outcome.decision


def infra_validate(
    version: str,
    eval_set: Input[Dataset],
    dataset: str,
    serving: str,
    tracking_uri: str,
    workspace: str,
    blessing: Output[Artifact],
    summary: Output[Markdown],
    registry_state_after: OutputPath(str),  # type: ignore[valid-type]
    registry_state: str = "",
) -> bool:
    """Start the registered version in a sandbox model server and try it; returns whether it is infra-blessed.

    ``registry_state`` (as register left it) keys the cache and lets a version that is already
    infra-blessed skip the sandbox; ``registry_state_after`` is the state it leaves, for deploy.
    Cache this task only with ``registry_state`` wired so; without it, turn its caching off.
    """
    from components.common.io import write_text
    from components.common.registry_state import RegistryState, read_state
    from components.common.teardown import freeze_for_exit
    from components.infra_validate import infra_validate as run_infra_validate
    from components.serving_spec import ServingSpec
    from components.specs import DatasetSpec
    from pipelines.artifacts import attach, markdown_table

    spec = ServingSpec.model_validate_json(serving)
    result = run_infra_validate(
        version,
        spec,
        tracking_uri,
        workspace,
        eval_set.path,
        DatasetSpec.model_validate_json(dataset),
        blessing.path,
        known_state=RegistryState.from_json(registry_state, spec.model_name),
    )
    attach(blessing, {"blessed": result.blessed, "reason": result.reason, "skipped": result.skipped})
    rows = {c.name: f"{'passed' if c.passed else 'FAILED'}: {c.detail}" for c in result.checks}
    write_text(summary.path, markdown_table({"blessed": result.blessed, **rows}, f"Infra validation of v{version}"))
    # A skip changed nothing; a validation wrote tags, so deploy gets the state as it is now.
    after = registry_state if result.skipped else read_state(spec.model_name, tracking_uri).to_json()
    write_text(registry_state_after, after)
    freeze_for_exit()
    return result.blessed


def canary_analysis(
    serving: str,
    dataset: str,
    tracking_uri: str,
    log_dir: str,
    labels_path: str,
    act: bool,
    result: Output[Artifact],
    report: Output[Markdown],
    profile: str = "embedded",
    serving_image: str = "",
    feast: str = "",
) -> str:
    """Compare challenger and champion on the canary's logged traffic; promote or roll back. Returns the decision.

    In the cluster profile the InferenceService's traffic then follows the new aliases.
    """
    from components.canary_analysis import canary_analysis as run_canary_analysis
    from components.common.feast import EntityLookup
    from components.common.kserve.traffic import ClusterTarget
    from components.serving_spec import ServingSpec
    from components.specs import DatasetSpec
    from pipelines.artifacts import attach

    cluster = None
    if profile == "cluster":  # a cluster pod has no workspace: Feast's state is where feast.root says
        cluster = ClusterTarget(image=serving_image, entity_lookup=EntityLookup.from_json(dataset, feast, ""))
    outcome = run_canary_analysis(
        ServingSpec.model_validate_json(serving),
        tracking_uri,
        log_dir,
        result.path,
        report.path,
        labels_path or None,
        DatasetSpec.model_validate_json(dataset),
        act=act,
        cluster=cluster,
    )
    attach(result, {"decision": outcome.decision, "reason": outcome.reason, "action": outcome.action})
    return outcome.decision


def maintain_inference_log(serving: str, inference_log_dir: str, result: Output[Artifact]) -> str:
    """Retention and compaction of the serving inference log; returns a one-line summary.

    Deletes the date partitions older than ``serving.inference_log.retention_days`` (none when
    unset), then compacts each past day's files into one (today is left to the server). Safe
    while the server writes and monitoring reads (docs/monitoring.md). Never cached: it depends on
    the date and on what the server wrote since.
    """
    from components.common import storage
    from components.common.inference_log import maintain
    from components.common.io import write_json
    from components.serving_spec import InferenceLogSpec, ServingSpec
    from pipelines.artifacts import attach

    settings = InferenceLogSpec.of(ServingSpec.model_validate_json(serving).inference_log)
    if not storage.is_dir(inference_log_dir):
        outcome = {"log_dir": storage.redact(inference_log_dir), "pruned_days": [], "compacted_days": {}}
    else:
        outcome = maintain(inference_log_dir, settings.retention_days)
    write_json(result.path, outcome)
    attach(result, outcome)
    return f"deleted {len(outcome['pruned_days'])} day(s), compacted {len(outcome['compacted_days'])} day(s)"


def notify(pipeline: str, reports_dir: str, status: PipelineTaskFinalStatus, summary: Output[Markdown]) -> str:
    """Exit handler: write the run's Markdown summary, also when the run failed; posts nothing."""
    from components.notify import run_summary

    result = run_summary(
        pipeline, status.state, status.pipeline_job_resource_name, status.error_message or "", summary.path, reports_dir
    )
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
