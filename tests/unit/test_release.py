"""A release by digest without a registry: the pinned overlay, the pipelines it compiles, the release file.

Pushing to a real registry and the digests it returns are the containers tier's
(tests/containers/test_supply_chain.py); here the digests are made up, the rendering is real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.utils import canonicalize_name

from components.common.errors import ConfigError
from pipelines import release
from pipelines.config import IMAGE_ENV, load_config
from pipelines.images import image_tags
from pipelines.runner import compile_pipelines
from tests.helpers import ROOT
from tests.manifest_policy import violations
from tests.servers import ensure_debian_package

DIGESTS = {
    "components": "registry.example.com:5000/ctpipe/components@sha256:" + "a" * 64,
    "serving": "registry.example.com:5000/ctpipe/serving@sha256:" + "b" * 64,
}


def _kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl") or ensure_debian_package("kubectl", "kubernetes-client")
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _images(docs: list[dict[str, Any]]) -> dict[str, str]:
    found = {}
    for doc in docs:
        if doc["kind"] == "InferenceService":
            found["InferenceService"] = doc["spec"]["predictor"]["containers"][0]["image"]
        elif doc["kind"] == "CronJob":
            found["CronJob"] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"]
        elif doc["kind"] == "ScheduledSparkApplication":
            found["ScheduledSparkApplication"] = doc["spec"]["template"]["image"]
    return found


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("ctpipe/serving:0.1.0", "ctpipe/serving"),
        ("127.0.0.1:5000/ctpipe/serving:0.1.0", "127.0.0.1:5000/ctpipe/serving"),
        ("host:5000/a/b@sha256:" + "c" * 64, "host:5000/a/b"),
        ("host:5000/a/b:1@sha256:" + "c" * 64, "host:5000/a/b"),
        ("busybox", "busybox"),
    ],
)
def test_repository_drops_tag_and_digest(reference: str, expected: str) -> None:
    assert release.repository(reference) == expected


def test_pinned_overlay_names_every_image_by_digest(tmp_path: Path) -> None:
    overlay = ROOT / "manifests" / "overlays" / "production"
    tags = image_tags(load_config(release.CLUSTER_CONFIG))
    unpinned = _kustomize(overlay)
    assert any("not pinned by digest" in v for v in violations(unpinned, require_digest=True))

    out = release.pin_overlay(overlay, DIGESTS, tmp_path / "release" / "production", tags)
    docs = _kustomize(out)
    assert _images(docs) == {
        "InferenceService": DIGESTS["serving"],
        "CronJob": DIGESTS["components"],
        "ScheduledSparkApplication": DIGESTS["components"],
    }
    assert violations(docs, require_digest=True) == []
    # Everything else is the production overlay's: same objects, same namespace.
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in unpinned
    )
    assert {d["metadata"].get("namespace") for d in docs} == {"ctpipe-production"}
    # The CronJob compiles the pipelines with the digests: its tasks and deploy's InferenceService name them.
    cron = next(d for d in docs if d["kind"] == "CronJob")
    env = {
        e["name"]: e.get("value")
        for e in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env[IMAGE_ENV["components"]] == DIGESTS["components"] and env[IMAGE_ENV["serving"]] == DIGESTS["serving"]
    assert "KF_PIPELINES_ENDPOINT" in env  # the base's variables are kept (strategic merge on the name)


def test_the_release_variables_pin_the_compiled_pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IMAGE_ENV["components"], DIGESTS["components"])
    monkeypatch.setenv(IMAGE_ENV["serving"], DIGESTS["serving"])
    config = load_config(release.CLUSTER_CONFIG)
    assert image_tags(config) == DIGESTS
    for path in compile_pipelines(config, tmp_path):
        text = path.read_text()
        ir = next(yaml.safe_load_all(text))  # the pipeline; the second document is its Kubernetes platform spec
        images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
        assert images == {DIGESTS["components"]}, path.name
        assert "ctpipe/serving:" not in text and "ctpipe/components:" not in text, path.name
        if any(name.startswith("exec-deploy") for name in ir["deploymentSpec"]["executors"]):  # writes the predictor
            assert DIGESTS["serving"] in text, path.name


def test_release_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = release.write_release(DIGESTS, tmp_path / "images.json")
    assert release.read_release(path) == DIGESTS
    path.write_text(json.dumps({"images": {**DIGESTS, "serving": "ctpipe/serving:0.1.0"}}))
    with pytest.raises(
        ConfigError,
        match=r"images\.serving: expected 'repository@sha256:<64 hex digits>', found 'ctpipe/serving:0.1.0'",
    ):
        release.read_release(path)
    path.write_text(json.dumps({"images": {"serving": DIGESTS["serving"]}}))
    with pytest.raises(ConfigError, match=r"images\.components: expected .* found None"):
        release.read_release(path)
    with pytest.raises(ConfigError, match="not a release file"):
        release.read_release(tmp_path / "missing.json")


def test_sbom_lists_every_locked_package_with_its_hashes(tmp_path: Path) -> None:
    from pipelines.images import LOCK_FILES, read_lock_entries

    for kind in ("components", "serving"):
        sbom = json.loads(release.write_sbom(kind, tmp_path / f"{kind}.cdx.json", DIGESTS[kind]).read_text())
        assert sbom["bomFormat"] == "CycloneDX"
        python = {canonicalize_name(c["name"]): c for c in sbom["components"] if c["purl"].startswith("pkg:pypi/")}
        locked = read_lock_entries(LOCK_FILES[kind])
        assert set(python) == set(locked)
        for name, (version, digests) in locked.items():
            component = python[name]
            assert component["version"] == version
            listed = {h["content"] for ref in component["externalReferences"] for h in ref.get("hashes", [])}
            assert listed == set(digests), name
        jars = [c for c in sbom["components"] if c["purl"].startswith("pkg:maven/")]
        assert (len(jars) > 0) == (kind == "components")
        properties = {p["name"]: p["value"] for p in sbom["metadata"]["properties"]}
        assert properties["ctpipe:image"] == DIGESTS[kind]


def test_a_bad_release_variable_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IMAGE_ENV["serving"], "registry.example.com/ctpipe/serving")  # no tag, no digest
    with pytest.raises(ConfigError, match=r"serving \(from \$CTPIPE_IMAGE_SERVING\): .* has no tag or digest"):
        load_config(release.CLUSTER_CONFIG)
