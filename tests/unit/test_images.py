"""The image build step without docker: tags from one place, the YAML names them, the locks match pyproject."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from pipelines.config import load_config, package_version
from pipelines.images import (
    LOCK_FILES,
    assemble_context,
    build_command,
    image_tags,
    project_requirements,
    read_lock,
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
