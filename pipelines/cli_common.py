"""What every ``ctpipe`` subcommand shares: ``--config`` on a subcommand, the loaded configuration, one-line errors.

``pipelines.cli`` and ``pipelines.cli_serving`` both build their commands from these.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click

from components.common.errors import CtpipeError
from pipelines.config import DEFAULT_CONFIG, CtpipeConfig, load_config

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
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


def config_of(ctx: click.Context) -> CtpipeConfig:
    """The configuration the command runs with, loaded once (``--config`` on the group or the subcommand)."""
    config: CtpipeConfig = ctx.obj["config_loader"]()
    return config
