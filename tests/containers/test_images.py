"""Both images, built from the Debian base with no network, really run: a KFP component and the predictor."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from pipelines.config import CtpipeConfig, package_version
from tests.containers.conftest import CA_MARKER
from tests.data import Window, churn_spec
from tests.helpers import free_port
from tests.servers import DockerDaemon

pytestmark = [pytest.mark.containers, pytest.mark.server]


def _inspect(docker: DockerDaemon, tag: str) -> dict:
    return json.loads(docker.docker("image", "inspect", tag).stdout)[0]


def _python(docker: DockerDaemon, tag: str, code: str) -> str:
    """Run ``code`` as a script file in the image; its stdout.

    Not ``python -c``: pyspark 4.3 takes a main module without ``__file__`` for a doctest run and
    exits 0 silently when grpc_status is missing (importing great_expectations does that).
    """
    script = f"cat > /tmp/check.py <<'PY'\n{code}\nPY\npython /tmp/check.py"
    return docker.docker("run", "--rm", "--network=none", "--entrypoint", "sh", tag, "-c", script).stdout.strip()


def test_images_are_tagged_from_config_labelled_and_non_root(
    docker: DockerDaemon, images: dict[str, str], config: CtpipeConfig, build_commit: str
) -> None:
    assert images == {"components": config.infra.images.components, "serving": config.infra.images.serving}
    for kind, tag in images.items():
        image = _inspect(docker, tag)
        labels = image["Config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == package_version()
        assert labels["org.opencontainers.image.revision"] == build_commit != "unknown"
        assert labels["org.opencontainers.image.title"] == f"ctpipe-{kind}"
        assert image["Config"]["User"] == "1000:1000"
        whoami = docker.docker("run", "--rm", "--entrypoint", "id", tag, "-u").stdout.strip()
        assert whoami == "1000"
    assert _inspect(docker, images["serving"])["Config"]["Healthcheck"]["Test"][0] == "CMD"
    # The CronJob's `ctpipe submit` runs in the components image: it names uploads after this commit.
    assert f"CTPIPE_VERSION={build_commit}" in _inspect(docker, images["components"])["Config"]["Env"]

    # The components image has Spark with its Java; the serving image leaves Spark and the
    # training stack out (Java is there only because this test base has it for both images).
    spark = _python(
        docker,
        images["components"],
        "import pyspark, kfp, feast, great_expectations, kserve, mlflow\nprint(pyspark.__version__)",
    )
    assert spark.startswith("4.3")
    assert "openjdk" in docker.docker("run", "--rm", images["components"], "java", "-version").stderr.lower()
    lean = _python(
        docker,
        images["serving"],
        "import importlib.util as u\nimport kserve, mlflow, sklearn, feast, redis, serving.server\n"
        "print([m for m in ('pyspark', 'great_expectations', 'kfp') if u.find_spec(m)])",
    )
    assert lean == "[]"  # Feast (entity-id requests) yes; Spark, GX and kfp never


def test_build_secret_never_lands_in_an_image(docker: DockerDaemon, images: dict[str, str]) -> None:
    for tag in images.values():
        history = docker.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
        assert CA_MARKER not in history and "proxy-ca.pem" not in history
        # As root only to read every file; grep exits 1 when nothing matched (0 found, 2 error).
        probe = docker.docker(
            "run",
            "--rm",
            "--user",
            "0",
            "--entrypoint",
            "grep",
            tag,
            "-rqs",
            CA_MARKER,
            "/tmp",
            "/run",
            "/etc",
            "/home",
            check=False,
        )
        assert probe.returncode == 1, f"{tag}: grep exit {probe.returncode} (0: the CA bundle is in the image)"


def test_component_runs_in_its_image_with_the_kfp_docker_runner(
    docker: DockerDaemon,
    images: dict[str, str],
    config: CtpipeConfig,
    churn_data: tuple[Path, list[Window]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kfp.local runs the compiled ingest component in the components image, exactly as a cluster would."""
    from kfp import local

    from components.ingest import ingest
    from pipelines.kfp_components import build_components

    # DockerRunner mounts only the pipeline root (at the same path), so the source lives there,
    # and the image's non-root user must be able to write its outputs into it.
    root = tmp_path / "pipeline-root"
    (root / "data").mkdir(parents=True)
    source = root / "data" / "churn.parquet"
    source.write_bytes(churn_data[0].read_bytes())
    for path in (root, root / "data"):
        path.chmod(0o777)
    source.chmod(0o644)
    window = churn_data[1][0]
    spec = churn_spec(source)

    monkeypatch.setenv("DOCKER_HOST", docker.host)
    local.init(runner=local.DockerRunner(network_mode="none"), pipeline_root=str(root))
    ops = build_components(config.infra.images.components)
    task = ops.ingest(
        source=str(source),
        source_fingerprint="containers-test",
        dataset=spec.model_dump_json(),
        window_start=window.start,
        window_end=window.end,
    )
    snapshot = Path(task.outputs["snapshot"].path)
    in_container = pd.read_parquet(snapshot)

    expected = ingest(str(source), spec, str(tmp_path / "host.parquet"), window.start, window.end)
    assert task.outputs["Output"] == expected.content_hash
    assert len(in_container) == window.rows == expected.rows
    pd.testing.assert_frame_equal(in_container, pd.read_parquet(tmp_path / "host.parquet"))
    assert task.outputs["snapshot"].metadata["source_fingerprint"] == "containers-test"
    assert snapshot.stat().st_uid == 1000  # written by the image's user, not root


def test_serving_image_answers_v2_infer(
    docker: DockerDaemon, images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The predictor image serves a registered model from a mounted sqlite MLflow, read-only root, no caps."""
    from tests.serving_helpers import build_registry, columnar

    folder = tmp_path_factory.mktemp("registry")
    registry = build_registry(folder)
    registry.create("churn-model", ["a"], {"champion": 1})
    for path in [folder, *folder.rglob("*")]:  # the container's user 1000 reads and locks the db
        path.chmod(0o777 if path.is_dir() else 0o666)

    port = free_port()
    name = f"ctpipe-test-serving-{os.getpid()}"
    network = ["--publish", f"127.0.0.1:{port}:8080"] if docker.bridge else ["--network", "host"]
    server_args = [] if docker.bridge else ["--host", "127.0.0.1", "--port", str(port)]
    docker.docker(
        "run",
        "--detach",
        "--name",
        name,
        *network,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--health-interval",
        "1s",
        "--volume",
        f"{folder}:{folder}",
        "--env",
        f"MLFLOW_TRACKING_URI={registry.tracking_uri}",
        "--env",
        "HOME=/tmp",
        images["serving"],
        "--model-name",
        "churn-model",
        "--poll-seconds",
        "5",
        *server_args,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and not ready:
            state = docker.docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", docker.docker("logs", name, check=False).stderr[-3000:]
            try:
                ready = requests.get(f"{base}/v2/models/churn-model/ready", timeout=2).status_code == 200
            except requests.RequestException:
                time.sleep(0.5)
        assert ready, docker.docker("logs", name, check=False).stderr[-3000:]

        rows = registry.rows.head(5)
        response = requests.post(f"{base}/v2/models/churn-model/infer", json=columnar(rows), timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "1" and body["outputs"][0]["shape"] == [5]
        np.testing.assert_allclose(body["outputs"][0]["data"], registry.expected("a", rows), rtol=1e-12)

        deadline = time.monotonic() + 30  # the image's HEALTHCHECK, run by docker every second here
        health = ""
        while time.monotonic() < deadline and health != "healthy":
            health = docker.docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            time.sleep(0.5)
        assert health == "healthy"
    finally:
        docker.docker("rm", "--force", name, check=False)
