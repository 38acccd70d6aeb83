"""The honest baseline of live performance: the champion's evaluation holdout, recorded on its version.

The monitor compares live metrics with a reference value. Scoring the model on the rows it was
trained on gives an optimistic reference (on a 569-row dataset a training-rows ROC AUC of 1.0,
against 0.80 on the holdout), so every live window looks like a drop and retraining is asked for
on a model that performs just as evaluated. The reference is therefore what ``evaluate`` measured
on the version's held-out rows:

- the training pipeline hands evaluate's result to ``register``, which writes the version tag
  ``ctpipe.holdout_metrics``: ``{"metrics": {name: value}, "rows": n}`` (JSON, sorted keys,
  finite values only), the candidate's metrics on the held-out rows of its own training run;
- the monitor pins the model URI it was given to one registered version and reads that tag
  (:func:`read_baseline`). The registry is what both profiles share (a sqlite MLflow under
  kfp.local, an MLflow server on a cluster), and the record follows the version through
  promotion and rollback: the monitoring pipeline needs no new input.

The same record carries the reference of **prediction drift** (binary classification and
regression): the candidate's scores on the held-out rows at 101 quantiles. Scores of the rows a
model was trained on are more confident than its scores of unseen rows (a forest's training-row
probabilities sit near 0 and 1), so comparing live scores with them shows drift where there is
none; the holdout's scores are what the model gives rows it has not seen.

A version registered before ctpipe recorded it has no tag: the result says so, and live metrics
are then compared only with their absolute thresholds (``evaluation.metrics[].threshold``), never
with a baseline, so a missing record cannot raise a false retraining alarm; the record comes with
the next version the training pipeline registers. Without recorded scores, prediction drift
compares with the model's scores on the reference rows, and the result says so.

Light on purpose (no pandas, no MLflow at import): ``register`` imports it and must start fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from components.common.registry import HOLDOUT_METRICS_TAG

# Quantiles of the holdout scores recorded: 0%, 1%, ..., 100% (about 1 KB of tag).
SCORE_QUANTILES = 101
_SCORES_FIELD = Field(
    default=None,
    description="The candidate's scores on the held-out rows (binary: positive-class probability; regression: "
    f"the prediction) at {SCORE_QUANTILES} evenly spaced quantiles, 0% to 100%; prediction drift's reference. "
    "None for multiclass models and versions evaluated before ctpipe recorded them.",
)


class HoldoutMetrics(BaseModel):
    """What evaluation measured on a candidate's held-out rows; recorded on its registered version."""

    metrics: dict[str, float] = Field(description="Metric short name -> value on the holdout.")
    rows: int = Field(ge=0, description="Held-out rows the metrics were computed on.")
    score_quantiles: list[float] | None = _SCORES_FIELD

    def to_tag(self) -> str:
        """The tag value: compact JSON with sorted keys, so registering again writes the same string."""
        finite = {name: float(value) for name, value in self.metrics.items() if math.isfinite(value)}
        record: dict[str, Any] = {"metrics": finite, "rows": self.rows}
        if self.score_quantiles:
            record["score_quantiles"] = self.score_quantiles
        return json.dumps(record, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_evaluation(cls, path: str) -> HoldoutMetrics:
        """The candidate's holdout metrics from ``evaluate``'s result file (its ``blessing`` JSON).

        Raises:
            DataError: The file is not an evaluation result (no ``candidate`` metrics and ``rows``).
        """
        from components.common.errors import DataError

        try:
            payload = json.loads(Path(path).read_text())
            candidate = payload["candidate"]
            return cls(
                metrics={k: float(v) for k, v in candidate.items() if v is not None},
                rows=payload["rows"],
                score_quantiles=payload.get("score_quantiles"),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{path}: not an evaluation result; expected JSON with 'candidate' (metric -> value) and 'rows', "
                f"as evaluate writes it: {type(exc).__name__}: {exc}"
            ) from exc


class Baseline(BaseModel):
    """The reference values live metrics are compared with, and where they came from."""

    source: Literal["holdout", "none"] = Field(
        description="'holdout': the version's evaluation holdout; 'none': no record, no baseline-relative verdict."
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    rows: int | None = Field(default=None, description="Held-out rows behind the metrics.")
    model: str | None = Field(default=None, description="The registered version, models:/NAME/VERSION.")
    note: str = Field(description="Where the reference values came from, in one sentence for reports.")
    score_quantiles: list[float] | None = _SCORES_FIELD


def score_quantiles(scores: Any) -> list[float] | None:
    """The finite ``scores`` at :data:`SCORE_QUANTILES` evenly spaced quantiles, to 6 significant digits.

    Each quantile is a score some row had (``inverted_cdf``), so a model whose scores pile up on
    one value (a forest's 0.0) keeps that pile's share. None when no score is finite.
    """
    import numpy as np

    values = np.asarray(scores, dtype=float).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    points = np.quantile(values, np.linspace(0.0, 1.0, SCORE_QUANTILES), method="inverted_cdf")
    return [float(f"{value:.6g}") for value in points]


def read_baseline(model_uri: str, client: Any) -> Baseline:
    """The holdout metrics recorded on the registered version ``model_uri`` names.

    Args:
        model_uri: ``models:/NAME/VERSION`` (pin an alias first, so the model scored and the record
            read are the same version's); a ``models:/m-<id>`` logged model has no version, so no record.
        client: An MLflow client of the registry.

    Returns:
        ``source='holdout'`` with the metrics, or ``source='none'`` saying why there are none.
    """
    from components.common import tracking
    from components.common.registry import get_version

    ref = tracking.parse_model_uri(model_uri)
    if ref.name is None or ref.version is None:
        return Baseline(
            source="none",
            model=model_uri,
            note=f"{model_uri} is not a registered version, so it has no recorded holdout metrics "
            f"({HOLDOUT_METRICS_TAG}); live metrics are checked against their thresholds only",
        )
    version = get_version(client, ref.name, ref.version)
    raw = dict(version.tags or {}).get(HOLDOUT_METRICS_TAG)
    missing = (
        f"{model_uri} has no recorded holdout metrics (version tag {HOLDOUT_METRICS_TAG}; it was registered before "
        "ctpipe recorded them, or outside the training pipeline): live metrics are checked against their thresholds "
        "only, not against a baseline. The next version the training pipeline registers gets the record"
    )
    if not raw:
        return Baseline(source="none", model=model_uri, note=missing)
    try:
        record = HoldoutMetrics.model_validate_json(raw)
    except ValueError:
        return Baseline(source="none", model=model_uri, note=f"{missing} (the tag holds {raw[:80]!r}, not the record)")
    return Baseline(
        source="holdout",
        metrics=record.metrics,
        rows=record.rows,
        score_quantiles=record.score_quantiles,
        model=model_uri,
        note=f"holdout metrics of {model_uri} as evaluation measured them on {record.rows} held-out rows "
        f"(version tag {HOLDOUT_METRICS_TAG})",
    )
