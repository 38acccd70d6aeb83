"""Train a scikit-learn pipeline on a time-ordered training set and log it to MLflow.

The newest rows (by event timestamp) are held out for evaluation, so the candidate is
scored the way it will be used: on data from after what it learned from. The held-out rows
are written to a file that ``evaluate`` reads to score candidate and champion alike.

Everything another component needs is in the MLflow run: the model (cloudpickle, with a
signature, an input example and pinned requirements), the schema suite at
``tracking.SUITE_ARTIFACT`` and a sample of the training rows at
``tracking.REFERENCE_ARTIFACT`` that monitoring compares new data against. The SHA-256 of the
pickled model is recorded as the logged-model tag ``tracking.MODEL_SHA256_TAG``; every step that
loads the model checks it before unpickling.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from components.common import tracking
from components.common.errors import ConfigError, DataError
from components.common.imports import import_estimator
from components.common.io import frame_sha256, write_parquet
from components.common.logs import get_logger
from components.common.model_input import positive_scores, prepare_features, require_columns
from components.common.multiclass import check_classes, check_covered, present_class_roc_auc
from components.common.registry import FEATURES_TAG, SUITE_HASH_TAG, TRAINING_SET_HASH_TAG
from components.common.storage import read_table
from components.common.suites import load_suite, suite_hash
from components.common.timestamps import parse_string_timestamps
from components.specs import DatasetSpec, ModelSpec, SearchSpec

log = get_logger("train")

#: Most rows of the training set kept as the drift reference in the run.
REFERENCE_MAX_ROWS = 20_000
#: Rows of the input example stored with the model.
INPUT_EXAMPLE_ROWS = 5
#: Estimator modules whose models split on thresholds, so scaling numeric features is pointless.
_TREE_MODULES = ("sklearn.tree", "sklearn.ensemble", "xgboost", "lightgbm", "catboost")


class TrainResult(BaseModel):
    """What ``train`` produced.

    ``model_uri`` is the MLflow 3 logged-model URI ``models:/m-<id>``, the URI evaluate and
    register load the model from (``runs:/`` URIs are not accepted by the loading steps).
    """

    run_id: str
    model_uri: str
    train_rows: int
    eval_rows: int
    metrics: dict[str, float]
    eval_path: str
    feature_columns: list[str]
    params: dict[str, Any] = Field(default_factory=dict, description="Estimator parameters of the final model.")


def _sort_key(frame: pd.DataFrame, spec: DatasetSpec) -> pd.Series:
    timestamps = frame[spec.timestamp_column]
    if pd.api.types.is_datetime64_any_dtype(timestamps) or pd.api.types.is_numeric_dtype(timestamps):
        return timestamps
    parsed, bad = parse_string_timestamps(timestamps)
    if bad.any():
        raise DataError(
            f"timestamp column {spec.timestamp_column!r} has values that are not times, "
            f"e.g. {timestamps[bad].head(3).tolist()}"
        )
    return parsed


def split_by_time(frame: pd.DataFrame, spec: DatasetSpec, eval_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out the newest ``eval_fraction`` of rows by event timestamp.

    Rows are ordered by timestamp, then entity, then their position in ``frame``, so rows
    with the same timestamp always fall on the same side. The evaluation split has
    ``round(len(frame) * eval_fraction)`` rows, at least one, and leaves at least one row
    for training.

    Args:
        frame: The training set.
        spec: Names the timestamp and entity columns.
        eval_fraction: Share of rows to hold out, strictly between 0 and 1.

    Returns:
        ``(train, eval)`` with fresh indexes, each in time order.

    Raises:
        DataError: Columns are missing, timestamps are unreadable or there are fewer than 2 rows.
        ValueError: ``eval_fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}")
    require_columns(frame, spec.key_columns, "training set")
    if len(frame) < 2:
        raise DataError(f"training set has {len(frame)} row(s); need at least 2 to hold out evaluation rows")
    keys = pd.DataFrame(
        {
            "time": _sort_key(frame, spec).to_numpy(),
            "entity": frame[spec.entity_column].to_numpy(),
            "position": np.arange(len(frame)),
        }
    )
    order = keys.sort_values(["time", "entity", "position"], kind="mergesort").index.to_numpy()
    ordered = frame.iloc[order].reset_index(drop=True)
    eval_rows = min(max(round(len(frame) * eval_fraction), 1), len(frame) - 1)
    cut = len(frame) - eval_rows
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def _needs_scaling(estimator_path: str) -> bool:
    return not estimator_path.startswith(_TREE_MODULES)


def build_pipeline(spec: DatasetSpec, model: ModelSpec) -> Pipeline:
    """Preprocessing plus the configured estimator, unfitted.

    Numeric features are median-imputed (and standardised unless the estimator is
    tree-based); categorical features are imputed with the most frequent value and one-hot
    encoded, ignoring categories unseen in training. The estimator is
    ``import_estimator(model.estimator)(**model.params)``: the spec reaches this step as a run
    parameter, so the module prefix is checked again here, before anything is imported, and the
    class must be a scikit-learn estimator. ``random_state`` is set to
    ``model.random_seed`` when the estimator has one and ``params`` does not set it.

    Args:
        spec: Dataset spec with the feature columns.
        model: Estimator, parameters and seed.

    Returns:
        A ``Pipeline`` with steps ``preprocess`` and ``estimator``.

    Raises:
        ConfigError: The estimator is not under an allowed module prefix, is not a scikit-learn
            estimator class, or rejects the parameters.
    """
    # First, before any other work: the estimator path is untrusted input from the run.
    factory = import_estimator(model.estimator, "model.estimator")
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if _needs_scaling(model.estimator):
        numeric_steps.append(("scale", StandardScaler()))
    transformers: list[tuple[str, Any, list[str]]] = []
    if spec.numeric_features:
        transformers.append(("numeric", Pipeline(numeric_steps), list(spec.numeric_features)))
    if spec.categorical_features:
        categorical = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("categorical", categorical, list(spec.categorical_features)))
    preprocess = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)

    try:
        estimator = factory(**model.params)
    except TypeError as exc:
        raise ConfigError(f"estimator {model.estimator} rejects params {model.params}: {exc}") from exc
    if not (hasattr(estimator, "fit") and hasattr(estimator, "get_params")):
        raise ConfigError(f"estimator {model.estimator} is not a scikit-learn estimator (no fit/get_params)")
    if "random_state" in estimator.get_params() and "random_state" not in model.params:
        estimator.set_params(random_state=model.random_seed)
    return Pipeline([("preprocess", preprocess), ("estimator", estimator)])


def _check_label(frame: pd.DataFrame, spec: DatasetSpec, what: str) -> list[Any]:
    """Check the label column for the task; the classes of a classification label, else ``[]``."""
    labels = frame[spec.label_column]
    missing = int(labels.isna().sum())
    if missing:
        raise DataError(f"{what}: label column {spec.label_column!r} has {missing} missing value(s)")
    if spec.is_classification:
        return check_classes(labels, spec.task, spec.label_column, what)
    if not pd.api.types.is_numeric_dtype(labels):
        raise DataError(f"{what}: label column {spec.label_column!r} is {labels.dtype}; regression needs numbers")
    return []


def basic_metrics(model: Any, features: pd.DataFrame, labels: pd.Series, task: str) -> dict[str, float]:
    """Evaluation-agnostic metrics: roc_auc/accuracy/log_loss, their macro variants, or rmse/mae/r2.

    A multiclass classifier gets accuracy, macro and weighted F1, log loss and the one-vs-rest
    macro ROC AUC (over the classes the rows hold). Metrics that are undefined on the given rows
    (ROC AUC on one class) are left out.
    """
    from sklearn import metrics as skm

    y = labels.to_numpy()
    if task == "binary_classification":
        scores = positive_scores(model, features)
        predicted = model.predict(features)
        result = {"accuracy": float(skm.accuracy_score(y, predicted))}
        if len(np.unique(y)) == 2:
            classes = list(model.classes_)
            result["roc_auc"] = float(skm.roc_auc_score(y, scores))
            result["log_loss"] = float(skm.log_loss(y, scores, labels=classes))
        return result
    if task == "multiclass_classification":
        probabilities = np.asarray(model.predict_proba(features), dtype=float)
        predicted = model.predict(features)
        classes = list(model.classes_)
        result = {
            "accuracy": float(skm.accuracy_score(y, predicted)),
            "f1_macro": float(skm.f1_score(y, predicted, average="macro", zero_division=0)),
            "f1_weighted": float(skm.f1_score(y, predicted, average="weighted", zero_division=0)),
        }
        result["log_loss"] = float(skm.log_loss(y, probabilities, labels=classes))
        # Over the classes the held-out rows hold: a missing class's one-vs-rest AUC is undefined.
        auc = present_class_roc_auc(y, probabilities, classes, "macro")
        if not math.isnan(auc):
            result["roc_auc_ovr_macro"] = auc
        return result
    predicted = np.asarray(model.predict(features), dtype=float)
    return {
        "rmse": float(math.sqrt(skm.mean_squared_error(y, predicted))),
        "mae": float(skm.mean_absolute_error(y, predicted)),
        "r2": float(skm.r2_score(y, predicted)),
    }


class SearchResult(BaseModel):
    """Outcome of a hyper-parameter search: the winner and every candidate's cross-validated score."""

    scoring: str
    best_params: dict[str, Any]
    best_score: float
    candidates: list[dict[str, Any]]


def search_params(
    spec: DatasetSpec, model: ModelSpec, search: SearchSpec, features: pd.DataFrame, labels: pd.Series
) -> SearchResult:
    """Cross-validate the candidates of ``search`` on time-ordered folds of the training rows.

    Args:
        spec: Dataset spec (for the preprocessing and the task).
        model: Estimator and base parameters; ``search.space`` overrides them per candidate.
        search: Kind, space, folds and scoring.
        features: Training features, in time order.
        labels: Training labels.

    Returns:
        The best parameters (merged over ``model.params``), their mean score and every candidate.

    Raises:
        ConfigError: A searched parameter or the scorer is unknown to the estimator or scikit-learn.
    """
    from sklearn.model_selection import GridSearchCV, ParameterGrid, RandomizedSearchCV, TimeSeriesSplit

    default_scoring = {"binary_classification": "roc_auc", "multiclass_classification": "f1_macro"}
    scoring = search.scoring or default_scoring.get(spec.task, "neg_root_mean_squared_error")
    grid = {f"estimator__{key}": values for key, values in search.space.items()}
    unknown = sorted(set(search.space) - set(build_pipeline(spec, model).named_steps["estimator"].get_params()))
    if unknown:
        raise ConfigError(f"model.search.space names parameter(s) {unknown} that {model.estimator} does not have")
    folds = TimeSeriesSplit(n_splits=search.folds)
    common: dict[str, Any] = {"scoring": scoring, "cv": folds, "refit": False, "n_jobs": 1, "error_score": "raise"}
    if search.kind == "grid":
        searcher: Any = GridSearchCV(build_pipeline(spec, model), grid, **common)
    else:
        n_iter = min(search.n_iter, len(ParameterGrid(grid)))
        searcher = RandomizedSearchCV(
            build_pipeline(spec, model), grid, n_iter=n_iter, random_state=model.random_seed, **common
        )
    try:
        searcher.fit(features, labels)
    except ValueError as exc:
        raise ConfigError(f"model.search failed (scoring {scoring!r}): {exc}") from exc
    results = searcher.cv_results_
    candidates = [
        {
            "params": {key.removeprefix("estimator__"): value for key, value in params.items()},
            "mean_score": float(results["mean_test_score"][index]),
            "std_score": float(results["std_test_score"][index]),
            "rank": int(results["rank_test_score"][index]),
        }
        for index, params in enumerate(results["params"])
    ]
    best = {key.removeprefix("estimator__"): value for key, value in searcher.best_params_.items()}
    return SearchResult(
        scoring=scoring,
        best_params={**model.params, **best},
        best_score=float(searcher.best_score_),
        candidates=candidates,
    )


def _log_search(result: SearchResult, search: SearchSpec) -> None:
    """One nested MLflow run per candidate, under the active training run."""
    import mlflow

    for index, candidate in enumerate(result.candidates):
        with mlflow.start_run(run_name=f"search-{index}", nested=True, tags={"ctpipe.search": search.kind}):
            mlflow.log_params({f"param.{k}": v for k, v in candidate["params"].items()})
            mlflow.log_metrics(
                {
                    f"cv_{result.scoring}": candidate["mean_score"],
                    f"cv_{result.scoring}_std": candidate["std_score"],
                    "rank": candidate["rank"],
                }
            )


def _reference_sample(frame: pd.DataFrame, spec: DatasetSpec, seed: int) -> pd.DataFrame:
    columns = [spec.entity_column, spec.timestamp_column, *spec.feature_columns, spec.label_column]
    sample = frame[columns]
    if len(sample) > REFERENCE_MAX_ROWS:
        sample = sample.sample(n=REFERENCE_MAX_ROWS, random_state=seed).sort_index()
    return sample.reset_index(drop=True)


def _params(spec: DatasetSpec, model: ModelSpec, train_rows: int, eval_rows: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "estimator": model.estimator,
        "random_seed": model.random_seed,
        "eval_fraction": model.eval_fraction,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "task": spec.task,
        "label": spec.label_column,
        "estimator_params": json.dumps(model.params, sort_keys=True, default=str),
    }
    for key, value in model.params.items():
        params[f"param.{key}"] = value if isinstance(value, str | int | float | bool) else json.dumps(value)
    return params


def train(
    training_set_path: str,
    spec: DatasetSpec,
    model: ModelSpec,
    tracking_uri: str,
    experiment: str,
    eval_output_path: str,
    suite_path: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Fit the pipeline on the older rows, score it on the newest, and log everything to MLflow.

    Args:
        training_set_path: Parquet or CSV training set (a suffix-less file is read as Parquet).
        spec: Dataset spec: features, label, timestamp and entity columns, task.
        model: Estimator, parameters, seed and evaluation fraction.
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:///mlflow.db``.
        experiment: MLflow experiment name, created if missing.
        eval_output_path: Where the held-out rows (all columns) are written as Parquet.
        suite_path: Great Expectations suite JSON to keep with the model, if any.
        tags: Extra run tags, e.g. lineage (pipeline run, data snapshot hash).

    Returns:
        Run id, model URI, row counts, held-out metrics and the feature columns.

    Raises:
        DataError: Columns are missing, labels are missing, the label's classes do not fit the task
            (``multiclass.check_classes``), a multiclass class appears only in the evaluation rows, or
            the suite file is missing.
        ConfigError: The estimator rejects its parameters.
    """
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    tracking.quiet_mlflow()
    started = time.perf_counter()
    frame = read_table(training_set_path)
    what = f"training set {training_set_path}"
    require_columns(frame, [*spec.key_columns, *spec.feature_columns, spec.label_column], what)
    if suite_path is not None and not Path(suite_path).is_file():
        raise DataError(f"suite file {suite_path} does not exist or is not a file")
    _check_label(frame, spec, what)

    train_frame, eval_frame = split_by_time(frame, spec, model.eval_fraction)
    train_what = f"{what} (training split, older {len(train_frame)} rows)"
    train_classes = _check_label(train_frame, spec, train_what)
    if spec.task == "multiclass_classification":
        check_covered(train_classes, eval_frame[spec.label_column], spec.label_column, what)
    write_parquet(eval_output_path, eval_frame)

    x_train = prepare_features(train_frame, spec)
    y_train = train_frame[spec.label_column]
    x_eval = prepare_features(eval_frame, spec)
    searched: SearchResult | None = None
    if model.search is not None:
        searched = search_params(spec, model, model.search, x_train, y_train)
        model = model.model_copy(update={"params": searched.best_params})
    pipeline = build_pipeline(spec, model)
    pipeline.fit(x_train, y_train)
    metrics = basic_metrics(pipeline, x_eval, eval_frame[spec.label_column], spec.task)
    fitted = time.perf_counter()

    is_classifier = spec.is_classification
    output = pipeline.predict_proba(x_train.head(100)) if is_classifier else pipeline.predict(x_train.head(100))
    signature = infer_signature(x_train.head(100), output)

    run_tags = {FEATURES_TAG: json.dumps(spec.feature_columns), TRAINING_SET_HASH_TAG: frame_sha256(frame)}
    if suite_path is not None:
        run_tags[SUITE_HASH_TAG] = suite_hash(load_suite(suite_path))
    run_tags.update(tags or {})

    experiment_id = tracking.ensure_experiment(experiment, tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, tags=run_tags) as run:
        mlflow.log_params(_params(spec, model, len(train_frame), len(eval_frame)))
        if searched is not None and model.search is not None:
            mlflow.log_params(
                {
                    "search.kind": model.search.kind,
                    "search.scoring": searched.scoring,
                    "search.folds": model.search.folds,
                }
            )
            mlflow.log_metric(f"search_best_cv_{searched.scoring}", searched.best_score)
            _log_search(searched, model.search)
        mlflow.log_metrics(metrics)
        logging_started = time.perf_counter()
        # Every step checks the hash it records before it unpickles the model (docs/security.md).
        info = tracking.log_sklearn_model(
            pipeline,
            tracking_uri,
            signature=signature,
            input_example=x_train.head(INPUT_EXAMPLE_ROWS),
            predict_fn="predict_proba" if is_classifier else "predict",
        )
        log_model_seconds = time.perf_counter() - logging_started
        staging = Path(tempfile.mkdtemp(prefix="ctpipe-train-"))
        try:
            if suite_path is not None:
                _log_file(Path(suite_path), tracking.SUITE_ARTIFACT, staging)
            reference = staging / "reference.parquet"
            _reference_sample(train_frame, spec, model.random_seed).to_parquet(reference, index=False)
            mlflow.log_artifact(str(reference), artifact_path=str(Path(tracking.REFERENCE_ARTIFACT).parent))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        mlflow.log_metric("log_model_seconds", log_model_seconds)

    log.info(
        "trained",
        extra={
            "run_id": run.info.run_id,
            "model_uri": info.model_uri,
            "train_rows": len(train_frame),
            "eval_rows": len(eval_frame),
            "metrics": metrics,
            "fit_seconds": round(fitted - started, 3),
            "log_model_seconds": round(log_model_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        },
    )
    return TrainResult(
        run_id=run.info.run_id,
        model_uri=info.model_uri,
        train_rows=len(train_frame),
        eval_rows=len(eval_frame),
        metrics=metrics,
        eval_path=str(eval_output_path),
        feature_columns=spec.feature_columns,
        params=model.params,
    )


def _log_file(source: Path, artifact: str, staging: Path) -> None:
    """Log ``source`` so that it lands at run artifact path ``artifact`` whatever its own name."""
    import mlflow

    target = staging / Path(artifact).name
    shutil.copyfile(source, target)
    parent = str(Path(artifact).parent)
    mlflow.log_artifact(str(target), artifact_path=None if parent == "." else parent)


__all__ = [
    "SearchResult",
    "TrainResult",
    "basic_metrics",
    "build_pipeline",
    "search_params",
    "split_by_time",
    "train",
]
