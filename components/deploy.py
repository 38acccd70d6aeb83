"""Deploy: give a registered challenger a share of live traffic, locally or on KServe.

The registry decides what is served. ``register`` points the alias ``challenger`` at a blessed
version; the model server (``python -m serving.server``) loads it in the background but sends it no
traffic until deploy sets the canary percent for that exact version (registered-model tags
``ctpipe.canary_percent`` and ``ctpipe.canary_version``, set by
:func:`components.common.registry.set_traffic`). ``promote`` later moves ``champion``.

- ``embedded`` profile: make sure the local server runs (start it detached, or reuse it),
  open the canary and wait until the server reports the new challenger. If the challenger
  cannot be loaded or the wait times out, the canary goes back to 0 so the champion keeps all
  traffic, and :class:`~components.common.errors.DeployError` says why.
- ``cluster`` profile: render the InferenceService the aliases ask for
  (``components.common.kserve.traffic``), write it to ``<workspace>/manifests/<name>.yaml`` and
  write it into the cluster's object, keeping every field ctpipe does not own
  (``components.common.kserve.cluster.KServeSeam``); ``dry_run`` writes the manifest and records
  the call without touching a cluster.

Given the registry state the pipeline read (:mod:`components.common.registry_state`), an embedded
deploy whose work is already done (the version is the challenger, the canary tags say this share
for it, and the local server answers that it serves exactly these versions at this share) changes
nothing and says so (an idempotent skip), without importing MLflow. The server is asked every time,
so a server that stopped is started again. The cluster profile always writes the manifest (the
write is idempotent; the cluster's object is not known without reading it).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from components.common import tracking
from components.common.environments import PROD, challenger_alias, serving_alias
from components.common.errors import DeployError, ModelNotFound
from components.common.logs import get_logger
from components.common.registry import (
    CANARY_TAG,
    CANARY_VERSION_TAG,
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    INFRA_BLESSED_TAG,
    SERVING_RUNTIME_TAG,
    STATUS_ROUTE,
    redact_uri,
    require_registered_model,
    set_traffic,
)
from components.common.registry_state import RegistryState
from components.common.skips import log_skip

# requests, yaml, Feast, KServe and the specs are imported where they are used: a task that finds
# the canary already open starts without them (tests/unit/test_import_budget.py).
if TYPE_CHECKING:
    from components.common.feast import EntityLookup
    from components.common.kserve.traffic import ClusterTarget
    from components.serving_spec import ServingSpec

logger = get_logger("deploy")


class DeployResult(BaseModel):
    """What serves traffic after a deployment."""

    mode: Literal["local", "cluster"]
    endpoint: str
    model_name: str
    champion_version: str | None
    challenger_version: str | None
    canary_percent: int
    manifest_path: str | None = None
    environment: str | None = None
    namespace: str | None = None
    dry_run: bool = False
    message: str = ""
    skipped: str = ""


def wait_for_serving(
    endpoint: str,
    model_name: str,
    champion: str | None,
    challenger: str | None,
    timeout: float,
    canary_percent: int | None = None,
) -> dict[str, Any]:
    """Wait until the server at ``endpoint`` serves exactly these versions.

    Args:
        endpoint: Base URL of the model server, e.g. ``http://127.0.0.1:8080``.
        model_name: The model the server must serve.
        champion: Expected champion version (None: no champion).
        challenger: Expected challenger version (None: no challenger).
        timeout: Seconds to wait.
        canary_percent: Also wait for this effective canary percent, when given.

    Returns:
        The server's last ``/ctpipe/status``.

    Raises:
        DeployError: The server reports that an expected version failed to load, serves another
            model, or does not switch within ``timeout``.
    """
    import requests

    url = endpoint.rstrip("/") + STATUS_ROUTE
    deadline = time.monotonic() + timeout
    status: dict[str, Any] | None = None
    problem = "no answer"
    while True:
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                status = response.json()
            else:
                problem = f"HTTP {response.status_code} from {url}"
        except (requests.RequestException, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if status is not None:
            if status.get("model_name") != model_name:
                raise DeployError(
                    f"the server at {endpoint} serves model {status.get('model_name')!r}, not {model_name!r}"
                )
            failed = status.get("failed_versions") or {}
            for alias, version in ((CHAMPION_ALIAS, champion), (CHALLENGER_ALIAS, challenger)):
                if version is not None and version in failed:
                    raise DeployError(f"the server cannot load {alias} version {version}: {failed[version]}")
            serving_now = (status.get("champion_version"), status.get("challenger_version"))
            if serving_now == (champion, challenger) and (
                canary_percent is None or status.get("canary_percent") == canary_percent
            ):
                return status
            problem = (
                f"it serves champion {serving_now[0]}, challenger {serving_now[1]} at {status.get('canary_percent')}%"
            )
        if time.monotonic() > deadline:
            raise DeployError(
                f"the server at {endpoint} did not switch to champion {champion}, challenger {challenger} "
                f"within {timeout:g}s: {problem}"
            )
        time.sleep(0.1)


def check_infra_blessing(client: Any, model_name: str, version: str) -> None:
    """Refuse a version whose infra validation failed (tag ``ctpipe.infra_blessed=false``).

    A version never infra-validated (no tag) passes: infra validation can be switched off.

    Raises:
        DeployError: The version's sandbox run failed.
    """
    try:
        tags = dict(client.get_model_version(model_name, version).tags or {})
    except Exception:  # a missing version is reported by the caller with its own message
        return
    if tags.get(INFRA_BLESSED_TAG) == "false":
        raise DeployError(
            f"version {version} of {model_name!r} failed infra validation ({INFRA_BLESSED_TAG}=false); "
            "it gets no traffic",
            hint="See the infra blessing of the training run for why the sandbox server could not serve it.",
        )


def _server_status(endpoint: str) -> dict[str, Any] | None:
    """The model server's ``/ctpipe/status`` at ``endpoint``; None when nothing there answers it."""
    import requests

    try:
        response = requests.get(endpoint.rstrip("/") + STATUS_ROUTE, timeout=2)
        status = response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _local_result(serving: ServingSpec, champion: str | None, version: str) -> DeployResult:
    """The embedded deployment that serves challenger ``version`` next to ``champion``, without a message yet.

    Both the idempotent skip (:func:`already_deployed`) and a real deploy (:func:`_deploy_local`)
    describe the same target, so the effective share is decided here once: with no champion the
    challenger is all there is and serves 100% of requests, whatever ``serving.canary_percent`` says.

    Args:
        serving: The serving spec (model name, host, port, canary percent).
        champion: The version the ``champion`` alias points to, or None when there is none.
        version: The challenger version being deployed.

    Returns:
        The result with ``message`` and ``skipped`` empty; callers fill them with ``model_copy``.
    """
    from components.common.server_process import endpoint_url

    return DeployResult(
        mode="local",
        endpoint=endpoint_url(serving.host, serving.port),
        model_name=serving.model_name,
        champion_version=champion,
        challenger_version=version,
        canary_percent=100 if champion is None else serving.canary_percent,
    )


def already_deployed(
    state: RegistryState, version: str, serving: ServingSpec, tracking_uri: str
) -> DeployResult | None:
    """The embedded deployment of ``version`` when it is already in place, per ``state`` and the server; else None.

    In place: ``version`` is the challenger, not refused by infra validation, the canary tags give
    it ``serving.canary_percent``, and the local server for this model and registry answers that it
    serves this champion and this challenger at the effective share, with the runtime infra
    validation chose, and has failed to load neither.
    """
    name = serving.model_name
    held = state.version(version)
    if not state.exists or state.aliases.get(CHALLENGER_ALIAS) != version or held is None:
        return None
    if held.tags.get(INFRA_BLESSED_TAG) == "false":
        return None
    if state.tags.get(CANARY_TAG) != str(serving.canary_percent) or state.tags.get(CANARY_VERSION_TAG) != version:
        return None
    champion = state.aliases.get(CHAMPION_ALIAS)
    in_place = _local_result(serving, champion, version)
    endpoint, effective = in_place.endpoint, in_place.canary_percent
    status = _server_status(endpoint)
    if status is None or status.get("pinned_version"):
        return None
    if (status.get("model_name"), status.get("tracking_uri")) != (name, redact_uri(tracking_uri)):
        return None
    if (status.get("champion_version"), status.get("challenger_version"), status.get("canary_percent")) != (
        champion,
        version,
        effective,
    ):
        return None
    if {version, champion} & set(status.get("failed_versions") or {}):
        return None
    wanted_runtime = held.tags.get(SERVING_RUNTIME_TAG)
    served_runtime = ((status.get("runtimes") or {}).get(version) or {}).get("runtime")
    if wanted_runtime and served_runtime and wanted_runtime != served_runtime:
        return None
    share = f"champion version {champion} the rest" if champion is not None else "no champion"
    reason = (
        f"the server at {endpoint} (pid {status.get('pid')}) already serves challenger version {version} "
        f"at {effective}% ({share}), as the registry asks"
    )
    return in_place.model_copy(update={"message": reason, "skipped": reason})


def _deploy_local(
    version: str,
    serving: ServingSpec,
    tracking_uri: str,
    workspace: str,
    timeout: float,
    dry_run: bool,
    entity_lookup: EntityLookup | None,
) -> DeployResult:
    from components.common.server_process import start_local_server

    name = serving.model_name
    client = tracking.registry_client(tracking_uri)
    registered = require_registered_model(client, name, tracking_uri)
    aliases = {alias: str(version) for alias, version in (registered.aliases or {}).items()}
    champion, challenger = aliases.get(CHAMPION_ALIAS), aliases.get(CHALLENGER_ALIAS)
    if challenger != version:
        raise DeployError(
            f"version {version} of {name!r} is not the challenger (alias {CHALLENGER_ALIAS!r} points to "
            f"{challenger if challenger is not None else 'no version'}); register it as the challenger first"
        )
    check_infra_blessing(client, name, version)
    planned = _local_result(serving, champion, version)
    effective = planned.canary_percent
    if champion is None:
        message = f"no champion yet: challenger version {version} serves 100% of requests"
    else:
        message = f"challenger version {version} gets {effective}% of requests, champion version {champion} the rest"

    if dry_run:  # checked the registry; change nothing
        plan = f"dry run: would set {CANARY_TAG}={serving.canary_percent}, start or reuse the server; {message}"
        return planned.model_copy(update={"dry_run": True, "message": plan})
    deadline = time.monotonic() + timeout
    set_traffic(name, tracking_uri, serving.canary_percent)
    try:
        server = start_local_server(serving, tracking_uri, workspace, timeout=timeout, entity_lookup=entity_lookup)
        remaining = max(deadline - time.monotonic(), 1.0)
        wait_for_serving(server.endpoint, name, champion, version, remaining, canary_percent=effective)
    except Exception as exc:
        with contextlib.suppress(Exception):
            set_traffic(name, tracking_uri, 0)
        logger.error("deploy failed; canary reset to 0", extra={"model": name, "version": version, "error": str(exc)})
        if isinstance(exc, DeployError):
            raise
        raise DeployError(f"deploying version {version} of {name!r} failed: {type(exc).__name__}: {exc}") from exc
    result = planned.model_copy(
        update={"message": message + (" (server reused)" if server.reused else f" (server started, pid {server.pid})")}
    )
    logger.info("deployed", extra={"result": result.model_dump()})
    return result


def _is_local_uri(uri: str) -> bool:
    scheme = urlsplit(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # one letter: a Windows drive


def _deploy_cluster(
    version: str,
    serving: ServingSpec,
    tracking_uri: str,
    workspace: str,
    target: ClusterTarget,
) -> DeployResult:
    import yaml

    from components.common.io import scratch_folder, write_text
    from components.common.kserve.cluster import KServeSeam
    from components.common.kserve.manifests import isvc_name
    from components.common.kserve.traffic import TrafficState, desired_inference_service, render_for_state

    name = isvc_name(serving.model_name)
    notes: list[str] = []
    registry_read = True
    try:
        client = tracking.registry_client(tracking_uri)
        require_registered_model(client, serving.model_name, tracking_uri)
        try:
            client.get_model_version(serving.model_name, version)
        except Exception as exc:
            raise ModelNotFound(f"version {version} of {serving.model_name!r} does not exist: {exc}") from None
        check_infra_blessing(client, serving.model_name, version)
    except DeployError as exc:
        if not target.dry_run:
            raise
        registry_read = False
        notes.append(f"registry not read ({exc}); versions assumed")
    if _is_local_uri(tracking_uri):
        if not target.dry_run:
            raise DeployError(
                f"tracking URI {tracking_uri!r} is local to this machine; pods cannot read it. "
                "Use an MLflow server URL (infra.tracking_uri) for the cluster profile"
            )
        notes.append("tracking URI is local: pods could not read it")

    if registry_read:
        state, manifest = desired_inference_service(serving, tracking_uri, target)
    else:  # a dry run without a registry: as if the version were the only one
        state = TrafficState(champion_version=None, challenger_version=version, canary_percent=100)
        manifest = render_for_state(serving, state, tracking_uri, target)
    env = serving.environment
    if version not in (state.challenger_version, state.champion_version):
        if env is None:
            raise DeployError(
                f"version {version} of {serving.model_name!r} is neither the challenger nor the champion "
                f"(challenger {state.challenger_version}, champion {state.champion_version}); register it first"
            )
        raise DeployError(
            f"version {version} of {serving.model_name!r} is neither {env}'s challenger "
            f"({challenger_alias(env)}: {state.challenger_version}) nor its champion "
            f"({serving_alias(env)}: {state.champion_version})",
            hint=f"Move it into {env} first: ctpipe promote --to {env} --canary --version {version}",
        )
    # The environment's namespace (environments.ENV.namespace, set into serving.namespace by the config).
    seam = KServeSeam(namespace=serving.namespace, dry_run=target.dry_run)
    seam.apply(manifest, force=target.force)
    # One folder per environment: the staging and prod renderings of one model never overwrite each other.
    folder = scratch_folder(workspace) / "manifests"
    manifest_path = (folder / env if env is not None else folder) / f"{name}.yaml"
    write_text(manifest_path, yaml.safe_dump(manifest, sort_keys=False))
    # The canary tags are prod's (the local server's split); KServe splits the other environments itself.
    prod = env in (None, PROD)
    if prod and serving.deployment_mode == "Standard" and not target.dry_run and state.challenger_version == version:
        # KServe splits by spec.canary; the tag records the share for promote, rollback and canary analysis.
        set_traffic(serving.model_name, tracking_uri, serving.canary_percent)
    endpoint = f"http://{name}-predictor.{serving.namespace}.svc.cluster.local"
    if not target.dry_run:
        applied = seam.get(name) or {}
        endpoint = (applied.get("status") or {}).get("url") or endpoint
    mode_note = (
        "Knative revisions split traffic (canaryTrafficPercent)"
        if serving.deployment_mode == "Serverless"
        else "KServe splits traffic between spec.predictor and spec.canary"
    )
    message = "; ".join([f"{'dry run: ' if target.dry_run else ''}{mode_note}", *notes])
    result = DeployResult(
        mode="cluster",
        endpoint=endpoint,
        model_name=serving.model_name,
        champion_version=state.champion_version,
        challenger_version=state.challenger_version,
        canary_percent=state.canary_percent,
        manifest_path=str(manifest_path),
        environment=env,
        namespace=serving.namespace,
        dry_run=target.dry_run,
        message=message,
    )
    logger.info("deployed", extra={"result": result.model_dump()})
    return result


def deploy(
    version: str,
    serving: ServingSpec,
    tracking_uri: str,
    workspace: str,
    profile: Literal["embedded", "cluster"] = "embedded",
    image: str = "ctpipe/serving:0.1.0",
    dry_run: bool = False,
    timeout: float = 60.0,
    entity_lookup: EntityLookup | None = None,
    force: bool = False,
    known_state: RegistryState | None = None,
) -> DeployResult:
    """Send a share of live traffic to a registered model version.

    With ``known_state`` (the registry as the pipeline last read it), an embedded deployment that
    is already in place (:func:`already_deployed`) changes nothing and ``skipped`` says why.

    Args:
        version: Registry version to deploy; in the embedded profile it must be the current
            ``challenger``.
        serving: Model name, canary percent, local host/port, cluster mode and namespace.
        tracking_uri: MLflow tracking/registry URI.
        workspace: Folder for the local server's log and pid, and for rendered manifests (empty in a
            cluster task: a private temporary folder).
        profile: ``embedded`` (local model server) or ``cluster`` (KServe InferenceService).
        image: Serving image for the cluster profile.
        dry_run: Change nothing: the cluster profile writes the manifest and records the call
            without touching a cluster or registry tags; the embedded profile only checks the registry.
        timeout: Seconds to wait for the local server to serve the new version.
        entity_lookup: Feast settings, so the server this call starts (or the InferenceService's
            pods) answer requests by entity id.
        force: Cluster profile: overwrite fields of the InferenceService that ctpipe owns but
            someone else changed since ctpipe wrote them (otherwise that is an error).
        known_state: The model's registry state read earlier in the run; None to deploy regardless.

    Returns:
        Where the model is served and which versions get which share.

    Raises:
        DeployError: The version is not the challenger, cannot be loaded, or the server does not
            switch in time (the champion keeps all traffic); or the cluster refused the manifest.
        ModelNotFound: The registered model or version does not exist.
    """
    version = str(version)
    if profile == "embedded":
        done = (
            already_deployed(known_state, version, serving, tracking_uri)
            if known_state is not None and not dry_run
            else None
        )
        if done is not None:
            log_skip(logger, done.skipped, model=serving.model_name, version=version)
            return done
        return _deploy_local(version, serving, tracking_uri, workspace, timeout, dry_run, entity_lookup)
    if profile == "cluster":
        from components.common.kserve.traffic import ClusterTarget

        target = ClusterTarget(image=image, entity_lookup=entity_lookup, force=force, dry_run=dry_run)
        return _deploy_cluster(version, serving, tracking_uri, workspace, target)
    raise DeployError(f"unknown profile {profile!r}; expected 'embedded' or 'cluster'")
