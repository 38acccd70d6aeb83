"""How much a feature's drift matters to the model: the drift score, and each feature's severity.

A feature's **drift score** is ``importance x PSI``: its normalised permutation importance (the
model's loss of skill when the feature is shuffled, clipped at 0, shares summing to 1 over the
features) times its population stability index. It reads as "the part of the model's inputs that
moved": a feature the model does not use scores near 0 however far it drifts, and an important
feature scores high on a moderate shift. Without importances (no model, or a reference without
labels) there is no score, and PSI alone decides.

A feature's severity, from the settings of ``monitoring`` (:class:`components.specs.MonitoringSpec`):

- ``ok`` when its PSI is below ``psi_warn`` or the shift is not significant (p-value at or above
  ``ks_pvalue``; guards small windows against noise);
- otherwise ``retrain`` when its PSI reaches ``psi_retrain`` and its importance is unknown or at
  least ``importance_floor`` (default 0.05), or when ``drift_score_retrain`` is set and its score
  reaches it;
- otherwise ``warn``: strong drift in a feature below the floor, whose score stays under
  ``drift_score_retrain``, asks for attention, not retraining.

The default floor, 0.05, was measured on the demo data: the label-free control feature
(marketing_score) gets 0.00-0.04 of the total from permutation noise and over-fitting when
importance is computed on training rows, while the features that drive the label get 0.07-0.30.
Weakly used features that drift are still caught by prediction PSI. ``importance_floor: 0`` lets
every feature's PSI count (the behaviour without a model); ``drift_score_retrain`` (e.g. 0.03: an
importance of 0.3 with PSI 0.1) also retrains on moderate drift of the features the model leans on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from components.specs import MonitoringSpec

Severity = Literal["ok", "warn", "retrain"]


class FeatureDrift(BaseModel):
    """Drift of one feature between reference and current data."""

    feature: str
    kind: Literal["numeric", "categorical"]
    psi: float
    statistic: float
    p_value: float
    importance: float | None
    score: float | None = Field(default=None, description="Drift score, importance x PSI; None without importance.")
    severity: Severity


def drift_score(psi: float, importance: float | None) -> float | None:
    """``importance x PSI``, or None when the importance is unknown."""
    return None if importance is None else importance * psi


def feature_severity(psi: float, p_value: float, importance: float | None, monitoring: MonitoringSpec) -> Severity:
    """The severity of one feature's drift under the rules of the module docstring."""
    if psi < monitoring.psi_warn or p_value >= monitoring.ks_pvalue:
        return "ok"
    if psi >= monitoring.psi_retrain and (importance is None or importance >= monitoring.importance_floor):
        return "retrain"
    score = drift_score(psi, importance)
    if monitoring.drift_score_retrain is not None and score is not None and score >= monitoring.drift_score_retrain:
        return "retrain"
    return "warn"


def feature_reason(drift: FeatureDrift, monitoring: MonitoringSpec) -> str:
    """Why the feature got its severity, with the figures that decided it."""
    test = "KS" if drift.kind == "numeric" else "chi-square"
    measured = f"PSI {drift.psi:.3f}, {test} p={drift.p_value:.2g}"
    weighted = "" if drift.importance is None else f", importance {drift.importance:.3f}, score {drift.score:.4f}"
    name = drift.feature
    if drift.severity == "ok":
        return (
            f"Feature '{name}' has PSI {drift.psi:.3f} but the shift is not significant "
            f"({test} p={drift.p_value:.2g} >= {monitoring.ks_pvalue}) -> ok."
        )
    strong = drift.psi >= monitoring.psi_retrain
    used = drift.importance is None or drift.importance >= monitoring.importance_floor
    if drift.severity == "retrain" and strong and used:
        return f"Feature '{name}' drifted strongly ({measured}{weighted}): PSI >= {monitoring.psi_retrain} -> retrain."
    if drift.severity == "retrain":
        return (
            f"Feature '{name}' drifted ({measured}{weighted}): drift score >= drift_score_retrain "
            f"{monitoring.drift_score_retrain} -> retrain."
        )
    if strong:
        below = "" if monitoring.drift_score_retrain is None else f", score < {monitoring.drift_score_retrain}"
        return (
            f"Feature '{name}' drifted strongly ({measured}{weighted}) but the model barely uses it "
            f"(importance {drift.importance:.3f} < importance_floor {monitoring.importance_floor}{below}) -> warn only."
        )
    return f"Feature '{name}' drifted ({measured}{weighted}): PSI >= {monitoring.psi_warn} -> warn."
