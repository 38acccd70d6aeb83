"""Benchmarks write one JSON file each under out/bench/ (override with CTPIPE_BENCH_DIR)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench_rows(default: int) -> int:
    """Rows to benchmark on; CTPIPE_BENCH_ROWS shrinks a run for a quick check."""
    return int(os.environ.get("CTPIPE_BENCH_ROWS", default))


@pytest.fixture
def record_bench():
    """Write a benchmark result as JSON, with the machine it ran on."""

    def write(name: str, result: dict[str, Any]) -> Path:
        out_dir = Path(os.environ.get("CTPIPE_BENCH_DIR", ROOT / "out" / "bench"))
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": name,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                # Other work on the machine skews every figure; a load near the core count means a busy machine.
                "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            },
            **result,
        }
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(json.dumps(payload, indent=2))
        return path

    return write
