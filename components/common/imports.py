"""The one way ctpipe turns a dotted path from the config into a Python object.

Config as code is code execution: importing a module runs it, and a config that could name
``os.system`` as its estimator would run a shell command inside the training pod. So a path is
checked against a list of allowed module prefixes *before* anything is imported, and the
imported object is checked for the kind the config key asks for (an estimator class, a metric
function).

Allowed prefixes are ``sklearn.``, ``xgboost.`` and ``lightgbm.`` (metrics: ``sklearn.metrics.``)
plus those in the ``CTPIPE_ALLOWED_MODULES`` environment variable (comma-separated, each ending
in ``.``): baked into the image (``ENV``) or set on the tasks when the pipeline is compiled.
It is never read from the config file or a run parameter, so whoever starts a run cannot widen
the list. See ``docs/security.md``.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

from components.common.errors import ConfigError

#: Environment variable with extra allowed module prefixes, e.g. ``mycompany.models.,catboost.``.
ALLOWED_MODULES_ENV = "CTPIPE_ALLOWED_MODULES"
#: Modules an estimator may come from without any setting.
ESTIMATOR_PREFIXES: tuple[str, ...] = ("sklearn.", "xgboost.", "lightgbm.")
#: Modules a metric may come from without any setting.
METRIC_PREFIXES: tuple[str, ...] = ("sklearn.metrics.",)

_HINT = (
    f"Name a class or function under an allowed module, or add a module prefix (ending in '.') to the "
    f"{ALLOWED_MODULES_ENV} environment variable of the image, or of the machine that compiles the pipeline; "
    "see docs/security.md."
)


def extra_prefixes() -> tuple[str, ...]:
    """Prefixes added by ``CTPIPE_ALLOWED_MODULES`` (comma-separated, each ending in ``.``).

    Raises:
        ConfigError: A prefix is not a dotted module path ending in ``.``.
    """
    raw = os.environ.get(ALLOWED_MODULES_ENV, "")
    prefixes: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if not item.endswith(".") or not _valid_dotted(item[:-1]):
            raise ConfigError(
                f"{ALLOWED_MODULES_ENV} entry {item!r} is not a module prefix such as 'mycompany.models.'",
                hint="Use comma-separated dotted module paths, each ending in '.'.",
            )
        prefixes.append(item)
    return tuple(prefixes)


def allowed_prefixes(defaults: tuple[str, ...] = ESTIMATOR_PREFIXES) -> tuple[str, ...]:
    """``defaults`` plus the prefixes of ``CTPIPE_ALLOWED_MODULES``."""
    return (*defaults, *(p for p in extra_prefixes() if p not in defaults))


def _valid_dotted(path: str) -> bool:
    parts = path.split(".")
    return bool(path) and all(part.isidentifier() for part in parts)


def check_path(path: str, key: str, prefixes: tuple[str, ...]) -> None:
    """Refuse ``path`` unless it is a plain dotted path under one of ``prefixes``; imports nothing.

    Raises:
        ConfigError: Naming ``key``, the value and the allowed prefixes.
    """
    if not isinstance(path, str) or not _valid_dotted(path) or "." not in path:
        raise ConfigError(
            f"{key}: {path!r} is not a dotted import path such as 'sklearn.linear_model.LogisticRegression'",
            hint=_HINT,
        )
    if not path.startswith(prefixes):
        raise ConfigError(
            f"{key}: {path!r} is not under an allowed module; allowed prefixes: {', '.join(prefixes)}",
            hint=_HINT,
        )


def import_allowed(path: str, key: str, prefixes: tuple[str, ...] | None = None) -> Any:
    """Check ``path`` against the allowed prefixes, then import it and return the attribute.

    Args:
        path: Dotted path ``package.module.Name``.
        key: The config key that names it, for error messages (``model.estimator``).
        prefixes: Allowed prefixes; default the estimator prefixes plus ``CTPIPE_ALLOWED_MODULES``.

    Raises:
        ConfigError: The path is not allowed, or the module or attribute does not exist.
    """
    prefixes = allowed_prefixes() if prefixes is None else prefixes
    check_path(path, key, prefixes)
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import module {module_name!r} (from {path!r}): {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}") from exc


def is_estimator_class(obj: Any) -> bool:
    """A class following scikit-learn's estimator protocol (``fit``, ``get_params``, ``set_params``)."""
    if not inspect.isclass(obj):
        return False
    try:
        from sklearn.base import BaseEstimator

        if issubclass(obj, BaseEstimator):
            return True
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        pass
    return all(callable(getattr(obj, name, None)) for name in ("fit", "get_params", "set_params"))


def import_estimator(path: str, key: str = "model.estimator") -> type:
    """The estimator class at ``path``: allowed prefix checked first, then the class checked.

    Raises:
        ConfigError: The path is not allowed or not importable, or it is not a scikit-learn estimator class.
    """
    obj = import_allowed(path, key, allowed_prefixes(ESTIMATOR_PREFIXES))
    if not is_estimator_class(obj):
        raise ConfigError(
            f"{key}: {path!r} is not a scikit-learn estimator class (a class with fit, get_params and "
            f"set_params); found {obj!r}",
            hint=_HINT,
        )
    return obj


def import_metric(path: str, key: str = "evaluation.metrics.name") -> Any:
    """The metric function at ``path`` (under ``sklearn.metrics.`` or an added prefix).

    Raises:
        ConfigError: The path is not allowed or not importable, or it is not a function.
    """
    obj = import_allowed(path, key, allowed_prefixes(METRIC_PREFIXES))
    if not (inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        raise ConfigError(
            f"{key}: {path!r} is not a metric function; found {obj!r}",
            hint=_HINT,
        )
    return obj


__all__ = [
    "ALLOWED_MODULES_ENV",
    "ESTIMATOR_PREFIXES",
    "METRIC_PREFIXES",
    "allowed_prefixes",
    "check_path",
    "extra_prefixes",
    "import_allowed",
    "import_estimator",
    "import_metric",
    "is_estimator_class",
]
