"""The window manifest: the time windows of a source, in a JSON file beside it.

``<source stem>.windows.json`` lists the ``[start, end)`` bounds of each numbered window; the
source and so its manifest may be a path or a URI (``s3://...``, :mod:`components.common.storage`).
The demo data generator writes it (:mod:`pipelines.demo_data`), and the runner and the CLI
read it to turn ``--window N`` into ``window_start`` and ``window_end``; any other producer
of data can write the same file. The format is defined here only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from components.common import storage


@dataclass(frozen=True)
class Window:
    """One time window of the source, [start, end)."""

    window: int
    start: str
    end: str
    rows: int


def manifest_path(source: str | os.PathLike[str]) -> str:
    """Where the window manifest of a source file lives: ``<stem>.windows.json`` beside it (a path or a URI)."""
    stem = PurePosixPath(os.fspath(source).rstrip("/")).stem
    return storage.with_name(source, f"{stem}.windows.json")


def write_manifest(source: str | os.PathLike[str], windows: list[Window], **extra: Any) -> str:
    """Write the window manifest beside ``source``; ``extra`` keys (JSON-able) are stored with it.

    Returns:
        The manifest's location.
    """
    return storage.write_json(manifest_path(source), {"windows": [asdict(w) for w in windows], **extra})


def load_windows(source: str | os.PathLike[str]) -> list[Window]:
    """Read the window manifest written beside a source file.

    Raises:
        FileNotFoundError: The source has no manifest.
    """
    location = manifest_path(source)
    if not storage.exists(location) or storage.is_dir(location):
        raise FileNotFoundError(f"{storage.redact(location)}: no window manifest; run 'ctpipe data generate' first")
    return [Window(**w) for w in json.loads(storage.read_text(location))["windows"]]
