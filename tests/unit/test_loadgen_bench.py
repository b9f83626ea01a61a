"""make bench: its section of docs/benchmarks.md (only its own, rewritten)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.bench import capacity as bench
from tests.bench.capacity import SECTION, replace_section

MINE = f"{SECTION}\n\nnew figures\n"


def test_appends_to_an_empty_or_missing_file() -> None:
    assert replace_section("", MINE) == f"# Benchmarks\n\n{MINE}"


def test_keeps_other_sections_before_and_after() -> None:
    old = ("# Benchmarks\n\nintro\n\n## Wire codecs\n\ntheirs\n\n"
           f"{SECTION}\n\nold figures\n\n### sub\n\nold\n\n## Later\n\nkept\n")
    new = replace_section(old, MINE)
    assert new == ("# Benchmarks\n\nintro\n\n## Wire codecs\n\ntheirs\n\n"
                   f"{SECTION}\n\nnew figures\n\n## Later\n\nkept\n")
    assert replace_section(new, MINE) == new  # idempotent


def test_appends_after_theirs_when_absent() -> None:
    old = "# Benchmarks\n\n## Wire codecs\n\ntheirs\n"
    assert replace_section(old, MINE) == f"{old}\n{MINE}"


def _run(p99: float, relay_p99: float, held: bool = True, rate: float = 2.0) -> dict[str, Any]:
    lat = {"p50": 0.5, "p90": 1.0, "p99": p99, "p99.9": p99 * 2, "max": p99 * 3, "mean": 0.6}
    relay = {"p50": 0.1, "p90": 0.3, "p99": relay_p99, "p99.9": relay_p99 * 2,
             "max": relay_p99 * 3, "mean": 0.2}
    return {"rate_per_user": rate, "in_per_s": 5000 * rate, "out_per_s": 45000 * rate,
            "counts": {"loss_pct": 0.0}, "latency_ms": lat, "relay_latency_ms": relay,
            "loadgen_cpu_pct": [40.0, 41.0], "loadgen_wait_pct": [5.0, 6.0],
            "server_cpu_pct": 70.0, "server_wait_pct": 9.0, "warnings": [],
            "slo": {"held": held}}


def _outcome(key: str, label: str, report: dict[str, Any]) -> bench.Outcome:
    plot = Path(f"bench-{key}.png") if key.startswith("capacity") else None
    sc = bench.Scenario(key, label, ["ocm-control"], [], plot)
    return bench.Outcome(sc, "ocm-control", "ocm-loadgen ...", 0, report, 0.99, [3.25])


def test_section_shows_both_latencies_and_both_capacity_searches() -> None:
    head = {"result": _run(3.25, 1.75), "setup": {"joins_per_s": 4321.0}}
    caps: dict[str, dict[str, Any]] = {}
    for key, slo_p99 in (("capacity", 10.0), ("capacity-loss", None)):
        runs = [_run(4.0, 2.0, rate=2.0), _run(80.0, 30.0, held=key != "capacity", rate=3.0)]
        caps[key] = {"result": runs[0], "runs": runs, "capacity": {
            "rate_per_user": 2.0 if key == "capacity" else 3.0, "in_per_s": 10000.0,
            "out_per_s": 90000.0 if key == "capacity" else 135000.0,
            "slo_p99_ms": slo_p99, "slo_loss_pct": 0.1, "limited_by_loadgen": False}}
    outcomes = {
        "ocm2": _outcome("ocm2", "ocm-control --workers 2", head),
        "ocm2-member": _outcome("ocm2-member", "member sockets", head),
        "capacity": _outcome("capacity", "capacity (p99 and loss)", caps["capacity"]),
        "capacity-loss": _outcome("capacity-loss", "capacity (loss only)",
                                  caps["capacity-loss"]),
    }
    machine = {"date": "today", "nproc": 2, "cpu_model": "cpu", "kernel": "k",
               "python": "3.11"}
    text = bench.render_section(outcomes, machine, (0.1, 0.2, 0.3))
    row = next(line for line in text.splitlines() if line.startswith("| ocm-control --wo"))
    assert "| 3.25 | 6.50 | 9.75 | 0.10 | 1.75 | 3.50 |" in row  # e2e then relay
    assert "| member sockets |" in text
    assert "### Capacity search: capacity (p99 and loss)" in text
    assert "SLO: p99 ≤ 10 ms and loss ≤ 0.1 %" in text
    assert "### Capacity search: capacity (loss only)" in text
    assert "SLO: loss ≤ 0.1 %," in text
    assert "**Result: 3 msg/s per user = 10,000 datagrams/s in, 135,000 deliveries/s out**" \
        in text
    assert "![p99 against offered load](bench-capacity-loss.png)" in text
