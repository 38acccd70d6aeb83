"""The sort-once drift statistics give the results of the formulas they replaced (issue 21).

Numeric features are now sorted once per side, and PSI, the KS statistic and the plot
histograms are read off the sorted values; categorical text is read as categoricals. These
tests compare each piece with the previous computation (kept here as the reference) or with
SciPy, on random data with missing values, ties within and across samples and tiny samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from components.common import drift
from components.monitor import monitor
from components.specs import DatasetSpec, MonitoringSpec


def _previous_psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    """PSI as computed before: one binary search per value into the edges, then a bincount."""
    ref_nan, cur_nan = np.isnan(reference), np.isnan(current)
    ref_values, cur_values = reference[~ref_nan], current[~cur_nan]
    edges = (
        np.unique(np.quantile(ref_values, np.linspace(0.0, 1.0, bins + 1)[1:-1])) if ref_values.size else np.empty(0)
    )
    n_bins = edges.size + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref_values, side="right"), minlength=n_bins)
    cur_counts = np.bincount(np.searchsorted(edges, cur_values, side="right"), minlength=n_bins)
    if ref_nan.any() or cur_nan.any():
        ref_counts = np.append(ref_counts, ref_nan.sum())
        cur_counts = np.append(cur_counts, cur_nan.sum())
    return drift.psi_from_counts(ref_counts.astype(float), cur_counts.astype(float))


def _previous_counts(reference: pd.Series, current: pd.Series) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Category counts as computed before, on object-dtype values."""

    def counts(values: pd.Series) -> pd.Series:
        counted = values.value_counts(dropna=False, sort=False)
        keys = [drift.MISSING if pd.isna(key) else str(key) for key in counted.index]
        return pd.Series(counted.to_numpy(), index=keys).groupby(level=0).sum()

    ref, cur = counts(reference), counts(current)
    categories = ref.index.union(cur.index)
    return (
        categories,
        ref.reindex(categories, fill_value=0).to_numpy(dtype=float),
        cur.reindex(categories, fill_value=0).to_numpy(dtype=float),
    )


def _pair(rng: np.random.Generator, kind: str, n_ref: int, n_cur: int) -> tuple[np.ndarray, np.ndarray]:
    """Two samples: continuous, small integers (ties everywhere), rounded (some ties) or constant."""
    if kind == "continuous":
        return rng.normal(size=n_ref), rng.normal(rng.normal(scale=0.3), 1.0, size=n_cur)
    if kind == "integers":
        return rng.integers(0, 5, n_ref).astype(float), rng.integers(1, 7, n_cur).astype(float)
    if kind == "rounded":
        return np.round(rng.normal(size=n_ref), 1), np.round(rng.normal(0.2, 1.0, size=n_cur), 1)
    return np.full(n_ref, 3.0), rng.integers(2, 5, n_cur).astype(float)


KINDS = ["continuous", "integers", "rounded", "constant"]


@pytest.mark.parametrize("kind", KINDS)
def test_ks_statistic_is_scipys_bit_for_bit(kind: str) -> None:
    rng = np.random.default_rng(KINDS.index(kind))
    for _ in range(300):
        reference, current = _pair(rng, kind, int(rng.integers(1, 400)), int(rng.integers(1, 400)))
        # method="asymp": the statistic as SciPy measures it (its exact method rounds it to a grid).
        expected = stats.ks_2samp(reference, current, method="asymp").statistic
        assert drift.ks_statistic_sorted(np.sort(reference), np.sort(current)) == expected


@pytest.mark.parametrize(("n_ref", "n_cur"), [(300, 200), (10_000, 40), (10_001, 300), (30_000, 25_000)])
@pytest.mark.parametrize("kind", ["continuous", "rounded"])
def test_ks_test_matches_scipy_ks_2samp_below_and_above_the_exact_limit(n_ref: int, n_cur: int, kind: str) -> None:
    reference, current = _pair(np.random.default_rng(n_ref + n_cur), kind, n_ref, n_cur)
    expected = stats.ks_2samp(reference, current)
    statistic, p_value = drift.ks_2samp_sorted(np.sort(reference), np.sort(current))
    assert statistic == float(expected.statistic)
    assert p_value == float(expected.pvalue)


def test_ks_on_large_samples_matches_scipy() -> None:
    """200,000 values per side, one side shifted by 0.01 sd: a p-value far from 0 and 1."""
    rng = np.random.default_rng(7)
    reference, current = rng.normal(size=200_000), rng.normal(0.01, 1.0, size=200_000)
    expected = stats.ks_2samp(reference, current)
    assert drift.ks_2samp_sorted(np.sort(reference), np.sort(current)) == (
        float(expected.statistic),
        float(expected.pvalue),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_psi_from_sorted_values_equals_the_previous_computation(kind: str) -> None:
    rng = np.random.default_rng(10 + KINDS.index(kind))
    for _ in range(200):
        reference, current = _pair(rng, kind, int(rng.integers(1, 500)), int(rng.integers(1, 500)))
        for values in (reference, current):
            values[rng.random(values.size) < rng.choice([0.0, 0.1])] = np.nan
        for bins in (4, 10):
            expected = _previous_psi(reference, current, bins)
            assert drift.population_stability_index(reference, current, bins) == expected
            ref, cur = drift.sorted_sample(reference), drift.sorted_sample(current)
            assert drift.psi_sorted(ref, cur, bins) == expected
            assert ref.missing == np.isnan(reference).sum() and cur.missing == np.isnan(current).sum()


def test_psi_with_all_values_missing_on_one_side() -> None:
    reference, current = np.arange(100, dtype=float), np.full(50, np.nan)
    assert drift.population_stability_index(reference, current, 10) == _previous_psi(reference, current, 10)
    assert drift.ks_2samp_sorted(np.sort(reference), np.empty(0)) == (0.0, 1.0)


def test_density_histograms_equal_numpy_histograms_of_the_clipped_values() -> None:
    rng = np.random.default_rng(3)
    reference = np.append(rng.normal(size=5000), [np.nan, np.inf, -np.inf])
    current = rng.normal(1.0, 2.0, size=3000)
    histograms = drift.density_histograms(drift.sorted_sample(reference), drift.sorted_sample(current), 30)
    assert histograms is not None and histograms.edges.size == 31
    low, high = histograms.edges[0], histograms.edges[-1]
    # The range spans the 0.5-99.5% quantiles of each side (infinite values excluded).
    finite = reference[np.isfinite(reference)]
    assert low == pytest.approx(min(np.quantile(finite, 0.005), np.quantile(current, 0.005)), rel=1e-12)
    assert high == pytest.approx(max(np.quantile(finite, 0.995), np.quantile(current, 0.995)), rel=1e-12)
    for values, density in ((reference, histograms.reference), (current, histograms.current)):
        values = values[~np.isnan(values)]
        expected, _ = np.histogram(np.clip(values, low, high), bins=histograms.edges, density=True)
        assert density is not None
        np.testing.assert_allclose(density, expected, rtol=1e-12)
    empty = drift.sorted_sample(np.full(3, np.nan))
    assert drift.density_histograms(empty, empty, 30) is None
    one_sided = drift.density_histograms(drift.sorted_sample(current), empty, 30)
    assert one_sided is not None and one_sided.current is None


def test_categorical_counts_are_the_same_for_object_and_categorical_values() -> None:
    rng = np.random.default_rng(4)
    labels = np.array(["a", "b", "c", "d", None], dtype=object)
    reference = pd.Series(rng.choice(labels, 2000, p=[0.4, 0.3, 0.2, 0.05, 0.05]))
    current = pd.Series(rng.choice(labels[:3], 1500))
    expected = _previous_counts(reference, current)
    # A categorical may list categories no row holds ("unused"): they are not counted.
    as_categories = [
        pd.Series(pd.Categorical(s, categories=["a", "b", "c", "d", "unused"])) for s in (reference, current)
    ]
    for got in (drift.category_counts(reference, current), drift.category_counts(*as_categories)):
        assert list(got[0]) == list(expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[2], expected[2])
    measured = drift.categorical_drift(*as_categories)
    test = stats.chi2_contingency(np.vstack([expected[1], expected[2]]))
    assert (measured.statistic, measured.p_value) == (float(test.statistic), float(test.pvalue))
    assert measured.psi == drift.psi_from_counts(expected[1], expected[2])


def _table(rows: int, seed: int, shift: float) -> pd.DataFrame:
    """Numeric features with ties, missing values and integers; text features with missing values."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "id": np.arange(rows),
            "continuous": rng.normal(shift, 1.0, rows),
            "integers": rng.integers(0, 6, rows).astype(float),
            "rounded": np.round(rng.normal(shift, 1.0, rows), 1),
            "sparse": np.where(rng.random(rows) < 0.3, np.nan, rng.exponential(1.0 + shift, rows)),
            "counts": rng.poisson(3.0 + shift, rows),
            "plan": rng.choice(np.array(["basic", "plus", "pro", None], dtype=object), rows),
            "region": rng.choice(np.array([f"r{k}" for k in range(20)]), rows),
        }
    )


@pytest.mark.parametrize("rows", [800, 12_000])
def test_monitor_measures_every_feature_as_before(tmp_path: Path, rows: int) -> None:
    """End to end: Parquet in, FeatureDrift out, equal to the previous formulas and SciPy on the whole tables."""
    reference, current = _table(rows, 1, 0.0), _table(rows + 37, 2, 0.2)
    reference.to_parquet(tmp_path / "reference.parquet")
    current.to_parquet(tmp_path / "current.parquet")
    numeric = ["continuous", "integers", "rounded", "sparse", "counts"]
    spec = DatasetSpec(
        source=str(tmp_path / "reference.parquet"),
        entity_column="id",
        timestamp_column="ts",
        label_column="y",
        numeric_features=numeric,
        categorical_features=["plan", "region"],
    )
    result = monitor(
        str(tmp_path / "reference.parquet"),
        str(tmp_path / "current.parquet"),
        spec,
        MonitoringSpec(),
        str(tmp_path / "result.json"),
        str(tmp_path / "report.html"),
    )

    by_name = {f.feature: f for f in result.features}
    for name in numeric:
        ref, cur = reference[name].to_numpy(dtype=float), current[name].to_numpy(dtype=float)
        test = stats.ks_2samp(ref[~np.isnan(ref)], cur[~np.isnan(cur)])
        measured = by_name[name]
        assert (measured.psi, measured.statistic, measured.p_value) == (
            _previous_psi(ref, cur, MonitoringSpec().bins),
            float(test.statistic),
            float(test.pvalue),
        ), name
    for name in ("plan", "region"):
        _, ref_counts, cur_counts = _previous_counts(reference[name], current[name])
        test = stats.chi2_contingency(np.vstack([ref_counts, cur_counts]))
        measured = by_name[name]
        assert (measured.psi, measured.statistic, measured.p_value) == (
            drift.psi_from_counts(ref_counts, cur_counts),
            float(test.statistic),
            float(test.pvalue),
        ), name
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(numeric) + 2


def test_monitor_reads_csv_tables_too(tmp_path: Path) -> None:
    """A CSV table is read whole (no column selection) and measured the same as the Parquet one."""
    reference, current = _table(500, 3, 0.0), _table(400, 4, 0.5)
    spec = DatasetSpec(
        source=str(tmp_path / "reference.csv"),
        entity_column="id",
        timestamp_column="ts",
        label_column="y",
        numeric_features=["continuous", "sparse"],
        categorical_features=["plan"],
    )
    results = []
    for suffix in ("csv", "parquet"):
        for name, frame in (("reference", reference), ("current", current)):
            path = tmp_path / f"{name}.{suffix}"
            if suffix == "csv":
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path)
        results.append(
            monitor(
                str(tmp_path / f"reference.{suffix}"),
                str(tmp_path / f"current.{suffix}"),
                spec,
                MonitoringSpec(),
                str(tmp_path / f"result-{suffix}.json"),
                str(tmp_path / f"report-{suffix}.html"),
            )
        )
    by_format = [{f.feature: (f.psi, f.statistic, f.p_value) for f in r.features} for r in results]
    assert by_format[0]["plan"] == by_format[1]["plan"]
    for name in ("continuous", "sparse"):  # CSV round-trips floats to the last digit only approximately
        assert by_format[0][name] == pytest.approx(by_format[1][name], rel=1e-9)


def test_monitor_reads_files_and_folders_locally_and_in_an_object_store(s3_prefix: str, tmp_path: Path) -> None:
    """The column-selective reader: one file, a folder of parts, local or S3, all measured alike."""
    from components.common import storage
    from components.common.errors import DataError

    reference, current = _table(600, 5, 0.0), _table(500, 6, 0.4)
    spec = DatasetSpec(
        source=str(tmp_path / "reference.parquet"),
        entity_column="id",
        timestamp_column="ts",
        label_column="y",
        numeric_features=["continuous", "sparse", "counts"],
        categorical_features=["plan", "region"],
    )
    results = []
    for root in (str(tmp_path / "local"), s3_prefix):
        storage.write_parquet(storage.join(root, "reference.parquet"), reference)
        # The current window as a folder of Parquet files, as a partitioned snapshot is stored.
        storage.write_parquet(storage.join(root, "current", "part-0.parquet"), current.iloc[:250])
        storage.write_parquet(storage.join(root, "current", "part-1.parquet"), current.iloc[250:])
        results.append(
            monitor(
                storage.join(root, "reference.parquet"),
                storage.join(root, "current"),
                spec,
                MonitoringSpec(),
                str(tmp_path / "result.json"),
                str(tmp_path / "report.html"),
            )
        )
        with pytest.raises(DataError, match="no such file or folder"):
            monitor(
                storage.join(root, "missing.parquet"),
                storage.join(root, "current"),
                spec,
                MonitoringSpec(),
                str(tmp_path / "result.json"),
                str(tmp_path / "report.html"),
            )
    assert results[0] == results[1]
    assert (results[0].rows_reference, results[0].rows_current) == (600, 500)
    by_name = {f.feature: f for f in results[0].features}
    ref, cur = reference["continuous"].to_numpy(), current["continuous"].to_numpy()
    assert by_name["continuous"].psi == _previous_psi(ref, cur, MonitoringSpec().bins)
    assert by_name["continuous"].statistic == float(stats.ks_2samp(ref, cur).statistic)


def test_unreadable_tables_are_named_as_read_table_names_them(tmp_path: Path) -> None:
    from components.common.errors import DataError

    good = tmp_path / "good.parquet"
    _table(50, 1, 0.0).to_parquet(good)
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "garbage.parquet").write_bytes(b"not a parquet file")
    spec = DatasetSpec(
        source=str(good),
        entity_column="id",
        timestamp_column="ts",
        label_column="y",
        numeric_features=["continuous"],
        categorical_features=["plan", "missing_column"],
    )
    outputs = (str(tmp_path / "result.json"), str(tmp_path / "report.html"))
    for name, message in (("empty", "file is empty"), ("garbage", "not a readable parquet table")):
        with pytest.raises(DataError, match=message):
            monitor(str(tmp_path / f"{name}.parquet"), str(good), spec, MonitoringSpec(), *outputs)
    # A categorical feature the table lacks is named, with every column the table has.
    with pytest.raises(
        DataError, match=r"missing feature column\(s\) \['missing_column'\].*found \['id', 'continuous'"
    ):
        monitor(str(good), str(good), spec, MonitoringSpec(), *outputs)
