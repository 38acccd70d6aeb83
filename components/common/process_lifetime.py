"""The garbage collector of a short-lived process: collect rarely while it imports and works, never at its exit.

A pipeline task (a kfp.local subprocess, or a pod) imports MLflow, scikit-learn, pandas or Great
Expectations, runs one function and exits. Python's default thresholds start a young collection
every 700 allocations, and an import of that size allocates a million long-lived objects, so the
collector walked them again and again: importing MLflow, scikit-learn, pandas and Great
Expectations took 4.3 s with the defaults and 2.9 s with :data:`RARE_THRESHOLDS` on the 2-core
machine (9 full collections against none). At exit the collector walks every object still alive
once more: 1.5 to 3.5 s per task on a busy 2-core machine, longer than the registry lookup a task
may have been started for.

- :func:`collect_rarely` is a task wrapper's first statement (and the ``ctpipe`` program's).
- :func:`rare_collections` does the same around one import, then puts the thresholds back (the
  model server's import of kserve: the package is imported in notebooks and tests too).
- :func:`freeze_for_exit` is a wrapper's last statement before it returns: it moves the objects
  alive now out of the collector's sight, so the exit does not walk them. Frozen objects are never
  collected again, so whatever must be flushed or closed (files, registry locks, servers) is closed
  by the code that opened it before this runs.

Cyclic garbage is still collected, only less often: young collections every 100,000 allocations,
full ones rarely; what has no cycle is freed at once by reference counting, as always.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Collector thresholds of a short-lived process (Python's defaults: 700, 10, 10).
RARE_THRESHOLDS = (100_000, 50, 100)


def collect_rarely() -> None:
    """Raise the collector's thresholds for the rest of this process (see the module docstring)."""
    gc.set_threshold(*RARE_THRESHOLDS)


@contextlib.contextmanager
def rare_collections() -> Iterator[None]:
    """Collect rarely inside the block, then restore the thresholds the process had."""
    before = gc.get_threshold()
    gc.set_threshold(*RARE_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def freeze_for_exit() -> None:
    """Freeze every live object so the interpreter's exit does not garbage-collect them one by one."""
    gc.freeze()
