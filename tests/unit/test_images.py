"""The image build step without docker: tags from one place, the YAML names them, the locks match pyproject."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from components.common.errors import ConfigError
from pipelines.config import load_config, package_version
from pipelines.images import (
    LOCK_FILES,
    assemble_context,
    build_command,
    image_tags,
    project_requirements,
    read_lock,
    read_lock_entries,
    release_hashes,
    render_lock,
)
from pipelines.runner import compile_pipelines
from tests.helpers import ROOT


def test_compiled_pipelines_name_the_image_the_build_step_tags(tmp_path: Path) -> None:
    config = load_config(ROOT / "ctpipe.yaml")
    tags = image_tags(config)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert package_version() == version
    assert tags == {"components": f"ctpipe/components:{version}", "serving": f"ctpipe/serving:{version}"}

    for path in compile_pipelines(config, tmp_path):
        executors = yaml.safe_load(path.read_text())["deploymentSpec"]["executors"]
        images = {executor["container"]["image"] for executor in executors.values()}
        assert images == {tags["components"]}, path.name

    command = build_command("components", tags["components"], tmp_path, base_image="base:1", network="none")
    assert command[command.index("--tag") + 1] == tags["components"]
    assert command[command.index("--target") + 1] == "components"
    assert "BASE_IMAGE=base:1" in command and f"VERSION={version}" in command


def test_ca_bundle_is_passed_as_a_build_secret(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    command = build_command("serving", "ctpipe/serving:1", tmp_path, ca_bundle=pem)
    assert command[command.index("--secret") + 1] == f"id=ca,src={pem}"
    assert not any(str(pem) in arg for arg in command if arg.startswith(("VERSION=", "GIT_COMMIT=", "LOCK=")))


def test_locks_satisfy_pyproject_and_serving_is_a_subset() -> None:
    components, serving = read_lock(LOCK_FILES["components"]), read_lock(LOCK_FILES["serving"])
    for requirement in project_requirements():
        name = requirement.name.lower().replace("_", "-")
        assert name in components, f"{name} missing from {LOCK_FILES['components'].name}"
        assert requirement.specifier.contains(components[name], prereleases=True), (
            f"{LOCK_FILES['components'].name} pins {name}=={components[name]}, pyproject says {requirement}"
        )
    assert {n: v for n, v in serving.items() if components.get(n) != v} == {}
    # The predictor reads Feast (entity-id requests, Redis) but never runs Spark or a pipeline.
    assert "feast" in serving and "redis" in serving
    assert "pyspark" not in serving and "kfp" not in serving and "great-expectations" not in serving
    assert {"setuptools", "wheel"} <= set(serving)


def test_build_context_holds_sources_and_wheels_only(tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheels"
    wheelhouse.mkdir()
    (wheelhouse / "demo-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (wheelhouse / ".ctpipe-wheelhouse").write_text("key\n")
    context = assemble_context(tmp_path / "context", wheelhouse)
    assert sorted(p.name for p in context.iterdir()) == sorted(
        ["pyproject.toml", "README.md", "components", "pipelines", "serving", "containers", "wheelhouse"]
    )
    assert [p.name for p in (context / "wheelhouse").iterdir()] == ["demo-1.0-py3-none-any.whl"]
    assert not list(context.rglob("__pycache__"))
    assert (context / "containers" / "Dockerfile").is_file()


def test_every_pin_carries_hashes_and_the_lock_round_trips(tmp_path: Path) -> None:
    for kind, path in LOCK_FILES.items():
        entries = read_lock_entries(path)
        assert all(len(digests) >= 1 for _, digests in entries.values())
        pins = {name: version for name, (version, _) in entries.items()}
        hashes = {name: digests for name, (_, digests) in entries.items()}
        assert render_lock(kind, pins, hashes) == path.read_text()  # what `make lock` writes, byte for byte
    # The sdist-only packages are locked by their sdist's hash; the image builds them from it.
    assert len(read_lock_entries(LOCK_FILES["components"])["pyspark"][1]) == 1


def test_lock_without_hash_or_with_a_bad_line_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text("six==1.16.0 \\\n    --hash=sha256:" + "a" * 64 + "\nidna==3.7\n")
    with pytest.raises(ConfigError, match=r"x.lock: 1 pin\(s\) without a --hash: \['idna'\]"):
        read_lock_entries(lock)
    lock.write_text("six==1.16.0 \\\n    --hash=md5:abc\n")
    with pytest.raises(ConfigError, match=r"x.lock:2: expected .* found '    --hash=md5:abc'"):
        read_lock_entries(lock)


def test_release_hashes_keep_only_what_an_image_can_install() -> None:
    def entry(filename: str, char: str) -> dict[str, object]:
        return {"filename": filename, "hashes": {"sha256": char * 64}}

    files = [
        entry("numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "a"),
        entry("numpy-2.1.0-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl", "b"),
        entry("numpy-2.1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "c"),  # another Python
        entry("numpy-2.1.0-cp311-cp311-win_amd64.whl", "d"),  # another OS
        entry("numpy-2.1.0-cp311-cp311-macosx_14_0_arm64.whl", "e"),
        entry("numpy-2.1.0.tar.gz", "f"),
        entry("numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl", "0"),  # another version
        entry("numpy-2.1.0-cp36-abi3-manylinux_2_12_x86_64.whl", "1"),  # stable ABI of an older CPython
        entry("numpy-2.1.0-cp313-abi3-manylinux_2_17_x86_64.whl", "2"),  # stable ABI of a newer one
        entry("numpy-2.1.0-py3-none-any.whl", "3"),
    ]
    assert release_hashes("numpy", "2.1.0", files) == sorted(c * 64 for c in "abf13")
    with pytest.raises(ConfigError, match=r"no file of numpy==9.9 for CPython 3.11 on Linux"):
        release_hashes("numpy", "9.9", files)
    with pytest.raises(ConfigError, match=r"numpy-2\.1\.0\.tar\.gz of numpy==2\.1\.0 without a sha256"):
        release_hashes("numpy", "2.1.0", [{"filename": "numpy-2.1.0.tar.gz", "hashes": {}}])
