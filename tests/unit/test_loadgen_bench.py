"""make bench: its sections of docs/performance.md (only its own, rewritten) and the full
results beside it in docs/bench/*.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.bench import capacity as bench
from tests.bench import docsout
from tests.bench.capacity import CAPACITY_SECTION, HEADLINE_SECTION
from tests.bench.docsout import replace_sections

MINE = [f"{HEADLINE_SECTION}\n\nnew headline\n", f"{CAPACITY_SECTION}\n\nnew capacity\n"]


def test_an_empty_or_missing_file_gets_both() -> None:
    assert replace_sections("", MINE) == (f"# Performance\n\n{HEADLINE_SECTION}\n\nnew headline"
                                          f"\n\n{CAPACITY_SECTION}\n\nnew capacity\n")


def test_replaced_in_place_and_others_kept() -> None:
    old = ("# Benchmarks\n\nintro\n\n"
           f"{HEADLINE_SECTION}\n\nold headline\n\n### sub\n\nold\n\n"
           f"{CAPACITY_SECTION}\n\nold capacity\n\n"
           "## Wire codecs\n\ntheirs\n\n## How we got here\n\nkept\n")
    new = replace_sections(old, MINE)
    assert new == ("# Benchmarks\n\nintro\n\n"
                   f"{HEADLINE_SECTION}\n\nnew headline\n\n"
                   f"{CAPACITY_SECTION}\n\nnew capacity\n\n"
                   "## Wire codecs\n\ntheirs\n\n## How we got here\n\nkept\n")
    assert replace_sections(new, MINE) == new  # idempotent


def test_missing_sections_open_the_file() -> None:
    """The headline comes first, before the hand-written detail (and the capacity search
    right after it)."""
    old = "# Benchmarks\n\nintro\n\n## Wire codecs\n\ntheirs\n"
    assert replace_sections(old, MINE) == (
        f"# Benchmarks\n\nintro\n\n{HEADLINE_SECTION}\n\nnew headline\n\n"
        f"{CAPACITY_SECTION}\n\nnew capacity\n\n## Wire codecs\n\ntheirs\n")


def _run(p99: float, relay_p99: float, held: bool = True, rate: float = 2.0) -> dict[str, Any]:
    lat = {"p50": 0.5, "p90": 1.0, "p99": p99, "p99.9": p99 * 2, "max": p99 * 3, "mean": 0.6}
    relay = {"p50": 0.1, "p90": 0.3, "p99": relay_p99, "p99.9": relay_p99 * 2,
             "max": relay_p99 * 3, "mean": 0.2}
    return {"rate_per_user": rate, "in_per_s": 5000 * rate, "out_per_s": 45000 * rate,
            "target_in_per_s": 5000 * rate, "target_out_per_s": 45000 * rate,
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
    headline, capacity = bench.render_sections(outcomes, machine, (0.1, 0.2, 0.3))
    assert headline.splitlines()[0] == HEADLINE_SECTION
    assert headline.splitlines()[2] == (
        "**10,000 datagrams/s in and 90,000 deliveries/s out on 2 cores shared with the "
        "loadgen: p99 3.25 ms end to end, 1.75 ms in the relay, 0.000 % lost "
        "(ocm-control --workers 2).**")
    assert "make bench" in headline.splitlines()[4]  # then how to reproduce it
    row = next(line for line in headline.splitlines() if line.startswith("| ocm-control --wo"))
    assert "| 3.25 | 6.50 | 9.75 | 0.10 | 1.75 | 3.50 |" in row  # e2e then relay
    assert "| member sockets |" in headline
    assert capacity.splitlines()[0] == CAPACITY_SECTION
    assert capacity.splitlines()[2].startswith("- capacity (p99 and loss): **2 msg/s per user")
    assert "### capacity (p99 and loss)" in capacity
    assert "SLO: p99 ≤ 10 ms and loss ≤ 0.1 %" in capacity
    assert "### capacity (loss only)" in capacity
    assert "SLO: loss ≤ 0.1 %," in capacity
    assert "**Result: 3 msg/s per user = 10,000 datagrams/s in, 135,000 deliveries/s out**" \
        in capacity
    assert "![p99 against offered load](bench-capacity-loss.png)" in capacity
    assert "| 3 | 15,000 | 135,000 |" in capacity  # every step, in the full section


def test_publish_keeps_the_steps_in_the_data_file_and_out_of_the_page(tmp_path: Path) -> None:
    """The page gets the summary and a link; docs/bench/NAME.json every table and note."""
    section = (f"{CAPACITY_SECTION}\n\nresult line\n\n{docsout.FULL_OPEN}\n\n"
               "- run 1: exit 0\n\nSteps:\n\n| rate | p99 |\n| ---: | ---: |\n"
               "| 2 | 4.00 |\n| 3 | 80.00 |\n\n"
               f"{docsout.FULL_CLOSE}\n\n![p99](bench-capacity.png)\n")
    (tmp_path / "performance.md").write_text(
        f"# Performance\n\n{CAPACITY_SECTION}\n\nold\n\n## Memory\n\nkept\n")
    written = docsout.publish(tmp_path, "headline", [section], {"machine": {"nproc": 2}})
    assert written == [tmp_path / "performance.md", tmp_path / "bench" / "headline.json"]
    page = (tmp_path / "performance.md").read_text()
    assert page == (f"# Performance\n\n{CAPACITY_SECTION}\n\nresult line\n\n"
                    "Every run and step: [bench/headline.json](bench/headline.json).\n\n"
                    "![p99](bench-capacity.png)\n\n## Memory\n\nkept\n")
    data = json.loads((tmp_path / "bench" / "headline.json").read_text())
    assert data["sections"] == [CAPACITY_SECTION.lstrip("# ")]
    assert data["tables"] == [{"title": "Steps:", "columns": ["rate", "p99"],
                               "rows": [["2", "4.00"], ["3", "80.00"]]}]
    assert data["notes"] == ["run 1: exit 0"]
    assert data["machine"] == {"nproc": 2}


def test_encrypted_against_plain_section_has_each_run_the_medians_and_the_ratio() -> None:
    from tests.bench import e2e_compare

    def report(p99: float, relay: float, cpu: float) -> dict[str, Any]:
        run = _run(p99, relay)
        run["counts"] = {"delivered": 900, "expected": 900, "loss_pct": 0.0}
        run["server_cpu_pct"] = cpu
        return {"result": run}

    pairs = [(_outcome(f"plain-{i}", "plain rooms (ocm1)", report(4.0, 2.0, 70.0)),
              _outcome(f"e2e-{i}", "encrypted rooms", report(4.2 + i, 2.1, 73.5)))
             for i in range(3)]
    pairs[2][1].report = None  # a failed run is shown, not counted in the medians
    profile = e2e_compare.compare_profile(20, 5, 2, 5, 1)
    machine = {"date": "now", "nproc": 2, "cpu_model": "cpu", "kernel": "k", "python": "3"}
    text = e2e_compare.render(pairs, machine, (0.1, 0.2, 0.3), "cmd", profile)
    assert text.startswith(e2e_compare.SECTION)
    assert "20 rooms × 5 users × 2 msg/s" in text and "5 s measured after 1 s" in text
    assert text.count("| plain rooms (ocm1) | 100.000 % | 4.00 | 2.00 | 70 % |") == 3
    assert "| 3 | encrypted rooms | – | – | – | – |" in text
    assert "| end-to-end p99 | 4.00 ms | 4.70 ms | 1.175 |" in text  # median of 4.2, 5.2
    assert "| relay p99 | 2.00 ms | 2.10 ms | 1.050 |" in text
    assert "| server CPU | 70 % | 74 % | 1.050 |" in text


def test_the_page_has_no_dates_load_averages_or_paths_and_one_link_per_section(
        tmp_path: Path) -> None:
    """What make bench writes into docs/performance.md: the summary and the first run's
    commands; the machine's date, the load average, where the runs wrote and every other
    run's commands only in docs/bench/headline.json."""
    head = {"result": _run(3.25, 1.75), "setup": {"joins_per_s": 4321.0}}
    runs = [_run(4.0, 2.0, rate=2.0), _run(80.0, 30.0, held=False, rate=3.0)]
    cap = {"result": runs[0], "runs": runs, "capacity": {
        "rate_per_user": 2.0, "in_per_s": 10000.0, "out_per_s": 90000.0, "slo_p99_ms": 10.0,
        "slo_loss_pct": 0.1, "limited_by_loadgen": False}}
    outcomes = {key: bench.Outcome(
        bench.Scenario(key, label, ["ocm-control"], [], None), "ocm-control --workers 2",
        f"ocm-loadgen --json /tmp/x/{key}.json --plot /tmp/x/{key}.png --label {label!r} "
        "--tcp-port $PORT --rooms 500", 0, report, 0.99, [3.25, 3.0, 3.5])
        for key, label, report in (("ocm2", "first", head), ("ocm1", "second", head),
                                   ("capacity", "search", cap))}
    machine = {"date": "2031-01-01 00:00 UTC", "nproc": 2, "cpu_model": "cpu", "kernel": "k",
               "python": "3.11"}
    sections = bench.render_sections(outcomes, machine, (7.5, 6.5, 5.5))
    docsout.publish(tmp_path, "headline", sections,
                    bench.results(outcomes, machine, (7.5, 6.5, 5.5)))
    page = (tmp_path / "performance.md").read_text()
    for absent in ("2031", "7.50", "load average", "/tmp/", docsout.FULL_OPEN,
                   docsout.FULL_CLOSE, "# second", "--label", "--json"):
        assert absent not in page, absent
    assert page.count("[bench/headline.json](bench/headline.json)") == 2  # one per section
    assert "ocm-loadgen --tcp-port $PORT --rooms 500" in page  # the first run's command
    data = json.loads((tmp_path / "bench" / "headline.json").read_text())
    assert data["machine"]["date"] == "2031-01-01 00:00 UTC"
    assert data["load_before"] == [7.5, 6.5, 5.5]
    assert data["runs"]["ocm1"]["p99s"] == [3.25, 3.0, 3.5]
    steps = next(t for t in data["tables"] if t["columns"][0] == "rate/user")
    assert [row[-1] for row in steps["rows"]] == ["held", "broke"]
