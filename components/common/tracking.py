"""MLflow plumbing shared by train, evaluate, register, deploy, batch predict and monitor.

MLflow is the single source of truth for models: components pass ``models:/NAME/VERSION``,
``models:/NAME@ALIAS`` or ``models:/m-<id>`` URIs, never pickles of their own.

Unpickling runs code, so a step loads a model only through :func:`load_registered_model` (or
:func:`load_downloaded_model` for a folder it downloaded itself): the URI must name a model on
the configured tracking server, and the pickle's SHA-256 must equal the one ``train`` recorded
(logged-model tag ``ctpipe.model_sha256``) before a byte of it is unpickled. See docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components.common.errors import ConfigError, CtpipeError, ModelNotFound

# Artifact paths inside a training run that other components rely on.
MODEL_ARTIFACT = "model"
SUITE_ARTIFACT = "schema/suite.json"
REFERENCE_ARTIFACT = "reference/reference.parquet"
#: The pickled model inside a logged model's folder (MLflow's sklearn flavor, cloudpickle format).
PICKLED_MODEL = "model.pkl"
#: Logged-model tag with the SHA-256 of ``PICKLED_MODEL``, recorded by ``train`` when it logs the model.
MODEL_SHA256_TAG = "ctpipe.model_sha256"
#: What a model-loading step accepts, for error messages.
ACCEPTED_MODEL_URIS = "models:/NAME/VERSION, models:/NAME@ALIAS or models:/m-<id> (the logged model train returns)"

_VERSION_URI = re.compile(r"models:/(?P<name>[^/@:]+)/(?P<version>[0-9]+)")
_ALIAS_URI = re.compile(r"models:/(?P<name>[^/@:]+)@(?P<alias>[A-Za-z0-9_-]+)")
_LOGGED_URI = re.compile(r"models:/(?P<model_id>m-[0-9a-fA-F]+)")


class ModelIntegrityError(CtpipeError):
    """A model's pickle does not have the SHA-256 that train recorded (or none was recorded): not loaded."""

    hint = (
        "The artifact changed after train logged it, or it was not logged by ctpipe's train step. "
        "Retrain (and register) the model; see docs/security.md."
    )


def quiet_mlflow() -> None:
    """Turn off MLflow telemetry and download progress bars unless the caller chose otherwise."""
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def configure(tracking_uri: str, registry_uri: str | None = None) -> None:
    """Point the MLflow client at a tracking server or database.

    Args:
        tracking_uri: E.g. ``sqlite:///path/mlflow.db`` or ``http://127.0.0.1:5000``.
        registry_uri: Model registry URI when it differs from the tracking URI.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri or tracking_uri)


def registry_client(tracking_uri: str) -> Any:
    """An MlflowClient for ``tracking_uri`` (tracking and registry), with MLflow configured for it."""
    from mlflow import MlflowClient

    quiet_mlflow()
    configure(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artifact folder beside a sqlite tracking database; None for a server that serves artifacts.

    Without this MLflow would put artifacts in ``./mlruns`` of whatever folder a task runs in.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:////abs/mlflow.db leaves "/abs/mlflow.db"; sqlite:///rel.db leaves a relative path.
    db_path = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    return (db_path.parent / "mlartifacts").as_uri()


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """Create the experiment if needed (artifacts next to a sqlite db) and make it active.

    Returns:
        The experiment id.
    """
    import mlflow

    configure(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=default_artifact_root(tracking_uri))
        except mlflow.exceptions.MlflowException:
            # Another task created it between our lookup and create.
            existing = mlflow.get_experiment_by_name(name)
            if existing is None:
                raise
            experiment_id = existing.experiment_id
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return str(experiment_id)


def pip_requirements() -> list[str]:
    """Exact requirements of a saved model; passing them skips MLflow's slow inference (~7 s)."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist)}" for dist in ("scikit-learn", "pandas", "numpy", "cloudpickle")]


def load_sklearn_model(model_uri: str, tracking_uri: str | None = None) -> Any:
    """Load a scikit-learn model from MLflow WITHOUT the URI and SHA-256 checks.

    For tests and notebooks that inspect models they logged themselves. Pipeline steps and the
    model server use :func:`load_registered_model` or :func:`load_downloaded_model`.
    """
    import mlflow.sklearn

    if tracking_uri:
        configure(tracking_uri)
    return mlflow.sklearn.load_model(model_uri)


def download_run_artifact(
    run_id: str, artifact_path: str, dst_dir: str | os.PathLike[str], tracking_uri: str | None = None
) -> Path:
    """Download one artifact of a run into ``dst_dir`` and return its local path.

    Args:
        run_id: The MLflow run.
        artifact_path: Path of the artifact inside the run.
        dst_dir: Folder to download into (created if missing).
        tracking_uri: Tracking server or database; default: the one MLflow is configured with.
    """
    import mlflow.artifacts

    Path(dst_dir).mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=artifact_path, dst_path=str(dst_dir), tracking_uri=tracking_uri
    )
    return Path(local)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: a registered version, an alias, or a logged model."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    model_id: str | None = None


def parse_model_uri(model_uri: str) -> ModelRef:
    """Accept only ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` and ``models:/m-<id>``.

    No ``runs:/`` URIs, plain paths, ``file:`` or other schemes, and no ``models://`` URIs that
    name another registry: a model comes from the configured tracking server only.

    Raises:
        ConfigError: Naming the URI and what is accepted.
    """
    uri = str(model_uri)
    logged = _LOGGED_URI.fullmatch(uri)
    if logged:
        return ModelRef(uri, model_id=logged["model_id"])
    version = _VERSION_URI.fullmatch(uri)
    if version:
        return ModelRef(uri, name=version["name"], version=version["version"])
    alias = _ALIAS_URI.fullmatch(uri)
    if alias:
        return ModelRef(uri, name=alias["name"], alias=alias["alias"])
    raise ConfigError(
        f"model URI {uri!r} is not accepted: a model is loaded only from the model registry of the configured "
        f"tracking server, as {ACCEPTED_MODEL_URIS}; not runs:/ URIs or paths",
        hint="Pass a registered version or alias, or the model_uri that train returned.",
    )


def _logged_model_id(model_version: Any) -> str | None:
    if getattr(model_version, "model_id", None):
        return str(model_version.model_id)
    source = str(getattr(model_version, "source", "") or "")
    match = _LOGGED_URI.fullmatch(source)
    return match["model_id"] if match else None


def pin_model_uri(model_uri: str, client: Any) -> tuple[str, str]:
    """Resolve a model URI to what is downloaded and the logged model behind it.

    Returns:
        ``(download URI, logged model id)``: an alias becomes ``models:/NAME/VERSION`` of the
        version it points to now, so the hash read and the files downloaded are the same version's.

    Raises:
        ConfigError: The URI is not one that is accepted.
        ModelNotFound: The version, alias or logged model does not exist.
        ModelIntegrityError: The version is not backed by an MLflow logged model.
    """
    from mlflow.exceptions import MlflowException

    ref = parse_model_uri(model_uri)
    if ref.model_id is not None:
        return ref.uri, ref.model_id
    try:
        if ref.alias is not None:
            model_version = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            model_version = client.get_model_version(ref.name, ref.version)
    except MlflowException as exc:
        raise ModelNotFound(f"{model_uri}: no such registered model version or alias: {exc}") from exc
    model_id = _logged_model_id(model_version)
    if model_id is None:
        raise ModelIntegrityError(
            f"{model_uri}: version {model_version.version} has source {model_version.source}, not a logged model "
            "(models:/m-...) with a recorded SHA-256; it is not loaded"
        )
    return f"models:/{model_version.name}/{model_version.version}", model_id


def expected_model_sha256(model_id: str, client: Any) -> str | None:
    """The SHA-256 that ``train`` recorded for a logged model, None when none was recorded."""
    from mlflow.exceptions import MlflowException

    try:
        logged = client.get_logged_model(model_id)
    except MlflowException as exc:
        raise ModelNotFound(f"models:/{model_id}: no such logged model: {exc}") from exc
    value = (logged.tags or {}).get(MODEL_SHA256_TAG)
    return str(value) if value else None


def unpickle_verified(local_dir: str | os.PathLike[str], expected_sha256: str | None, model_uri: str) -> Any:
    """Unpickle ``local_dir/model.pkl`` only if its bytes have ``expected_sha256``.

    The bytes are read once, hashed, and the same bytes are unpickled; the MLmodel file is not
    consulted for the pickle's name, so it cannot point the loader at another file.

    Raises:
        ModelIntegrityError: No hash was recorded, the file is missing, or the hashes differ.
    """
    import cloudpickle

    path = Path(local_dir) / PICKLED_MODEL
    if not expected_sha256:
        raise ModelIntegrityError(
            f"{model_uri}: no SHA-256 was recorded for this model (logged-model tag {MODEL_SHA256_TAG}), so it is "
            "not unpickled; models logged before this check, or outside ctpipe's train step, are refused. Retrain "
            "and register it, or record its hash with components.common.tracking.record_model_sha256 after you "
            "have checked the artifact"
        )
    if not path.is_file():
        raise ModelIntegrityError(f"{model_uri}: the downloaded model has no {PICKLED_MODEL}; it is not loaded")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, expected_sha256):
        raise ModelIntegrityError(
            f"{model_uri}: {PICKLED_MODEL} has SHA-256 {actual}, but train recorded {expected_sha256}; "
            "the artifact changed after it was logged and is not unpickled"
        )
    return cloudpickle.loads(data)


def load_downloaded_model(local_dir: str | os.PathLike[str], model_uri: str, client: Any) -> Any:
    """Check and unpickle a model folder the caller downloaded from ``model_uri``.

    Args:
        local_dir: The folder MLflow downloaded (it holds ``MLmodel`` and ``model.pkl``).
        model_uri: The URI it was downloaded from: ``models:/NAME/VERSION`` or ``models:/m-<id>``
            (an alias would be ambiguous: it may have moved since the download).
        client: An MlflowClient for the configured tracking server and registry.

    Raises:
        ConfigError: The URI is not accepted (an alias, ``runs:/``, a path).
        ModelNotFound: The version or logged model does not exist.
        ModelIntegrityError: The pickle's SHA-256 is missing or differs from the recorded one.
    """
    if parse_model_uri(model_uri).alias is not None:
        raise ConfigError(f"{model_uri}: pin an alias to its version before downloading, then check that version")
    _, model_id = pin_model_uri(model_uri, client)
    return unpickle_verified(local_dir, expected_model_sha256(model_id, client), model_uri)


def download_model(model_uri: str, tracking_uri: str, dst_dir: str | os.PathLike[str]) -> Path:
    """Download a model folder (a ``models:/`` URI, pinned by the caller) from the configured server."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    # MLflow resolves models:/ URIs with the process-wide registry URI.
    configure(tracking_uri)
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(dst_dir), tracking_uri=tracking_uri, registry_uri=tracking_uri
            )
        )
    except MlflowException as exc:
        raise ModelNotFound(f"{model_uri}: cannot download the model: {exc}") from exc


def load_registered_model(model_uri: str, tracking_uri: str) -> Any:
    """Load a model from the registry of ``tracking_uri``, checking its SHA-256 before unpickling.

    Args:
        model_uri: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``models:/m-<id>``.
        tracking_uri: The configured tracking server (and registry).

    Raises:
        ConfigError: The URI is not accepted (``runs:/``, a path, another registry).
        ModelNotFound: The version, alias or logged model does not exist or cannot be downloaded.
        ModelIntegrityError: No SHA-256 was recorded, or the downloaded pickle does not have it.
    """
    client = registry_client(tracking_uri)
    download_uri, model_id = pin_model_uri(model_uri, client)
    expected = expected_model_sha256(model_id, client)
    staging = Path(tempfile.mkdtemp(prefix="ctpipe-load-"))
    try:
        local = download_model(download_uri, tracking_uri, staging)
        return unpickle_verified(
            local, expected, model_uri if model_uri == download_uri else f"{model_uri} ({download_uri})"
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def log_sklearn_model(
    model: Any,
    tracking_uri: str,
    signature: Any = None,
    input_example: Any = None,
    predict_fn: str = "predict",
) -> Any:
    """Log a scikit-learn model in the active run the way every ctpipe step can load it, and record its hash.

    Cloudpickle (tree models and classes defined in notebooks load without skops' trusted types),
    pinned requirements (MLflow infers them in ~7 s otherwise) and the SHA-256 every loader
    checks before it unpickles (:func:`record_model_sha256`).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is ``models:/m-...``).
    """
    import mlflow.sklearn

    info = mlflow.sklearn.log_model(
        model,
        name=MODEL_ARTIFACT,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements(),
        pyfunc_predict_fn=predict_fn,
    )
    record_model_sha256(info.model_id, tracking_uri)
    return info


def record_model_sha256(model_id: str, tracking_uri: str) -> str:
    """Hash ``model.pkl`` of a logged model as stored, and record it as the logged-model tag.

    ``train`` calls it right after logging the model; every step checks the tag before unpickling.

    Returns:
        The hex SHA-256.
    """
    client = registry_client(tracking_uri)
    staging = Path(tempfile.mkdtemp(prefix="ctpipe-hash-"))
    try:
        local = download_model(f"models:/{model_id}", tracking_uri, staging)
        digest = sha256_file(local / PICKLED_MODEL)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    client.set_logged_model_tags(model_id, {MODEL_SHA256_TAG: digest})
    return digest
