"""The package's imports form a DAG, and the model and pruning layers import nothing above them.

Its own AST walk over ``llava/``: every ``import`` and ``from ... import`` counts, at module level or inside a
function (a function-level import is still an edge: hoisting it must not break the import).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "llava"
LOWER = ("llava.model", "llava.pruning")  # the layers that must not import upward
UPPER = ("llava.eval", "llava.bench", "llava.tools", "llava.analysis")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The ``llava`` modules ``path`` imports (``from pkg import sub`` counts as ``pkg.sub`` when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module importing itself."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def lower_layer_cycles(graph) -> list[list[str]]:
    return [c for c in cycles(graph) if any(m.startswith(LOWER) for m in c)]


def upward_imports(graph) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in graph.items() if m.startswith(LOWER)
                  for t in targets if t.startswith(UPPER))


def test_model_and_pruning_import_no_cycle():
    assert lower_layer_cycles(import_graph()) == []


def test_model_and_pruning_import_nothing_above_them():
    assert upward_imports(import_graph()) == []


def test_the_walk_sees_cycles_and_upward_imports():
    """The checks can fail: a function-level import that closes a loop, and one that reaches into the eval layer."""
    graph = import_graph()
    graph["llava.model.weights"] = graph["llava.model.weights"] | {"llava.model.builder"}
    assert any("llava.model.builder" in c and "llava.model.weights" in c for c in lower_layer_cycles(graph))
    graph["llava.pruning.base"] = graph["llava.pruning.base"] | {"llava.eval.utils"}
    assert ("llava.pruning.base", "llava.eval.utils") in upward_imports(graph)


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from llava.model.builder import load_pretrained_model\n", {"llava.model.builder"}),
    ("from llava.pruning import llm\n", {"llava.pruning", "llava.pruning.llm"}),
    ("from . import base\n", {"llava.pruning", "llava.pruning.base"}),
])
def test_function_level_and_relative_imports_count(tmp_path, source, expected, monkeypatch):
    path = PACKAGE / "pruning" / "fastv.py"
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    assert imports_of(path, modules) == expected
