"""Score a candidate model against thresholds and the current champion; bless it or not.

The semantics follow TFX's model validation:

- **value thresholds** (``MetricSpec.threshold``) always apply to the candidate;
- **change thresholds** (``MetricSpec.change``) apply only when a champion exists, to
  ``candidate - champion`` (``absolute``) or ``(candidate - champion) / |champion|``
  (``relative``), read in the metric's direction: for a higher-is-better metric the bound is
  the smallest allowed change (``-0.005`` = at most 0.005 worse), for a lower-is-better metric
  the largest allowed change (``0.02`` = at most 2 % higher);
- the candidate is blessed if and only if every check passes, overall and on every slice.

Metrics are resolved by import path, so any function ``f(y_true, y_pred_or_score)`` works
from the configuration alone. Both models are scored on the same held-out rows.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from components.common import report, tracking
from components.common.errors import ConfigError, DataError, ModelNotFound
from components.common.holdout import SCORE_QUANTILES, score_quantiles
from components.common.imports import import_metric
from components.common.io import write_json, write_text
from components.common.logs import get_logger
from components.common.model_input import prepare_features, require_columns
from components.common.multiclass import (
    call_metric,
    class_probabilities,
    confusion,
    per_class_metrics,
    score_input,
)
from components.common.storage import read_table
from components.specs import DatasetSpec, EvaluationSpec, MetricSpec

log = get_logger("evaluate")

#: Slack for floating-point noise when comparing a value with its bound (bounds are inclusive).
TOLERANCE = 1e-9
#: Most points kept per ROC curve in ``EvaluationResult.curves``.
MAX_CURVE_POINTS = 100
MISSING_SLICE = "(missing)"

CheckKind = Literal["value_lower", "value_upper", "change_absolute", "change_relative"]


class Check(BaseModel):
    """One threshold applied to one metric, overall (``slice`` None) or on one slice.

    For value checks ``value`` is the candidate's metric; for change checks it is the change
    (absolute difference or relative change) and ``baseline`` is the champion's metric.
    """

    metric: str
    kind: CheckKind
    slice: str | None
    value: float
    bound: float
    baseline: float | None
    passed: bool
    reason: str


class EvaluationResult(BaseModel):
    """The blessing decision and everything it was based on."""

    blessed: bool
    candidate: dict[str, float]
    champion: dict[str, float] | None
    champion_uri: str | None
    checks: list[Check]
    rows: int
    slices: dict[str, dict[str, float]] = Field(description="Slice ``column=value`` -> candidate metrics.")
    curves: dict[str, Any] = Field(description="ROC (<= 100 points) and confusion matrix of the candidate.")
    skipped_slices: dict[str, str] = Field(
        default_factory=dict, description="Slice ``column=value`` -> why it was not evaluated."
    )
    per_class: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Multiclass: class -> the candidate's precision, recall, f1 and support on the held-out rows.",
    )
    score_quantiles: list[float] | None = Field(
        default=None,
        description="Binary and regression: the candidate's scores on the held-out rows at "
        f"{SCORE_QUANTILES} quantiles; register records them on the version as the reference of prediction drift.",
    )


def _model_features(model: Any, spec: DatasetSpec) -> list[str]:
    names = getattr(model, "feature_names_in_", None)
    return [str(name) for name in names] if names is not None else spec.feature_columns


def _metric_function(metric: MetricSpec) -> Any:
    # The spec is a run parameter: the module prefix is checked again before anything is imported.
    return import_metric(metric.import_path, f"metric {metric.name!r}")


def compute_metrics(model: Any, frame: pd.DataFrame, spec: DatasetSpec, metrics: list[MetricSpec]) -> dict[str, float]:
    """Score ``model`` on ``frame`` with each metric, keyed by the metric's short name.

    Features are the columns the model was fitted on (``feature_names_in_``), else the
    spec's. Score metrics (``MetricSpec.uses_scores``) get the positive-class probability of a
    binary classifier and the ``[n, k]`` probability matrix of a multiclass one; label metrics
    get ``model.predict``. Regression metrics always get predictions. ``average``,
    ``multi_class`` and ``labels`` are passed as ``multiclass.metric_arguments`` says, and a
    multiclass one-vs-rest ROC AUC averages over the classes the rows hold (``multiclass.call_metric``).

    Args:
        model: A fitted scikit-learn estimator or pipeline.
        frame: Rows with the feature and label columns.
        spec: Dataset spec (label column, task, features).
        metrics: Metrics to compute.

    Returns:
        Metric short name -> value.

    Raises:
        DataError: Columns are missing, or a metric cannot be computed on these rows.
        ConfigError: A metric is not callable, named twice, or does not return one number.
    """
    names = [metric.short_name for metric in metrics]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"metric name(s) {duplicates} appear more than once in the evaluation spec")
    require_columns(frame, [spec.label_column], "evaluation data")
    features = prepare_features(frame, spec, _model_features(model, spec))
    truth = frame[spec.label_column].to_numpy()
    predictions = np.asarray(model.predict(features))
    classes: list[Any] = []
    scores = predictions
    if spec.is_classification:
        classes = np.asarray(model.classes_).tolist()
        scores = score_input(spec.task, class_probabilities(model, features))
    result: dict[str, float] = {}
    for metric in metrics:
        function = _metric_function(metric)
        given = scores if metric.uses_scores else predictions
        try:
            value = call_metric(metric, function, truth, given, spec.task, classes)
        except ValueError as exc:
            raise DataError(f"metric {metric.name} cannot be computed on {len(frame)} row(s): {exc}") from exc
        try:
            result[metric.short_name] = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"metric {metric.name} returned {type(value).__name__}, not one number; "
                "set its average (macro, weighted or micro) in the metric spec"
            ) from exc
    return result


def _fmt(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _fmt_change(value: float, relative: bool) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:+.2%}" if relative else f"{value:+.4g}"


class _Outcome(NamedTuple):
    """One bound applied to one metric: the fields of a :class:`Check` that depend on the bound."""

    kind: CheckKind
    value: float
    bound: float
    baseline: float | None
    passed: bool
    reason: str


def _value_checks(metric: MetricSpec, value: float, where: str) -> list[_Outcome]:
    threshold = metric.threshold
    if threshold is None:
        return []
    name = metric.short_name
    finite = math.isfinite(value)
    checks: list[_Outcome] = []
    # (kind, bound, passes, verdict if it passes, verdict if it fails, bound's name)
    sides: list[tuple[Literal["value_lower", "value_upper"], float | None, Callable[[float], bool], str, str, str]] = [
        ("value_lower", threshold.lower_bound, lambda b: value >= b - TOLERANCE, "at or above", "below", "lower"),
        ("value_upper", threshold.upper_bound, lambda b: value <= b + TOLERANCE, "at or below", "above", "upper"),
    ]
    for kind, bound, passes, ok_verdict, bad_verdict, side in sides:
        if bound is None:
            continue
        passed = finite and passes(bound)
        verdict = ok_verdict if passed else bad_verdict
        reason = (
            f"{where}{name} is {_fmt(value)}, {verdict} the {side} bound {_fmt(bound)}."
            if finite
            else f"{where}{name} is {value}, which cannot meet the {side} bound {_fmt(bound)}."
        )
        checks.append(_Outcome(kind, value, bound, None, passed, reason))
    return checks


def relative_change(candidate: float, champion: float) -> float:
    """``(candidate - champion) / |champion|``; 0 when both are 0, signed infinity when only the champion is."""
    difference = candidate - champion
    if champion == 0:
        return 0.0 if difference == 0 else math.copysign(math.inf, difference)
    return difference / abs(champion)


def _change_checks(metric: MetricSpec, candidate: float, champion: float, where: str) -> list[_Outcome]:
    change = metric.change
    if change is None:
        return []
    name = metric.short_name
    higher = metric.higher_is_better
    direction = "higher is better" if higher else "lower is better"
    checks: list[_Outcome] = []
    bounds: list[tuple[CheckKind, float | None, bool]] = [
        ("change_absolute", change.absolute, False),
        ("change_relative", change.relative, True),
    ]
    for kind, bound, relative in bounds:
        if bound is None:
            continue
        value = relative_change(candidate, champion) if relative else candidate - champion
        if math.isnan(value):
            passed = False
        elif higher:
            passed = value >= bound - TOLERANCE
        else:
            passed = value <= bound + TOLERANCE
        limit = "at least" if higher else "at most"
        what = "relative change" if relative else "change"
        reason = (
            f"{where}{name} {what} against the champion is {_fmt_change(value, relative)} "
            f"({_fmt(champion)} -> {_fmt(candidate)}); it must be {limit} {_fmt_change(bound, relative)} "
            f"({direction}), so it {'passes' if passed else 'fails'}."
        )
        checks.append(_Outcome(kind, value, bound, champion, passed, reason))
    return checks


def make_checks(
    metrics: list[MetricSpec],
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    slice_key: str | None = None,
    slice_column: str | None = None,
) -> list[Check]:
    """Apply every metric's value thresholds, and its change thresholds when there is a champion.

    Args:
        metrics: Metric specs with their thresholds.
        candidate: Candidate metric values by short name.
        champion: Champion metric values by short name, or None without a champion.
        slice_key: Slice value the metrics are for, None for all rows.
        slice_column: Column of the slice; the checks' ``slice`` is ``column=value``.

    Returns:
        One check per configured bound.
    """
    where = f"On slice {slice_column}={slice_key}, " if slice_key is not None else ""
    label = f"{slice_column}={slice_key}" if slice_key is not None and slice_column else slice_key
    checks: list[Check] = []
    for metric in metrics:
        name = metric.short_name
        outcomes = _value_checks(metric, candidate[name], where)
        if champion is not None:
            outcomes += _change_checks(metric, candidate[name], champion[name], where)
        checks += [Check(metric=name, slice=label, **outcome._asdict()) for outcome in outcomes]
    return checks


def _slice_keys(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    return values.astype(object).where(values.notna(), MISSING_SLICE).astype(str)


def _evaluate_slices(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    evaluation: EvaluationSpec,
    candidate_model: Any,
    champion_model: Any | None,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, str], list[Check]]:
    candidate_slices: dict[str, dict[str, float]] = {}
    champion_slices: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    checks: list[Check] = []
    for slicing in evaluation.all_slices:
        column = slicing.column
        require_columns(frame, [column], "evaluation data (evaluation slice column)")
        keys = _slice_keys(frame, column)
        wanted = sorted(keys.unique()) if slicing.values is None else list(slicing.values)
        for value in wanted:
            key = f"{column}={value}"
            rows = frame[keys == value]
            if len(rows) < max(slicing.min_rows, 2):
                skipped[key] = f"{len(rows)} row(s); need at least {max(slicing.min_rows, 2)}"
            elif spec.is_classification and rows[spec.label_column].nunique() < 2:
                skipped[key] = f"{len(rows)} row(s) with a single label class; ranking metrics are undefined"
            if key in skipped:
                log.info("slice skipped", extra={"slice": key, "why": skipped[key]})
                continue
            try:
                candidate_slices[key] = compute_metrics(candidate_model, rows, spec, slicing.metrics)
                if champion_model is not None:
                    champion_slices[key] = compute_metrics(champion_model, rows, spec, slicing.metrics)
            except DataError as exc:
                if spec.task != "multiclass_classification":
                    raise
                skipped[key] = f"{len(rows)} row(s): {exc}"[:300]
            if spec.task == "multiclass_classification" and key not in skipped:
                undefined = sorted(name for name, value in candidate_slices[key].items() if math.isnan(value))
                if undefined:
                    missing = sorted(set(map(str, candidate_model.classes_)) - set(map(str, rows[spec.label_column])))
                    skipped[key] = (
                        f"{len(rows)} row(s) without class(es) {missing[:10]}: {undefined} undefined "
                        "(one-vs-rest needs every class)"
                    )
            if key in skipped:
                # A slice often lacks some classes, where a one-vs-rest ROC AUC is undefined: it is
                # reported as skipped, as a single-class slice is, rather than failing the gate.
                candidate_slices.pop(key, None)
                champion_slices.pop(key, None)
                log.info("slice skipped", extra={"slice": key, "why": skipped[key]})
                continue
            checks.extend(make_checks(slicing.metrics, candidate_slices[key], champion_slices.get(key), value, column))
    return candidate_slices, champion_slices, skipped, checks


def _downsample(count: int, limit: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(int))


def classification_curves(
    truth: np.ndarray, scores: np.ndarray, predicted: np.ndarray, classes: list[Any]
) -> dict[str, Any]:
    """ROC curve (at most ``MAX_CURVE_POINTS`` points, infinite threshold clipped to 1) and confusion matrix.

    Args:
        truth: True labels.
        scores: Positive-class probabilities.
        predicted: Predicted labels.
        classes: Class labels in the model's order; the last is the positive class.

    Returns:
        ``{"roc": {"fpr", "tpr", "thresholds"}, "confusion_matrix": {"labels", "matrix"}}``.
    """
    from sklearn.metrics import confusion_matrix, roc_curve

    fpr, tpr, thresholds = roc_curve(truth, scores, pos_label=classes[-1])
    keep = _downsample(len(fpr), MAX_CURVE_POINTS)
    matrix = confusion_matrix(truth, predicted, labels=classes)
    return {
        "roc": {
            "fpr": [float(v) for v in fpr[keep]],
            "tpr": [float(v) for v in tpr[keep]],
            "thresholds": [float(min(v, 1.0)) for v in thresholds[keep]],
        },
        "confusion_matrix": {"labels": [str(c) for c in classes], "matrix": matrix.astype(int).tolist()},
    }


def _load(uri: str, tracking_uri: str, role: str) -> Any:
    # Only models:/ URIs of the configured registry, and only after the pickle's SHA-256 matched.
    tracking.parse_model_uri(uri)
    try:
        return tracking.load_registered_model(uri, tracking_uri)
    except (ConfigError, tracking.ModelIntegrityError):
        raise
    except Exception as exc:  # MLflow raises several types for a missing model
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotFound(f"cannot load the {role} model {uri}: {first_line}") from exc


def evaluate(
    candidate_uri: str,
    eval_path: str,
    spec: DatasetSpec,
    evaluation: EvaluationSpec,
    tracking_uri: str,
    champion_uri: str | None,
    blessing_path: str,
    report_path: str,
) -> EvaluationResult:
    """Score candidate (and champion) on the held-out rows, apply thresholds, write blessing and report.

    Args:
        candidate_uri: MLflow URI of the candidate, e.g. ``models:/m-...`` from ``train``.
        eval_path: Held-out rows written by ``train`` (Parquet; CSV also accepted).
        spec: Dataset spec (features, label, task).
        evaluation: Metrics, thresholds and optional slice column.
        tracking_uri: MLflow tracking URI.
        champion_uri: URI of the current champion, or None when there is none yet.
        blessing_path: Where the ``EvaluationResult`` is written as JSON.
        report_path: Where the HTML report is written.

    Returns:
        The decision, metrics of both models, every check with its reason, slices and curves.

    Raises:
        ModelNotFound: A model URI cannot be loaded.
        DataError: The evaluation data lacks columns, is empty or a metric is undefined on it.
        ConfigError: A metric is misconfigured.
    """
    tracking.quiet_mlflow()
    frame = read_table(eval_path)
    if frame.empty:
        raise DataError(f"evaluation data {eval_path} has no rows")
    require_columns(frame, [*spec.feature_columns, spec.label_column], f"evaluation data {eval_path}")
    candidate_model = _load(candidate_uri, tracking_uri, "candidate")
    champion_model = _load(champion_uri, tracking_uri, "champion") if champion_uri else None

    candidate = compute_metrics(candidate_model, frame, spec, evaluation.metrics)
    champion = compute_metrics(champion_model, frame, spec, evaluation.metrics) if champion_model else None
    checks = make_checks(evaluation.metrics, candidate, champion)
    slices, champion_slices, skipped, slice_checks = _evaluate_slices(
        frame, spec, evaluation, candidate_model, champion_model
    )
    checks.extend(slice_checks)

    truth = frame[spec.label_column].to_numpy()
    outputs = {"candidate": _outputs(candidate_model, frame, spec)}
    if champion_model is not None:
        outputs["champion"] = _outputs(champion_model, frame, spec)
    curves: dict[str, Any] = {}
    per_class: dict[str, dict[str, float]] = {}
    if spec.task == "binary_classification" and len(np.unique(truth)) == 2:
        scores, predicted = outputs["candidate"]
        curves = classification_curves(truth, scores, predicted, list(candidate_model.classes_))
    elif spec.task == "multiclass_classification":
        classes = np.asarray(candidate_model.classes_).tolist()
        predicted = outputs["candidate"][1]
        curves = {"confusion_matrix": confusion(truth, predicted, classes)}
        per_class = per_class_metrics(truth, predicted, classes)

    result = EvaluationResult(
        blessed=all(check.passed for check in checks),
        candidate=candidate,
        champion=champion,
        champion_uri=champion_uri,
        checks=checks,
        rows=len(frame),
        slices=slices,
        curves=curves,
        skipped_slices=skipped,
        per_class=per_class,
        score_quantiles=None if spec.task == "multiclass_classification" else score_quantiles(outputs["candidate"][0]),
    )
    # Through the JSON encoder so NaN and infinity become null and the file stays valid JSON.
    write_json(blessing_path, json.loads(result.model_dump_json()))
    write_text(
        report_path,
        render_report(result, evaluation, spec, candidate_uri, truth, outputs, champion_slices),
    )
    log.info(
        "evaluated",
        extra={
            "blessed": result.blessed,
            "candidate": candidate,
            "champion": champion,
            "failed": [check.reason for check in checks if not check.passed],
        },
    )
    return result


def _outputs(model: Any, frame: pd.DataFrame, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scores, predictions) of a model on ``frame``.

    The positive-class probability (binary) or the probability matrix (multiclass) and the
    label; the prediction twice for regression.
    """
    features = prepare_features(frame, spec, _model_features(model, spec))
    predicted = np.asarray(model.predict(features))
    if spec.is_classification:
        return score_input(spec.task, class_probabilities(model, features)), predicted
    return predicted.astype(float), predicted


def _status(passed: bool) -> str:
    return report.badge("pass", "ok") if passed else report.badge("fail", "bad")


def _metric_rows(result: EvaluationResult, evaluation: EvaluationSpec) -> list[dict[str, Any]]:
    rows = []
    for metric in evaluation.metrics:
        name = metric.short_name
        own = [c for c in result.checks if c.metric == name and c.slice is None]
        bounds = []
        for check in own:
            symbol = {
                "value_lower": ">=",
                "value_upper": "<=",
                "change_absolute": "change",
                "change_relative": "rel. change",
            }
            side = ""
            if check.kind.startswith("change"):
                side = ">= " if metric.higher_is_better else "<= "
            bound = _fmt_change(check.bound, check.kind == "change_relative") if side else _fmt(check.bound)
            bounds.append(f"{symbol[check.kind]} {side}{bound}")
        champion = result.champion.get(name) if result.champion else None
        rows.append(
            {
                "metric": html.escape(name),
                "direction": "higher is better" if metric.higher_is_better else "lower is better",
                "candidate": _fmt(result.candidate[name]),
                "champion": _fmt(champion) if champion is not None else "-",
                "change": _fmt_change(result.candidate[name] - champion, False) if champion is not None else "-",
                "bounds": html.escape("; ".join(bounds)) or "none",
                "result": _status(all(c.passed for c in own)) if own else "no threshold",
            }
        )
    return rows


def _curve_plots(truth: np.ndarray, outputs: dict[str, tuple[np.ndarray, np.ndarray]], positive: Any) -> str:
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    roc_fig, roc_ax = report.new_figure()
    pr_fig, pr_ax = report.new_figure()
    for role, (scores, _) in outputs.items():
        fpr, tpr, _ = roc_curve(truth, scores, pos_label=positive)
        roc_ax.plot(fpr, tpr, label=f"{role} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(truth, scores, pos_label=positive)
        pr_ax.plot(recall, precision, label=role)
    roc_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="upper right")
    return f'<div class="grid">{report.figure(roc_fig)}{report.figure(pr_fig)}</div>'


def _residual_plots(truth: np.ndarray, outputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    scatter_fig, scatter_ax = report.new_figure()
    hist_fig, hist_ax = report.new_figure()
    for role, (predicted, _) in outputs.items():
        residuals = truth.astype(float) - predicted
        scatter_ax.scatter(predicted, residuals, s=6, alpha=0.5, label=role)
        hist_ax.hist(residuals, bins=40, alpha=0.5, label=role)
    scatter_ax.axhline(0, color="grey", linestyle=":")
    scatter_ax.set(xlabel="predicted", ylabel="actual - predicted", title="Residuals")
    hist_ax.set(xlabel="actual - predicted", ylabel="rows", title="Residual distribution")
    scatter_ax.legend()
    hist_ax.legend()
    return f'<div class="grid">{report.figure(scatter_fig)}{report.figure(hist_fig)}</div>'


def multiclass_sections(result: EvaluationResult) -> list[tuple[str, str]]:
    """Per-class metrics and the confusion matrix of a multiclass candidate, as report sections."""
    per_class = [
        {"class": label, **{name: _fmt(value) for name, value in values.items() if name != "support"}}
        | {"support": int(values["support"])}
        for label, values in result.per_class.items()
    ]
    matrix = result.curves["confusion_matrix"]
    cm = pd.DataFrame(matrix["matrix"], columns=[f"predicted {label}" for label in matrix["labels"]])
    cm.insert(0, "actual", matrix["labels"])
    return [
        ("Per-class metrics (candidate)", report.table(per_class)),
        ("Confusion matrix (candidate; rows: actual class)", report.table(cm)),
    ]


def render_report(
    result: EvaluationResult,
    evaluation: EvaluationSpec,
    spec: DatasetSpec,
    candidate_uri: str,
    truth: np.ndarray,
    outputs: dict[str, tuple[np.ndarray, np.ndarray]],
    champion_slices: dict[str, dict[str, float]],
) -> str:
    """The evaluation report as one self-contained HTML page."""
    verdict = report.badge("BLESSED", "ok") if result.blessed else report.badge("NOT BLESSED", "bad")
    failed = sum(not check.passed for check in result.checks)
    summary = (
        f"{verdict}: {len(result.checks) - failed} of {len(result.checks)} checks passed on "
        f"{result.rows} held-out rows. Candidate <code>{html.escape(candidate_uri)}</code>; champion "
        + (
            f"<code>{html.escape(result.champion_uri)}</code>."
            if result.champion_uri
            else "none (change thresholds skipped)."
        )
    )
    sections = [("Metrics", report.table(_metric_rows(result, evaluation), escape=False))]
    if result.checks:
        check_rows = [
            {
                "result": _status(check.passed),
                "metric": html.escape(check.metric),
                "slice": html.escape(check.slice) if check.slice is not None else "all rows",
                "check": check.kind,
                "reason": html.escape(check.reason),
            }
            for check in result.checks
        ]
        sections.append(("Checks", report.table(check_rows, escape=False)))
    else:
        sections.append(("Checks", "<p>No thresholds are configured, so the candidate is blessed.</p>"))
    if spec.task == "binary_classification" and "roc" in result.curves:
        positive = result.curves["confusion_matrix"]["labels"][-1]
        positive_value = next((v for v in np.unique(truth) if str(v) == positive), positive)
        sections.append(("ROC and precision-recall curves", _curve_plots(truth, outputs, positive_value)))
        matrix = result.curves["confusion_matrix"]
        cm = pd.DataFrame(matrix["matrix"], columns=[f"predicted {label}" for label in matrix["labels"]])
        cm.insert(0, "actual", matrix["labels"])
        sections.append(("Confusion matrix (candidate)", report.table(cm)))
    elif spec.task == "multiclass_classification" and "confusion_matrix" in result.curves:
        sections += multiclass_sections(result)
    elif spec.task == "regression":
        sections.append(("Residuals", _residual_plots(truth, outputs)))
    if evaluation.all_slices:
        slice_rows = []
        for key, values in result.slices.items():
            row: dict[str, Any] = {"slice": key}
            for name, value in values.items():
                row[f"candidate {name}"] = value
                if key in champion_slices:
                    row[f"champion {name}"] = champion_slices[key][name]
            row["result"] = _status(all(c.passed for c in result.checks if c.slice == key))
            slice_rows.append(row)
        content = report.table(slice_rows, escape=False) if slice_rows else "<p>No slice had enough data.</p>"
        if result.skipped_slices:
            skipped = "".join(
                f"<li>{html.escape(key)}: {html.escape(why)}</li>" for key, why in result.skipped_slices.items()
            )
            content += f"<p>Skipped slices:</p><ul>{skipped}</ul>"
        columns = ", ".join(dict.fromkeys(slicing.column for slicing in evaluation.all_slices))
        sections.append((f"Slices by {columns}", content))
    return report.page("Model evaluation", sections, summary=summary)
