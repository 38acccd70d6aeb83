"""Another team's pipeline that reuses ctpipe's ``ingest`` from its component YAML.

This module stands for code outside ctpipe: it imports kfp and the standard library only
(``tests/integration/test_component_yaml.py`` checks that), loads ``ingest.yaml`` with
``kfp.components.load_component_from_file`` and wires it between two steps of its own:
``write_table`` writes a small CSV, ctpipe's ingest snapshots one window of it, and
``count_rows`` reads the snapshot. The normal suite compiles it and runs it with kfp.local's
SubprocessRunner; the containers tier runs it with the DockerRunner in the components image.
"""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from kfp import components, dsl
from kfp.dsl import Dataset, Input, Output

# A week of orders; the window below keeps the four rows of 2026-03-02 .. 2026-03-08.
ORDERS_CSV = """order_id,ordered_at,amount,channel,returned
1001,2026-02-27T09:15:00Z,19.90,web,0
1002,2026-03-02T10:00:00Z,45.00,store,0
1003,2026-03-03T18:30:00Z,12.50,web,1
1004,2026-03-05T08:05:00Z,99.99,app,0
1005,2026-03-07T21:45:00Z,5.25,web,0
1006,2026-03-09T07:00:00Z,30.00,store,1
"""
WINDOW_START = "2026-03-02T00:00:00Z"
WINDOW_END = "2026-03-09T00:00:00Z"
ROWS_IN_WINDOW = 4

# ctpipe's `dataset` section (docs/configuration.md), as the JSON string the component takes.
ORDERS_DATASET = {
    "source": "orders.csv",
    "entity_column": "order_id",
    "timestamp_column": "ordered_at",
    "label_column": "returned",
    "numeric_features": ["amount"],
    "categorical_features": ["channel"],
}


def build(ingest_yaml: str | Path, image: str) -> Callable[..., Any]:
    """The team's pipeline around ctpipe's ``ingest``, loaded from ``ingest_yaml``.

    Args:
        ingest_yaml: Path of ctpipe's ``ingest.yaml``.
        image: The image of the team's own two steps; it needs Python with kfp and pandas.
    """
    ingest = components.load_component_from_file(str(ingest_yaml))

    @dsl.component(base_image=image, install_kfp_package=False)
    def write_table(text: str, file_name: str, table: Output[Dataset]) -> str:
        """Write ``text`` as ``file_name`` in the artifact's folder; return where it is."""
        import os

        os.makedirs(table.path, exist_ok=True)
        with open(os.path.join(table.path, file_name), "w") as handle:
            handle.write(text)
        # The URI, not the local path: on a cluster it is the object-store location, which
        # every later task can read; under kfp.local both are the same path.
        return table.uri.rstrip("/") + "/" + file_name

    @dsl.component(base_image=image, install_kfp_package=False)
    def count_rows(snapshot: Input[Dataset]) -> NamedTuple("Counted", [("rows", int), ("columns", str)]):
        """Read ctpipe's snapshot (one Parquet file): its rows and its columns."""
        from collections import namedtuple

        import pandas as pd

        frame = pd.read_parquet(snapshot.path)
        return namedtuple("Counted", ["rows", "columns"])(len(frame), ",".join(map(str, frame.columns)))

    @dsl.pipeline(name="orders-weekly-snapshot", description="Another team's pipeline using ctpipe's ingest.")
    def orders_weekly_snapshot(window_start: str = WINDOW_START, window_end: str = WINDOW_END) -> NamedTuple(
        "Outputs", [("rows", int), ("columns", str), ("content_hash", str)]
    ):
        table = write_table(text=ORDERS_CSV, file_name="orders.csv")
        snapshot = ingest(
            source=table.outputs["Output"],
            source_fingerprint="orders-v1",
            dataset=json.dumps(ORDERS_DATASET),
            window_start=window_start,
            window_end=window_end,
        )
        counted = count_rows(snapshot=snapshot.outputs["snapshot"])
        Outputs = NamedTuple("Outputs", [("rows", int), ("columns", str), ("content_hash", str)])
        return Outputs(counted.outputs["rows"], counted.outputs["columns"], snapshot.outputs["Output"])

    return orders_weekly_snapshot
