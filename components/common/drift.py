"""Drift statistics: how far one distribution moved from another.

Population stability (PSI) for numeric and categorical variables, the two-sample
Kolmogorov-Smirnov test and the chi-square test on category counts. Monitoring measures
feature and prediction drift with these; canary analysis compares the champion's and the
challenger's served predictions with them.

Numeric comparisons work on each side's values sorted once (:func:`sorted_sample`): the PSI's
quantile edges and bin counts, the KS statistic and the report's histograms are all read off
the sorted arrays by binary search, so no pass over the rows is repeated per statistic.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

# Floor for empty bins, as a share of rows: keeps PSI finite when a bin is empty on one side.
PSI_EPSILON = 1e-4
#: The category missing values are counted under.
MISSING = "(missing)"
# Largest sample for which SciPy's ks_2samp (method "auto") computes an exact p-value; above it
# SciPy uses Smirnov's asymptotic distribution, which :func:`ks_2samp_sorted` reproduces.
KS_EXACT_MAX_N = 10_000
# Features measured at once by :func:`measure_features`: NumPy sorts and searches without holding the GIL,
# so threads use the cores a step has. Each thread holds about 4 column-sized arrays at a time (sorted
# copies, search results), so memory grows with the count; a pipeline step rarely has more cores.
MAX_THREADS = 4


@dataclass(frozen=True)
class SortedSample:
    """A numeric sample's non-missing values in ascending order, and how many values were missing (NaN)."""

    values: np.ndarray
    missing: int


class Histograms(NamedTuple):
    """Density histograms of two samples on shared edges (for a plot); None for an empty side."""

    edges: np.ndarray
    reference: np.ndarray | None
    current: np.ndarray | None


@dataclass(frozen=True)
class NumericDrift:
    """PSI and two-sample KS test of one numeric variable, with histograms to plot it."""

    psi: float
    statistic: float
    p_value: float
    histograms: Histograms | None
    """Both sides' densities (:func:`density_histograms`); None when neither side has a finite value."""


@dataclass(frozen=True)
class CategoricalDrift:
    """PSI and chi-square test of one categorical variable, with the counts they come from."""

    psi: float
    statistic: float
    p_value: float
    categories: pd.Index
    """Every category seen on either side, as text (missing values are ``MISSING``)."""
    reference_counts: np.ndarray
    current_counts: np.ndarray


def psi_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI = sum((c - r) * ln(c / r)) over bins, with shares floored at ``PSI_EPSILON``."""
    ref = np.maximum(reference_counts / max(reference_counts.sum(), 1), PSI_EPSILON)
    cur = np.maximum(current_counts / max(current_counts.sum(), 1), PSI_EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def sorted_sample(values: np.ndarray) -> SortedSample:
    """Sort a numeric sample once, setting its missing values (NaN) apart.

    Args:
        values: The sample; anything ``np.asarray(..., dtype=float)`` accepts.

    Returns:
        The non-missing values in ascending order and the number of NaN.
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    # NumPy sorts NaN last and searchsorted orders NaN the same way, so this is the first NaN.
    valid = int(np.searchsorted(ordered, np.nan, side="left"))
    return SortedSample(ordered[:valid], ordered.size - valid)


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles; duplicates (discrete data) collapse.

    ``np.quantile`` depends only on the order statistics, so a sorted ``reference`` gives the
    same edges as the unsorted sample, just faster (the partition has nothing to move).
    """
    if reference.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def bin_counts(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Values per bin of sorted ``ordered``; a value equal to an edge goes to the upper bin.

    The same counts as ``np.bincount(np.searchsorted(edges, values, side="right"))`` on the
    unsorted values: bin ``i`` holds ``edges[i - 1] <= v < edges[i]``, and the values below
    ``edges[i]`` are found by one binary search per edge instead of one per value.
    """
    below = np.searchsorted(ordered, edges, side="left")
    return np.diff(below, prepend=0, append=ordered.size)


def psi_sorted(reference: SortedSample, current: SortedSample, bins: int) -> float:
    """PSI of two sorted numeric samples with quantile bins from the reference.

    Missing values form one extra bin when either side has any, so a change in the missing
    rate counts as drift. See :func:`population_stability_index` for the binning rules.
    """
    edges = quantile_edges(reference.values, bins)
    ref_counts = bin_counts(reference.values, edges)
    cur_counts = bin_counts(current.values, edges)
    if reference.missing or current.missing:
        ref_counts = np.append(ref_counts, reference.missing)
        cur_counts = np.append(cur_counts, current.missing)
    return psi_from_counts(ref_counts.astype(float), cur_counts.astype(float))


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
    return psi_sorted(sorted_sample(reference), sorted_sample(current), bins)


def ks_statistic_sorted(reference: np.ndarray, current: np.ndarray) -> float:
    """The two-sided two-sample KS statistic of two sorted samples without NaN, both non-empty.

    Bit for bit the statistic of ``scipy.stats.ks_2samp``, which evaluates
    ``F_ref(x) - F_cur(x)`` (each ``count(<= x) / n``) at every value of both samples, with two
    binary searches per value. Here: the difference only rises at reference values and only
    falls at current values. So its minimum is reached at a distinct current value ``v_j``,
    and its maximum at the last reference value before the next distinct current value
    ``v_{j+1}``, where ``F_ref = count(ref < v_{j+1}) / n_ref`` and ``F_cur = F_cur(v_j)``.
    Both need only ``count(ref < v)`` and ``count(ref <= v)`` at the distinct current values:
    one binary search per current value, the second one only for values the reference also
    holds (ties). Every candidate is one of SciPy's evaluations (or 0, which never exceeds the
    maximum: the difference is 0 at the largest value), computed with the same divisions.

    Args:
        reference: Reference values, ascending, no NaN.
        current: Current values, ascending, no NaN.

    Returns:
        ``max |F_ref - F_cur|``.
    """
    n_ref, n_cur = reference.size, current.size
    # Last position of each run of equal current values: count(cur <= v) is that position + 1.
    run_ends = np.flatnonzero(current[1:] != current[:-1])
    if run_ends.size == n_cur - 1:  # no ties: every value is distinct, skip the gather
        distinct, cur_below_or_at = current, np.arange(1, n_cur + 1)
    else:
        run_ends = np.append(run_ends, n_cur - 1)
        distinct, cur_below_or_at = current[run_ends], run_ends + 1
    ref_below = np.searchsorted(reference, distinct, side="left")
    cdf_cur = cur_below_or_at / n_cur
    ref_share = ref_below / n_ref
    # count(ref <= v) is count(ref < v) unless the reference holds v itself, at the position found.
    # Where the whole reference is below v, that position is clipped to the last value: smaller, no tie.
    tied = reference[np.minimum(ref_below, n_ref - 1)] == distinct
    if tied.any():
        ref_below_or_at = ref_below.copy()
        ref_below_or_at[tied] = np.searchsorted(reference, distinct[tied], side="right")
        lowest = float(np.min(ref_below_or_at / n_ref - cdf_cur))
    else:
        lowest = float(np.min(ref_share - cdf_cur))
    # Maximum candidates: before v_1 (F_cur is 0), between consecutive distinct values, and after
    # the last one, where both CDFs are 1 (difference 0, the ``initial``).
    highest = max(float(ref_share[0]), float(np.max(ref_share[1:] - cdf_cur[:-1], initial=0.0)))
    below = float(np.clip(-lowest, 0.0, 1.0))
    return below if below > highest else highest


def ks_2samp_sorted(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS test of two sorted samples without NaN, as ``scipy.stats.ks_2samp``.

    Small samples (up to ``KS_EXACT_MAX_N``) go to SciPy itself, which computes an exact
    p-value for them and is fast at that size. Larger ones take the statistic from
    :func:`ks_statistic_sorted` and the p-value from the distribution SciPy's ``"auto"``
    method uses there: Kolmogorov's two-sided distribution for ``round(n*m / (n+m))`` samples.

    Args:
        reference: Reference values, ascending, no NaN.
        current: Current values, ascending, no NaN.

    Returns:
        The statistic and the p-value; ``(0.0, 1.0)`` when a side is empty.
    """
    if reference.size == 0 or current.size == 0:
        return 0.0, 1.0
    if max(reference.size, current.size) <= KS_EXACT_MAX_N:
        test = stats.ks_2samp(reference, current)
        return float(test.statistic), float(test.pvalue)
    statistic = ks_statistic_sorted(reference, current)
    larger, smaller = sorted([float(reference.size), float(current.size)], reverse=True)
    effective = np.round(larger * smaller / (larger + smaller))
    return statistic, float(np.clip(stats.kstwo.sf(statistic, effective), 0.0, 1.0))


def numeric_drift(reference: SortedSample, current: SortedSample, bins: int, plot_bins: int) -> NumericDrift:
    """PSI (NaN as its own bin), KS test (NaN dropped) and plot histograms of two sorted numeric samples.

    Args:
        reference: The reference sample, from :func:`sorted_sample`.
        current: The current sample, from :func:`sorted_sample`.
        bins: Number of quantile bins for the PSI.
        plot_bins: Number of evenly spaced bins for the histograms.

    Returns:
        The PSI, the KS statistic and its p-value, and the histograms.
    """
    statistic, p_value = ks_2samp_sorted(reference.values, current.values)
    histograms = density_histograms(reference, current, plot_bins)
    return NumericDrift(psi_sorted(reference, current, bins), statistic, p_value, histograms)


def _quantile(ordered: np.ndarray, q: float) -> float:
    """The ``q`` quantile (linear interpolation) of a sorted non-empty array, read off by position."""
    position = q * (ordered.size - 1)
    lower = int(position)
    upper = min(lower + 1, ordered.size - 1)
    return float(ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower))


def density_histograms(reference: SortedSample, current: SortedSample, bins: int) -> Histograms | None:
    """Both samples' densities on shared, evenly spaced edges, from every value.

    The range covers the 0.5-99.5% quantiles of each side, so a shifted side is not cut off;
    values beyond it count in the outer bins, as in a histogram of clipped values. Infinite
    values are left out of the range only. Being sorted, each side is counted with one binary
    search per edge.

    Args:
        reference: The reference sample, from :func:`sorted_sample`.
        current: The current sample, from :func:`sorted_sample`.
        bins: Number of bins.

    Returns:
        The edges and each side's density; None when neither side has a finite value.
    """
    finite = [
        side.values[np.searchsorted(side.values, -np.inf, side="right") : np.searchsorted(side.values, np.inf)]
        for side in (reference, current)
    ]
    finite = [values for values in finite if values.size]
    if not finite:
        return None
    low = min(_quantile(values, 0.005) for values in finite)
    high = max(_quantile(values, 0.995) for values in finite)
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    widths = np.diff(edges)

    def density(values: np.ndarray) -> np.ndarray | None:
        # The outer edges are left out of the search: values beyond them land in the outer bins.
        return bin_counts(values, edges[1:-1]) / (values.size * widths) if values.size else None

    return Histograms(edges, density(reference.values), density(current.values))


def _value_counts(values: pd.Series) -> pd.Series:
    """Rows per category, keyed by the category as text; missing values count as ``MISSING``."""
    counts = values.value_counts(dropna=False, sort=False)
    # A categorical dtype also lists the categories no row holds: they are not seen on this side.
    counts = counts[counts.to_numpy() > 0]
    # Count first, then name the (few) categories: far cheaper than turning every value into text.
    keys = [MISSING if pd.isna(key) else str(key) for key in counts.index]
    return pd.Series(counts.to_numpy(), index=keys).groupby(level=0).sum()


def category_counts(reference: pd.Series, current: pd.Series) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Counts per category over the union of both sides (missing values are a category).

    Either side may be of object, string or categorical dtype; the counts are the same.
    """
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


def categorical_drift(reference: pd.Series, current: pd.Series) -> CategoricalDrift:
    """PSI and chi-square test on the 2 x K table of category counts, counted once for both.

    Args:
        reference: Reference values.
        current: Current values.

    Returns:
        The PSI, the chi-square statistic and p-value (``0.0, 1.0`` with fewer than two
        categories or an empty side), and the counts per category.
    """
    categories, ref_counts, cur_counts = category_counts(reference, current)
    psi = psi_from_counts(ref_counts, cur_counts)
    if ref_counts.size < 2 or ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return CategoricalDrift(psi, 0.0, 1.0, categories, ref_counts, cur_counts)
    test = stats.chi2_contingency(np.vstack([ref_counts, cur_counts]))
    return CategoricalDrift(psi, float(test.statistic), float(test.pvalue), categories, ref_counts, cur_counts)


def measure_features(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str],
    numeric: Collection[str],
    bins: int,
    plot_bins: int,
) -> dict[str, NumericDrift | CategoricalDrift]:
    """Drift of each feature, on up to ``MAX_THREADS`` threads (the results do not depend on them).

    A numeric feature (values that are not numbers count as missing) is sorted once per side, and
    its PSI, KS test and histograms all come from the sorted values; a categorical feature is
    counted once for its PSI, chi-square test and bars.

    Args:
        reference: Reference table with every feature column.
        current: Current table with every feature column.
        features: The features to measure.
        numeric: Those of them that are numeric; the others are categorical.
        bins: Number of quantile bins for a numeric PSI.
        plot_bins: Number of histogram bins for a numeric plot.

    Returns:
        Feature name to its measurements, in the order of ``features``.
    """

    def measure(sides: tuple[pd.Series, pd.Series], is_numeric: bool) -> NumericDrift | CategoricalDrift:
        if not is_numeric:
            return categorical_drift(*sides)
        ref, cur = (sorted_sample(pd.to_numeric(side, errors="coerce").to_numpy(dtype=float)) for side in sides)
        return numeric_drift(ref, cur, bins, plot_bins)

    # The columns are taken out on this thread: the threads share no DataFrame.
    columns = [(reference[name], current[name]) for name in features]
    threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, len(features)))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="drift") as pool:
        measured = pool.map(measure, columns, [name in numeric for name in features])
        return dict(zip(features, measured, strict=True))
