"""The ctpipe configuration file: one YAML document validated with pydantic.

``ctpipe.yaml`` at the repository root is the default; ``--config`` names another. The
file is made of the component specs (``components/specs.py`` and, for the ``serving``
section, ``components/serving_spec.py``) plus the infrastructure profile, which says where
MLflow, Feast, Spark, KFP and the images live. Relative paths in the file are resolved
against the file's folder, so the same file works from any working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from components.common import storage
from components.common.environments import EnvironmentsSpec
from components.common.errors import ConfigError
from components.common.validation import read_config_mapping, validation_problems
from components.serving_spec import ServingSpec
from components.specs import (
    DatasetSpec,
    EvaluationSpec,
    FeastSpec,
    ModelSpec,
    MonitoringSpec,
    ScheduleSpec,
    StrictModel,
)

DEFAULT_CONFIG = "ctpipe.yaml"


def package_version() -> str:
    """The installed ctpipe version (``pyproject.toml``'s ``version``); it tags the images."""
    try:
        return metadata.version("ctpipe")
    except metadata.PackageNotFoundError:  # sources on PYTHONPATH without an install
        return "0.0.0"


# An OCI image reference: [registry[:port]/]path[:tag][@sha256:digest] (lower-case path).
_IMAGE_REF = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


def check_image(value: str, key: str = "image") -> str:
    """Validate an image reference (``repo/name:tag``, optionally ``@sha256:<64 hex>``).

    Raises:
        ValueError: The reference is malformed, or has neither a tag nor a digest.
    """
    if not _IMAGE_REF.match(value):
        raise ValueError(
            f"{key}: {value!r} is not an image reference; expected repo/name:tag or repo/name:tag@sha256:<64 hex>"
        )
    last = value.split("@")[0].rsplit("/", 1)[-1]
    if ":" not in last and "@" not in value:
        raise ValueError(f"{key}: {value!r} has no tag or digest; pin it as repo/name:tag[@sha256:...]")
    return value


# The variables a digest-pinned release sets (pipelines/release.py): they replace the default tags.
IMAGE_ENV = {"components": "CTPIPE_IMAGE_COMPONENTS", "serving": "CTPIPE_IMAGE_SERVING"}


class ImagesSpec(StrictModel):
    """Container images; pin by digest in production (``name:tag@sha256:...``).

    The defaults are the one place the image names and tag live: ``containers/`` builds
    these names, and the compiled pipelines refer to them.
    """

    # The one place the tags are set (the package version): `make images` builds exactly these. A release
    # pinned by digest (`python -m pipelines.release pin`) sets the variables in the CronJob that compiles
    # the pipelines, so its tasks and the InferenceService that deploy writes name the pushed digests.
    components: str = Field(
        default_factory=lambda: os.environ.get(IMAGE_ENV["components"]) or f"ctpipe/components:{package_version()}",
        validate_default=True,  # a variable's value is checked like a configured one
        description=f"Image every KFP component runs in; default the {IMAGE_ENV['components']} variable, else "
        "ctpipe/components:<package version>.",
    )
    serving: str = Field(
        default_factory=lambda: os.environ.get(IMAGE_ENV["serving"]) or f"ctpipe/serving:{package_version()}",
        validate_default=True,
        description=f"KServe predictor image; default the {IMAGE_ENV['serving']} variable, else "
        "ctpipe/serving:<package version>.",
    )
    overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Per-component image, by component name (e.g. train: repo/ctpipe-gpu:0.1.0@sha256:...).",
    )

    @field_validator("components", "serving")
    @classmethod
    def _pinned(cls, value: str, info: ValidationInfo) -> str:
        field = str(info.field_name)
        variable = IMAGE_ENV[field]
        return check_image(value, f"{field} (from ${variable})" if os.environ.get(variable) == value else field)

    @field_validator("overrides")
    @classmethod
    def _pinned_overrides(cls, value: dict[str, str]) -> dict[str, str]:
        for name, image in value.items():
            check_image(image, f"overrides.{name}")
        return value

    def for_component(self, name: str) -> str:
        """The image component ``name`` runs in: its override, else ``components``."""
        return self.overrides.get(name, self.components)


class SecretEnv(StrictModel):
    """A Kubernetes secret exposed to component pods as environment variables."""

    secret_name: str = Field(description="Name of the Kubernetes Secret in the run's namespace.")
    env: dict[str, str] = Field(description="Secret key -> environment variable, e.g. {password: MLFLOW_PASSWORD}.")
    components: list[str] = Field(
        default_factory=list, description="Only these components get it (component names); empty means all."
    )


class Toleration(StrictModel):
    """A pod toleration (see the Kubernetes taints and tolerations docs)."""

    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches every taint.")
    operator: Literal["Equal", "Exists"] = Field(default="Equal", description="Equal or Exists.")
    value: str | None = Field(default=None, description="Taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; empty matches every effect."
    )


class PodSettings(StrictModel):
    """Resources and placement of one component's pod; unset fields fall back to ``default``."""

    cpu_request: str | None = Field(default=None, description="CPU request, e.g. '500m' or '2'.")
    cpu_limit: str | None = Field(default=None, description="CPU limit.")
    memory_request: str | None = Field(default=None, description="Memory request, e.g. '1Gi'.")
    memory_limit: str | None = Field(default=None, description="Memory limit.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod must match.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pod tolerates.")

    def merged_over(self, base: PodSettings) -> PodSettings:
        """These settings with every unset field taken from ``base``."""
        values = base.model_dump()
        values.update({k: v for k, v in self.model_dump().items() if v not in (None, {}, [])})
        return PodSettings.model_validate(values)


class KubernetesSpec(StrictModel):
    """Kubernetes settings rendered into the compiled pipelines (kfp-kubernetes platform config)."""

    secrets: list[SecretEnv] = Field(
        default_factory=list, description="Secrets as environment variables (MLflow, object-store credentials)."
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secrets the pods pull private images with."
    )
    default: PodSettings = Field(default_factory=PodSettings, description="Pod settings of every component.")
    components: dict[str, PodSettings] = Field(
        default_factory=dict, description="Per-component pod settings (by component name) over ``default``."
    )

    def pod(self, component: str) -> PodSettings:
        """The effective pod settings of ``component``."""
        own = self.components.get(component)
        return own.merged_over(self.default) if own else self.default


class KfpSpec(StrictModel):
    """How ``ctpipe submit`` talks to Kubeflow Pipelines (the endpoint is ``infra.kfp_host``)."""

    namespace: str | None = Field(default=None, description="Kubeflow profile namespace (multi-user KFP).")
    token_file: str | None = Field(
        default=None,
        description="File holding the bearer token; else KF_PIPELINES_TOKEN_FILE, else the in-cluster token.",
    )
    experiment: str = Field(default="ctpipe", description="Experiment that runs are created in.")
    pipeline_prefix: str = Field(default="ctpipe-", description="Uploaded pipelines are named PREFIX + pipeline.")
    verify_ssl: bool = Field(default=True, description="Verify the endpoint's TLS certificate.")


class InfraSpec(StrictModel):
    """Where the engines live. ``embedded`` runs everything on one machine."""

    profile: Literal["embedded", "cluster"] = Field(
        default="embedded", description="'embedded': one machine, no cluster. 'cluster': KFP, KServe, servers."
    )
    workspace: str = Field(
        default=".workspace",
        description="Local folder for local state: MLflow db, Feast stores, kfp.local outputs, and reports and the "
        "inference log unless infra.reports_dir and serving.inference_log_dir put them elsewhere.",
    )
    pipeline_root: str | None = Field(
        default=None,
        description="Where Kubeflow Pipelines keeps the artifacts of compiled runs, e.g. s3://bucket/pipeline-root "
        "(the IR's defaultPipelineRoot); empty leaves it to the KFP deployment. kfp.local (ctpipe run) always "
        "uses <workspace>/kfp/runs.",
    )
    reports_dir: str | None = Field(
        default=None,
        description="Folder or URI (s3://bucket/reports) the run summary is copied to; empty means "
        "<workspace>/reports.",
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default sqlite:///<workspace>/mlflow.db."
    )
    registry_uri: str | None = Field(default=None, description="MLflow registry URI; default the tracking URI.")
    spark_master: str = Field(default="local[*]", description="Spark master URL, e.g. spark://host:7077.")
    kfp_host: str | None = Field(
        default=None, description="Kubeflow Pipelines API endpoint; else the KF_PIPELINES_ENDPOINT variable."
    )
    kfp: KfpSpec = Field(default_factory=KfpSpec, description="How ctpipe submit reaches Kubeflow Pipelines.")
    images: ImagesSpec = Field(default_factory=ImagesSpec)
    kubernetes: KubernetesSpec = Field(
        default_factory=KubernetesSpec, description="Secrets, resources and placement on the cluster."
    )

    @field_validator("workspace")
    @classmethod
    def _local_workspace(cls, value: str) -> str:
        if storage.is_remote(value):
            raise ValueError(
                f"{storage.redact(value)} is not a local folder: the workspace holds local state (sqlite, Feast's "
                "stores, a server's pid); put object-store locations in dataset.source, infra.pipeline_root, "
                "infra.reports_dir and serving.inference_log_dir"
            )
        return str(storage.local_path(value)) if storage.protocol(value) else value

    @field_validator("pipeline_root", "reports_dir")
    @classmethod
    def _no_credentials(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else storage.check_location(value, str(info.field_name))


class CtpipeConfig(StrictModel):
    """The whole configuration file."""

    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    feast: FeastSpec = Field(default_factory=FeastSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    infra: InfraSpec = Field(default_factory=InfraSpec)
    environments: EnvironmentsSpec = Field(
        default_factory=EnvironmentsSpec,
        description="Environments dev -> staging -> prod: aliases of one registered model, each with its "
        "namespace, kustomize overlay and the gate into it (ctpipe promote --to ENV, ctpipe status).",
    )

    @model_validator(mode="after")
    def _cluster_state_is_shared(self) -> CtpipeConfig:
        """A cluster task has no workspace: every piece of shared state must be somewhere every pod reaches."""
        if self.infra.profile != "cluster":
            return self
        problems = []
        if not self.feast.root:
            problems.append("feast.root is empty; name where every pod reaches the Feast registry (s3://bucket/feast)")
        if self.feast.online_store == "sqlite":
            problems.append("feast.online_store is 'sqlite', a file in one pod; use 'redis'")
        if not self.infra.tracking_uri or self.infra.tracking_uri.startswith("sqlite"):
            problems.append(
                f"infra.tracking_uri is {self.infra.tracking_uri or 'empty (sqlite in the workspace)'}; "
                "name the MLflow server every pod reaches (http://mlflow.NAMESPACE.svc:5000)"
            )
        if problems:
            raise ValueError(
                "infra.profile is 'cluster', where no folder is shared between pods: " + "; ".join(problems)
            )
        return self

    @model_validator(mode="after")
    def _environment_namespace(self) -> CtpipeConfig:
        """A configuration that names its environment deploys into that environment's namespace.

        Only when ``serving.namespace`` is not set: an explicit namespace (or a configuration without
        ``serving.environment``, as every one before environments) keeps what it had.
        """
        env = self.serving.environment
        if env is not None and "namespace" not in self.serving.model_fields_set:
            self.serving.namespace = self.environments.of(env).namespace
            self.serving.model_fields_set.discard("namespace")  # still derived: a re-validation derives it again
        return self

    @property
    def workspace(self) -> Path:
        """Absolute workspace folder."""
        return Path(self.infra.workspace)

    @property
    def task_workspace(self) -> str:
        """The ``workspace`` parameter of the pipelines: the workspace folder, or empty for the cluster profile.

        A cluster task runs in its own pod, where no folder is shared: its shared state is in the
        object store and the servers (``feast.root``, ``infra.tracking_uri``), and its local files
        go to a private temporary folder (:func:`components.common.io.scratch_folder`).
        """
        return "" if self.infra.profile == "cluster" else str(self.workspace)

    @property
    def reports_dir(self) -> str:
        """Where run summaries are copied: ``infra.reports_dir`` (a folder or a URI), else ``<workspace>/reports``."""
        return self.infra.reports_dir or str(self.workspace / "reports")

    @property
    def inference_log_dir(self) -> str:
        """The inference log: ``serving.inference_log_dir`` (a folder or a URI), else ``<workspace>/inference_log``."""
        return self.serving.inference_log_dir or str(self.workspace / "inference_log")

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI, defaulting to sqlite in the workspace."""
        return self.infra.tracking_uri or f"sqlite:///{self.workspace / 'mlflow.db'}"

    def section_hash(self) -> str:
        """Short content hash of the whole config, recorded as lineage on registered models."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    return "\n".join([f"{path}: invalid configuration", *(f"  {line}" for line in validation_problems(exc))])


def _resolve_paths(config: CtpipeConfig, base: Path) -> CtpipeConfig:
    def absolute(value: str) -> str:
        return value if "://" in value or os.path.isabs(value) else str((base / value).resolve())

    config.dataset.source = absolute(config.dataset.source)
    config.infra.workspace = absolute(config.infra.workspace)
    if config.infra.reports_dir:
        config.infra.reports_dir = absolute(config.infra.reports_dir)
    if config.serving.inference_log_dir:
        config.serving.inference_log_dir = absolute(config.serving.inference_log_dir)
    if config.feast.root:
        config.feast.root = absolute(config.feast.root)
    return config


def parse_config(raw: dict[str, Any], base_dir: str | os.PathLike[str] = ".", source: str = "<dict>") -> CtpipeConfig:
    """Validate a configuration mapping and resolve its relative paths against ``base_dir``.

    Raises:
        ConfigError: With one line per wrong key, naming the key and what was expected.
    """
    try:
        config = CtpipeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(Path(source), exc)) from None
    return _resolve_paths(config, Path(base_dir).resolve())


def load_config(path: str | os.PathLike[str] | None = None) -> CtpipeConfig:
    """Load and validate a configuration file.

    Args:
        path: The YAML file; ``ctpipe.yaml`` in the working directory when omitted.

    Returns:
        The validated configuration with absolute paths.

    Raises:
        ConfigError: The file is missing, is not YAML, or has a wrong key, type or value.
    """
    config_path = Path(path or DEFAULT_CONFIG)
    raw = read_config_mapping(config_path, hint="Pass --config PATH.")
    return parse_config(raw, config_path.parent, str(config_path))


def _type_name(annotation: Any) -> str:
    generic = getattr(annotation, "__args__", None)
    text = str(annotation) if generic else getattr(annotation, "__name__", str(annotation))
    for noise in ("typing.", "components.specs.", "components.serving_spec.", "pipelines.config."):
        text = text.replace(noise, "")
    return text.replace("NoneType", "None")


def reference_markdown() -> str:
    """The configuration reference as markdown, generated from the models so it cannot disagree."""
    from pydantic import BaseModel

    lines = [
        "# Configuration reference",
        "",
        "Generated from `pipelines/config.py`, `components/specs.py` and `components/serving_spec.py` "
        "(`python -m pipelines.docgen`); do not edit by hand.",
        "Unknown keys are errors. Relative paths are resolved against the configuration file's folder.",
        "",
    ]

    def section(model: type[BaseModel], prefix: str) -> None:
        rows, nested = [], []
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            annotation = field.annotation
            inner = getattr(annotation, "__args__", (annotation,))
            # A nested model, alone, optional or in a list, gets its own section below.
            sub = next((t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)), None)
            if field.is_required():
                default = "**required**"
            elif field.default_factory is not None:
                default = "see below" if sub else f"`{field.default_factory()!r}`"  # type: ignore[call-arg]
            else:
                default = f"`{field.default!r}`"
            description = (field.description or (sub or model).__doc__ or "").strip().splitlines()[0]
            rows.append(f"| `{key}` | `{_type_name(annotation)}` | {default} | {description} |")
            if sub:
                nested.append((sub, f"{key}."))
        lines.extend(
            [f"## `{prefix.rstrip('.') or 'top level'}`", "", (model.__doc__ or "").strip().splitlines()[0], ""]
        )
        lines.extend(["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for sub_model, sub_prefix in nested:
            section(sub_model, sub_prefix)

    section(CtpipeConfig, "")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(reference_markdown(), end="")
