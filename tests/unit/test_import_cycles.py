"""No import circles in the product packages.

The graph is built with ``ast`` from every ``import`` and ``from ... import`` of the
product's modules: module-level, inside functions, and under ``if TYPE_CHECKING:`` alike
(a circle that only type checking sees is still two modules that each need the other).
An edge goes to the most specific module of this tree that an import names
(``from control import config`` is ``control.config``; ``from control.config import
Config`` is ``control.config``). Any strongly connected set of modules fails the test,
named with one loop through it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wire", "runtime", "control", "relay", "client", "loadgen")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules(root: Path) -> dict[str, Path]:
    """Every module of the product packages, by dotted name."""
    return {module_name(path, root): path
            for package in PACKAGES for path in sorted((root / package).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific module of ``modules`` that ``name`` is or lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(source: str, here: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The product modules that ``source`` (module ``here``) imports, anywhere in it."""
    found: set[str] = set()
    package = here if is_package else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        candidates: list[str] = []
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for candidate in candidates:
            target = _resolve(candidate, modules)
            if target is not None and target != here:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = product_modules(root)
    return {name: imports_of(path.read_text(encoding="utf-8"), name,
                             path.name == "__init__.py", modules)
            for name, path in modules.items()}


def _components(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Tarjan's strongly connected components (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for succ in edges:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    yield sorted(component)


def _loop(graph: dict[str, set[str]], component: Iterable[str]) -> list[str]:
    """One loop through the first module of ``component``, as a path that returns to it."""
    members = set(component)
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError(f"no loop through {start}")  # a component always has one


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop per set of modules that import each other."""
    return [_loop(graph, c) for c in _components(graph) if len(c) > 1]


def test_the_product_has_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    circles = [c for c in _components(graph) if len(c) > 1]
    assert not circles, "import circles:\n" + "\n".join(
        f"{', '.join(c)} (one loop: {' -> '.join(_loop(graph, c))})" for c in circles)


def test_the_graph_sees_the_packages_and_their_imports() -> None:
    graph = import_graph(ROOT)
    assert {"wire.tcrp", "control.server", "relay.worker", "loadgen.meter"} <= set(graph)
    assert "control.registry" in graph["control.server"]


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"control/__init__.py": "", "control/a.py": "from control import b\n",
          "control/b.py": "def f():\n    import control.a\n"},
         [["control.a", "control.b", "control.a"]]),
        ({"control/__init__.py": "", "control/a.py": "from control.b import X\n",
          "control/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from control.a import Y\n"},
         [["control.a", "control.b", "control.a"]]),
        ({"loadgen/__init__.py": "", "loadgen/a.py": "from . import b\n",
          "loadgen/b.py": "from .c import Z\n", "loadgen/c.py": "from .a import W\n"},
         [["loadgen.a", "loadgen.b", "loadgen.c", "loadgen.a"]]),
        ({"control/__init__.py": "", "control/a.py": "from control.b import X\n",
          "control/b.py": "import wire.tcrp\n", "wire/__init__.py": "",
          "wire/tcrp.py": "import json\n"},
         []),
    ],
    ids=["function-level", "type-checking", "relative-three", "none"],
)
def test_cycles_are_found_and_named(tmp_path: Path, files: dict[str, str],
                                    expected: list[list[str]]) -> None:
    assert import_cycles(import_graph(_tree(tmp_path, files))) == expected
