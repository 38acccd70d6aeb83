"""Live performance against the baseline: live metrics, and the verdict against the holdout and thresholds.

Where the baseline comes from (the champion's evaluation holdout, recorded on its registered
version) is :mod:`components.common.holdout`. A higher-is-better live metric more than
``PERFORMANCE_DROP`` below its holdout value, or any live metric outside its absolute
``threshold``, is a breach: ``retrain`` with at least ``PERFORMANCE_MIN_ROWS`` labelled rows,
``warn`` with fewer, and no verdict at all with fewer than ``monitoring.min_rows``. Without a
holdout record only the thresholds apply.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from components.common.holdout import Baseline
from components.common.imports import import_metric
from components.common.logs import get_logger
from components.common.multiclass import call_metric
from components.specs import DatasetSpec, MetricSpec, MonitoringSpec

log = get_logger("baseline")

Severity = Literal["ok", "warn", "retrain"]

# A higher-is-better live metric this much (absolute) below its holdout value asks for retraining.
PERFORMANCE_DROP = 0.05
# Labelled current rows needed before a performance breach asks for retraining (fewer only warn): on a few
# hundred rows ROC AUC has a standard error of about 0.03, so a 0.05 drop is within noise.
PERFORMANCE_MIN_ROWS = 1_000


def metric_values(
    metrics: list[MetricSpec],
    model: Any,
    frame: pd.DataFrame,
    spec: DatasetSpec,
    scores: np.ndarray,
    predicted: np.ndarray | None = None,
) -> dict[str, float]:
    """Each metric on the labelled rows of ``frame``, called like evaluation calls it (labels or scores).

    A multiclass model's scores are its ``[n, k]`` probabilities, with the same metric arguments.

    ``predicted`` holds already predicted labels for every row of ``frame`` (served ones);
    without it the model predicts them.
    """
    labelled = frame[spec.label_column].notna().to_numpy()
    y_true = frame[spec.label_column].to_numpy()[labelled]
    values: dict[str, float] = {}
    if y_true.size == 0:
        return values
    labels = None if predicted is None else np.asarray(predicted)[labelled]
    classes = np.asarray(model.classes_).tolist() if spec.is_classification else []
    for metric in metrics:
        fn = import_metric(metric.import_path, f"metric {metric.name!r}")
        if metric.uses_scores:
            y_pred = scores[labelled]
        else:
            if labels is None:
                labels = np.asarray(model.predict(frame.loc[labelled, spec.feature_columns]))
            y_pred = labels
        try:
            values[metric.short_name] = float(call_metric(metric, fn, y_true, y_pred, spec.task, classes))
        except ValueError as exc:  # e.g. ROC AUC with one class present
            log.warning("metric not computed", extra={"metric": metric.name, "error": str(exc)})
    return values


def judge_performance(
    metrics: list[MetricSpec],
    live: dict[str, float],
    labelled: int,
    baseline: Baseline,
    monitoring: MonitoringSpec,
) -> tuple[dict[str, float], list[Severity], list[str]]:
    """Live metrics against the baseline and their thresholds: the performance table, severities and reasons.

    Returns:
        ``{name: live value, reference_<name>: holdout value}`` (a reference only where the holdout
        has the metric), the severities and one reason per metric.
    """
    performance = {**live, **{f"reference_{k}": v for k, v in baseline.metrics.items() if k in live}}
    if labelled < monitoring.min_rows:
        # Fewer labels than the window itself needs: a metric this noisy decides nothing.
        shown = ", ".join(f"{name} {value:.4f}" for name, value in live.items())
        return (
            performance,
            [],
            [
                f"Only {labelled} labelled current rows (< min_rows {monitoring.min_rows}): live {shown} reported, "
                "no performance verdict."
            ],
        )
    # Too few labels: a metric's own noise exceeds the tolerance, so a breach only warns.
    breach: Severity = "retrain" if labelled >= PERFORMANCE_MIN_ROWS else "warn"
    small = "" if breach == "retrain" else f" but only {labelled} labelled rows (< {PERFORMANCE_MIN_ROWS})"
    severities: list[Severity] = []
    reasons: list[str] = []
    if baseline.source != "holdout":
        reasons.append(f"No performance baseline: {baseline.note}.")
    reference = baseline.metrics
    for metric in metrics:
        name = metric.short_name
        if name not in live:
            continue
        value = live[name]
        if name in reference and metric.higher_is_better and reference[name] - value > PERFORMANCE_DROP:
            severities.append(breach)
            reasons.append(
                f"Live {name} {value:.4f} dropped {reference[name] - value:.4f} below its holdout value "
                f"{reference[name]:.4f} (more than {PERFORMANCE_DROP}){small} -> {breach}."
            )
            continue
        bound = metric.threshold
        if bound is not None and (
            (bound.lower_bound is not None and value < bound.lower_bound)
            or (bound.upper_bound is not None and value > bound.upper_bound)
        ):
            severities.append(breach)
            reasons.append(
                f"Live {name} {value:.4f} is outside its threshold [{bound.lower_bound}, {bound.upper_bound}]"
                f"{small} -> {breach}."
            )
            continue
        if name in reference:
            note = f" (holdout {reference[name]:.4f})"
        elif baseline.source == "holdout":
            note = " (the holdout record has no value for it)"
        else:
            note = ""
        reasons.append(f"Live {name} {value:.4f}{note}: no retraining signal.")
    return performance, severities, reasons
