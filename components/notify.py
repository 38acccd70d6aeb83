"""Notify: the Markdown summary a pipeline's exit handler writes, whether the run failed or not.

It posts nothing anywhere: the summary is a KFP ``Markdown`` artifact (shown in the UI) and,
when ``reports_dir`` is given, a file beside the other reports (a folder or an object-store
prefix such as ``s3://bucket/reports``), where a CI job or a chat hook can pick it up.
"""

from __future__ import annotations

from pydantic import BaseModel

from components.common.logs import get_logger

logger = get_logger("notify")


class RunSummary(BaseModel):
    """What the exit handler saw."""

    pipeline: str
    state: str
    job: str
    error: str
    markdown: str
    written: list[str]


def run_summary(
    pipeline: str, state: str, job: str, error: str, summary_path: str, reports_dir: str = ""
) -> RunSummary:
    """Write the run summary as Markdown to ``summary_path`` (and ``reports_dir/<pipeline>-last-run.md``).

    Args:
        pipeline: Pipeline name.
        state: Final state of the run's body, e.g. SUCCEEDED or FAILED.
        job: The pipeline job (run) name.
        error: The error message when the body failed; empty otherwise.
        summary_path: Where to write the Markdown.
        reports_dir: Folder (or object-store prefix, ``s3://...``) for a stable copy; empty for none.

    Returns:
        The summary and the files written.
    """
    # Imported here: the storage layer loads pandas, which this exit handler has no use for at start-up.
    from components.common import storage
    from components.common.io import write_text

    ok = state.upper() in ("SUCCEEDED", "SUCCESS")
    lines = [
        f"# {pipeline}: {'succeeded' if ok else state.lower()}",
        "",
        "| | |",
        "|---|---|",
        f"| run | `{job}` |",
        f"| state | {state} |",
    ]
    if error:
        lines.append(f"| error | {error.replace('|', '/').splitlines()[0]} |")
    markdown = "\n".join(lines) + "\n"
    written = [str(write_text(summary_path, markdown))]
    if reports_dir:
        written.append(storage.write_text(storage.join(reports_dir, f"{pipeline}-last-run.md"), markdown))
    logger.info(
        "run summary written",
        extra={"pipeline": pipeline, "state": state, "files": [storage.redact(file) for file in written]},
    )
    return RunSummary(pipeline=pipeline, state=state, job=job, error=error, markdown=markdown, written=written)
