"""Human-readable summaries of pipeline runs for the console.

The task table says what each task did and, for every task that did not run or changed nothing,
why: a cache hit (same inputs; for register and infra validation also the same registry state), an
idempotent skip with the step's own reason (``no-op``), or a condition that was false.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from pipelines.runner import RunReport


def _value(value: Any) -> str:
    if isinstance(value, dict) and "path" in value:
        return str(value["path"])
    return str(value)


def key_facts(metadata: dict[str, Any]) -> list[str]:
    """The lines worth reading in an output's metadata.

    Metrics against the champion, failed checks, entity rows left out for want of features (a
    training set's ``missing_entities``, with its share), where monitoring's live-performance
    baseline came from, and decisions.
    """
    lines = []
    candidate = {k[len("candidate_") :]: v for k, v in metadata.items() if k.startswith("candidate_")}
    # A multiclass blessing also has precision, recall and F1 per class (class_<c>_<metric>): the
    # configured metrics come first, then one line of per-class F1; the report has the whole table.
    per_class_f1 = {
        name[len("class_") : -len("_f1")]: value
        for name, value in candidate.items()
        if name.startswith("class_") and name.endswith("_f1")
    }
    headline = {name: value for name, value in candidate.items() if not name.startswith("class_")}
    if headline:
        pairs = []
        for name, value in headline.items():
            champion = metadata.get(f"champion_{name}")
            pairs.append(f"{name} {value:.4g}" + (f" (champion {champion:.4g})" if champion is not None else ""))
        lines.append("metrics: " + "; ".join(pairs))
    if per_class_f1:
        lines.append("f1 per class: " + "; ".join(f"{c} {per_class_f1[c]:.3g}" for c in sorted(per_class_f1)))
    lines.extend(f"failed check: {reason}" for reason in metadata.get("failed_checks") or [])
    missing = int(metadata.get("missing_entities") or 0)  # KFP metadata numbers come back as floats
    if missing:
        # fetch_features leaves these rows out of the training set; say so rather than lose them quietly.
        total = missing + int(metadata.get("rows") or 0)
        lines.append(
            f"missing entities: {missing} of {total} entity rows ({100 * missing / total:.1f}%) had no feature "
            "value inside the TTL and were left out of the training set"
        )
    if metadata.get("performance_baseline"):
        lines.append(f"live-performance baseline: {metadata['performance_baseline']}")
    if "decision" in metadata:
        reasons = metadata.get("reasons") or ([metadata["reason"]] if metadata.get("reason") else [])
        lines.append(f"decision: {metadata['decision']}" + (f" ({'; '.join(map(str, reasons))})" if reasons else ""))
    return lines


def print_run(report: RunReport, out: TextIO = sys.stdout) -> None:
    """Print what ran, what was skipped and why, how long each took, key metrics, the outputs and where the logs are."""
    statuses = ("ran", "no-op", "cached", "skipped")
    counts = {status: sum(t.status == status for t in report.tasks) for status in statuses}
    state = "succeeded" if report.succeeded else "FAILED"
    print(
        f"\n{report.pipeline} {state} in {report.seconds:.1f}s "
        f"({counts['ran']} ran, {counts['no-op']} no-op, {counts['cached']} cached, {counts['skipped']} skipped)",
        file=out,
    )
    print(f"  {'task':<28} {'status':<8} {'seconds':>7}  why", file=out)
    for task in report.tasks:
        # A no-op task ran (its start-up is what it cost); cached and skipped ones were not started.
        seconds = f"{task.seconds:7.1f}" if task.status in ("ran", "no-op") else " " * 7
        why = f"  {task.reason}" if task.reason else ""
        print(f"  {task.name:<28} {task.status:<8} {seconds}{why}", file=out)
    for key, value in report.outputs.items():
        print(f"  output {key}: {_value(value)}", file=out)
    for key, value in report.outputs.items():
        metadata = (value.get("metadata") or {}) if isinstance(value, dict) else {}
        for line in key_facts(metadata):
            print(f"  {key}: {line}", file=out)
        warnings = metadata.get("warnings")
        if warnings:
            print(f"  {key}: {len(warnings)} warning(s)", file=out)
            for line in warnings:
                print(f"    warning: {line}", file=out)
    if report.error:
        print(f"  error: {report.error}", file=out)
    print(f"  task logs: {report.log_path}", file=out)
