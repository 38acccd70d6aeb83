"""Request decoding: turn a V1 or V2 request body into the validated DataFrame a model scores.

Request formats (``NAME`` is the registered model name):

- V1 ``POST /v1/models/NAME:predict`` with ``{"instances": [{feature: value, ...}, ...]}`` or
  ``{"instances": [[v1, v2, ...], ...]}`` (values in the model's feature order). The answer is
  ``{"predictions": [...], "model_version": "3", "model_alias": "champion"}``.
- V2 ``POST /v2/models/NAME/infer`` (Open Inference Protocol): either one input per feature,
  named like the feature, shape ``[n]`` (or ``[n, 1]``), or a single 2-D input of any other
  name (e.g. ``input-0``) with shape ``[n, n_features]`` and rows in feature order. The answer
  has one output (``score`` for classifiers: probability of the positive class; ``prediction``
  otherwise), ``model_version`` and ``parameters.model_alias``.

Every value is checked against the feature list and types of the version that answers (taken
from the MLflow model signature, or ``feature_names_in_`` when no signature was logged, see
:func:`components.common.model_input.features_of`). Missing or unknown features, wrong types,
null or NaN values and empty batches are answered with HTTP 400 and a message that names the problem; too many rows with
413 and a body that is not JSON with 415 (:class:`RequestRejected`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from components.common.model_input import Feature, FeatureKind
from components.specs import ServingSpec

MAX_BATCH_ROWS = ServingSpec.model_fields["max_batch_rows"].default
# V1 body key (and V2 input name) of a request that names entities instead of feature values.
ENTITY_IDS_KEY = "entity_ids"
# Bodies kserve does not decode itself that are still read as JSON: curl's default form type
# and plain text. Anything else (CSV, XML, multipart, ...) is answered 415.
_ACCEPTED_CONTENT_TYPES = {"application/json", "application/x-www-form-urlencoded", "text/plain"}

# Open Inference Protocol datatype advertised in the model metadata for each kind.
OIP_DATATYPE: dict[FeatureKind, str] = {
    "number": "FP64",
    "integer": "INT64",
    "string": "BYTES",
    "boolean": "BOOL",
    "any": "BYTES",
}


def describe(value: Any) -> str:
    """A value's type and the start of its repr, for error messages."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _check_value(value: Any, feature: Feature, where: str) -> Any:
    """Return ``value`` converted for its column, or raise InvalidInput naming the problem."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{where}: feature {feature.name!r} is not valid UTF-8 text") from None
    if value is None:
        raise InvalidInput(f"{where}: feature {feature.name!r} is null; missing values are not accepted")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{where}: feature {feature.name!r} is {value}; only finite numbers are accepted")
    kind = feature.kind
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise InvalidInput(f"{where}: feature {feature.name!r} is {describe(value)}, outside the 64-bit range")
    if kind == "number":
        if not is_number:
            raise InvalidInput(f"{where}: feature {feature.name!r} must be a number, got {describe(value)}")
        return float(value)
    if kind == "integer":
        if is_number and float(value).is_integer() and abs(value) < 2**63:
            return int(value)
        raise InvalidInput(f"{where}: feature {feature.name!r} must be an integer, got {describe(value)}")
    if kind == "string":
        if not isinstance(value, str):
            raise InvalidInput(f"{where}: feature {feature.name!r} must be a string, got {describe(value)}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidInput(f"{where}: feature {feature.name!r} must be true or false, got {describe(value)}")
        return value
    if not (is_number or isinstance(value, str | bool)):
        raise InvalidInput(
            f"{where}: feature {feature.name!r} must be a number, string or boolean, got {describe(value)}"
        )
    return value


def _frame(columns: dict[str, list[Any]], features: Sequence[Feature]) -> pd.DataFrame:
    """Build the model input with the column order and dtypes the model was trained with."""
    data: dict[str, Any] = {}
    for feature in features:
        values = columns[feature.name]
        if feature.kind == "number":
            data[feature.name] = np.asarray(values, dtype="float64")
        elif feature.kind == "integer":
            data[feature.name] = np.asarray(values, dtype="int64")
        elif feature.kind == "boolean":
            data[feature.name] = np.asarray(values, dtype=bool)
        elif feature.kind == "string":
            data[feature.name] = pd.Series(values, dtype=object)
        else:
            data[feature.name] = pd.Series(values)
    return pd.DataFrame(data, columns=[f.name for f in features])


class RequestRejected(InvalidInput):
    """A bad request answered with a specific 4xx status (413, 415, 422) instead of 400.

    ``serving.server`` registers a handler that turns it into ``{"error": message}`` with
    ``status``; without that handler kserve still answers it as a plain 400.
    """

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


def check_batch_size(rows: int, what: str, max_rows: int) -> None:
    """Refuse an empty batch or one with more than ``max_rows`` rows.

    Raises:
        InvalidInput: The batch is empty (HTTP 400).
        RequestRejected: The batch has too many rows (HTTP 413).
    """
    if rows == 0:
        raise InvalidInput(f"{what} is empty; send at least one instance")
    if rows > max_rows:
        raise RequestRejected(
            f"{what} has {rows} rows; at most {max_rows} are accepted per request (serving.max_batch_rows)", 413
        )


def _feature_problems(names: list[str], known: set[str], given: list[str]) -> list[str]:
    """Missing and unknown feature names of one request, as readable phrases."""
    missing = [n for n in names if n not in given]
    extra = [n for n in given if n not in known]
    problems = [f"missing feature(s) {_names(missing)}"] if missing else []
    return problems + ([f"unknown feature(s) {_names(extra)}"] if extra else [])


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def parse_json(body: bytes | str) -> Any:
    """Decode a body kserve passed on undecoded (its content-type was not a JSON one)."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


def frame_from_v1(payload: Any, features: Sequence[Feature], max_rows: int = MAX_BATCH_ROWS) -> pd.DataFrame:
    """Validate a V1 ``{"instances": [...]}`` body and turn it into the model input.

    Raises:
        InvalidInput: The body, an instance or a value does not fit the model's features.
    """
    if isinstance(payload, bytes | str):
        payload = parse_json(payload)
    if not isinstance(payload, dict):
        raise InvalidInput(
            f'request body must be a JSON object like {{"instances": [...]}}, got {type(payload).__name__}'
        )
    if "instances" not in payload:
        raise InvalidInput(f"request body has no 'instances' key (keys: {_names(list(payload))})")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be a list, got {type(instances).__name__}")
    check_batch_size(len(instances), "'instances'", max_rows)
    names = [f.name for f in features]
    known = set(names)
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, instance in enumerate(instances):
        where = f"instance {index}"
        if isinstance(instance, dict):
            problems = _feature_problems(names, known, list(instance))
            if problems:
                raise InvalidInput(f"{where}: {'; '.join(problems)}; the model expects {_names(names)}")
            for feature in features:
                columns[feature.name].append(_check_value(instance[feature.name], feature, where))
        elif isinstance(instance, list):
            if len(instance) != len(features):
                raise InvalidInput(
                    f"{where} has {len(instance)} values, expected {len(features)} in feature order: {_names(names)}"
                )
            for feature, value in zip(features, instance, strict=True):
                columns[feature.name].append(_check_value(value, feature, where))
        else:
            raise InvalidInput(
                f"{where} must be an object {{feature: value}} or a list of {len(features)} values, "
                f"got {describe(instance)}"
            )
    return _frame(columns, features)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, np.ndarray):
        return list(data.reshape(-1).tolist())
    if not isinstance(data, list | tuple):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list | tuple | np.ndarray) else [item])
    return flat


def input_values(infer_input: Any) -> list[Any]:
    """The values of one V2 input, flattened, after checking them against its shape.

    Raises:
        InvalidInput: The binary data cannot be decoded, or the values do not fill the shape.
    """
    data = infer_input.data
    if data is None:  # binary tensor extension: the values are in the raw buffer
        try:
            data = infer_input.as_numpy()
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input {infer_input.name!r}: cannot decode binary data: {exc}") from None
    values = _flatten(data)
    shape = list(infer_input.shape or [])
    expected = math.prod(shape) if shape else len(values)
    if any(not isinstance(d, int) or d < 0 for d in shape) or expected != len(values):
        raise InvalidInput(f"input {infer_input.name!r} has {len(values)} values but shape {shape}")
    return values


def frame_from_v2(request: InferRequest, features: Sequence[Feature], max_rows: int = MAX_BATCH_ROWS) -> pd.DataFrame:
    """Validate an Open Inference Protocol request and turn it into the model input.

    Raises:
        InvalidInput: The inputs, their shapes or a value do not fit the model's features.
    """
    inputs = list(request.inputs or [])
    names = [f.name for f in features]
    known = set(names)
    if not inputs:
        raise InvalidInput(f"request has no inputs; send one input per feature ({_names(names)})")
    if len(inputs) == 1 and inputs[0].name not in known:
        matrix = inputs[0]
        shape = list(matrix.shape or [])
        if len(shape) != 2 or shape[1] != len(features):
            raise InvalidInput(
                f"input {matrix.name!r} is not a feature name, so it must be a 2-D tensor of shape "
                f"[rows, {len(features)}] with columns {_names(names)}; got shape {shape}"
            )
        values = input_values(matrix)
        n_rows = shape[0]
        check_batch_size(n_rows, f"input {matrix.name!r}", max_rows)
        columns: dict[str, list[Any]] = {name: [] for name in names}
        for row in range(n_rows):
            for col, feature in enumerate(features):
                value = values[row * len(features) + col]
                columns[feature.name].append(_check_value(value, feature, f"row {row}"))
        return _frame(columns, features)

    given = [i.name for i in inputs]
    duplicates = sorted({n for n in given if given.count(n) > 1})
    problems = [f"input(s) {_names(duplicates)} given more than once"] if duplicates else []
    problems += _feature_problems(names, known, given)
    if problems:
        raise InvalidInput(f"{'; '.join(problems)}; the model expects one input per feature: {_names(names)}")
    by_name = {i.name: i for i in inputs}
    columns = {}
    rows: int | None = None
    for feature in features:
        infer_input = by_name[feature.name]
        shape = list(infer_input.shape or [])
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(f"input {feature.name!r} must have shape [rows] or [rows, 1], got {shape}")
        values = input_values(infer_input)
        if rows is None:
            rows = len(values)
            check_batch_size(rows, f"input {feature.name!r}", max_rows)
        elif len(values) != rows:
            raise InvalidInput(
                f"inputs have different lengths: {feature.name!r} has {len(values)} values, "
                f"{features[0].name!r} has {rows}"
            )
        columns[feature.name] = [
            _check_value(value, feature, f"input {feature.name!r} element {i}") for i, value in enumerate(values)
        ]
    return _frame(columns, features)


def check_content_type(headers: dict[str, str] | None) -> None:
    """Refuse a body kserve did not decode whose content type is not read as JSON.

    Raises:
        RequestRejected: The content type is neither JSON nor one read as JSON (HTTP 415).
    """
    content_type = (headers or {}).get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type not in _ACCEPTED_CONTENT_TYPES and not content_type.endswith("+json"):
        raise RequestRejected(
            f"content-type {content_type!r} is not supported; send the body as JSON with "
            "'Content-Type: application/json'",
            415,
        )
