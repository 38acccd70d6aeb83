"""The batch scoring pipeline: score one window with the champion on Spark."""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from collections.abc import Callable
from typing import Any

from kfp import dsl
from kfp.dsl import Dataset

from pipelines.config import CtpipeConfig
from pipelines.kfp_components import Components
from pipelines.params import describe
from pipelines.platform import finish
from pipelines.schedule import add_first_tasks


def build(
    config: CtpipeConfig, ops: Components, code_version: str = "unknown", local: bool = False
) -> Callable[..., Any]:
    """Return the batch scoring pipeline with every parameter defaulting to ``config``.

    ``local`` builds it for kfp.local, which has no scheduled time (:mod:`pipelines.schedule`).
    """

    @dsl.pipeline(
        name="ctpipe-batch-scoring",
        description="Snapshot a window and score it on Spark with the model behind the champion alias.",
    )
    @describe("Score one window on Spark with the champion.")
    def batch_scoring(
        source: str = config.dataset.source,
        source_fingerprint: str = "",
        window_start: str = "",
        window_end: str = "",
        schedule: str = config.schedule.model_dump_json(),
        dataset: str = config.dataset.model_dump_json(),
        serving: str = config.serving.model_dump_json(),
        tracking_uri: str = config.tracking_uri,
        spark_master: str = config.infra.spark_master,
    ) -> Dataset:
        first = add_first_tasks(
            ops,
            local=local,
            schedule=schedule,
            serving=serving,
            tracking_uri=tracking_uri,
            source=source,
            source_fingerprint=source_fingerprint,
            dataset=dataset,
            window_start=window_start,
            window_end=window_end,
        )
        champion, snapshot = first.champion, first.snapshot
        # Scoring is keyed on the resolved version, never on the moving alias.
        scored = ops.batch_predict(
            snapshot=snapshot.outputs["snapshot"],
            dataset=dataset,
            model_uri=champion.outputs["model_uri"],
            model_version=champion.outputs["version"],
            tracking_uri=tracking_uri,
            spark_master=spark_master,
        )
        finish(config)
        return scored.outputs["predictions"]

    return batch_scoring
