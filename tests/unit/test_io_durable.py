"""Durable local writes: fsync around the folder swap, recovery after a crash between its renames,
and removal of abandoned temporary folders by age and owner process (never a live owner's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.common import io
from components.common.io import COMMIT_FILE, OWNER_FILE, atomic_path, owner_record, recover_swap, remove_abandoned

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    """The pid of a process of this namespace that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _temp_folder(target: Path, owner: dict, age: float, suffix: str) -> Path:
    folder = target.parent / f".{target.name}.{suffix}"
    (folder / target.name).mkdir(parents=True)
    (folder / target.name / "part-0").write_text("partial")
    (folder / OWNER_FILE).write_text(json.dumps({**owner, "created": time.time() - age}))
    return folder


def _write_folder(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text(text * 2)


def test_abandoned_folders_go_by_age_and_owner_process(tmp_path: Path) -> None:
    target = tmp_path / "scores"
    me = owner_record()
    dead = {**me, "pid": _dead_pid(), "start": "1"}
    foreign = {**me, "namespace": "another-boot:1234", "pid": os.getpid()}  # same pid and host name, elsewhere
    live_old = _temp_folder(target, me, age=3600, suffix="live")
    dead_old = _temp_folder(target, dead, age=3600, suffix="dead-old")
    dead_young = _temp_folder(target, dead, age=5, suffix="dead-young")
    foreign_old = _temp_folder(target, foreign, age=3600, suffix="foreign-old")
    foreign_ancient = _temp_folder(target, foreign, age=3 * 24 * 3600, suffix="foreign-ancient")
    unowned = target.parent / f".{target.name}.unowned"
    unowned.mkdir()

    removed = remove_abandoned(target, max_age_seconds=300, foreign_max_age_seconds=24 * 3600)

    assert sorted(removed) == sorted([dead_old, foreign_ancient])
    for kept in (live_old, dead_young, foreign_old, unowned):
        assert kept.is_dir(), kept
    assert not dead_old.exists() and not foreign_ancient.exists()


def test_a_reused_pid_is_a_dead_owner(tmp_path: Path) -> None:
    target = tmp_path / "out"
    reused = _temp_folder(target, {**owner_record(), "start": "0"}, age=3600, suffix="reused")  # my pid, other start
    assert io.owner_state({**owner_record(), "start": "0"}) == ("dead" if Path("/proc/self/stat").exists() else "alive")
    if Path("/proc/self/stat").exists():
        assert remove_abandoned(target) == [reused]


def test_the_folder_swap_is_fsynced_and_leaves_no_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    original = io.fsync_path
    monkeypatch.setattr(io, "fsync_path", lambda path: (synced.append(Path(path)), original(path))[1])
    target = tmp_path / "folder"
    _write_folder(target, "one")
    _write_folder(target, "two")
    assert (target / "a.txt").read_text() == "two" and (target / "sub" / "b.txt").read_text() == "twotwo"
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
    names = {p.name for p in synced}
    assert {"a.txt", "b.txt", "sub", "folder"} <= names  # the new content's files and folders
    assert any(name.startswith(".folder.") for name in names)  # the temporary folder, with its commit marker
    assert synced[-1] == tmp_path  # the parent folder after the renames
    file_target = tmp_path / "x.json"
    io.write_json(file_target, {"a": 1})
    assert synced[-1] == tmp_path and json.loads(file_target.read_text()) == {"a": 1}


_CRASH = """
import os, sys
from pathlib import Path
from components.common import io

def crash(target, tmp):
    os._exit(17)

if sys.argv[2] == "between":
    io._after_first_rename = crash
else:
    io.fsync_tree = lambda path: os._exit(17)  # before the commit marker
with io.atomic_path(sys.argv[1]) as tmp:
    tmp.mkdir()
    (tmp / "a.txt").write_text("new")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "b.txt").write_text("newnew")
"""


def _crash(target: Path, where: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, str(target), where],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 17, done.stderr[-2000:]


def test_a_crash_between_the_renames_is_rolled_forward(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    _write_folder(target, "old")
    _crash(target, "between")
    assert not target.exists()  # the old content moved aside, the new one not yet in place
    assert recover_swap(target)
    assert (target / "a.txt").read_text() == "new" and (target / "sub" / "b.txt").read_text() == "newnew"
    assert not recover_swap(target)

    # Without an explicit recovery, the next write to the target recovers first, then replaces it.
    _crash(target, "between")
    assert not target.exists()
    with atomic_path(target) as tmp:
        assert (target / "a.txt").read_text() == "new"  # recovered before this write begins
        tmp.mkdir()
        (tmp / "a.txt").write_text("newer")
    assert (target / "a.txt").read_text() == "newer"


def test_a_crash_before_the_commit_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    _write_folder(target, "old")
    _crash(target, "before")
    assert (target / "a.txt").read_text() == "old"
    assert not recover_swap(target)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "folder"]
    assert len(leftovers) == 1 and not (leftovers[0] / COMMIT_FILE).exists()
    assert remove_abandoned(target, max_age_seconds=0) == leftovers  # its owner is dead
    assert (target / "a.txt").read_text() == "old"
