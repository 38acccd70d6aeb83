"""A pipeline that is not ctpipe's loads ctpipe's ingest from its YAML and runs it in the components image."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests import other_team
from tests.servers import DockerDaemon

pytestmark = [pytest.mark.containers, pytest.mark.server]

INGEST_YAML = Path(__file__).resolve().parents[2] / "components" / "yaml" / "ingest.yaml"


def test_other_teams_pipeline_runs_ctpipe_ingest_from_its_yaml(
    docker: DockerDaemon, images: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kfp.local's DockerRunner runs every task of tests/other_team.py's pipeline in a container.

    The team's own two steps run in the components image too, only because it is the one image
    with Python, kfp and pandas that this offline daemon has; ctpipe's step runs in the image
    its committed YAML names, which must be the one the tier just built.
    """
    from kfp import local

    from components.ingest import ingest
    from components.specs import DatasetSpec

    executor = yaml.safe_load(INGEST_YAML.read_text())["deploymentSpec"]["executors"]["exec-ingest"]
    assert executor["container"]["image"] == images["components"]

    # DockerRunner mounts only the pipeline root (at the same path); the image's non-root user
    # creates each task's folder in it, and the tasks pass the CSV and the snapshot through it.
    root = tmp_path / "pipeline-root"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("DOCKER_HOST", docker.host)
    local.init(
        runner=local.DockerRunner(network_mode="none"),
        pipeline_root=str(root),
        cache_root=str(tmp_path / "cache"),
        enable_caching=False,
        raise_on_error=True,
    )
    run = other_team.build(INGEST_YAML, image=images["components"])()

    source = tmp_path / "orders.csv"
    source.write_text(other_team.ORDERS_CSV)
    expected = ingest(
        str(source),
        DatasetSpec.model_validate(other_team.ORDERS_DATASET),
        str(tmp_path / "host.parquet"),
        other_team.WINDOW_START,
        other_team.WINDOW_END,
    )
    assert run.outputs["rows"] == other_team.ROWS_IN_WINDOW == expected.rows
    assert run.outputs["content_hash"] == expected.content_hash
    assert run.outputs["columns"] == ",".join(pd.read_csv(source).columns)

    # The snapshot the container wrote is the one ctpipe writes on the host, and the image's user wrote it.
    (snapshot,) = root.glob("*/ingest/snapshot")
    pd.testing.assert_frame_equal(pd.read_parquet(snapshot), pd.read_parquet(tmp_path / "host.parquet"))
    assert snapshot.stat().st_uid == 1000
