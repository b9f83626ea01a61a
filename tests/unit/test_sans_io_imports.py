"""The sans-IO modules import no I/O, clock or randomness.

Walks every ``import`` and ``from ... import`` with ``ast`` (nested ones included, so a
lazy import inside a function is caught too). ``wire/`` must also stay a leaf: it imports
nothing from the packages built on top of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = frozenset(
    {
        "asyncio",
        "socket",
        "time",
        "os",
        "random",
        "multiprocessing",
        "selectors",
        "threading",
        "subprocess",
        "secrets",
    }
)
FIRST_PARTY_ABOVE_WIRE = frozenset({"control", "relay", "client", "loadgen"})

WIRE_MODULES = sorted((ROOT / "wire").rglob("*.py"))
CORE_MODULES = [
    ROOT / "control" / "session.py",
    ROOT / "control" / "registry.py",
    ROOT / "relay" / "core.py",
    ROOT / "relay" / "ipc.py",
    ROOT / "runtime" / "records.py",
    ROOT / "client" / "e2e" / "identity.py",
    ROOT / "client" / "e2e" / "chains.py",
    ROOT / "client" / "e2e" / "room.py",
    ROOT / "control" / "clusterlink.py",
]


def imported_modules(source: str) -> set[str]:
    """Every absolute module name ``source`` imports (``from x import y`` gives x and x.y)."""
    tree = ast.parse(source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside its own package
                continue
            assert node.module is not None
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def top_levels(names: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in names}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_wire_modules_found() -> None:
    assert {p.name for p in WIRE_MODULES} >= {
        "__init__.py",
        "codes.py",
        "errors.py",
        "limits.py",
        "tcrp.py",
        "chat.py",
        "stage1.py",
        "tcrp_client.py",
        "names.py",
    }


@pytest.mark.parametrize("path", WIRE_MODULES, ids=rel)
def test_wire_is_sans_io(path: Path) -> None:
    bad = top_levels(imported_modules(path.read_text(encoding="utf-8"))) & FORBIDDEN
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", WIRE_MODULES, ids=rel)
def test_wire_imports_nothing_above_it(path: Path) -> None:
    bad = top_levels(imported_modules(path.read_text(encoding="utf-8"))) & FIRST_PARTY_ABOVE_WIRE
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", CORE_MODULES, ids=rel)
def test_cores_are_sans_io(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{rel(path)} does not exist yet")
    bad = top_levels(imported_modules(path.read_text(encoding="utf-8"))) & FORBIDDEN
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import os", {"os"}),
        ("import os.path as p", {"os"}),
        ("from time import monotonic", {"time"}),
        ("from asyncio.events import get_event_loop", {"asyncio"}),
        ("def f():\n    import socket\n", {"socket"}),
        ("import json, secrets", {"secrets"}),
        ("from . import random", set()),
        ("import timeit, ossaudiodev", set()),
    ],
)
def test_the_walker_itself(source: str, expected: set[str]) -> None:
    assert top_levels(imported_modules(source)) & FORBIDDEN == expected


# --- layering between the packages ------------------------------------------------------------
def _package_modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _first_party(path: Path) -> set[str]:
    return {name for name in imported_modules(path.read_text(encoding="utf-8"))
            if top_levels({name}) & (FIRST_PARTY_ABOVE_WIRE | {"runtime", "wire"})}


@pytest.mark.parametrize("path", _package_modules("relay"), ids=rel)
def test_relay_imports_nothing_from_control_or_loadgen(path: Path) -> None:
    bad = top_levels(_first_party(path)) & {"control", "loadgen", "client"}
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _package_modules("runtime"), ids=rel)
def test_runtime_imports_only_wire(path: Path) -> None:
    bad = top_levels(_first_party(path)) - {"runtime", "wire"}
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _package_modules("loadgen"), ids=rel)
def test_loadgen_does_not_reach_into_the_relay(path: Path) -> None:
    bad = {name for name in _first_party(path) if top_levels({name}) & {"relay", "control"}}
    assert not bad, f"{rel(path)} imports {sorted(bad)}"


def test_layering_packages_found() -> None:
    assert {p.name for p in _package_modules("runtime")} >= {
        "mmsg.py", "sched.py", "sockbuf.py", "logs.py"}
    assert {p.name for p in _package_modules("relay")} >= {"core.py", "worker.py", "ipc.py"}
    assert _package_modules("loadgen")
