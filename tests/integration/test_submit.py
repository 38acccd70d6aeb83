"""ctpipe submit: the dry run prints what would be sent; the seam makes exactly those kfp.Client calls.

Every upload carries a version (CI's tag, the CronJob image's commit), and the CI workflow and
the CronJob submit what the cluster config compiles to, for the window they name.
"""

import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from components.common.errors import ConfigError
from pipelines import cli
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.submit import Connection, KfpSeam, SubmitFailed, cron_for_kfp, package_digest, submit
from tests.helpers import ROOT

CLUSTER_CONFIG = ROOT / "manifests" / "base" / "ctpipe.yaml"  # the shipped cluster profile, the CronJob's config

WINDOW = {"window_start": "2026-01-05T00:00:00+00:00", "window_end": "2026-01-12T00:00:00+00:00"}


class FakeKfpClient:
    """Stands in for the external kfp.Client API: records calls, answers like the server would."""

    def __init__(self, existing_pipeline=None, fail=None, existing_versions=(), **kwargs):
        self.init_kwargs, self.calls = kwargs, []
        self.existing_pipeline, self.fail = existing_pipeline, fail
        self.existing_versions = dict(existing_versions)  # version name -> id

    def _record(self, method, kwargs):
        self.calls.append((method, kwargs))
        if method == self.fail:
            raise RuntimeError("(409) AlreadyExists: pipeline version exists")

    def get_pipeline_id(self, **kwargs):
        self._record("get_pipeline_id", kwargs)
        return self.existing_pipeline

    def upload_pipeline(self, **kwargs):
        self._record("upload_pipeline", kwargs)
        return SimpleNamespace(pipeline_id="p-1")

    def list_pipeline_versions(self, **kwargs):
        self._record("list_pipeline_versions", kwargs)
        (predicate,) = json.loads(kwargs["filter"])["predicates"]
        assert (predicate["key"], predicate["operation"]) == ("display_name", 1)  # EQUALS
        found = self.existing_versions.get(predicate["stringValue"])
        return SimpleNamespace(pipeline_versions=[SimpleNamespace(pipeline_version_id=found)] if found else None)

    def upload_pipeline_version(self, **kwargs):
        self._record("upload_pipeline_version", kwargs)
        return SimpleNamespace(pipeline_version_id="v-1")

    def create_experiment(self, **kwargs):
        self._record("create_experiment", kwargs)
        return SimpleNamespace(experiment_id="e-1")

    def run_pipeline(self, **kwargs):
        self._record("run_pipeline", kwargs)
        return SimpleNamespace(run_id="r-1")

    def create_recurring_run(self, **kwargs):
        self._record("create_recurring_run", kwargs)
        return SimpleNamespace(recurring_run_id="rr-1")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from pipelines.runner import compile_pipelines

    out = tmp_path_factory.mktemp("pkg")
    (path,) = compile_pipelines(load_config(ROOT / "ctpipe.yaml"), out, ["training"])
    return path


def _cluster_config(tmp_path, token="secret-token"):
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    # Shared state every pod reaches: a cluster config names it (CtpipeConfig refuses one that does not).
    raw["feast"].update(
        root="s3://ctpipe-data/feast", online_store="redis", redis_connection_string="redis.ns.svc:6379"
    )
    raw["infra"].update(
        profile="cluster",
        tracking_uri="http://mlflow.ns.svc:5000",
        kfp_host="https://kfp.example",
        kfp={"namespace": "team-ml", "token_file": str(token_file), "experiment": "churn"},
    )
    from pipelines.config import parse_config

    return parse_config(raw, tmp_path)


def test_dry_run_prints_upload_experiment_parameters_and_never_builds_a_client(package, monkeypatch):
    import kfp

    def forbidden(*args, **kwargs):
        raise AssertionError("kfp.Client must not be constructed in a dry run")

    monkeypatch.setattr(kfp, "Client", forbidden)
    args = ["--config", str(ROOT / "ctpipe.yaml"), "submit", "training", "--package", str(package)]
    args += ["--version", "abc123", "--param", f"window_start={WINDOW['window_start']}", "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    text = result.stdout
    uploaded = f"abc123-{package_digest(package)[:8]}"  # the code version and the package's digest
    assert ".upload_pipeline_version(" in text and f"pipeline_version_name='{uploaded}'" in text
    assert "pipeline_name='ctpipe-training'" in text
    assert ".create_experiment(" in text and "name='ctpipe'" in text
    assert ".run_pipeline(" in text and f"params={{'window_start': '{WINDOW['window_start']}'}}" in text
    assert "enable_caching=True" in text
    assert "dry run: nothing was sent" in text

    plain = CliRunner().invoke(main, [*args, "--schedule", "0 3 * * 1", "--no-cache", "--json"])
    assert plain.exit_code == 0, plain.output
    plan = json.loads(plain.stdout)
    assert plan["dry_run"] is True
    methods = [c["method"] for c in plan["calls"]]
    assert methods == [
        "get_pipeline_id",
        "upload_pipeline",
        "upload_pipeline_version",
        "create_experiment",
        "create_recurring_run",
    ]
    recurring = plan["calls"][-1]["kwargs"]
    assert recurring["cron_expression"] == "0 0 3 * * 1"  # KFP's cron has seconds first
    assert "0 3 * * 1" in plan["calls"][-1]["note"]
    assert recurring["enable_caching"] is False
    assert recurring["params"] == {"window_start": WINDOW["window_start"]}


def test_seam_sends_exactly_the_planned_calls_to_kfp_client(package, tmp_path):
    config = _cluster_config(tmp_path)
    made = []

    def factory(**kwargs):
        made.append(FakeKfpClient(**kwargs))
        return made[-1]

    dry = submit(config, "training", package, WINDOW, version="abc123", dry_run=True, environ={})
    sent = submit(config, "training", package, WINDOW, version="abc123", client_factory=factory, environ={})

    (client,) = made
    assert client.init_kwargs == {
        "host": "https://kfp.example",
        "namespace": "team-ml",
        "existing_token": "secret-token",
        "verify_ssl": True,
    }
    assert dry.client["existing_token"].startswith("<contents of")  # never printed
    ids = {"<pipeline_id>": "p-1", "<pipeline_version_id>": "v-1", "<experiment_id>": "e-1"}

    def resolved(kwargs):
        return {k: ids.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}

    assert client.calls == [(c.method, resolved(c.kwargs)) for c in dry.calls]
    assert client.calls[-1] == (
        "run_pipeline",
        {
            "experiment_id": "e-1",
            "job_name": "training-abc123",
            "params": WINDOW,
            "pipeline_id": "p-1",
            "version_id": "v-1",
            "enable_caching": True,
        },
    )
    assert client.calls[3] == ("create_experiment", {"name": "churn", "namespace": "team-ml"})
    assert (sent.run_id, sent.version_id, sent.experiment_id) == ("r-1", "v-1", "e-1")


def test_an_existing_pipeline_gets_a_new_version_not_a_new_pipeline(package, tmp_path):
    config = _cluster_config(tmp_path)
    client = FakeKfpClient(existing_pipeline="p-9")
    plan = submit(
        config, "training", package, version="def456", schedule="0 3 * * 1", client_factory=lambda **_: client
    )
    methods = [method for method, _ in client.calls]
    assert methods == [
        "get_pipeline_id",
        "list_pipeline_versions",  # is this very package uploaded already?
        "upload_pipeline_version",
        "create_experiment",
        "create_recurring_run",
    ]
    assert client.calls[2][1]["pipeline_id"] == "p-9"
    assert client.calls[-1][1]["cron_expression"] == "0 0 3 * * 1"
    assert plan.recurring_run_id == "rr-1"


def test_the_same_code_and_package_are_uploaded_once_and_reused(package, tmp_path):
    """A CronJob submits every day: the same image and config reuse their version instead of failing on it."""
    config = _cluster_config(tmp_path)
    name = f"abc123-{package_digest(package)[:8]}"
    client = FakeKfpClient(existing_pipeline="p-9", existing_versions={name: "v-7"})
    plan = submit(config, "training", package, WINDOW, version="abc123", client_factory=lambda **_: client)
    assert [method for method, _ in client.calls] == [
        "get_pipeline_id",
        "list_pipeline_versions",
        "create_experiment",
        "run_pipeline",
    ]
    assert client.calls[-1][1]["version_id"] == "v-7" and plan.version_id == "v-7" and plan.version == name
    # Another code version (or another config, hence another package) is a new version.
    other = FakeKfpClient(existing_pipeline="p-9", existing_versions={name: "v-7"})
    submit(config, "training", package, WINDOW, version="abc124", client_factory=lambda **_: other)
    uploads = [kwargs for method, kwargs in other.calls if method == "upload_pipeline_version"]
    assert [u["pipeline_version_name"] for u in uploads] == [f"abc124-{package_digest(package)[:8]}"]
    assert "at abc124 (package sha256 " in uploads[0]["description"]


def test_every_upload_carries_a_version_never_unknown(package, tmp_path, monkeypatch):
    """--version, else CTPIPE_VERSION (the images set it to their commit), else the checkout's commit; else refuse."""
    from pipelines.runner import resolve_code_version

    monkeypatch.chdir(tmp_path)  # no git checkout here, as in the CronJob's image
    monkeypatch.delenv("CTPIPE_VERSION", raising=False)
    args = ["--config", str(ROOT / "ctpipe.yaml"), "submit", "training", "--package", str(package), "--dry-run"]
    refused = CliRunner().invoke(main, [*args, "--json"])
    assert refused.exit_code == 1
    error = json.loads(refused.stdout.splitlines()[0])
    assert error["type"] == "ConfigError" and "no pipeline version" in error["error"]
    assert "CTPIPE_VERSION" in error["hint"]
    with pytest.raises(ConfigError, match="no pipeline version"):
        submit(load_config(ROOT / "ctpipe.yaml"), "training", package, version="unknown", dry_run=True)

    from_image = CliRunner().invoke(main, [*args, "--json"], env={"CTPIPE_VERSION": "0123456789ab"})
    assert from_image.exit_code == 0, from_image.output
    plan = json.loads(from_image.stdout)
    assert plan["version"] == f"0123456789ab-{package_digest(package)[:8]}"
    upload = next(c for c in plan["calls"] if c["method"] == "upload_pipeline_version")
    assert upload["kwargs"]["pipeline_version_name"] == plan["version"]

    flag = CliRunner().invoke(main, [*args, "--json", "--version", "v1.2.0"], env={"CTPIPE_VERSION": "0123456789ab"})
    assert json.loads(flag.stdout)["version"].startswith("v1.2.0-")
    # In a checkout the commit is the version; the environment wins when set; "unknown" counts as unset.
    assert resolve_code_version({}, cwd=ROOT) == resolve_code_version({"CTPIPE_VERSION": "unknown"}, cwd=ROOT)
    assert re.fullmatch(r"[0-9a-f]{12}", resolve_code_version({}, cwd=ROOT))
    assert resolve_code_version({"CTPIPE_VERSION": "abc"}, cwd=ROOT) == "abc"
    assert resolve_code_version({}, cwd=tmp_path) == "unknown"


def test_errors_are_clear(package, tmp_path):
    config = load_config(ROOT / "ctpipe.yaml")
    with pytest.raises(ConfigError, match="KF_PIPELINES_ENDPOINT"):
        submit(config, "training", package, version="x", environ={}, client_factory=FakeKfpClient)
    with pytest.raises(ConfigError, match="5 fields"):
        cron_for_kfp("every monday")
    cluster = _cluster_config(tmp_path)
    with pytest.raises(SubmitFailed, match=r"upload_pipeline_version failed.*AlreadyExists"):
        submit(
            cluster,
            "training",
            package,
            version="x",
            client_factory=lambda **_: FakeKfpClient(fail="upload_pipeline_version"),
        )
    env = {"KF_PIPELINES_ENDPOINT": "http://kfp.local:8888", "KF_PIPELINES_TOKEN_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="token file"):
        Connection.from_config(config, env).client_kwargs()
    with pytest.raises(RuntimeError, match="dry-run"):
        _ = KfpSeam(Connection.from_config(config, env), dry_run=True).client


def _ctpipe_commands(steps):
    """The ``ctpipe`` command lines of workflow steps, as argument lists (YAML's folded lines joined)."""
    return [shlex.split(step["run"])[1:] for step in steps if step.get("run", "").startswith("ctpipe ")]


def test_example_ci_workflow_compiles_both_profiles_and_submits_versioned_cluster_pipelines_on_tags():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ctpipe.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert "tags" in triggers["push"] and "branches" in triggers["push"]
    compiles = _ctpipe_commands(workflow["jobs"]["compile"]["steps"])
    assert all("compile" in command for command in compiles)
    configs = {command[command.index("--config") + 1] for command in compiles}
    assert configs == {"ctpipe.yaml", "manifests/base/ctpipe.yaml"}  # the embedded and the cluster profile
    outs = [command[command.index("--out") + 1] for command in compiles]
    assert len(set(outs)) == 2  # one folder each: neither overwrites the other
    upload = next(s for s in workflow["jobs"]["compile"]["steps"] if "upload-artifact" in s.get("uses", ""))
    assert all(out.startswith(upload["with"]["path"].rstrip("/")) for out in outs)

    submit_job = workflow["jobs"]["submit"]
    assert submit_job["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(submit_job["env"]) == {"KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN_FILE"}
    submits = _ctpipe_commands(submit_job["steps"])
    assert any(c[c.index("submit") + 1] == "training" and "--dry-run" in c for c in submits)
    assert any("--schedule" in c and c[c.index("submit") + 1] == "continuous_training" for c in submits)
    cluster_out = outs[[c[c.index("--config") + 1] for c in compiles].index("manifests/base/ctpipe.yaml")]
    for command in submits:
        # Every upload is the cluster profile's package, under the tag as its version.
        assert command[command.index("--config") + 1] == "manifests/base/ctpipe.yaml", command
        assert command[command.index("--package") + 1].startswith(cluster_out + "/"), command
        assert command[command.index("--version") + 1] == "${GITHUB_REF_NAME}", command
    # The cluster config names no endpoint, so the workflow's KF_PIPELINES_ENDPOINT decides (config would win).
    assert load_config(ROOT / "manifests" / "base" / "ctpipe.yaml").infra.kfp_host is None


def test_the_workflows_compile_steps_work_and_the_cluster_ir_is_the_cluster_profile(tmp_path, monkeypatch):
    """Run the workflow's own compile commands (output under tmp_path) against the shipped configs."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ctpipe.yml").read_text())
    monkeypatch.chdir(ROOT)  # the workflow runs from the checkout's root
    compiled = {}
    for command in _ctpipe_commands(workflow["jobs"]["compile"]["steps"]):
        out = tmp_path / command[command.index("--out") + 1]
        command[command.index("--out") + 1] = str(out)
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0, result.output
        compiled[command[command.index("--config") + 1]] = json.loads(result.stdout)["compiled"]
    cluster = {Path(p).stem: Path(p) for p in compiled["manifests/base/ctpipe.yaml"]}
    assert set(cluster) == {Path(p).stem for p in compiled["ctpipe.yaml"]} == set(cli.PIPELINE_NAMES)
    config = load_config(CLUSTER_CONFIG)
    for name, path in cluster.items():
        text = path.read_text()
        parameters = next(yaml.safe_load_all(text))["root"]["inputDefinitions"]["parameters"]  # then the platform spec
        assert "sqlite:" not in text and ".workspace" not in text, name
        if "tracking_uri" in parameters:
            assert parameters["tracking_uri"]["defaultValue"] == config.tracking_uri
        if "profile" in parameters:
            assert parameters["profile"]["defaultValue"] == "cluster"
        if "schedule" in parameters:  # recurring runs read T-1 of schedule.window
            assert json.loads(parameters["schedule"]["defaultValue"])["window"] == config.schedule.window
            assert "{{$.pipeline_job_schedule_time_utc}}" in text


def _cronjob_container():
    cronjob = yaml.safe_load((ROOT / "manifests" / "base" / "cronjob.yaml").read_text())
    return cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def test_the_cronjob_submits_its_window_from_its_clock_under_the_image_version(tmp_path, monkeypatch):
    """The CronJob's own command, run as a dry run in a folder with no checkout, as in its image."""
    import kfp

    from pipelines.runner import scheduled_params

    container = _cronjob_container()
    command = list(container["command"])
    assert command[:3] == ["ctpipe", "submit", "continuous_training"]
    assert command[command.index("--at") + 1] == "now"  # the window from the CronJob's own clock
    assert command[command.index("--config") + 1] == "/etc/ctpipe/ctpipe.yaml"
    assert command[command.index("--out") + 1].startswith("/tmp/")  # the root filesystem is read-only
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The version: CTPIPE_VERSION, which the components image sets to its build commit.
    dockerfile = (ROOT / "containers" / "Dockerfile").read_text()
    components_stage = dockerfile[dockerfile.index("AS components") :]
    assert "ENV CTPIPE_VERSION=${GIT_COMMIT}" in components_stage
    assert "--version" not in command or env.get("CTPIPE_VERSION")

    def forbidden(*args, **kwargs):
        raise AssertionError("kfp.Client must not be constructed in a dry run")

    monkeypatch.setattr(kfp, "Client", forbidden)
    monkeypatch.chdir(tmp_path)
    args = [*command[1:], "--dry-run", "--json"]
    args[args.index("--config") + 1] = str(CLUSTER_CONFIG)  # what the ConfigMap mounts there
    args[args.index("--out") + 1] = str(tmp_path / "pipelines")
    run_env = {"KF_PIPELINES_ENDPOINT": env["KF_PIPELINES_ENDPOINT"], "CTPIPE_VERSION": "c0ffee123456"}
    config = load_config(CLUSTER_CONFIG)
    before = scheduled_params(config, "continuous_training", datetime.now(UTC))
    result = CliRunner().invoke(main, args, env=run_env)
    after = scheduled_params(config, "continuous_training", datetime.now(UTC))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    package = tmp_path / "pipelines" / "continuous_training.yaml"
    assert plan["package"] == str(package)
    assert plan["version"] == f"c0ffee123456-{package_digest(package)[:8]}"
    assert plan["client"]["host"] == "http://ml-pipeline.kubeflow.svc:8888"
    run = plan["calls"][-1]
    assert run["method"] == "run_pipeline"
    # The window is explicit: T-1 before now, and T-2 as the monitoring reference (the clock may tick
    # over a boundary while the command runs: then it is the window of either moment).
    assert run["kwargs"]["params"] in (before, after)
    assert set(before) == {"window_start", "window_end", "reference_start", "reference_end"}
    assert before["reference_end"] == before["window_start"]
    # The compiled pipeline's lineage names the same code version.
    lineage = next(yaml.safe_load_all(package.read_text()))["root"]["inputDefinitions"]["parameters"]["lineage"]
    assert lineage["defaultValue"]["code_version"] == "c0ffee123456"
