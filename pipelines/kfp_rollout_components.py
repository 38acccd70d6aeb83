"""The KFP wrappers of the release steps: from a trained candidate to the traffic it serves.

``current_champion`` resolves the registry's champion, ``register`` registers the candidate,
``infra_validate`` tries it in a sandbox model server, ``deploy`` rolls it out as a canary,
``canary_analysis`` promotes or rolls it back from its logged traffic, and
``maintain_inference_log`` keeps that log's retention. Like every wrapper they import their
core function inside their body (KFP ships only the wrapper's source into the task);
``pipelines.kfp_components`` builds them with the others into ``Components``.
"""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output, OutputPath


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
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from collections import namedtuple

    from components.common.errors import ModelNotFound
    from components.common.process_lifetime import freeze_for_exit
    from components.common.registry import CHAMPION_ALIAS
    from components.common.registry_state import read_state
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
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from collections import namedtuple

    from components.common.holdout import HoldoutMetrics
    from components.common.io import write_text
    from components.common.process_lifetime import freeze_for_exit
    from components.common.registry import PIPELINE_RUN_TAG, lineage_tags
    from components.common.registry_state import RegistryState, read_state
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
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common.feast import EntityLookup
    from components.common.io import write_text
    from components.common.process_lifetime import freeze_for_exit
    from components.common.registry_state import RegistryState
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
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common.io import write_text
    from components.common.process_lifetime import freeze_for_exit
    from components.common.registry_state import RegistryState, read_state
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
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.canary_analysis import canary_analysis as run_canary_analysis
    from components.common.feast import EntityLookup
    from components.common.kserve.traffic import ClusterTarget
    from components.common.process_lifetime import freeze_for_exit
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
    freeze_for_exit()
    return outcome.decision


def maintain_inference_log(serving: str, inference_log_dir: str, result: Output[Artifact]) -> str:
    """Retention and compaction of the serving inference log; returns a one-line summary.

    Deletes the date partitions older than ``serving.inference_log.retention_days`` (none when
    unset), then compacts each past day's files into one (today is left to the server). Safe
    while the server writes and monitoring reads (docs/monitoring.md). Never cached: it depends on
    the date and on what the server wrote since.
    """
    from components.common.process_lifetime import collect_rarely

    collect_rarely()
    from components.common import storage
    from components.common.inference_log import maintain
    from components.common.io import write_json
    from components.common.process_lifetime import freeze_for_exit
    from components.serving_spec import InferenceLogSpec, ServingSpec
    from pipelines.artifacts import attach

    settings = InferenceLogSpec.of(ServingSpec.model_validate_json(serving).inference_log)
    if not storage.is_dir(inference_log_dir):
        outcome = {"log_dir": storage.redact(inference_log_dir), "pruned_days": [], "compacted_days": {}}
    else:
        outcome = maintain(inference_log_dir, settings.retention_days)
    write_json(result.path, outcome)
    attach(result, outcome)
    freeze_for_exit()
    return f"deleted {len(outcome['pruned_days'])} day(s), compacted {len(outcome['compacted_days'])} day(s)"
