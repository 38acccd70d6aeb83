"""Local file helpers: atomic writes and content hashes.

Every file a component produces is written to a temporary path in the same folder and
renamed into place, so a crash never leaves a half-written output behind. Locations that
may be URIs (``s3://...``) go through :mod:`components.common.storage`, which uses these
helpers for local paths; reading tables is there too (``storage.read_table``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

HASH_CHUNK = 1 << 20


def scratch_folder(workspace: str | os.PathLike[str]) -> Path:
    """The folder for a task's local files: the workspace, or a private temporary folder without one.

    A cluster task has no workspace (its shared state is in object storage and servers); what it
    still writes locally (a rendered manifest, a sandbox server's log) goes to a folder of this
    process, made once and readable only by its user.
    """
    return Path(workspace) if os.fspath(workspace) else _private_temporary_folder()


@functools.cache
def _private_temporary_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="ctpipe-scratch-"))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` and rename it onto ``target`` on success.

    Works for files and folders. On error the temporary path is removed and ``target``
    keeps its previous content.

    Args:
        target: Final path of the file or folder.

    Yields:
        A path that does not exist yet, in the same folder as ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / target.name
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            # Swap folders: move the old one aside first, because rename cannot replace a non-empty folder.
            old = tmp.parent / f"{target.name}.old"
            os.replace(target, old)
            os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        _remove_tree(tmp.parent)


def _remove_tree(path: Path, seconds: float = 10.0) -> None:
    """Remove a temporary folder, retrying: a failed writer (a Spark job's other tasks) may still be closing files."""
    deadline = time.monotonic() + seconds
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def json_text(payload: Any) -> str:
    """``payload`` as the JSON text ctpipe writes: indented, keys sorted, a final newline."""
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(payload))
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


# Rows per Parquet row group. Spark reads a row group in one task, so pyarrow's default (about
# 1M rows) would make a 1M-row snapshot one partition that must be shuffled before every core
# can score it; 128k rows keeps row groups large enough to compress well.
PARQUET_ROW_GROUP_ROWS = 131_072


def write_parquet(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Write a DataFrame as one Parquet file, atomically and without the index."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, row_group_size=PARQUET_ROW_GROUP_ROWS)
    return Path(path)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, or of every file below a folder in path order."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def frame_sha256(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame: column names, dtypes and values, independent of the index."""
    digest = hashlib.sha256()
    digest.update(json.dumps([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
