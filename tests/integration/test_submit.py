"""ctpipe submit: the dry run prints what would be sent; the seam makes exactly those kfp.Client calls."""

import json
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from components.common.errors import ConfigError
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.submit import Connection, KfpSeam, SubmitFailed, cron_for_kfp, submit
from tests.helpers import ROOT

WINDOW = {"window_start": "2026-01-05T00:00:00+00:00", "window_end": "2026-01-12T00:00:00+00:00"}


class FakeKfpClient:
    """Stands in for the external kfp.Client API: records calls, answers like the server would."""

    def __init__(self, existing_pipeline=None, fail=None, **kwargs):
        self.init_kwargs, self.calls = kwargs, []
        self.existing_pipeline, self.fail = existing_pipeline, fail

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
    raw["infra"].update(
        profile="cluster",
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
    assert ".upload_pipeline_version(" in text and "pipeline_version_name='abc123'" in text
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
    assert methods == ["get_pipeline_id", "upload_pipeline_version", "create_experiment", "create_recurring_run"]
    assert client.calls[1][1]["pipeline_id"] == "p-9"
    assert client.calls[-1][1]["cron_expression"] == "0 0 3 * * 1"
    assert plan.recurring_run_id == "rr-1"


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


def test_example_ci_workflow_compiles_on_push_and_submits_on_tags():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ctpipe.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert "tags" in triggers["push"] and "branches" in triggers["push"]
    compile_steps = " ".join(step.get("run", "") for step in workflow["jobs"]["compile"]["steps"])
    assert "ctpipe compile" in compile_steps
    submit_job = workflow["jobs"]["submit"]
    assert submit_job["if"] == "startsWith(github.ref, 'refs/tags/v')"
    runs = [step.get("run", "") for step in submit_job["steps"]]
    assert any("ctpipe submit training" in run and "--dry-run" in run for run in runs)
    assert any("--schedule" in run for run in runs)
    assert set(submit_job["env"]) == {"KF_PIPELINES_ENDPOINT", "KF_PIPELINES_TOKEN_FILE"}
