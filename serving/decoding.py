"""Request decoding: turn a V1 or V2 request body into the validated columns a model scores.

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
null or NaN values and empty batches are answered with HTTP 400 and a message that names the
problem; too many rows with 413 and a body that is not JSON with 415 (:class:`RequestRejected`).

Everything here is linear in the size of the request and never recurses into the request, so
no body can make it slow or overflow the stack: JSON is read by simdjson, which refuses nesting
deeper than 1024 levels, and tensor data is flattened level by level up to
:data:`MAX_TENSOR_DEPTH`. :func:`decode_json` also keeps a large body from stalling the server:
a C parser that built the whole Python object tree in one call would hold the GIL for tens of
milliseconds per megabyte, and health checks would wait that long; simdjson parses in
milliseconds and the objects are built one list element at a time, in a Python loop that lets
the event loop run in between. Error messages name at most :data:`MAX_NAMED` fields and show at most
40 characters of a value, so a body with 100,000 unknown keys gets a short answer.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import simdjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from components.common.feast import EntityLookup
from components.common.model_input import Feature, FeatureKind
from components.serving_spec import ServingSpec
from serving.observability import BODIES_DECODED

MAX_BATCH_ROWS = ServingSpec.model_fields["max_batch_rows"].default
# V1 body key (and V2 input name) of a request that names entities instead of feature values.
ENTITY_IDS_KEY = "entity_ids"
# Content types read as JSON: JSON itself, curl's default form type and plain text. Anything
# else (CSV, XML, multipart, ...) is answered 415.
_ACCEPTED_CONTENT_TYPES = {"application/json", "application/x-www-form-urlencoded", "text/plain"}
# Most field names one error message lists before "and K more".
MAX_NAMED = 10
# Most nesting levels of one V2 tensor's data ([[1], [2]] is 2).
MAX_TENSOR_DEPTH = 8
# Longest string value a feature may carry: a category, not a document.
MAX_STRING_CHARS = 4096
# Request ids (x-request-id, V2 "id") are logged and stored: a bounded, printable alphabet.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+/=-]{1,128}")
_OIP_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"}
)

# Open Inference Protocol datatype advertised in the model metadata for each kind.
OIP_DATATYPE: dict[FeatureKind, str] = {
    "number": "FP64",
    "integer": "INT64",
    "string": "BYTES",
    "boolean": "BOOL",
    "any": "BYTES",
}

# V2 datatypes a feature of each kind accepts: a BOOL tensor for a number is a client bug, not a number.
_NUMERIC_DATATYPES = frozenset(d for d in _OIP_DATATYPES if d not in ("BOOL", "BYTES"))
_ACCEPTED_DATATYPES: dict[FeatureKind, frozenset[str]] = {
    "number": _NUMERIC_DATATYPES,
    "integer": _NUMERIC_DATATYPES,
    "string": frozenset({"BYTES"}),
    "boolean": frozenset({"BOOL"}),
    "any": _OIP_DATATYPES,
}

# One 1-D array per feature, in the dtype the model was trained with: what a version scores.
Columns = dict[str, np.ndarray]

_short = reprlib.Repr()
_short.maxlevel = 2
_short.maxstring = 40
_short.maxother = 40


class RequestRejected(InvalidInput):
    """A bad request answered with a specific 4xx status (401, 404, 413, 415, 422) instead of 400."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


def describe(value: Any) -> str:
    """A value's type and the start of its repr, for error messages (bounded for any value)."""
    text = _short.repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def names(items: Sequence[Any], limit: int = MAX_NAMED) -> str:
    """``'a', 'b' and 3 more``: at most ``limit`` names, each cut to 60 characters."""
    shown = ", ".join(repr(str(item))[:60] for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def checked_request_id(value: Any, where: str) -> str | None:
    """The request id if it is safe to log and store, None when none was sent.

    Raises:
        InvalidInput: It is not 1-128 characters of letters, digits and ``. _ : @ + / = -``.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
        raise InvalidInput(
            f"{where} must be 1-128 characters of letters, digits and . _ : @ + / = -; got {describe(value)}"
        )
    return value


def check_content_type(content_type: str | None) -> None:
    """Refuse a body whose content type is not read as JSON.

    Raises:
        RequestRejected: The content type is neither JSON nor one read as JSON (HTTP 415).
    """
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type and media_type not in _ACCEPTED_CONTENT_TYPES and not media_type.endswith("+json"):
        raise RequestRejected(
            f"content-type {media_type[:60]!r} is not supported; send the body as JSON with "
            "'Content-Type: application/json'",
            415,
        )


def decode_json(body: bytes | str, content_type: str | None = None) -> Any:
    """Parse a request body as strict JSON (no NaN or Infinity; at most 1024 levels deep).

    A top-level list value (``instances``, ``inputs``) and a top-level list body are converted one
    element at a time; everything else in one call.

    Every parsed body is counted in ``ctpipe_request_bodies_decoded_total``, which is how the
    tests prove that a body refused for its size was never parsed.

    Raises:
        RequestRejected: The content type is not a JSON one (HTTP 415).
        InvalidInput: The body is not valid UTF-8 JSON (HTTP 400).
    """
    check_content_type(content_type)
    BODIES_DECODED.inc()
    try:
        # A fresh parser per body: a parser cannot parse again while proxies of its last document live.
        document = simdjson.Parser().parse(body.encode() if isinstance(body, str) else body)
        return _python(document, top=True)
    except (ValueError, TypeError, RuntimeError, KeyError) as exc:  # simdjson's errors for malformed JSON
        raw = body.encode() if isinstance(body, str) else body
        hint = "; NaN and Infinity are not JSON: send finite numbers" if b"NaN" in raw or b"Infinity" in raw else ""
        raise InvalidInput(f"request body is not valid JSON: {str(exc)[:200]}{hint}") from None


def _python(value: Any, top: bool = False) -> Any:
    """A simdjson proxy as Python objects: lists of the top-level object are built element by element."""
    if isinstance(value, simdjson.Object):
        if not top:
            return value.as_dict()
        return {key: _python(item) for key, item in value.items()}
    if isinstance(value, simdjson.Array):
        items: list[Any] = []
        for item in value:  # one small C call per element, so other threads get the GIL in between
            if isinstance(item, simdjson.Object):
                items.append(item.as_dict())
            elif isinstance(item, simdjson.Array):
                items.append(item.as_list())
            else:
                items.append(item)
        return items
    return value


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
        if len(value) > MAX_STRING_CHARS:
            raise InvalidInput(
                f"{where}: feature {feature.name!r} has {len(value)} characters; "
                f"at most {MAX_STRING_CHARS} are accepted"
            )
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


_DTYPE: dict[FeatureKind, Any] = {"number": "float64", "integer": "int64", "boolean": bool}


def _columns(values: Mapping[str, list[Any]], features: Sequence[Feature]) -> Columns:
    """Checked values per feature -> arrays in the dtypes the model was trained with."""
    return {f.name: np.asarray(values[f.name], dtype=_DTYPE.get(f.kind, object)) for f in features}


def to_frame(columns: Mapping[str, np.ndarray], features: Sequence[Feature]) -> pd.DataFrame:
    """The model input as a DataFrame, for models that need pandas (scikit-learn pipelines).

    Columns of unknown kind (no signature) get the dtype pandas infers, as in training.
    """
    data = {f.name: pd.Series(columns[f.name].tolist()) if f.kind == "any" else columns[f.name] for f in features}
    return pd.DataFrame(data, columns=[f.name for f in features])


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


def _feature_problems(expected: list[str], known: set[str], given: Sequence[str]) -> list[str]:
    """Missing and unknown feature names of one request, as readable phrases (linear time)."""
    given_set = set(given)
    missing = [n for n in expected if n not in given_set]
    extra = [n for n in given if n not in known]
    problems = [f"missing feature(s) {names(missing)}"] if missing else []
    return problems + ([f"unknown feature(s) {names(extra)}"] if extra else [])


def columns_from_v1(payload: Any, features: Sequence[Feature], max_rows: int = MAX_BATCH_ROWS) -> Columns:
    """Validate a decoded V1 ``{"instances": [...]}`` body and turn it into the model input.

    Raises:
        InvalidInput: The body, an instance or a value does not fit the model's features.
    """
    if not isinstance(payload, dict):
        raise InvalidInput(
            f'request body must be a JSON object like {{"instances": [...]}}, got {type(payload).__name__}'
        )
    if "instances" not in payload:
        raise InvalidInput(f"request body has no 'instances' key (keys: {names(list(payload))})")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be a list, got {type(instances).__name__}")
    check_batch_size(len(instances), "'instances'", max_rows)
    expected = [f.name for f in features]
    known = set(expected)
    values: dict[str, list[Any]] = {name: [] for name in expected}
    for index, instance in enumerate(instances):
        where = f"instance {index}"
        if isinstance(instance, dict):
            if len(instance) != len(expected) or not known.issuperset(instance):
                problems = _feature_problems(expected, known, list(instance))
                raise InvalidInput(f"{where}: {'; '.join(problems)}; the model expects {names(expected)}")
            for feature in features:
                values[feature.name].append(_check_value(instance[feature.name], feature, where))
        elif isinstance(instance, list):
            if len(instance) != len(features):
                raise InvalidInput(
                    f"{where} has {len(instance)} values, expected {len(features)} in feature order: {names(expected)}"
                )
            for feature, value in zip(features, instance, strict=True):
                values[feature.name].append(_check_value(value, feature, where))
        else:
            raise InvalidInput(
                f"{where} must be an object {{feature: value}} or a list of {len(features)} values, "
                f"got {describe(instance)}"
            )
    return _columns(values, features)


@dataclass(frozen=True)
class Tensor:
    """One V2 input: its name, shape, data (nested lists, or an array from binary data) and datatype."""

    name: str
    shape: list[int]
    data: Any
    datatype: str = "BYTES"

    def values(self) -> list[Any]:
        """The values, flattened, after checking that they fill the shape.

        Raises:
            InvalidInput: The data is nested too deeply or does not fill the shape.
        """
        data = self.data
        if isinstance(data, np.ndarray):
            flat: list[Any] = data.reshape(-1).tolist()
        else:
            flat = data if isinstance(data, list) else [data]
            for _ in range(MAX_TENSOR_DEPTH):  # one pass per nesting level, never recursion
                if not any(isinstance(v, list) for v in flat):
                    break
                level: list[Any] = []
                for v in flat:
                    if isinstance(v, list):
                        level.extend(v)
                    else:
                        level.append(v)
                flat = level
            else:
                if any(isinstance(v, list) for v in flat):
                    raise InvalidInput(f"input {self.name!r}: data is nested deeper than {MAX_TENSOR_DEPTH} levels")
        expected = math.prod(self.shape) if self.shape else len(flat)
        if expected != len(flat):
            raise InvalidInput(f"input {self.name!r} has {len(flat)} values but shape {self.shape}")
        return flat


def tensors_from_json(payload: Any) -> tuple[list[Tensor], Any]:
    """The inputs and the ``id`` of a decoded V2 JSON request, each field checked.

    Raises:
        InvalidInput: The body is not ``{"inputs": [{"name", "shape", "datatype", "data"}, ...]}``.
    """
    if not isinstance(payload, dict):
        raise InvalidInput(f'request body must be a JSON object like {{"inputs": [...]}}, got {describe(payload)}')
    inputs = payload.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput(f"'inputs' must be a list of tensors, got {describe(inputs)}")
    tensors = []
    for index, item in enumerate(inputs):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object with name, shape, datatype and data, got {describe(item)}")
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidInput(f"{where}.name must be a string, got {describe(name)}")
        shape = item.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_TENSOR_DEPTH
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape)
        ):
            raise InvalidInput(
                f"{where}.shape ({name!r}) must be a list of at most {MAX_TENSOR_DEPTH} non-negative integers, "
                f"got {describe(shape)}"
            )
        datatype = item.get("datatype")
        if datatype not in _OIP_DATATYPES:
            raise InvalidInput(
                f"{where}.datatype ({name!r}) must be one of {', '.join(sorted(_OIP_DATATYPES))}, "
                f"got {describe(datatype)}"
            )
        if "data" not in item:
            raise InvalidInput(f"{where} ({name!r}) has no 'data'")
        tensors.append(Tensor(name, shape, item["data"], datatype))
    return tensors, payload.get("id")


def tensors_from_request(request: InferRequest) -> list[Tensor]:
    """The inputs of kserve's ``InferRequest`` (binary tensor extension included).

    Raises:
        InvalidInput: Binary data cannot be decoded.
    """
    tensors = []
    for infer_input in request.inputs or []:
        data = infer_input.data
        if data is None:  # binary tensor extension: the values are in the raw buffer
            try:
                data = infer_input.as_numpy()
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"input {infer_input.name!r}: cannot decode binary data: {exc}") from None
        shape = list(infer_input.shape or [])
        if any(not isinstance(d, int) or d < 0 for d in shape):
            raise InvalidInput(f"input {infer_input.name!r} has an invalid shape {shape}")
        tensors.append(Tensor(str(infer_input.name), shape, data, str(infer_input.datatype)))
    return tensors


def columns_from_v2(tensors: Sequence[Tensor], features: Sequence[Feature], max_rows: int = MAX_BATCH_ROWS) -> Columns:
    """Validate the inputs of an Open Inference Protocol request and turn them into the model input.

    Raises:
        InvalidInput: The inputs, their shapes or a value do not fit the model's features.
    """
    expected = [f.name for f in features]
    known = set(expected)
    if not tensors:
        raise InvalidInput(f"request has no inputs; send one input per feature ({names(expected)})")
    if len(tensors) == 1 and tensors[0].name not in known:
        matrix = tensors[0]
        if len(matrix.shape) != 2 or matrix.shape[1] != len(features):
            raise InvalidInput(
                f"input {matrix.name!r} is not a feature name, so it must be a 2-D tensor of shape "
                f"[rows, {len(features)}] with columns {names(expected)}; got shape {matrix.shape}"
            )
        n_rows = matrix.shape[0]
        check_batch_size(n_rows, f"input {matrix.name!r}", max_rows)
        flat = matrix.values()
        width = len(features)
        values = {
            feature.name: [_check_value(flat[row * width + col], feature, f"row {row}") for row in range(n_rows)]
            for col, feature in enumerate(features)
        }
        return _columns(values, features)

    given = [t.name for t in tensors]
    duplicates = sorted(name for name, count in Counter(given).items() if count > 1)
    problems = [f"input(s) {names(duplicates)} given more than once"] if duplicates else []
    problems += _feature_problems(expected, known, given)
    if problems:
        raise InvalidInput(f"{'; '.join(problems)}; the model expects one input per feature: {names(expected)}")
    by_name = {t.name: t for t in tensors}
    values = {}
    rows: int | None = None
    for feature in features:
        tensor = by_name[feature.name]
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise InvalidInput(f"input {feature.name!r} must have shape [rows] or [rows, 1], got {tensor.shape}")
        if tensor.datatype not in _ACCEPTED_DATATYPES[feature.kind]:
            raise InvalidInput(
                f"input {feature.name!r} has datatype {tensor.datatype}; a {feature.kind} feature takes "
                f"{OIP_DATATYPE[feature.kind]}"
            )
        if rows is None:
            rows = tensor.shape[0]
            check_batch_size(rows, f"input {feature.name!r}", max_rows)
        elif tensor.shape[0] != rows:
            raise InvalidInput(
                f"inputs have different lengths: {feature.name!r} has {tensor.shape[0]} values, "
                f"{features[0].name!r} has {rows}"
            )
        values[feature.name] = [
            _check_value(value, feature, f"input {feature.name!r} element {i}")
            for i, value in enumerate(tensor.values())
        ]
    return _columns(values, features)


def entity_rows(
    lookup: EntityLookup | None, ids: Any, what: str, max_batch_rows: int
) -> tuple[dict[str, Any], list[Any]]:
    """Fetch the online features of ``ids`` from Feast in one call, as a V1 body, and the ids found.

    Raises:
        InvalidInput: No Feast configured, or the ids are not a list of integers or strings (400).
        RequestRejected: Some ids have no online features (422).
    """
    if lookup is None:
        raise InvalidInput(
            f"{what}: this server has no Feast feature store configured, so it cannot look up entity ids; "
            "send feature values in 'instances'"
        )
    if not isinstance(ids, list):
        raise InvalidInput(f"{what} must be a list of entity ids, got {describe(ids)}")
    check_batch_size(len(ids), what, max_batch_rows)
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int | str)]
    if bad:
        raise InvalidInput(f"{what}: entity ids must be integers or strings; got {describe(bad[0])}")
    from components.common.errors import DataError
    from components.common.feast import online_features

    try:
        found = online_features(list(ids), lookup.dataset, lookup.feast, lookup.workspace)
    except DataError as exc:
        raise InvalidInput(f"{what}: {str(exc)[:500]}") from None
    if found.missing:
        raise RequestRejected(
            f"unknown entity id(s) for {lookup.dataset.entity_column!r}: {names(found.missing)} "
            f"(no online features in Feast); {len(found.rows)} of {len(ids)} ids were found",
            422,
        )
    entity = lookup.dataset.entity_column
    instances = [{k: v for k, v in row.items() if k != entity} for row in found.rows]
    return {"instances": instances}, [row[entity] for row in found.rows]
