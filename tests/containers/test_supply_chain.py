"""The supply chain of the images: hashes checked at build, pushed and named by digest, an SBOM that matches.

The registry is Debian's docker-registry on 127.0.0.1 (tests/servers/registry_server.py); the
images are the ones the containers tier built from the base named by its digest there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

from pipelines import release
from pipelines.config import CtpipeConfig
from pipelines.images import KINDS, LOCK_FILES, assemble_context, build_command, read_lock_entries
from tests.manifest_policy import violations
from tests.servers import DockerDaemon, RegistryServer, ensure_debian_package

pytestmark = [pytest.mark.containers, pytest.mark.server]


def test_images_are_named_by_the_digest_the_registry_returned(
    docker: DockerDaemon, registry: RegistryServer, released: dict[str, str], base_image: str, images: dict[str, str]
) -> None:
    for name, reference in [*released.items(), ("base", base_image)]:
        repository, digest = reference.split("@")
        assert repository.startswith(f"{registry.address}/"), reference
        # The registry's own answer, not docker's bookkeeping.
        tag = next(
            iter(json.loads(docker.docker("image", "inspect", "--format", "{{json .RepoTags}}", reference).stdout))
        )
        assert registry.manifest_digest(repository.split("/", 1)[1], tag.rsplit(":", 1)[1]) == digest, name
    # Each pushed digest is the image that was built, and it runs by that reference.
    for kind, reference in released.items():
        built = docker.docker("image", "inspect", "--format", "{{.Id}}", images[kind]).stdout
        assert docker.docker("image", "inspect", "--format", "{{.Id}}", reference).stdout == built
        assert docker.docker("run", "--rm", "--entrypoint", "id", reference, "-u").stdout.strip() == "1000"


def test_released_overlay_renders_with_the_pushed_digests(
    released: dict[str, str], config: CtpipeConfig, tmp_path: Path
) -> None:
    overlay = Path(__file__).resolve().parents[2] / "manifests" / "overlays" / "staging"
    tags = {"components": config.infra.images.components, "serving": config.infra.images.serving}
    out = release.pin_overlay(overlay, released, tmp_path / "staging", tags)
    kubectl = shutil.which("kubectl") or ensure_debian_package("kubectl", "kubernetes-client")
    rendered = subprocess.run([kubectl, "kustomize", str(out)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    images = {d["kind"]: yaml.safe_dump(d) for d in docs}
    assert released["serving"] in images["InferenceService"]
    assert released["components"] in images["CronJob"] and released["components"] in images["ScheduledSparkApplication"]
    assert violations(docs, require_digest=True) == []


def test_sbom_lists_exactly_the_python_packages_in_each_image(
    docker: DockerDaemon, images: dict[str, str], released: dict[str, str], tmp_path: Path
) -> None:
    for kind in KINDS:
        tag = images[kind]
        sbom = json.loads(release.write_sbom(kind, tmp_path / f"{kind}.cdx.json", released[kind]).read_text())
        listed = {
            (canonicalize_name(c["name"]), c["version"])
            for c in sbom["components"]
            if c["purl"].startswith("pkg:pypi/")
        }
        installed = json.loads(
            docker.docker("run", "--rm", "--entrypoint", "pip", tag, "list", "--format", "json").stdout
        )
        in_image = {(canonicalize_name(p["name"]), p["version"]) for p in installed}
        # ctpipe itself is the SBOM's subject (metadata.component), not one of its components.
        assert in_image - listed == {("ctpipe", sbom["metadata"]["component"]["version"])}, kind
        assert listed - in_image == set(), kind


def _small_context(tmp_path: Path, wheelhouse: Path, tamper: bool) -> Path:
    """A context whose lock is one pin of the real lock, with its real wheel (a byte longer with ``tamper``)."""
    name, (version, digests) = "idna", read_lock_entries(LOCK_FILES["serving"])["idna"]
    (wheel,) = [p for p in wheelhouse.iterdir() if p.name.lower().startswith(f"{name}-{version}-")]
    small = tmp_path / ("tampered" if tamper else "intact")
    (small / "wheels").mkdir(parents=True)
    (small / "wheels" / ".ctpipe-wheelhouse").write_text("one wheel\n")
    data = wheel.read_bytes()
    # A byte more after the zip's end: pip could still install it, only the hash tells.
    (small / "wheels" / wheel.name).write_bytes(data + b"\0" if tamper else data)
    context = assemble_context(small / "context", small / "wheels")
    lines = [f"{name}=={version} \\"] + [f"    --hash=sha256:{d} \\" for d in digests]
    (context / "containers" / "one.lock").write_text("\n".join(lines).rstrip(" \\") + "\n")
    return context


def test_build_fails_when_a_wheel_does_not_match_its_hash(
    docker: DockerDaemon, base_image: str, wheelhouse: Path, tmp_path: Path
) -> None:
    results = {}
    for tamper in (False, True):
        context = _small_context(tmp_path, wheelhouse, tamper)
        command = build_command(
            "serving",
            f"ctpipe-test/hash-check:{int(tamper)}",
            context,
            docker=docker.cli,
            base_image=base_image,
            network="none",
            commit="test",
            target="deps",
            lock="one.lock",
        )
        results[tamper] = subprocess.run(command, env=docker.env, capture_output=True, text=True, timeout=600)
    assert results[False].returncode == 0, results[False].stderr[-3000:]  # the same build with the real wheel
    failed = results[True]
    assert failed.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in failed.stderr and "idna" in failed.stderr, failed.stderr[-3000:]
    docker.docker("image", "rm", "--force", "ctpipe-test/hash-check:0", check=False)
