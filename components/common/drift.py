"""Population stability: how far one distribution moved from another, as PSI.

Monitoring measures feature and prediction drift with these; canary analysis compares the
champion's and the challenger's served predictions with them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Floor for empty bins, as a share of rows: keeps PSI finite when a bin is empty on one side.
PSI_EPSILON = 1e-4
#: The category missing values are counted under.
MISSING = "(missing)"


def psi_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI = sum((c - r) * ln(c / r)) over bins, with shares floored at ``PSI_EPSILON``."""
    ref = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_EPSILON)
    cur = np.maximum(current_counts / max(current_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles; duplicates (discrete data) collapse."""
    if reference.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    """PSI of a numeric variable, with quantile bins computed once from the reference.

    Values equal to an edge go to the upper bin (``np.searchsorted(..., side="right")``), so
    discrete values with many ties keep their own bins. Missing values (NaN) form one extra
    bin, so a change in the missing rate counts as drift.

    Args:
        reference: Reference values.
        current: Current values.
        bins: Number of quantile bins (fewer if the reference has ties at the edges).

    Returns:
        The PSI, 0 for identical distributions; about 0.1 is a small shift, 0.25 a large one.
    """
    reference = np.asarray(reference, dtype=float)
    current = np.asarray(current, dtype=float)
    ref_nan, cur_nan = np.isnan(reference), np.isnan(current)
    ref_values, cur_values = reference[~ref_nan], current[~cur_nan]
    edges = _quantile_edges(ref_values, bins)
    n_bins = edges.size + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref_values, side="right"), minlength=n_bins)
    cur_counts = np.bincount(np.searchsorted(edges, cur_values, side="right"), minlength=n_bins)
    if ref_nan.any() or cur_nan.any():
        ref_counts = np.append(ref_counts, ref_nan.sum())
        cur_counts = np.append(cur_counts, cur_nan.sum())
    return psi_from_counts(ref_counts.astype(float), cur_counts.astype(float))


def _value_counts(values: pd.Series) -> pd.Series:
    """Rows per category, keyed by the category as text; missing values count as ``MISSING``."""
    counts = values.value_counts(dropna=False, sort=False)
    # Count first, then name the (few) categories: far cheaper than turning every value into text.
    keys = [MISSING if pd.isna(key) else str(key) for key in counts.index]
    return pd.Series(counts.to_numpy(), index=keys).groupby(level=0).sum()


def category_counts(reference: pd.Series, current: pd.Series) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Counts per category over the union of both sides (missing values are a category)."""
    ref, cur = _value_counts(reference), _value_counts(current)
    categories = ref.index.union(cur.index)
    return (
        categories,
        ref.reindex(categories, fill_value=0).to_numpy(dtype=float),
        cur.reindex(categories, fill_value=0).to_numpy(dtype=float),
    )


def categorical_psi(reference: pd.Series, current: pd.Series) -> float:
    """PSI of a categorical variable: one bin per category seen on either side.

    Args:
        reference: Reference values.
        current: Current values; categories unseen in the reference count with the epsilon floor.

    Returns:
        The PSI.
    """
    _, ref_counts, cur_counts = category_counts(reference, current)
    return psi_from_counts(ref_counts, cur_counts)
