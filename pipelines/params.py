"""One description per pipeline parameter, shared by every pipeline that takes it.

KFP reads a pipeline function's Google-style docstring ``Args:`` into the compiled IR, so
the KFP UI shows each parameter's meaning next to its default. The docstrings are built
here from one table, so the four pipelines cannot describe the same parameter differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

DESCRIPTIONS: dict[str, str] = {
    "source": "Source table (CSV or Parquet file, or a folder of Parquet files; a path or a URI such as "
    "s3://bucket/key) the window is read from.",
    "source_fingerprint": "Source version to key ingest's cache on (e.g. an object version); empty means the "
    "run hashes the source's content when it starts.",
    "window_start": "Inclusive start of the time window (ISO-8601). Empty (with window_end empty): the last "
    "complete window (schedule.window) before the run's scheduled time, or its creation time for a one-off run; "
    "under kfp.local, unbounded.",
    "window_end": "Exclusive end of the time window (ISO-8601). Empty (with window_start empty): the end of the "
    "last complete window before the run's scheduled time; under kfp.local, unbounded.",
    "reference_start": "Inclusive start of the window monitoring compares against (ISO-8601). Empty: the window "
    "before the run's window (T-2) when the window came from the schedule, else the champion's training data.",
    "reference_end": "Exclusive end of the window monitoring compares against (ISO-8601); see reference_start.",
    "schedule": "The config's schedule section as JSON (window length and anchor).",
    "dataset": "The config's dataset section as JSON (columns, task).",
    "model": "The config's model section as JSON (estimator and its parameters).",
    "evaluation": "The config's evaluation section as JSON (metrics, thresholds, allowed change).",
    "serving": "The config's serving section as JSON (model name, canary share).",
    "feast": "The config's feast section as JSON (feature store).",
    "monitoring": "The config's monitoring section as JSON (drift thresholds).",
    "tracking_uri": "MLflow tracking URI (also the model registry).",
    "workspace": "Local folder for local state (embedded profile) such as Feast stores and the local model server.",
    "profile": "'embedded' (local model server) or 'cluster' (KServe InferenceService).",
    "serving_image": "Predictor image of the KServe InferenceService.",
    "spark_master": "Spark master URL, e.g. local[*] or spark://host:7077.",
    "dry_run": "Deploy: write the manifest and change nothing.",
    "lineage": "Tags recorded on the trained model: config hash and code version.",
    "inference_log_dir": "Serving inference log folder or URI (s3://...), read as the current data when "
    "monitoring.current_source is inference_log.",
    "log_dir": "Serving inference log folder or URI (s3://...) with the canary's live traffic.",
    "labels_path": "Ground truth for logged requests (joined on request id and row); empty for none.",
    "act": "Promote or close the canary as decided; false only records the decision.",
    "reinfer_suite": "Validate against a suite inferred from this window instead of the champion's, and log it "
    "with the new model: for an intended change in the data (a new category, a wider range). Blocking checks "
    "against the config (columns, types, keys) still apply.",
    "reports_dir": "Folder or URI (s3://...) the exit handler also writes the run summary to; empty for the "
    "artifact only.",
}


def describe(summary: str, params: list[str] | None = None) -> Callable[[F], F]:
    """Give a pipeline function a docstring whose ``Args`` describe its parameters from the table.

    Args:
        summary: The first line(s) of the docstring.
        params: Parameter names to describe; default every parameter of the function.

    Raises:
        KeyError: A parameter has no description in the table.
    """

    def decorate(func: F) -> F:
        import inspect

        names = params or list(inspect.signature(func).parameters)
        missing = [name for name in names if name not in DESCRIPTIONS]
        if missing:
            raise KeyError(f"pipeline {func.__name__}: no description for parameter(s) {missing}")
        args = "\n".join(f"    {name}: {DESCRIPTIONS[name]}" for name in names)
        func.__doc__ = f"{summary}\n\nArgs:\n{args}\n"
        return func

    return decorate
