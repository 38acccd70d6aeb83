"""KServe traffic from the registry: one function renders and writes the InferenceService the aliases ask for.

On a cluster a rollout is a change of registry aliases plus a change of the InferenceService.
The pods follow aliases (``--alias``), so the InferenceService only has to say how traffic is
split between the ``champion`` and the ``challenger`` targets, and that is a function of the
aliases alone:

- a challenger that is not the champion: a canary with ``serving.canary_percent`` of traffic
  (``canaryTrafficPercent`` in Serverless mode, ``spec.canary`` in Standard mode);
- otherwise one target, following ``champion`` (or ``challenger`` before there is a champion).

Deploy, promote, rollback and closing a canary all move aliases first and then call
:func:`sync_inference_service`, which renders that state and writes it with a read-modify-write
(:meth:`components.common.kserve.cluster.KServeSeam.apply`). Promotion therefore moves traffic,
and a rollback restores the previous champion's traffic in one write.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from components.common import environments, tracking
from components.common.errors import DeployError
from components.common.feast import EntityLookup
from components.common.kserve.cluster import KServeSeam
from components.common.kserve.manifests import render_inference_service
from components.common.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS, require_registered_model
from components.serving_spec import ServingSpec


class ClusterTarget(BaseModel):
    """Where and how the InferenceService of a registered model is written."""

    image: str
    """The serving image the predictor runs."""
    entity_lookup: EntityLookup | None = None
    """Feast settings, so the pods answer requests by entity id."""
    force: bool = False
    """Overwrite fields ctpipe owns that someone else changed since ctpipe wrote them."""
    dry_run: bool = False
    """Record and log the write instead of sending it."""


class TrafficState(BaseModel):
    """The traffic the registry's aliases ask for."""

    champion_version: str | None
    challenger_version: str | None
    canary_percent: int
    """Share of the challenger: 0 without a canary, 100 when it serves alone (no champion yet)."""


def traffic_state(serving: ServingSpec, aliases: dict[str, str]) -> TrafficState:
    """The split the aliases ask for (see the module docstring)."""
    # The aliases of serving.environment (prod's, champion and challenger, when it names none).
    env = serving.environment or environments.PROD
    champion, challenger = aliases.get(environments.serving_alias(env)), aliases.get(environments.challenger_alias(env))
    if challenger is None or challenger == champion:
        return TrafficState(champion_version=champion, challenger_version=None, canary_percent=0)
    if champion is None:
        return TrafficState(champion_version=None, challenger_version=challenger, canary_percent=100)
    return TrafficState(champion_version=champion, challenger_version=challenger, canary_percent=serving.canary_percent)


def render_for_state(
    serving: ServingSpec, state: TrafficState, tracking_uri: str, target: ClusterTarget
) -> dict[str, Any]:
    """The InferenceService for ``state``.

    With a rollout strategy other than ``canary`` the pods hold both versions and route inside
    (:mod:`serving.routing`): one target, no alias, no KServe split.
    """
    if serving.rollout.strategy != "canary":
        rolled_out = state.challenger_version or state.champion_version
        return render_inference_service(
            serving,
            target.image,
            str(rolled_out or "0"),
            tracking_uri,
            None,
            alias=None,
            entity_lookup=target.entity_lookup,
        )
    canary = 0 < state.canary_percent < 100
    rolled_out = state.challenger_version if state.challenger_version is not None else state.champion_version
    return render_inference_service(
        serving,
        target.image,
        str(rolled_out or "0"),
        tracking_uri,
        state.canary_percent if canary else None,
        stable_version=state.champion_version if canary else None,
        alias=CHAMPION_ALIAS if state.champion_version is not None else CHALLENGER_ALIAS,
        entity_lookup=target.entity_lookup,
    )


def desired_inference_service(
    serving: ServingSpec, tracking_uri: str, target: ClusterTarget
) -> tuple[TrafficState, dict[str, Any]]:
    """Read the aliases and render the InferenceService they ask for (nothing is written).

    Raises:
        ModelNotFound: The registered model does not exist.
        DeployError: It has neither a champion nor a challenger.
    """
    client = tracking.registry_client(tracking_uri)
    registered = require_registered_model(client, serving.model_name, tracking_uri)
    aliases = {alias: str(version) for alias, version in (registered.aliases or {}).items()}
    state = traffic_state(serving, aliases)
    if state.champion_version is None and state.challenger_version is None:
        raise DeployError(
            f"registered model {serving.model_name!r} has neither a {CHAMPION_ALIAS!r} nor a {CHALLENGER_ALIAS!r} "
            "alias: there is nothing to serve"
        )
    return state, render_for_state(serving, state, tracking_uri, target)


def sync_inference_service(
    serving: ServingSpec, tracking_uri: str, target: ClusterTarget, seam: KServeSeam | None = None
) -> tuple[TrafficState, dict[str, Any]]:
    """Render the InferenceService the aliases ask for and write it (read-modify-write).

    Args:
        serving: Model name, namespace, deployment mode and canary percent.
        tracking_uri: MLflow URI of the registry (also what the pods read).
        target: Image, Feast settings, ``force`` and ``dry_run``.
        seam: The cluster seam; default one for ``serving.namespace``.

    Returns:
        The traffic state and the manifest ctpipe rendered for it.

    Raises:
        ModelNotFound: The registered model does not exist.
        DeployError: Nothing to serve; the cluster refused the write; or someone else changed a
            field ctpipe owns.
    """
    state, manifest = desired_inference_service(serving, tracking_uri, target)
    seam = seam or KServeSeam(namespace=serving.namespace, dry_run=target.dry_run)
    seam.apply(manifest, force=target.force)
    return state, manifest
