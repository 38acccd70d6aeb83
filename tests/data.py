"""Seeded churn-like data for the component tests: small, fast, and shaped by what the tests check.

The tests own this data rather than borrowing the demo's generator (``pipelines.demo_data``), so
the demo can change without moving the tests' thresholds. What the tests rely on:

- weekly windows from :data:`START`, ``rows`` customers in each; the ids are ``1..rows`` in every
  window, so a later window updates the same entities (Feast's latest value), and the
  (entity, timestamp) key is unique;
- seven numeric and two categorical features and a binary label driven by some of them:
  ``support_calls`` and ``satisfaction_score`` matter, ``marketing_score`` is noise (drift in it
  should not ask for retraining), and ``total_charges`` is about tenure times monthly charges
  (a regression target);
- from :attr:`Drift.start` on, shifted feature means (covariate drift) and a stronger effect of
  the monthly charges on churn (concept drift), so a model of the first window gets worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.specs import DatasetSpec
from pipelines.windows import Window

ENTITY, TIMESTAMP, LABEL = "customer_id", "event_timestamp", "churned"
NUMERIC_FEATURES = [
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "support_calls",
    "payment_delays",
    "satisfaction_score",
    "marketing_score",
]
CATEGORICAL_FEATURES = ["plan", "region"]
START = pd.Timestamp("2026-01-05", tz="UTC")
WEEK = pd.Timedelta(days=7)

# Plan -> (share of customers, base monthly charge).
PLANS = {"basic": (0.5, 30.0), "standard": (0.35, 60.0), "premium": (0.15, 95.0)}
REGIONS = ["north", "south", "east", "west"]
# Churn log-odds per standard unit of a feature: (weight, centre, unit). Fixed units, so that a
# shifted feature really moves the label. Features not listed have no effect on churn.
CHURN_EFFECTS = {
    "tenure_months": (-1.3, 24.0, 17.0),
    "monthly_charges": (0.8, 52.0, 22.0),
    "support_calls": (1.2, 1.5, 1.2),
    "payment_delays": (0.8, 0.4, 0.65),
    "satisfaction_score": (-1.0, 7.0, 1.5),
}
BASE_LOG_ODDS = -1.2
PREMIUM_LOG_ODDS = -0.4


@dataclass(frozen=True)
class Drift:
    """Drift from window ``start`` (1-based) on."""

    start: int = 2
    # Shift of a feature's mean in units of its standard deviation in that window.
    shift: dict[str, float] = field(default_factory=lambda: {"support_calls": 1.0, "satisfaction_score": -1.0})
    # Factor on the effect of the monthly charges (1.0: the concept does not change).
    price: float = 3.0


def _features(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    plan = rng.choice(list(PLANS), rows, p=[share for share, _ in PLANS.values()])
    tenure = np.clip(rng.gamma(2.0, 12.0, rows), 1, 120)
    monthly = pd.Series(plan).map({name: base for name, (_, base) in PLANS.items()}).to_numpy()
    monthly = monthly + rng.normal(0.0, 8.0, rows)
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": tenure * monthly * rng.uniform(0.9, 1.05, rows),
            "support_calls": rng.poisson(1.5, rows).astype(float),
            "payment_delays": rng.poisson(0.4, rows).astype(float),
            "satisfaction_score": np.clip(rng.normal(7.0, 1.5, rows), 0, 10),
            "marketing_score": rng.normal(50.0, 10.0, rows),
            "plan": plan,
            "region": rng.choice(REGIONS, rows),
        }
    )


def _churn(rng: np.random.Generator, features: pd.DataFrame, price: float) -> np.ndarray:
    log_odds = np.full(len(features), BASE_LOG_ODDS) + np.where(features["plan"] == "premium", PREMIUM_LOG_ODDS, 0.0)
    for name, (weight, centre, unit) in CHURN_EFFECTS.items():
        factor = price if name == "monthly_charges" else 1.0
        log_odds += factor * weight * (features[name].to_numpy() - centre) / unit
    return (rng.random(len(features)) < 1.0 / (1.0 + np.exp(-log_odds))).astype("int64")


def churn_frame(
    windows: int = 3, rows: int = 600, seed: int = 3, drift: Drift | None = None
) -> tuple[pd.DataFrame, list[Window]]:
    """``windows`` weekly windows of ``rows`` customers each, sorted by time; the same seed gives the same data.

    Args:
        windows: Number of weekly windows.
        rows: Customers (rows) per window.
        seed: Random seed.
        drift: Drift to inject, or None for stationary data.

    Returns:
        The data and its windows.
    """
    rng = np.random.default_rng(seed)
    parts, bounds = [], []
    for number in range(1, windows + 1):
        start = START + (number - 1) * WEEK
        drifting = drift is not None and number >= drift.start
        features = _features(rng, rows)
        for name, sigmas in drift.shift.items() if drift is not None and drifting else ():
            features[name] += sigmas * features[name].std(ddof=0)
        label = _churn(rng, features, drift.price if drift is not None and drifting else 1.0)
        parts.append(_window_table(rng, start, features, NUMERIC_FEATURES, CATEGORICAL_FEATURES, {LABEL: label}))
        bounds.append(Window(number, start.isoformat(), (start + WEEK).isoformat(), rows))
    frame = pd.concat(parts, ignore_index=True).sort_values([TIMESTAMP, ENTITY], ignore_index=True)
    return frame, bounds


def _window_table(
    rng: np.random.Generator,
    start: pd.Timestamp,
    features: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    label: dict[str, Any],
) -> pd.DataFrame:
    """One window's rows: entity ids 1..n at distinct random times of the week, the features, the label."""
    rows = len(features)
    stamps = start + pd.to_timedelta(rng.choice(WEEK // pd.Timedelta(milliseconds=1), rows, replace=False), "ms")
    keys = pd.DataFrame({ENTITY: np.arange(1, rows + 1, dtype="int64"), TIMESTAMP: stamps.as_unit("ns")})
    return pd.concat([keys, features[list(numeric)].round(3), features[list(categorical)], pd.DataFrame(label)], axis=1)


def _write(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as one Parquet file, its parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)


def write_churn(
    path: str | Path, windows: int = 3, rows: int = 600, seed: int = 3, drift: Drift | None = None
) -> list[Window]:
    """Write :func:`churn_frame` as one Parquet file (its parent folders created) and return its windows."""
    frame, bounds = churn_frame(windows, rows, seed, drift)
    _write(frame, path)
    return bounds


def churn_spec(source: str | Path) -> DatasetSpec:
    """A dataset spec describing data written by :func:`write_churn` at ``source``."""
    return DatasetSpec(
        source=str(source),
        entity_column=ENTITY,
        timestamp_column=TIMESTAMP,
        label_column=LABEL,
        numeric_features=list(NUMERIC_FEATURES),
        categorical_features=list(CATEGORICAL_FEATURES),
        task="binary_classification",
    )


# --- multiclass data --------------------------------------------------------------------------
#
# Five customer segments predicted from five numeric and two categorical features. Two class
# names hold characters a column name cannot ("family plan", "pro-user"), so batch scoring's
# probability columns and the served class names are tested on them. ``noise`` has no effect.

SEGMENT = "segment"
SEGMENTS = ["budget", "family plan", "premium", "pro-user", "student"]
MULTICLASS_NUMERIC = ["age", "income", "usage_hours", "devices", "noise"]
MULTICLASS_CATEGORICAL = ["region", "channel"]
CHANNELS = ["web", "store", "phone"]
# Feature -> (centre, unit): fixed standard units, so a shifted feature moves the class mix.
_SEGMENT_UNITS = {"age": (40.0, 12.0), "income": (45.0, 15.0), "usage_hours": (10.0, 7.0), "devices": (2.0, 1.4)}
# Class -> log-odds weight per standard unit of each feature (features not listed: 0).
_SEGMENT_WEIGHTS = {
    "budget": {"income": -1.6, "usage_hours": -0.5},
    "family plan": {"devices": 1.8, "age": 0.6},
    "premium": {"income": 2.0, "age": 0.4},
    "pro-user": {"usage_hours": 2.0, "income": 0.5},
    "student": {"age": -2.2, "income": -0.6},
}


def _segment_features(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": np.clip(rng.normal(40.0, 12.0, rows), 16, 90),
            "income": np.clip(rng.normal(45.0, 15.0, rows), 5, None),
            "usage_hours": rng.gamma(2.0, 5.0, rows),
            "devices": rng.poisson(2.0, rows).astype(float),
            "noise": rng.normal(0.0, 1.0, rows),
            "region": rng.choice(REGIONS, rows),
            "channel": rng.choice(CHANNELS, rows),
        }
    )


def _segments(rng: np.random.Generator, features: pd.DataFrame) -> np.ndarray:
    logits = np.zeros((len(features), len(SEGMENTS)))
    for index, segment in enumerate(SEGMENTS):
        for name, weight in _SEGMENT_WEIGHTS[segment].items():
            centre, unit = _SEGMENT_UNITS[name]
            logits[:, index] += weight * (features[name].to_numpy() - centre) / unit
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    drawn = (probabilities.cumsum(axis=1) < rng.random((len(features), 1))).sum(axis=1)
    return np.asarray(SEGMENTS, dtype=object)[np.minimum(drawn, len(SEGMENTS) - 1)]


def multiclass_frame(
    windows: int = 3, rows: int = 600, seed: int = 5, shift: dict[str, float] | None = None, shift_start: int = 2
) -> tuple[pd.DataFrame, list[Window]]:
    """``windows`` weekly windows of ``rows`` customers with a five-class ``segment`` label, sorted by time.

    Args:
        windows: Number of weekly windows.
        rows: Customers (rows) per window.
        seed: Random seed; the same seed gives the same data.
        shift: Feature -> shift of its mean in standard deviations, from window ``shift_start`` on
            (the class mix moves with it), or None for stationary data.
        shift_start: First (1-based) window with the shift.

    Returns:
        The data and its windows.
    """
    rng = np.random.default_rng(seed)
    parts, bounds = [], []
    for number in range(1, windows + 1):
        start = START + (number - 1) * WEEK
        features = _segment_features(rng, rows)
        for name, sigmas in (shift or {}).items() if number >= shift_start else ():
            features[name] += sigmas * features[name].std(ddof=0)
        label = _segments(rng, features)
        parts.append(_window_table(rng, start, features, MULTICLASS_NUMERIC, MULTICLASS_CATEGORICAL, {SEGMENT: label}))
        bounds.append(Window(number, start.isoformat(), (start + WEEK).isoformat(), rows))
    frame = pd.concat(parts, ignore_index=True).sort_values([TIMESTAMP, ENTITY], ignore_index=True)
    return frame, bounds


def write_multiclass(path: str | Path, windows: int = 3, rows: int = 600, seed: int = 5) -> list[Window]:
    """Write :func:`multiclass_frame` as one Parquet file (its parent folders created) and return its windows."""
    frame, bounds = multiclass_frame(windows, rows, seed)
    _write(frame, path)
    return bounds


def multiclass_spec(source: str | Path) -> DatasetSpec:
    """A dataset spec describing data written by :func:`write_multiclass` at ``source``."""
    return DatasetSpec(
        source=str(source),
        entity_column=ENTITY,
        timestamp_column=TIMESTAMP,
        label_column=SEGMENT,
        numeric_features=list(MULTICLASS_NUMERIC),
        categorical_features=list(MULTICLASS_CATEGORICAL),
        task="multiclass_classification",
    )
