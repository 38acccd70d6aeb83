"""The ``ctpipe`` command line.

Every command reads ``ctpipe.yaml`` (or ``--config``). Errors are one line plus a hint;
``--verbose`` adds the traceback. Commands CI calls take ``--json``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from components.common.errors import CtpipeError
from pipelines.config import DEFAULT_CONFIG, CtpipeConfig, load_config

F = TypeVar("F", bound=Callable[..., Any])

# The pipelines `run`, `compile` and `submit` know (pipelines.runner.PIPELINES; a test keeps them equal).
PIPELINE_NAMES = ("training", "batch_scoring", "monitoring", "continuous_training", "canary_analysis")
AT_HELP = (
    "Use the last complete window before TIME (ISO-8601, or 'now'): T-1 of schedule.window, and T-2 as the "
    "monitoring reference."
)


def _friendly_errors(func: F) -> F:
    """Turn known errors into one line plus a hint and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = click.get_current_context().find_root().params.get("verbose", False)
        try:
            return func(*args, **kwargs)
        except (CtpipeError, FileNotFoundError) as exc:
            if verbose:
                traceback.print_exc()
            hint = getattr(exc, "hint", "")
            if kwargs.get("as_json"):
                # CI parses stdout: a failure is JSON too.
                click.echo(json.dumps({"error": str(exc), "type": type(exc).__name__, "hint": hint or None}))
            click.secho(f"error: {exc}", fg="red", err=True)
            if hint:
                click.echo(f"hint: {hint}", err=True)
            if not verbose:
                click.echo("(run with --verbose for the traceback)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _set_config_path(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)
        ctx.obj["config_loader"] = functools.cache(lambda: load_config(value))


def config_option(func: F) -> F:
    """``--config`` on a subcommand too, so ``ctpipe run training --config F`` works like ``ctpipe --config F run``."""
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        expose_value=False,
        is_eager=False,
        callback=_set_config_path,
        help=f"Configuration file [default: {DEFAULT_CONFIG}].",
    )(func)


def _config(ctx: click.Context) -> CtpipeConfig:
    config: CtpipeConfig = ctx.obj["config_loader"]()
    return config


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
@_friendly_errors
def data_generate(ctx: click.Context, out: str | None, windows: int, rows: int, drift_from: int, seed: int) -> None:
    """Write a deterministic synthetic churn dataset with optional drift.

    \b
    Example:
      ctpipe data generate --windows 4 --rows 5000 --drift-from 2
    """
    from pipelines.demo_data import DriftSpec, generate
    from pipelines.windows import manifest_path

    target = out or _config(ctx).dataset.source
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
@_friendly_errors
def compile_command(ctx: click.Context, out: str, names: tuple[str, ...], as_json: bool) -> None:
    """Compile the pipelines to KFP IR YAML (one file per pipeline).

    \b
    Example:
      ctpipe compile --out out/ && kfp pipeline create -p ctpipe-training out/training.yaml
    """
    from pipelines.runner import compile_pipelines

    paths = compile_pipelines(_config(ctx), out, list(names) or None)
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
@_friendly_errors
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

    config = _config(ctx)
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
@_friendly_errors
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

    config = _config(ctx)
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
@_friendly_errors
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

    config = _config(ctx)
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


FORCE_HELP = (
    "Cluster profile: overwrite fields of the InferenceService that ctpipe owns but someone else changed "
    "since ctpipe wrote them (without it that stops with an error naming the field and its field manager)."
)


def _sync_cluster(config: CtpipeConfig, force: bool) -> None:
    """The pods follow the aliases; the InferenceService's traffic split follows them in one write."""
    from components.common.feast import EntityLookup
    from components.common.kserve.traffic import ClusterTarget, sync_inference_service

    lookup = EntityLookup(dataset=config.dataset, feast=config.feast, workspace="")
    target = ClusterTarget(image=config.infra.images.serving, entity_lookup=lookup, force=force)
    sync_inference_service(config.serving, config.tracking_uri, target)


def _alias_command(action: str) -> Callable[..., None]:
    def command(ctx: click.Context, as_json: bool, **kwargs: Any) -> None:
        from components.common import registry

        config = _config(ctx)
        force = kwargs.pop("force", False)
        func = registry.promote if action == "promote" else registry.rollback
        change = func(config.serving.model_name, config.tracking_uri, **kwargs)
        if change.previous != change.current and change.current is not None:
            # `ctpipe status` says since when the champion serves in prod, as for `promote --to prod`.
            from components.common import environments, tracking

            client = tracking.registry_client(config.tracking_uri)
            environments.stamp_entry(
                client, change.name, environments.PROD, change.current, change.previous, environments.utc_now()
            )
        if config.infra.profile == "cluster":
            _sync_cluster(config, force)
        if as_json:
            click.echo(change.model_dump_json())
        else:
            click.echo(f"{change.name}@{change.alias}: version {change.previous or '-'} → {change.current or '-'}")

    return command


@main.command("promote")
@config_option
@click.option("--version", help="Version to promote [default: the challenger; with --to, the previous environment's].")
@click.option(
    "--to",
    "to",
    type=click.Choice(["dev", "staging", "prod"]),
    default=None,
    help="Environment to promote into, through its gate (environments.ENV.requires) [default: the challenger "
    "becomes champion, as before environments, with no gate].",
)
@click.option(
    "--canary",
    is_flag=True,
    help="With --to: make the version the environment's challenger (its canary) instead of its serving version.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.pass_context
@_friendly_errors
def promote_command(
    ctx: click.Context, version: str | None, to: str | None, canary: bool, as_json: bool, force: bool
) -> None:
    """Make the challenger (or --version) the champion; it then serves 100% of traffic.

    With --to ENV, move ENV's alias instead (dev-champion, staging-champion, or champion for prod),
    after checking ENV's gate: e.g. prod takes only a version whose staging canary passed.

    \b
    Examples:
      ctpipe promote                 # the current challenger
      ctpipe promote --version 7 --json
      ctpipe promote --to staging    # the challenger starts serving in staging
      ctpipe promote --to staging --canary --version 8   # a canary in staging
      ctpipe promote --to prod       # staging's version, if it passed the gate
    """
    if to is None:
        if canary:
            raise click.UsageError("--canary needs --to ENV")
        _alias_command("promote")(ctx, as_json, version=version, force=force)
        return
    from components.common.environments import PROD, promote_to

    config = _config(ctx)
    change = promote_to(
        config.serving.model_name, config.tracking_uri, to, config.environments, version=version, canary=canary
    )
    if to == (config.serving.environment or PROD) and config.infra.profile == "cluster":
        # The configured InferenceService follows this environment's aliases: its split follows the move.
        # Another environment's pods follow their alias by themselves; its own configuration syncs its split.
        _sync_cluster(config, force)
    if as_json:
        click.echo(change.model_dump_json())
    else:
        click.echo(
            f"{change.name}@{change.alias} ({change.environment}): version {change.previous or '-'} → "
            f"{change.current or '-'}"
        )


@main.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@_friendly_errors
def status_command(ctx: click.Context, as_json: bool) -> None:
    """Show which version serves in each environment (dev, staging, prod), since when, and its canary.

    \b
    Examples:
      ctpipe status
      ctpipe status --json
    """
    from components.common.environments import environment_status, status_text

    config = _config(ctx)
    rows = environment_status(config.serving.model_name, config.tracking_uri, config.environments)
    if as_json:
        click.echo(json.dumps([row.model_dump() for row in rows], indent=2))
    else:
        click.echo(status_text(config.serving.model_name, rows))


@main.command("rollback")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.pass_context
@_friendly_errors
def rollback_command(ctx: click.Context, as_json: bool, force: bool) -> None:
    """Return the champion alias (and all traffic) to the previous champion.

    \b
    Example:
      ctpipe rollback --json
    """
    _alias_command("rollback")(ctx, as_json, force=force)


@main.command("switch")
@config_option
@click.option("--back", is_flag=True, help="Send all traffic back to the champion (the instant rollback).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@_friendly_errors
def switch_command(ctx: click.Context, back: bool, as_json: bool) -> None:
    """Blue-green (serving.rollout.strategy: blue_green): move all traffic to the challenger at once, or --back.

    The challenger must be infra-blessed. Both versions stay loaded in the model server, so the
    switch and the switch back take effect within one registry poll, without loading a model;
    'ctpipe promote' confirms the switch.

    \b
    Examples:
      ctpipe switch          # all traffic to the infra-blessed challenger
      ctpipe switch --back   # all traffic to the champion again
    """
    from components.common import registry

    config = _config(ctx)
    if config.serving.rollout.strategy != "blue_green":
        raise click.UsageError(
            f"serving.rollout.strategy is {config.serving.rollout.strategy!r}; 'ctpipe switch' needs 'blue_green'"
        )
    live = registry.switch_live(config.serving.model_name, config.tracking_uri, back=back)
    if as_json:
        click.echo(json.dumps({"model_name": config.serving.model_name, "live_version": live, "back": back}))
    else:
        click.echo(f"{config.serving.model_name}: all traffic to version {live}")


@main.command("lineage")
@config_option
@click.argument("name")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@_friendly_errors
def lineage_command(ctx: click.Context, name: str, version: str, as_json: bool) -> None:
    """Print where a model version came from: model ← run ← data snapshot ← suite ← config.

    \b
    Examples:
      ctpipe lineage churn 3
      ctpipe lineage churn 3 --json
    """
    from components.register import lineage

    result = lineage(name, version, _config(ctx).tracking_uri)
    click.echo(result.model_dump_json(indent=2) if as_json else result.text())


@main.group("inference-log")
def inference_log_group() -> None:
    """Operate the serving inference log: retention and compaction.

    \b
    Example:
      ctpipe inference-log maintain --retention-days 30
    """


@inference_log_group.command("maintain")
@config_option
@click.option(
    "--retention-days",
    type=click.IntRange(min=1),
    default=None,
    help="Delete date partitions older than this many days [default: serving.inference_log.retention_days; "
    "unset keeps everything].",
)
@click.option("--no-compact", is_flag=True, help="Only apply retention; leave the small files as they are.")
@click.option("--log-dir", default=None, help="The log folder or s3:// URI [default: the configured inference log].")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@_friendly_errors
def inference_log_maintain(
    ctx: click.Context, retention_days: int | None, no_compact: bool, log_dir: str | None, as_json: bool
) -> None:
    """Delete partitions past retention, then compact each past day's files into one.

    Retention deletes whole date=YYYY-MM-DD partitions dated before today minus the retention
    (UTC), nothing else. Compaction skips today, where the server still writes; readers see
    every row exactly once while it runs (docs/monitoring.md). Safe to run while serving.

    \b
    Examples:
      ctpipe inference-log maintain
      ctpipe inference-log maintain --retention-days 30 --json
      ctpipe inference-log maintain --log-dir s3://bucket/inference_log --no-compact
    """
    from components.common.inference_log import maintain
    from components.serving_spec import InferenceLogSpec

    config = _config(ctx)
    if retention_days is None:
        retention_days = InferenceLogSpec.of(config.serving.inference_log).retention_days
    result = maintain(log_dir or config.inference_log_dir, retention_days, compact_days=not no_compact)
    if as_json:
        click.echo(json.dumps(result))
        return
    kept = "everything kept" if retention_days is None else f"{retention_days} days kept"
    click.echo(
        f"{result['log_dir']}: deleted {len(result['pruned_days'])} day(s) past retention ({kept}), "
        f"compacted {len(result['compacted_days'])} day(s)"
    )


@main.command("serve")
@config_option
@click.option("--detach", is_flag=True, help="Start in the background and return once ready.")
@click.option("--stop", is_flag=True, help="Stop the background server this workspace started.")
@click.pass_context
@_friendly_errors
def serve_command(ctx: click.Context, detach: bool, stop: bool) -> None:
    """Serve the champion (and a canary challenger) with the KServe model server on serving.host:port.

    \b
    Examples:
      ctpipe serve --detach
      curl -s localhost:8080/v1/models/churn:predict -d '{"instances": [...]}'
      ctpipe serve --stop
    """
    from components.common import server_process
    from components.common.feast import EntityLookup
    from serving import server

    config = _config(ctx)
    workspace = str(config.workspace)
    # Requests may name entity ids: the server reads their features from this workspace's Feast store.
    lookup = EntityLookup(dataset=config.dataset, feast=config.feast, workspace=workspace)
    if stop:
        stopped = server_process.stop_local_server(workspace)
        click.echo("stopped the local model server" if stopped else "no local model server was running")
    elif detach:
        local = server_process.start_local_server(config.serving, config.tracking_uri, workspace, entity_lookup=lookup)
        click.echo(f"serving {config.serving.model_name} at {local.endpoint}")
    else:
        # The same server and flags as --detach, in this process; the settings travel as the detached one's do.
        os.environ["MLFLOW_TRACKING_URI"] = config.tracking_uri
        os.environ[server_process.ENTITY_LOOKUP_ENV] = lookup.model_dump_json()
        serving = config.serving
        server.main(
            [
                "--model-name",
                serving.model_name,
                "--host",
                serving.host,
                "--port",
                str(serving.port),
                *server_process.local_server_args(serving, workspace),
            ]
        )


@main.command("demo")
@config_option
@click.option("--rows", default=5000, show_default=True, help="Rows per generated window.")
@click.option("--keep-serving/--stop-serving", default=True, show_default=True, help="Leave the server running.")
@click.pass_context
@_friendly_errors
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

    run_demo(_config(ctx), rows_per_window=rows, keep_serving=keep_serving)


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
@_friendly_errors
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
    config = _config(ctx)
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


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=Path(sys.argv[0]).name)
