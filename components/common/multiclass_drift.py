"""Prediction drift of a multiclass classifier: the predicted-class mix and each class's probability.

A binary classifier's prediction drift is the PSI of one score. A multiclass classifier has
``k`` probabilities per row and a predicted class, so monitoring measures (docs/monitoring.md):

- the **class distribution**: PSI and chi-square test of the predicted class counts (one bin per
  class, as for a categorical feature, :func:`drift.categorical_drift`);
- the **probabilities**: the PSI of each class's probability (quantile bins of the reference).

The prediction PSI that the monitoring thresholds judge is the largest of these, and the result
names which one it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from components.common.drift import categorical_drift, psi_sorted, sorted_sample


class ClassDrift(BaseModel):
    """Drift of a multiclass model's answers between reference and current rows."""

    class_psi: float = Field(description="PSI of the predicted-class distribution.")
    class_statistic: float = Field(description="Chi-square statistic of the predicted-class counts.")
    class_p_value: float = Field(description="Its p-value.")
    reference_share: dict[str, float] = Field(description="Class -> share of reference rows predicted as it.")
    current_share: dict[str, float] = Field(description="Class -> share of current rows predicted as it.")
    probability_psi: dict[str, float] = Field(description="Class -> PSI of that class's probability.")

    @property
    def worst(self) -> tuple[float, str]:
        """The largest PSI and what it measured, e.g. ``(0.31, "the probability of class 'student'")``."""
        candidates = [(self.class_psi, "the predicted-class distribution")]
        candidates += [(psi, f"the probability of class {name!r}") for name, psi in self.probability_psi.items()]
        return max(candidates, key=lambda item: item[0])


def predicted(classes: Sequence[Any], probabilities: np.ndarray) -> pd.Series:
    """The predicted class of each row (as text): the most probable, ties to the first, as ``predict``."""
    names = np.asarray([str(c) for c in classes], dtype=object)
    return pd.Series(names[np.argmax(probabilities, axis=1)])


def class_drift(classes: Sequence[Any], reference: np.ndarray, current: np.ndarray, bins: int) -> ClassDrift:
    """Compare two ``[n, k]`` probability matrices (columns in ``classes`` order).

    Args:
        classes: The model's classes.
        reference: Probabilities on the reference rows.
        current: Probabilities on the current rows (served, or the model's on the window).
        bins: Quantile bins of each probability's PSI.

    Returns:
        The class-distribution PSI and chi-square test, the class shares and the per-class probability PSI.
    """
    names = [str(c) for c in classes]
    counted = categorical_drift(predicted(classes, reference), predicted(classes, current))
    categories = [str(c) for c in counted.categories]

    def shares(counts: np.ndarray) -> dict[str, float]:
        total = max(float(counts.sum()), 1.0)
        by_name = dict(zip(categories, counts.tolist(), strict=True))
        return {name: float(by_name.get(name, 0.0)) / total for name in names}

    probability_psi = {
        name: psi_sorted(sorted_sample(reference[:, index]), sorted_sample(current[:, index]), bins)
        for index, name in enumerate(names)
    }
    return ClassDrift(
        class_psi=counted.psi,
        class_statistic=counted.statistic,
        class_p_value=counted.p_value,
        reference_share=shares(counted.reference_counts),
        current_share=shares(counted.current_counts),
        probability_psi=probability_psi,
    )


__all__ = ["ClassDrift", "class_drift", "predicted"]
