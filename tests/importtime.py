"""Reading ``python -X importtime``: which heavy packages importing a module loads, and who imported them.

The import-budget test (tests/unit/test_import_budget.py) checks the packages, which does not
flake; the pipeline-cache benchmark records the seconds spent in ctpipe's own modules.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN_PACKAGES = ("components", "pipelines", "serving")
# Third-party packages that cost a task noticeable start-up (tenths of a second to seconds each).
HEAVY = frozenset(
    {
        "mlflow",
        "sqlalchemy",
        "alembic",
        "sklearn",
        "scipy",
        "skl2onnx",
        "onnx",
        "onnxruntime",
        "pandas",
        "numpy",
        "pyarrow",
        "cloudpickle",
        "feast",
        "great_expectations",
        "pyspark",
        "kserve",
        "kubernetes",
        "kfp",
        "boto3",
        "botocore",
        "s3fs",
        "fsspec",
        "requests",
        "yaml",
    }
)
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


@dataclass
class ImportReport:
    """What ``python -X importtime`` printed for one import statement."""

    own_seconds: float = 0.0
    heavy: dict[str, str] = field(default_factory=dict)  # heavy package -> the module that imported it first


def parse_importtime(stderr: str) -> ImportReport:
    """Read ``-X importtime`` output: ctpipe's own time, and which heavy packages were loaded, by whom.

    Each line is ``import time: self | cumulative | <indent>module``; a module is printed after
    everything it imported, one indent level deeper than its importer.
    """
    rows = [(int(m[1]), len(m[3]) // 2, m[4]) for m in map(_LINE.match, stderr.splitlines()) if m]
    report = ImportReport()
    for index, (self_us, _depth, module) in enumerate(rows):
        package = module.split(".")[0]
        if package in OWN_PACKAGES:
            report.own_seconds += self_us / 1e6
        if package in HEAVY and package not in report.heavy:
            report.heavy[package] = _importer(rows, index)
    return report


def _importer(rows: list[tuple[int, int, str]], index: int) -> str:
    """The nearest module outside the package of ``rows[index]`` that (indirectly) imported it."""
    _, depth, module = rows[index]
    package = module.split(".")[0]
    for _, ancestor_depth, name in rows[index + 1 :]:
        if ancestor_depth < depth:
            if name.split(".")[0] != package:
                return name
            depth = ancestor_depth
    return "the statement itself"


def import_report(statement: str) -> ImportReport:
    """Run ``statement`` in a fresh interpreter with ``-X importtime`` and read what it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return parse_importtime(done.stderr)
