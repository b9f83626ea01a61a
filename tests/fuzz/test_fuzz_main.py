"""The short version of ``make fuzz`` inside ``make test``: 10,000 inputs of the stdlib
engine for every target (tests/fuzz/fuzz_main.py: every parser of wire/, the encrypted-room
readers included, and the relay's readers), and a check that the driver does catch, report
and save a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz import fuzz_main, fuzz_targets

pytestmark = pytest.mark.no_cover

PER_TARGET = 10_000
SHORT_RUNS = PER_TARGET * len(fuzz_targets.TARGETS)


def test_short_fuzz_run_has_no_crash(tmp_path: Path) -> None:
    report = fuzz_main.run_stdlib(SHORT_RUNS, seed=20_000, artifacts=tmp_path)
    print(fuzz_main.format_report(report))
    assert report.ok, fuzz_main.format_report(report)
    assert report.inputs == SHORT_RUNS
    assert set(report.per_target) == set(fuzz_targets.TARGETS)
    for name, figures in report.per_target.items():
        assert figures["inputs"] >= PER_TARGET, name
        assert figures["outcomes"] >= 2, (name, figures)  # it reached past the first check
    assert not list(tmp_path.iterdir())


def test_driver_reports_and_saves_a_crash(tmp_path: Path) -> None:
    def fragile(data: bytes) -> str:
        if b"\xff" in data[:4]:
            raise IndexError("planted")
        return "fine"

    report = fuzz_main.run_stdlib(2_000, seed=3, artifacts=tmp_path,
                                  targets={"fragile": fragile})
    assert not report.ok and report.crash_count > 0
    assert [c.kind for c in report.crashes] == ["IndexError"]  # deduplicated by place
    saved = list(tmp_path.iterdir())
    assert len(saved) == 1 and b"\xff" in saved[0].read_bytes()[:4]
    assert "FAILED" in fuzz_main.format_report(report)
    assert fuzz_main.main(["--engine", "stdlib", "--runs", "900", "--artifacts",
                           str(tmp_path / "none")]) == 0
