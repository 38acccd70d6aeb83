"""Helpers for tests that need a whole ctpipe setup: a private workspace, small data, a free port, CRD validators."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from components.specs import DatasetSpec
from pipelines.config import CtpipeConfig, load_config, parse_config
from tests.servers.process import free_port

ROOT = Path(__file__).resolve().parents[1]


def demo_spec(source: str | Path) -> DatasetSpec:
    """The dataset of the repository's ctpipe.yaml (it describes the demo's data) read from ``source``.

    For the tests that use the demo's data on purpose (benchmarks, the demo itself); component
    tests use ``tests.data`` and its ``churn_spec``.
    """
    return load_config(ROOT / "ctpipe.yaml").dataset.model_copy(update={"source": str(source)})


def small_config(workspace: Path, rows: int = 800) -> CtpipeConfig:
    """The repository's ctpipe.yaml, pointed at a private workspace with small data and a free port."""
    raw = yaml.safe_load((ROOT / "ctpipe.yaml").read_text())
    raw["dataset"]["source"] = str(workspace / "data" / "churn.parquet")
    raw["infra"]["workspace"] = str(workspace)
    raw["serving"]["port"] = free_port()
    raw["model"]["params"] = {"max_iter": 60, "learning_rate": 0.1, "max_leaf_nodes": 15}
    config = parse_config(raw, ROOT)
    # Whole pipelines run on the demo's data: ctpipe.yaml describes it, and the runner reads its windows.
    from pipelines.demo_data import DriftSpec, generate

    generate(config.dataset.source, windows=3, rows_per_window=rows, seed=11, drift=DriftSpec(start_window=2))
    return config


KSERVE_CRD = "serving.kserve.io_inferenceservices.yaml"
# The spark-operator CRD of each kind, in shared/schemas/spark-operator (kubeflow/spark-operator v2.5.2).
SPARK_CRDS = {
    "SparkApplication": "sparkoperator.k8s.io_sparkapplications.yaml",
    "ScheduledSparkApplication": "sparkoperator.k8s.io_scheduledsparkapplications.yaml",
}


@functools.cache
def _strict_schema(crd_file: Path, version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in a CRD file, with unknown fields made errors below ``spec``."""
    crd = yaml.load(crd_file.read_text(), Loader=yaml.CSafeLoader)
    schema: dict[str, Any] = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"][
        "openAPIV3Schema"
    ]

    def close(node: Any) -> None:  # the API server prunes unknown fields silently; make them errors here
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema["properties"]["spec"])
    return schema


def _schemas_folders(name: str) -> list[Path]:
    """The folders ``shared/schemas/<name>`` may be, in order.

    ``CTPIPE_KSERVE_SCHEMAS`` names the kserve folder, and the others sit beside it; without it every
    ancestor of the checkout is tried, because a git worktree may sit deeper than the checkout.
    """
    override = os.environ.get("CTPIPE_KSERVE_SCHEMAS")
    if override:
        return [Path(override) if name == "kserve" else Path(override).parent / name]
    return [p / "shared" / "schemas" / name for p in ROOT.parents]


def kserve_crd_validator() -> Any:
    """A strict Draft 7 validator for InferenceServices from the KServe CRD in ``shared/schemas/kserve``.

    The folder sits beside the checkout (a git worktree may sit deeper, so every ancestor is
    tried), or where ``CTPIPE_KSERVE_SCHEMAS`` points. Skips the test when it is absent.
    """
    from jsonschema import Draft7Validator

    crd_file = next((f / KSERVE_CRD for f in _schemas_folders("kserve") if (f / KSERVE_CRD).is_file()), None)
    if crd_file is None:
        pytest.skip(f"KServe CRD {KSERVE_CRD} not found in shared/schemas/kserve beside the checkout")
    return Draft7Validator(_strict_schema(crd_file, "v1beta1"))


def spark_crd_validator(kind: str = "ScheduledSparkApplication") -> Any:
    """A strict Draft 7 validator for a spark-operator kind (v1beta2) from ``shared/schemas/spark-operator``.

    Found as :func:`kserve_crd_validator` finds its folder (``spark-operator`` beside the ``kserve`` folder
    that ``CTPIPE_KSERVE_SCHEMAS`` names, if set). Skips the test when the CRD is absent.

    Args:
        kind: ``ScheduledSparkApplication`` or ``SparkApplication``.
    """
    from jsonschema import Draft7Validator

    if kind not in SPARK_CRDS:
        raise ValueError(f"kind: expected one of {sorted(SPARK_CRDS)}, found {kind!r}")
    name = SPARK_CRDS[kind]
    crd_file = next((f / name for f in _schemas_folders("spark-operator") if (f / name).is_file()), None)
    if crd_file is None:
        pytest.skip(f"Spark operator CRD {name} not found in shared/schemas/spark-operator beside the checkout")
    return Draft7Validator(_strict_schema(crd_file, "v1beta2"))


def data_docs_sections(page: str) -> dict[str, str]:
    """The sections of a GX Data Docs page (``components.common.data_docs``) by title, as their HTML.

    GX renders one ``ge-section`` per column (titled with the column name), one for table-level
    expectations, an ``Overview`` and ctpipe's own section first.
    """
    import re

    starts = list(re.finditer(r'<div id="section-\d+" class="ge-section[^"]*">', page))
    sections = {}
    for start, end in zip(starts, [*starts[1:], None], strict=True):
        body = page[start.end() : end.start() if end else len(page)]
        title = re.sub(r"<[^>]+>", " ", body).split()[0] if body.strip() else ""
        if title == "Table-Level":
            title = "Table-Level Expectations"
        sections[title] = body
    return sections


def kserve_container(isvc: dict[str, Any], canary: bool = False) -> dict[str, Any]:
    """ctpipe's ``kserve-container`` of an InferenceService's predictor (or of its ``spec.canary`` entry)."""
    predictor = isvc["spec"]["canary"][0]["predictor"] if canary else isvc["spec"]["predictor"]
    (container,) = [c for c in predictor["containers"] if c["name"] == "kserve-container"]
    return dict(container)


def followed_alias(container: dict[str, Any]) -> str:
    """The registry alias a predictor container follows (its ``--alias`` argument)."""
    return str(container["args"][container["args"].index("--alias") + 1])


def float32_sensitive_model(rows: int = 200) -> tuple[Any, pd.DataFrame, list[Any]]:
    """A model compiled in float32, on values that float32 cannot tell apart: its parity fails.

    The values differ by 1e-10 around 1.0 (float32's spacing there is 1.2e-7). scikit-learn scales
    them in float64 and the tree separates the classes. skl2onnx's double graph of
    ``PolynomialFeatures`` does not load in onnxruntime (it concatenates float and double), so the
    model falls back to float32 inputs: every value is 1.0 and every row takes the same branch.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    from components.common.model_input import Feature

    frame = pd.DataFrame({"x": 1.0 + np.arange(rows) * 1e-10})
    label = (np.arange(rows) >= rows // 2).astype(int)
    numeric = Pipeline([("scale", StandardScaler()), ("expand", PolynomialFeatures(degree=2))])
    model = Pipeline(
        [
            ("preprocess", ColumnTransformer([("numeric", numeric, ["x"])])),
            ("estimator", DecisionTreeClassifier(max_depth=1, random_state=0)),
        ]
    ).fit(frame, label)
    return model, frame, [Feature("x", "number")]


def spec_features(spec: DatasetSpec) -> list[Any]:
    """The ``Feature`` list a model trained on ``spec`` has: numeric columns, then categorical ones."""
    from components.common.model_input import Feature

    return [Feature(c, "number") for c in spec.numeric_features] + [
        Feature(c, "string") for c in spec.categorical_features
    ]


def onnx_precision(data: bytes) -> str:
    """A compiled graph's ``ctpipe.precision``: ``float64``, or ``float32: <why not>``."""
    import onnx

    from components.common.compiled_model import PRECISION_KEY

    return {p.key: p.value for p in onnx.load_from_string(data).metadata_props}[PRECISION_KEY]
