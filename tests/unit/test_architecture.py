"""Imports run one way: components <- serving <- pipelines, and steps do not import sibling steps.

The rules are the ones ``docs/architecture.md`` draws. Every import counts, including those
inside functions (an import there still makes one package depend on the other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "serving", "pipelines")
# components/ modules that are shared by everyone (not steps): the rest of components/ are steps.
SHARED = ("components.common", "components.specs", "components.serving_spec")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str) -> set[str]:
    """Every module ``source`` imports (absolute, or relative resolved against ``module``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from components import register`` imports the module components.register.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _step_of(name: str) -> str | None:
    """``components.train`` for any module of the step ``train``; None for shared modules."""
    if not _within(name, "components") or any(_within(name, shared) for shared in SHARED):
        return None
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else None


def violations(module: str, imported: set[str]) -> list[str]:
    """The imports of ``module`` that break the direction rules, as readable sentences."""
    problems = []
    for name in sorted(imported):
        if _within(module, "components"):
            if _within(name, "serving") or _within(name, "pipelines"):
                problems.append(f"{module} imports {name}: components/ must not import serving/ or pipelines/")
            step, target = _step_of(module), _step_of(name)
            if target is not None and target != step:
                owner = "a shared module" if step is None else f"the step {step}"
                problems.append(
                    f"{module} imports {name}: {owner} must not import the step {target}; "
                    "move what both need into components/common/"
                )
        elif _within(module, "serving"):
            if _within(name, "pipelines"):
                problems.append(f"{module} imports {name}: serving/ must not import pipelines/")
            if _within(name, "components") and name != "components" and _step_of(name) is not None:
                problems.append(
                    f"{module} imports {name}: serving/ may use only components.common and the specs "
                    "(components.specs, components.serving_spec)"
                )
    return problems


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (REPO_ROOT / package).rglob("*.py"))


def test_imports_run_one_way() -> None:
    problems = []
    for path in _sources():
        module = _module_name(path)
        problems += violations(module, imports_of(path.read_text(), module))
    assert not problems, "\n".join(problems)


def test_the_check_sees_all_packages() -> None:
    modules = {_module_name(path) for path in _sources()}
    assert {"components.train", "components.common.registry", "serving.model", "pipelines.cli"} <= modules


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("components.deploy", "from serving.server import serve", "components/ must not import serving/"),
        ("components.deploy", "def f():\n    import serving.model\n", "components/ must not import serving/"),
        ("components.common.io", "from pipelines.config import load_config", "must not import serving/ or pipelines/"),
        ("components.evaluate", "from components.train import prepare_features", "must not import the step"),
        ("components.canary_analysis", "from components import register", "must not import the step"),
        ("components.common.tracking", "from components.train import train", "a shared module must not import"),
        ("serving.model", "from components.fetch_features import build_training_set", "only components.common"),
        ("serving.server", "from pipelines.runner import run_pipeline", "serving/ must not import pipelines/"),
    ],
)
def test_the_check_refuses_each_wrong_direction(module: str, source: str, expected: str) -> None:
    problems = violations(module, imports_of(source, module))
    assert problems and expected in problems[0]


@pytest.mark.parametrize(
    ("module", "source"),
    [
        (
            "components.train",
            "from components.common.registry import FEATURES_TAG\nfrom components.specs import ModelSpec",
        ),
        ("components.train", "from components.train import helper"),
        ("serving.model", "from components.common.feast import online_features\nfrom serving.decoding import describe"),
        ("pipelines.cli", "from serving import server\nfrom components.register import register"),
    ],
)
def test_the_check_allows_the_right_direction(module: str, source: str) -> None:
    assert violations(module, imports_of(source, module)) == []
