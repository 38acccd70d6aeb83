"""What importing a component module costs a pipeline task's start-up.

kfp.local starts one Python process per task, and so does Kubeflow (one pod). The steps that run on
every re-run (``register``, ``infra_validate`` and ``deploy`` finding nothing to do, the source
fingerprint, the exit handler's ``notify``) must start without MLflow, scikit-learn or pandas: they
import those inside the functions that need them. Each module is imported in a fresh interpreter
with ``python -X importtime``, and the test reads which packages that loaded (by name, which does
not flake). The seconds it takes are measured in the pipeline-cache benchmark, not here.
"""

from __future__ import annotations

import ast
import dataclasses

import pytest

from tests.importtime import ROOT, import_report, parse_importtime

_DATA = frozenset({"numpy", "pandas", "pyarrow", "cloudpickle"})  # pandas brings the others
# What importing each module may load. Empty: a light module, imported by tasks that run on every
# re-run. The others load what their step's work needs, and nothing more (MLflow stays inside the
# functions everywhere). The specs are light too: every task reads one, so components.common.storage
# and components.common.io import pandas only in the functions that read or write a table.
ALLOWED: dict[str, frozenset[str]] = {
    "components.register": frozenset(),
    "components.infra_validate": frozenset(),
    "components.deploy": frozenset(),
    "components.ingest": frozenset(),
    "components.notify": frozenset(),
    "components.common.registry": frozenset(),
    "components.common.registry_state": frozenset(),
    "components.common.skips": frozenset(),
    "components.common.process_lifetime": frozenset(),
    "components.common.tracking": frozenset(),
    "components.common.storage": frozenset(),
    "components.specs": frozenset(),
    "components.serving_spec": frozenset(),
    "components.validate": _DATA,
    "components.fetch_features": _DATA,
    "components.evaluate": _DATA,
    "components.batch_predict": _DATA,
    "components.train": _DATA | {"sklearn", "scipy"},
    "components.monitor": _DATA | {"scipy"},
    "components.canary_analysis": _DATA | {"scipy", "requests", "yaml"},
}


def test_every_component_module_has_a_budget() -> None:
    steps = {f"components.{path.stem}" for path in (ROOT / "components").glob("*.py") if path.stem != "__init__"}
    assert steps <= set(ALLOWED), f"give these modules an entry in ALLOWED: {steps - set(ALLOWED)}"


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_importing_a_component_module_loads_only_what_its_step_needs(module: str) -> None:
    report = import_report(f"import {module}")
    extra = {package: importer for package, importer in report.heavy.items() if package not in ALLOWED[module]}
    assert not extra, (
        f"importing {module} loads {sorted(extra)} (first imported by {extra}); import them inside the "
        "functions that need them, so a task that does not need them starts without them"
    )


def test_the_check_sees_a_heavy_import_and_who_made_it() -> None:
    # As if someone put `import pandas` at the top of a light module.
    report = import_report("import components.common.skips\nimport pandas")
    assert report.heavy["pandas"] == "the statement itself"
    assert report.heavy["numpy"].startswith("pandas")  # numpy comes in through pandas
    # mlflow's own submodules do not count as its importer: the ctpipe module that imported it does.
    nested = parse_importtime(
        "import time: self [us] | cumulative | imported package\n"
        "import time:       900 |        900 |     mlflow.tracking\n"
        "import time:      1000 |       1900 |   mlflow\n"
        "import time:      2000 |       3900 | components.register\n"
    )
    assert nested.heavy == {"mlflow": "components.register"}
    assert nested.own_seconds == pytest.approx(0.002)


def _wrappers() -> list[tuple[str, ast.FunctionDef]]:
    """Every task wrapper of ``Components``, with the module it is defined in."""
    from pipelines.kfp_components import Components

    wanted = {field.name for field in dataclasses.fields(Components)}
    found: list[tuple[str, ast.FunctionDef]] = []
    for module in ("kfp_components", "kfp_rollout_components"):
        tree = ast.parse((ROOT / "pipelines" / f"{module}.py").read_text())
        found += [(module, node) for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    missing = wanted - {node.name for _, node in found}
    assert not missing, f"wrappers not found in pipelines/kfp_*components.py: {missing}"
    return found


def _calls_to(body: list[ast.stmt], name: str) -> list[int]:
    """Where in ``body`` a statement is a bare call of ``name()``."""
    return [
        i
        for i, statement in enumerate(body)
        if isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and getattr(statement.value.func, "id", "") == name
    ]


def test_every_task_wrapper_collects_rarely_from_its_first_statement_on() -> None:
    # A task's imports are most of its start-up, and the collector's default thresholds make them a
    # third slower (components.common.process_lifetime): nothing may be imported before the call.
    early = []
    for module, node in _wrappers():
        body = node.body[1:] if ast.get_docstring(node) else node.body
        calls = _calls_to(body, "collect_rarely")
        before = body[: calls[0]] if calls else body
        imports_first = [
            s for s in before if not (isinstance(s, ast.ImportFrom) and s.names[0].name == "collect_rarely")
        ]
        if not calls or imports_first:
            early.append(f"pipelines/{module}.py: {node.name}")
    assert not early, f"these wrappers do not start with collect_rarely(): {early}"


def test_every_task_wrapper_freezes_the_heap_right_before_it_returns() -> None:
    # The exit of a process that imported MLflow, scikit-learn or Great Expectations walks every live
    # object (components.common.process_lifetime): seconds per task, for nothing. So each wrapper calls
    # freeze_for_exit() once in its body, and after that call come only its returns.
    late = []
    for module, node in _wrappers():
        calls = _calls_to(node.body, "freeze_for_exit")
        tail = node.body[calls[-1] + 1 :] if calls else []
        if not calls or not tail or not all(_only_returns(statement) for statement in tail):
            late.append(f"pipelines/{module}.py: {node.name}")
        elif sum(isinstance(n, ast.Return) for n in ast.walk(node)) != sum(
            isinstance(n, ast.Return) for statement in tail for n in ast.walk(statement)
        ):
            late.append(f"pipelines/{module}.py: {node.name} (returns before freeze_for_exit())")
    assert not late, f"these wrappers do not end with freeze_for_exit() and then their returns: {late}"


def _only_returns(statement: ast.stmt) -> bool:
    """A ``return``, or an ``if`` whose branches hold nothing but returns."""
    if isinstance(statement, ast.Return):
        return True
    return isinstance(statement, ast.If) and all(_only_returns(s) for s in [*statement.body, *statement.orelse])
