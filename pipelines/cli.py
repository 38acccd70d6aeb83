"""The ``ctpipe`` command line: the ``ctpipe`` group and its data, pipeline, lineage, demo and config commands.

Every command reads ``ctpipe.yaml`` (or ``--config``). Errors are one line plus a hint;
``--verbose`` adds the traceback. Commands CI calls take ``--json``. The commands that operate
what serves (serve, promote, rollback, switch, status, inference-log) are in
``pipelines/cli_serving.py``, registered here; what all commands share is in ``pipelines/cli_common.py``.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import click

from pipelines import cli_serving
from pipelines.cli_common import config_of, config_option, friendly_errors
from pipelines.config import DEFAULT_CONFIG, CtpipeConfig, load_config

# The pipelines `run`, `compile` and `submit` know (pipelines.runner.PIPELINES; a test keeps them equal).
PIPELINE_NAMES = ("training", "batch_scoring", "monitoring", "continuous_training", "canary_analysis")
AT_HELP = (
    "Use the last complete window before TIME (ISO-8601, or 'now'): T-1 of schedule.window, and T-2 as the "
    "monitoring reference."
)


def _parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--param")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Configuration file.",
)
@click.option("--verbose", is_flag=True, help="Show tracebacks and task logs.")
@click.pass_context
def main(ctx: click.Context, config_path: str, verbose: bool) -> None:
    """ctpipe: continuous training on Kubeflow, runnable on one machine.

    \b
    Examples:
      ctpipe demo                          # the whole CT loop on the embedded default
      ctpipe data generate --windows 4     # synthetic data with drift from window 2
      ctpipe run training --window 1       # one pipeline on kfp.local, cached
      ctpipe compile --out out/            # KFP IR YAML for the Kubeflow UI or kfp.Client
      ctpipe submit training --dry-run     # what would be sent to Kubeflow Pipelines
      ctpipe promote                       # challenger becomes champion
    """
    ctx.ensure_object(dict)
    ctx.obj["config_loader"] = functools.cache(lambda: load_config(config_path))
    ctx.obj["verbose"] = verbose


for _command in cli_serving.COMMANDS:
    main.add_command(_command)


@main.group()
def data() -> None:
    """Generate demo data.

    \b
    Example:
      ctpipe data generate --windows 4 --rows 5000 --drift-from 2
    """


@data.command("generate")
@config_option
@click.option("--out", type=click.Path(dir_okay=False), help="Parquet file to write [default: dataset.source].")
@click.option("--windows", default=4, show_default=True, help="Number of weekly time windows.")
@click.option("--rows", default=5000, show_default=True, help="Rows per window.")
@click.option("--drift-from", default=2, show_default=True, help="First window with drift; 0 for none.")
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same bytes).")
@click.pass_context
@friendly_errors
def data_generate(ctx: click.Context, out: str | None, windows: int, rows: int, drift_from: int, seed: int) -> None:
    """Write a deterministic synthetic churn dataset with optional drift.

    \b
    Example:
      ctpipe data generate --windows 4 --rows 5000 --drift-from 2
    """
    from pipelines.demo_data import DriftSpec, generate
    from pipelines.windows import manifest_path

    target = out or config_of(ctx).dataset.source
    drift = DriftSpec(start_window=drift_from or None)
    written = generate(target, windows=windows, rows_per_window=rows, seed=seed, drift=drift)
    click.echo(f"wrote {sum(w.rows for w in written)} rows in {len(written)} windows to {target}")
    click.echo(f"window bounds: {manifest_path(target)}")


@main.command("compile")
@config_option
@click.option("--out", default="out", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--pipeline", "names", multiple=True, help="Only this pipeline (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@friendly_errors
def compile_command(ctx: click.Context, out: str, names: tuple[str, ...], as_json: bool) -> None:
    """Compile the pipelines to KFP IR YAML (one file per pipeline).

    \b
    Example:
      ctpipe compile --out out/ && kfp pipeline create -p ctpipe-training out/training.yaml
    """
    from pipelines.runner import compile_pipelines

    paths = compile_pipelines(config_of(ctx), out, list(names) or None)
    if as_json:
        click.echo(json.dumps({"compiled": [str(p) for p in paths]}))
    else:
        for path in paths:
            click.echo(f"compiled {path}")


@main.command("run")
@config_option
@click.argument("pipeline", type=click.Choice(PIPELINE_NAMES))
@click.option("--window", type=int, help="Use the bounds of this generated window (1-based).")
@click.option("--at", "at", metavar="TIME", help=AT_HELP)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Override a pipeline parameter.")
@click.option("--no-cache", is_flag=True, help="Run every task even if its inputs did not change.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@friendly_errors
def run_command(
    ctx: click.Context,
    pipeline: str,
    window: int | None,
    at: str | None,
    params: tuple[str, ...],
    no_cache: bool,
    as_json: bool,
) -> None:
    """Run a pipeline locally with kfp.local (SubprocessRunner, caching on).

    \b
    Examples:
      ctpipe run training --window 1
      ctpipe run monitoring --window 2 --json
      ctpipe run continuous_training --window 2    # monitor; retrain and canary on drift
      ctpipe run canary_analysis --json            # promote or close the canary on live traffic
      ctpipe run training --param window_start=2026-01-05T00:00:00+00:00 --no-cache
      ctpipe run monitoring --at 2026-01-19T03:00:00Z  # T-1 against T-2 of schedule.window
    """
    from pipelines.runner import run_pipeline
    from pipelines.summary import print_run

    config = config_of(ctx)
    overrides = _run_params(config, pipeline, window, at, params)
    report = run_pipeline(
        pipeline, config, overrides, enable_cache=not no_cache, progress=None if as_json else sys.stderr
    )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        print_run(report)
    if not report.succeeded:
        sys.exit(1)


def _run_params(
    config: CtpipeConfig, pipeline: str, window: int | None, at: str | None, params: tuple[str, ...]
) -> dict[str, Any]:
    """Run parameters: the bounds of ``--window`` or of ``--at`` (T-1, T-2), then every ``--param``."""
    from pipelines.runner import parse_at, scheduled_params, window_params

    if window and at:
        raise click.UsageError("--window and --at both set the window; pass one")
    overrides: dict[str, Any] = window_params(config, window) if window else {}
    if at:
        overrides = scheduled_params(config, pipeline, parse_at(at))
    overrides.update(_parse_params(params))
    return overrides


@main.command("submit")
@config_option
@click.argument("pipeline", type=click.Choice(PIPELINE_NAMES))
@click.option("--package", type=click.Path(dir_okay=False), help="Submit this compiled YAML [default: compile now].")
@click.option("--out", default="out", show_default=True, type=click.Path(file_okay=False), help="Compile into here.")
@click.option("--window", type=int, help="Run on the bounds of this generated window (1-based).")
@click.option("--at", "at", metavar="TIME", help=AT_HELP)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A run parameter (repeatable).")
@click.option(
    "--version",
    "version",
    help="Code version the upload is named after [default: $CTPIPE_VERSION, which the images set, else the git "
    "commit].",
)
@click.option("--experiment", help="Experiment name [default: infra.kfp.experiment].")
@click.option("--run-name", help="Run name [default: PIPELINE-VERSION].")
@click.option("--schedule", metavar="CRON", help="Create a recurring run on this cron schedule instead of one run.")
@click.option("--no-cache", is_flag=True, help="Run every task even if its inputs did not change.")
@click.option("--dry-run", is_flag=True, help="Print exactly what would be sent; contact no server.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@friendly_errors
def submit_command(
    ctx: click.Context,
    pipeline: str,
    package: str | None,
    out: str,
    window: int | None,
    at: str | None,
    params: tuple[str, ...],
    version: str | None,
    experiment: str | None,
    run_name: str | None,
    schedule: str | None,
    no_cache: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Upload a pipeline to Kubeflow Pipelines as a new version and create a run or a recurring run.

    The endpoint is infra.kfp_host or KF_PIPELINES_ENDPOINT; the token is read from the
    file infra.kfp.token_file or KF_PIPELINES_TOKEN_FILE (else the in-cluster token).

    \b
    Examples:
      ctpipe submit training --dry-run
      ctpipe submit training --window 2 --experiment churn-ci --json
      ctpipe submit continuous_training --schedule "0 3 * * 1"   # every Monday 03:00
      ctpipe submit continuous_training --at now                # what the CronJob runs
      ctpipe submit training --package out/training.yaml --version v1.2.0 --no-cache
    """
    from pipelines.runner import compile_pipelines, resolve_code_version
    from pipelines.submit import submit

    config = config_of(ctx)
    path = Path(package) if package else compile_pipelines(config, out, [pipeline])[0]
    plan = submit(
        config,
        pipeline,
        path,
        _run_params(config, pipeline, window, at, params),
        version=version or resolve_code_version(),
        experiment=experiment,
        run_name=run_name,
        schedule=schedule,
        enable_caching=not no_cache,
        dry_run=dry_run,
    )
    click.echo(plan.model_dump_json(indent=2) if as_json else plan.text())


@main.command("loop")
@config_option
@click.option("--window", type=int, help="Monitor (and retrain on) this generated window (1-based).")
@click.option("--at", "at", metavar="TIME", help=AT_HELP)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Override a pipeline parameter.")
@click.option("--no-cache", is_flag=True, help="Run every task even if its inputs did not change.")
@click.option("--dry-run", is_flag=True, help="Cluster profile: print the KFP training run, send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@friendly_errors
def loop_command(
    ctx: click.Context,
    window: int | None,
    at: str | None,
    params: tuple[str, ...],
    no_cache: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Monitor a window; on a retrain decision, train on it (embedded: here; cluster: a KFP run).

    \b
    Examples:
      ctpipe loop --window 2
      ctpipe --config cluster.yaml loop --window 2 --dry-run --json
    """
    from pipelines.retrain import retrain_on_drift

    config = config_of(ctx)
    result = retrain_on_drift(
        config,
        _run_params(config, "monitoring", window, at, params),
        enable_cache=not no_cache,
        dry_run=dry_run,
        progress=None if as_json else sys.stderr,
    )
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    click.echo(f"decision: {result.decision}; action: {result.action}")
    if result.training:
        click.echo(f"trained version {result.training['outputs'].get('version')} (log: {result.training['log']})")
    if result.submitted:
        click.echo(result.submitted.text())


@main.command("lineage")
@config_option
@click.argument("name")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@friendly_errors
def lineage_command(ctx: click.Context, name: str, version: str, as_json: bool) -> None:
    """Print where a model version came from: model ← run ← data snapshot ← suite ← config.

    \b
    Examples:
      ctpipe lineage churn 3
      ctpipe lineage churn 3 --json
    """
    from components.register import lineage

    result = lineage(name, version, config_of(ctx).tracking_uri)
    click.echo(result.model_dump_json(indent=2) if as_json else result.text())


@main.command("demo")
@config_option
@click.option("--rows", default=5000, show_default=True, help="Rows per generated window.")
@click.option("--keep-serving/--stop-serving", default=True, show_default=True, help="Leave the server running.")
@click.pass_context
@friendly_errors
def demo_command(ctx: click.Context, rows: int, keep_serving: bool) -> None:
    """Run the whole continuous-training loop on the embedded default.

    Generates data, trains and serves a first champion, scores and monitors a drifted
    window, retrains, evaluates against the champion, rolls out a canary and promotes it.
    Running it again reuses the kfp.local cache for every unchanged step.

    \b
    Examples:
      ctpipe demo
      ctpipe demo --rows 2000 --stop-serving
    """
    from pipelines.demo import run_demo

    run_demo(config_of(ctx), rows_per_window=rows, keep_serving=keep_serving)


@main.command("config")
@config_option
@click.option(
    "--check-data",
    is_flag=True,
    help="Instead of printing the configuration, read the schema of dataset.source (never all rows) and check "
    "the declared columns and types against it: exit 1 with one line per disagreement, else print 'ok' and the "
    "entity type the pipelines will use.",
)
@click.pass_context
@friendly_errors
def config_command(ctx: click.Context, check_data: bool) -> None:
    """Validate the configuration file and print it with defaults filled in.

    With --check-data, compare it with the data instead: every named column present, the entity
    column integers or strings (and feast.entity_type, if set), numeric features numbers, the
    timestamp column timestamps, the label fit for dataset.task. Run it before a pipeline.

    \b
    Examples:
      ctpipe config --config my-cluster.yaml
      ctpipe config --check-data
    """
    config = config_of(ctx)
    if check_data:
        from pipelines.check_data import check_data as run_check

        check = run_check(config)
        if not check.ok:
            for problem in check.problems:
                click.echo(problem, err=True)
            click.secho(f"error: {len(check.problems)} problem(s) in {check.source}", fg="red", err=True)
            sys.exit(1)
        click.echo(
            f"ok: {check.source} agrees with the configuration; "
            f"entity type {check.entity_type} (from {check.entity_type_origin})"
        )
        return
    import yaml

    click.echo(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def run() -> None:
    """The ``ctpipe`` program: :func:`main` with rare collections, then an exit that does not walk the heap.

    A command that loads MLflow, scikit-learn or kfp would otherwise spend a third longer in its
    imports and a second or more after its last line of output in the interpreter's final garbage
    collection (components.common.process_lifetime). Tests call :func:`main` in-process and keep
    the collector as it is.
    """
    from components.common.process_lifetime import collect_rarely, freeze_for_exit

    collect_rarely()
    try:
        main(prog_name=Path(sys.argv[0]).name)
    finally:  # click ends every command with SystemExit
        freeze_for_exit()


if __name__ == "__main__":  # pragma: no cover
    run()
