import json
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.runner import PIPELINES
from tests.helpers import ROOT


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path in the CLI, walked from the tree so a new command is covered too."""
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("command", _commands(main), ids=lambda c: " ".join(c) or "ctpipe")
def test_every_command_has_help_with_examples(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Example" in result.output, f"`ctpipe {' '.join(command)} --help` shows no example"


def _example_lines(command: tuple[str, ...]) -> list[str]:
    """The lines of a command's docstring from its ``Example(s):`` line to the end of that paragraph."""
    node: click.Command = main
    for name in command:
        assert isinstance(node, click.Group)
        node = node.commands[name]
    lines = [line.strip() for line in (node.help or "").splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Example"))
    block = lines[start:]
    return block[: block.index("")] if "" in block else block


@pytest.mark.parametrize("command", _commands(main), ids=lambda c: " ".join(c) or "ctpipe")
def test_help_shows_each_example_on_its_own_line(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "\\b" not in result.output and "\b" not in result.output  # the no-rewrap marker is not printed
    shown = [line.strip() for line in result.output.splitlines()]
    examples = _example_lines(command)
    assert len(examples) >= 2, examples  # "Example(s):" and at least one example
    for line in examples:
        assert line in shown, f"`ctpipe {' '.join(command)} --help` wrapped {line!r} into a paragraph"


def test_a_failure_with_json_is_json_too(tmp_path):
    missing = tmp_path / "absent.yaml"
    result = CliRunner().invoke(main, ["--config", str(missing), "compile", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout.splitlines()[0])
    assert "absent.yaml" in error["error"]


def test_compile_json(tmp_path):
    result = CliRunner().invoke(
        main, ["--config", str(ROOT / "ctpipe.yaml"), "compile", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["compiled"]) == len(PIPELINES)


def test_bad_config_is_one_line_and_a_hint(tmp_path):
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["model"]["estimatr"] = "x"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    for args in (["--config", str(bad), "config"], ["config", "--config", str(bad)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, args
        assert "model.estimatr: unknown key" in result.output
        assert "hint:" in result.output
        assert "Traceback" not in result.output


def test_serve_stop_as_a_real_process_with_config_first(tmp_path):
    """`ctpipe --config F serve --stop` as users type it: kserve's import-time argv parser must not see --config.

    CliRunner leaves sys.argv alone, so only a real process shows what kserve's parser does with it.
    """
    import subprocess
    import sys

    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["infra"]["workspace"] = str(tmp_path / "ws")
    config = tmp_path / "ctpipe.yaml"
    config.write_text(yaml.safe_dump(raw))
    ctpipe = str(Path(sys.executable).with_name("ctpipe"))
    done = subprocess.run(
        [ctpipe, "--config", str(config), "serve", "--stop"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "no local model server was running" in done.stdout


def test_data_generate(tmp_path):
    out = tmp_path / "d.parquet"
    args = [
        "--config",
        str(ROOT / "ctpipe.yaml"),
        "data",
        "generate",
        "--out",
        str(out),
        "--windows",
        "2",
        "--rows",
        "50",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote 100 rows in 2 windows" in result.output


def test_inference_log_maintain_applies_retention_and_compacts(tmp_path):
    import pandas as pd

    from components.common.inference_log import append_batch, read_window

    log_dir = tmp_path / "inference_log"
    today = pd.Timestamp.now(tz="UTC").normalize()
    for stamp in (today - pd.Timedelta(days=40), today - pd.Timedelta(days=2), today - pd.Timedelta(days=2), today):
        rows = {"request_id": ["r"], "timestamp": [stamp], "model_name": "m", "model_version": "1", "prediction": [0.5]}
        append_batch(log_dir, pd.DataFrame(rows))
    args = ["--config", str(ROOT / "ctpipe.yaml"), "inference-log", "maintain", "--log-dir", str(log_dir)]
    result = CliRunner().invoke(main, [*args, "--retention-days", "30", "--json"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["pruned_days"] == [(today - pd.Timedelta(days=40)).strftime("%Y-%m-%d")]
    assert outcome["compacted_days"] == {(today - pd.Timedelta(days=2)).strftime("%Y-%m-%d"): 2}
    assert len(read_window(log_dir)) == 3
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "deleted 0 day(s)" in again.output and "compacted 0 day(s)" in again.output


def _environments_config(tmp_path, requires):
    """The repository's config on a sqlite registry of its own, with ``requires`` as prod's gate."""
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw.setdefault("infra", {})["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw["infra"]["workspace"] = str(tmp_path / "workspace")
    raw.setdefault("serving", {})["model_name"] = "churn-envs"
    raw["environments"] = {"prod": {"namespace": "ctpipe-production", "requires": requires}}
    path = tmp_path / "ctpipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw["infra"]["tracking_uri"]


def test_promote_to_staging_then_prod_through_the_gate_and_status(tmp_path):
    from mlflow import MlflowClient

    from components.common import registry
    from components.common.environments import record_canary_verdict

    path, uri = _environments_config(tmp_path, {"passed_previous": True, "canary_passed": True, "min_hours": 0})
    client = MlflowClient(uri)
    # Made the old way: a champion and a challenger, nothing else.
    client.create_registered_model("churn-envs")
    for number in (1, 2):
        client.create_model_version("churn-envs", source=f"/nowhere/{number}", tags={registry.BLESSED_TAG: "true"})
    client.set_registered_model_alias("churn-envs", "champion", "1")
    client.set_registered_model_alias("churn-envs", "challenger", "2")
    cli = ["--config", str(path)]

    refused = CliRunner().invoke(main, [*cli, "promote", "--to", "prod", "--version", "2"])
    assert refused.exit_code == 1
    assert "refusing to promote model 'churn-envs' version 2 to prod" in refused.output
    assert "expected tag ctpipe.env.staging.since, found none" in refused.output

    staged = CliRunner().invoke(main, [*cli, "promote", "--to", "staging", "--json"])
    assert staged.exit_code == 0, staged.output
    assert json.loads(staged.stdout) == {
        "name": "churn-envs",
        "environment": "staging",
        "alias": "staging-champion",
        "previous": None,
        "current": "2",
    }
    still = CliRunner().invoke(main, [*cli, "promote", "--to", "prod"])
    assert still.exit_code == 1 and "expected ctpipe.env.staging.canary_decision='promote', found None" in still.output

    record_canary_verdict(client, "churn-envs", "2", "staging", "promote", "all checks passed")
    promoted = CliRunner().invoke(main, [*cli, "promote", "--to", "prod"])
    assert promoted.exit_code == 0, promoted.output
    assert "churn-envs@champion (prod): version 1 → 2" in promoted.output

    status = CliRunner().invoke(main, [*cli, "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = {row["environment"]: row for row in json.loads(status.stdout)}
    assert (rows["prod"]["version"], rows["staging"]["version"], rows["dev"]["version"]) == ("2", "2", None)
    assert rows["staging"]["canary"] == "v2: promote"
    table = CliRunner().invoke(main, [*cli, "status"])
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[1].split()[:3] == ["environment", "version", "alias"]
    assert lines[4].split()[:3] == ["prod", "2", "champion"]

    lineage = CliRunner().invoke(main, [*cli, "lineage", "churn-envs", "2"])
    assert lineage.exit_code == 0 and "serves_in=staging,prod" in lineage.output


def test_plain_promote_keeps_its_old_behaviour_and_min_hours_refuses(tmp_path):
    from mlflow import MlflowClient

    from components.common import registry

    path, uri = _environments_config(tmp_path, {"min_hours": 1})
    client = MlflowClient(uri)
    client.create_registered_model("churn-envs")
    for number in (1, 2):
        client.create_model_version("churn-envs", source=f"/nowhere/{number}", tags={registry.BLESSED_TAG: "true"})
    client.set_registered_model_alias("churn-envs", "challenger", "2")
    cli = ["--config", str(path)]
    assert CliRunner().invoke(main, [*cli, "promote", "--to", "staging", "--version", "1"]).exit_code == 0
    refused = CliRunner().invoke(main, [*cli, "promote", "--to", "prod", "--version", "1"])
    assert refused.exit_code == 1 and "version 1 has been in staging for 0.00 h" in refused.output
    assert "expected at least 1 h" in refused.output
    # No --to: the challenger becomes champion with no gate, as before environments.
    plain = CliRunner().invoke(main, [*cli, "promote"])
    assert plain.exit_code == 0 and "churn-envs@champion: version - → 2" in plain.output
    assert "ctpipe.env.prod.since" in client.get_model_version("churn-envs", "2").tags  # for `ctpipe status`
    assert registry.aliases_of(client, "churn-envs") == {"champion": "2", "staging-champion": "1"}
    canary = CliRunner().invoke(main, [*cli, "promote", "--to", "staging", "--canary", "--version", "2"])
    assert canary.exit_code == 0 and "churn-envs@staging-challenger (staging): version - → 2" in canary.output
    lonely = CliRunner().invoke(main, [*cli, "promote", "--canary"])
    assert lonely.exit_code == 2 and "--canary needs --to ENV" in lonely.output


def test_a_wrong_environments_section_names_the_field(tmp_path):
    path, _ = _environments_config(tmp_path, {"min_hours": "soon"})
    result = CliRunner().invoke(main, ["--config", str(path), "status"])
    assert result.exit_code == 1
    assert "environments.prod.requires.min_hours" in result.output
    assert "soon" in result.output
