"""The window manifest: the time windows of a source, in a JSON file beside it.

``<source stem>.windows.json`` lists the ``[start, end)`` bounds of each numbered window.
The demo data generator writes it (:mod:`pipelines.demo_data`), and the runner and the CLI
read it to turn ``--window N`` into ``window_start`` and ``window_end``; any other producer
of data can write the same file. The format is defined here only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.common.io import write_json


@dataclass(frozen=True)
class Window:
    """One time window of the source, [start, end)."""

    window: int
    start: str
    end: str
    rows: int


def manifest_path(source: str | Path) -> Path:
    """Where the window manifest of a source file lives: ``<stem>.windows.json`` beside it."""
    source = Path(source)
    return source.with_name(f"{source.stem}.windows.json")


def write_manifest(source: str | Path, windows: list[Window], **extra: Any) -> Path:
    """Write the window manifest beside ``source``; ``extra`` keys (JSON-able) are stored with it.

    Returns:
        The manifest's path.
    """
    path = manifest_path(source)
    write_json(path, {"windows": [asdict(w) for w in windows], **extra})
    return path


def load_windows(source: str | Path) -> list[Window]:
    """Read the window manifest written beside a source file.

    Raises:
        FileNotFoundError: The source has no manifest.
    """
    path = manifest_path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no window manifest; run 'ctpipe data generate' first")
    return [Window(**w) for w in json.loads(path.read_text())["windows"]]
