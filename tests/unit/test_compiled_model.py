"""ONNX compilation and parity, with real skl2onnx and onnxruntime on pipelines built like train builds them."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier

from components.common.compiled_model import (
    MISSING_CATEGORY,
    PARITY_TOLERANCE,
    CompileError,
    OnnxIntegrityError,
    OnnxScorer,
    check_parity,
    compile_onnx,
    sha256_of,
)
from components.common.model_input import Feature, prepare_features
from components.specs import DatasetSpec, ModelSpec
from components.train import build_pipeline
from tests.data import churn_spec
from tests.helpers import float32_sensitive_model, onnx_precision, spec_features

# The demo's model (ctpipe.yaml).
DEMO_MODEL = ModelSpec(
    estimator="sklearn.ensemble.HistGradientBoostingClassifier",
    params={"max_iter": 150, "learning_rate": 0.08, "max_leaf_nodes": 15},
    random_seed=42,
)
TRAIN_ROWS = 1350  # of the 1800 generated rows; the newest 450 are the evaluation rows

pytestmark = pytest.mark.usefixtures("one_openmp_thread")


def _input_types(scorer: OnnxScorer) -> set[str]:
    return {i.type for i in scorer._session.get_inputs()}


def _with_missing(features: pd.DataFrame) -> pd.DataFrame:
    """Missing categories (NaN and None) and missing numbers, as evaluation rows have them."""
    features = features.copy()
    features.loc[features.index[::7], "plan"] = np.nan
    features.loc[features.index[3::11], "region"] = None
    features.loc[features.index[::13], "tenure_months"] = np.nan
    return prepare_features(features, churn_spec("unused.parquet"), list(features.columns))


def _split(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    x = prepare_features(frame, spec)
    x_train = _with_missing(x.iloc[:TRAIN_ROWS])
    return x_train, frame[spec.label_column].iloc[:TRAIN_ROWS], _with_missing(x.iloc[TRAIN_ROWS:])


@pytest.fixture(scope="module")
def binary(churn_frame: pd.DataFrame) -> tuple[DatasetSpec, Pipeline, pd.DataFrame]:
    spec = churn_spec("unused.parquet")
    x_train, y_train, x_eval = _split(churn_frame, spec)
    return spec, build_pipeline(spec, DEMO_MODEL).fit(x_train, y_train), x_eval


def test_binary_classifier_passes_parity_on_every_row(binary: tuple[DatasetSpec, Pipeline, pd.DataFrame]) -> None:
    spec, model, x_eval = binary
    assert x_eval["plan"].isna().any() and x_eval["region"].isna().any() and x_eval["tenure_months"].isna().any()
    data = compile_onnx(model, spec_features(spec))
    scorer = OnnxScorer(data, spec_features(spec), "score")
    assert onnx_precision(data) == "float64"
    assert _input_types(scorer) == {"tensor(double)", "tensor(string)"}
    parity = check_parity(model, scorer, x_eval, "score")
    assert parity.passed, parity.reason
    assert parity.rows == len(x_eval) == 450 and parity.label_mismatches == 0
    # Not 0: onnxruntime's tree ensembles return float32 probabilities.
    assert 0 < parity.max_abs_diff <= 1e-6
    assert parity.reason.startswith("passed: max |Δ probability|") and "over 450 rows, labels equal" in parity.reason
    # The fitted model is untouched: only the compiled copy looks for the sentinel.
    imputer = model.named_steps["preprocess"].named_transformers_["categorical"].named_steps["impute"]
    assert np.isnan(imputer.missing_values)

    expected = model.predict_proba(x_eval)[:, 1]
    scores = scorer.score_frame(x_eval)
    assert scores.dtype == np.float64 and scores.shape == (450,)
    np.testing.assert_allclose(scores, expected, atol=PARITY_TOLERANCE)
    # Column-wise lists, as the model server passes them: None and NaN are both a missing category.
    rows = x_eval.head(3)
    columns = {name: rows[name].tolist() for name in rows.columns}
    columns["plan"] = [None, float("nan"), "premium"]
    columns["tenure_months"] = [None, 12.0, float("nan")]
    as_frame = rows.assign(plan=[np.nan, np.nan, "premium"], tenure_months=[np.nan, 12.0, np.nan])
    np.testing.assert_allclose(
        scorer.score_columns(columns), model.predict_proba(as_frame)[:, 1], atol=PARITY_TOLERANCE
    )
    # A category spelled like the sentinel is what a missing one is.
    sentinel = scorer.score_columns({**columns, "plan": [MISSING_CATEGORY] * 3})
    np.testing.assert_array_equal(sentinel, scorer.score_columns({**columns, "plan": [None] * 3}))


def test_linear_classifier_with_scaling_passes_parity(churn_frame: pd.DataFrame) -> None:
    spec = churn_spec("unused.parquet")
    x_train, y_train, x_eval = _split(churn_frame, spec)
    model = build_pipeline(spec, ModelSpec(estimator="sklearn.linear_model.LogisticRegression")).fit(x_train, y_train)
    data = compile_onnx(model, spec_features(spec))
    scorer = OnnxScorer(data, spec_features(spec), "score")
    parity = check_parity(model, scorer, x_eval, "score")
    assert parity.passed, parity.reason
    # Imputer, scaler, coefficients and sigmoid all in float64.
    assert onnx_precision(data) == "float64" and parity.max_abs_diff <= 1e-12


@pytest.mark.parametrize(
    "estimator",
    [
        "sklearn.ensemble.HistGradientBoostingRegressor",
        "sklearn.linear_model.Ridge",
        # Sums float64 leaf values onto a large base value: float32 misses the bound by 10x (1.3e-4).
        "sklearn.ensemble.GradientBoostingRegressor",
    ],
)
def test_regressors_pass_parity(churn_frame: pd.DataFrame, estimator: str) -> None:
    base = churn_spec("unused.parquet")
    spec = base.model_copy(
        update={
            "task": "regression",
            "label_column": "monthly_charges",
            "numeric_features": [c for c in base.numeric_features if c != "monthly_charges"],
        }
    )
    x_train, y_train, x_eval = _split(churn_frame, spec)
    model = build_pipeline(spec, ModelSpec(estimator=estimator)).fit(x_train, y_train)
    data = compile_onnx(model, spec_features(spec))
    assert onnx_precision(data) == "float64"
    scorer = OnnxScorer(data, spec_features(spec), "prediction")
    parity = check_parity(model, scorer, x_eval, "prediction")
    assert parity.passed, parity.reason
    # float32 tree outputs: about one float32 step of the value.
    assert parity.label_mismatches == 0 and parity.max_rel_diff <= 1e-6
    assert "relative to max(1, |value|)" in parity.reason
    predictions = scorer.score_frame(x_eval)
    assert predictions.dtype == np.float64 and predictions.shape == (len(x_eval),)
    np.testing.assert_allclose(predictions, model.predict(x_eval), rtol=PARITY_TOLERANCE, atol=PARITY_TOLERANCE)


def test_multiclass_scores_are_the_probability_matrix(churn_frame: pd.DataFrame) -> None:
    base = churn_spec("unused.parquet")
    spec = base.model_copy(update={"label_column": "region", "categorical_features": ["plan"]})
    x = prepare_features(churn_frame, spec)
    model = build_pipeline(spec, ModelSpec(estimator="sklearn.linear_model.LogisticRegression")).fit(
        x, churn_frame["region"]
    )
    scorer = OnnxScorer(compile_onnx(model, spec_features(spec)), spec_features(spec), "score")
    scores = scorer.score_frame(x.head(5))
    assert scores.shape == (5, 4) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, model.predict_proba(x.head(5)), atol=PARITY_TOLERANCE)
    assert check_parity(model, scorer, x, "score").passed


def test_a_model_that_float32_changes_fails_parity() -> None:
    model, frame, features = float32_sensitive_model()
    assert (model.predict(frame) == (np.arange(200) >= 100)).all()  # sklearn separates the rows
    data = compile_onnx(model, features)
    assert onnx_precision(data).startswith("float32: onnxruntime cannot load the ONNX model: ")
    scorer = OnnxScorer(data, features, "score")
    assert _input_types(scorer) == {"tensor(float)"}  # and the scorer feeds float32
    parity = check_parity(model, scorer, frame, "score")
    assert not parity.passed
    assert parity.rows == 200 and parity.label_mismatches == 100 and parity.max_abs_diff == pytest.approx(1.0)
    assert parity.reason == (
        "failed: max |Δ probability| 1.0e+00 over 200 rows, 100 of 200 labels differ (tolerance 1e-05)"
    )


def test_trees_see_float32_inputs_as_sklearn_does() -> None:
    """scikit-learn's trees cast X to float32 (after float64 scaling): the compiled tree does too, exactly.

    Without ``PolynomialFeatures`` the model above compiles in float64: the scaler spreads the
    values in float64 and the tree compares their float32 values with its float64 threshold.
    """
    frame = pd.DataFrame({"x": 1.0 + np.arange(200) * 1e-10})
    label = (np.arange(200) >= 100).astype(int)
    model = Pipeline(
        [
            ("preprocess", ColumnTransformer([("numeric", StandardScaler(), ["x"])])),
            ("estimator", DecisionTreeClassifier(max_depth=1, random_state=0)),
        ]
    ).fit(frame, label)
    features = [Feature("x", "number")]
    data = compile_onnx(model, features)
    assert onnx_precision(data) == "float64"
    parity = check_parity(model, OnnxScorer(data, features, "score"), frame, "score")
    assert parity.passed and parity.max_abs_diff == 0.0, parity.reason


def test_a_threshold_one_float64_step_below_a_value_decides_as_in_sklearn() -> None:
    """The demo's failure in small: gradient boosting splits 61.513 from 61.515 at their midpoint,
    61.513999999999996, one float64 step below 61.514. scikit-learn sends 61.514 right; in float32
    both are 61.514 and the row goes left. The float64 graph has the exact threshold."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    x = np.where(np.arange(100) < 50, 61.513, 61.515)
    model = Pipeline(
        [
            ("preprocess", ColumnTransformer([("numeric", SimpleImputer(strategy="median"), ["score"])])),
            ("estimator", HistGradientBoostingClassifier(max_iter=5, min_samples_leaf=5)),
        ]
    ).fit(pd.DataFrame({"score": x}), (np.arange(100) >= 50).astype(int))
    thresholds = {
        float(node["num_threshold"])
        for predictor in model.named_steps["estimator"]._predictors
        for node in predictor[0].nodes
        if not node["is_leaf"]
    }
    assert thresholds == {np.nextafter(61.514, -np.inf)} and np.float32(61.514) == np.float32(min(thresholds))
    rows = pd.DataFrame({"score": [61.513, 61.514, 61.515, np.nan]})
    assert list(model.predict(rows)) == [0, 1, 1, 0]
    features = [Feature("score", "number")]

    # What skl2onnx's float32 graph answers: 61.514 takes the other branch.
    as_float32 = to_onnx(model, initial_types=[("score", FloatTensorType([None, 1]))], options={"zipmap": False})
    parity32 = check_parity(model, OnnxScorer(as_float32.SerializeToString(), features, "score"), rows, "score")
    assert not parity32.passed and parity32.label_mismatches == 1

    data = compile_onnx(model, features)
    assert onnx_precision(data) == "float64"
    parity = check_parity(model, OnnxScorer(data, features, "score"), rows, "score")
    assert parity.passed and parity.max_abs_diff <= 1e-6, parity.reason


def test_an_imputer_fills_in_its_float64_value() -> None:
    """A numeric SimpleImputer becomes IsNaN/Equal + Where with its exact (not float32-rounded) statistics."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.normal(1000.0, 50.0, 60), "b": rng.normal(0.1, 0.01, 60)})
    target = 3.0 * frame["a"] - 7000.0 * frame["b"]
    for missing, marker in ((np.nan, np.nan), (-1.0, -1.0)):
        model = Pipeline(
            [("impute", SimpleImputer(missing_values=missing, strategy="mean")), ("estimator", LinearRegression())]
        ).fit(frame, target)
        statistics = model.named_steps["impute"].statistics_
        assert (statistics.astype(np.float32).astype(np.float64) != statistics).all()  # float32 would round them
        features = [Feature("a", "number"), Feature("b", "number")]
        data = compile_onnx(model, features)
        assert onnx_precision(data) == "float64"
        rows = pd.DataFrame({"a": [marker, 990.0, marker], "b": [0.09, marker, marker]})
        scores = OnnxScorer(data, features, "prediction").score_frame(rows)
        np.testing.assert_allclose(scores, model.predict(rows), rtol=1e-13)


def test_models_onnx_cannot_express_are_refused_with_the_reason() -> None:
    frame = pd.DataFrame({"a": np.arange(20.0), "flag": [True, False] * 10})
    label = (frame["a"] > 9).astype(int)
    model = Pipeline([("log", FunctionTransformer(np.log1p)), ("estimator", LogisticRegression())])
    model.fit(frame[["a"]], label)
    with pytest.raises(CompileError, match=r"skl2onnx cannot compile Pipeline: RuntimeError: FunctionTransformer"):
        compile_onnx(model, [Feature("a", "number")])
    with pytest.raises(CompileError, match=r"'flag' is boolean; .*number, integer and string"):
        compile_onnx(model, [Feature("a", "number"), Feature("flag", "boolean")])
    with pytest.raises(CompileError, match="'a' is any"):
        compile_onnx(model, [Feature("a", "any")])


def test_an_onnx_file_that_does_not_match_its_recorded_hash_is_refused(
    binary: tuple[DatasetSpec, Pipeline, pd.DataFrame], tmp_path: Path
) -> None:
    spec, model, x_eval = binary
    features = spec_features(spec)
    data = compile_onnx(model, features)
    recorded = sha256_of(data)
    assert recorded == hashlib.sha256(data).hexdigest()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    scorer = OnnxScorer.from_file(path, recorded, features, "score")
    assert scorer.sha256 == recorded
    np.testing.assert_allclose(scorer.score_frame(x_eval), model.predict_proba(x_eval)[:, 1], atol=PARITY_TOLERANCE)

    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0xFF
    path.write_bytes(bytes(tampered))
    actual = hashlib.sha256(bytes(tampered)).hexdigest()
    with pytest.raises(OnnxIntegrityError, match=rf"SHA-256 {actual} does not match the recorded {recorded}"):
        OnnxScorer.from_file(path, recorded, features, "score")
    with pytest.raises(OnnxIntegrityError, match=rf"{actual}.*{recorded}"):
        OnnxScorer(bytes(tampered), features, "score", expected_sha256=recorded)


def test_scorer_refuses_features_the_graph_does_not_take(binary: tuple[DatasetSpec, Pipeline, pd.DataFrame]) -> None:
    spec, model, _ = binary
    data = compile_onnx(model, spec_features(spec))
    wrong = [Feature(f.name, "string" if f.name == "tenure_months" else f.kind) for f in spec_features(spec)]
    with pytest.raises(CompileError, match="tenure_months"):
        OnnxScorer(data, wrong, "score")
    with pytest.raises(CompileError, match="onnxruntime cannot load"):
        OnnxScorer(b"not an onnx model", spec_features(spec), "score")


def test_no_rows_or_unscorable_rows_fail_parity(binary: tuple[DatasetSpec, Pipeline, pd.DataFrame]) -> None:
    spec, model, x_eval = binary
    scorer = OnnxScorer(compile_onnx(model, spec_features(spec)), spec_features(spec), "score")
    assert check_parity(model, scorer, x_eval.head(0), "score").reason == "failed: no evaluation rows to compare"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        broken = x_eval.assign(tenure_months="not a number")
    result = check_parity(model, scorer, broken, "score")
    assert not result.passed and result.reason.startswith("failed: onnxruntime cannot score the rows")
