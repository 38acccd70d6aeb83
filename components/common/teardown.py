"""The end of a pipeline task's process: spare it the collector's last walk over everything it imported.

A task (a kfp.local subprocess, or a pod) exits right after its function returns and KFP writes the
outputs. At exit, Python's garbage collector walks every object still alive; after MLflow and
SQLAlchemy were imported that walk took 1.5 to 3.5 s per task on a busy 2-core machine (the task
logs show it: from "Wrote executor output" to the task's end), longer than the registry lookup the
task was started for. :func:`freeze_for_exit` moves the objects alive now out of the collector's
sight, so the exit does not walk them.

Only for the last statement of a task wrapper: frozen objects are never collected again. Whatever
must be flushed or closed (files, registry locks, servers) is closed by the code that opened it
before this runs, so nothing depends on that last collection.
"""

from __future__ import annotations

import gc


def freeze_for_exit() -> None:
    """Freeze every live object so the interpreter's exit does not garbage-collect them one by one."""
    gc.freeze()
