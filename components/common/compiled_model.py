"""A registered scikit-learn model compiled to ONNX, its onnxruntime scorer, and the parity check between them.

Why: the model server answers one-row requests; a fitted sklearn ``Pipeline`` spends most of
such a request in pandas and per-step validation, while the same pipeline compiled to ONNX runs
in onnxruntime in tens of microseconds. The ONNX file is also the export for edge deployment:
it runs wherever onnxruntime does, without Python, sklearn or a pickle.

What: :func:`compile_onnx` converts a fitted pipeline with skl2onnx; :class:`OnnxScorer` runs
the result with one intra-op thread (one model-server worker, one core) and returns what
``serving.versions.LoadedVersion.score`` returns; :func:`check_parity` compares both on every
evaluation row, and only a version that passes is served through ONNX (``components.infra_validate``).

Conventions of the compiled graph:

- numeric (``number``/``integer``) features are ``float64`` inputs of shape ``[N, 1]``, missing
  values are NaN, and the graph computes what scikit-learn computes in ``float64`` in ``float64``
  (see "Float64" below); a model whose float64 graph cannot be built exactly is compiled with
  ``float32`` inputs instead (metadata ``ctpipe.precision`` says which and why);
- string features are ``string`` inputs of shape ``[N, 1]``; a missing value is fed as
  :data:`MISSING_CATEGORY`. skl2onnx cannot express a ``SimpleImputer`` whose missing value is
  NaN on a string column, so a copy of the pipeline has those imputers look for the sentinel
  instead (their fitted ``statistics_`` stay), and the scorer turns ``None``/NaN into it;
- outputs: ``label`` and ``probabilities`` (no ZipMap) for classifiers, ``variable`` for regressors.

Features of kind ``boolean`` or ``any`` are not compiled (:class:`CompileError`).

The float64 repair of skl2onnx's graph is :mod:`components.common.onnx_float64`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from components.common.errors import CtpipeError
from components.common.model_input import Feature, require_columns
from components.common.onnx_float64 import NoFloat64, is_missing_marker, make_float64_exact, model_parts

#: What a missing category is fed as (and what the compiled categorical imputers look for).
MISSING_CATEGORY = "__ctpipe_missing__"
#: Largest difference parity allows: absolute for probabilities; for regressors relative to
#: ``max(1, |sklearn value|)``, so values near zero are held to the same absolute bound.
PARITY_TOLERANCE = 1e-5

Output = Literal["score", "prediction"]


def output_kind(model: Any) -> Output:
    """What a model serves: ``score`` (class probabilities) when it has ``predict_proba``, else ``prediction``."""
    return "score" if hasattr(model, "predict_proba") else "prediction"


_NUMERIC_KINDS = ("number", "integer")
_STRING_KINDS = ("string",)
#: Graph input types a feature of each kind may have (``float64`` normally, ``float32`` after a fallback).
_ONNX_TYPES_OF_KIND = {
    "number": ("tensor(double)", "tensor(float)"),
    "integer": ("tensor(double)", "tensor(float)"),
    "string": ("tensor(string)",),
}
_NUMPY_TYPE: dict[str, type[np.floating[Any]]] = {"tensor(double)": np.float64, "tensor(float)": np.float32}
#: Metadata key of the graph's numeric precision: ``float64``, or ``float32: <why not float64>``.
PRECISION_KEY = "ctpipe.precision"


class CompileError(CtpipeError):
    """The model cannot be compiled to ONNX (or the ONNX file does not fit the model's features)."""

    hint = "Nothing to fix for serving: the sklearn model serves; the reason is in the version's ctpipe.onnx tag."


class OnnxIntegrityError(CtpipeError):
    """An ONNX file's SHA-256 differs from the one recorded when it was compiled."""

    hint = "The file was changed after registration; re-register the run to compile it again."


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (``components.common.io.file_sha256`` gives the same for a file)."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Compiling


def _use_missing_sentinel(model: Any) -> int:
    """Point every fitted string SimpleImputer that looks for NaN at :data:`MISSING_CATEGORY`; return how many."""
    from sklearn.impute import SimpleImputer

    changed = 0
    for part in model_parts(model):
        if not isinstance(part, SimpleImputer) or not is_missing_marker(part.missing_values):
            continue
        statistics = getattr(part, "statistics_", None)
        fit_dtype = getattr(part, "_fit_dtype", None)
        kinds = {getattr(statistics, "dtype", np.dtype(float)).kind, getattr(fit_dtype, "kind", "f")}
        if kinds & {"O", "U", "S"}:
            part.missing_values = MISSING_CATEGORY
            changed += 1
    return changed


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:limit]}"


def compile_onnx(model: Any, features: Sequence[Feature]) -> bytes:
    """Compile a fitted scikit-learn model (normally a ``Pipeline``) to ONNX.

    The model itself is not changed: a deep copy gets the string-imputer sentinel. Numeric
    inputs are ``float64`` and the graph is made to compute like scikit-learn
    (:func:`make_float64_exact`); when that is not possible the model is compiled with
    ``float32`` inputs, as skl2onnx does by default. The graph's metadata records the sentinel,
    the features, the output kind and the precision (``ctpipe.precision``: ``float64``, or
    ``float32: <why>``), for edge users.

    Args:
        model: The fitted model, as loaded from MLflow.
        features: Its input columns, in order (``model_input.features_of``).

    Returns:
        The serialized ONNX model.

    Raises:
        CompileError: A feature is neither numeric nor string, skl2onnx refuses the model, or
            onnxruntime cannot load what skl2onnx produced.
    """
    if not features:
        raise CompileError("the model has no input features")
    unsupported = [f"{f.name!r} is {f.kind}" for f in features if f.kind not in (*_NUMERIC_KINDS, *_STRING_KINDS)]
    if unsupported:
        raise CompileError(
            f"feature(s) {', '.join(unsupported)}; ONNX compilation supports number, integer and string features"
        )
    from sklearn.base import is_classifier

    compiled = copy.deepcopy(model)
    _use_missing_sentinel(compiled)
    output = output_kind(model)
    options = {"zipmap": False} if is_classifier(model) else None
    props = {
        "ctpipe.missing_category": MISSING_CATEGORY,
        "ctpipe.features": json.dumps([{"name": f.name, "kind": f.kind} for f in features]),
        "ctpipe.output": output,
    }
    try:
        graph = _convert(compiled, features, options, double=True)
        precision = make_float64_exact(graph, compiled)
        data = _serialize(graph, {**props, PRECISION_KEY: precision})
        OnnxScorer(data, features, output)  # onnxruntime must load it
        return data
    except Exception as exc:  # NoFloat64, CompileError, or a graph the fix-up does not know: not worth failing for
        reason = str(exc) if isinstance(exc, NoFloat64 | CompileError) else _first_line(exc)
        fallback = f"float32: {reason}"[:500]
    graph = _convert(compiled, features, options, double=False)
    data = _serialize(graph, {**props, PRECISION_KEY: fallback})
    OnnxScorer(data, features, output)  # onnxruntime must load it, with inputs that fit the features
    return data


def _convert(compiled: Any, features: Sequence[Feature], options: dict[str, Any] | None, double: bool) -> Any:
    """skl2onnx's graph (``onnx.ModelProto``) of ``compiled``, numeric inputs ``double`` or ``float``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    numeric = DoubleTensorType if double else FloatTensorType
    initial_types = [
        (f.name, StringTensorType([None, 1]) if f.kind in _STRING_KINDS else numeric([None, 1])) for f in features
    ]
    try:
        return to_onnx(compiled, initial_types=initial_types, options=options)
    except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, TypeError, ValueError...
        where = " in float64" if double else ""
        raise CompileError(f"skl2onnx cannot compile {type(compiled).__name__}{where}: {_first_line(exc)}") from exc


def _serialize(graph: Any, props: dict[str, str]) -> bytes:
    from onnx import helper

    helper.set_model_props(graph, props)
    data: bytes = graph.SerializeToString()
    return data


# ---------------------------------------------------------------------------------------------
# Scoring


def _session(data: bytes) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def _category(value: Any) -> str:
    """A non-``str`` value of a string feature: missing values become the sentinel, others ``str``."""
    if value is None or value is pd.NA or (isinstance(value, float | np.floating) and value != value):
        return MISSING_CATEGORY
    return str(value)


class OnnxScorer:
    """An ONNX model in an onnxruntime session (one intra-op and one inter-op thread), scoring like the sklearn model.

    Thread-safe: onnxruntime allows concurrent ``run`` calls on one session.

    Args:
        data: The serialized ONNX model (:func:`compile_onnx`).
        features: The model's input columns; every one must be an input of the graph.
        output: ``"score"`` for a classifier with ``predict_proba``, ``"prediction"`` otherwise.
        expected_sha256: When given, ``data`` must have this SHA-256.

    Raises:
        OnnxIntegrityError: ``data`` does not have ``expected_sha256``.
        CompileError: onnxruntime cannot load ``data``, or its inputs or outputs do not fit.
    """

    def __init__(
        self, data: bytes, features: Sequence[Feature], output: Output, expected_sha256: str | None = None
    ) -> None:
        self.sha256 = sha256_of(data)
        if expected_sha256 is not None and self.sha256 != expected_sha256:
            raise OnnxIntegrityError(
                f"ONNX model has SHA-256 {self.sha256}, but {expected_sha256} was recorded; refusing to load it"
            )
        self.features = tuple(features)
        self.output: Output = output
        try:
            self._session = _session(data)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented classes
            raise CompileError(f"onnxruntime cannot load the ONNX model: {_first_line(exc)}") from exc
        inputs = {i.name: i.type for i in self._session.get_inputs()}
        wrong = [
            f"{f.name} ({f.kind}: wants {' or '.join(_ONNX_TYPES_OF_KIND.get(f.kind, ('?',)))}, "
            f"graph has {inputs.get(f.name, 'no input')})"
            for f in self.features
            if inputs.get(f.name) not in _ONNX_TYPES_OF_KIND.get(f.kind, ())
        ]
        extra = sorted(set(inputs) - {f.name for f in self.features})
        problems = wrong + ([f"graph input(s) {extra} are no feature"] if extra else [])
        if problems:
            raise CompileError(f"ONNX inputs do not fit the features: {'; '.join(problems)}")
        # Per feature: its name and the dtype it is fed as (None for strings), as the graph declares it.
        self._inputs: tuple[tuple[str, type[np.floating[Any]] | None], ...] = tuple(
            (f.name, None if f.kind in _STRING_KINDS else _NUMPY_TYPE[inputs[f.name]]) for f in self.features
        )
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())
        if output == "score":
            if "probabilities" not in self.output_names:
                raise CompileError(f"output 'score' needs a 'probabilities' output; the graph has {self.output_names}")
            self._fetch = ["probabilities"]
        else:
            self._fetch = [self.output_names[0]]

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], expected_sha256: str, features: Sequence[Feature], output: Output
    ) -> OnnxScorer:
        """Load an ONNX file after checking its SHA-256 against the one recorded at registration.

        Args:
            path: The ``model.onnx`` downloaded with the model version.
            expected_sha256: The version's ``ctpipe.onnx_sha256`` tag.
            features: The model's input columns (``model_input.features_of``).
            output: ``"score"`` or ``"prediction"``, as for ``serving.versions.LoadedVersion``.

        Raises:
            OnnxIntegrityError: The file's SHA-256 is not ``expected_sha256`` (both are named).
            CompileError: onnxruntime cannot load it, or it does not fit the features.
        """
        data = Path(path).read_bytes()
        actual = sha256_of(data)
        if actual != expected_sha256:
            raise OnnxIntegrityError(
                f"{path}: SHA-256 {actual} does not match the recorded {expected_sha256}; refusing to load it"
            )
        return cls(data, features, output)

    def _feeds(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        rows = -1
        for name, dtype in self._inputs:
            values = columns[name]
            if dtype is None:
                if isinstance(values, np.ndarray) and values.dtype.kind == "U":
                    array = values
                else:
                    array = np.array([v if type(v) is str else _category(v) for v in values], dtype=object)
            else:
                array = np.asarray(values, dtype=dtype)
            if array.ndim != 1 or (rows >= 0 and len(array) != rows):
                raise ValueError(f"column {name!r}: expected one value per row ({rows}), got shape {array.shape}")
            rows = len(array)
            feeds[name] = array.reshape(-1, 1)
        return feeds

    def outputs(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Every output of the graph for the rows in ``columns``, as onnxruntime returns them.

        Args:
            columns: One 1-D sequence per feature (a DataFrame works too).

        Returns:
            Output name -> array: ``label`` and ``probabilities`` for classifiers, ``variable`` for regressors.
        """
        values = self._session.run(None, self._feeds(columns))
        return dict(zip(self.output_names, values, strict=True))

    def score_columns(self, columns: Mapping[str, Sequence[Any] | np.ndarray]) -> np.ndarray:
        """Score rows given column-wise: the model server's fast path.

        Args:
            columns: Feature name -> one 1-D sequence of values per feature, all of the same length.
                Numbers may be NaN (or None); a missing string is None or NaN.

        Returns:
            As ``LoadedVersion.score``: float64 positive-class probabilities for a binary classifier,
            the float64 probability matrix for more classes, float64 predictions for a regressor
            (labels as onnxruntime returns them for a classifier without probabilities).

        Raises:
            KeyError: A feature is missing from ``columns``.
            ValueError: A column is not 1-D or columns differ in length.
        """
        result = self._session.run(self._fetch, self._feeds(columns))[0]
        if self.output == "score":
            return result[:, 1].astype(np.float64) if result.shape[1] == 2 else result.astype(np.float64)
        result = result.reshape(-1) if result.ndim == 2 and result.shape[1] == 1 else result
        return result.astype(np.float64) if result.dtype.kind == "f" else result

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """:meth:`score_columns` for the feature columns of ``frame``.

        Raises:
            DataError: ``frame`` lacks a feature column.
        """
        names = [name for name, _ in self._inputs]
        require_columns(frame, names, "data")
        return self.score_columns({name: frame[name].to_numpy() for name in names})


# ---------------------------------------------------------------------------------------------
# Parity


@dataclass(frozen=True)
class ParityResult:
    """Whether the ONNX model answers like the sklearn model on every row compared, with the figures."""

    passed: bool
    rows: int
    max_abs_diff: float
    max_rel_diff: float
    label_mismatches: int
    reason: str


def _differences(expected: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute and relative (to ``max(1, |expected|)``) differences; a NaN on one side only is infinite."""
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    absolute = np.abs(actual - expected)
    both_nan = np.isnan(actual) & np.isnan(expected)
    absolute = np.where(both_nan, 0.0, np.where(np.isnan(absolute), np.inf, absolute))
    return absolute, absolute / np.maximum(1.0, np.abs(np.nan_to_num(expected)))


def _worst(values: np.ndarray) -> float:
    return float(values.max()) if values.size else 0.0


def check_parity(sk_model: Any, scorer: OnnxScorer, frame: pd.DataFrame, output: Output) -> ParityResult:
    """Compare the ONNX model with the sklearn model on every row of ``frame``.

    The rule, with ``tol`` = :data:`PARITY_TOLERANCE` (1e-5):

    - classifier (``output="score"``): every probability column within ``tol`` absolute, and the
      same predicted label on every row;
    - regressor: ``|onnx - sklearn| <= tol * max(1, |sklearn|)`` on every row, i.e. relative for
      values above 1 in magnitude and absolute below (a relative bound alone would demand exact
      equality at zero);
    - a classifier without probabilities (``output="prediction"``): the same label on every row.

    Args:
        sk_model: The fitted sklearn model.
        scorer: The compiled model.
        frame: The evaluation rows' features as the model sees them (``model_input.prepare_features``),
            missing values included.
        output: ``"score"`` or ``"prediction"``.

    Returns:
        The verdict; ``reason`` says it in one line with the figures. No rows, or onnxruntime
        failing on them, is a failed parity, not an exception.
    """
    rows = len(frame)
    if rows == 0:
        return ParityResult(False, 0, math.inf, math.inf, 0, "failed: no evaluation rows to compare")
    try:
        onnx = scorer.outputs(frame)
    except Exception as exc:  # whatever onnxruntime says, the sklearn model serves
        return ParityResult(False, rows, math.inf, math.inf, 0, f"failed: onnxruntime cannot score the rows: {exc}")
    tolerance = f"(tolerance {PARITY_TOLERANCE:.0e})"
    if output == "score":
        expected = np.asarray(sk_model.predict_proba(frame))
        actual = onnx.get("probabilities")
        labels_expected = np.asarray(sk_model.predict(frame))
        labels_actual = onnx.get("label")
        if actual is None or labels_actual is None or actual.shape != expected.shape:
            shape = None if actual is None else actual.shape
            return ParityResult(
                False, rows, math.inf, math.inf, 0, f"failed: ONNX probabilities {shape} vs sklearn {expected.shape}"
            )
        absolute, relative = _differences(expected, actual)
        mismatches = int((labels_actual.reshape(-1) != labels_expected.reshape(-1)).sum())
        max_abs, max_rel = _worst(absolute), _worst(relative)
        passed = max_abs <= PARITY_TOLERANCE and mismatches == 0
        labels = "labels equal" if mismatches == 0 else f"{mismatches} of {rows} labels differ"
        reason = f"max |Δ probability| {max_abs:.1e} over {rows} rows, {labels}"
        return ParityResult(
            passed,
            rows,
            max_abs,
            max_rel,
            mismatches,
            f"passed: {reason}" if passed else f"failed: {reason} {tolerance}",
        )
    expected = np.asarray(sk_model.predict(frame))
    actual = onnx[scorer.output_names[0]].reshape(-1)
    if expected.dtype.kind in "fc":
        absolute, relative = _differences(expected.reshape(-1), actual)
        max_abs, max_rel = _worst(absolute), _worst(relative)
        passed = max_rel <= PARITY_TOLERANCE
        reason = f"max |Δ| {max_abs:.1e}, relative to max(1, |value|) {max_rel:.1e} over {rows} rows"
        return ParityResult(
            passed, rows, max_abs, max_rel, 0, f"passed: {reason}" if passed else f"failed: {reason} {tolerance}"
        )
    mismatches = int((actual != expected.reshape(-1)).sum())
    passed = mismatches == 0
    reason = f"{mismatches} of {rows} labels differ" if mismatches else f"labels equal over {rows} rows"
    return ParityResult(passed, rows, 0.0, 0.0, mismatches, f"{'passed' if passed else 'failed'}: {reason}")
