"""Batch scoring on Kubernetes: the rendered ScheduledSparkApplication and the entry it runs.

The object is rendered from the shipped cluster configuration, validated against the spark-operator
CRD, checked for credentials, local paths and the policy, and compared with the committed YAML. The
entry, ``components/batch_predict.py`` run as a file, is run for real: by Python for ``--help``, and
by spark-submit, which gives it its Spark master as the operator's driver pod does, against a sqlite
MLflow and local files; it must write what :func:`components.batch_predict.batch_predict` writes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from components import batch_predict as batch_predict_module
from components.batch_predict import batch_predict, dataset_from_config
from components.common.errors import ConfigError
from components.specs import DatasetSpec
from pipelines import spark_application
from pipelines.config import CtpipeConfig, load_config, parse_config
from pipelines.spark_application import render_scheduled_spark_application, to_yaml
from tests.data import ENTITY, TIMESTAMP
from tests.helpers import ROOT, spark_crd_validator
from tests.manifest_policy import violations
from tests.unit.test_batch_predict import _fit, _register

CLUSTER_CONFIG = ROOT / "manifests" / "base" / "ctpipe.yaml"
SECRET = "ctpipe-object-store"
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
# The only absolute paths the object may hold: inside the components image and the pods' mounts.
CONTAINER_PATHS = ("/opt/ctpipe/", "/etc/ctpipe", "/tmp")
ENTRY_FILE = ROOT / "components" / "batch_predict.py"


@pytest.fixture(scope="module")
def config() -> CtpipeConfig:
    return load_config(CLUSTER_CONFIG)


@pytest.fixture(scope="module")
def rendered(config: CtpipeConfig) -> dict[str, Any]:
    return render_scheduled_spark_application(config)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def env_of(role: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in role["env"]}


def raw_cluster_config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_CONFIG.read_text())


# --- the rendered object ---------------------------------------------------------------------------


def test_rendering_validates_against_the_crd(rendered: dict[str, Any]) -> None:
    validator = spark_crd_validator("ScheduledSparkApplication")
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(rendered)]
    assert not errors, "\n".join(errors)
    # The validator is strict: a misspelt field and a wrong type are errors, not silently pruned.
    broken = copy.deepcopy(rendered)
    broken["spec"]["template"]["driver"]["coreLimt"] = "1"
    broken["spec"]["template"]["executor"]["instances"] = "two"
    messages = [e.message for e in validator.iter_errors(broken)]
    assert any("coreLimt" in m for m in messages) and any("'two' is not of type 'integer'" in m for m in messages)


def test_committed_yaml_is_the_rendering(rendered: dict[str, Any], tmp_path: Path) -> None:
    committed = spark_application.MANIFEST
    assert committed == ROOT / "manifests" / "base" / "scheduledsparkapplication.yaml"
    assert committed.read_text() == to_yaml(rendered), (
        f"{committed.relative_to(ROOT)} differs from the rendering; regenerate: {spark_application.REGENERATE}"
    )
    assert yaml.safe_load(committed.read_text()) == rendered
    assert (
        "scheduledsparkapplication.yaml"
        in yaml.safe_load((committed.parent / "kustomization.yaml").read_text())["resources"]
    )
    # The command the header names regenerates it, and --check says when a file is stale.
    out = tmp_path / "ssa.yaml"
    assert spark_application.main(["--config", str(CLUSTER_CONFIG), "--out", str(out)]) == 0
    assert out.read_text() == committed.read_text()
    assert spark_application.main(["--config", str(CLUSTER_CONFIG), "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("Forbid", "Allow"))
    assert spark_application.main(["--config", str(CLUSTER_CONFIG), "--out", str(out), "--check"]) == 1


def test_the_job_is_the_cluster_tiers_batch_scoring(config: CtpipeConfig, rendered: dict[str, Any]) -> None:
    spec = rendered["spec"]
    template = spec["template"]
    assert rendered["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert "namespace" not in rendered["metadata"]  # the overlays set it
    cronjob = yaml.safe_load((ROOT / "manifests" / "base" / "cronjob.yaml").read_text())
    assert spec["schedule"] == cronjob["spec"]["schedule"] == spark_application.DEFAULT_SCHEDULE
    assert spec["concurrencyPolicy"] == "Forbid"
    assert (template["type"], template["pythonVersion"], template["mode"]) == ("Python", "3", "cluster")
    assert template["sparkVersion"] == metadata.version("pyspark")
    assert template["image"] == config.infra.images.components
    assert template["mainApplicationFile"] == (
        "local:///opt/ctpipe/lib/python3.11/site-packages/components/batch_predict.py"
    )
    # The same locations as the cluster tier: the configured source in, a prefix of its bucket out.
    assert template["arguments"] == [
        "--config",
        "/etc/ctpipe/ctpipe.yaml",
        "--input-path",
        config.dataset.source,
        "--output-path",
        "s3://ctpipe-data/predictions/churn",
        "--model-uri",
        "models:/churn@champion",
    ]
    assert config.dataset.source.startswith("s3://ctpipe-data/")
    assert {"name": "config", "configMap": {"name": "ctpipe-config"}} in template["volumes"]
    driver, executor = template["driver"], template["executor"]
    assert {"name": "config", "mountPath": "/etc/ctpipe", "readOnly": True} in driver["volumeMounts"]
    assert env_of(driver)["MLFLOW_TRACKING_URI"]["value"] == config.infra.tracking_uri
    assert "MLFLOW_TRACKING_URI" not in env_of(executor)  # executors get the model as a broadcast, not from MLflow
    assert driver["serviceAccount"] == "ctpipe-spark"
    assert executor["serviceAccount"] == "ctpipe-spark-executor"
    for role in (driver, executor):
        assert env_of(role)["PYSPARK_PYTHON"]["value"] == "/opt/ctpipe/bin/python"
        assert role["podSecurityContext"]["runAsUser"] == role["securityContext"]["runAsUser"] == 1000
        assert role["podSecurityContext"]["runAsNonRoot"] is True
        assert role["cores"] >= 1 and role["coreRequest"] and role["coreLimit"] and role["memory"]
        assert {"name": "tmp", "mountPath": "/tmp"} in role["volumeMounts"]


def test_the_object_store_keys_come_from_the_secret_never_a_value(
    config: CtpipeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keys in the rendering process's environment must not leak into the manifest.
    values = {"AWS_ACCESS_KEY_ID": "AKIAABCDEFGHIJKLMNOP", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value-of-the-test"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    rendered = render_scheduled_spark_application(config)
    text = to_yaml(rendered)
    for value in values.values():
        assert value not in text
    for role in ("driver", "executor"):
        env = env_of(rendered["spec"]["template"][role])
        for key in SECRET_KEYS:
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}, role
    for entry in [*rendered["spec"]["template"]["driver"]["env"], *rendered["spec"]["template"]["executor"]["env"]]:
        if "value" in entry:
            assert not re.search(r"SECRET|KEY|TOKEN|PASSWORD", entry["name"]), entry


def test_secrets_follow_the_configuration(config: CtpipeConfig) -> None:
    raw = raw_cluster_config()
    raw["infra"]["kubernetes"]["secrets"] += [
        {"secret_name": "only-train", "env": {"x": "TRAIN_ONLY"}, "components": ["train"]},
        {"secret_name": "scoring-db", "env": {"password": "SCORING_DB_PASSWORD"}, "components": ["batch_predict"]},
    ]
    rendered = render_scheduled_spark_application(parse_config(raw, CLUSTER_CONFIG.parent))
    env = env_of(rendered["spec"]["template"]["driver"])
    assert "TRAIN_ONLY" not in env
    assert env["SCORING_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "scoring-db", "key": "password"}


def test_no_local_path_and_no_dependence_on_where_the_config_is(
    rendered: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for text in strings(rendered):
        # This checkout, the home folder and the temporary folder of the machine that rendered it.
        for machine in (str(ROOT), str(Path.home()), str(tmp_path.parent.parent), tempfile.gettempdir() + os.sep):
            assert machine not in text, text
        if text.startswith("/"):
            assert text.startswith(CONTAINER_PATHS), f"{text}: not a path of the image or the pods' mounts"
        if text.startswith("local://"):
            assert text.removeprefix("local://").startswith("/opt/ctpipe/"), text
    # The same configuration elsewhere, read from another working directory, renders the same object.
    copied = tmp_path / "elsewhere" / "ctpipe.yaml"
    copied.parent.mkdir()
    shutil.copy(CLUSTER_CONFIG, copied)
    monkeypatch.chdir(tmp_path)
    assert render_scheduled_spark_application(load_config(copied)) == rendered


def test_the_application_file_is_where_the_image_installs_ctpipe() -> None:
    dockerfile = (ROOT / "containers" / "Dockerfile").read_text()
    python = re.search(r"^ARG BASE_IMAGE=python:(\d+\.\d+)", dockerfile, re.M)
    assert python, "containers/Dockerfile: expected ARG BASE_IMAGE=python:X.Y"
    assert "python3 -m venv /opt/ctpipe" in dockerfile
    assert re.search(r"PYSPARK_PYTHON=/opt/ctpipe/bin/python\b", dockerfile)
    assert f"/opt/ctpipe/lib/python{python.group(1)}/site-packages" == spark_application.IMAGE_SITE_PACKAGES
    relative = spark_application.MAIN_APPLICATION_FILE.removeprefix(f"local://{spark_application.IMAGE_SITE_PACKAGES}/")
    assert (ROOT / relative) == ENTRY_FILE and ENTRY_FILE.is_file()
    assert f"COPY {relative.split('/')[0]} /src/{relative.split('/')[0]}" in dockerfile  # the package is installed


def test_policy_passes_and_reads_spark_fields(rendered: dict[str, Any]) -> None:
    assert violations([rendered]) == []
    broken = copy.deepcopy(rendered)
    template = broken["spec"]["template"]
    template["image"] = "ctpipe/components:latest"
    del template["driver"]["coreLimit"]
    del template["executor"]["memory"]
    template["executor"]["securityContext"]["runAsUser"] = 0
    template["executor"]["envVars"] = {"AWS_SECRET_ACCESS_KEY": "literal"}
    template["driver"]["securityContext"]["readOnlyRootFilesystem"] = False
    name = "ScheduledSparkApplication/ctpipe-batch-scoring"
    assert sorted(violations([broken])) == sorted(
        [
            f"{name}: container driver: no cpu limit (coreLimit)",
            f"{name}: container driver: image 'ctpipe/components:latest' uses the latest tag",
            f"{name}: container driver: readOnlyRootFilesystem is not true",
            f"{name}: container executor: no memory (memory sets the pod's memory request and limit)",
            f"{name}: container executor: image 'ctpipe/components:latest' uses the latest tag",
            f"{name}: container executor: runAsUser is 0 (root)",
            f"{name}: container executor: env AWS_SECRET_ACCESS_KEY has a literal value; use valueFrom.secretKeyRef",
        ]
    )


def test_bad_inputs_are_named_with_what_was_expected(config: CtpipeConfig, capsys: pytest.CaptureFixture) -> None:
    embedded = load_config(ROOT / "ctpipe.yaml")  # a local source and sqlite MLflow: nothing a pod reaches
    with pytest.raises(ConfigError, match=r"dataset\.source: expected an s3:// \(or s3a://\) URI.*found '/"):
        render_scheduled_spark_application(embedded)
    with pytest.raises(ConfigError, match=r"output_uri: expected an s3:// .*found 'gs://bucket/out'"):
        render_scheduled_spark_application(config, output_uri="gs://bucket/out")
    with pytest.raises(ConfigError, match=r"input_uri: .*names no bucket"):
        render_scheduled_spark_application(config, input_uri="s3:///key")
    with pytest.raises(ConfigError, match=r"schedule: expected a cron expression .* found 'nightly'"):
        render_scheduled_spark_application(config, schedule="nightly")
    with pytest.raises(ConfigError) as info:
        render_scheduled_spark_application(config, output_uri="s3://key:hunter2@bucket/out")
    assert "hunter2" not in str(info.value)
    raw = raw_cluster_config()
    raw["infra"]["profile"] = "embedded"
    raw["infra"]["tracking_uri"] = "sqlite:///mlflow.db"
    with pytest.raises(ConfigError, match=r"infra\.tracking_uri: expected the URL of an MLflow server.*sqlite"):
        render_scheduled_spark_application(parse_config(raw, CLUSTER_CONFIG.parent))
    assert render_scheduled_spark_application(config, schedule="@daily")["spec"]["schedule"] == "@daily"

    assert spark_application.main(["--config", str(ROOT / "ctpipe.yaml")]) == 1
    assert "error: dataset.source: expected an s3://" in capsys.readouterr().err
    assert spark_application.main(["--config", str(CLUSTER_CONFIG), "--schedule", "0 */6 * * *"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["spec"]["schedule"] == "0 */6 * * *"


# --- the entry the driver runs -----------------------------------------------------------------------


def test_entry_reads_the_dataset_of_the_mounted_config(config: CtpipeConfig) -> None:
    assert dataset_from_config(CLUSTER_CONFIG) == config.dataset


def test_entry_runs_as_a_script_and_shadows_nothing(tmp_path: Path) -> None:
    # -X importtime lists every module imported (stderr), so a sibling shadowing a top-level name would show.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(ENTRY_FILE), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for option in ("--config", "--dataset-json", "--input-path", "--model-uri", "--tracking-uri", "--output-path"):
        assert option in result.stdout
    assert "--spark-master" in result.stdout and "spark-submit" in result.stdout
    siblings = {p.stem for p in ENTRY_FILE.parent.glob("*.py") if p.stem != "__init__"} | {"common"}
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "numpy" in imported  # the listing works
    assert not imported & siblings, f"top-level modules named like files of components/: {imported & siblings}"


SPEC_JSON = '{"entity_column": "id", "timestamp_column": "ts", "label_column": "y", "numeric_features": ["x"]}'


@pytest.mark.parametrize(
    ("spec", "tracking", "code", "message"),
    [
        (["--config", "c.yaml", "--dataset-json", SPEC_JSON], True, 2, "argument --dataset-json: not allowed with"),
        ([], True, 2, "one of the arguments --config --dataset-json is required"),
        (["--dataset-json", SPEC_JSON], False, 2, "--tracking-uri is required (or set MLFLOW_TRACKING_URI)"),
        (["--dataset-json", "[1, 2]"], True, 1, "error: --dataset-json: expected a JSON object such as {"),
        (["--dataset-json", "{entity"], True, 1, "error: --dataset-json: not JSON ("),
        (
            ["--dataset-json", '{"entity_column": "id", "timestamp_column": "ts", "label_column": "y"}'],
            True,
            1,
            "numeric_features and categorical_features are both empty",
        ),
        (["--config", "missing.yaml"], True, 1, "missing.yaml: configuration file not found"),
    ],
)
def test_entry_names_bad_arguments_before_spark_starts(
    spec: list[str],
    tracking: bool,
    code: int,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative --config is looked up here
    argv = [*spec, "--input-path", "in.parquet", "--model-uri", "models:/churn@champion", "--output-path", "out"]
    if tracking:
        argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    if code == 2:  # argparse's own exit for a malformed command line
        with pytest.raises(SystemExit) as info:
            batch_predict_module.main(argv)
        assert info.value.code == 2
    else:
        assert batch_predict_module.main(argv) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_entry_names_a_bad_dataset_section(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "ctpipe.yaml"
    args = ["--input-path", "in.parquet", "--model-uri", "m", "--output-path", "out", "--tracking-uri", "sqlite://"]
    config.write_text("model: {}\n")
    assert batch_predict_module.main(["--config", str(config), *args]) == 1
    assert f"{config}: expected a 'dataset' mapping (the dataset spec), found no such key" in capsys.readouterr().err
    raw = raw_cluster_config()
    raw["dataset"]["entity_colum"] = raw["dataset"].pop("entity_column")
    config.write_text(yaml.safe_dump(raw))
    assert batch_predict_module.main(["--config", str(config), *args]) == 1
    err = capsys.readouterr().err
    assert "dataset.entity_column: required key is missing" in err
    assert "dataset.entity_colum: unknown key (check its spelling)" in err


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, churn_frame: pd.DataFrame) -> dict[str, Any]:
    """A model registered as churn@champion in a sqlite MLflow."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    version = _register(_fit(churn_frame), uri, "churn", alias="champion")
    return {"uri": uri, "version": version}


def _predictions(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path).drop(columns=["scored_at"])
    frame["date"] = frame["date"].astype(str)
    return frame.sort_values([ENTITY, TIMESTAMP], kind="stable").reset_index(drop=True)


def test_entry_under_spark_submit_writes_what_the_function_writes(
    champion: dict[str, Any], churn_data: tuple[Path, Any], dataset_spec: DatasetSpec, tmp_path: Path
) -> None:
    import pyspark

    source = str(churn_data[0])
    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    by_entry = tmp_path / "by_entry"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    # As in the driver pod: spark-submit gives the master (no --spark-master) and runs the file as the application.
    result = subprocess.run(
        [
            str(spark_submit),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            str(ENTRY_FILE),
            "--dataset-json",
            dataset_spec.model_dump_json(exclude={"source"}),
            "--input-path",
            source,
            "--tracking-uri",
            champion["uri"],
            "--model-uri",
            "models:/churn@champion",
            "--output-path",
            str(by_entry),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    # spark-submit merges the Python process's stderr (ctpipe's JSON log lines) into its stdout, beside the result.
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("{")]
    logs = [json.loads(line) for line in lines if line.startswith('{"ts"')]
    assert [line["master"] for line in logs if line["msg"] == "spark session"] == ["local[2]"], lines
    (printed,) = [json.loads(line) for line in lines if line.startswith('{"rows"')]
    assert printed["model_version"] == champion["version"] and printed["bad_rows"] == 0

    by_function = tmp_path / "by_function"
    expected = batch_predict(
        source, dataset_spec, "models:/churn@champion", champion["uri"], str(by_function), spark_master="local[2]"
    )
    assert printed["rows"] == expected.rows == len(pd.read_parquet(source))
    assert printed["partitions"] == expected.partitions
    pd.testing.assert_frame_equal(_predictions(by_entry), _predictions(by_function))
