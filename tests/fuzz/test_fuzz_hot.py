"""A short run of the differential fuzz target (tests/fuzz/fuzz_hot.py) on an ASan/UBSan
build of relay/_hot.c: built into a temporary directory, run in a child process with the
compiler's libasan preloaded, so that a memory error or undefined behaviour in the
compiled loop fails ``make test`` as a difference from Python does. ``make fuzz-hot`` is
the long run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import fuzz_hot

STEPS = 1500
SEED = 20


def test_the_sanitized_compiled_loop_agrees_with_python(tmp_path: Path) -> None:
    cc = fuzz_hot.compiler()
    if cc is None:
        pytest.skip("no C compiler ($CC, gcc or cc): the sanitized extension cannot be built")
    package = fuzz_hot.build_sanitized(tmp_path)
    env = fuzz_hot.sanitizer_env(cc)
    assert Path(env["LD_PRELOAD"]).name.startswith("libasan")
    child = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_hot", "--steps", str(STEPS), "--seed",
         str(SEED), "--hot-dir", str(package)],
        cwd=fuzz_hot.ROOT, env=env, capture_output=True, text=True, timeout=240)
    report = child.stdout + child.stderr
    assert child.returncode == 0, report[-4000:]
    assert f"extension {package}" in report  # the sanitized build ran, not the installed one
    assert f"{STEPS} steps agreed" in report
