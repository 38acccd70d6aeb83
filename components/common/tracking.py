"""MLflow plumbing shared by train, evaluate, register, deploy, batch predict and monitor.

MLflow is the single source of truth for models: components pass ``models:/NAME/VERSION``
or ``runs:/RUN/model`` URIs, never pickles of their own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# Artifact paths inside a training run that other components rely on.
MODEL_ARTIFACT = "model"
SUITE_ARTIFACT = "schema/suite.json"
REFERENCE_ARTIFACT = "reference/reference.parquet"


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
    """Load a scikit-learn model logged by ``train`` (cloudpickle format) from MLflow."""
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
