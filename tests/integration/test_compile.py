"""The compiled IR YAML: DAG edges, caching opt-outs, the retrain condition, descriptions, images, cluster settings."""

import inspect
import json

import pytest
import yaml
from kfp.components import load_component_from_file

from pipelines import cli, runner
from pipelines.config import ImagesSpec, load_config, parse_config
from pipelines.kfp_components import REGISTRY_KEYED, UNCACHED
from pipelines.runner import PIPELINES, build_pipeline, compile_pipelines
from tests.helpers import ROOT

# Exactly these tasks may be cached; every other task has a side effect or reads something that moves.
# register and infra-validate are cached on the registry state they are given (REGISTRY_KEYED).
CACHEABLE = {
    "training": {"ingest", "validate", "fetch-features", "train", "evaluate", "register", "infra-validate"},
    "batch_scoring": {"ingest", "batch-predict"},
    "monitoring": {"ingest", "monitor"},
    "continuous_training": {
        "ingest",
        "monitor",
        "validate",
        "fetch-features",
        "train",
        "evaluate",
        "register",
        "infra-validate",
    },
    "canary_analysis": set(),
}
DIGEST = "sha256:" + "a" * 64


def _tasks(spec, dag=None, found=None):
    """Every leaf task of a compiled pipeline, by task name, walking into conditions and exit handlers."""
    found = {} if found is None else found
    for name, task in (dag or spec["root"]["dag"])["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            _tasks(spec, component["dag"], found)
        else:
            found[name] = task
    return found


def _groups(spec):
    """Every control-flow group (condition, exit handler) by its display name: (task, component dag)."""
    found = {}

    def walk(dag):
        for task in dag["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:
                found[task["taskInfo"]["name"]] = (task, component["dag"])
                walk(component["dag"])

    walk(spec["root"]["dag"])
    return found


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    paths = compile_pipelines(load_config(ROOT / "ctpipe.yaml"), out)
    return {path.stem: path for path in paths}


def test_every_pipeline_compiles_to_a_yaml_kfp_loads(compiled):
    assert set(compiled) == set(PIPELINES) == set(cli.PIPELINE_NAMES)
    for path in compiled.values():
        assert load_component_from_file(str(path)).name.startswith("ctpipe-")


@pytest.mark.parametrize("name", sorted(CACHEABLE))
def test_caching_is_off_exactly_on_the_side_effect_tasks(compiled, name):
    tasks = _tasks(yaml.safe_load(compiled[name].read_text()))
    cached = {task_name for task_name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == CACHEABLE[name]
    uncached = set(tasks) - cached
    assert {task_name.replace("-", "_") for task_name in uncached} <= set(UNCACHED)


@pytest.mark.parametrize("name", ["training", "continuous_training"])
def test_the_registry_keyed_steps_are_keyed_on_the_registry_state_chain(compiled, name):
    """register gets the state current-champion read; infra validation and deploy the state the step before left."""
    spec = yaml.safe_load(compiled[name].read_text())
    tasks = _tasks(spec)
    for step in REGISTRY_KEYED:
        assert tasks[step.replace("_", "-")].get("cachingOptions", {}).get("enableCache")

    def source(task: str) -> str:
        # An output of a task in the same DAG, or (inside a condition) the group input that carries it.
        parameter = tasks[task]["inputs"]["parameters"]["registry_state"]
        if "taskOutputParameter" in parameter:
            output = parameter["taskOutputParameter"]
            return f"{output['producerTask']}-{output['outputParameterKey']}"
        return parameter["componentInputParameter"].removeprefix("pipelinechannel--")

    assert source("register") == "current-champion-registry_state"
    assert source("infra-validate") == "register-registry_state_after"
    assert source("deploy") == "infra-validate-registry_state_after"


def test_ingest_is_keyed_on_the_sources_content_never_on_time(compiled):
    spec = yaml.safe_load(compiled["training"].read_text())
    tasks = _tasks(spec)
    inputs = tasks["ingest"]["inputs"]["parameters"]
    assert inputs["source_fingerprint"]["taskOutputParameter"]["producerTask"] == "fingerprint-source"
    assert set(inputs) == {"source", "source_fingerprint", "dataset", "window_start", "window_end"}
    assert not tasks["fingerprint-source"].get("cachingOptions", {}).get("enableCache")
    # The bounds come from the (uncached) window task, so ingest is keyed on the window, not the clock.
    for bound in ("window_start", "window_end"):
        assert inputs[bound]["taskOutputParameter"] == {"outputParameterKey": bound, "producerTask": "schedule-window"}
    assert not tasks["schedule-window"].get("cachingOptions", {}).get("enableCache")


@pytest.mark.parametrize("name", ["training", "batch_scoring", "monitoring", "continuous_training"])
def test_the_window_comes_from_kfps_scheduled_time_unless_the_run_names_one(compiled, name):
    from kfp import dsl

    spec = yaml.safe_load(compiled[name].read_text())
    tasks = _tasks(spec)
    window = tasks["schedule-window"]["inputs"]["parameters"]
    # The placeholder is the whole constant of a task input: that is what KFP's driver resolves.
    assert window["scheduled_time"] == {"runtimeValue": {"constant": "{{$.pipeline_job_schedule_time_utc}}"}}
    assert window["scheduled_time"]["runtimeValue"]["constant"] == dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER
    # Explicit bounds (a manual run) go in as the pipeline's parameters and win over the time.
    for key in ("window_start", "window_end", "schedule"):  # inside an exit handler: pipelinechannel--KEY
        assert window[key]["componentInputParameter"].removeprefix("pipelinechannel--") == key
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert yaml.safe_load(parameters["schedule"]["defaultValue"]) == {
        "window": "7d",
        "anchor": "1970-01-05T00:00:00+00:00",
    }
    if "monitor" in tasks:  # T-1 is monitored against T-2: both sets of bounds come from the window task
        monitor = tasks["monitor"]["inputs"]["parameters"]
        for bound in ("window_start", "window_end", "reference_start", "reference_end"):
            assert monitor[bound]["taskOutputParameter"]["producerTask"] == "schedule-window", bound
        assert monitor["source_fingerprint"]["taskOutputParameter"]["producerTask"] == "fingerprint-source"
        assert {"reference_start", "reference_end"} <= set(parameters)


@pytest.mark.parametrize("name", ["training", "continuous_training"])
def test_a_pipeline_built_for_kfp_local_has_no_placeholder_it_cannot_resolve(tmp_path, name):
    """kfp.local 2.17 fails on the scheduled-time placeholder, so local builds pass an empty time instead."""
    from kfp import compiler, dsl

    pipeline = build_pipeline(name, load_config(ROOT / "ctpipe.yaml"), local=True)
    compiler.Compiler().compile(pipeline, str(tmp_path / "local.yaml"))
    text = (tmp_path / "local.yaml").read_text()
    # Nowhere, not even in a component's source, which kfp.local resolves placeholders in too.
    assert dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER not in text
    tasks = _tasks(yaml.safe_load(text))
    constants = {
        parameter["runtimeValue"].get("constant")
        for task in tasks.values()
        for parameter in task.get("inputs", {}).get("parameters", {}).values()
        if "runtimeValue" in parameter
    }
    assert dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER not in constants
    assert tasks["schedule-window"]["inputs"]["parameters"]["scheduled_time"] == {"runtimeValue": {"constant": ""}}


def test_training_dag_edges(compiled):
    spec = yaml.safe_load(compiled["training"].read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert "validate" in tasks["fetch-features"]["dependentTasks"]  # features only from validated data
    assert set(tasks["train"]["dependentTasks"]) >= {"fetch-features", "validate", "ingest"}
    assert set(tasks["register"]["dependentTasks"]) >= {"evaluate", "train"}
    groups = _groups(spec)
    task, dag = groups["candidate-blessed"]
    assert "evaluate-Output" in task["triggerPolicy"]["condition"]
    assert "infra-validate" in dag["tasks"] and len(dag["tasks"]) == 2  # infra validation, then its condition
    # Deploy sits inside a second condition: the sandbox server must have served the version.
    inner, inner_dag = groups["infra-blessed"]
    assert inner["taskInfo"]["name"] in {t["taskInfo"]["name"] for t in dag["tasks"].values()}
    assert "infra-validate-Output" in inner["triggerPolicy"]["condition"]
    assert set(inner_dag["tasks"]) == {"deploy"}


def test_continuous_training_retrains_only_on_a_retrain_decision_inside_an_exit_handler(compiled):
    spec = yaml.safe_load(compiled["continuous_training"].read_text())
    groups = _groups(spec)
    _exit_task, exit_dag = groups["monitor-then-retrain"]
    root = spec["root"]["dag"]["tasks"]
    notify = root["notify"]  # the exit task: runs when the body finished, failed or not
    assert notify["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert [root[d]["taskInfo"]["name"] for d in notify["dependentTasks"]] == ["monitor-then-retrain"]
    assert {"current-champion", "fingerprint-source", "ingest", "monitor"} <= set(exit_dag["tasks"])
    retrain, retrain_dag = groups["drift-retrain"]
    assert (
        retrain["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--monitor-Output'] == 'retrain'"
    )
    # The training DAG (the same one the training pipeline builds) sits inside the retrain branch,
    # trains on the monitored snapshot, and nests the canary under the blessing.
    assert {"validate", "fetch-features", "train", "evaluate", "register"} <= set(retrain_dag["tasks"])
    training_spec = yaml.safe_load(compiled["training"].read_text())
    assert set(_tasks(spec)) == set(_tasks(training_spec)) | {"monitor", "notify"}
    assert "candidate-blessed" in groups


@pytest.mark.parametrize("name", sorted(CACHEABLE))
def test_every_parameter_has_a_default_and_a_description(compiled, name):
    spec = yaml.safe_load(compiled[name].read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters
    for key, parameter in parameters.items():
        assert parameter.get("description"), key
        assert parameter.get("isOptional") and "defaultValue" in parameter, key


def _parameter_source(parameter):
    """Where a task's input comes from: (producer task, output key), ("", pipeline parameter) or a constant."""
    if "taskOutputParameter" in parameter:
        source = parameter["taskOutputParameter"]
        return source["producerTask"], source["outputParameterKey"]
    if "componentInputParameter" in parameter:
        # Inside a condition or an exit handler, KFP passes values on as pipelinechannel--TASK-KEY or --PARAM.
        name = parameter["componentInputParameter"].removeprefix("pipelinechannel--")
        if name.startswith("current-champion-"):
            return "current-champion", name.removeprefix("current-champion-")
        return "", name
    return "constant", str(parameter.get("runtimeValue"))


@pytest.mark.parametrize("name", sorted(CACHEABLE))
def test_the_model_name_comes_only_from_the_serving_parameter(tmp_path, name):
    """Nothing bakes the model name in beside ``serving``: a run-time override of it reaches every step."""
    sentinel = "model-name-sentinel"
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["serving"]["model_name"] = sentinel
    (path,) = compile_pipelines(parse_config(raw, tmp_path), tmp_path, [name])
    spec = yaml.safe_load(path.read_text())
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*where, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, (*where, index))
        elif isinstance(node, str) and sentinel in node:
            found.append(".".join(map(str, where)))

    walk(spec, ())
    assert found == ["root.inputDefinitions.parameters.serving.defaultValue"]
    tasks = _tasks(spec)
    if "current-champion" in tasks:  # it reads the name from serving and hands it on
        assert _parameter_source(tasks["current-champion"]["inputs"]["parameters"]["serving"]) == ("", "serving")
    for task, key in (("train", "experiment"), ("register", "model_name")):
        if task in tasks:
            assert _parameter_source(tasks[task]["inputs"]["parameters"][key]) == ("current-champion", "model_name")


def test_run_and_compile_use_the_very_same_builders():
    from pipelines import batch_scoring, canary_analysis, continuous_training, monitoring, training

    assert {
        "training": training.build,
        "batch_scoring": batch_scoring.build,
        "monitoring": monitoring.build,
        "continuous_training": continuous_training.build,
        "canary_analysis": canary_analysis.build,
    } == PIPELINES
    # run_pipeline and compile_pipelines both get their pipeline from build_pipeline; kfp.local's
    # differs only in the one input it cannot resolve (the scheduled time).
    assert "build_pipeline(name, config, local=True)" in inspect.getsource(runner.run_pipeline)
    assert "build_pipeline(name, config)" in inspect.getsource(runner.compile_pipelines)


def _cluster_config(tmp_path):
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    # Shared state every pod reaches: a cluster config names it (CtpipeConfig refuses one that does not).
    raw["feast"].update(
        root="s3://ctpipe-data/feast", online_store="redis", redis_connection_string="redis.ns.svc:6379"
    )
    raw["infra"].update(
        profile="cluster",
        tracking_uri="http://mlflow.ns.svc:5000",
        images={
            "components": f"registry.example/ctpipe/components:0.1.0@{DIGEST}",
            "overrides": {"train": "registry.example/ctpipe/components-large:0.1.0"},
        },
        kubernetes={
            "image_pull_secrets": ["regcred"],
            "secrets": [
                {"secret_name": "mlflow-auth", "env": {"username": "MLFLOW_TRACKING_USERNAME"}},
                {
                    "secret_name": "s3-creds",
                    "env": {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY"},
                    "components": ["train", "register"],
                },
            ],
            "default": {"cpu_request": "500m", "memory_request": "1Gi", "memory_limit": "2Gi"},
            "components": {
                "train": {
                    "cpu_request": "2",
                    "cpu_limit": "4",
                    "memory_limit": "8Gi",
                    "node_selector": {"pool": "cpu-large"},
                    "tolerations": [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}],
                }
            },
        },
    )
    return parse_config(raw, tmp_path)


def test_cluster_settings_from_config_are_rendered_into_the_platform_spec(tmp_path):
    (path,) = compile_pipelines(_cluster_config(tmp_path), tmp_path, ["training"])
    pipeline_spec, platform = yaml.safe_load_all(path.read_text())
    executors = pipeline_spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]

    train = executors["exec-train"]["container"]
    assert train["image"] == "registry.example/ctpipe/components-large:0.1.0"
    assert executors["exec-ingest"]["container"]["image"] == f"registry.example/ctpipe/components:0.1.0@{DIGEST}"
    assert train["resources"]["cpuRequest"] == 2.0 and train["resources"]["cpuLimit"] == 4.0
    assert train["resources"]["memoryLimit"] == pytest.approx(8 * 1.073741824)  # 8Gi, in GB in the IR
    assert train["resources"]["memoryRequest"] == pytest.approx(1.073741824)  # default 1Gi
    ingest = executors["exec-ingest"]["container"]["resources"]
    assert ingest["cpuRequest"] == 0.5 and "cpuLimit" not in ingest

    assert k8s["exec-train"]["nodeSelector"]["labels"] == {"pool": "cpu-large"}
    assert k8s["exec-train"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ]
    assert "nodeSelector" not in k8s["exec-ingest"]

    def secrets(executor):
        return {
            (s["secretName"], kv["secretKey"], kv["envVar"])
            for s in k8s[executor].get("secretAsEnv", [])
            for kv in s["keyToEnv"]
        }

    mlflow = {("mlflow-auth", "username", "MLFLOW_TRACKING_USERNAME")}
    s3 = {("s3-creds", "access_key", "AWS_ACCESS_KEY_ID"), ("s3-creds", "secret_key", "AWS_SECRET_ACCESS_KEY")}
    assert secrets("exec-train") == mlflow | s3
    assert secrets("exec-ingest") == mlflow
    for executor in executors:
        assert [s["secretName"] for s in k8s[executor]["imagePullSecret"]] == ["regcred"], executor


@pytest.mark.parametrize(
    "image",
    ["ctpipe/components", "Ctpipe/Components:1", "ctpipe/components:0.1@sha256:abc", "ctpipe/components:bad tag"],
)
def test_images_must_be_pinned_references(tmp_path, image):
    from components.common.errors import ConfigError

    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["infra"]["images"] = {"overrides": {"train": image}}
    with pytest.raises(ConfigError, match=r"infra.images.overrides"):
        parse_config(raw, tmp_path)
    assert ImagesSpec(components=f"ctpipe/components:0.1.0@{DIGEST}").for_component("train").endswith(DIGEST)


def test_default_images_are_the_ones_the_pipelines_name(compiled):
    spec = yaml.safe_load(compiled["training"].read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {ImagesSpec().components}
    pipeline = build_pipeline("training", load_config(ROOT / "ctpipe.yaml"))
    assert pipeline.component_spec.inputs["serving_image"].default == ImagesSpec().serving


def test_the_shipped_cluster_config_compiles_to_object_storage_without_credentials(tmp_path, monkeypatch):
    """manifests/base/ctpipe.yaml: an s3:// pipeline root and locations, no sqlite, no credential in the IR."""
    secret = "compile-test-secret-value-0123456789"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "COMPILETESTKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://object-store.invalid:9000")
    config = load_config(ROOT / "manifests" / "base" / "ctpipe.yaml")
    assert config.infra.profile == "cluster"
    for path in compile_pipelines(config, tmp_path):
        text = path.read_text()
        pipeline_spec, platform = yaml.safe_load_all(text)
        assert pipeline_spec["defaultPipelineRoot"] == "s3://ctpipe-artifacts/pipeline-root", path.name
        assert "sqlite:" not in text, path.name
        for leaked in (secret, "COMPILETESTKEYID", "object-store.invalid"):
            assert leaked not in text, (path.name, leaked)
        parameters = pipeline_spec["root"]["inputDefinitions"]["parameters"]
        for key in ("source", "inference_log_dir", "log_dir", "reports_dir"):
            if key in parameters:
                assert parameters[key]["defaultValue"].startswith("s3://"), (path.name, key)
        # No task is given a local folder: no workspace, and the Feast registry is in the object store.
        if "workspace" in parameters:
            assert parameters["workspace"]["defaultValue"] == "", path.name
        if "feast" in parameters:
            assert json.loads(parameters["feast"]["defaultValue"])["root"] == "s3://ctpipe-data/feast"
        for local in (str(config.workspace), str(ROOT), "/tmp/"):
            assert local not in text, (path.name, local)
        # Credentials reach the pods only as references to a Kubernetes Secret.
        for executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
            mapped = {kv["envVar"]: s["secretName"] for s in executor["secretAsEnv"] for kv in s["keyToEnv"]}
            assert mapped["AWS_SECRET_ACCESS_KEY"] == mapped["AWS_ACCESS_KEY_ID"] == "ctpipe-object-store"
    # Under kfp.local the root stays the local one run_pipeline gives kfp.local (<workspace>/kfp/runs).
    local = build_pipeline("training", config, local=True)
    assert local.pipeline_spec.default_pipeline_root == ""
    embedded = build_pipeline("training", load_config(ROOT / "ctpipe.yaml"))
    assert embedded.pipeline_spec.default_pipeline_root == ""  # the embedded default sets none, as before
