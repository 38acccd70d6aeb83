"""What goes into a model and what comes out: the feature frame every step gives a model, and its scores.

Train, evaluate, batch scoring and monitoring all hand a model the same frame, built here,
so a model never sees features typed one way in training and another way in scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from components.common.errors import DataError
from components.specs import DatasetSpec

FeatureKind = Literal["number", "integer", "string", "boolean", "any"]

# MLflow signature types -> what a request value must be.
_KIND_BY_MLFLOW_TYPE: dict[str, FeatureKind] = {
    "double": "number",
    "float": "number",
    "long": "integer",
    "integer": "integer",
    "string": "string",
    "boolean": "boolean",
}


@dataclass(frozen=True)
class Feature:
    """One input column the model expects."""

    name: str
    kind: FeatureKind


def require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    """Raise DataError naming every column of ``columns`` that ``frame`` lacks.

    Args:
        frame: The table to check.
        columns: Columns it must have.
        what: Name of the table for the message, e.g. ``"training set train.parquet"``.
    """
    missing = [column for column in dict.fromkeys(columns) if column not in frame.columns]
    if missing:
        raise DataError(
            f"{what} lacks column(s) {missing}; it has {list(frame.columns)}",
            hint="Check the dataset section of the config against the data.",
        )


def prepare_features(frame: pd.DataFrame, spec: DatasetSpec, columns: list[str] | None = None) -> pd.DataFrame:
    """The feature columns as the model sees them: numeric as float64, missing categories as NaN.

    Float numeric columns keep the model signature valid for missing values, and turning
    ``None`` into NaN lets the categorical imputer see every missing value.

    Args:
        frame: Rows with at least the feature columns.
        spec: Dataset spec naming numeric and categorical features.
        columns: Feature columns to select, defaults to ``spec.feature_columns``.

    Returns:
        A new frame with only the feature columns, in order.
    """
    columns = list(columns if columns is not None else spec.feature_columns)
    require_columns(frame, columns, "data")
    features = frame[columns].copy()
    numeric = set(spec.numeric_features)
    for column in columns:
        if column in numeric:
            try:
                features[column] = pd.to_numeric(features[column]).astype("float64")
            except (ValueError, TypeError) as exc:
                raise DataError(f"numeric feature {column!r} has non-numeric values: {exc}") from exc
        elif column in spec.categorical_features:
            values = features[column].astype(object)
            features[column] = values.where(values.notna(), np.nan)
    return features


def positive_scores(model: Any, features: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class (the last of ``model.classes_``) for each row."""
    return np.asarray(model.predict_proba(features))[:, -1]


def features_of(mlflow_model: Any, sk_model: Any) -> tuple[Feature, ...]:
    """Feature names and kinds from the MLflow signature, else from ``feature_names_in_``.

    Raises:
        ValueError: Neither tells the feature names.
    """
    signature = getattr(mlflow_model, "signature", None)
    inputs = getattr(signature, "inputs", None)
    if inputs is not None and not inputs.is_tensor_spec() and inputs.has_input_names():
        features = []
        for name, dtype in zip(inputs.input_names(), inputs.input_types(), strict=True):
            kind = _KIND_BY_MLFLOW_TYPE.get(getattr(dtype, "name", str(dtype)), "any")
            features.append(Feature(str(name), kind))
        return tuple(features)
    names = getattr(sk_model, "feature_names_in_", None)
    if names is not None:
        return tuple(Feature(str(name), "any") for name in names)
    raise ValueError("the model has no signature and no feature_names_in_; cannot tell its input columns")
