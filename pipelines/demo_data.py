"""Deterministic synthetic data in the shape real continuous-training use cases have.

A subscription-churn table: one row per customer per time window, with an entity id, an
event timestamp, ten numeric and two categorical features, and a binary label whose
probability depends on the features in a known way. From a chosen window on, drift can
be injected:

- covariate shift: the distribution of some features moves (customers call support more
  and are less satisfied), while the relationship to the label stays;
- concept shift: the relationship itself changes (price sensitivity grows), so the old
  model becomes wrong even on familiar inputs.

``marketing_score`` has no effect on the label, which makes it a control for drift that
should not trigger retraining.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from components.common.storage import write_parquet
from pipelines.windows import Window, write_manifest

NUMERIC_FEATURES = [
    "tenure_months",
    "monthly_charges",
    "total_charges",
    "support_calls",
    "days_since_last_login",
    "sessions_per_week",
    "avg_session_minutes",
    "payment_delays",
    "satisfaction_score",
    "marketing_score",
]
CATEGORICAL_FEATURES = ["plan", "region"]
ENTITY, TIMESTAMP, LABEL = "customer_id", "event_timestamp", "churned"
PLANS = ["basic", "standard", "premium"]
REGIONS = ["north", "south", "east", "west"]
START = datetime(2026, 1, 5, tzinfo=UTC)


@dataclass(frozen=True)
class DriftSpec:
    """Drift injected from ``start_window`` (1-based) on; ``None`` means no drift."""

    start_window: int | None = None
    # Shift of each feature's mean, in units of that feature's standard deviation.
    covariate_shift: dict[str, float] = field(
        default_factory=lambda: {"support_calls": 1.0, "satisfaction_score": -1.0}
    )
    # Multiplier on the effect of monthly charges: 1.0 keeps the concept unchanged.
    concept_shift: float = 3.0


def _window_frame(rng: np.random.Generator, window: int, rows: int, window_days: int, drift: DriftSpec) -> pd.DataFrame:
    drifting = drift.start_window is not None and window >= drift.start_window
    shift = drift.covariate_shift if drifting else {}
    start = START + timedelta(days=window_days * (window - 1))

    tenure = rng.gamma(2.0, 12.0, rows).clip(1, 120)
    plan = rng.choice(PLANS, rows, p=[0.5, 0.35, 0.15])
    base_charge = np.select([plan == "basic", plan == "standard"], [30.0, 60.0], 95.0)
    monthly = base_charge + rng.normal(0, 8, rows)
    numeric = {
        "tenure_months": tenure,
        "monthly_charges": monthly,
        "total_charges": tenure * monthly * rng.uniform(0.9, 1.05, rows),
        "support_calls": rng.poisson(1.5, rows).astype(float),
        "days_since_last_login": rng.exponential(6.0, rows),
        "sessions_per_week": rng.gamma(3.0, 1.5, rows),
        "avg_session_minutes": rng.lognormal(2.5, 0.4, rows),
        "payment_delays": rng.poisson(0.4, rows).astype(float),
        "satisfaction_score": rng.normal(7.0, 1.5, rows).clip(0, 10),
        "marketing_score": rng.normal(50.0, 10.0, rows),
    }
    for name, sigmas in shift.items():
        numeric[name] = numeric[name] + sigmas * float(np.std(numeric[name]))

    def z(name: str) -> np.ndarray:
        # Standardise with fixed constants so drifted inputs really move the label.
        means = {
            "tenure_months": 24,
            "monthly_charges": 52,
            "support_calls": 1.5,
            "days_since_last_login": 6,
            "sessions_per_week": 4.5,
            "payment_delays": 0.4,
            "satisfaction_score": 7.0,
        }
        stds = {
            "tenure_months": 17,
            "monthly_charges": 22,
            "support_calls": 1.2,
            "days_since_last_login": 6,
            "sessions_per_week": 2.6,
            "payment_delays": 0.65,
            "satisfaction_score": 1.5,
        }
        return (numeric[name] - means[name]) / stds[name]

    price_effect = 0.5 * (drift.concept_shift if drifting else 1.0)
    logit = (
        -1.2
        - 0.9 * z("tenure_months")
        + price_effect * z("monthly_charges")
        + 0.8 * z("support_calls")
        + 0.5 * z("days_since_last_login")
        - 0.4 * z("sessions_per_week")
        + 0.6 * z("payment_delays")
        - 0.7 * z("satisfaction_score")
        + np.where(plan == "premium", -0.4, 0.0)
    )
    label = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    seconds = rng.uniform(0, window_days * 86400, rows)
    frame = pd.DataFrame(
        {
            ENTITY: np.arange(1, rows + 1, dtype="int64"),
            TIMESTAMP: pd.to_datetime([start + timedelta(seconds=float(s)) for s in seconds], utc=True),
            **{name: np.round(values, 3) for name, values in numeric.items()},
            "plan": plan,
            "region": rng.choice(REGIONS, rows),
            LABEL: label.astype("int64"),
        }
    )
    return frame.sort_values([TIMESTAMP, ENTITY], kind="stable").reset_index(drop=True)


def generate(
    output: str | os.PathLike[str],
    windows: int = 4,
    rows_per_window: int = 5000,
    window_days: int = 7,
    seed: int = 7,
    drift: DriftSpec | None = None,
) -> list[Window]:
    """Write the synthetic dataset as Parquet plus a ``<name>.windows.json`` manifest.

    Args:
        output: Parquet file to write, a path or a URI (``s3://...``); the manifest goes beside it.
        windows: Number of consecutive time windows (K).
        rows_per_window: Rows per window; each customer id appears once per window.
        window_days: Length of one window in days.
        seed: Random seed; the same arguments always give the same bytes of data.
        drift: Drift to inject, or None for stationary data.

    Returns:
        The windows, with their [start, end) bounds as ISO timestamps.
    """
    if windows < 1 or rows_per_window < 10:
        raise ValueError(f"need windows >= 1 and rows_per_window >= 10, got {windows} and {rows_per_window}")
    drift = drift or DriftSpec()
    rng = np.random.default_rng(seed)
    frames, manifest = [], []
    for index in range(1, windows + 1):
        frames.append(_window_frame(rng, index, rows_per_window, window_days, drift))
        start = START + timedelta(days=window_days * (index - 1))
        manifest.append(
            Window(index, start.isoformat(), (start + timedelta(days=window_days)).isoformat(), rows_per_window)
        )
    write_parquet(output, pd.concat(frames, ignore_index=True))
    write_manifest(output, manifest, drift=asdict(drift))
    return manifest
