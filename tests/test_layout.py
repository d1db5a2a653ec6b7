"""The package's layers: no import cycles, and no module imports one of a layer above its own.

Every import of a ``neuropipe`` or ``schemas`` module is read from the source, at module
level and inside functions alike (an import moved into a function still ties the modules
together; it only hides the cycle until run time).  The one exception is a package's
``__init__`` giving names of its subpackages lazily (``neuropipe.connect``): a facade that
imports on first use, not a dependency of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Lowest first.  A module may import modules of its own layer and of the layers below it.
LAYERS = (
    ("foundations", ("neuropipe", "neuropipe.errors", "neuropipe.config", "neuropipe.store", "neuropipe.compat")),
    ("pure kernels and parameter checks", ("neuropipe.ops", "neuropipe.params")),
    ("reading and writing volumes", ("neuropipe.io",)),
    ("the database", ("neuropipe.database", "neuropipe.embedded")),
    ("what tables are made of", ("neuropipe.provenance", "neuropipe.blockwise", "neuropipe.steps", "neuropipe.cwl")),
    ("workers and pipelines", ("neuropipe.worker", "neuropipe.pipeline")),
    ("what users call", ("neuropipe.session", "neuropipe.sweeps", "neuropipe.reports", "neuropipe.watch",
                         "neuropipe.dashboard")),
    ("the bundled pipeline", ("schemas",)),
    ("applications", ("neuropipe.demo", "neuropipe.scaffold", "neuropipe.cli")),
)


def module_files() -> dict[str, Path]:
    """Return every module of ``neuropipe`` and ``schemas`` by dotted name (a package by its own name)."""
    found = {}
    for package in ("neuropipe", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Return, per module, the project modules it imports (``from package import submodule`` names the submodule)."""
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        graph[name] = set()
        for node, in_function in _import_nodes(ast.parse(path.read_text())):
            if is_package and in_function:
                continue  # a lazy facade
            for target in _targets(node, here, modules):
                if target != name:
                    graph[name].add(target)
    return graph


def _import_nodes(tree, in_function: bool = False):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        yield from _import_nodes(node, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _targets(node, here: str, modules) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    base = node.module or ""
    if node.level:
        anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    if base in modules and len(found) < len(node.names):
        found.append(base)
    return found


def layer_of(module: str) -> int:
    """Return the index of the layer ``module`` belongs to (its longest matching prefix)."""
    best, index = -1, None
    for position, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".") and prefix != "neuropipe") and len(prefix) > best:
                best, index = len(prefix), position
    assert index is not None, f"{module} belongs to no layer: add it to LAYERS in tests/test_layout.py"
    return index


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the groups of more than one module that each reach one another through imports."""
    reach = {node: _reachable(graph, node) for node in graph}
    groups = {tuple(sorted(other for other in reach[node] if node in reach.get(other, ()))) for node in graph}
    return sorted(list(group) for group in groups if len(group) > 1)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for other in graph.get(todo.pop(), ()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def test_no_module_takes_part_in_an_import_cycle():
    assert cycles(imports(module_files())) == []


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
              for module, targets in sorted(imports(module_files()).items()) for target in sorted(targets)
              if layer_of(target) > layer_of(module)]
    assert upward == []


def test_the_checks_see_a_cycle_and_an_upward_import_hidden_in_a_function(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("from pkg.a import f\n")
    modules = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
    assert cycles(imports(modules)) == [["pkg.a", "pkg.b"]]
    (tmp_path / "ops.py").write_text("def f():\n    from neuropipe.worker import loop\n")
    graph = imports({"neuropipe.ops.x": tmp_path / "ops.py", "neuropipe.worker.loop": tmp_path / "b.py"})
    assert graph["neuropipe.ops.x"] == {"neuropipe.worker.loop"}
    assert layer_of("neuropipe.worker.loop") > layer_of("neuropipe.ops.x")
