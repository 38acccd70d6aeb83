"""What the manifests generated from the configuration share: their YAML form, and writing or checking the file.

``manifests/base`` holds two objects rendered from ``manifests/base/ctpipe.yaml`` rather than written
by hand (the batch-scoring ScheduledSparkApplication, :mod:`pipelines.spark_application`, and the
predictor's NetworkPolicy, :mod:`pipelines.network_policy`). Each has a ``--out FILE [--check]``
command line, and a test fails when the committed file differs from the rendering.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from components.common.errors import CtpipeError
from components.common.io import write_text


class _NoAliases(yaml.SafeDumper):
    """A dumper that writes a repeated mapping out again instead of as an anchor and ``*alias``."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(manifest: dict[str, Any], header: str) -> str:
    """The manifest as committed: ``header`` (comment lines), then block-style YAML in the keys' order."""
    return header + yaml.dump(manifest, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=120)


def emit(text: str, out: str | None, check: bool, source: str, regenerate: str) -> int:
    """Print ``text``, or write it to ``out`` (only if it changed), or with ``check`` compare it; the exit code.

    Args:
        text: The rendering.
        out: The file, or None for stdout.
        check: Write nothing; exit 1 if ``out`` differs from ``text``.
        source: The configuration it was rendered from (named in the message).
        regenerate: The command that writes the file (named in the message).
    """
    if out is None:
        sys.stdout.write(text)
        return 0
    path = Path(out)
    current = path.read_text() if path.is_file() else None
    if check:
        if current != text:
            print(f"{path}: differs from the rendering of {source}; regenerate with: {regenerate}", file=sys.stderr)
            return 1
        return 0
    if current != text:
        write_text(path, text)
    return 0


def manifest_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--out FILE`` and ``--check``, the options every generator's command line has."""
    parser.add_argument(
        "--config", required=True, metavar="PATH", help="Cluster configuration, e.g. manifests/base/ctpipe.yaml."
    )
    parser.add_argument("--out", default=None, metavar="FILE", help="Write the YAML here instead of stdout.")
    parser.add_argument("--check", action="store_true", help="With --out: write nothing, exit 1 if FILE differs.")


def run(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    render: Callable[[argparse.Namespace], str],
    regenerate: str,
) -> int:
    """Parse ``argv`` (the options of :func:`manifest_arguments`, and more), render; print, write or check it.

    A :class:`CtpipeError` while rendering (a configuration that cannot give this manifest) is
    printed with its hint, exit 1.
    """
    args = parser.parse_args(argv)
    if args.check and not args.out:
        parser.error("--check needs --out FILE: the file to compare with the rendering")
    try:
        text = render(args)
    except CtpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 1
    return emit(text, args.out, args.check, args.config, regenerate)
