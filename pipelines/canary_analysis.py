"""The canary analysis pipeline: after a canary has had traffic, promote it or roll it back.

Schedule it (or run ``ctpipe run canary_analysis``) some time after the training pipeline's
deploy step opened a canary. It reads the serving inference log, compares challenger and
champion against ``serving.canary_analysis`` and promotes the challenger or closes the canary,
recording why (see ``components.canary_analysis``).
"""

# No `from __future__ import annotations`: KFP reads the annotations at runtime.
from collections.abc import Callable
from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Markdown

from pipelines.config import CtpipeConfig
from pipelines.kfp_components import Components
from pipelines.params import describe
from pipelines.platform import finish

# The pipeline's outputs, declared once: KFP reads the annotation, the body returns an instance.
CanaryAnalysisOutputs = NamedTuple(
    "CanaryAnalysisOutputs", [("decision", str), ("result", Artifact), ("report", Markdown)]
)


def build(
    config: CtpipeConfig, ops: Components, code_version: str = "unknown", local: bool = False
) -> Callable[..., Any]:
    """Return the canary analysis pipeline with every parameter defaulting to ``config``.

    It reads no time window, so ``local`` (built for kfp.local) changes nothing.
    """

    @dsl.pipeline(
        name="ctpipe-canary-analysis",
        description="Compare the canary challenger with the champion on logged live traffic (error rate, "
        "latency p95, prediction PSI, accuracy where labels arrived); promote or roll back and record why.",
    )
    @describe("Promote the canary challenger or close the canary, on its logged live traffic.")
    def canary_analysis(
        serving: str = config.serving.model_dump_json(),
        dataset: str = config.dataset.model_dump_json(),
        tracking_uri: str = config.tracking_uri,
        log_dir: str = config.inference_log_dir,
        labels_path: str = "",
        act: bool = True,
        profile: str = config.infra.profile,
        serving_image: str = config.infra.images.serving,
        feast: str = config.feast.model_dump_json(),
    ) -> CanaryAnalysisOutputs:
        analysed = ops.canary_analysis(
            serving=serving,
            dataset=dataset,
            tracking_uri=tracking_uri,
            log_dir=log_dir,
            labels_path=labels_path,
            act=act,
            profile=profile,
            serving_image=serving_image,
            feast=feast,
        )
        analysed.set_display_name("canary analysis")
        finish(config)  # never cached (it moves aliases), cluster settings
        return CanaryAnalysisOutputs(analysed.outputs["Output"], analysed.outputs["result"], analysed.outputs["report"])

    return canary_analysis
