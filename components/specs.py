"""Typed specifications that components take as input.

Each component receives only the section it needs (a dataset spec, a model spec, ...),
so the same function works from a notebook, ``kfp.local`` and a cluster. The whole
configuration file (``pipelines/config.py``) is composed of these sections.

Every model forbids unknown keys, so a misspelled key fails where it is loaded
with a message that names it.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskType = Literal["binary_classification", "regression"]


class StrictModel(BaseModel):
    """Base for every spec: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def import_object(path: str) -> Any:
    """Import ``package.module.attr`` and return the attribute.

    Args:
        path: Dotted import path, for example ``sklearn.ensemble.RandomForestClassifier``.

    Returns:
        The imported attribute.

    Raises:
        ValueError: If the path has no module part, the module is missing, or lacks the attribute.
    """
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"import path {path!r} must look like 'package.module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} (from {path!r}): {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from exc


class ValidationSpec(StrictModel):
    """How the schema suite is inferred from a training snapshot (``validate.infer_suite``)."""

    tolerance: float = Field(
        default=0.1,
        ge=0,
        description="Numeric ranges are widened by this share of the observed range; null rates by this share.",
    )
    min_rows: int = Field(default=1, ge=1, description="Fewer rows than this is a blocking failure.")
    min_row_ratio: float | None = Field(
        default=0.1,
        ge=0,
        description="Warn when new data has fewer rows than this times the training snapshot's; null: never.",
    )
    max_row_ratio: float | None = Field(
        default=10.0,
        gt=0,
        description="Warn when new data has more rows than this times the training snapshot's; null: never.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ValidationSpec:
        low, high = self.min_row_ratio, self.max_row_ratio
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_row_ratio ({self.min_row_ratio}) is above max_row_ratio ({self.max_row_ratio})")
        return self


class DatasetSpec(StrictModel):
    """What the tabular data looks like; nothing in ctpipe hard-codes a dataset."""

    source: str = Field(description="Path of a CSV or Parquet file (or a folder of Parquet files).")
    entity_column: str = Field(description="Column that identifies an entity (the Feast entity key).")
    timestamp_column: str = Field(description="Event timestamp column, used for windows and point-in-time joins.")
    label_column: str = Field(description="Column to predict.")
    numeric_features: list[str] = Field(default_factory=list, description="Numeric feature columns.")
    categorical_features: list[str] = Field(default_factory=list, description="Categorical (string) feature columns.")
    task: TaskType = Field(default="binary_classification", description="Kind of prediction task.")
    validation: ValidationSpec = Field(default_factory=ValidationSpec)

    @model_validator(mode="after")
    def _check_columns(self) -> DatasetSpec:
        features = self.numeric_features + self.categorical_features
        if not features:
            raise ValueError("numeric_features and categorical_features are both empty; name at least one")
        seen: set[str] = set()
        for column in [self.entity_column, self.timestamp_column, self.label_column, *features]:
            if column in seen:
                raise ValueError(f"column {column!r} is named more than once in the dataset spec")
            seen.add(column)
        return self

    @property
    def feature_columns(self) -> list[str]:
        """Numeric then categorical feature names, in config order."""
        return [*self.numeric_features, *self.categorical_features]

    @property
    def key_columns(self) -> list[str]:
        """Entity and timestamp columns, which identify one row."""
        return [self.entity_column, self.timestamp_column]


class ModelSpec(StrictModel):
    """Which estimator to train and how to hold out evaluation data."""

    estimator: str = Field(
        default="sklearn.ensemble.HistGradientBoostingClassifier",
        description="Import path of a scikit-learn compatible estimator class.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the estimator.")
    random_seed: int = Field(default=42, description="Seed for the estimator and any sampling.")
    eval_fraction: float = Field(
        default=0.25,
        gt=0.0,
        lt=1.0,
        description="Share of the newest rows (by event timestamp) held out for evaluation.",
    )

    @field_validator("estimator")
    @classmethod
    def _estimator_importable(cls, value: str) -> str:
        obj = import_object(value)
        if not callable(obj):
            raise ValueError(f"estimator {value!r} is not a class or factory")
        return value


class ValueThreshold(StrictModel):
    """Absolute bounds a metric must stay inside (TFX's value threshold)."""

    lower_bound: float | None = None
    upper_bound: float | None = None


class ChangeThreshold(StrictModel):
    """How far a candidate may move against the champion (TFX's change threshold).

    ``absolute`` bounds ``candidate - champion`` and ``relative`` bounds
    ``(candidate - champion) / |champion|``; both are read in the metric's direction, so
    ``absolute: -0.01`` with ``higher_is_better`` allows a drop of at most 0.01.
    """

    direction: Literal["higher_is_better", "lower_is_better"] | None = Field(
        default=None, description="Defaults to the metric's own direction."
    )
    absolute: float | None = None
    relative: float | None = None


class MetricSpec(StrictModel):
    """One evaluation metric, named by import path or by a ``sklearn.metrics`` name."""

    name: str = Field(description="E.g. 'roc_auc_score' or 'sklearn.metrics.f1_score'.")
    input: Literal["auto", "label", "score"] = Field(
        default="auto",
        description="Pass predicted labels or scores (probabilities) to the metric; 'auto' picks by name.",
    )
    threshold: ValueThreshold | None = None
    change: ChangeThreshold | None = None

    @property
    def import_path(self) -> str:
        """Full import path of the metric function."""
        return self.name if "." in self.name else f"sklearn.metrics.{self.name}"

    @field_validator("name")
    @classmethod
    def _metric_importable(cls, value: str) -> str:
        path = value if "." in value else f"sklearn.metrics.{value}"
        if not callable(import_object(path)):
            raise ValueError(f"metric {value!r} is not a function")
        return value

    @property
    def short_name(self) -> str:
        """Name without the module, used as the metric's key in reports."""
        return self.name.rpartition(".")[2]

    @property
    def higher_is_better(self) -> bool:
        """Direction by scikit-learn's naming convention unless the change threshold says otherwise."""
        if self.change is not None and self.change.direction is not None:
            return self.change.direction == "higher_is_better"
        return not self.short_name.endswith(("_loss", "_error", "_deviance"))

    @property
    def uses_scores(self) -> bool:
        """Whether the metric wants scores (probabilities) rather than labels."""
        if self.input != "auto":
            return self.input == "score"
        score_metrics = ("roc_auc", "average_precision", "log_loss", "brier_score")
        return self.short_name.startswith(score_metrics)


class EvaluationSpec(StrictModel):
    """Metrics and thresholds that decide whether a candidate is blessed."""

    metrics: list[MetricSpec] = Field(
        default_factory=lambda: [MetricSpec(name="roc_auc_score", threshold=ValueThreshold(lower_bound=0.6))],
        min_length=1,
    )
    slice_column: str | None = Field(default=None, description="Categorical column to evaluate per slice.")


class ServingSpec(StrictModel):
    """How the model is served and rolled out."""

    model_name: str = Field(default="ctpipe-model", description="Registered model name in MLflow.")
    canary_percent: int = Field(default=20, ge=1, le=100, description="Traffic share for a new challenger.")
    host: str = Field(default="127.0.0.1", description="Address the local model server binds.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port of the local model server.")
    deployment_mode: Literal["Serverless", "Standard"] = Field(
        default="Serverless", description="KServe mode for InferenceServices in the cluster profile."
    )
    namespace: str = Field(default="ctpipe", description="Kubernetes namespace for InferenceServices.")


class MonitoringSpec(StrictModel):
    """Drift thresholds that turn measurements into ok / warn / retrain."""

    psi_warn: float = Field(default=0.1, gt=0, description="PSI above which a feature is flagged.")
    psi_retrain: float = Field(default=0.25, gt=0, description="PSI above which a feature asks for retraining.")
    prediction_psi_retrain: float = Field(default=0.2, gt=0, description="PSI of predictions asking for retraining.")
    ks_pvalue: float = Field(
        default=0.01, gt=0, lt=1, description="KS / chi-square p-value below which drift is significant."
    )
    bins: int = Field(default=10, ge=2, le=100, description="Quantile bins for PSI of numeric features.")
    min_rows: int = Field(default=100, ge=1, description="Fewer current rows than this gives 'warn', never 'retrain'.")

    @model_validator(mode="after")
    def _ordered(self) -> MonitoringSpec:
        if self.psi_warn >= self.psi_retrain:
            raise ValueError(f"psi_warn ({self.psi_warn}) must be below psi_retrain ({self.psi_retrain})")
        return self


class FeastSpec(StrictModel):
    """Where Feast keeps its registry and stores."""

    project: str = Field(default="ctpipe", description="Feast project name.")
    repo_path: str = Field(default="feature_repo", description="Folder with the Feast feature repository.")
    online_store: Literal["sqlite", "redis"] = Field(
        default="sqlite", description="'sqlite': a file in the workspace. 'redis': a Redis server (cluster profile)."
    )
    redis_connection_string: str = Field(default="127.0.0.1:6379", description="Used when online_store is redis.")
    offline_store: Literal["file", "spark"] = Field(
        default="file",
        description="'file': Parquet read by Feast's Dask engine. 'spark': Feast's Spark store over the same files.",
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict,
        description="Spark settings for offline_store 'spark', e.g. {'spark.master': 'spark://host:7077'}.",
    )
    ttl_days: int = Field(default=3650, ge=1, description="How far back a feature value stays valid.")
    entity_type: Literal["int64", "string"] = Field(default="int64", description="Type of the entity id column.")
