"""Batch scoring with a real local[2] Spark session and a model registered in a sqlite MLflow."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components import batch_predict as batch_predict_module
from components.batch_predict import REJECT_REASON, REJECTED_DIR, batch_predict
from components.common import tracking
from components.common.errors import DataError
from components.specs import DatasetSpec
from tests.data import CATEGORICAL_FEATURES, ENTITY, NUMERIC_FEATURES, TIMESTAMP

FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES
POISON = -999.0


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.appName("ctpipe-test-batch-predict")
        .master("local[2]")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _fit(frame: pd.DataFrame) -> Any:
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    encoder = make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), CATEGORICAL_FEATURES), remainder="passthrough"
    )
    model = make_pipeline(encoder, HistGradientBoostingClassifier(max_iter=30, random_state=0))
    return model.fit(frame[FEATURES], frame["churned"])


def _register(model: Any, tracking_uri: str, name: str, alias: str | None = None) -> str:
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    tracking.ensure_experiment("batch-predict-tests", tracking_uri)
    with mlflow.start_run() as run:
        info = tracking.log_sklearn_model(model, tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, info.model_uri, run.info.run_id, model_id=info.model_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, churn_frame: pd.DataFrame) -> dict[str, Any]:
    """A champion model and a model that raises on a poisoned row, registered in one sqlite MLflow."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    model = _fit(churn_frame[churn_frame[TIMESTAMP] < churn_frame[TIMESTAMP].min() + pd.Timedelta(days=7)])

    class Poisoned:
        """Delegates to the real model but fails on a row with the poison value (pickled by value)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.classes_ = inner.classes_
            self.feature_names_in_ = inner.feature_names_in_

        def _check(self, frame: pd.DataFrame) -> None:
            if (frame["marketing_score"] == POISON).any():
                raise ValueError("poisoned row reached the model")

        def predict(self, frame: pd.DataFrame) -> Any:
            self._check(frame)
            return self.inner.predict(frame)

        def predict_proba(self, frame: pd.DataFrame) -> Any:
            self._check(frame)
            return self.inner.predict_proba(frame)

    champion = _register(model, uri, "churn", alias="champion")
    poisoned = _register(Poisoned(model), uri, "churn")
    return {"uri": uri, "model": model, "champion": champion, "poisoned": poisoned}


def _read_output(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values([ENTITY, TIMESTAMP], kind="stable").reset_index(drop=True)


def test_scores_equal_model_and_output_is_partitioned_by_date(
    spark: Any, registry: dict[str, Any], churn_data: tuple[Path, Any], dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    source = churn_data[0]
    out = tmp_path / "predictions"
    result = batch_predict(str(source), dataset_spec, "models:/churn@champion", registry["uri"], str(out), spark=spark)

    frame = pd.read_parquet(source).sort_values([ENTITY, TIMESTAMP], kind="stable").reset_index(drop=True)
    scored = _read_output(out)
    assert result.rows == len(frame) == len(scored)
    assert result.bad_rows == 0
    assert result.model_version == registry["champion"]
    assert (scored[ENTITY].to_numpy() == frame[ENTITY].to_numpy()).all()
    assert (scored[TIMESTAMP] == frame[TIMESTAMP].dt.floor("us")).all()
    # Exactly the same numbers as the model in this process, row for row.
    np.testing.assert_array_equal(scored["score"].to_numpy(), registry["model"].predict_proba(frame[FEATURES])[:, 1])
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), registry["model"].predict(frame[FEATURES]))
    assert set(scored["model_name"]) == {"churn"}
    assert set(scored["model_version"]) == {registry["champion"]}
    assert scored["scored_at"].nunique() == 1

    dates = sorted(frame[TIMESTAMP].dt.strftime("%Y-%m-%d").unique())
    assert result.partitions == dates
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"date={d}" for d in dates]
    assert (scored["date"].astype(str) == frame[TIMESTAMP].dt.strftime("%Y-%m-%d")).all()
    assert not (out / REJECTED_DIR).exists()


def test_rerun_replaces_output_without_duplicates(
    spark: Any, registry: dict[str, Any], churn_data: tuple[Path, Any], dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    out = tmp_path / "predictions"
    uri = f"models:/churn/{registry['champion']}"
    first = batch_predict(str(churn_data[0]), dataset_spec, uri, registry["uri"], str(out), spark=spark)
    stamp = _read_output(out)["scored_at"].iloc[0]
    second = batch_predict(str(churn_data[0]), dataset_spec, uri, registry["uri"], str(out), spark=spark)

    scored = _read_output(out)
    assert first.rows == second.rows == len(scored)
    assert not scored.duplicated([ENTITY, TIMESTAMP]).any()
    assert scored["scored_at"].nunique() == 1 and scored["scored_at"].iloc[0] >= stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions"]  # no temporary folders left behind


def test_missing_feature_column_is_named_before_spark_starts(
    registry: dict[str, Any], churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    source = tmp_path / "no_plan.parquet"
    churn_frame.drop(columns=["plan", "support_calls"]).to_parquet(source)
    with pytest.raises(DataError, match=r"no_plan\.parquet.*missing column\(s\) \['support_calls', 'plan'\]"):
        # No session passed and none active would start Spark; the check fails first.
        batch_predict(str(source), dataset_spec, "models:/churn@champion", registry["uri"], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_rows_are_counted_and_written_aside(
    spark: Any, registry: dict[str, Any], churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = churn_frame.copy()
    frame.loc[[0, 1], "monthly_charges"] = np.nan
    frame.loc[3, "tenure_months"] = np.inf
    frame.loc[[4, 5], "plan"] = None
    frame.loc[5, "region"] = None  # two problems in one row still count once
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # pandas would store NaN as null; keep rows 0 and 1 as real NaN and make row 2 a null.
    charges = pa.array(frame["monthly_charges"].to_numpy(), mask=(frame.index == 2), from_pandas=False)
    table = table.set_column(table.schema.get_field_index("monthly_charges"), "monthly_charges", charges)
    source = tmp_path / "dirty.parquet"
    pq.write_table(table, source)

    out = tmp_path / "predictions"
    result = batch_predict(str(source), dataset_spec, "models:/churn@champion", registry["uri"], str(out), spark=spark)

    assert result.bad_rows == 6
    assert result.rows == len(frame) - 6 == len(pd.read_parquet(out))
    rejected = pd.read_parquet(out / REJECTED_DIR).sort_values(ENTITY)
    assert len(rejected) == 6
    reasons = " | ".join(rejected[REJECT_REASON])
    assert reasons.count("monthly_charges is NaN") == 2
    assert reasons.count("monthly_charges is null") == 1
    assert "tenure_months is infinite" in reasons
    assert "plan is null; region is null" in reasons
    # None of the rejected rows was scored.
    keys = set(zip(frame.loc[:5, ENTITY], frame.loc[:5, TIMESTAMP].dt.floor("us"), strict=True))
    scored = pd.read_parquet(out)
    assert not keys & set(zip(scored[ENTITY], scored[TIMESTAMP], strict=True))


def test_csv_with_non_numeric_value_is_rejected(
    spark: Any, registry: dict[str, Any], churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    frame = churn_frame.head(200).astype({"support_calls": object})
    frame.loc[7, "support_calls"] = "three"
    source = tmp_path / "window.csv"
    frame.to_csv(source, index=False)

    out = tmp_path / "predictions"
    result = batch_predict(str(source), dataset_spec, "models:/churn@champion", registry["uri"], str(out), spark=spark)

    assert (result.rows, result.bad_rows) == (199, 1)
    rejected = pd.read_parquet(out / REJECTED_DIR)
    assert rejected[REJECT_REASON].tolist() == ["support_calls is not numeric"]
    expected = registry["model"].predict_proba(frame.drop(index=7).astype({"support_calls": float})[FEATURES])[:, 1]
    scored = pd.read_parquet(out).sort_values([TIMESTAMP, ENTITY])
    np.testing.assert_allclose(scored["score"].to_numpy(), expected, rtol=0, atol=1e-12)


def test_failed_job_leaves_previous_output_and_no_partial_output(
    spark: Any, registry: dict[str, Any], churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    frame = churn_frame.copy()
    frame.loc[len(frame) - 1, "marketing_score"] = POISON  # the last row, in the last date partition
    source = tmp_path / "poisoned.parquet"
    frame.to_parquet(source)
    poisoned_uri = f"models:/churn/{registry['poisoned']}"

    fresh = tmp_path / "fresh"
    with pytest.raises(Exception, match="poisoned row reached the model"):
        batch_predict(str(source), dataset_spec, poisoned_uri, registry["uri"], str(fresh), spark=spark)
    assert not fresh.exists()

    existing = tmp_path / "existing"
    batch_predict(str(source), dataset_spec, "models:/churn@champion", registry["uri"], str(existing), spark=spark)
    before = sorted((p.relative_to(existing), p.stat().st_mtime_ns) for p in existing.rglob("*"))
    with pytest.raises(Exception, match="poisoned row reached the model"):
        batch_predict(str(source), dataset_spec, poisoned_uri, registry["uri"], str(existing), spark=spark)
    assert sorted((p.relative_to(existing), p.stat().st_mtime_ns) for p in existing.rglob("*")) == before
    assert set(_read_output(existing)["model_version"]) == {registry["champion"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "poisoned.parquet"]


def test_model_is_loaded_once_per_process_not_per_batch(
    spark: Any,
    registry: dict[str, Any],
    churn_data: tuple[Path, Any],
    dataset_spec: DatasetSpec,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = tmp_path / "loads.txt"

    class Counting:
        """Delegates to the real model and appends the loading process id to a file when unpickled."""

        def __init__(self, inner: Any, log: str) -> None:
            self.inner, self.log = inner, log
            self.classes_ = inner.classes_
            self.feature_names_in_ = inner.feature_names_in_

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            with open(self.log, "a") as handle:
                handle.write(f"{os.getpid()}\n")

        def predict(self, frame: pd.DataFrame) -> Any:
            return self.inner.predict(frame)

        def predict_proba(self, frame: pd.DataFrame) -> Any:
            return self.inner.predict_proba(frame)

    version = _register(Counting(registry["model"], str(loads)), registry["uri"], "churn")
    loads.unlink(missing_ok=True)
    # 1800 rows in Arrow batches of 100: at least 18 batches over the two worker processes.
    monkeypatch.setitem(batch_predict_module._SESSION_CONF, "spark.sql.execution.arrow.maxRecordsPerBatch", "100")
    result = batch_predict(
        str(churn_data[0]),
        dataset_spec,
        f"models:/churn/{version}",
        registry["uri"],
        str(tmp_path / "out"),
        spark=spark,
    )

    assert result.rows == 1800
    pids = loads.read_text().split()
    assert len(pids) == len(set(pids))  # no process loaded the model twice
    assert str(os.getpid()) in pids  # the driver checks the model once
    assert 1 <= len(pids) - 1 <= 2  # and each local[2] worker process loads it once, for 18+ batches


def test_pinned_version_may_be_given_as_int(
    spark: Any, registry: dict[str, Any], churn_data: tuple[Path, Any], dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    """MLflow's client returns versions as int, KFP passes them as str: both pin the same version."""
    uri = f"models:/churn/{registry['champion']}"
    out = tmp_path / "predictions"
    result = batch_predict(
        str(churn_data[0]),
        dataset_spec,
        uri,
        registry["uri"],
        str(out),
        model_version=int(registry["champion"]),
        spark=spark,
    )
    assert result.model_version == str(registry["champion"])


HANG = -777.0


def test_sigkill_midway_leaves_no_partial_output_and_rerun_writes_one_complete_output(
    spark: Any, registry: dict[str, Any], churn_frame: pd.DataFrame, dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import time

    marker = tmp_path / "hanging"

    class Hanging:
        """Delegates to the real model, but a batch holding the HANG row blocks (pickled by value)."""

        def __init__(self, inner: Any, marker: str) -> None:
            self.inner, self.marker = inner, marker
            self.classes_ = inner.classes_
            self.feature_names_in_ = inner.feature_names_in_

        def predict(self, frame: pd.DataFrame) -> Any:
            return self.inner.predict(frame)

        def predict_proba(self, frame: pd.DataFrame) -> Any:
            if (frame["marketing_score"] == HANG).any():
                Path(self.marker).touch()
                time.sleep(3600)
            return self.inner.predict_proba(frame)

    frame = churn_frame.copy()
    frame.loc[len(frame) // 2, "marketing_score"] = HANG
    source = tmp_path / "window.parquet"
    frame.to_parquet(source)
    hanging = _register(Hanging(registry["model"], str(marker)), registry["uri"], "churn")
    out = tmp_path / "scored" / "predictions"
    champion = f"models:/churn/{registry['champion']}"

    def kill_midway() -> None:
        """Score in a child process; SIGKILL its process group (driver, JVM, workers) while a task hangs."""
        script = (
            "import sys; from components.batch_predict import batch_predict; from tests.data import churn_spec; "
            "batch_predict(sys.argv[1], churn_spec(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], 'local[2]')"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(source), f"models:/churn/{hanging}", registry["uri"], str(out)],
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Midway: one task blocks in the model while the other task's part files are on disk.
            deadline = time.monotonic() + 300
            while not (marker.exists() and list(out.parent.glob(f".{out.name}.*/{out.name}/**/part-*"))):
                assert child.poll() is None, f"scoring exited early with {child.returncode}"
                assert time.monotonic() < deadline, "the job never reached the midway point"
                time.sleep(0.1)
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()

    # A fresh output: nothing visible after the kill, only a hidden temporary folder.
    kill_midway()
    assert list(out.parent.glob(f".{out.name}.*/{out.name}/**/part-*"))  # it was killed with files half-committed
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if not p.name.startswith(".")] == []
    with pytest.raises(FileNotFoundError):
        pd.read_parquet(out)

    # The re-run writes exactly one complete output and clears the killed job's leftovers.
    first = batch_predict(str(source), dataset_spec, champion, registry["uri"], str(out), spark=spark)
    scored = _read_output(out)
    assert first.rows == len(frame) == len(scored)
    assert not scored.duplicated([ENTITY, TIMESTAMP]).any()
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions"]

    # Re-running the same window replaces the output (a failed job over an existing output is
    # test_failed_job_leaves_previous_output_and_no_partial_output).
    again = batch_predict(str(source), dataset_spec, champion, registry["uri"], str(out), spark=spark)
    rescored = _read_output(out)
    assert again.rows == len(rescored) == len(frame)  # replaced, not appended
    assert not rescored.duplicated([ENTITY, TIMESTAMP]).any()
    assert rescored["scored_at"].nunique() == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions"]


def test_reject_reasons_quote_awkward_column_names(spark: Any) -> None:
    """The reasons are one SQL expression: names with quotes, backticks or spaces must stay names."""
    from pyspark.sql import functions as F

    spec = DatasetSpec(
        source="unused.parquet",
        entity_column="id",
        timestamp_column="seen at",
        label_column="y",
        numeric_features=["it's", "a`b"],
        categorical_features=["c\\d"],
    )
    rows = [
        (1, "2026-01-01", 1.0, "2", "x"),
        (2, "not a time", None, "abc", None),
        (3, "2026-01-01", float("inf"), "NaN", "x"),
    ]
    frame = spark.createDataFrame(rows, ["id", "seen at", "it's", "a`b", "c\\d"])
    reasons = [
        row[0] for row in frame.select(F.expr(batch_predict_module._reject_reason(spec))).orderBy(F.col("id")).collect()
    ]
    assert reasons == [
        "",
        "seen at is not a timestamp; it's is null; a`b is not numeric; c\\d is null",
        "it's is infinite; a`b is NaN",
    ]


def test_a_multiclass_model_writes_the_class_its_probability_and_one_column_per_class(
    spark: Any, multiclass_data: tuple[Path, Any], tmp_path: Path
) -> None:
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from components.common.multiclass import probability_columns
    from tests.data import MULTICLASS_CATEGORICAL, MULTICLASS_NUMERIC, SEGMENT, SEGMENTS, multiclass_spec

    source = multiclass_data[0]
    frame = pd.read_parquet(source).sort_values([ENTITY, TIMESTAMP], kind="stable").reset_index(drop=True)
    features = MULTICLASS_NUMERIC + MULTICLASS_CATEGORICAL
    encoder = make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), MULTICLASS_CATEGORICAL), (StandardScaler(), MULTICLASS_NUMERIC)
    )
    model = make_pipeline(encoder, LogisticRegression(max_iter=1000)).fit(frame[features], frame[SEGMENT])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _register(model, uri, "segments", alias="champion")
    out = tmp_path / "predictions"

    result = batch_predict(
        str(source), multiclass_spec(source), "models:/segments@champion", uri, str(out), spark=spark
    )

    scored = _read_output(out)
    names = probability_columns(SEGMENTS)
    assert result.rows == len(frame) == len(scored)
    assert list(scored.columns[:7]) == [ENTITY, TIMESTAMP, "prediction", "score", *names[:3]]
    expected = model.predict_proba(frame[features])
    np.testing.assert_allclose(scored[names].to_numpy(), expected, rtol=0, atol=1e-12)
    assert scored["prediction"].tolist() == model.predict(frame[features]).tolist()
    np.testing.assert_allclose(scored["score"].to_numpy(), expected.max(axis=1), rtol=0, atol=1e-12)
