"""The component YAMLs: current with the code, loadable, usable in a pipeline that is not ctpipe's."""

import ast
import dataclasses
import tempfile
from pathlib import Path

import pytest
import yaml
from kfp import compiler, components, dsl

from pipelines import component_yaml
from pipelines.config import load_config
from pipelines.kfp_components import Components, build_components
from tests import other_team
from tests.helpers import ROOT

YAML_DIR = ROOT / "components" / "yaml"
NAMES = [field.name for field in dataclasses.fields(Components)]
# A value of each parameter type, for a pipeline that only needs to compile.
SAMPLES = {"String": "x", "Boolean": False, "Integer": 1, "Float": 0.5, "Dict": {}, "List": []}


def _config_images():
    return load_config(ROOT / "ctpipe.yaml").infra.images


def test_committed_yamls_are_current(tmp_path: Path) -> None:
    assert component_yaml.main(["--out", str(tmp_path)]) == 0
    generated = sorted(p.name for p in tmp_path.glob("*.yaml"))
    committed = sorted(p.name for p in YAML_DIR.glob("*.yaml"))
    assert generated == committed, (
        f"components/yaml/ has {committed}, the code makes {generated}; regenerate: {component_yaml.REGENERATE}"
    )
    for name in generated:
        assert (YAML_DIR / name).read_text() == (tmp_path / name).read_text(), (
            f"components/yaml/{name} differs from the code; regenerate: {component_yaml.REGENERATE}"
        )
    assert component_yaml.main(["--check"]) == 0


def test_generation_is_stable_and_check_names_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = _config_images()
    texts = component_yaml.render(images)
    assert texts == component_yaml.render(images)  # deterministic: same code, same bytes
    assert list(texts) == [f"{name}.yaml" for name in NAMES]

    assert len(component_yaml.write(tmp_path, texts)) == len(NAMES)
    assert component_yaml.write(tmp_path, texts) == []  # nothing changed, nothing rewritten
    (tmp_path / "ingest.yaml").write_text("edited by hand\n")
    (tmp_path / "retired.yaml").write_text("{}\n")
    (tmp_path / "README.md").write_text("kept\n")
    assert component_yaml.differences(tmp_path, texts) == [
        f"{tmp_path / 'ingest.yaml'}: differs from the code",
        f"{tmp_path / 'retired.yaml'}: no such component any more",
    ]
    assert component_yaml.main(["--out", str(tmp_path), "--check"]) == 1
    assert "make components-yaml" in capsys.readouterr().err
    component_yaml.write(tmp_path, texts)
    assert component_yaml.differences(tmp_path, texts) == []
    assert (tmp_path / "README.md").exists() and not (tmp_path / "retired.yaml").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_the_images_come_from_the_configuration(tmp_path: Path) -> None:
    images = _config_images().model_copy(
        update={"components": "registry.example/ml/ctpipe-components:9.9", "overrides": {"train": "gpu/train:1"}}
    )
    texts = component_yaml.render(images)
    assert "image: gpu/train:1\n" in texts["train.yaml"]
    assert "image: registry.example/ml/ctpipe-components:9.9\n" in texts["ingest.yaml"]


@pytest.mark.parametrize("name", NAMES)
def test_each_yaml_loads_as_the_wrapper_in_the_components_image(name: str) -> None:
    path = YAML_DIR / f"{name}.yaml"
    loaded = components.load_component_from_file(str(path))
    wrapper = getattr(build_components(_config_images()), name)
    assert loaded.name == wrapper.name
    assert set(loaded.component_spec.inputs or {}) == set(wrapper.component_spec.inputs or {})
    assert set(loaded.component_spec.outputs or {}) == set(wrapper.component_spec.outputs or {})
    executor = yaml.safe_load(path.read_text())["deploymentSpec"]["executors"][f"exec-{loaded.name}"]
    # An image reference, never a path on the machine that generated it.
    assert executor["container"]["image"] == _config_images().for_component(name)
    text = path.read_text()
    assert str(ROOT) not in text and tempfile.gettempdir() not in text


def _say(text: str):
    """A step of another team, around the ctpipe component (a plain container)."""

    @dsl.container_component
    def say() -> dsl.ContainerSpec:
        return dsl.ContainerSpec(image="busybox:1.36", command=["echo", text])

    return say


@pytest.mark.parametrize("name", NAMES)
def test_each_yaml_compiles_in_a_pipeline_of_its_own(name: str, tmp_path: Path) -> None:
    """Another team's pipeline around the loaded YAML: artifact inputs from importers, parameters as constants."""
    path = YAML_DIR / f"{name}.yaml"
    op = components.load_component_from_file(str(path))
    inputs = op.component_spec.inputs or {}
    exit_handler = any(spec.type == "PipelineTaskFinalStatus" for spec in inputs.values())

    @dsl.pipeline(name=f"uses-ctpipe-{op.name}")
    def uses_ctpipe_component() -> None:
        arguments = {}
        for input_name, spec in inputs.items():
            if spec.optional:
                continue
            if spec.type.startswith("system."):
                artifact_class = getattr(dsl, spec.type.removeprefix("system.").split("@")[0])
                imported = dsl.importer(
                    artifact_uri=f"gs://other-team/{input_name}", artifact_class=artifact_class, reimport=False
                )
                arguments[input_name] = imported.output
            else:
                arguments[input_name] = SAMPLES[spec.type]
        if exit_handler:
            with dsl.ExitHandler(op(**arguments)):
                _say("work")()
        else:
            _say("after")().after(op(**arguments))

    package = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(uses_ctpipe_component, str(package))
    compiled = yaml.safe_load(package.read_text())
    # The other pipeline runs exactly the container the YAML describes.
    ours = yaml.safe_load(path.read_text())["deploymentSpec"]["executors"][f"exec-{op.name}"]
    assert compiled["deploymentSpec"]["executors"][f"exec-{op.name}"] == ours
    assert f"comp-{op.name}" in compiled["components"]


def test_other_teams_pipeline_imports_no_ctpipe() -> None:
    tree = ast.parse(Path(other_team.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert roots <= {"kfp", "json", "collections", "pathlib", "typing", "os", "pandas"}, roots


def test_other_teams_pipeline_compiles(tmp_path: Path) -> None:
    pipeline = other_team.build(YAML_DIR / "ingest.yaml", image="other-team/python-kfp:1.0")
    package = tmp_path / "orders.yaml"
    compiler.Compiler().compile(pipeline, str(package))
    executors = yaml.safe_load(package.read_text())["deploymentSpec"]["executors"]
    assert executors["exec-ingest"]["container"]["image"] == _config_images().components
    assert executors["exec-write-table"]["container"]["image"] == "other-team/python-kfp:1.0"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*custom or non-Python base image")
def test_other_teams_pipeline_runs_the_loaded_ingest(tmp_path: Path) -> None:
    """kfp.local's SubprocessRunner (this interpreter) runs it; tests/containers runs it in the image."""
    import pandas as pd
    from kfp import local

    from components.ingest import ingest
    from components.specs import DatasetSpec

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        cache_root=str(tmp_path / "cache"),
        enable_caching=False,
        raise_on_error=True,
    )
    run = other_team.build(YAML_DIR / "ingest.yaml", image="other-team/python-kfp:1.0")()

    source = tmp_path / "orders.csv"
    source.write_text(other_team.ORDERS_CSV)
    spec = DatasetSpec.model_validate(other_team.ORDERS_DATASET)
    expected = ingest(
        str(source), spec, str(tmp_path / "expected.parquet"), other_team.WINDOW_START, other_team.WINDOW_END
    )
    assert run.outputs["rows"] == other_team.ROWS_IN_WINDOW == expected.rows
    assert run.outputs["content_hash"] == expected.content_hash
    assert run.outputs["columns"] == ",".join(pd.read_csv(source).columns)


def test_the_how_to_in_the_component_reference_compiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.docgen import REUSE_EXAMPLE, REUSE_TITLE, components_markdown

    page = components_markdown()
    assert f"## {REUSE_TITLE}" in page and REUSE_EXAMPLE in page
    assert "Component YAML: `components/yaml/ingest.yaml`" in page
    tree = ast.parse(REUSE_EXAMPLE)
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules == {"json", "kfp"}

    # Run the example as written, beside a "checkout" of ctpipe that holds the committed YAMLs.
    (tmp_path / "ctpipe" / "components").mkdir(parents=True)
    (tmp_path / "ctpipe" / "components" / "yaml").symlink_to(YAML_DIR)
    monkeypatch.chdir(tmp_path)
    exec(compile(REUSE_EXAMPLE, "how-to example", "exec"), {"__name__": "how_to"})
    compiled = yaml.safe_load((tmp_path / "orders_weekly_snapshot.yaml").read_text())
    executors = compiled["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-fingerprint-source", "exec-ingest"}
    assert {e["container"]["image"] for e in executors.values()} == {_config_images().components}
