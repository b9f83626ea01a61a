"""The optional C extensions (setup.py): built where ``make test`` requires them, and each
one's Python side falls back cleanly where it was not."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(ROOT.glob("*/_*.c"))
"""By convention ``<package>/_<name>.c`` builds the module ``<package>._<name>``."""


def test_there_is_an_extension() -> None:
    assert ROOT / "loadgen" / "_account.c" in SOURCES


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: f"{p.parent.name}.{p.stem}")
def test_every_extension_was_built_where_required(source: Path) -> None:
    """``make test`` sets OCM_REQUIRE_EXTENSIONS=1: its bootstrap (pip install -e .) must
    have compiled every extension, not silently fallen back to Python."""
    if os.environ.get("OCM_REQUIRE_EXTENSIONS") != "1":
        pytest.skip("OCM_REQUIRE_EXTENSIONS is not set")
    module = importlib.import_module(f"{source.parent.name}.{source.stem}")
    assert module.__file__ is not None and not module.__file__.endswith(".py")


def test_the_loadgen_accounting_falls_back_without_its_extension() -> None:
    code = ("import sys; sys.modules['loadgen._account'] = None\n"
            "from loadgen import fastpath\n"
            "print(fastpath.choose('auto')); print(fastpath.resolve('c'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    auto, c = done.stdout.splitlines()
    assert auto.startswith("('python', 'deliveries accounted in Python (slower): the C "
                           "extension loadgen._account was not built")
    assert c.startswith("the C extension loadgen._account was not built")


def test_the_relay_hot_loop_falls_back_without_its_extension() -> None:
    code = ("import sys; sys.modules['relay._hot'] = None\n"
            "from relay import hot\n"
            "print(hot.choose('auto'))\n"
            "try:\n    hot.choose('compiled')\nexcept hot.Unavailable as exc:\n    print(exc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    auto, compiled = done.stdout.splitlines()
    assert auto == ("(None, 'pure Python (the C extension relay._hot was not built when ocm "
                    "was installed (no C compiler, Python headers or OpenSSL 3 headers "
                    "(libssl-dev) then, or OCM_PURE_PYTHON=1); reinstall with them to use "
                    "it)')")
    assert compiled.startswith("the C extension relay._hot was not built")
