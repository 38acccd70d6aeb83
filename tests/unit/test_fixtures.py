"""The tests' own kit: the generated data is what the tests assume, and it is theirs, not the demo's."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import stray_root_entries
from tests.data import CATEGORICAL_FEATURES, ENTITY, LABEL, NUMERIC_FEATURES, START, TIMESTAMP, Drift, churn_frame
from tests.helpers import ROOT


def test_same_seed_same_data_and_windows_as_documented() -> None:
    frame, windows = churn_frame(windows=3, rows=200, seed=5, drift=Drift())
    again, _ = churn_frame(windows=3, rows=200, seed=5, drift=Drift())
    pd.testing.assert_frame_equal(frame, again)
    assert not frame.equals(churn_frame(windows=3, rows=200, seed=6, drift=Drift())[0])

    assert list(frame.columns) == [ENTITY, TIMESTAMP, *NUMERIC_FEATURES, *CATEGORICAL_FEATURES, LABEL]
    assert str(frame[TIMESTAMP].dtype) == "datetime64[ns, UTC]" and frame[ENTITY].dtype == "int64"
    assert frame[TIMESTAMP].is_monotonic_increasing and not frame.duplicated([ENTITY, TIMESTAMP]).any()
    assert [(w.window, w.rows) for w in windows] == [(1, 200), (2, 200), (3, 200)]
    assert windows[0].start == START.isoformat() and windows[0].end == windows[1].start
    for w in windows:
        inside = frame[(frame[TIMESTAMP] >= pd.Timestamp(w.start)) & (frame[TIMESTAMP] < pd.Timestamp(w.end))]
        assert sorted(inside[ENTITY]) == list(range(1, 201))  # the same customers in every window
    assert set(frame[LABEL]) == {0, 1}


def test_drift_moves_the_named_features_and_the_concept_only() -> None:
    stationary, windows = churn_frame(windows=2, rows=3000, seed=1)
    drifted, _ = churn_frame(windows=2, rows=3000, seed=1, drift=Drift(start=2))

    def second(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame[TIMESTAMP] >= pd.Timestamp(windows[1].start)]

    before, after = second(stationary), second(drifted)
    for name, sigmas in Drift().shift.items():
        moved = (after[name].mean() - before[name].mean()) / before[name].std()
        assert moved == pytest.approx(sigmas, abs=0.05)
    assert after["marketing_score"].mean() == pytest.approx(before["marketing_score"].mean())
    # The first window is the same with or without drift from window 2.
    first = stationary[stationary[TIMESTAMP] < pd.Timestamp(windows[0].end)]
    assert first.equals(drifted[drifted[TIMESTAMP] < pd.Timestamp(windows[0].end)])
    # The same customers, shifted and with a stronger price effect: many more of them churn.
    assert after[LABEL].mean() > before[LABEL].mean() + 0.1


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_component_tests_do_not_use_the_demo_data() -> None:
    """Only the demo's own tests (and the pipeline runs, through ``small_config``) use ``pipelines.demo_data``."""
    tests = ROOT / "tests"
    checked = [*sorted((tests / "unit").rglob("*.py")), tests / "conftest.py", tests / "data.py"]
    checked = [path for path in checked if path.name != "test_demo_data.py"]
    offenders = [str(path.relative_to(ROOT)) for path in checked if "pipelines.demo_data" in _imports(path)]
    offenders += [
        str(path.relative_to(ROOT))
        for path in (tests / "helpers.py", tests / "serving_helpers.py")
        if "pipelines.demo_data" in _imports(path, top_level_only=True)
    ]
    assert offenders == []
    assert len(checked) > 20  # the walk found the unit tests


@pytest.mark.parametrize(
    ("added", "markers", "stray"),
    [
        ({"mlflow.db"}, ["slow"], ["mlflow.db"]),
        (
            {"mlruns", "mlartifacts", "spark-warehouse", ".workspace"},
            [],
            [".workspace", "mlartifacts", "mlruns", "spark-warehouse"],
        ),
        ({".pytest_cache", ".hypothesis"}, [], []),
        ({"out"}, ["server"], ["out"]),
        ({"out"}, ["bench"], []),
        ({"out", "mlflow.db"}, ["containers"], ["mlflow.db"]),
    ],
)
def test_the_root_check_allows_caches_and_tier_outputs_only(
    added: set[str], markers: list[str], stray: list[str]
) -> None:
    before = {"README.md", "tests", ".venv"}
    assert stray_root_entries(before, before | added, markers) == stray
