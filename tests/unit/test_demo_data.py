import numpy as np
import pandas as pd

from components.common.io import file_sha256
from pipelines.demo_data import CATEGORICAL_FEATURES, NUMERIC_FEATURES, DriftSpec, generate
from pipelines.windows import load_windows


def test_generate_is_deterministic_and_windowed(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    windows = generate(a, windows=3, rows_per_window=200, seed=1)
    generate(b, windows=3, rows_per_window=200, seed=1)
    assert file_sha256(a) == file_sha256(b)
    assert [w.window for w in load_windows(a)] == [1, 2, 3]
    frame = pd.read_parquet(a)
    assert len(frame) == 600
    assert set(NUMERIC_FEATURES + CATEGORICAL_FEATURES) <= set(frame.columns)
    for window in windows:
        inside = frame[(frame.event_timestamp >= window.start) & (frame.event_timestamp < window.end)]
        assert len(inside) == window.rows
        assert inside.customer_id.is_unique


def test_drift_moves_features_and_concept(tmp_path):
    path = tmp_path / "d.parquet"
    windows = generate(path, windows=2, rows_per_window=4000, seed=2, drift=DriftSpec(start_window=2))
    frame = pd.read_parquet(path)
    first = frame[frame.event_timestamp < windows[0].end]
    second = frame[frame.event_timestamp >= windows[1].start]
    assert second.support_calls.mean() - first.support_calls.mean() > 0.8
    assert first.satisfaction_score.mean() - second.satisfaction_score.mean() > 1.0
    # marketing_score is a control: no drift and no relation to the label.
    assert abs(second.marketing_score.mean() - first.marketing_score.mean()) < 1.0
    assert abs(np.corrcoef(first.marketing_score, first.churned)[0, 1]) < 0.05
    assert abs(np.corrcoef(first.tenure_months, first.churned)[0, 1]) > 0.15
