import yaml
from kfp.components import load_component_from_file

from pipelines.config import load_config
from pipelines.runner import compile_pipelines
from tests.helpers import ROOT


def test_compile_writes_one_loadable_yaml_per_pipeline(tmp_path):
    paths = compile_pipelines(load_config(ROOT / "ctpipe.yaml"), tmp_path)
    assert sorted(p.name for p in paths) == [
        "batch_scoring.yaml",
        "canary_analysis.yaml",
        "monitoring.yaml",
        "training.yaml",
    ]
    for path in paths:
        assert load_component_from_file(str(path)).name.startswith("ctpipe-")


def test_training_dag_caches_only_side_effect_free_tasks(tmp_path):
    (path,) = compile_pipelines(load_config(ROOT / "ctpipe.yaml"), tmp_path, ["training"])
    spec = yaml.safe_load(path.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"ingest", "validate", "fetch-features", "train", "evaluate"}
    # Deploy sits inside the blessing condition and is never cached.
    (key,) = [name for name, task in tasks.items() if task["taskInfo"]["name"] == "candidate-blessed"]
    assert "evaluate-Output" in tasks[key]["triggerPolicy"]["condition"]
    blessed = spec["components"][f"comp-{key}"]["dag"]["tasks"]
    infra = blessed["infra-validate"]
    assert not infra.get("cachingOptions", {}).get("enableCache")
    # Deploy sits inside a second condition: the sandbox server must have served the version.
    (inner,) = [name for name, task in blessed.items() if task["taskInfo"]["name"] == "infra-blessed"]
    assert "infra-validate-Output" in blessed[inner]["triggerPolicy"]["condition"]
    deploy = spec["components"][f"comp-{inner}"]["dag"]["tasks"]["deploy"]
    assert not deploy.get("cachingOptions", {}).get("enableCache")
    # Features are only materialized after validation passed.
    assert "validate" in tasks["fetch-features"]["dependentTasks"]
    assert set(tasks["register"]["dependentTasks"]) >= {"evaluate", "train"}
