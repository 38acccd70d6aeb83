"""Environments dev → staging → prod, as aliases of one registered model.

One registered model holds every environment; an environment is a pair of aliases:

========  ======================  ========================  ============================
env       serving alias           challenger alias          overlay / namespace (default)
========  ======================  ========================  ============================
dev       ``dev-champion``        ``dev-challenger``        none (embedded) / ``ctpipe-dev``
staging   ``staging-champion``    ``staging-challenger``    ``manifests/overlays/staging`` / ``ctpipe-staging``
prod      ``champion``            ``challenger``            ``manifests/overlays/production`` / ``ctpipe-production``
========  ======================  ========================  ============================

prod keeps today's ``champion`` and ``challenger`` unprefixed, so a registry made before
environments existed *is* a registry whose prod is set up and whose dev and staging are empty:
nothing is migrated, and ``ctpipe promote`` without ``--to`` behaves as it always did
(:func:`components.common.registry.promote`: challenger → champion, no gate).

``promote --to ENV`` (:func:`promote_to`) moves ENV's serving alias under the registry lock, after
checking ENV's gate (``environments.ENV.requires``) against the registry as it is under the lock:

- ``passed_previous``: the version was promoted to the previous environment (dev before staging,
  staging before prod);
- ``canary_passed``: the canary analysis of the previous environment recorded ``promote`` for it;
- ``min_hours``: it entered the previous environment at least this many hours ago (by the
  injected clock ``now``, so tests need no sleeping).

What the gate reads is written on the model version (tags, never only an alias, since an alias
forgets who held it before):

- ``ctpipe.env.<env>.since`` / ``ctpipe.env.<env>.until``: when the version got and lost ENV's
  serving alias (ISO-8601, UTC);
- ``ctpipe.env.<env>.canary_decision`` / ``..canary_reason``: the canary verdict in ENV
  (:func:`record_canary_verdict`; canary analysis writes it next to its legacy, environment-less
  ``ctpipe.canary_decision``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.common import registry, tracking
from components.common.errors import CtpipeError, ModelNotFound
from components.common.logs import get_logger
from components.common.registry_lease import RegistryLock, registered_model, registry_lock

log = get_logger("environments")

Environment = Literal["dev", "staging", "prod"]
#: Promotion order: each environment's gate looks at the one before it.
ENVIRONMENTS: tuple[Environment, ...] = ("dev", "staging", "prod")
PROD: Environment = "prod"
#: The canary verdict that lets a version move on.
PASSED = "promote"

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The current time, timezone-aware (UTC): the default clock."""
    return dt.datetime.now(dt.UTC)


# --- Names --------------------------------------------------------------------------------------
def serving_alias(env: str) -> str:
    """The alias of the version that serves in ``env``: ``champion`` for prod, ``<env>-champion`` otherwise."""
    return registry.CHAMPION_ALIAS if env == PROD else f"{check_environment(env)}-{registry.CHAMPION_ALIAS}"


def challenger_alias(env: str) -> str:
    """The alias of ``env``'s challenger: ``challenger`` for prod, ``<env>-challenger`` otherwise."""
    return registry.CHALLENGER_ALIAS if env == PROD else f"{check_environment(env)}-{registry.CHALLENGER_ALIAS}"


def since_tag(env: str) -> str:
    """Version tag: when the version got ``env``'s serving alias."""
    return f"ctpipe.env.{env}.since"


def until_tag(env: str) -> str:
    """Version tag: when the version lost ``env``'s serving alias."""
    return f"ctpipe.env.{env}.until"


def canary_decision_tag(env: str) -> str:
    """Version tag: the canary analysis decision on the version in ``env``."""
    return f"ctpipe.env.{env}.canary_decision"


def canary_reason_tag(env: str) -> str:
    """Version tag: why the canary analysis in ``env`` decided so."""
    return f"ctpipe.env.{env}.canary_reason"


def check_environment(env: str) -> str:
    """``env`` if it is a known environment.

    Raises:
        CtpipeError: It is not one of dev, staging, prod.
    """
    if env not in ENVIRONMENTS:
        raise CtpipeError(f"unknown environment {env!r}; expected one of {', '.join(ENVIRONMENTS)}")
    return env


def previous_environment(env: str) -> str | None:
    """The environment before ``env`` in dev → staging → prod (None for dev)."""
    index = ENVIRONMENTS.index(check_environment(env))
    return ENVIRONMENTS[index - 1] if index else None


# --- Configuration ------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GateSpec(_Strict):
    """What a version must have done in the previous environment before it may enter this one."""

    passed_previous: bool = Field(
        default=False,
        description="It was promoted to the previous environment (dev before staging, staging before prod).",
    )
    canary_passed: bool = Field(
        default=False, description="The previous environment's canary analysis recorded 'promote' for it."
    )
    min_hours: float = Field(
        default=0.0, ge=0, description="It entered the previous environment at least this many hours ago."
    )


class EnvironmentSpec(_Strict):
    """One environment: where its InferenceService lives and what a version needs to enter it."""

    namespace: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", description="Kubernetes namespace of its InferenceService."
    )
    overlay: str | None = Field(
        default=None, description="Kustomize overlay deployed into the namespace (relative to the repository)."
    )
    requires: GateSpec = Field(default_factory=GateSpec, description="The gate into this environment.")


#: Each environment's settings when the configuration leaves them out; a configured environment is merged
#: over these key by key (its ``requires`` too), so ``prod: {requires: {min_hours: 24}}`` keeps the rest.
DEFAULTS: dict[str, dict[str, Any]] = {
    "dev": {"namespace": "ctpipe-dev", "overlay": None, "requires": {}},
    "staging": {"namespace": "ctpipe-staging", "overlay": "manifests/overlays/staging", "requires": {}},
    "prod": {
        "namespace": "ctpipe-production",
        "overlay": "manifests/overlays/production",
        "requires": {"passed_previous": True, "canary_passed": True},
    },
}


class EnvironmentsSpec(_Strict):
    """The environments dev → staging → prod: namespaces, overlays and gates (docs/operations.md).

    A configured environment is merged over its defaults key by key, ``requires`` included.
    """

    dev: EnvironmentSpec = Field(
        default_factory=lambda: EnvironmentSpec.model_validate(DEFAULTS["dev"]),
        description="Development (aliases dev-champion, dev-challenger): default namespace ctpipe-dev, no overlay, "
        "no gate.",
    )
    staging: EnvironmentSpec = Field(
        default_factory=lambda: EnvironmentSpec.model_validate(DEFAULTS["staging"]),
        description="Staging (aliases staging-champion, staging-challenger): default namespace ctpipe-staging, "
        "overlay manifests/overlays/staging, no gate beyond blessing.",
    )
    prod: EnvironmentSpec = Field(
        default_factory=lambda: EnvironmentSpec.model_validate(DEFAULTS["prod"]),
        description="Production (aliases champion, challenger, as before environments): default namespace "
        "ctpipe-production, overlay manifests/overlays/production, requires passed_previous and canary_passed "
        "(a version whose staging canary passed).",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_and_merged(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        # pydantic's "extra inputs are not permitted" does not say which names are allowed.
        unknown = sorted(str(key) for key in value if key not in ENVIRONMENTS)
        if unknown:
            raise ValueError(
                f"unknown environment(s) {unknown}; expected only {', '.join(ENVIRONMENTS)} "
                "(prod keeps the aliases champion and challenger)"
            )
        merged: dict[str, Any] = {}
        for env, given in value.items():
            if isinstance(given, EnvironmentSpec):
                given = given.model_dump()
            if not isinstance(given, Mapping):
                merged[env] = given  # pydantic reports the wrong type under the environment's key
                continue
            requires = given.get("requires", {})
            if isinstance(requires, GateSpec):
                requires = requires.model_dump(exclude_unset=True)
            if isinstance(requires, Mapping):
                requires = {**DEFAULTS[env]["requires"], **requires}
            merged[env] = {**DEFAULTS[env], **given, "requires": requires}
        return merged

    def of(self, env: str) -> EnvironmentSpec:
        """The settings of ``env``."""
        spec: EnvironmentSpec = getattr(self, check_environment(env))
        return spec


# --- Gate ----------------------------------------------------------------------------------------
def _tags(version: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (version.tags or {}).items()}


def _parse_time(raw: str | None) -> dt.datetime | None:
    if not raw:
        return None
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def gate_problems(model_name: str, version: Any, env: str, gate: GateSpec, now: dt.datetime) -> list[str]:
    """Every condition of ``gate`` that ``version`` does not meet, each naming expected and found."""
    previous = previous_environment(env)
    if previous is None:
        return []
    tags = _tags(version)
    number = str(version.version)
    problems = []
    entered = _parse_time(tags.get(since_tag(previous)))
    if gate.passed_previous and entered is None:
        problems.append(
            f"version {number} was never promoted to {previous}: expected tag {since_tag(previous)}, found none "
            f"(promote it with `ctpipe promote --to {previous} --version {number}` first)"
        )
    if gate.canary_passed:
        found = tags.get(canary_decision_tag(previous))
        if found != PASSED:
            problems.append(
                f"version {number} has not passed the {previous} canary analysis: expected "
                f"{canary_decision_tag(previous)}={PASSED!r}, found {found!r}"
            )
    if gate.min_hours > 0:
        if entered is None:
            problems.append(
                f"version {number} spent no time in {previous}: expected at least {gate.min_hours:g} h, "
                f"found no {since_tag(previous)} tag"
            )
        else:
            left = _parse_time(tags.get(until_tag(previous)))
            # A version that left the previous environment counts its stay there, not the time since.
            end = left if left is not None and left > entered else now
            hours = (end - entered).total_seconds() / 3600
            if hours < gate.min_hours:
                problems.append(
                    f"version {number} has been in {previous} for {hours:.2f} h since {entered.isoformat()}: "
                    f"expected at least {gate.min_hours:g} h"
                )
    return problems


class GateRefused(CtpipeError):
    """A version does not meet the gate into an environment."""


class EnvironmentChange(BaseModel):
    """Which version served in an environment before and after a promotion."""

    name: str
    environment: str
    alias: str
    previous: str | None
    current: str | None


def _default_source(aliases: Mapping[str, str], env: str) -> tuple[str, str]:
    previous = previous_environment(env)
    source = serving_alias(previous) if previous is not None else registry.CHALLENGER_ALIAS
    # Nothing in the previous environment (e.g. dev unused): staging takes the newest blessed candidate.
    if source not in aliases and env != PROD:
        source = registry.CHALLENGER_ALIAS
    if source not in aliases:
        raise ModelNotFound(
            f"no version to promote to {env}: alias {source!r} points at no version",
            hint=f"Pass --version, or promote a version to {previous} first." if previous else "Pass --version.",
        )
    return aliases[source], source


def promote_to(
    model_name: str,
    tracking_uri: str,
    env: str,
    environments: EnvironmentsSpec | None = None,
    version: str | None = None,
    now: Clock = utc_now,
    canary: bool = False,
) -> EnvironmentChange:
    """Make ``version`` serve in ``env`` once it meets ``env``'s gate; under the registry lock.

    By default the version serving in the previous environment (for dev, or a staging whose dev is
    empty: the ``challenger``). Into prod the move is :func:`registry.promote`'s (champion history,
    ``rollback``, the challenger alias dropped when it pointed at the version). The version that
    served in ``env`` before gets ``ctpipe.env.<env>.until``, the new one ``ctpipe.env.<env>.since``.
    With ``canary`` the version becomes ``env``'s challenger instead (same gate): the canary
    analysis of ``env`` then decides (:func:`conclude_canary`).

    Args:
        model_name: Registered model name.
        tracking_uri: MLflow tracking (and registry) URI.
        env: dev, staging or prod.
        environments: The gates (``environments`` of the configuration); default the defaults.
        version: The version to promote.
        now: The clock the gate's hours are measured with.
        canary: Point ``env``'s challenger alias at the version, not its serving alias.

    Returns:
        The environment's serving alias before and after.

    Raises:
        ModelNotFound: No such model or version, or nothing to promote.
        GateRefused: The version does not meet the gate (every missing condition is named).
        CtpipeError: The version is not blessed or not READY.
    """
    check_environment(env)
    gate = (environments or EnvironmentsSpec()).of(env).requires
    client = tracking.registry_client(tracking_uri)
    if registered_model(client, model_name) is None:
        raise ModelNotFound(f"no registered model named {model_name!r}")
    alias = challenger_alias(env) if canary else serving_alias(env)
    with registry_lock(client, model_name) as lock:
        # Everything is re-read under the lock: the gate is checked against what is written now.
        aliases = registry.aliases_of(client, model_name)
        chosen = str(version) if version is not None else _default_source(aliases, env)[0]
        model_version = registry.get_version(client, model_name, chosen)
        if registry.blessing(model_version) != "true":
            raise CtpipeError(
                f"refusing to promote model {model_name!r} version {chosen} to {env}: its {registry.BLESSED_TAG} "
                f"tag is {registry.blessing(model_version)!r}, expected 'true'"
            )
        stamp = now()
        problems = gate_problems(model_name, model_version, env, gate, stamp)
        if problems:
            raise GateRefused(
                f"refusing to promote model {model_name!r} version {chosen} to {env}: " + "; ".join(problems),
                hint=f"The gate is environments.{env}.requires in the configuration.",
            )
        previous = aliases.get(alias)
        if previous == chosen:
            return EnvironmentChange(name=model_name, environment=env, alias=alias, previous=previous, current=chosen)
        lock.check()
        if canary:
            registry.set_alias(client, model_name, alias, chosen)
        else:
            _serve_locked(client, model_name, env, chosen, previous, stamp, lock)
    log.info("promoted", extra={"model": model_name, "environment": env, "previous": previous, "current": chosen})
    return EnvironmentChange(name=model_name, environment=env, alias=alias, previous=previous, current=chosen)


def _serve_locked(
    client: Any,
    model_name: str,
    env: str,
    version: str,
    previous: str | None,
    stamp: dt.datetime,
    lock: RegistryLock,
) -> None:
    """Point ``env``'s serving alias at ``version`` (the caller holds the lock) and stamp since/until."""
    if env == PROD:
        registry._promote_locked(client, model_name, version, lock)
    else:
        registry.set_alias(client, model_name, serving_alias(env), version)
        if registry.aliases_of(client, model_name).get(challenger_alias(env)) == version:
            client.delete_registered_model_alias(model_name, challenger_alias(env))
    # After the move: a crash before these tags leaves a version that served without a since tag,
    # which the gate reads as "not promoted" (refuses), never as "was there longer".
    stamp_entry(client, model_name, env, version, previous, stamp)


def stamp_entry(client: Any, model_name: str, env: str, version: str, previous: str | None, stamp: dt.datetime) -> None:
    """Record that ``version`` serves in ``env`` from ``stamp`` on, and that ``previous`` stopped then.

    Called after every move of ``env``'s serving alias (also by ``ctpipe promote``/``rollback`` and
    prod's canary analysis, which move ``champion`` with :mod:`components.common.registry`).
    """
    version = str(version)
    client.set_model_version_tag(model_name, version, since_tag(env), stamp.isoformat())
    if until_tag(env) in _tags(registry.get_version(client, model_name, version)):  # back in env: not left any more
        client.delete_model_version_tag(model_name, version, until_tag(env))
    if previous is not None and str(previous) != version:
        client.set_model_version_tag(model_name, str(previous), until_tag(env), stamp.isoformat())


def conclude_canary(
    model_name: str, tracking_uri: str, env: str, version: str, decision: str, now: Clock = utc_now
) -> str:
    """End the canary of ``version`` in a non-prod ``env`` the way its analysis decided; under the lock.

    ``promote``: ``version`` becomes ``env``'s serving version (``since`` stamped, its challenger
    alias removed). Otherwise its challenger alias is removed (only while it still points at it).
    prod's canary is concluded by :func:`registry.promote` and :func:`registry.close_canary`.

    Returns:
        What was done, in one sentence.
    """
    if check_environment(env) == PROD:
        raise CtpipeError("prod's canary is concluded by registry.promote or registry.close_canary")
    client = tracking.registry_client(tracking_uri)
    with registry_lock(client, model_name) as lock:
        aliases = registry.aliases_of(client, model_name)
        lock.check()
        if decision == PASSED:
            previous = aliases.get(serving_alias(env))
            _serve_locked(client, model_name, env, str(version), previous, now(), lock)
            return f"version {version} now serves in {env} (alias {serving_alias(env)}; was {previous})"
        if aliases.get(challenger_alias(env)) == str(version):
            client.delete_registered_model_alias(model_name, challenger_alias(env))
        return f"closed the {env} canary: version {version} lost alias {challenger_alias(env)}"


def record_canary_verdict(client: Any, model_name: str, version: str, env: str, decision: str, reason: str) -> None:
    """Record the canary analysis ``decision`` on ``version`` in ``env`` (what the next gate reads)."""
    client.set_model_version_tag(model_name, version, canary_decision_tag(check_environment(env)), decision)
    client.set_model_version_tag(model_name, version, canary_reason_tag(env), reason[:4000])


# --- Status ----------------------------------------------------------------------------------------
class EnvironmentStatus(BaseModel):
    """What serves in one environment."""

    environment: str
    alias: str
    version: str | None
    since: str | None
    blessed: str | None
    infra_blessed: str | None
    challenger: str | None
    canary: str
    namespace: str
    overlay: str | None


def _canary_state(env: str, model_tags: Mapping[str, str], challenger: Any | None, serving: Any | None) -> str:
    parts = []
    if challenger is not None:
        if env == PROD:
            bound = model_tags.get(registry.CANARY_VERSION_TAG) == str(challenger.version)
            percent = model_tags.get(registry.CANARY_TAG, "0") if bound else "0"
            parts.append(f"challenger {challenger.version} at {percent}%")
        else:
            parts.append(f"challenger {challenger.version}")
    for version in (v for v in (challenger, serving) if v is not None):
        tags = _tags(version)
        # prod's canary analysis wrote the environment-less tag before environments existed.
        legacy = tags.get(registry.CANARY_DECISION_TAG) if env == PROD else None
        decision = tags.get(canary_decision_tag(env)) or legacy
        if decision:
            parts.append(f"v{version.version}: {decision}")
    return "; ".join(parts) or "none"


def environment_status(
    model_name: str, tracking_uri: str, environments: EnvironmentsSpec | None = None
) -> list[EnvironmentStatus]:
    """One row per environment: the version behind its serving alias, since when, blessings, canary.

    Raises:
        ModelNotFound: The registered model does not exist.
    """
    specs = environments or EnvironmentsSpec()
    client = tracking.registry_client(tracking_uri)
    model = registered_model(client, model_name)
    if model is None:
        raise ModelNotFound(f"no registered model named {model_name!r}")
    aliases = {str(k): str(v) for k, v in (model.aliases or {}).items()}
    model_tags = {str(k): str(v) for k, v in (model.tags or {}).items()}
    rows = []
    for env in ENVIRONMENTS:
        alias = serving_alias(env)
        serving = _version_or_none(client, model_name, aliases.get(alias))
        challenger = _version_or_none(client, model_name, aliases.get(challenger_alias(env)))
        tags = _tags(serving) if serving is not None else {}
        spec = specs.of(env)
        rows.append(
            EnvironmentStatus(
                environment=env,
                alias=alias,
                version=None if serving is None else str(serving.version),
                # A champion set before environments existed has no since tag: said so, not guessed.
                since=tags.get(since_tag(env)) or (None if serving is None else "unrecorded"),
                blessed=tags.get(registry.BLESSED_TAG) if serving is not None else None,
                infra_blessed=tags.get(registry.INFRA_BLESSED_TAG, "not run") if serving is not None else None,
                challenger=None if challenger is None else str(challenger.version),
                canary=_canary_state(env, model_tags, challenger, serving),
                namespace=spec.namespace,
                overlay=spec.overlay,
            )
        )
    return rows


def _version_or_none(client: Any, model_name: str, version: str | None) -> Any | None:
    if version is None:
        return None
    try:
        return registry.get_version(client, model_name, version)
    except ModelNotFound:
        return None


def environments_of(aliases: Mapping[str, str], version: str) -> list[str]:
    """The environments ``version`` serves in, given the model's aliases."""
    return [env for env in ENVIRONMENTS if aliases.get(serving_alias(env)) == str(version)]


def status_text(model_name: str, rows: list[EnvironmentStatus]) -> str:
    """The status rows as a plain-text table."""
    header = ("environment", "version", "alias", "since", "blessed", "infra", "canary", "namespace")
    table = [header] + [
        (
            row.environment,
            row.version or "-",
            row.alias,
            row.since or "-",
            row.blessed or "-",
            row.infra_blessed or "-",
            row.canary,
            row.namespace,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [f"model {model_name}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table]
    return "\n".join(lines)
