"""The builder's modules import one another in one direction only: plan -> simulate ->
cluster -> build, and no import inside `atomray.tg80` (at module or function level) closes
a cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import atomray.tg80

PACKAGE = "atomray.tg80"
ROOT = Path(atomray.tg80.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every `atomray.tg80` submodule a file imports anywhere (module level or in a function)."""
    modules = {p.stem for p in ROOT.glob("*.py") if p.stem != "__init__"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                base = ".".join([PACKAGE] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE + "."):
                sub = name[len(PACKAGE) + 1:].split(".")[0]
                if sub in modules:
                    found.add(sub)
    return found


def import_graph() -> dict[str, set[str]]:
    return {p.stem: imported_modules(p) - {p.stem} for p in sorted(ROOT.glob("*.py")) if p.stem != "__init__"}


def test_tg80_imports_have_no_cycle():
    graph = import_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle in {PACKAGE}: {err.args[1]}") from None
    assert set(order) == set(graph)


def test_build_layers_point_one_way():
    graph = import_graph()
    layers = ["plan", "simulate", "cluster", "build"]
    for i, module in enumerate(layers):
        above = set(layers[i + 1:])
        assert not graph[module] & above, f"{module} imports a layer above it: {sorted(graph[module] & above)}"
    assert {"simulate"} <= graph["cluster"] and {"cluster", "simulate", "plan"} <= graph["build"]


def test_modules_stay_small():
    long = {p.name: n for p in ROOT.glob("*.py") if (n := len(p.read_text().splitlines())) >= 500}
    assert not long, f"modules of 500+ lines: {long}"
