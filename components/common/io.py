"""Local file helpers: atomic writes and content hashes.

Every file a component produces is written to a temporary path in the same folder and
renamed into place, so a crash never leaves a half-written output behind. Locations that
may be URIs (``s3://...``) go through :mod:`components.common.storage`, which uses these
helpers for local paths; reading tables is there too (``storage.read_table``).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.common.logs import get_logger

if TYPE_CHECKING:  # pandas is imported where a frame is hashed: a task that only reads a spec never loads it
    import pandas as pd

log = get_logger("io")

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


#: File in an :func:`atomic_path` temporary folder naming the process that writes it (JSON).
OWNER_FILE = ".ctpipe-owner"
#: File in an :func:`atomic_path` temporary folder written once its content is complete and synced,
#: just before the renames; a folder without it was never ready to be swapped in.
COMMIT_FILE = ".ctpipe-commit"
#: A temporary folder whose owner process is gone is removed once it is this old.
ABANDONED_AFTER_SECONDS = 300.0
#: A temporary folder whose owner ran where this process cannot see it (another machine, another
#: container's process namespace) counts as abandoned only once it is this old.
FOREIGN_ABANDONED_AFTER_SECONDS = 24 * 3600.0


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file, or a folder's entries, to disk. Folders are skipped where they cannot be opened (Windows)."""
    path = Path(path)
    if path.is_dir():
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return  # no directory handles on this platform
        try:
            os.fsync(fd)
        except OSError:
            pass  # some file systems cannot sync a folder; the rename is still atomic there
        finally:
            os.close(fd)
        return
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """Flush every file below ``path`` (or the file itself), then every folder, deepest first."""
    path = Path(path)
    if not path.exists() or path.is_symlink():
        return
    if not path.is_dir():
        fsync_path(path)
        return
    folders: list[Path] = []
    for root, dirs, files in os.walk(path):
        folders.append(Path(root))
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                fsync_path(file)
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
    for folder in reversed(folders):
        fsync_path(folder)


def _read_proc(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), which tells a reused pid apart."""
    stat = _read_proc(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def _namespace() -> str:
    """Where a pid means the same process: this boot of this kernel and this pid namespace ("" if unknown)."""
    boot = _read_proc("/proc/sys/kernel/random/boot_id")
    try:
        pid_ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pid_ns = ""
    return f"{boot}:{pid_ns}" if boot else ""


def owner_record() -> dict[str, Any]:
    """What :func:`atomic_path` writes into :data:`OWNER_FILE`: this process and where its pid is meaningful."""
    pid = os.getpid()
    return {
        "pid": pid,
        "start": _process_start(pid),
        "namespace": _namespace(),
        "host": socket.gethostname(),  # for people; never used to decide
        "created": time.time(),
    }


def owner_state(owner: dict[str, Any]) -> str:
    """``alive``, ``dead`` or ``unknown`` (the owner ran where this process cannot see its pid).

    The pid is only looked at when the owner ran in this process's namespace (same boot id and pid
    namespace); there a pid that is gone, or reused by a process that started at another time, is
    dead. A hostname proves nothing: containers of one pod share it, and a restarted pod reuses it.
    """
    pid = owner.get("pid")
    namespace = _namespace()
    if not isinstance(pid, int) or not namespace or owner.get("namespace") != namespace:
        return "unknown"
    start = _process_start(pid)
    if start is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "dead"
        except PermissionError:
            return "alive"
        return "alive" if not owner.get("start") else "dead"  # /proc has no such pid, kill says it exists: unclear
    return "alive" if owner.get("start") in (None, start) else "dead"


def _temporary_folders(target: Path) -> list[Path]:
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.glob(f".{glob.escape(target.name)}.*") if p.is_dir() and not p.is_symlink()]


def _owner_of(folder: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _abandoned(owner: dict[str, Any], max_age: float, foreign_max_age: float) -> bool:
    try:
        age = time.time() - float(owner.get("created", 0))
    except (TypeError, ValueError):
        age = float("inf")
    state = owner_state(owner)
    if state == "alive":
        return False
    return age >= (max_age if state == "dead" else foreign_max_age)


def remove_abandoned(
    target: str | os.PathLike[str],
    max_age_seconds: float = ABANDONED_AFTER_SECONDS,
    foreign_max_age_seconds: float = FOREIGN_ABANDONED_AFTER_SECONDS,
) -> list[Path]:
    """Remove the temporary folders of :func:`atomic_path` writes to ``target`` that were abandoned.

    A folder is abandoned when it is older than ``max_age_seconds`` and its owner process is gone
    (it ran in this process's namespace and its pid is gone or reused), or older than
    ``foreign_max_age_seconds`` when its owner ran elsewhere. A live owner's folder is never removed,
    nor a folder without an owner record (not ours, or its owner has not written it yet).

    An abandoned folder whose content was complete (it has :data:`COMMIT_FILE`) while ``target``
    does not exist was left by a crash between the two renames of a folder swap: its content is
    renamed onto ``target`` first (roll forward), so the swap ends as if it had finished.

    Returns:
        The folders removed.
    """
    target = Path(target)
    removed: list[Path] = []
    candidates = []
    for folder in _temporary_folders(target):
        owner = _owner_of(folder)
        if owner is not None and _abandoned(owner, max_age_seconds, foreign_max_age_seconds):
            candidates.append((float(owner.get("created", 0) or 0), folder))
    for _, folder in sorted(candidates, reverse=True):  # the newest complete write wins a roll forward
        _recover_swap(target, folder)
        log.warning("removing an abandoned temporary folder", extra={"folder": str(folder)})
        _remove_tree(folder, seconds=1.0)
        if not folder.exists():
            removed.append(folder)
    if removed:
        fsync_path(target.parent)
    return removed


def recover_swap(target: str | os.PathLike[str]) -> bool:
    """Finish a folder swap that a crash interrupted between its two renames; True when it did.

    Only when ``target`` is missing and a temporary folder of a dead owner (of any age) holds complete
    content (:data:`COMMIT_FILE`); the newest such content is renamed onto ``target``.
    """
    target = Path(target)
    if target.exists() or target.is_symlink():
        return False
    found = []
    for folder in _temporary_folders(target):
        owner = _owner_of(folder)
        if owner is not None and owner_state(owner) == "dead" and (folder / COMMIT_FILE).exists():
            found.append((float(owner.get("created", 0) or 0), folder))
    return any(_recover_swap(target, folder) for _, folder in sorted(found, reverse=True))


def _recover_swap(target: Path, folder: Path) -> bool:
    content = folder / target.name
    if target.exists() or target.is_symlink() or not (folder / COMMIT_FILE).exists() or not content.exists():
        return False
    try:
        os.replace(content, target)
    except OSError:
        return False  # someone else recovered or wrote it first
    fsync_path(target.parent)
    log.warning("finished an interrupted folder swap", extra={"target": str(target), "from": str(folder)})
    return True


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` and rename it onto ``target`` on success.

    Works for files and folders. On error the temporary path is removed and ``target``
    keeps its previous content.

    Durability: the temporary folder records its owner process (:data:`OWNER_FILE`). After the
    caller's writes every file and folder of the new content is fsynced, a commit marker is
    written and synced, the renames happen, and the parent folder is fsynced after them, so after
    a power loss ``target`` is either the old or the new complete content. A folder replaces a
    folder in two renames (old aside, new in); a crash between them leaves ``target`` missing and
    the complete new content in the temporary folder, which :func:`recover_swap` renames into
    place (every later :func:`atomic_path` on ``target`` does so first). Abandoned temporary
    folders of earlier writes are removed on the way (:func:`remove_abandoned`).

    Args:
        target: Final path of the file or folder.

    Yields:
        A path that does not exist yet, in the same folder as ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_swap(target)
    remove_abandoned(target)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp = folder / target.name
    try:
        (folder / OWNER_FILE).write_text(json.dumps(owner_record()))
        yield tmp
        fsync_tree(tmp)
        fsync_path(folder)
        with open(folder / COMMIT_FILE, "w") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        fsync_path(folder)
        if target.is_dir() and not target.is_symlink():
            # Swap folders: move the old one aside first, because rename cannot replace a non-empty folder.
            old = folder / f"{target.name}.old"
            os.replace(target, old)
            _after_first_rename(target, tmp)
            os.replace(tmp, target)
        else:
            os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        _remove_tree(folder)


def _after_first_rename(target: Path, tmp: Path) -> None:
    """Between the two renames of a folder swap: a seam for crash tests, nothing else."""


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
    import pandas as pd

    digest = hashlib.sha256()
    digest.update(json.dumps([(str(c), str(t)) for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
