"""Human-readable summaries of pipeline runs for the console."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from pipelines.runner import RunReport


def _value(value: Any) -> str:
    if isinstance(value, dict) and "path" in value:
        return str(value["path"])
    return str(value)


def print_run(report: RunReport, out: TextIO = sys.stdout) -> None:
    """Print what ran, what came from cache, how long each took, the outputs and where the logs are."""
    counts = {status: sum(t.status == status for t in report.tasks) for status in ("ran", "cached", "skipped")}
    state = "succeeded" if report.succeeded else "FAILED"
    print(
        f"\n{report.pipeline} {state} in {report.seconds:.1f}s "
        f"({counts['ran']} ran, {counts['cached']} cached, {counts['skipped']} skipped)",
        file=out,
    )
    print(f"  {'task':<28} {'status':<8} {'seconds':>7}", file=out)
    for task in report.tasks:
        seconds = f"{task.seconds:7.1f}" if task.status == "ran" else " " * 7
        print(f"  {task.name:<28} {task.status:<8} {seconds}", file=out)
    for key, value in report.outputs.items():
        print(f"  output {key}: {_value(value)}", file=out)
    for key, value in report.outputs.items():
        warnings = (value.get("metadata") or {}).get("warnings") if isinstance(value, dict) else None
        if warnings:
            print(f"  {key}: {len(warnings)} warning(s)", file=out)
            for line in warnings:
                print(f"    warning: {line}", file=out)
    if report.error:
        print(f"  error: {report.error}", file=out)
    print(f"  task logs: {report.log_path}", file=out)
