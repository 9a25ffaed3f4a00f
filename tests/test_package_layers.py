"""The package's layers point one way, with no import cycle anywhere, hidden function-level
imports included (only `if TYPE_CHECKING:` blocks, which never run, are exempt).

Bottom to top: config → data → priors → model → evaluate/tracking → train/predict → tune/rollout
(the jobs in jobs/ sit above all of them). A module may import its own layer or any below it.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import atomray

ROOT = Path(atomray.__file__).resolve().parent
# (layer, module-name prefixes), bottom first; the longest matching prefix decides
LAYERS = [
    ("config", ["atomray.config_ranges", "atomray.config", "atomray.elements", "atomray.storage", "atomray.outputs",
                "atomray.metrics", "atomray.threads"]),
    ("data", ["atomray.data", "atomray.tg80"]),
    ("priors", ["atomray.priors", "atomray.structure"]),
    ("model", ["atomray.model", "atomray.checkpoint", "atomray.mlflow_model"]),
    ("evaluate", ["atomray.equivariance", "atomray.evaluate", "atomray.tracking", "atomray.report"]),
    ("train", ["atomray.train", "atomray.predict"]),
    ("tune", ["atomray.tune", "atomray.rollout", "atomray.rollout_check", "atomray.proton_hops", "atomray.rotor_turns", "atomray.metropolis"]),
]


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Every atomray module `path` imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n not in (name, "atomray"):
                found.add(n)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def layer_of(name: str) -> int:
    best, layer = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), index
    if layer is None:
        raise AssertionError(f"{name} belongs to no layer of tests/test_package_layers.py")
    return layer


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(path, name, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer():
    for name in modules():
        if name not in ("atomray",):
            layer_of(name)


def test_no_module_imports_a_layer_above_its_own():
    wrong = []
    for name, deps in graph().items():
        if name == "atomray":  # the package's lazy re-exports (PEP 562) import nothing at import time
            continue
        for dep in deps:
            if layer_of(dep) > layer_of(name):
                wrong.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not wrong, "upward imports:\n" + "\n".join(sorted(wrong))


def test_the_import_graph_has_no_cycle():
    g = {name: deps - {"atomray"} for name, deps in graph().items()}
    # a package imports its own submodules (re-exports): its submodules importing the package
    # __init__ is the same module set, so collapse "pkg" edges from its children
    for name in g:
        g[name] = {d for d in g[name] if not name.startswith(d + ".")}
    try:
        list(TopologicalSorter(g).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_the_check_sees_hidden_imports_and_skips_type_checking_blocks(tmp_path):
    """The parser must catch an import inside a function (and ignore TYPE_CHECKING)."""
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from atomray.config import RunConfig\n"
              "def f():\n    from atomray.tune.cv import run_cv\n")
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = imported(path, "atomray.probe", set(modules()))
    assert "atomray.tune.cv" in found and "atomray.config" not in found
