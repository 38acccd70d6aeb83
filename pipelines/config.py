"""The ctpipe configuration file: one YAML document validated with pydantic.

``ctpipe.yaml`` at the repository root is the default; ``--config`` names another. The
file is made of the component specs (``components/specs.py``) plus the infrastructure
profile, which says where MLflow, Feast, Spark, KFP and the images live. Relative paths
in the file are resolved against the file's folder, so the same file works from any
working directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from components.common.errors import ConfigError
from components.specs import (
    DatasetSpec,
    EvaluationSpec,
    FeastSpec,
    ModelSpec,
    MonitoringSpec,
    ServingSpec,
    StrictModel,
)

DEFAULT_CONFIG = "ctpipe.yaml"


def package_version() -> str:
    """The installed ctpipe version (``pyproject.toml``'s ``version``); it tags the images."""
    try:
        return metadata.version("ctpipe")
    except metadata.PackageNotFoundError:  # sources on PYTHONPATH without an install
        return "0.0.0"


class ImagesSpec(StrictModel):
    """Container images; pin by digest in production (``name:tag@sha256:...``)."""

    # The one place the tags are set (the package version): `make images` builds exactly these.
    components: str = Field(
        default=f"ctpipe/components:{package_version()}", description="Image every KFP component runs in."
    )
    serving: str = Field(default=f"ctpipe/serving:{package_version()}", description="KServe predictor image.")


class InfraSpec(StrictModel):
    """Where the engines live. ``embedded`` runs everything on one machine."""

    profile: Literal["embedded", "cluster"] = Field(
        default="embedded", description="'embedded': one machine, no cluster. 'cluster': KFP, KServe, servers."
    )
    workspace: str = Field(
        default=".workspace", description="Folder for local state: MLflow db, Feast stores, reports, outputs."
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default sqlite:///<workspace>/mlflow.db."
    )
    registry_uri: str | None = Field(default=None, description="MLflow registry URI; default the tracking URI.")
    spark_master: str = Field(default="local[*]", description="Spark master URL, e.g. spark://host:7077.")
    kfp_host: str | None = Field(default=None, description="Kubeflow Pipelines API endpoint (cluster profile).")
    images: ImagesSpec = Field(default_factory=ImagesSpec)


class CtpipeConfig(StrictModel):
    """The whole configuration file."""

    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    feast: FeastSpec = Field(default_factory=FeastSpec)
    infra: InfraSpec = Field(default_factory=InfraSpec)

    @property
    def workspace(self) -> Path:
        """Absolute workspace folder."""
        return Path(self.infra.workspace)

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI, defaulting to sqlite in the workspace."""
        return self.infra.tracking_uri or f"sqlite:///{self.workspace / 'mlflow.db'}"

    def section_hash(self) -> str:
        """Short content hash of the whole config, recorded as lineage on registered models."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check its spelling)")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            found = err.get("input")
            found_text = "" if isinstance(found, dict) else f" (found {found!r})"
            lines.append(f"  {key}: {err['msg']}{found_text}")
    return "\n".join(lines)


def _resolve_paths(config: CtpipeConfig, base: Path) -> CtpipeConfig:
    def absolute(value: str) -> str:
        return value if "://" in value or os.path.isabs(value) else str((base / value).resolve())

    config.dataset.source = absolute(config.dataset.source)
    config.infra.workspace = absolute(config.infra.workspace)
    config.feast.repo_path = absolute(config.feast.repo_path)
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
    if not config_path.is_file():
        raise ConfigError(f"{config_path}: configuration file not found", hint="Pass --config PATH.")
    try:
        raw = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping at the top level, found {type(raw).__name__}")
    return parse_config(raw, config_path.parent, str(config_path))


def _type_name(annotation: Any) -> str:
    generic = getattr(annotation, "__args__", None)
    text = str(annotation) if generic else getattr(annotation, "__name__", str(annotation))
    for noise in ("typing.", "components.specs.", "pipelines.config."):
        text = text.replace(noise, "")
    return text.replace("NoneType", "None")


def reference_markdown() -> str:
    """The configuration reference as markdown, generated from the models so it cannot disagree."""
    from pydantic import BaseModel

    lines = [
        "# Configuration reference",
        "",
        "Generated from `pipelines/config.py` and `components/specs.py` "
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
