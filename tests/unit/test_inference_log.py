"""The inference log layout shared by the model server (writer) and monitoring (reader)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.common.errors import DataError
from components.common.inference_log import append_batch, read_window


def _batch(stamps: list[str], version: str = "1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(stamps))],
            "timestamp": pd.to_datetime(stamps, utc=True),
            "model_name": "churn",
            "model_version": version,
            "tenure_months": range(len(stamps)),
            "prediction": [0.1 * i for i in range(len(stamps))],
        }
    )


def test_batches_land_in_date_partitions_and_read_back_by_window(tmp_path: Path) -> None:
    written = append_batch(tmp_path, _batch(["2026-01-01T23:59:00Z", "2026-01-02T00:01:00Z", "2026-01-03T12:00:00Z"]))
    assert sorted(Path(path).parent.name for path in written) == [
        "date=2026-01-01",
        "date=2026-01-02",
        "date=2026-01-03",
    ]
    append_batch(tmp_path, _batch(["2026-01-02T05:00:00Z"], version="2"))

    window = read_window(tmp_path, "2026-01-02", "2026-01-03")

    assert list(window["request_id"]) == ["r1", "r0"]
    assert list(window["model_version"]) == ["1", "2"]
    assert len(read_window(tmp_path)) == 4
    assert read_window(tmp_path, model_name="other").empty
    assert not list(tmp_path.rglob(".*")), "no temporary files are left behind"


def test_missing_columns_and_missing_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"lacks column\(s\) \['model_version'\]"):
        append_batch(tmp_path, _batch(["2026-01-01"]).drop(columns="model_version"))
    with pytest.raises(DataError, match="no inference log here"):
        read_window(tmp_path / "absent")
