"""The package's structure: no import cycles among its modules, the imports inside functions included
(an import deferred to call time is still a dependency, and a cycle through one is still a tangle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "trainables", "search_spaces")


def module_imports() -> dict[str, set[str]]:
    """{module: the package modules it imports anywhere in its body}."""
    files = {(f"{pkg}.{f.stem}" if f.stem != "__init__" else pkg): f for pkg in PACKAGES
             for f in (ROOT / pkg).glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_the_package_modules():
    graph = module_imports()
    assert {"orchestrator.analysis", "orchestrator.plots", "trainables.trainer", "trainables.trial"} <= set(graph)
    assert cycles(graph) == [], "import cycles (break them by moving what both sides need into one module)"


def test_configs_and_preflight_do_not_import_the_trainer():
    """Loading and checking a config is cheap: TRL and the trial's code are imported only when a trial runs."""
    code = ("import sys, orchestrator.config, orchestrator.preflight, orchestrator.cli; "
            "print(sorted(m for m in ('trl', 'transformers', 'trainables.trainer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
