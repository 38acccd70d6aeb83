"""A Spark standalone cluster from the components image scores ``s3://`` to ``s3://`` through the s3a connector.

The master, the worker and the driver are each a container of the components image, on the host's
network and bound to 127.0.0.1; the S3 store is SeaweedFS on 127.0.0.1. The driver starts as the
Spark operator starts a driver pod: the image's entry point with ``driver --properties-file ...``
and the ScheduledSparkApplication's ``mainApplicationFile`` (``python -m components.batch_predict``).
Only the driver has the store's keys (in its environment, as a pod gets them from a Secret): the executor on the worker
gets them through the job's Hadoop configuration, and the s3a jars are on every container's
classpath because the image has them in pyspark's ``jars/``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components.batch_predict import predictions_path
from components.common import storage
from components.specs import DatasetSpec
from pipelines.spark_application import MAIN_APPLICATION_FILE
from tests.data import ENTITY, TIMESTAMP
from tests.servers import DockerDaemon, free_ports
from tests.unit.test_batch_predict import FEATURES, _fit, _register

pytestmark = [pytest.mark.containers, pytest.mark.server]


def _wait_for_workers(docker: DockerDaemon, master: str, webui_port: int, timeout: float = 120) -> None:
    """Until the master's JSON status lists one live worker (the master container must keep running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = docker.docker("inspect", "--format", "{{.State.Status}}", master).stdout.strip()
        assert state == "running", docker.docker("logs", master, check=False).stderr[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=2) as response:
                if int(json.load(response).get("aliveworkers", 0)) >= 1:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no Spark worker registered:\n{docker.docker('logs', master, check=False).stderr[-3000:]}")


def test_spark_cluster_in_the_image_scores_s3_to_s3(
    docker: DockerDaemon,
    images: dict[str, str],
    s3_prefix: str,
    s3_env: Any,
    churn_frame: pd.DataFrame,
    dataset_spec: DatasetSpec,
    tmp_path: Path,
) -> None:
    image = images["components"]
    # The registry and the driver's arguments, mounted at the same path; the image's user 1000 reads them
    # and takes sqlite's lock.
    shared = tmp_path / "shared"
    shared.mkdir()
    tracking_uri = f"sqlite:///{shared / 'mlflow.db'}"
    model = _fit(churn_frame)
    version = _register(model, tracking_uri, "churn", alias="champion")
    source, output = f"{s3_prefix}/input.parquet", f"{s3_prefix}/predictions"
    storage.write_parquet(source, churn_frame)

    master_port, master_ui, worker_port, worker_ui = free_ports(4)
    master_url = f"spark://127.0.0.1:{master_port}"
    # What spark-submit mounts in a driver pod: the properties naming the master (here the standalone one).
    (shared / "spark.properties").write_text(f"spark.master={master_url}\nspark.driver.host=127.0.0.1\n")
    for path in [shared, *shared.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)

    suffix = f"{os.getpid()}-{master_port}"
    master, worker, driver = (f"ctpipe-test-spark-{role}-{suffix}" for role in ("master", "worker", "driver"))
    # Host network, every daemon on 127.0.0.1 (SPARK_LOCAL_IP covers the ports Spark picks itself).
    common = ["--detach", "--network", "host", "--env", "SPARK_LOCAL_IP=127.0.0.1", "--env", "SPARK_NO_DAEMONIZE=1"]
    try:
        docker.docker(
            "run",
            *common,
            "--name",
            master,
            image,
            "spark-class",
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(master_port), "--webui-port", str(master_ui)),
        )
        docker.docker(
            "run",
            *common,
            "--name",
            worker,
            image,
            "spark-class",
            "org.apache.spark.deploy.worker.Worker",
            *("--host", "127.0.0.1", "--port", str(worker_port), "--webui-port", str(worker_ui)),
            # A work folder relative to the image's WORKDIR (the non-root user's home, writable by it).
            *("--cores", "2", "--memory", "1g", "--work-dir", "spark-work", master_url),
        )
        _wait_for_workers(docker, master, master_ui)

        # The driver alone gets the store's endpoint and keys; `--env NAME` passes the value from the docker
        # CLI's environment, so it is on no command line.
        keys = [arg for name in s3_env.env() for arg in ("--env", name)]
        # The driver as the Spark operator starts it: the image's entry point with "driver", the properties
        # file and the ScheduledSparkApplication's mainApplicationFile (python -m components.batch_predict).
        run = docker.docker(
            "run",
            "--network",
            "host",
            "--name",
            driver,
            *("--env", "SPARK_LOCAL_IP=127.0.0.1", "--env", "SPARK_DRIVER_BIND_ADDRESS=127.0.0.1", *keys),
            *("--volume", f"{shared}:{shared}"),
            image,
            *("driver", "--properties-file", str(shared / "spark.properties")),
            *("--class", "org.apache.spark.deploy.PythonRunner", MAIN_APPLICATION_FILE),
            *("--dataset-json", dataset_spec.model_dump_json(), "--input-path", source, "--output-path", output),
            *("--model-uri", "models:/churn@champion", "--tracking-uri", tracking_uri),
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, f"driver failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        assert lines, run.stdout[-3000:] + run.stderr[-3000:]
        result = json.loads(lines[-1])

        # The executor ran on the worker's container, which never had the keys.
        worker_logs = docker.docker("logs", worker).stderr
        assert "Asked to launch executor" in worker_logs, worker_logs[-3000:]
        env = docker.docker("inspect", "--format", "{{json .Config.Env}}", worker).stdout
        assert "AWS_" not in env
        logs = run.stdout + run.stderr + worker_logs + docker.docker("logs", master).stderr
        assert s3_env.secret_key not in logs
    finally:
        for name in (driver, worker, master):
            docker.docker("rm", "--force", name, check=False)

    # Read back from the store: the committed run holds every row, scored exactly as the model here scores it.
    assert result["model_version"] == version
    assert result["data_path"] == predictions_path(output)
    scored = storage.read_table(predictions_path(output)).sort_values([ENTITY, TIMESTAMP], kind="stable")
    frame = churn_frame.sort_values([ENTITY, TIMESTAMP], kind="stable")
    assert result["rows"] == len(scored) == len(frame)
    np.testing.assert_array_equal(scored[ENTITY].to_numpy(), frame[ENTITY].to_numpy())
    np.testing.assert_array_equal(scored["score"].to_numpy(), model.predict_proba(frame[FEATURES])[:, 1])
    np.testing.assert_array_equal(scored["prediction"].to_numpy(), model.predict(frame[FEATURES]))
