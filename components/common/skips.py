"""Idempotent skips: a step that finds its work already done says so in one log line the runner reads.

A side-effect step (``register``, ``infra_validate``, ``deploy``) that has nothing to do returns
its usual result and logs :data:`SKIP_EVENT` with the reason. ``ctpipe run`` reads the line from
the task's log (:mod:`pipelines.runner`) and reports the task as ``no-op`` with that reason, beside
the tasks served from the pipeline cache.
"""

from __future__ import annotations

import json
import logging
from typing import Any

#: The ``msg`` of the log line of an idempotent skip.
SKIP_EVENT = "idempotent skip"


def log_skip(logger: logging.Logger, reason: str, **fields: Any) -> None:
    """Log that a step found nothing to do, and why (one JSON line, see :mod:`components.common.logs`)."""
    logger.info(SKIP_EVENT, extra={"reason": reason, **fields})


def skip_reason(line: str) -> str | None:
    """The reason of an idempotent skip logged on ``line`` (leading spaces allowed), else None."""
    text = line.strip()
    if not text.startswith("{") or SKIP_EVENT not in text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("msg") != SKIP_EVENT:
        return None
    return str(record.get("reason") or "nothing to do")
