"""Typed specifications that components take as input.

Each component receives only the section it needs (a dataset spec, a model spec, ...),
so the same function works from a notebook, ``kfp.local`` and a cluster. The whole
configuration file (``pipelines/config.py``) is composed of these sections; the ``serving``
section and the sections inside it are in ``components/serving_spec.py``.

Every model forbids unknown keys, so a misspelled key fails where it is loaded
with a message that names it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.common.errors import ConfigError
from components.common.imports import ALLOWED_MODULES_ENV, import_estimator, import_metric
from components.common.schedule import parse_duration, parse_time
from components.common.storage import check_location

TaskType = Literal["binary_classification", "multiclass_classification", "regression"]
#: Tasks whose label is a class (a classifier with ``predict_proba`` is trained).
CLASSIFICATION_TASKS = ("binary_classification", "multiclass_classification")
#: How a per-class metric (precision, recall, F1, ROC AUC...) is averaged over the classes.
Average = Literal["macro", "weighted", "micro"]


class StrictModel(BaseModel):
    """Base for every spec: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _checked(importer: Any, path: str, key: str) -> Any:
    """Run a guarded importer from a validator: pydantic reports ValueError under the field's key."""
    try:
        return importer(path, key)
    except ConfigError as exc:
        raise ValueError(
            f"{exc}; more modules can be allowed with {ALLOWED_MODULES_ENV}, see docs/security.md"
        ) from None


class ValidationSpec(StrictModel):
    """How the schema suite is inferred from a training snapshot (``suites.infer_suite``)."""

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

    source: str = Field(
        description="CSV or Parquet file (or a folder of Parquet files): a path, or a URI such as "
        "s3://bucket/churn.parquet (credentials from the environment)."
    )
    entity_column: str = Field(description="Column that identifies an entity (the Feast entity key).")
    timestamp_column: str = Field(description="Event timestamp column, used for windows and point-in-time joins.")
    label_column: str = Field(description="Column to predict.")
    numeric_features: list[str] = Field(default_factory=list, description="Numeric feature columns.")
    categorical_features: list[str] = Field(default_factory=list, description="Categorical (string) feature columns.")
    task: TaskType = Field(
        default="binary_classification",
        description="Kind of prediction task: binary_classification (exactly 2 classes), "
        "multiclass_classification (3 or more classes; docs/multiclass.md) or regression.",
    )
    validation: ValidationSpec = Field(default_factory=ValidationSpec)

    @field_validator("source")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return check_location(value, "source")

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
    def is_classification(self) -> bool:
        """Whether the label is a class (binary or multiclass), so the model has ``predict_proba``."""
        return self.task in CLASSIFICATION_TASKS

    @property
    def feature_columns(self) -> list[str]:
        """Numeric then categorical feature names, in config order."""
        return [*self.numeric_features, *self.categorical_features]

    @property
    def key_columns(self) -> list[str]:
        """Entity and timestamp columns, which identify one row."""
        return [self.entity_column, self.timestamp_column]


class SearchSpec(StrictModel):
    """Hyper-parameter search over the estimator's parameters before the final fit.

    Candidates are scored by time-ordered cross-validation (``TimeSeriesSplit``) on the
    training split only; the held-out evaluation rows never take part. Each candidate is an
    MLflow child run of the training run, and the best parameters train the final model.
    """

    kind: Literal["grid", "random"] = Field(default="grid", description="Every combination, or n_iter sampled ones.")
    space: dict[str, list[Any]] = Field(
        min_length=1, description="Estimator parameter -> candidate values, e.g. {learning_rate: [0.05, 0.1]}."
    )
    n_iter: int = Field(default=10, ge=1, description="Candidates sampled by a random search.")
    folds: int = Field(default=3, ge=2, le=20, description="Time-ordered cross-validation folds.")
    scoring: str | None = Field(
        default=None,
        description="scikit-learn scorer name; default 'roc_auc' (binary classification), 'f1_macro' "
        "(multiclass classification) or 'neg_root_mean_squared_error' (regression).",
    )

    @field_validator("space")
    @classmethod
    def _values_given(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = sorted(key for key, values in value.items() if not values)
        if empty:
            raise ValueError(f"search space parameter(s) {empty} have no candidate values")
        return value


class ModelSpec(StrictModel):
    """Which estimator to train and how to hold out evaluation data."""

    estimator: str = Field(
        default="sklearn.ensemble.HistGradientBoostingClassifier",
        description="Import path of a scikit-learn estimator class under an allowed module prefix: sklearn., "
        "xgboost., lightgbm., or one added with the CTPIPE_ALLOWED_MODULES variable of the image or of the "
        "compiling machine (never from the config or a run parameter; docs/security.md).",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the estimator.")
    random_seed: int = Field(default=42, description="Seed for the estimator and any sampling.")
    eval_fraction: float = Field(
        default=0.25,
        gt=0.0,
        lt=1.0,
        description="Share of the newest rows (by event timestamp) held out for evaluation.",
    )
    search: SearchSpec | None = Field(default=None, description="Optional hyper-parameter search before training.")

    @field_validator("estimator")
    @classmethod
    def _estimator_importable(cls, value: str) -> str:
        # The prefix is checked before the module is imported; then the class is checked.
        _checked(import_estimator, value, "model.estimator")
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

    name: str = Field(
        description="E.g. 'roc_auc_score' or 'sklearn.metrics.f1_score': a function under sklearn.metrics. or a "
        "prefix added with the CTPIPE_ALLOWED_MODULES variable (docs/security.md)."
    )
    input: Literal["auto", "label", "score"] = Field(
        default="auto",
        description="Pass predicted labels or scores (probabilities) to the metric; 'auto' picks by name.",
    )
    average: Average | None = Field(
        default=None,
        description="How a per-class metric is averaged over the classes: macro, weighted or micro; passed as "
        "the metric's 'average' argument (ROC AUC of a multiclass task: one-vs-rest). Null: the function's own "
        "default on a binary task, macro on a multiclass task. Set, the metric is reported as <name>_<average>, "
        "e.g. f1_score_weighted.",
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
        _checked(import_metric, path, "metric name")
        return value

    @property
    def function_name(self) -> str:
        """Name of the metric function without its module, e.g. ``f1_score``."""
        return self.name.rpartition(".")[2]

    @property
    def short_name(self) -> str:
        """The metric's key in results and reports: the function name, plus ``_<average>`` when one is set."""
        return self.function_name if self.average is None else f"{self.function_name}_{self.average}"

    @property
    def higher_is_better(self) -> bool:
        """Direction by scikit-learn's naming convention unless the change threshold says otherwise."""
        if self.change is not None and self.change.direction is not None:
            return self.change.direction == "higher_is_better"
        return not self.function_name.endswith(("_loss", "_error", "_deviance"))

    @property
    def uses_scores(self) -> bool:
        """Whether the metric wants scores (probabilities) rather than labels."""
        if self.input != "auto":
            return self.input == "score"
        score_metrics = ("roc_auc", "average_precision", "log_loss", "brier_score", "top_k_accuracy")
        return self.function_name.startswith(score_metrics)


class SliceSpec(StrictModel):
    """Evaluate the candidate on each value of a categorical column, with this slice's own thresholds."""

    column: str = Field(description="Categorical column whose values define the slices.")
    metrics: list[MetricSpec] = Field(
        min_length=1, description="Metrics and thresholds applied on every slice of this column."
    )
    min_rows: int = Field(default=2, ge=1, description="Slices with fewer rows are skipped, with the reason.")
    values: list[str] | None = Field(default=None, description="Only these slice values; default every value seen.")


class EvaluationSpec(StrictModel):
    """Metrics and thresholds that decide whether a candidate is blessed."""

    metrics: list[MetricSpec] = Field(
        default_factory=lambda: [MetricSpec(name="roc_auc_score", threshold=ValueThreshold(lower_bound=0.6))],
        min_length=1,
    )
    slice_column: str | None = Field(
        default=None, description="Shorthand: evaluate per value of this column with the overall metrics."
    )
    slices: list[SliceSpec] = Field(
        default_factory=list, description="Per-slice evaluations, each with its own metrics and thresholds."
    )

    @property
    def all_slices(self) -> list[SliceSpec]:
        """``slices`` plus the ``slice_column`` shorthand (overall metrics on every slice)."""
        shorthand = [SliceSpec(column=self.slice_column, metrics=self.metrics)] if self.slice_column else []
        return [*shorthand, *self.slices]


def parse_delay(text: str) -> timedelta:
    """A label delay such as ``7d``, ``36h`` or ``90m``; ``0`` (or ``0m``, ``0d``) is an exact-time join.

    Raises:
        ValueError: Not a whole number and one of m, h, d, w (or zero), naming what was found.
    """
    if str(text).strip().rstrip("mhdw").strip() == "0":
        return timedelta(0)
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(
            f"expected a delay such as 7d, 36h or 90m (a whole number and one of m, h, d, w), or 0 for an "
            f"exact-time join; found {text!r}"
        ) from None


class LabelsSourceSpec(StrictModel):
    """Ground truth that arrives later, in its own table, joined to the monitored window on entity and time.

    Each current row (entity ``e``, time ``t``: the row's event timestamp, or for the inference log the
    time the request was answered) takes the label of ``e`` whose label timestamp is the first at or
    after ``t`` and at most ``max_delay`` after it. A row with no such label is unlabelled: missing and
    late labels lower the labelled count, they are never guessed. ``monitoring.labels_source: PATH`` is
    short for ``{path: PATH}``. Semantics in docs/monitoring.md, "Labels that arrive later".
    """

    path: str = Field(
        description="CSV or Parquet file (or a folder of Parquet files) of labels: a path or a URI such as "
        "s3://bucket/labels.parquet (credentials from the environment). Read whole on every monitoring run."
    )
    entity_column: str | None = Field(default=None, description="Entity id column; default dataset.entity_column.")
    timestamp_column: str | None = Field(
        default=None,
        description="When the label became true (the outcome's time); default dataset.timestamp_column. "
        "Naive times are UTC.",
    )
    label_column: str | None = Field(default=None, description="Label column; default dataset.label_column.")
    max_delay: str = Field(
        default="7d",
        description="Longest wait from a prediction to its label: a whole number and m, h, d or w (7d, 36h), "
        "or 0 for an exact-time join. A label later than this after the prediction is not used for it.",
    )
    duplicates: Literal["error", "last"] = Field(
        default="error",
        description="Two or more labels for the same entity and timestamp that disagree: 'error' stops with the "
        "file and the duplicate keys; 'last' takes the last one in the table's order (the latest to arrive in "
        "an append-only table). Identical duplicates count once either way.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return check_location(value, "labels_source.path")

    @field_validator("max_delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        parse_delay(value)
        return value

    @property
    def delay(self) -> timedelta:
        """``max_delay`` as a timedelta."""
        return parse_delay(self.max_delay)


class MonitoringSpec(StrictModel):
    """Drift thresholds that turn measurements into ok / warn / retrain."""

    psi_warn: float = Field(default=0.1, gt=0, description="PSI above which a feature is flagged.")
    psi_retrain: float = Field(default=0.25, gt=0, description="PSI above which a feature asks for retraining.")
    prediction_psi_retrain: float = Field(default=0.2, gt=0, description="PSI of predictions asking for retraining.")
    ks_pvalue: float = Field(
        default=0.01, gt=0, lt=1, description="KS / chi-square p-value below which drift is significant."
    )
    bins: int = Field(default=10, ge=2, le=100, description="Quantile bins for PSI of numeric features.")
    min_rows: int = Field(
        default=100,
        ge=1,
        description="Fewer current rows than this gives 'warn', never 'retrain'; fewer labelled current rows "
        "than this gives no live-performance verdict (the metrics are still reported).",
    )
    importance_floor: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="A feature whose normalised permutation importance is below this share is treated as unused: "
        "its drift alone asks for retraining only through drift_score_retrain. 0 lets every feature's PSI count.",
    )
    drift_score_retrain: float | None = Field(
        default=None,
        gt=0,
        description="Drift score (importance x PSI, importance normalised to sum 1) at which a significantly "
        "drifted feature asks for retraining whatever its PSI and the floor; empty: the score is reported only.",
    )
    current_source: Literal["snapshot", "inference_log"] = Field(
        default="snapshot",
        description="What monitoring compares with the reference: the window's snapshot, or what the model "
        "server answered in that window (its inference log, serving.inference_log_dir). With the inference log "
        "the served predictions are used for prediction drift, and the window's snapshot supplies the labels "
        "(joined on the entity column) for live performance unless labels_source is set.",
    )
    labels_source: LabelsSourceSpec | None = Field(
        default=None,
        description="Labels that arrive later, in their own table, joined to the window on entity and time "
        "(path, entity_column, timestamp_column, label_column, max_delay, duplicates). When set, the labels "
        "of live performance come only from it. Empty: the window's own label column.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> MonitoringSpec:
        if self.psi_warn >= self.psi_retrain:
            raise ValueError(f"psi_warn ({self.psi_warn}) must be below psi_retrain ({self.psi_retrain})")
        return self


class ScheduleSpec(StrictModel):
    """The time windows of scheduled runs: each reads the last complete window before its time (T-1)."""

    window: str = Field(
        default="7d",
        description="Window length: a whole number and m, h, d or w (7d, 1w, 24h). A run at time T without "
        "explicit bounds trains on and monitors T-1, the last complete window ending at or before T, "
        "against T-2, the window before it.",
    )
    anchor: str = Field(
        default="1970-01-05T00:00:00+00:00",
        description="A window boundary (ISO-8601; naive means UTC): windows are anchor + k * window, so every "
        "run for the same window reads the same bounds. The default, a Monday midnight UTC, makes 7d windows "
        "run Monday to Monday.",
    )

    @field_validator("window")
    @classmethod
    def _length(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("anchor")
    @classmethod
    def _boundary(cls, value: str) -> str:
        parse_time(value)
        return value


class FeastSpec(StrictModel):
    """Where Feast keeps its registry and stores."""

    project: str = Field(default="ctpipe", description="Feast project name.")
    root: str = Field(
        default="",
        description="Folder or URI (s3://bucket/feast) of the Feast registry (<root>/registry.db) and offline files "
        "(<root>/offline/); empty means <workspace>/feast. On a cluster every pod must reach it.",
    )
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
    entity_type: Literal["int64", "string"] | None = Field(
        default=None,
        description="Type of the entity id column. Empty: taken from the data (an integer column is 'int64', a "
        "string column 'string') when fetch_features applies the Feast entity; the model server then reads it from "
        "the Feast registry. When set, the data must match it. `ctpipe config --check-data` compares it before a run.",
    )

    @field_validator("root")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        return check_location(value, "root") if value else value
