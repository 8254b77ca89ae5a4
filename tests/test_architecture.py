"""The house: imports between floatlab's packages run one way (no circles), and the numerics
know nothing of networks, screens or reports.

Every ``import`` in every module counts, the ones inside functions too (a lazy import is still
a dependency). A module is mapped to its package (``floatlab.plain.block`` -> ``plain``); the
top-level modules (``rounding``, ``cache``) are packages of their own; ``__main__`` modules are
command lines that nothing imports and do not count. ``import floatlab`` and
``from floatlab import quantize`` reach the public facade, which counts as the package that
defines the name (``ops`` for ``quantize``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import floatlab

ROOT = Path(floatlab.__file__).parent

# the numerics: formats and their rounding, reference path, kernels, packed tensors, entry points
NUMERICS = {"rounding", "formats", "reference", "plain", "kernels", "tensor", "ops"}
# what the numerics may never import: networks, models, training, reports, screens
OUTSIDE_NUMERICS = {"nn", "ptq", "models", "train", "eval", "cli", "bench"}


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "floatlab":
        return None
    if len(parts) == 1:
        return ""          # the facade itself
    return parts[1].removesuffix(".py")


def _facade_names() -> dict[str, str]:
    """Public name -> package it comes from, read from floatlab/__init__.py."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("floatlab."):
            for alias in node.names:
                names[alias.asname or alias.name] = _package(node.module)
    return names


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """package -> the floatlab packages it imports (itself excluded)."""
    facade = _facade_names()
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        pkg = _package(module)
        if pkg == "" or path.name == "__main__.py":
            continue                       # the facade re-exports everything by design; a
                                           # __main__ is a command line that nothing imports
        edges = graph.setdefault(pkg, set())
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:             # relative import: resolve against this module
                    base = module.split(".")
                    if not path.name == "__init__.py":
                        base = base[:-1]
                    base = base[: len(base) - node.level + 1]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                elif node.module == "floatlab":
                    targets = [f"floatlab.{facade[a.name]}" if facade.get(a.name) else "floatlab"
                               for a in node.names]
                elif node.module:
                    targets = [node.module]
            for t in targets:
                if t == "floatlab":        # `import floatlab`: the facade, i.e. the entry points
                    edges.add("ops")
                    continue
                dep = _package(t)
                if dep and dep != pkg:
                    edges.add(dep)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_circle_among_packages():
    graph = import_graph()
    assert {"formats", "plain", "kernels", "ops", "tensor"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_formats_know_nothing_of_ops():
    graph = import_graph()
    assert graph["formats"] <= {"rounding"}, graph["formats"]
    assert "ops" not in graph["plain"] and "kernels" not in graph["plain"], graph["plain"]
    assert "ops" not in graph["kernels"], graph["kernels"]


def test_numerics_know_nothing_of_networks_screens_or_reports():
    graph = import_graph()
    for pkg in NUMERICS:
        bad = graph.get(pkg, set()) & OUTSIDE_NUMERICS
        assert not bad, f"{pkg} imports {sorted(bad)}"
