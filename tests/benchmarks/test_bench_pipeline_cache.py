"""Wall time of a cold `ctpipe run training` against a fully cached re-run on the demo data."""

import pytest

from pipelines.runner import run_pipeline, window_params
from tests.benchmarks.conftest import bench_rows
from tests.helpers import small_config

pytestmark = pytest.mark.bench


def test_cold_vs_cached_training_run(tmp_path, stop_server, record_bench):
    config = small_config(tmp_path, rows=bench_rows(5000))
    stop_server(tmp_path)
    window = window_params(config, 1)
    cold = run_pipeline("training", config, window, progress=None)
    cached = run_pipeline("training", config, window, progress=None)
    assert cold.succeeded and cached.succeeded, cold.error or cached.error
    record_bench(
        "pipeline_cache",
        {
            "rows": bench_rows(5000),
            "cold_seconds": round(cold.seconds, 2),
            "cached_seconds": round(cached.seconds, 2),
            "cold_over_cached_ratio": round(cold.seconds / cached.seconds, 2),
            "cached_tasks": cached.cache_hits,
            "tasks_run_again": [t.name for t in cached.tasks if t.status == "ran"],
        },
    )
