"""The demo's model (ctpipe.yaml) on the demo's data compiles to ONNX that answers like scikit-learn on every row.

The model server serves a version through ONNX only when infra validation proves parity; the demo
model must pass it on every demo window. It did not in float32: this is the case that failed,
so the test uses ``pipelines.demo_data`` on purpose (the unit tests use their own data).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from components.common.compiled_model import OnnxScorer, check_parity, compile_onnx
from components.common.model_input import prepare_features
from components.specs import DatasetSpec
from components.train import build_pipeline, split_by_time
from pipelines import demo_data
from pipelines.config import load_config
from pipelines.windows import Window
from tests.helpers import ROOT, onnx_precision, spec_features

pytestmark = pytest.mark.usefixtures("one_openmp_thread")


@pytest.fixture(scope="module")
def demo_windows(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, list[Window], DatasetSpec]:
    path = tmp_path_factory.mktemp("demo") / "churn.parquet"
    windows = demo_data.generate(path, windows=4, rows_per_window=5000, seed=7)
    spec = DatasetSpec(
        source=str(path),
        entity_column=demo_data.ENTITY,
        timestamp_column=demo_data.TIMESTAMP,
        label_column=demo_data.LABEL,
        numeric_features=list(demo_data.NUMERIC_FEATURES),
        categorical_features=list(demo_data.CATEGORICAL_FEATURES),
    )
    return pd.read_parquet(path), windows, spec


def _float32_ambiguous_rows(model: Pipeline, x_eval: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(feature, threshold, value) for evaluation values above a split threshold that float32 rounds alike."""
    estimator = model.named_steps["estimator"]
    names = list(model.named_steps["preprocess"].get_feature_names_out())
    transformed = model.named_steps["preprocess"].transform(x_eval)
    found = set()
    for iteration in estimator._predictors:
        for node in iteration[0].nodes[~iteration[0].nodes["is_leaf"].astype(bool)]:
            column, threshold = transformed[:, node["feature_idx"]], float(node["num_threshold"])
            flipped = (column > threshold) & (column.astype(np.float32) <= np.float32(threshold))
            found |= {(names[node["feature_idx"]], threshold, float(v)) for v in column[flipped]}
    return sorted(found)


@pytest.mark.parametrize("window", [1, 2, 3, 4])
def test_the_demo_model_passes_parity_on_every_demo_window(
    demo_windows: tuple[pd.DataFrame, list[Window], DatasetSpec], window: int
) -> None:
    """Trained on one window as train does (the newest 25% held out): parity within 1e-6 on every row.

    In float32, windows 1 and 3 failed: one evaluation row each lies one float64 step above a
    split threshold (61.514 vs 61.513999999999996 in ``marketing_score``, 8.72 vs 8.719999999999999
    in ``avg_session_minutes``), the same value in float32, and its probability moved by ~0.02.
    """
    frame, windows, spec = demo_windows
    bounds = windows[window - 1]
    rows = frame[(frame[spec.timestamp_column] >= bounds.start) & (frame[spec.timestamp_column] < bounds.end)]
    train, evaluation = split_by_time(rows, spec, 0.25)
    model = build_pipeline(spec, load_config(ROOT / "ctpipe.yaml").model).fit(
        prepare_features(train, spec), train[spec.label_column]
    )
    x_eval = prepare_features(evaluation, spec)
    ambiguous = _float32_ambiguous_rows(model, x_eval)
    expected = {
        1: [("marketing_score", np.nextafter(61.514, -np.inf), 61.514)],
        3: [("avg_session_minutes", np.nextafter(8.72, -np.inf), 8.72)],
    }
    assert ambiguous == expected.get(window, [])

    data = compile_onnx(model, spec_features(spec))
    assert onnx_precision(data) == "float64"
    parity = check_parity(model, OnnxScorer(data, spec_features(spec), "score"), x_eval, "score")
    assert parity.passed, parity.reason
    assert parity.rows == 1250 and parity.max_abs_diff <= 1e-6
