"""The window monitoring reads from the serving inference log, and the predictions served in it.

With ``monitoring.current_source: inference_log`` the monitor measures what the model server
answered (``components.common.inference_log``), not a re-scoring: the answered requests of the
window, their served scores (a multiclass version's ``proba_<class>`` columns), and the features
the log's ``serving.inference_log`` settings exclude or hash, whose drift cannot be measured.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from components.common.errors import DataError
from components.common.logs import get_logger
from components.common.multiclass import class_probabilities, probability_columns
from components.specs import DatasetSpec

# Why a feature the inference log protects (components.common.inference_log.protect) cannot be measured.
PROTECTED_WHY = {
    "excluded": "excluded from the inference log by serving.inference_log.exclude",
    "hashed": "hashed in the inference log by serving.inference_log.hash (its values are digests)",
}

# The monitor step's logger: these lines are part of what that step reports.
log = get_logger("monitor")


def read_served_window(
    log_dir: str, start: str | None, end: str | None, spec: DatasetSpec, every_column: bool = False
) -> tuple[pd.DataFrame, np.ndarray, dict[str, str]]:
    """The requests answered in the window (failed ones dropped), their served predictions, and what is unmeasurable.

    ``every_column`` reads every column of the log: a multiclass version's ``proba_<class>``
    columns are named by classes only the model, loaded later, knows.

    Only the columns monitoring uses are read (the log is scanned with the window as a filter, so
    memory follows the window's rows and these columns). A feature the server's
    ``serving.inference_log`` settings exclude or hash is not in the log as its raw value, so its
    drift cannot be measured. Protecting personal data is deliberate, so such features are
    returned with the reason (to be skipped and reported) and the others are measured.

    Returns:
        The rows, their served predictions, and ``{feature: why its drift cannot be measured}``.

    Raises:
        DataError: Every monitored feature is excluded or hashed (nothing is left to measure), or
            the window has no answered requests.
    """
    from components.common import inference_log

    columns = [
        *spec.feature_columns,
        spec.entity_column,
        spec.label_column,
        spec.timestamp_column,
        "prediction",
        "status",
        "model_alias",
    ]
    wanted = None if every_column else [c for c in columns if c]
    frame = inference_log.read_window(log_dir, start or None, end or None, columns=wanted)
    protection = frame.attrs.get("protection") or {}
    protected = {
        name: how for how in ("excluded", "hashed") for name in protection.get(how, []) if name in spec.feature_columns
    }
    if protected and set(protected) == set(spec.feature_columns):
        raise DataError(
            f"{log_dir}: every monitored feature is excluded from or hashed in the inference log "
            f"(serving.inference_log.exclude / .hash): {protected}, so no feature drift can be measured from it; "
            "expected at least one feature stored as its raw value. Use monitoring.current_source 'snapshot', "
            "or stop protecting the features that are not personal data"
        )
    unmeasured = {name: PROTECTED_WHY[how] for name, how in protected.items()}
    if unmeasured:
        log.warning(
            "features not measured for drift",
            extra={"inference_log": log_dir, "unmeasured": unmeasured},
        )
    if "status" in frame.columns:
        frame = frame[frame["status"].fillna("ok") == "ok"]
    if "model_alias" in frame.columns:
        # A shadow's answers were never served: monitoring measures the traffic and what it was answered.
        frame = frame[frame["model_alias"].fillna("") != "shadow"]
    frame = frame.drop(columns=["model_alias"], errors="ignore")
    frame = frame[frame["prediction"].notna()].reset_index(drop=True)
    if frame.empty:
        raise DataError(
            f"{log_dir}: the inference log has no answered requests in [{start or 'start'}, {end or 'now'}); "
            "expected at least one row to compare"
        )
    return frame, pd.to_numeric(frame["prediction"], errors="coerce").to_numpy(dtype=float), unmeasured


def served_probabilities(
    model: Any,
    current: pd.DataFrame,
    spec: DatasetSpec,
    log_dir: str | None,
    reasons: list[str],
    unmeasured: dict[str, str],
) -> np.ndarray:
    """A multiclass model's ``[n, k]`` probabilities on the current rows.

    As served (the log's ``proba_<class>`` columns) when every row has them, else the model's own
    on the window's features. ``log_dir`` is the inference log the rows come from (None: a snapshot).

    Raises:
        DataError: The model must score the rows but some of its features are not in the log as
            their values (``unmeasured``).
    """
    names = probability_columns(list(model.classes_))
    if log_dir is not None and all(name in current.columns for name in names):
        served = current[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        if not np.isnan(served).any():
            return served
    if unmeasured:
        # Scoring digests (or nothing) in place of the values would give a prediction drift that means nothing.
        raise DataError(
            f"{log_dir}: the inference log lacks served probability columns {names} for some rows, and the "
            f"model cannot score the logged features instead: {unmeasured}; expected every row to have {names}"
        )
    if log_dir is not None:
        reasons.append(
            f"The inference log lacks served probability columns {names} for some rows (another version's "
            "classes?); prediction drift uses the model's own probabilities on the logged features."
        )
    return class_probabilities(model, current[spec.feature_columns])


def served_labels(model: Any, served: np.ndarray, spec: DatasetSpec, scores: np.ndarray) -> np.ndarray:
    """Labels the served predictions stand for.

    A positive-class probability above 0.5 is ``classes_[1]``; a multiclass row's label is its most
    probable class (in ``scores``, the served probabilities).
    """
    if spec.task == "multiclass_classification":
        return np.asarray(model.classes_)[np.argmax(scores, axis=1)]
    if spec.task != "binary_classification":
        return served
    classes = np.asarray(model.classes_)
    # Ties go to the first class, as with predict_proba's argmax in scikit-learn's predict.
    return np.where(served > 0.5, classes[1], classes[0])
