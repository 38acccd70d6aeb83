"""The one seam between ctpipe and a Kubeflow Pipelines server: upload, experiment, run, schedule.

``ctpipe submit`` plans a short list of ``kfp.Client`` calls (find the pipeline, upload it
if missing, upload a version named after the code version and the package's hash, or reuse
the version of that name, get or create the experiment, create a run or a recurring run) and
sends them through :class:`KfpSeam`. With
``dry_run`` the seam records and prints the calls instead and never constructs
``kfp.Client`` (its constructor already contacts the server), so CI and the tests can see
exactly what would be sent.

The endpoint comes from ``infra.kfp_host`` or ``KF_PIPELINES_ENDPOINT`` (the variable
kfp itself reads); the bearer token from the file named by ``infra.kfp.token_file`` or
``KF_PIPELINES_TOKEN_FILE``; without one, kfp falls back to the in-cluster service
account token (``KF_PIPELINES_SA_TOKEN_PATH``).

Every upload carries a version: ``--version``, else ``CTPIPE_VERSION`` (the images set it to
the commit they were built from), else the git commit of the checkout. Without any of them
nothing is uploaded: a version named ``unknown`` could not be traced to code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from components.common.errors import ConfigError, CtpipeError
from components.common.io import file_sha256
from components.common.logs import get_logger
from pipelines.config import CtpipeConfig

logger = get_logger("pipelines.submit")

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"  # kfp.Client's own variable
TOKEN_FILE_ENV = "KF_PIPELINES_TOKEN_FILE"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
VERSION_ENV = "CTPIPE_VERSION"  # the code version; the images set it to their build commit
UNKNOWN_VERSION = "unknown"

# Placeholders for ids the server assigns; they appear only in dry-run plans.
PIPELINE_ID = "<pipeline_id>"
VERSION_ID = "<pipeline_version_id>"
EXPERIMENT_ID = "<experiment_id>"


class SubmitFailed(CtpipeError):
    """The Kubeflow Pipelines server refused a request."""

    hint = "Check infra.kfp_host / KF_PIPELINES_ENDPOINT, the token and the namespace; try --dry-run."


class KfpCall(BaseModel):
    """One ``kfp.Client`` method call the seam sent, or would send in dry-run mode."""

    method: str
    kwargs: dict[str, Any]
    note: str = ""


def package_digest(package: str | Path) -> str:
    """sha256 of a compiled pipeline's content, blind to comments and to the order of mapping keys.

    The compiler's header comment lists dict defaults in an order that changes from one process
    to the next; the pipeline itself does not, so this digest is the same for every compile of
    the same code and configuration.

    Raises:
        ConfigError: The file is not YAML.
    """
    try:
        documents = list(yaml.safe_load_all(Path(package).read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{package}: not a compiled pipeline (YAML): {exc}") from None
    canonical = json.dumps(documents, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def version_name(version: str, digest: str) -> str:
    """The name a package is uploaded under: the code version and the first 8 hex digits of its digest.

    The same code compiled from the same configuration gives the same :func:`package_digest`
    and so the same name, which :func:`submit` then reuses instead of uploading again (a
    CronJob that submits every day adds no version); a changed configuration gives a new one.

    Raises:
        ConfigError: ``version`` is empty or ``unknown``.
    """
    if not version.strip() or version.strip() == UNKNOWN_VERSION:
        raise ConfigError(
            f"no pipeline version to upload under (found {version!r})",
            hint=f"Pass --version, set {VERSION_ENV} (the images set it to their build commit) "
            "or run from a git checkout.",
        )
    return f"{version.strip()}-{digest[:8]}"


def _name_filter(name: str) -> str:
    """A KFP API filter matching ``display_name == name`` (operation 1 is EQUALS)."""
    return json.dumps({"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]})


def cron_for_kfp(expression: str) -> str:
    """A cron expression as KFP's scheduler reads it (with a seconds field).

    KFP schedules use six fields (``second minute hour day month weekday``); a usual
    five-field expression gets ``0`` seconds prepended.

    Raises:
        ConfigError: The expression has neither five nor six fields.
    """
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ConfigError(
        f"--schedule {expression!r}: expected a cron expression of 5 fields (minute hour day month weekday) "
        f"or 6 (with seconds first), found {len(fields)}"
    )


class Connection(BaseModel):
    """How to reach the server: the arguments of ``kfp.Client`` (the token is read from its file)."""

    host: str | None
    namespace: str | None
    token_file: str | None
    verify_ssl: bool

    @classmethod
    def from_config(cls, config: CtpipeConfig, environ: dict[str, str] | None = None) -> Connection:
        """Config first, then the environment."""
        env = os.environ if environ is None else environ
        kfp = config.infra.kfp
        return cls(
            host=config.infra.kfp_host or env.get(ENDPOINT_ENV) or None,
            namespace=kfp.namespace or env.get(NAMESPACE_ENV) or None,
            token_file=kfp.token_file or env.get(TOKEN_FILE_ENV) or None,
            verify_ssl=kfp.verify_ssl,
        )

    def client_kwargs(self, redact: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``kfp.Client``; ``redact`` hides the token.

        Raises:
            ConfigError: No host is configured, or the token file cannot be read.
        """
        if not self.host and not redact:
            raise ConfigError(
                f"no Kubeflow Pipelines endpoint: set infra.kfp_host or {ENDPOINT_ENV}",
                hint="Or use --dry-run to see what would be sent.",
            )
        host = self.host or f"<not set: infra.kfp_host or {ENDPOINT_ENV}>"
        kwargs: dict[str, Any] = {"host": host, "verify_ssl": self.verify_ssl}
        if self.namespace:
            kwargs["namespace"] = self.namespace
        if self.token_file:
            if redact:
                kwargs["existing_token"] = f"<contents of {self.token_file}>"
            else:
                try:
                    kwargs["existing_token"] = Path(self.token_file).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"{self.token_file}: cannot read the KFP token file: {exc}") from None
        return kwargs


class KfpSeam:
    """Send ``kfp.Client`` calls, or record them in dry-run mode.

    Args:
        connection: Where the server is.
        dry_run: Record and log every call instead of sending it; no client is built.
        client_factory: Builds the client from ``kfp.Client``'s keyword arguments; default
            ``kfp.Client``.
    """

    def __init__(
        self, connection: Connection, dry_run: bool = False, client_factory: Callable[..., Any] | None = None
    ) -> None:
        self.connection = connection
        self.dry_run = dry_run
        self.calls: list[KfpCall] = []
        self._client_factory = client_factory
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The ``kfp.Client``, built on first use; never in dry-run mode."""
        if self.dry_run:
            raise RuntimeError("KfpSeam is in dry-run mode; it must not build a kfp.Client")
        if self._client is None:
            factory = self._client_factory
            if factory is None:
                import kfp

                factory = kfp.Client
            self._client = factory(**self.connection.client_kwargs())
        return self._client

    def call(self, method: str, note: str = "", **kwargs: Any) -> Any:
        """Call ``kfp.Client.<method>(**kwargs)``; in dry-run mode record it and return None.

        Raises:
            SubmitFailed: The server refused the request.
        """
        self.calls.append(KfpCall(method=method, kwargs=kwargs, note=note))
        if self.dry_run:
            logger.debug(f"dry run: would call kfp.Client.{method}", extra={"kwargs": kwargs})
            return None
        try:
            return getattr(self.client, method)(**kwargs)
        except CtpipeError:
            raise
        except Exception as exc:  # kfp_server_api.ApiException, connection errors
            status = getattr(exc, "status", "")
            reason = getattr(exc, "reason", "") or str(exc).splitlines()[0]
            raise SubmitFailed(f"kfp.Client.{method} failed: {status} {reason}".replace("  ", " ")) from exc


class SubmitPlan(BaseModel):
    """What ``ctpipe submit`` sent (or would send): the connection and every call in order."""

    dry_run: bool
    pipeline: str
    package: str
    package_sha256: str
    version: str = Field(description="The pipeline version the run uses: CODE_VERSION-<package digest[:8]>.")
    client: dict[str, Any] = Field(description="kfp.Client keyword arguments (token redacted).")
    calls: list[KfpCall]
    pipeline_id: str | None = None
    version_id: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    recurring_run_id: str | None = None

    def text(self) -> str:
        """Human-readable plan, one call per paragraph."""
        head = "dry run: nothing was sent" if self.dry_run else "sent"
        lines = [
            f"{head}: ctpipe submit {self.pipeline}",
            f"package  {self.package} (sha256 {self.package_sha256[:12]})",
            f"version  {self.version}",
        ]
        lines.append("kfp.Client(" + ", ".join(f"{k}={v!r}" for k, v in self.client.items()) + ")")
        for call in self.calls:
            note = f"   # {call.note}" if call.note else ""
            lines.append(f"  .{call.method}({note}")
            lines.extend(f"      {key}={value!r}," for key, value in call.kwargs.items())
            lines.append("  )")
        return "\n".join(lines)


def _id(result: Any, attribute: str, placeholder: str) -> str:
    if result is None:
        return placeholder
    value = getattr(result, attribute, None)
    if not value:
        raise SubmitFailed(f"the server's reply has no {attribute}: {result!r}")
    return str(value)


def submit(
    config: CtpipeConfig,
    pipeline: str,
    package: str | Path,
    params: dict[str, Any] | None = None,
    *,
    version: str,
    experiment: str | None = None,
    run_name: str | None = None,
    schedule: str | None = None,
    enable_caching: bool = True,
    dry_run: bool = False,
    client_factory: Callable[..., Any] | None = None,
    environ: dict[str, str] | None = None,
) -> SubmitPlan:
    """Upload a compiled pipeline as a new version and start a run (or a recurring run) of it.

    Args:
        config: The configuration (``infra.kfp_host``, ``infra.kfp``).
        pipeline: ctpipe pipeline name, e.g. ``training``.
        package: The compiled IR YAML.
        params: Run parameters (the pipeline's defaults apply to the rest).
        version: The code version (a release tag or the git commit); the version is uploaded as
            ``VERSION-<package digest[:8]>`` (:func:`version_name`), or reused if that exists.
        experiment: Experiment name; default ``infra.kfp.experiment``.
        run_name: Run (or recurring run) name; default ``PIPELINE-VERSION``.
        schedule: A cron expression; creates a recurring run instead of one run.
        enable_caching: False runs every task again (``--no-cache``).
        dry_run: Record the calls, send nothing, never build ``kfp.Client``.
        client_factory: Builds the client (tests pass a fake of the external API).
        environ: Environment to read ``KF_PIPELINES_*`` from; default ``os.environ``.

    Returns:
        The plan: every call, and the ids the server returned.

    Raises:
        ConfigError: No endpoint (outside dry-run), unreadable token, missing package, no version or a bad cron.
        SubmitFailed: The server refused a request.
    """
    package = Path(package)
    if not package.is_file():
        raise ConfigError(f"{package}: compiled pipeline not found", hint="Run 'ctpipe compile' first.")
    package_sha256 = file_sha256(package)
    uploaded_name = version_name(version, package_digest(package))
    connection = Connection.from_config(config, environ)
    if not dry_run:
        connection.client_kwargs()  # fail on a missing endpoint or token before anything is sent
    redacted = connection.client_kwargs(redact=True)
    seam = KfpSeam(connection, dry_run=dry_run, client_factory=client_factory)
    kfp_spec = config.infra.kfp
    pipeline_name = f"{kfp_spec.pipeline_prefix}{pipeline}"
    run_params = dict(params or {})
    cron = cron_for_kfp(schedule) if schedule else None

    found = seam.call("get_pipeline_id", name=pipeline_name)
    pipeline_id = str(found) if found else None
    if pipeline_id is None:
        created = seam.call(
            "upload_pipeline",
            note="only when get_pipeline_id finds none" if dry_run else "",
            pipeline_package_path=str(package),
            pipeline_name=pipeline_name,
            description=f"ctpipe {pipeline} pipeline (first uploaded as {uploaded_name})",
            namespace=connection.namespace,
        )
        pipeline_id = _id(created, "pipeline_id", PIPELINE_ID)
        existing_id = None
    else:
        # The same code and configuration were uploaded before (a daily CronJob): reuse that version.
        listed = seam.call(
            "list_pipeline_versions", pipeline_id=pipeline_id, filter=_name_filter(uploaded_name), page_size=1
        )
        versions = getattr(listed, "pipeline_versions", None) or []
        existing_id = _id(versions[0], "pipeline_version_id", "") if versions else None
    if existing_id is not None:
        version_id = existing_id
    else:
        uploaded = seam.call(
            "upload_pipeline_version",
            note="skipped when the pipeline has a version of this name (same code, same package): it is reused"
            if dry_run
            else "",
            pipeline_package_path=str(package),
            pipeline_version_name=uploaded_name,
            pipeline_id=pipeline_id,
            description=f"ctpipe {pipeline} at {version} (package sha256 {package_sha256})",
        )
        version_id = _id(uploaded, "pipeline_version_id", VERSION_ID)
    exp = seam.call(
        "create_experiment",
        note="returns the experiment when it exists",
        name=experiment or kfp_spec.experiment,
        namespace=connection.namespace,
    )
    experiment_id = _id(exp, "experiment_id", EXPERIMENT_ID)
    name = run_name or f"{pipeline}-{version}"
    plan_ids: dict[str, str | None] = {}
    common: dict[str, Any] = {
        "experiment_id": experiment_id,
        "job_name": name,
        "params": run_params,
        "pipeline_id": pipeline_id,
        "version_id": version_id,
        "enable_caching": enable_caching,
    }
    if cron:
        recurring = seam.call(
            "create_recurring_run",
            note=f"cron {schedule!r} as KFP reads it (seconds first)",
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            **common,
        )
        plan_ids["recurring_run_id"] = None if recurring is None else _id(recurring, "recurring_run_id", "")
    else:
        run = seam.call("run_pipeline", **common)
        plan_ids["run_id"] = None if run is None else _id(run, "run_id", "")
    plan = SubmitPlan(
        dry_run=dry_run,
        pipeline=pipeline,
        package=str(package),
        package_sha256=package_sha256,
        version=uploaded_name,
        client=redacted,
        calls=seam.calls,
        pipeline_id=None if dry_run else pipeline_id,
        version_id=None if dry_run else version_id,
        experiment_id=None if dry_run else experiment_id,
        **plan_ids,
    )
    logger.info(
        "submitted" if not dry_run else "dry run planned", extra={"pipeline": pipeline, "calls": len(seam.calls)}
    )
    return plan
