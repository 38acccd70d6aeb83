"""The float64 repair of skl2onnx's graph: the compiled model computes what scikit-learn computes.

Float64: skl2onnx converts a pipeline with ``double`` inputs, but some of the graph it writes
onnxruntime refuses, rounds to float32, or fills with float32-rounded constants.
:func:`make_float64_exact` repairs exactly these, from the fitted model's own float64 values,
each checked against the float32 value skl2onnx wrote:

- ``ai.onnx.ml.Imputer`` (no double kernel in onnxruntime) becomes ``IsNaN`` (or ``Equal``) +
  ``Where`` with the fitted ``SimpleImputer``'s exact ``statistics_``;
- ``ai.onnx.ml.FeatureVectorizer`` (float output) of double columns becomes ``Concat``;
- ``HistGradientBoosting*`` (scikit-learn compares the float64 value with a float64 threshold and
  sums float64 leaf values): exact thresholds, leaf values and baseline as double tensors
  (``*_as_tensor``, ai.onnx.ml opset 3);
- ``DecisionTree*``, ``ExtraTree*``, ``RandomForest*``, ``ExtraTrees*``, ``GradientBoosting*``
  (scikit-learn casts X to float32, compares it with a float64 threshold and sums float64
  leaf values): X goes through ``Cast`` to float32 and back, and the thresholds, leaf weights
  and base values are the exact float64 ones, as double tensors;
- onnxruntime's tree ensembles output float32 whatever they compute in: their scores are
  declared float and cast to double where skl2onnx's graph goes on in double. Probabilities and
  tree predictions are therefore float32-rounded at the very end (about 1e-7 relative).

A graph onnxruntime does not load in double, a tree ensemble that is not one of the above, or a
value that does not map makes the model fall back to skl2onnx's ``float32`` compile, whose
parity then decides whether it serves. ``ctpipe.precision`` records which, and why.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


def model_parts(model: Any) -> Iterator[Any]:
    """``model`` and every transformer nested in it through Pipelines, ColumnTransformers and FeatureUnions."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import FeatureUnion, Pipeline

    yield model
    if isinstance(model, Pipeline):
        children = [step for _, step in model.steps]
    elif isinstance(model, ColumnTransformer):
        children = [transformer for _, transformer, _ in getattr(model, "transformers_", model.transformers)]
    elif isinstance(model, FeatureUnion):
        children = [transformer for _, transformer in model.transformer_list]
    else:
        children = []
    for child in children:
        if not isinstance(child, str):  # "drop" / "passthrough"
            yield from model_parts(child)


def is_missing_marker(value: Any) -> bool:
    """Whether a ``missing_values`` setting means NaN (None, pd.NA and NaN all do)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


_ML = "ai.onnx.ml"
_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_HIST_GRADIENT_BOOSTING = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")
_SKLEARN_TREES = (
    "DecisionTreeClassifier",
    "DecisionTreeRegressor",
    "ExtraTreeClassifier",
    "ExtraTreeRegressor",
    "RandomForestClassifier",
    "RandomForestRegressor",
    "ExtraTreesClassifier",
    "ExtraTreesRegressor",
    "GradientBoostingClassifier",
    "GradientBoostingRegressor",
)


_FLOAT, _DOUBLE = 1, 11  # onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
#: ai.onnx.ml operators that accept double but whose output is float (onnxruntime computes in float32).
_FLOAT32_INSIDE = (
    "FeatureVectorizer",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "Scaler",
    "SVMClassifier",
    "SVMRegressor",
    *_TREE_OPS,
)


class NoFloat64(Exception):
    """The double graph cannot be made to compute like the model; the reason is the message."""


def make_float64_exact(graph: Any, model: Any) -> str:
    """Repair skl2onnx's graph with ``double`` inputs in place so onnxruntime runs it like scikit-learn.

    Only what is listed in the module docstring is changed; every replaced constant is checked
    against the value skl2onnx wrote (its float32 rounding) before it is used.

    Returns:
        The graph's precision for ``ctpipe.precision``: ``float64``, or ``float64, except ...``
        naming the ai.onnx.ml operators left that take double but compute in float32 in
        onnxruntime (``SVMClassifier``, ``Scaler``...; nothing ``train`` builds uses them).

    Raises:
        NoFloat64: A node cannot be mapped to the fitted model's values exactly.
    """
    _replace_imputers(graph, model)
    _replace_feature_vectorizers(graph)
    _exact_trees(graph, model)
    types = _tensor_types(graph)
    rounding = sorted(
        {
            n.op_type
            for n in graph.graph.node
            if n.domain == _ML
            and n.op_type in _FLOAT32_INSIDE
            and any(types.get(i) == _DOUBLE for i in n.input)
            and not any(a.name == "nodes_values_as_tensor" for a in n.attribute)
        }
    )
    return f"float64, except {', '.join(rounding)} (float32 in onnxruntime)" if rounding else "float64"


def _exact_trees(graph: Any, model: Any) -> None:
    """Exact values for the model's tree ensemble node fed double, if there is one (module docstring)."""
    types = _tensor_types(graph)
    trees = [i for i, n in enumerate(graph.graph.node) if n.domain == _ML and n.op_type in _TREE_OPS]
    inputs = {types.get(graph.graph.node[i].input[0]) for i in trees}
    if inputs <= {_FLOAT}:  # none, or fed float32 by skl2onnx itself
        return
    if not inputs <= {_FLOAT, _DOUBLE}:
        raise NoFloat64("type inference cannot tell what a tree ensemble node is fed")
    estimator = _final_estimator(model)
    kind = type(estimator).__name__
    if len(trees) != 1 or kind not in (*_HIST_GRADIENT_BOOSTING, *_SKLEARN_TREES):
        raise NoFloat64(f"{kind} with {len(trees)} tree ensemble node(s): no exact mapping")
    if kind in _HIST_GRADIENT_BOOSTING:
        _exact_hist_gradient_boosting(graph.graph.node[trees[0]], estimator)
    else:
        _exact_sklearn_trees(graph, trees[0], estimator)
    for opset in graph.opset_import:
        if opset.domain == _ML:
            opset.version = max(opset.version, 3)  # the first with *_as_tensor attributes
    _tree_outputs_as_produced(graph)


def _final_estimator(model: Any) -> Any:
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        model = model.steps[-1][1]
    return model


def _tensor_types(graph: Any) -> dict[str, int]:
    """Element type of every tensor ONNX type inference can tell: inputs, initializers, node outputs."""
    return _inferred(graph)[0]


def _inferred(graph: Any) -> tuple[dict[str, int], dict[str, tuple[int | None, ...]]]:
    """Element type and shape (``None`` for an unknown dimension) of every tensor ONNX inference can tell."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(graph)
    types = {t.name: t.data_type for t in graph.graph.initializer}
    shapes: dict[str, tuple[int | None, ...]] = {t.name: tuple(t.dims) for t in graph.graph.initializer}
    for value in (*inferred.graph.input, *inferred.graph.value_info):
        tensor = value.type.tensor_type if value.type.HasField("tensor_type") else None
        if tensor is None or not tensor.elem_type:
            continue
        types[value.name] = tensor.elem_type
        if tensor.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return types, shapes


def _replace_feature_vectorizers(graph: Any) -> None:
    """Replace an ``ai.onnx.ml.FeatureVectorizer`` of double ``[N, d]`` inputs by ``Concat``.

    skl2onnx joins the inputs of a model without a ColumnTransformer with it; its output is float,
    so it would round every input to float32. With each input exactly as wide as its
    ``inputdimensions`` entry, it is a concatenation along the last axis.
    """
    from onnx import helper

    types, shapes = _inferred(graph)
    for index in reversed(range(len(graph.graph.node))):
        node = graph.graph.node[index]
        if node.domain != _ML or node.op_type != "FeatureVectorizer":
            continue
        widths = list(_attributes(node).get("inputdimensions", []))
        fits = len(widths) == len(node.input) and all(
            types.get(name) == _DOUBLE and len(shapes.get(name, ())) == 2 and shapes[name][1] == width
            for name, width in zip(node.input, widths, strict=True)
        )
        if fits:
            concat = helper.make_node("Concat", list(node.input), [node.output[0]], name=node.name, axis=-1)
            _replace_nodes(graph, index, [concat])


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unique_name(graph: Any, base: str) -> str:
    used = {t.name for t in graph.graph.initializer} | {i.name for i in graph.graph.input}
    used |= {name for n in graph.graph.node for name in (*n.input, *n.output, n.name)}
    index = 0
    while f"{base}_ctpipe{index}" in used:
        index += 1
    return f"{base}_ctpipe{index}"


def _replace_nodes(graph: Any, index: int, replacement: Sequence[Any]) -> None:
    """Put ``replacement`` (in order) where node ``index`` is; the node list stays topologically sorted.

    Node messages taken from the graph before this call are detached copies afterwards.
    """
    nodes = list(graph.graph.node)
    del graph.graph.node[:]
    graph.graph.node.extend([*nodes[:index], *replacement, *nodes[index + 1 :]])


def _same32(exact: np.ndarray, written: Sequence[float]) -> bool:
    """Whether ``written`` (what skl2onnx stored as float32) is ``exact`` rounded to float32, NaN included."""
    written_array = np.asarray(written, dtype=np.float32)
    return written_array.shape == exact.shape and bool(
        np.array_equal(exact.astype(np.float32), written_array, equal_nan=True)
    )


def _replace_imputers(graph: Any, model: Any) -> None:
    """Replace every ``ai.onnx.ml.Imputer`` on a double tensor by ``IsNaN``/``Equal`` + ``Where``.

    ``Imputer`` has no double kernel in onnxruntime, and skl2onnx stores the imputed values as
    float32. The replacement uses the float64 ``statistics_`` of the one fitted numeric
    ``SimpleImputer`` they round from (several imputers that round alike but differ: no mapping).
    ``Where`` broadcasts the ``[k]`` (or ``[1]``) constant over the ``[N, k]`` input as Imputer does.
    Types are inferred again after each round, since an imputer may feed another.
    """
    from onnx import helper, numpy_helper
    from sklearn.impute import SimpleImputer

    imputers = [
        part
        for part in model_parts(model)
        if isinstance(part, SimpleImputer)
        and getattr(getattr(part, "statistics_", None), "dtype", None) is not None
        and part.statistics_.dtype.kind == "f"
    ]
    while True:
        types = _tensor_types(graph)
        todo = [
            i
            for i, n in enumerate(graph.graph.node)
            if n.domain == _ML and n.op_type == "Imputer" and types.get(n.input[0]) == _DOUBLE
        ]
        if not todo:
            return
        for index in reversed(todo):  # from the end: replacing a node moves the ones after it
            node = graph.graph.node[index]
            attributes = _attributes(node)
            if "imputed_value_floats" not in attributes:
                raise NoFloat64(f"Imputer {node.name!r} on double input has no float imputed values")
            written = list(attributes["imputed_value_floats"])
            replaced = float(attributes.get("replaced_value_float", 0.0))
            candidates = {
                tuple(imputer.statistics_.tolist())
                for imputer in imputers
                if _same32(np.asarray(imputer.statistics_, dtype=np.float64), written)
                and _same32(np.asarray([_missing_number(imputer.missing_values)]), [replaced])
            }
            if len(candidates) != 1:
                raise NoFloat64(
                    f"Imputer {node.name!r}: {len(candidates)} fitted SimpleImputer(s) match its values, need exactly 1"
                )
            statistics = np.asarray(candidates.pop(), dtype=np.float64)
            values = _unique_name(graph, "imputed_values")
            mask = _unique_name(graph, "missing")
            graph.graph.initializer.append(numpy_helper.from_array(statistics, values))
            if math.isnan(replaced):
                test = helper.make_node("IsNaN", [node.input[0]], [mask], name=mask)
            else:
                marker = _unique_name(graph, "missing_value")
                graph.graph.initializer.append(numpy_helper.from_array(np.asarray(replaced, dtype=np.float64), marker))
                test = helper.make_node("Equal", [node.input[0], marker], [mask], name=mask)
            where = helper.make_node("Where", [mask, values, node.input[0]], [node.output[0]], name=node.name)
            _replace_nodes(graph, index, [test, where])


def _missing_number(value: Any) -> float:
    """A numeric ``SimpleImputer.missing_values`` as the float skl2onnx writes (NaN for None and pd.NA)."""
    return math.nan if is_missing_marker(value) else float(value)


def _tree_entries(
    attributes: Mapping[str, Any], classifier: bool
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A tree ensemble node's entries as skl2onnx wrote them.

    Returns:
        Its nodes ``(tree, node, mode, value, feature, true, false, missing)`` and its leaf
        weights ``(tree, node, target, weight)``.
    """
    count = len(attributes["nodes_treeids"])
    nodes = list(
        zip(
            attributes["nodes_treeids"],
            attributes["nodes_nodeids"],
            attributes["nodes_modes"],
            attributes["nodes_values"],
            attributes["nodes_featureids"],
            attributes["nodes_truenodeids"],
            attributes["nodes_falsenodeids"],
            attributes.get("nodes_missing_value_tracks_true", [0] * count),
            strict=True,
        )
    )
    prefix = "class" if classifier else "target"
    weights = list(
        zip(
            attributes[f"{prefix}_treeids"],
            attributes[f"{prefix}_nodeids"],
            attributes[f"{prefix}_ids"],
            attributes[f"{prefix}_weights"],
            strict=True,
        )
    )
    return nodes, weights


def _exact_hist_gradient_boosting(node: Any, estimator: Any) -> None:
    """Exact float64 thresholds, leaf values and baseline for a HistGradientBoosting tree node.

    scikit-learn compares the float64 value with the float64 ``num_threshold`` and sums float64
    leaf values onto ``_baseline_prediction``. skl2onnx numbers the tree of iteration ``i`` and
    output ``k`` ``i * K + k`` and its nodes by their index in ``_predictors[i][k].nodes``; every
    split's feature, children, missing-value direction and float32 threshold, every leaf's
    float32 value and the float32 baseline must be what skl2onnx wrote.
    """
    classifier = node.op_type == "TreeEnsembleClassifier"
    nodes, leaves = _tree_entries(_attributes(node), classifier)
    per_iteration = int(estimator.n_trees_per_iteration_)
    predictors = estimator._predictors

    def record(tree_id: int, node_id: int) -> Any:
        iteration, output = divmod(tree_id, per_iteration)
        if iteration >= len(predictors) or node_id >= len(predictors[iteration][output].nodes):
            raise NoFloat64(f"tree {tree_id} node {node_id} is not in the HistGradientBoosting model")
        return predictors[iteration][output].nodes[node_id]

    thresholds = []
    for tree_id, node_id, mode, value, feature, true_id, false_id, missing in nodes:
        found = record(tree_id, node_id)
        if mode == b"LEAF" and found["is_leaf"]:
            thresholds.append(float(value))
            continue
        exact = float(found["num_threshold"])
        if (
            mode != b"BRANCH_LEQ"
            or found["is_leaf"]
            or found["is_categorical"]
            or (int(found["feature_idx"]), int(found["left"]), int(found["right"])) != (feature, true_id, false_id)
            or bool(found["missing_go_to_left"]) != bool(missing)
            or np.float32(exact) != np.float32(value)
        ):
            raise NoFloat64(f"tree {tree_id} node {node_id} does not match the fitted HistGradientBoosting")
        thresholds.append(exact)
    weights = []
    for tree_id, node_id, target, weight in leaves:
        found = record(tree_id, node_id)
        exact = float(found["value"])
        if not found["is_leaf"] or target != tree_id % per_iteration or np.float32(exact) != np.float32(weight):
            raise NoFloat64(f"leaf {node_id} of tree {tree_id} does not match the fitted HistGradientBoosting")
        weights.append(exact)
    _set_exact(node, thresholds, weights, np.asarray(estimator._baseline_prediction, dtype=np.float64).ravel())


@dataclass(frozen=True)
class _Tree:
    """The arrays of a fitted scikit-learn ``tree_`` (its properties copy them on every access)."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray

    @classmethod
    def of(cls, tree: Any) -> _Tree:
        return cls(tree.children_left, tree.children_right, tree.feature, tree.threshold, tree.value)


def _sklearn_trees(estimator: Any) -> tuple[list[_Tree], float, bool, int]:
    """A scikit-learn tree ensemble as skl2onnx converts it.

    Returns:
        The trees in skl2onnx's tree order, the weight of a tree, whether leaves hold class
        counts to normalise, and the number of trees per boosting iteration.
    """
    kind = type(estimator).__name__
    estimators = getattr(estimator, "estimators_", None)
    if estimators is None:  # a single tree
        return [_Tree.of(estimator.tree_)], 1.0, kind.endswith("Classifier"), 1
    grid = np.asarray(estimators, dtype=object)
    trees = [_Tree.of(tree.tree_) for tree in grid.ravel()]
    if kind.startswith("GradientBoosting"):
        return trees, float(estimator.learning_rate), False, grid.shape[1]
    return trees, 1.0 / len(trees), kind.endswith("Classifier"), 1


def _exact_sklearn_trees(graph: Any, index: int, estimator: Any) -> None:
    """Exact thresholds, leaf weights and base values for a scikit-learn ``tree_`` ensemble node.

    scikit-learn casts X to float32 and compares it with the float64 ``tree_.threshold``, then
    sums float64 leaf values: the node gets X through ``Cast`` to float32 and back to double, and
    the float64 values as double tensors. skl2onnx numbers trees like ``estimators_`` flattened row
    by row (a single tree is tree 0) and nodes by their index in ``tree_``; it weighs a leaf's
    value by the tree's weight (``1 / n_trees`` for forests, ``learning_rate`` for boosting), after
    normalising class counts for forests and trees, and keeps class 1 alone for a binary
    classifier. Every split's feature, children and float32 threshold (skl2onnx rounds it to
    nearest or down), every leaf weight recomputed so and the base values must match.
    """
    from onnx import TensorProto, helper

    node = graph.graph.node[index]
    classifier = node.op_type == "TreeEnsembleClassifier"
    nodes, leaves = _tree_entries(_attributes(node), classifier)
    trees, tree_weight, counts, per_iteration = _sklearn_trees(estimator)
    kind = type(estimator).__name__

    def tree_of(tree_id: int, node_id: int) -> _Tree:
        if tree_id >= len(trees) or node_id >= len(trees[tree_id].left):
            raise NoFloat64(f"tree {tree_id} node {node_id} is not in the {kind}")
        return trees[tree_id]

    thresholds = []
    for tree_id, node_id, mode, value, feature, true_id, false_id, _ in nodes:
        tree = tree_of(tree_id, node_id)
        left, right = int(tree.left[node_id]), int(tree.right[node_id])
        if mode == b"LEAF" and left == right == -1:
            thresholds.append(float(value))
            continue
        exact = float(tree.threshold[node_id])
        if (
            mode != b"BRANCH_LEQ"
            or (int(tree.feature[node_id]), left, right) != (feature, true_id, false_id)
            or np.float32(value) not in (np.float32(exact), _down32(exact))
        ):
            raise NoFloat64(f"tree {tree_id} node {node_id} does not match the fitted {kind}")
        thresholds.append(exact)
    weights = []
    for tree_id, node_id, target, weight in leaves:
        tree = tree_of(tree_id, node_id)
        values = [float(v) for v in np.asarray(tree.value[node_id], dtype=np.float64).ravel()]
        factor = tree_weight
        if counts:
            total = sum(values)
            factor /= total if total != 0.0 else 1.0
        values = [v * factor for v in values]
        if classifier and len(values) == 2:
            values = values[1:]
        offset = target - (tree_id % per_iteration if per_iteration > 1 else 0)
        if not 0 <= offset < len(values) or np.float32(values[offset]) != np.float32(weight):
            raise NoFloat64(f"leaf {node_id} of tree {tree_id} does not match the fitted {kind}")
        weights.append(values[offset])
    base = None
    if kind.startswith("GradientBoosting"):
        if estimator.init == "zero":
            base = np.zeros(per_iteration)
        else:
            base = np.asarray(estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_))), dtype=np.float64)
    _set_exact(node, thresholds, weights, base)
    as_float = _unique_name(graph, f"{node.input[0]}_float32")
    as_double = _unique_name(graph, f"{node.input[0]}_float32_as_double")
    casts = [
        helper.make_node("Cast", [node.input[0]], [as_float], name=as_float, to=TensorProto.FLOAT),
        helper.make_node("Cast", [as_float], [as_double], name=as_double, to=TensorProto.DOUBLE),
    ]
    node.input[0] = as_double
    _replace_nodes(graph, index, [*casts, node])


def _down32(value: float) -> np.float32:
    """The largest float32 ``<= value`` (what skl2onnx writes as a float32 threshold for scikit-learn trees)."""
    rounded = np.float32(value)
    return rounded if float(rounded) <= value else np.nextafter(rounded, np.float32(-np.inf))


def _set_exact(node: Any, thresholds: Sequence[float], weights: Sequence[float], base: np.ndarray | None) -> None:
    """Replace the node's float thresholds, leaf weights and base values by double ``*_as_tensor`` ones.

    Raises:
        NoFloat64: ``base`` does not round to the base values skl2onnx wrote (or one is missing).
    """
    from onnx import helper, numpy_helper

    attributes = _attributes(node)
    prefix = "class" if node.op_type == "TreeEnsembleClassifier" else "target"
    replace = {
        "nodes_values": np.asarray(thresholds, dtype=np.float64),
        f"{prefix}_weights": np.asarray(weights, dtype=np.float64),
    }
    if "base_values" in attributes or base is not None:
        if base is None or not _same32(base.ravel(), attributes.get("base_values", [])):
            raise NoFloat64("the tree node's base values are not the model's")
        replace["base_values"] = base.ravel()
    kept = [a for a in node.attribute if a.name not in replace]
    added = [
        helper.make_attribute(f"{name}_as_tensor", numpy_helper.from_array(values, f"{name}_as_tensor"))
        for name, values in replace.items()
    ]
    del node.attribute[:]
    node.attribute.extend([*kept, *added])


def _tree_outputs_as_produced(graph: Any) -> None:
    """Declare the tree node's scores float32 (what onnxruntime produces) and cast them back to double.

    skl2onnx declares them double in a double graph; the Cast keeps the rest of the graph (and
    the graph's outputs) as skl2onnx built it. An output declared float stays as it is.
    """
    from onnx import TensorProto, helper

    index = next(i for i, n in enumerate(graph.graph.node) if n.domain == _ML and n.op_type in _TREE_OPS)
    node = graph.graph.node[index]
    scores = node.output[1] if node.op_type == "TreeEnsembleClassifier" else node.output[0]
    declared = {v.name: v for v in (*graph.graph.output, *graph.graph.value_info)}
    if scores in declared and declared[scores].type.tensor_type.elem_type == _FLOAT:
        return
    produced = _unique_name(graph, f"{scores}_float32")
    node.output[list(node.output).index(scores)] = produced
    cast = helper.make_node("Cast", [produced], [scores], name=produced + "_to_double", to=TensorProto.DOUBLE)
    _replace_nodes(graph, index, [node, cast])
