"""Batch scoring on a real Spark standalone cluster (a master and two workers on 127.0.0.1).

Its own module: a process has one SparkContext, so no local session may be active here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.batch_predict import batch_predict
from components.specs import DatasetSpec
from tests.data import ENTITY, TIMESTAMP
from tests.servers import SparkStandaloneCluster
from tests.unit.test_batch_predict import _fit, _register

pytestmark = pytest.mark.server


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkStandaloneCluster]:
    """A Spark standalone master with two one-core workers, stopped after the session."""
    cluster = SparkStandaloneCluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1)
    yield cluster
    cluster.stop()


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path).drop(columns=["scored_at"])
    frame["date"] = frame["date"].astype(str)
    return frame.sort_values([ENTITY, TIMESTAMP], kind="stable").reset_index(drop=True)


def test_standalone_cluster_scores_exactly_like_local_mode(
    spark_cluster: SparkStandaloneCluster,
    churn_frame: pd.DataFrame,
    churn_data: tuple[Path, Any],
    dataset_spec: DatasetSpec,
    tmp_path: Path,
) -> None:
    from pyspark.sql import SparkSession

    assert SparkSession.getActiveSession() is None  # batch_predict must start its own session on the cluster
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = _register(_fit(churn_frame), uri, "churn", alias="champion")
    source = str(churn_data[0])

    local = batch_predict(source, dataset_spec, "models:/churn@champion", uri, str(tmp_path / "local"), "local[2]")
    remote = batch_predict(
        source, dataset_spec, "models:/churn@champion", uri, str(tmp_path / "cluster"), spark_cluster.url
    )

    assert remote.model_version == local.model_version == version
    assert (remote.rows, remote.bad_rows, remote.partitions) == (local.rows, local.bad_rows, local.partitions)
    assert remote.rows == len(churn_frame)
    # Row for row, every column equal (the scoring time differs by construction).
    pd.testing.assert_frame_equal(_read(tmp_path / "cluster"), _read(tmp_path / "local"), check_exact=True)
    # The work ran in executors on both workers, not in the driver.
    root = Path(spark_cluster.processes[0].log_path).parent
    for worker in ("worker-0", "worker-1"):
        assert list((root / worker).glob("app-*/*/stderr")), f"no executor ran on {worker}"
