"""The ``ctpipe`` commands that operate what serves: serve, promote, rollback, switch, status, inference-log.

They move the registry aliases (and, in the cluster profile, the InferenceService's traffic split
with them), run the local model server, and maintain the inference log it writes.
``pipelines.cli`` registers them on the ``ctpipe`` group (``COMMANDS``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

from pipelines.cli_common import config_of, config_option, friendly_errors
from pipelines.config import CtpipeConfig

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

        config = config_of(ctx)
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


@click.command("promote")
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
@friendly_errors
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

    config = config_of(ctx)
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


@click.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@friendly_errors
def status_command(ctx: click.Context, as_json: bool) -> None:
    """Show which version serves in each environment (dev, staging, prod), since when, and its canary.

    \b
    Examples:
      ctpipe status
      ctpipe status --json
    """
    from components.common.environments import environment_status, status_text

    config = config_of(ctx)
    rows = environment_status(config.serving.model_name, config.tracking_uri, config.environments)
    if as_json:
        click.echo(json.dumps([row.model_dump() for row in rows], indent=2))
    else:
        click.echo(status_text(config.serving.model_name, rows))


@click.command("rollback")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.pass_context
@friendly_errors
def rollback_command(ctx: click.Context, as_json: bool, force: bool) -> None:
    """Return the champion alias (and all traffic) to the previous champion.

    \b
    Example:
      ctpipe rollback --json
    """
    _alias_command("rollback")(ctx, as_json, force=force)


@click.command("switch")
@config_option
@click.option("--back", is_flag=True, help="Send all traffic back to the champion (the instant rollback).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable results.")
@click.pass_context
@friendly_errors
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

    config = config_of(ctx)
    if config.serving.rollout.strategy != "blue_green":
        raise click.UsageError(
            f"serving.rollout.strategy is {config.serving.rollout.strategy!r}; 'ctpipe switch' needs 'blue_green'"
        )
    live = registry.switch_live(config.serving.model_name, config.tracking_uri, back=back)
    if as_json:
        click.echo(json.dumps({"model_name": config.serving.model_name, "live_version": live, "back": back}))
    else:
        click.echo(f"{config.serving.model_name}: all traffic to version {live}")


@click.group("inference-log")
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
@friendly_errors
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

    config = config_of(ctx)
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


@click.command("serve")
@config_option
@click.option("--detach", is_flag=True, help="Start in the background and return once ready.")
@click.option("--stop", is_flag=True, help="Stop the background server this workspace started.")
@click.pass_context
@friendly_errors
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

    config = config_of(ctx)
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


# In the order they were written; ``ctpipe --help`` lists them by name.
COMMANDS = (
    promote_command,
    status_command,
    rollback_command,
    switch_command,
    inference_log_group,
    serve_command,
)
