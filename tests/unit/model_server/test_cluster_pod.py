"""The serving container as a cluster InferenceService starts it, writing its inference log to S3.

The command, args and env come from :func:`render_inference_service` (not written by hand); only
the bind address (``0.0.0.0`` -> 127.0.0.1) and the port (8080 -> a free one) are replaced, and
the object store's keys come from the environment, as the Secret named in ``envFrom`` gives them
to the pod. The store is the real SeaweedFS server of ``s3_server``; the registry is the model
server tests' sqlite MLflow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from components.serving_spec import ServingSpec
from tests.helpers import ROOT, free_port, kserve_crd_validator
from tests.serving_helpers import Registry, columnar, instances, wait_until

SECRET = "ctpipe-object-store"


def _pod_command(container: dict[str, Any], port: int) -> list[str]:
    """The container's command and args with only the host and port replaced."""
    args = list(container["args"])
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    command = list(container["command"])
    assert command[0] == "python"
    return [sys.executable, *command[1:], *args]


def _pod_env(container: dict[str, Any], secret_env: dict[str, str], scratch: Path) -> dict[str, str]:
    """The container's env plus the Secret's keys; the pod's /tmp emptyDir becomes ``scratch``."""
    env = {item["name"]: item["value"] for item in container["env"]}
    env["HOME"] = str(scratch)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),  # the image installs ctpipe; here the checkout is the package
        "TMPDIR": str(scratch),
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
        **env,
        **secret_env,
    }


@pytest.mark.server
def test_the_rendered_pod_writes_its_inference_log_to_the_object_store(
    registry: Registry, s3_prefix: str, s3_env: Any, tmp_path: Path
) -> None:
    from components.common import storage
    from components.common.inference_log import read_window
    from components.common.kserve.manifests import render_inference_service

    started = time.perf_counter()
    name = "podlog"
    registry.create(name, ["a", "b"], {"champion": 1, "challenger": 2})
    log_dir = f"{s3_prefix}/inference_log"
    serving = ServingSpec(model_name=name, deployment_mode="Standard", inference_log_dir=log_dir)
    # Standard mode with a canary: spec.predictor keeps version 1, spec.canary serves version 2,
    # two pods appending to one prefix.
    manifest = render_inference_service(
        serving, "ctpipe/serving:test", "2", registry.tracking_uri, 20, credentials_secret=SECRET, stable_version="1"
    )
    errors = [f"{list(e.path)}: {e.message}" for e in kserve_crd_validator().iter_errors(manifest)]
    assert not errors, "\n".join(errors)
    rendered = yaml.safe_dump(manifest)
    assert s3_env.secret_key not in rendered and s3_env.access_key not in rendered
    containers = {
        "1": manifest["spec"]["predictor"]["containers"][0],
        "2": manifest["spec"]["canary"][0]["predictor"]["containers"][0],
    }
    for container in containers.values():
        assert container["envFrom"] == [{"secretRef": {"name": SECRET}}]
        args = container["args"]
        assert args[args.index("--inference-log-dir") + 1] == log_dir

    # What the Secret gives the pod (and nothing from a developer's ~/.aws).
    secret_env = {
        **s3_env.env(),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    pods: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    try:
        for version, container in containers.items():
            port = free_port()
            scratch = tmp_path / f"pod{version}"
            scratch.mkdir()
            output = tmp_path / f"pod{version}.log"
            with open(output, "wb") as out:
                proc = subprocess.Popen(
                    _pod_command(container, port),
                    env=_pod_env(container, secret_env, scratch),
                    cwd=scratch,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            pods[version] = (proc, f"http://127.0.0.1:{port}", output)

        for version, (proc, endpoint, output) in pods.items():
            ready = endpoint + containers[version]["readinessProbe"]["httpGet"]["path"]
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"pod {version} exited:\n{output.read_text(errors='replace')[-3000:]}"
                try:
                    if requests.get(ready, timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, f"pod {version} not ready:\n{output.read_text()[-3000:]}"
                time.sleep(0.1)
        ready_seconds = time.perf_counter() - started

        session = requests.Session()
        rows = registry.rows.head(3)
        sent: dict[str, str] = {}  # request id -> version that must have answered
        for version, (_, endpoint, _) in pods.items():
            for i in range(2):
                answer = session.post(
                    f"{endpoint}/v1/models/{name}:predict", json={"instances": instances(rows)}, timeout=10
                ).json()
                assert answer["model_version"] == version
                sent[answer["request_id"]] = version
                request_id = f"v2-{version}-{i}"
                response = session.post(
                    f"{endpoint}/v2/models/{name}/infer", json={"id": request_id, **columnar(rows)}, timeout=10
                )
                assert response.status_code == 200, response.text
                assert response.json()["id"] == request_id
                sent[request_id] = version

        # Each pod follows its alias, so a promotion reaches the champion pod without a restart or a new manifest.
        aliases = {"1": "champion", "2": "challenger"}
        for version, (_, endpoint, _) in pods.items():
            answer = session.post(
                f"{endpoint}/v1/models/{name}:predict", json={"instances": instances(rows)}, timeout=10
            ).json()
            assert (answer["model_version"], answer["model_alias"]) == (version, aliases[version])
            sent[answer["request_id"]] = version
        registry.client().set_registered_model_alias(name, "champion", "2")
        registry.client().delete_registered_model_alias(name, "challenger")
        champion_pod = pods["1"][1]

        def promoted() -> bool:
            answer = session.post(
                f"{champion_pod}/v1/models/{name}:predict", json={"instances": instances(rows)}, timeout=10
            ).json()
            sent[answer["request_id"]] = answer["model_version"]
            return bool(answer["model_version"] == "2")

        promoted_after = wait_until(promoted, 30, "the champion pod serves the promoted version 2")
        # The challenger pod keeps its last version when its alias goes away: it never stops answering.
        answer = session.post(
            f"{pods['2'][1]}/v1/models/{name}:predict", json={"instances": instances(rows)}, timeout=10
        ).json()
        assert answer["model_version"] == "2"
        sent[answer["request_id"]] = "2"

        for proc, _, _ in pods.values():  # what the kubelet does: SIGTERM, then the grace period
            proc.send_signal(signal.SIGTERM)
        for proc, _, output in pods.values():
            assert proc.wait(timeout=20) == 0, output.read_text(errors="replace")[-3000:]
    finally:
        for proc, _, _ in pods.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)

    logged = read_window(log_dir, model_name=name)
    mine = logged[logged["request_id"].isin(list(sent))]
    assert set(mine["request_id"]) == set(sent)
    assert len(mine) == len(sent) * len(rows)
    for request_id, version in sent.items():
        assert set(mine.loc[mine["request_id"] == request_id, "model_version"]) == {version}
    assert set(mine["status"]) == {"ok"}
    assert set(mine["model_version"]) == {"1", "2"}
    assert all(part.startswith("date=") for part in storage.find(log_dir)), "partitioned by date"
    assert not list(tmp_path.rglob("*.parquet")), "nothing logged on local disk"

    for _, _, output in pods.values():
        text = output.read_text(errors="replace")
        assert "model server starting" in text
        assert s3_env.secret_key not in text
    print(
        f"\n[measure] pods ready after {ready_seconds:.1f}s, promotion seen after {promoted_after:.1f}s, "
        f"test {time.perf_counter() - started:.1f}s"
    )


@pytest.mark.server
def test_the_rendered_pod_routes_by_the_configured_rollout(registry: Registry, tmp_path: Path) -> None:
    """serving.rollout reaches the pod: one target without --alias, routing sticky A/B itself."""
    from components.common.kserve.traffic import ClusterTarget, render_for_state, traffic_state
    from components.common.registry import CANARY_TAG, CANARY_VERSION_TAG
    from components.serving_spec import RolloutSpec

    name = "podab"
    registry.create(name, ["a", "b"], {"champion": 1, "challenger": 2})
    client = registry.client()
    client.set_registered_model_tag(name, CANARY_VERSION_TAG, "2")
    client.set_registered_model_tag(name, CANARY_TAG, "50")
    rollout = RolloutSpec(strategy="ab", sticky_header="x-user-id")
    serving = ServingSpec(model_name=name, rollout=rollout, inference_log=False)
    state = traffic_state(serving, {"champion": "1", "challenger": "2"})
    manifest = render_for_state(serving, state, registry.tracking_uri, ClusterTarget(image="ctpipe/serving:test"))
    errors = [f"{list(e.path)}: {e.message}" for e in kserve_crd_validator().iter_errors(manifest)]
    assert not errors, "\n".join(errors)
    assert "canary" not in manifest["spec"] and "canaryTrafficPercent" not in manifest["spec"]["predictor"]
    (container,) = manifest["spec"]["predictor"]["containers"]
    args = container["args"]
    assert "--alias" not in args, "the pod holds both versions and routes between them"
    assert RolloutSpec.model_validate_json(args[args.index("--rollout") + 1]) == rollout

    port = free_port()
    scratch = tmp_path / "pod"
    scratch.mkdir()
    output = tmp_path / "pod.log"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            _pod_command(container, port),
            env=_pod_env(container, {}, scratch),
            cwd=scratch,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        ready = endpoint + container["readinessProbe"]["httpGet"]["path"]

        def is_ready() -> bool:
            assert proc.poll() is None, f"pod exited:\n{output.read_text(errors='replace')[-3000:]}"
            try:
                return requests.get(ready, timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(is_ready, 60, "the pod to be ready")
        session = requests.Session()
        body = {"instances": instances(registry.rows.head(1))}
        seen: dict[str, set[str]] = {}
        for user in range(60):
            for _ in range(2):
                answer = session.post(
                    f"{endpoint}/v1/models/{name}:predict", json=body, headers={"x-user-id": str(user)}, timeout=10
                ).json()
                seen.setdefault(str(user), set()).add(answer["model_version"])
        assert all(len(versions) == 1 for versions in seen.values()), seen
        assert set().union(*seen.values()) == {"1", "2"}
        assert requests.get(f"{endpoint}/ctpipe/status", timeout=5).json()["rollout"]["strategy"] == "ab"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
