"""Register candidates in the MLflow model registry with their lineage, and trace that lineage back.

A version is created once per training run, carrying ``ctpipe.blessed`` from the moment it
exists; a blessed one becomes ``challenger`` under the registry lock. The alias rules and
the operations that move aliases (``promote``, ``rollback``) are in
:mod:`components.common.registry`. With evaluate's result, the version also records the metrics
and scores evaluation measured on its holdout (``ctpipe.holdout_metrics``), the baseline the monitor
compares live performance and prediction drift with (:mod:`components.common.holdout`).

Each version is also compiled to ONNX (:mod:`components.common.compiled_model`): ``model.onnx``
is logged among the logged model's artifacts, so ``models:/NAME/VERSION`` downloads it with the
model (the model server's fast path, and the export for edge deployment), and the version gets
the tags ``ctpipe.onnx`` (``compiled`` or ``unsupported: <reason>``) and ``ctpipe.onnx_sha256``.
A model that cannot be compiled is still registered; the sklearn model serves it.

What is registered is only what ``train`` hands over: a logged model ``models:/m-<id>`` on the
configured tracking server, logged by the given run, with the SHA-256 every loader checks. Not
``runs:/`` URIs, paths or registered versions (docs/security.md).

In a pipeline, ``register`` gets the registry state ``current_champion`` read
(:mod:`components.common.registry_state`); when the candidate is already registered exactly as it
would register it, it changes nothing and says so (an idempotent skip), without importing MLflow.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from components.common import tracking
from components.common.environments import ENVIRONMENTS, environments_of, since_tag, until_tag
from components.common.errors import ConfigError, CtpipeError, ModelNotFound
from components.common.holdout import HoldoutMetrics
from components.common.logs import get_logger
from components.common.registry import (
    BLESSED_TAG,
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    CODE_VERSION_TAG,
    CONFIG_HASH_TAG,
    DATA_SNAPSHOT_TAG,
    FEATURES_TAG,
    HOLDOUT_METRICS_TAG,
    ONNX_ARTIFACT,
    ONNX_SHA256_TAG,
    ONNX_TAG,
    PIPELINE_RUN_TAG,
    PREVIOUS_CHAMPION_TAG,
    RESERVED_TAGS,
    RUN_ID_TAG,
    TRAINING_SET_HASH_TAG,
    aliases_of,
    blessing,
    get_version,
    set_alias,
    suite_hash_of,
)
from components.common.registry_lease import is_missing, registered_model, registry_lock
from components.common.registry_state import RegistryState, VersionState, renew_epoch
from components.common.skips import log_skip

log = get_logger("register")

_READY_TIMEOUT_SECONDS = 300
#: Longest ``unsupported: <reason>`` written to the ONNX tag.
_ONNX_REASON_CHARS = 500


class RegisterResult(BaseModel):
    """The version that holds a candidate, and the aliases it has after registration."""

    name: str
    version: str
    blessed: bool
    aliases: list[str]
    created: bool
    onnx: str = Field(default="", description="The version's ctpipe.onnx tag: compiled, or unsupported: <reason>.")
    skipped: str = Field(default="", description="Why nothing was changed (an idempotent skip); empty when it worked.")


def _ensure_registered_model(client: Any, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    if registered_model(client, model_name) is not None:
        return
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _existing_version(client: Any, model_name: str, run_id: str) -> Any | None:
    quoted_name = model_name.replace("'", "\\'")
    quoted_run = run_id.replace("'", "\\'")
    versions = client.search_model_versions(f"name='{quoted_name}' and run_id='{quoted_run}'")
    versions = [v for v in versions if v.name == model_name and v.run_id == run_id]
    return min(versions, key=lambda v: int(v.version)) if versions else None


def logged_model_id(model_uri: str) -> str:
    """The logged model ``model_uri`` names; register takes nothing else.

    Raises:
        ConfigError: ``model_uri`` is not ``models:/m-<id>`` (a ``runs:/`` URI, a path, a
            registered version or alias, another scheme), naming the field and the expected form.
    """
    try:
        model_id = tracking.parse_model_uri(model_uri).model_id
    except ConfigError:
        model_id = None
    if model_id is None:
        raise ConfigError(
            f"register: model_uri {str(model_uri)!r} is not accepted; expected models:/m-<id>, the logged model "
            "that train returns (its model_uri), on the configured tracking server. runs:/ URIs, paths and "
            "registered versions or aliases (models:/NAME/VERSION, models:/NAME@ALIAS) are refused",
            hint="Pass the model_uri of train's result (the trained_model artifact's metadata in a pipeline).",
        )
    return model_id


def _check_logged_model(client: Any, model_uri: str, model_id: str, run_id: str) -> None:
    """The logged model exists on this tracking server, was logged by ``run_id``, and has the hash loaders check.

    Raises:
        ModelNotFound: No such logged model on the configured server.
        CtpipeError: It was logged by another run.
        ModelIntegrityError: No SHA-256 was recorded for it: no ctpipe step could load the version.
    """
    from mlflow.exceptions import MlflowException

    try:
        logged = client.get_logged_model(model_id)
    except MlflowException as exc:
        raise ModelNotFound(
            f"register: model_uri {model_uri}: no such logged model on the tracking server: {exc}"
        ) from exc
    if logged.source_run_id and logged.source_run_id != run_id:
        raise CtpipeError(
            f"register: model_uri {model_uri} was logged by run {logged.source_run_id}, not by run {run_id}"
        )
    if not (logged.tags or {}).get(tracking.MODEL_SHA256_TAG):
        raise tracking.ModelIntegrityError(
            f"register: model_uri {model_uri} has no recorded SHA-256 (logged-model tag {tracking.MODEL_SHA256_TAG}); "
            "a version of it could not be loaded by any ctpipe step, so it is not registered"
        )


def _create_version(
    client: Any, model_uri: str, model_id: str, run_id: str, model_name: str, tags: dict[str, str]
) -> Any:
    return client.create_model_version(model_name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id)


def _wait_ready(client: Any, model_name: str, version: str) -> Any:
    deadline = time.monotonic() + _READY_TIMEOUT_SECONDS
    while True:
        model_version = client.get_model_version(model_name, version)
        if model_version.status == "READY":
            return model_version
        if model_version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise CtpipeError(
                f"model {model_name!r} version {version} is {model_version.status}: "
                f"{model_version.status_message or 'no message'}"
            )
        time.sleep(0.5)


def _logged_model_id(model_version: Any) -> str | None:
    """The MLflow 3 logged model behind a version: its ``model_id``, or the ``m-...`` of a ``models:/m-...`` source."""
    if getattr(model_version, "model_id", None):
        return str(model_version.model_id)
    source = str(model_version.source or "")
    model_id = source.removeprefix("models:/")
    return model_id if source.startswith("models:/m-") and "/" not in model_id else None


def _compile(local: Path, model_uri: str, client: Any) -> bytes:
    """Compile the model downloaded to ``local`` from ``model_uri`` (an MLflow model folder) to ONNX.

    The pickle is unpickled only after its SHA-256 matched the one train recorded.

    Raises:
        CompileError: The model has no usable signature, or it cannot be compiled.
    """
    from mlflow.models import Model as MlflowModel

    from components.common.compiled_model import CompileError, compile_onnx
    from components.common.model_input import features_of

    sk_model = tracking.load_downloaded_model(local, model_uri, client)
    try:
        features = features_of(MlflowModel.load(str(local)), sk_model)
    except ValueError as exc:
        raise CompileError(str(exc)) from exc
    return compile_onnx(sk_model, features)


def _attach_onnx(client: Any, model_name: str, model_version: Any) -> str:
    """Compile a version to ONNX and log ``model.onnx`` with its logged model; return the ONNX tag.

    Idempotent: a version that has the tag is left alone, and a logged model that already holds
    ``model.onnx`` (another registered model's version of the same run) keeps it. The SHA-256 tag is
    written before the ONNX tag, which marks the work as done. A model that cannot be compiled gets
    ``unsupported: <reason>``; any other failure (the artifact store) is logged and leaves no tag,
    so registering the run again tries again. Never raises: the sklearn model can always serve.
    """
    # Imported here: numpy, pandas and the ONNX toolchain are needed only when there is something to compile.
    from components.common.compiled_model import CompileError, sha256_of

    version = str(model_version.version)
    tags = dict(model_version.tags or {})
    if ONNX_TAG in tags:
        return tags[ONNX_TAG]
    started = time.perf_counter()
    model_id = _logged_model_id(model_version)
    staging = Path(tempfile.mkdtemp(prefix="ctpipe-register-"))
    try:
        if model_id is None:
            raise CompileError(f"source {model_version.source} is not an MLflow logged model (models:/m-...)")
        import mlflow.artifacts

        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}/{version}", dst_path=str(staging / "model")
            )
        )
        compiled = local / ONNX_ARTIFACT
        if compiled.is_file():
            data = compiled.read_bytes()
        else:
            data = _compile(local, f"models:/{model_name}/{version}", client)
            upload = staging / "onnx"
            upload.mkdir()
            (upload / ONNX_ARTIFACT).write_bytes(data)
            client.log_model_artifacts(model_id, str(upload))
        client.set_model_version_tag(model_name, version, ONNX_SHA256_TAG, sha256_of(data))
        status = "compiled"
    except CompileError as exc:
        status = f"unsupported: {exc}"[:_ONNX_REASON_CHARS]
        log.warning(
            "the model cannot be compiled to ONNX; the sklearn model will serve it",
            extra={"model": model_name, "version": version, "reason": str(exc)},
        )
    except Exception as exc:  # the ONNX file is an optimisation: registration goes on without it
        log.warning(
            "ONNX compilation did not finish; registering the run again retries it",
            extra={"model": model_name, "version": version, "error": f"{type(exc).__name__}: {exc}"},
        )
        return ""
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    client.set_model_version_tag(model_name, version, ONNX_TAG, status)
    log.info(
        "onnx compilation",
        extra={"model": model_name, "version": version, "onnx": status, "seconds": time.perf_counter() - started},
    )
    return status


def _already_registered(
    state: RegistryState, model_id: str, run_id: str, blessed: bool, tags: dict[str, str]
) -> tuple[VersionState, str] | None:
    """The version that already holds the candidate exactly as :func:`register` would leave it, and why; else None.

    Exactly: the run's first version, READY, from the same logged model (same content), with every
    tag register writes (``pipeline_run`` aside: it names the run that last changed the version),
    compiled to ONNX (or marked unsupported), and with the alias a blessing asks for.
    """
    if not state.exists:
        return None
    found = [v for v in state.versions.values() if v.run_id == run_id and v.first_of_run]
    if not found:
        return None
    version = found[0]
    if version.status != "READY" or version.model_id != model_id or ONNX_TAG not in version.tags:
        return None
    if any(version.tags.get(key) != value for key, value in tags.items() if key != PIPELINE_RUN_TAG):
        return None
    challenger = state.aliases.get(CHALLENGER_ALIAS)
    if blessed:
        holder = state.version(challenger) if challenger is not None else None
        if challenger == version.version:
            alias = f"it is the {CHALLENGER_ALIAS}"
        elif (
            holder is not None and int(holder.version) > int(version.version) and holder.tags.get(BLESSED_TAG) == "true"
        ):
            alias = f"a newer blessed {CHALLENGER_ALIAS} (version {holder.version}) is waiting"
        else:
            return None
    elif version.version in (challenger, state.aliases.get(CHAMPION_ALIAS)):
        return None  # the full path removes the alias, or refuses to unbless the champion
    else:
        alias = "it has no alias"
    return version, (
        f"version {version.version} already holds run {run_id}'s logged model models:/{model_id} with the same tags "
        f"({BLESSED_TAG}={tags[BLESSED_TAG]}, {ONNX_TAG}={version.tags[ONNX_TAG]}); {alias}"
    )


def register(
    model_uri: str,
    run_id: str,
    model_name: str,
    blessed: bool,
    tracking_uri: str,
    lineage: dict[str, str] | None = None,
    known_state: RegistryState | None = None,
    holdout: HoldoutMetrics | None = None,
) -> RegisterResult:
    """Register a trained model (once per run) with lineage tags; a blessed one becomes ``challenger``.

    Idempotent: if a version from ``run_id`` exists it is reused (``created=False``) and its
    tags and alias are applied again. A new version is created with its blessing tag in the
    same call; the alias moves under the registry lock, only after the registry reports the
    version READY and blessed. An unblessed version gets no alias, and loses ``challenger``
    (before its tag changes) if it had it. ``challenger`` is not moved back to an older
    version than the blessed one it holds: of racing registrations, the newest wins.

    With ``known_state`` (the registry as the pipeline read it when the run started), a candidate
    that is already registered exactly so is left alone: nothing is written, MLflow is not even
    imported, and ``skipped`` says why. Otherwise, having changed the registry, it renews the
    registry epoch (:mod:`components.common.registry_state`), so no cached run of this step keyed
    on the state before the change is ever replayed.

    Args:
        model_uri: The logged model ``train`` returned, ``models:/m-<id>``, on the server of ``tracking_uri``.
        run_id: The training run that logged it.
        model_name: Registered model name, created if missing.
        blessed: The evaluation decision.
        tracking_uri: MLflow tracking (and registry) URI.
        lineage: Extra version tags: data snapshot hash, suite hash, config hash, pipeline run, git commit...
        known_state: The model's registry state read earlier in the run; None to read everything now.
        holdout: What evaluation measured on the run's held-out rows, recorded as the version tag
            ``ctpipe.holdout_metrics``: the monitor's baseline for live performance and prediction
            drift (:mod:`components.common.holdout`). None records nothing (the monitor then has no baseline).

    Returns:
        The version, whether it was created now, its aliases, and ``skipped`` when nothing changed.

    Raises:
        ConfigError: ``model_uri`` is not a ``models:/m-<id>`` logged model URI (``runs:/``, a path...).
        ModelNotFound: The logged model does not exist on the tracking server.
        ModelIntegrityError: The logged model has no recorded SHA-256.
        CtpipeError: A lineage key collides with a ctpipe tag, the logged model belongs to another
            run, registration failed, or an unblessed decision targets the serving champion.
    """
    model_id = logged_model_id(model_uri)
    lineage = {str(key): str(value) for key, value in (lineage or {}).items()}
    clashes = sorted(set(lineage) & set(RESERVED_TAGS))
    if clashes:
        raise CtpipeError(f"lineage keys {clashes} are reserved for ctpipe's own version tags")
    blessed_tag = str(blessed).lower()
    tags = {**lineage, BLESSED_TAG: blessed_tag, RUN_ID_TAG: run_id}
    if holdout is not None:
        tags[HOLDOUT_METRICS_TAG] = holdout.to_tag()

    done = _already_registered(known_state, model_id, run_id, blessed, tags) if known_state is not None else None
    if known_state is not None and done is not None:
        held, reason = done
        log_skip(log, reason, model=model_name, version=held.version)
        return RegisterResult(
            name=model_name,
            version=held.version,
            blessed=blessed,
            aliases=sorted(alias for alias, version in known_state.aliases.items() if version == held.version),
            created=False,
            onnx=held.tags[ONNX_TAG],
            skipped=reason,
        )

    client = tracking.registry_client(tracking_uri)
    _check_logged_model(client, model_uri, model_id, run_id)
    _ensure_registered_model(client, model_name)
    existing = _existing_version(client, model_name, run_id)
    if existing is None:
        version = str(_create_version(client, model_uri, model_id, run_id, model_name, tags).version)
        created = True
    else:
        version = str(existing.version)
        created = False
        held_id = _logged_model_id(existing)
        if held_id is not None and held_id != model_id:
            raise CtpipeError(
                f"run {run_id} is already registered as version {version} of {model_name!r} with logged model "
                f"models:/{held_id}, not {model_uri}; register one logged model per run"
            )
        for key, value in tags.items():
            if key != BLESSED_TAG:
                client.set_model_version_tag(model_name, version, key, value)
        if blessed:
            # Blessed first, alias after (below): no alias ever sees a stale "false".
            client.set_model_version_tag(model_name, version, BLESSED_TAG, blessed_tag)
    onnx = _attach_onnx(client, model_name, _wait_ready(client, model_name, version))

    with registry_lock(client, model_name):
        aliases = aliases_of(client, model_name)
        if blessed:
            holder = aliases.get(CHALLENGER_ALIAS)
            if (
                holder is not None
                and int(holder) > int(version)
                and blessing(get_version(client, model_name, holder)) == "true"
            ):
                log.info(
                    "a newer blessed challenger is waiting; leaving it",
                    extra={"model": model_name, "version": version, "challenger": holder},
                )
            else:
                set_alias(client, model_name, CHALLENGER_ALIAS, version)
        elif not created:
            if aliases.get(CHAMPION_ALIAS) == version:
                raise CtpipeError(
                    f"model {model_name!r} version {version} serves as {CHAMPION_ALIAS}; "
                    "refusing to mark it unblessed in place",
                    hint="Roll back or promote another version first.",
                )
            # Alias off first, then the tag: a crash in between leaves a blessed version without alias.
            if aliases.get(CHALLENGER_ALIAS) == version:
                client.delete_registered_model_alias(model_name, CHALLENGER_ALIAS)
            client.set_model_version_tag(model_name, version, BLESSED_TAG, blessed_tag)
        final_aliases = sorted(alias for alias, v in aliases_of(client, model_name).items() if v == version)
    # Last write: a crash before it fails the step, and kfp caches only steps that finished.
    renew_epoch(client, model_name)
    log.info(
        "registered",
        extra={
            "model": model_name,
            "version": version,
            "new_version": created,
            "blessed": blessed,
            "aliases": final_aliases,
            "onnx": onnx,
        },
    )
    return RegisterResult(
        name=model_name, version=version, blessed=blessed, aliases=final_aliases, created=created, onnx=onnx
    )


class LineageLink(BaseModel):
    """One link of a model version's lineage: what it is, its id, and what is known about it."""

    kind: str = Field(description="model, run, data snapshot, suite or config.")
    id: str | None = Field(description="Its identifier (version, run id, content hash); None when not recorded.")
    details: dict[str, str] = Field(default_factory=dict)


class Lineage(BaseModel):
    """The chain model ← run ← data snapshot ← suite ← config of one registered version."""

    name: str
    version: str
    chain: list[LineageLink]

    def text(self) -> str:
        """The chain as indented lines, one link per line, for the terminal."""
        lines = []
        for depth, link in enumerate(self.chain):
            arrow = "" if depth == 0 else "  " * (depth - 1) + "← "
            details = ", ".join(f"{key}={value}" for key, value in link.details.items())
            lines.append(f"{arrow}{link.kind} {link.id or 'unknown'}" + (f" ({details})" if details else ""))
        return "\n".join(lines)


def lineage(model_name: str, version: str, tracking_uri: str) -> Lineage:
    """Trace a registered version back to its training run, data snapshot, suite and config.

    Reads only the registry and the run: the version's lineage tags (written by the training
    pipeline's register step) and the run's own tags, params and metrics (written by ``train``).

    Args:
        model_name: Registered model name.
        version: Version number.
        tracking_uri: MLflow tracking (and registry) URI.

    Returns:
        The chain, model first; an id is None when it was not recorded.

    Raises:
        ModelNotFound: The model or version does not exist.
    """
    from mlflow.exceptions import MlflowException

    client = tracking.registry_client(tracking_uri)
    if registered_model(client, model_name) is None:
        raise ModelNotFound(f"no registered model named {model_name!r}")
    model_version = get_version(client, model_name, str(version))
    tags = dict(model_version.tags or {})
    all_aliases = aliases_of(client, model_name)
    aliases = sorted(alias for alias, v in all_aliases.items() if v == str(model_version.version))
    model_details = {
        "blessed": tags.get(BLESSED_TAG, "missing"),
        "aliases": ",".join(aliases) or "none",
        "status": str(model_version.status),
        "source": str(model_version.source),
    }
    # Which environments it serves in (dev -> staging -> prod are aliases: components.common.environments).
    model_details["serves_in"] = ",".join(environments_of(all_aliases, str(model_version.version))) or "none"
    for env in ENVIRONMENTS:
        if tags.get(since_tag(env)):
            model_details[f"{env}_since"] = tags[since_tag(env)]
        if tags.get(until_tag(env)):
            model_details[f"{env}_until"] = tags[until_tag(env)]
    if tags.get(PREVIOUS_CHAMPION_TAG):
        model_details["replaced_champion"] = tags[PREVIOUS_CHAMPION_TAG]
    run_id = model_version.run_id or tags.get(RUN_ID_TAG)
    run_tags: dict[str, str] = {}
    run_details: dict[str, str] = {}
    if run_id:
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            if not is_missing(exc):
                raise
            run_details["missing"] = "the run was deleted"
        else:
            run_tags = dict(run.data.tags or {})
            run_details["experiment"] = str(run.info.experiment_id)
            for key in ("estimator", "random_seed", "train_rows", "eval_rows"):
                if key in run.data.params:
                    run_details[key] = run.data.params[key]
            for key in sorted(run.data.metrics):
                if key != "log_model_seconds":
                    run_details[key] = f"{run.data.metrics[key]:.4g}"
            if FEATURES_TAG in run_tags:
                run_details["features"] = ",".join(json.loads(run_tags[FEATURES_TAG]))

    def tag(key: str) -> str | None:
        return tags.get(key) or run_tags.get(key) or None

    data_details = {"training_set_sha256": run_tags[TRAINING_SET_HASH_TAG]} if TRAINING_SET_HASH_TAG in run_tags else {}
    # train logs the suite (and tags its hash) only when it was given one.
    suite_details = {"artifact": f"runs:/{run_id}/{tracking.SUITE_ARTIFACT}"} if suite_hash_of(run_tags) else {}
    config_details = {
        "code_version": tag(CODE_VERSION_TAG) or "unknown",
        "pipeline_run": tag(PIPELINE_RUN_TAG) or "unknown",
    }
    chain = [
        LineageLink(kind="model", id=f"{model_name}/{model_version.version}", details=model_details),
        LineageLink(kind="run", id=run_id, details=run_details),
        LineageLink(kind="data snapshot", id=tag(DATA_SNAPSHOT_TAG), details=data_details),
        LineageLink(kind="suite", id=suite_hash_of(tags) or suite_hash_of(run_tags), details=suite_details),
        LineageLink(kind="config", id=tag(CONFIG_HASH_TAG), details=config_details),
    ]
    return Lineage(name=model_name, version=str(model_version.version), chain=chain)
