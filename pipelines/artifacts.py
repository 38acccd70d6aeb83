"""Small helpers the KFP wrappers call to fill typed artifacts.

They live in the installed package (not inside the wrappers) because a KFP lightweight
component ships only its own function's source; anything shared must be imported.
Nothing here imports kfp: artifacts are used through their ``path`` and ``metadata``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from components.common.io import write_json, write_text


def attach(artifact: Any, result: BaseModel | dict[str, Any]) -> None:
    """Copy a component result into the artifact's metadata (shown in the KFP UI).

    Only scalar fields and short lists are copied; large structures stay in files.
    """
    payload = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    for key, value in payload.items():
        if (
            isinstance(value, str | int | float | bool)
            or value is None
            or (isinstance(value, list) and len(value) <= 50)
        ):
            artifact.metadata[key] = value


def write_metrics(metrics: Any, values: dict[str, float]) -> None:
    """Log scalar metrics and also write them to the artifact's file.

    kfp.local caches a task only if every output artifact has a file at its path, and
    ``log_metric`` alone writes no file.
    """
    clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
    for key, value in clean.items():
        metrics.log_metric(key, value)
    write_json(metrics.path, clean)


def write_classification_metrics(artifact: Any, curves: dict[str, Any]) -> None:
    """Fill a ClassificationMetrics artifact (ROC curve, confusion matrix) and its file."""
    roc = curves.get("roc")
    if roc:
        artifact.log_roc_curve(roc["fpr"], roc["tpr"], roc["thresholds"])
    matrix = curves.get("confusion_matrix")
    if matrix:
        artifact.log_confusion_matrix([str(label) for label in matrix["labels"]], matrix["matrix"])
    write_json(artifact.path, curves)


def per_class_values(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """``candidate_class_<class>_<metric>`` for precision, recall and f1 of every class (class names sanitised)."""
    from components.common.multiclass import safe_name

    return {
        f"candidate_class_{safe_name(label)}_{name}": value
        for label, values in per_class.items()
        for name, value in values.items()
        if name != "support"
    }


def ensure_file(artifact: Any, placeholder: str = "") -> None:
    """Give an optional output a file so kfp.local can cache the task."""
    if not Path(artifact.path).exists():
        write_text(artifact.path, placeholder)


def copy_file(source: str, artifact: Any) -> None:
    """Copy a small text file (an HTML report, a JSON result) into an artifact's path."""
    write_text(artifact.path, Path(source).read_text())


def markdown_table(rows: dict[str, Any], title: str) -> str:
    """A two-column markdown table, for ``Markdown`` artifacts."""
    lines = [f"### {title}", "", "| | |", "|---|---|"]
    lines += [
        f"| {key} | {json.dumps(value) if isinstance(value, dict | list) else value} |" for key, value in rows.items()
    ]
    return "\n".join(lines) + "\n"
