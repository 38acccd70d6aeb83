import json

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
