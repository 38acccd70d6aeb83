"""What a scored request answers, by protocol, for every kind of model (docs/serving.md, responses).

A binary classifier or a regressor answers one value per row: V1 ``predictions`` and one V2
output named ``score`` (positive-class probability) or ``prediction``. A multiclass classifier
answers the class and the probability of every class:

- V1: ``predictions`` (the predicted class per row), ``probabilities`` (one list of ``k`` values
  per row) and ``classes`` (the class of each probability column, in the model's order);
- V2: output ``predict`` (shape ``[n]``; ``BYTES`` for text classes, ``INT64``, ``FP64`` or
  ``BOOL`` for others) and output ``predict_proba`` (``FP64``, shape ``[n, k]``). The model
  metadata (``GET /v2/models/<name>``) lists both, ``predict_proba`` with shape ``[-1, k]`` and
  ``parameters.class_names``, the class of each column (as text).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.versions import LoadedVersion

#: V2 output names of a multiclass classifier (scikit-learn's method names).
PREDICT, PREDICT_PROBA = "predict", "predict_proba"


def class_datatype(classes: tuple[Any, ...]) -> str:
    """The Open Inference Protocol datatype of the ``predict`` output for these classes."""
    if all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    if all(isinstance(c, int | float) and not isinstance(c, bool) for c in classes):
        return "FP64"
    return "BYTES"


def output_types(serving: LoadedVersion) -> list[dict[str, Any]]:
    """The V2 metadata's outputs of ``serving``."""
    if not serving.multiclass:
        return [{"name": serving.output, "datatype": "FP64", "shape": [-1]}]
    names = [str(c) for c in serving.classes]
    return [
        {"name": PREDICT, "datatype": class_datatype(serving.classes), "shape": [-1]},
        {"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, len(names)], "parameters": {"class_names": names}},
    ]


def v1_answer(serving: LoadedVersion, scores: np.ndarray) -> dict[str, Any]:
    """The model part of a V1 answer: ``predictions``, plus ``probabilities`` and ``classes`` for multiclass."""
    if not serving.multiclass:
        return {"predictions": scores.tolist()}
    probabilities = np.asarray(scores, dtype="float64")
    return {
        "predictions": serving.predicted_classes(probabilities),
        "probabilities": probabilities.tolist(),
        "classes": list(serving.classes),
    }


def v2_outputs(serving: LoadedVersion, scores: np.ndarray) -> list[dict[str, Any]]:
    """The ``outputs`` of a V2 answer."""
    values = np.asarray(scores, dtype="float64")
    if not serving.multiclass:
        shape = list(values.shape)
        return [{"name": serving.output, "datatype": "FP64", "shape": shape, "data": values.ravel().tolist()}]
    predicted = serving.predicted_classes(values)
    datatype = class_datatype(serving.classes)
    return [
        {
            "name": PREDICT,
            "datatype": datatype,
            "shape": [len(predicted)],
            "data": [str(c) for c in predicted] if datatype == "BYTES" else predicted,
        },
        {
            "name": PREDICT_PROBA,
            "datatype": "FP64",
            "shape": list(values.shape),
            "data": values.ravel().tolist(),
            "parameters": {"class_names": [str(c) for c in serving.classes]},
        },
    ]


def served_values(serving: LoadedVersion, scores: np.ndarray) -> np.ndarray:
    """One value per row for the metrics' prediction histogram: a multiclass row's top probability."""
    values = np.asarray(scores, dtype="float64")
    return values.max(axis=1) if serving.multiclass and values.ndim == 2 else values


__all__ = ["PREDICT", "PREDICT_PROBA", "class_datatype", "output_types", "served_values", "v1_answer", "v2_outputs"]
