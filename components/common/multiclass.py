"""What a multiclass task changes: label checks, metric arguments, per-class metrics and probability columns.

Binary and multiclass classifiers share one code path everywhere; the differences live here so
train, evaluate, monitoring, batch scoring and serving agree on them:

- **classes**: a ``multiclass_classification`` label has at least :data:`MIN_CLASSES` classes. Two
  classes is refused (``binary_classification`` is the task for them: its metrics, ROC curve and
  positive-class score are what a two-class problem wants), and so is a single class.
- **scores**: a binary classifier's score is the probability of its positive class (the last of
  ``classes_``); a multiclass classifier's scores are the whole ``[n, k]`` probability matrix,
  its columns in ``classes_`` order.
- **metrics**: a function with an ``average`` argument gets ``MetricSpec.average`` (macro by
  default on a multiclass task); a score metric gets ``multi_class="ovr"`` and ``labels`` (the
  model's classes, which name the probability columns) where it takes them. A one-vs-rest ROC
  AUC averages over the classes the rows hold (:func:`call_metric`).
- **probability columns**: one per class, named ``proba_<class>`` (:func:`probability_columns`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from components.common.errors import ConfigError, DataError
from components.specs import MetricSpec

#: Fewest classes a multiclass_classification label may have.
MIN_CLASSES = 3
#: Prefix of the per-class probability columns and outputs.
PROBA_PREFIX = "proba_"
#: Average used on a multiclass task when the metric names none.
DEFAULT_AVERAGE = "macro"
#: Most classes listed in an error message.
_SHOWN = 10


def class_probabilities(model: Any, features: pd.DataFrame) -> np.ndarray:
    """``model.predict_proba`` as a float64 ``[n, k]`` matrix, columns in ``model.classes_`` order."""
    return np.asarray(model.predict_proba(features), dtype=np.float64)


def classes_of(model: Any) -> list[Any]:
    """The model's classes (``classes_``, of the pipeline's last step) as plain Python values.

    Raises:
        ConfigError: The model is no classifier (it has no ``classes_``).
    """
    classes = getattr(model, "classes_", None)
    if classes is None:
        raise ConfigError(f"model {type(model).__name__} has no classes_; a classification task needs a classifier")
    return np.asarray(classes).tolist()


def _shown(values: Sequence[Any]) -> str:
    listed = ", ".join(repr(v) for v in values[:_SHOWN])
    return f"[{listed}{', ...' if len(values) > _SHOWN else ''}]"


def check_classes(labels: pd.Series, task: str, label_column: str, what: str) -> list[Any]:
    """The sorted classes of ``labels``, checked against the task.

    Args:
        labels: The label column, without missing values.
        task: ``binary_classification`` or ``multiclass_classification``.
        label_column: The label column's name, for messages.
        what: The table's name for messages, e.g. ``"training set t.parquet"``.

    Returns:
        The classes, sorted by their text.

    Raises:
        DataError: A single class; a binary task with other than 2 classes; a multiclass task with
            fewer than :data:`MIN_CLASSES`.
    """
    classes = sorted(labels.unique().tolist(), key=str)
    found = f"{len(classes)} class(es) {_shown(classes)}"
    if len(classes) < 2:
        raise DataError(
            f"{what}: label column {label_column!r} has a single class {_shown(classes)}; a classifier needs at "
            "least 2 classes to learn from"
        )
    if task == "binary_classification" and len(classes) > 2:
        raise DataError(
            f"{what}: label column {label_column!r} has {found}; dataset.task binary_classification expects "
            "exactly 2 (use multiclass_classification)"
        )
    if task == "multiclass_classification" and len(classes) < MIN_CLASSES:
        raise DataError(
            f"{what}: label column {label_column!r} has {found}; dataset.task multiclass_classification expects "
            f"at least {MIN_CLASSES} (use binary_classification for two classes)"
        )
    return classes


def check_covered(train_classes: Sequence[Any], eval_labels: pd.Series, label_column: str, what: str) -> None:
    """Refuse evaluation rows whose class the training split never saw: the model cannot predict it.

    Raises:
        DataError: Naming the classes found only in the evaluation rows.
    """
    unseen = sorted(set(eval_labels.unique().tolist()) - set(train_classes), key=str)
    if unseen:
        raise DataError(
            f"{what}: label column {label_column!r} has class(es) {_shown(unseen)} only in the newest rows held out "
            f"for evaluation; the training split has {_shown(list(train_classes))}. Add older rows of those classes "
            "or lower model.eval_fraction"
        )


def metric_arguments(metric: MetricSpec, function: Any, task: str, classes: Sequence[Any]) -> dict[str, Any]:
    """Keyword arguments that make ``function`` score this task the way the spec asks.

    Args:
        metric: The metric spec (its ``average`` and whether it takes scores).
        function: The imported metric function.
        task: The dataset's task.
        classes: The model's classes, in the order of its probability columns.

    Returns:
        ``average``, ``multi_class`` and ``labels`` where they apply and ``function`` takes them.

    Raises:
        ConfigError: ``average`` is set on a metric whose function takes no ``average`` argument.
    """
    try:
        parameters = set(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin or C function: pass nothing extra
        parameters = set()
    arguments: dict[str, Any] = {}
    if metric.average is not None and "average" not in parameters:
        raise ConfigError(
            f"evaluation metric {metric.name!r}: average is {metric.average!r}, but the function takes no "
            "'average' argument; remove it"
        )
    if task != "multiclass_classification":
        return {"average": metric.average} if metric.average is not None else {}
    if "average" in parameters:
        arguments["average"] = metric.average or DEFAULT_AVERAGE
    if metric.uses_scores:
        if "multi_class" in parameters:
            arguments["multi_class"] = "ovr"
        if "labels" in parameters:
            arguments["labels"] = list(classes)
    return arguments


def call_metric(
    metric: MetricSpec, function: Any, truth: np.ndarray, given: np.ndarray, task: str, classes: Sequence[Any]
) -> Any:
    """Call ``function(truth, given)`` with :func:`metric_arguments`.

    A one-vs-rest ROC AUC is undefined for a class the rows do not hold, and scikit-learn then
    returns NaN for the whole average. On a multiclass task such classes are left out of the
    average instead (:func:`present_class_roc_auc`), so a slice, or a window, that lacks a rare
    class is still scored on the classes it has.

    Raises:
        ValueError: Whatever ``function`` raises on these rows.
    """
    arguments = metric_arguments(metric, function, task, classes)
    if arguments.get("multi_class") == "ovr" and metric.function_name == "roc_auc_score":
        missing = set(classes) - set(np.asarray(truth).tolist())
        if missing:
            return present_class_roc_auc(truth, given, classes, arguments.get("average") or DEFAULT_AVERAGE)
    return function(truth, given, **arguments)


def present_class_roc_auc(truth: np.ndarray, probabilities: np.ndarray, classes: Sequence[Any], average: str) -> float:
    """One-vs-rest ROC AUC averaged over the classes ``truth`` holds (NaN with fewer than two).

    Args:
        truth: True classes.
        probabilities: ``[n, k]`` probabilities, columns in ``classes`` order.
        classes: The model's classes.
        average: ``macro`` (mean), ``weighted`` (by each class's rows) or ``micro`` (all one-vs-rest
            pairs pooled).

    Returns:
        The averaged AUC over the present classes.
    """
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(truth)
    present = [index for index, label in enumerate(classes) if (truth == label).any()]
    if len(present) < 2:
        return float("nan")
    hits = np.column_stack([truth == classes[index] for index in present])
    scores = probabilities[:, present]
    if average == "micro":
        return float(roc_auc_score(hits.ravel(), scores.ravel()))
    values = [float(roc_auc_score(hits[:, column], scores[:, column])) for column in range(len(present))]
    weights = hits.sum(axis=0) if average == "weighted" else None
    return float(np.average(values, weights=weights))


def score_input(task: str, probabilities: np.ndarray) -> np.ndarray:
    """What a score metric gets: the positive-class column (binary) or the whole matrix (multiclass)."""
    return probabilities if task == "multiclass_classification" else probabilities[:, -1]


def per_class_metrics(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class (0 where a class is never predicted).

    Returns:
        Class (as text) -> ``{"precision", "recall", "f1", "support"}``.
    """
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=list(classes), zero_division=0
    )
    return {
        str(label): {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": float(support[index]),
        }
        for index, label in enumerate(classes)
    }


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[Any]) -> dict[str, Any]:
    """The confusion matrix (rows: actual class, columns: predicted class) over ``classes``."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(truth, predicted, labels=list(classes))
    return {"labels": [str(c) for c in classes], "matrix": matrix.astype(int).tolist()}


def safe_name(label: Any) -> str:
    """A class as a column or metric name.

    Its text, each run of other characters than letters, digits and ``_`` replaced by ``_``
    (``"not sure"`` -> ``not_sure``).
    """
    return re.sub(r"[^0-9A-Za-z_]+", "_", str(label)) or "_"


def probability_columns(classes: Sequence[Any]) -> list[str]:
    """One column name per class: ``proba_<class>``, the class sanitised by :func:`safe_name`.

    Two classes that sanitise alike (``"a b"`` and ``"a-b"``) get their position appended
    (``proba_a_b_1``), so every name is unique and the order is the model's class order.
    """
    names: list[str] = []
    for index, label in enumerate(classes):
        name = PROBA_PREFIX + safe_name(label)
        while name in names:
            name = f"{name}_{index}"
        names.append(name)
    return names


__all__ = [
    "DEFAULT_AVERAGE",
    "MIN_CLASSES",
    "PROBA_PREFIX",
    "call_metric",
    "check_classes",
    "check_covered",
    "class_probabilities",
    "classes_of",
    "confusion",
    "metric_arguments",
    "per_class_metrics",
    "present_class_roc_auc",
    "probability_columns",
    "safe_name",
    "score_input",
]
