"""Reading ctpipe configuration files, and pydantic validation errors as one line per wrong key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from components.common.errors import ConfigError
from components.common.storage import redact


def read_config_mapping(path: Path, hint: str = "") -> dict[str, Any]:
    """The top-level mapping of a YAML configuration file (a ``ctpipe.yaml``).

    Raises:
        ConfigError: The file is missing (with ``hint``), is not YAML, or is not a mapping.
    """
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found", hint=hint)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (a ctpipe.yaml), found {type(raw).__name__}")
    return raw


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``key: problem`` per error, the key dotted as the user wrote it (after ``prefix``).

    An unknown key says to check its spelling, a missing one that it is required; any other error
    carries pydantic's message and the value found, unless the message names it already. A value
    that is a location is redacted: a location with credentials is refused, and the message must
    not repeat them.
    """
    problems = []
    for err in exc.errors():
        key = ".".join([*([prefix] if prefix else []), *(str(part) for part in err["loc"])]) or "<root>"
        if err["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key (check its spelling)")
        elif err["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        else:
            found = err.get("input")
            said = isinstance(found, dict) or f"found {found!r}" in err["msg"]  # the message names it already
            shown = redact(found) if isinstance(found, str) else found
            problems.append(f"{key}: {err['msg']}" + ("" if said else f" (found {shown!r})"))
    return problems
