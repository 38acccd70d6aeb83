"""Labels that arrive later (``monitoring.labels_source``): the join on entity and time, on real files.

Each current row at time ``t`` takes the label of its entity whose timestamp is the first at or
after ``t`` within ``max_delay``; late, missing and duplicate labels are handled as
components/common/labels.py documents.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from components.common import tracking
from components.common.errors import DataError
from components.common.holdout import HoldoutMetrics
from components.common.labels import join_late_labels
from components.common.registry import HOLDOUT_METRICS_TAG
from components.monitor import MonitorResult, monitor
from components.specs import DatasetSpec, LabelsSourceSpec, MetricSpec, MonitoringSpec
from tests.data import ENTITY, LABEL, TIMESTAMP, churn_spec, write_churn

T = pd.Timestamp("2026-03-02T12:00:00Z")
HOUR, DAY = pd.Timedelta(hours=1), pd.Timedelta(days=1)


def _spec() -> DatasetSpec:
    return churn_spec("unused.parquet")


def _current() -> pd.DataFrame:
    """Nine predictions: entities 1-7 at T, and entity 7 again a day later."""
    entities = [1, 2, 3, 4, 5, 6, 7, 7]
    times = [T] * 7 + [T + DAY]
    return pd.DataFrame({ENTITY: entities, TIMESTAMP: times, "x": range(len(entities))})


def _labels() -> pd.DataFrame:
    rows = [
        (1, T + HOUR, 1),  # on time
        (1, T + HOUR, 1),  # the same label twice: counts once
        (2, T + 10 * DAY, 1),  # later than max_delay (7d): late, not used
        # 3: no label at all: missing
        (4, T - DAY, 1),  # before the prediction: describes an earlier outcome, not used
        (5, T + 3 * DAY, 1),  # the second label of 5 ...
        (5, T + 2 * HOUR, 0),  # ... comes first in time, so it is the one
        (6, T, 0),  # at the very time of the prediction
        (7, T + 2 * DAY, 1),  # both predictions of 7 (T and T+1d) precede it: both take it
        (8, T, 1),  # an entity with no prediction
    ]
    return pd.DataFrame(rows, columns=[ENTITY, "labelled_at", LABEL])


def _source(path: Path, **settings: object) -> LabelsSourceSpec:
    return LabelsSourceSpec(path=str(path), timestamp_column="labelled_at", **settings)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_each_prediction_takes_the_first_label_at_or_after_it_within_max_delay(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"labels{suffix}"
    labels = _labels()
    if suffix == ".csv":
        # A CSV holds text: naive ISO times (UTC) must join with the aware times of the monitored rows.
        labels.assign(labelled_at=labels["labelled_at"].dt.tz_localize(None).astype(str)).to_csv(path, index=False)
    else:
        labels.to_parquet(path)
    current = _current().assign(**{LABEL: 0})  # the window's own labels are replaced, never mixed in

    joined, stats = join_late_labels(current, current[TIMESTAMP], _source(path), _spec(), "current.parquet")

    expected = [1, np.nan, np.nan, np.nan, 0, 0, 1, 1]
    assert joined[LABEL].tolist() == pytest.approx(expected, nan_ok=True)
    assert list(joined["x"]) == list(range(8))  # the rows keep their order
    assert (stats.rows, stats.labelled, stats.late, stats.missing) == (8, 5, 1, 2)
    assert stats.duplicates_collapsed == 1 and stats.conflicts_resolved == 0
    assert "5 of 8 current rows labelled (1 only by labels later than max_delay, not used; 2 with no label)" in (
        stats.sentence()
    )


def test_max_delay_bounds_the_wait_and_zero_is_an_exact_time_join(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    _labels().to_parquet(path)
    current = _current()

    exact, stats = join_late_labels(current, current[TIMESTAMP], _source(path, max_delay="0"), _spec())
    assert exact[LABEL].tolist() == pytest.approx([np.nan] * 5 + [0, np.nan, np.nan], nan_ok=True)
    assert (stats.labelled, stats.late, stats.missing) == (1, 5, 2)

    longer, stats = join_late_labels(current, current[TIMESTAMP], _source(path, max_delay="2w"), _spec())
    assert longer[LABEL].tolist() == pytest.approx([1, 1, np.nan, np.nan, 0, 0, 1, 1], nan_ok=True)
    assert (stats.labelled, stats.late, stats.missing) == (6, 0, 2)


def test_disagreeing_duplicates_are_an_error_naming_the_file_and_keys_or_the_last_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    labels = pd.concat([_labels(), pd.DataFrame({ENTITY: [6], "labelled_at": [T], LABEL: [1]})], ignore_index=True)
    labels.to_csv(path, index=False)
    current = _current()

    with pytest.raises(DataError) as error:
        join_late_labels(current, current[TIMESTAMP], _source(path), _spec())
    message = str(error.value)
    assert str(path) in message and "1 (entity, timestamp) key(s) have disagreeing labels" in message
    assert f"{ENTITY}=6 labelled_at=2026-03-02T12:00:00+00:00: labels ['0', '1']" in message
    assert "duplicates: last" in message

    joined, stats = join_late_labels(current, current[TIMESTAMP], _source(path, duplicates="last"), _spec())
    assert joined[LABEL].iloc[5] == 1  # the later row of the table
    assert stats.conflicts_resolved == 1 and stats.labelled == 5


def test_bad_label_tables_are_named(tmp_path: Path) -> None:
    current = _current()
    path = tmp_path / "labels.csv"
    _labels().drop(columns=[LABEL]).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"labels\.csv: labels source lacks column\(s\) \['churned'\]"):
        join_late_labels(current, current[TIMESTAMP], _source(path), _spec())

    _labels().assign(labelled_at="next tuesday").to_csv(path, index=False)
    with pytest.raises(DataError, match=r"labels\.csv: column 'labelled_at' holds values that are not timestamps"):
        join_late_labels(current, current[TIMESTAMP], _source(path), _spec())

    _labels().assign(**{ENTITY: lambda f: "C-" + f[ENTITY].astype(str)}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"entity column 'customer_id' is object, the current rows' is int64"):
        join_late_labels(current, current[TIMESTAMP], _source(path), _spec())

    _labels().to_csv(path, index=False)
    with pytest.raises(DataError, match=r"window\.parquet: no entity column 'customer_id'"):
        join_late_labels(current.drop(columns=[ENTITY]), current[TIMESTAMP], _source(path), _spec(), "window.parquet")


def test_the_config_names_the_field_and_what_was_expected() -> None:
    assert MonitoringSpec(labels_source="s3://bucket/labels.parquet").labels_source == LabelsSourceSpec(
        path="s3://bucket/labels.parquet"
    )
    with pytest.raises(ValidationError) as error:
        MonitoringSpec(labels_source={"path": "labels.csv", "max_delay": "3 days"})
    assert "labels_source.max_delay" in str(error.value)
    assert "expected a delay such as 7d, 36h or 90m" in str(error.value) and "found '3 days'" in str(error.value)
    with pytest.raises(ValidationError, match=r"labels_source\.duplicates"):
        MonitoringSpec(labels_source={"path": "labels.csv", "duplicates": "first"})


# --- in the monitor -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A small registered model with its holdout record, and a stationary reference window."""
    import mlflow
    from mlflow import MlflowClient
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from components.evaluate import compute_metrics
    from tests.data import CATEGORICAL_FEATURES, NUMERIC_FEATURES

    folder = tmp_path_factory.mktemp("labels")
    write_churn(folder / "history.parquet", windows=2, rows=1000, seed=41)
    history = pd.read_parquet(folder / "history.parquet")
    first = history[TIMESTAMP] < history[TIMESTAMP].min() + pd.Timedelta(days=7)
    train, holdout = history[first], history[~first]
    encoder = make_column_transformer(
        (OneHotEncoder(handle_unknown="ignore"), CATEGORICAL_FEATURES), (StandardScaler(), NUMERIC_FEATURES)
    )
    model = make_pipeline(encoder, LogisticRegression(max_iter=500)).fit(
        train[NUMERIC_FEATURES + CATEGORICAL_FEATURES], train[LABEL]
    )
    train.to_parquet(folder / "reference.parquet")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracking.ensure_experiment("labels-tests", uri)
    with mlflow.start_run() as run:
        info = tracking.log_sklearn_model(model, uri)
    record = HoldoutMetrics(metrics=compute_metrics(model, holdout, _spec(), METRICS), rows=len(holdout))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("churn")
    client.create_model_version(
        "churn", info.model_uri, run.info.run_id, model_id=info.model_id, tags={HOLDOUT_METRICS_TAG: record.to_tag()}
    )
    return {"uri": uri, "model_uri": "models:/churn/1", "reference": str(folder / "reference.parquet")}


METRICS = [MetricSpec(name="roc_auc_score"), MetricSpec(name="accuracy_score")]


def _monitor(
    tmp_path: Path, current: pd.DataFrame, monitoring: MonitoringSpec, champion: dict[str, str]
) -> MonitorResult:
    current.to_parquet(tmp_path / "current.parquet")
    return monitor(
        champion["reference"],
        str(tmp_path / "current.parquet"),
        _spec(),
        monitoring,
        str(tmp_path / "result.json"),
        str(tmp_path / "report.html"),
        model_uri=champion["model_uri"],
        tracking_uri=champion["uri"],
        metrics=METRICS,
    )


def test_the_monitor_measures_live_performance_on_the_labels_that_arrived_in_time(
    tmp_path: Path, champion: dict[str, str]
) -> None:
    from sklearn.metrics import roc_auc_score

    write_churn(tmp_path / "window.parquet", windows=1, rows=1200, seed=42)
    window = pd.read_parquet(tmp_path / "window.parquet")
    rng = np.random.default_rng(0)
    # The outcome becomes known 1-6 days after the prediction; a fifth of them after 9 days (late), a tenth never.
    delay = pd.to_timedelta(rng.uniform(1, 6, len(window)), unit="D")
    late = rng.random(len(window)) < 0.2
    delay = delay.where(~late, pd.Timedelta(days=9))
    arrived = rng.random(len(window)) >= 0.1
    labels = pd.DataFrame({ENTITY: window[ENTITY], "labelled_at": window[TIMESTAMP] + delay, LABEL: window[LABEL]})
    labels[arrived].to_csv(tmp_path / "labels.csv", index=False)
    source = _source(tmp_path / "labels.csv")

    result = _monitor(tmp_path, window.drop(columns=[LABEL]), MonitoringSpec(labels_source=source), champion)

    used = arrived & ~late
    assert result.labels is not None
    assert (result.labels.labelled, result.labels.late, result.labels.missing) == (
        int(used.sum()),
        int((arrived & late).sum()),
        int((~arrived).sum()),
    )
    assert any(
        r.startswith(f"Labels from {tmp_path / 'labels.csv'}: {int(used.sum())} of 1200") for r in result.reasons
    )
    model = tracking.load_registered_model(champion["model_uri"], champion["uri"])
    scores = model.predict_proba(window[_spec().feature_columns])[:, 1]
    assert result.performance is not None
    assert result.performance["roc_auc_score"] == pytest.approx(roc_auc_score(window[LABEL][used], scores[used]))
    assert result.baseline is not None and result.baseline.source == "holdout"

    # Fewer labels in time than min_rows: the metrics are reported, with no verdict.
    few = MonitoringSpec(labels_source=_source(tmp_path / "labels.csv", max_delay="26h"), min_rows=100)
    result = _monitor(tmp_path, window.drop(columns=[LABEL]), few, champion)
    assert result.labels is not None and 0 < result.labels.labelled < 100
    assert any("labelled current rows (< min_rows 100)" in r and "no performance verdict" in r for r in result.reasons)
    assert not any(r.startswith("Live ") for r in result.reasons)


def test_with_the_inference_log_the_time_of_a_prediction_is_when_it_was_served(
    tmp_path: Path, champion: dict[str, str]
) -> None:
    from components.common.inference_log import append_batch

    write_churn(tmp_path / "window.parquet", windows=1, rows=300, seed=43)
    window = pd.read_parquet(tmp_path / "window.parquet")
    model = tracking.load_registered_model(champion["model_uri"], champion["uri"])
    served_at = pd.Timestamp("2026-04-01T00:00:00Z") + pd.to_timedelta(np.arange(len(window)), unit="min")
    requests = window.drop(columns=[LABEL, TIMESTAMP]).assign(
        request_id=[f"r{i}" for i in range(len(window))],
        timestamp=served_at,
        model_name="churn",
        model_version="1",
        prediction=model.predict_proba(window[_spec().feature_columns])[:, 1],
        status="ok",
        latency_ms=1.0,
    )
    append_batch(tmp_path / "inference_log", requests)
    # Labels a day after each request; the event timestamps of the rows are weeks earlier and play no part.
    pd.DataFrame({ENTITY: window[ENTITY], "labelled_at": served_at + DAY, LABEL: window[LABEL]}).to_parquet(
        tmp_path / "labels.parquet"
    )
    monitoring = MonitoringSpec(current_source="inference_log", labels_source=_source(tmp_path / "labels.parquet"))
    result = monitor(
        champion["reference"],
        str(tmp_path / "inference_log"),
        _spec(),
        monitoring,
        str(tmp_path / "result.json"),
        str(tmp_path / "report.html"),
        model_uri=champion["model_uri"],
        tracking_uri=champion["uri"],
        metrics=METRICS,
    )
    assert result.labels is not None and (result.labels.labelled, result.labels.rows) == (300, 300)
    assert result.performance is not None and set(result.performance) >= {"roc_auc_score", "reference_roc_auc_score"}

    # Requests that sent feature values name no entity: no label can match them; drift is still measured.
    append_batch(tmp_path / "anonymous_log", requests.drop(columns=[ENTITY]))
    anonymous = monitor(
        champion["reference"],
        str(tmp_path / "anonymous_log"),
        _spec(),
        monitoring,
        str(tmp_path / "result.json"),
        str(tmp_path / "report.html"),
        model_uri=champion["model_uri"],
        tracking_uri=champion["uri"],
        metrics=METRICS,
    )
    assert anonymous.labels is not None and (anonymous.labels.labelled, anonymous.labels.missing) == (0, 300)
    assert anonymous.performance is None and anonymous.rows_current == 300
