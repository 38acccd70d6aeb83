"""One registered model version in memory: downloaded, checked, loaded and smoke-tested.

:func:`load_version` is what the model server's watcher (:mod:`serving.model`) calls before it
switches any traffic to a version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from components.common import tracking
from components.common.compiled_model import PARITY_TOLERANCE, OnnxScorer, output_kind
from components.common.model_input import Feature, features_of
from components.common.registry import ONNX_ARTIFACT, ONNX_PARITY_TAG, ONNX_SHA256_TAG, SERVING_RUNTIME_TAG
from serving.decoding import Columns, to_frame


@dataclass(frozen=True)
class LoadedVersion:
    """A registered model version loaded into memory, ready to score.

    ``runtime`` says what scores requests: ``onnx`` (the version's compiled ``model.onnx``, when
    infra validation proved it gives the scikit-learn model's answers) or ``sklearn``;
    ``runtime_reason`` says why. ``runtime_decided`` is False while infra validation has not
    recorded a verdict yet: the watcher then loads the version again once it has.
    """

    version: str
    model: Any = field(repr=False, compare=False)
    features: tuple[Feature, ...]
    output: Literal["score", "prediction"]
    run_id: str | None = None
    loaded_at: float = 0.0
    onnx: OnnxScorer | None = field(default=None, repr=False, compare=False)
    runtime_reason: str = ""
    runtime_decided: bool = True
    #: A multiclass classifier's classes (``classes_``, the order of its probability columns); empty
    #: for a binary classifier and a regressor, whose answer is one value per row.
    classes: tuple[Any, ...] = ()

    @property
    def multiclass(self) -> bool:
        """Whether :meth:`score` returns an ``[n, k]`` probability matrix (more than two classes)."""
        return len(self.classes) > 2

    def predicted_classes(self, probabilities: np.ndarray) -> list[Any]:
        """The class of each row of a multiclass probability matrix.

        The most probable class, ties to the first, as scikit-learn's ``predict`` (an argmax over
        ``predict_proba``).
        """
        return [self.classes[index] for index in np.argmax(probabilities, axis=1).tolist()]

    @property
    def runtime(self) -> str:
        """``onnx`` or ``sklearn``."""
        return "sklearn" if self.onnx is None else "onnx"

    @property
    def feature_names(self) -> list[str]:
        """Feature names in the order the model expects them."""
        return [f.name for f in self.features]

    def score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """The scikit-learn model's answer for a DataFrame (the reference the ONNX model must match)."""
        if self.output == "score":
            proba = np.asarray(self.model.predict_proba(frame))
            return proba[:, 1] if proba.ndim == 2 and proba.shape[1] == 2 else proba
        return np.asarray(self.model.predict(frame))

    def score(self, columns: Columns) -> np.ndarray:
        """Positive-class probability for binary classifiers, ``predict`` otherwise.

        The ONNX runtime scores the columns as they are; scikit-learn gets a DataFrame.
        """
        if self.onnx is not None:
            return self.onnx.score_columns(columns)
        return self.score_frame(to_frame(columns, self.features))


def load_version(client: Any, name: str, version: str) -> LoadedVersion:
    """Download, load and smoke-test one registered version (no traffic change).

    The version's ``model.onnx`` is loaded as well when infra validation recorded that it
    gives the same answers (tag ``ctpipe.serving_runtime=onnx``); its SHA-256 must match the
    one recorded at registration.

    Raises:
        Exception: Whatever MLflow, unpickling, the ONNX runtime or the smoke test raises.
    """
    import mlflow.artifacts
    from mlflow.models import Model as MlflowModel

    tags = dict(client.get_model_version(name, version).tags or {})
    staging = tempfile.mkdtemp(prefix="ctpipe-serving-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=staging)
        # Unpickled only after the SHA-256 that train recorded matched.
        sk_model = tracking.load_downloaded_model(local, f"models:/{name}/{version}", client)
        mlflow_model = MlflowModel.load(local)
        features = features_of(mlflow_model, sk_model)
        output = output_kind(sk_model)
        classes = tuple(np.asarray(getattr(sk_model, "classes_", ())).tolist()) if output == "score" else ()
        runtime = tags.get(SERVING_RUNTIME_TAG)
        onnx = None
        if runtime == "onnx":
            onnx = OnnxScorer.from_file(
                os.path.join(local, ONNX_ARTIFACT), tags.get(ONNX_SHA256_TAG, ""), features, output
            )
        reason = tags.get(ONNX_PARITY_TAG) or (
            "infra validation has not checked the ONNX model yet" if runtime is None else f"runtime {runtime}"
        )
        loaded = LoadedVersion(
            version=version,
            model=sk_model,
            features=features,
            output=output,
            run_id=mlflow_model.run_id,
            loaded_at=time.time(),
            onnx=onnx,
            runtime_reason=reason,
            runtime_decided=runtime is not None,
            classes=classes if len(classes) > 2 else (),
        )
        example = mlflow_model.load_input_example(local) if mlflow_model.saved_input_example_info else None
        if isinstance(example, pd.DataFrame) and len(example):
            smoke = example[loaded.feature_names]
            columns = {f.name: smoke[f.name].to_numpy() for f in features}
            if onnx is not None:
                # The fast path answers like the model it was compiled from, or it is not used.
                np.testing.assert_allclose(onnx.score_frame(smoke), loaded.score_frame(smoke), atol=PARITY_TOLERANCE)
            loaded.score(columns)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return loaded
