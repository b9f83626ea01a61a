"""tests/bench/percore.py's pure parts: reading cload's report, the sustained-rate verdict,
the highest sustained rate and the ratios, without running anything."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.bench.climit import Times, cpu_delta, parse_cload
from tests.bench.percore import Settings, Step, highest_sustained, summarise, verdict

# A real cload line (500 x 10 at 4 msg/s), as it prints it.
CLOAD_LINE = (
    '{"rooms": 500, "users": 10, "rate_per_user": 4.000, "seconds": 10.0, "sent": 200000, '
    '"sent_warm": 40000, "expected": 1800000, "delivered": 1799100, "dups": 0, "stray": 0, '
    '"loss_pct": 0.0500, "min_recipient_ratio": 0.9900, "rate_in": 20000, "rate_out": 179910, '
    '"p50_us": 310, "p90_us": 900, "p99_us": 4200, "p999_us": 9000, "max_us": 15000, '
    '"max_lag_ms": 0.800, "late_sends": 0, "notices": 0, "gen_cpu_user": 1.200, '
    '"gen_cpu_sys": 3.100, "tool": "cload", "size": 100, "poisson": 0, "poll_us": 0}')


def report(**changes: Any) -> dict[str, Any]:
    out = parse_cload(CLOAD_LINE)
    out.update(changes)
    return out


def test_parse_cload_takes_the_last_json_line() -> None:
    text = "join sendto: Connection refused\n" + CLOAD_LINE + "\n"
    parsed = parse_cload(text)
    assert parsed == json.loads(CLOAD_LINE)
    assert (parsed["p99_us"], parsed["rate_in"]) == (4200, 20000)


def test_parse_cload_without_a_report_says_so() -> None:
    with pytest.raises(ValueError, match="no JSON report"):
        parse_cload("socket (raise ulimit -n?): Too many open files\n")


def test_a_clean_step_holds() -> None:
    v = verdict(report(), 4.0, 5000)
    assert v.held and v.why == "ok"


@pytest.mark.parametrize(("changes", "why"), [
    ({"loss_pct": 0.1}, "loss 0.1 % ≥ 0.1 %"),  # the bound itself breaks: loss < 0.1 %
    ({"p99_us": 20001}, "p99 20 ms > 20 ms"),
    ({"p99_us": -1, "loss_pct": 100.0}, "loss 100 % ≥ 0.1 %; nothing delivered"),
    ({"rate_in": 19399}, "in 19399/s < 97% of 20000/s"),
])
def test_each_bound_breaks_a_step(changes: dict[str, Any], why: str) -> None:
    v = verdict(report(**changes), 4.0, 5000)
    assert not v.held and v.why == why


def test_the_bounds_themselves_hold() -> None:
    assert verdict(report(loss_pct=0.0999, p99_us=20000, rate_in=19400), 4.0, 5000).held


def test_the_target_counts_only_the_members_that_send() -> None:
    # 4,990 of 5,000 joined: the target is 4 x 4,990
    assert verdict(report(rate_in=19400), 4.0, 4990).held
    assert not verdict(report(rate_in=19400), 4.0, 5100).held


def test_highest_sustained_is_the_highest_rate_that_held() -> None:
    assert highest_sustained([(4, True), (5, True), (6, False), (7, False)]) == 5
    assert highest_sustained([(4, True), (5, False), (6, True), (7, False)]) == 6
    assert highest_sustained([(4, False), (5, False)]) is None
    assert highest_sustained([]) is None


def settings(**changes: Any) -> Settings:
    base = dict(relays=("crelay", "ocm"), rates=(4.0, 5.0, 6.0), cpu_rate=4.0, repeat=2,
                rooms=500, users=10, size=100, seconds=10.0, warmup=2.0, drain=1.0, poll_us=0,
                base_port=20000, relay_cpu=1, load_cpu=0, stop_after=2, ocm_command=(),
                ocm_env={}, chat_rate=12.0)
    base.update(changes)
    return Settings(**base)  # type: ignore[arg-type]


def step(relay: str, rep: int, rate: float, held: bool, user: float = 0.0,
         sys_: float = 0.0) -> Step:
    return Step(relay, rep, rate, members=5000, report=report(), held=held,
                datagrams_in=1_000_000, cpu_tree={"user": user, "sys": sys_},
                cpu_worker={"user": user, "sys": sys_})


def test_summary_ratios_per_repetition_and_median() -> None:
    steps = [step("crelay", 0, 4, True, 0.5, 16.0), step("ocm", 0, 4, True, 9.0, 20.0),
             step("crelay", 0, 5, True), step("ocm", 0, 5, False),
             step("crelay", 0, 6, True), step("ocm", 0, 6, False),
             step("crelay", 1, 4, True, 0.7, 15.0), step("ocm", 1, 4, True, 10.0, 21.0),
             step("crelay", 1, 5, False), step("ocm", 1, 5, True),
             step("crelay", 1, 6, False), step("ocm", 1, 6, False)]
    out = summarise(settings(), steps)
    assert out["best_rate"] == {"crelay": [6, 4], "ocm": [4, 5]}
    assert out["ratios"]["ocm"] == [pytest.approx(4 / 6), pytest.approx(5 / 4)]
    assert out["median_ratio"]["ocm"] == pytest.approx((4 / 6 + 5 / 4) / 2)
    assert out["deliveries_per_s"]["crelay"] == 5 * 5000 * 9
    # 1,000,000 datagrams: seconds x 1e6 / 1e6 = µs per datagram, median of the 2 reps
    assert out["cpu_at_rate"]["ocm"]["worker"] == pytest.approx(
        {"user": 9.5, "sys": 20.5, "total": 30.0})


def test_recovery_on_against_off_per_repetition() -> None:
    """``ocm-r`` beside ``ocm``: the CPU per inbound datagram at the CPU rate (whole tree)
    and the highest sustained rate, on / off, per repetition and their medians."""
    steps = [step("ocm", 0, 4, True, 1.0, 9.0), step("ocm-r", 0, 4, True, 1.5, 9.0),
             step("ocm", 0, 5, True), step("ocm-r", 0, 5, False),
             step("ocm", 1, 4, True, 1.0, 10.0), step("ocm-r", 1, 4, True, 1.2, 10.0),
             step("ocm", 1, 5, False), step("ocm-r", 1, 5, False)]
    out = summarise(settings(relays=("ocm", "ocm-r")), steps)
    rec = out["recovery"]
    assert rec["cpu_ratios"] == [pytest.approx(10.5 / 10), pytest.approx(11.2 / 11)]
    assert rec["median_cpu_ratio"] == pytest.approx((10.5 / 10 + 11.2 / 11) / 2)
    assert rec["rate_ratios"] == [pytest.approx(4 / 5), pytest.approx(1.0)]
    assert summarise(settings(), steps[:0])["recovery"] is None  # no ocm-r: no pair


def test_no_sustained_rate_gives_no_ratio() -> None:
    steps = [step("crelay", 0, 4, True), step("ocm", 0, 4, False)]
    out = summarise(settings(repeat=1), steps)
    assert out["ratios"]["ocm"] == [None] and out["median_ratio"]["ocm"] is None


def test_cpu_delta_counts_new_processes_from_zero() -> None:
    before = {1: Times(1.0, 2.0), 2: Times(5.0, 5.0)}
    after = {1: Times(1.5, 2.25), 2: Times(6.0, 9.0), 3: Times(0.25, 0.5)}
    assert cpu_delta(before, after) == Times(1.75, 4.75)
    assert cpu_delta(before, after, only=2) == Times(1.0, 4.0)


def test_memory_per_member_is_the_growth_over_the_members() -> None:
    from tests.bench.memory import KINDS, per_member

    before = {role: dict.fromkeys(KINDS, 1000) for role in ("control", "workers", "tree")}
    after = {role: dict.fromkeys(KINDS, 1000 + 512 * 100_000)
             for role in ("control", "workers", "tree")}
    assert per_member(before, after, 100_000)["workers"] == dict.fromkeys(KINDS, 512.0)


def test_the_page_gets_the_summary_and_the_data_file_every_step(tmp_path: Any) -> None:
    """``--update-docs``: docs/performance.md gets the ratios and the CPU table, without the
    date; docs/bench/percore.json gets the step-by-step table and the raw results."""
    from tests.bench import docsout
    from tests.bench.percore import SECTION, render

    steps = [step("crelay", 0, 4, True, 0.5, 16.0), step("ocm", 0, 4, True, 9.0, 20.0),
             step("crelay", 0, 5, True), step("ocm", 0, 5, False)]
    s = settings(repeat=1)
    summary = summarise(s, steps)
    machine = {"date": "2031-01-01 00:00 UTC", "cpu_model": "cpu", "nproc": 2,
               "kernel": "k", "python": "3.11"}
    text = render(s, steps, summary, machine, "python -m tests.bench.percore")
    docsout.publish(tmp_path, "percore", [text], {"machine": machine, "summary": summary})
    page = (tmp_path / "performance.md").read_text()
    assert page.startswith(f"# Performance\n\n{SECTION}\n")
    assert "ocm / crelay" in page and "| relay | worker user |" in page
    assert "2031" not in page and "Every step" not in page and docsout.FULL_OPEN not in page
    assert "[bench/percore.json](bench/percore.json)" in page
    data = json.loads((tmp_path / "bench" / "percore.json").read_text())
    every = next(t for t in data["tables"] if t["title"].startswith("Every step"))
    assert [row[0] for row in every["rows"]] == [f"{r:g}" for r in s.rates]
    assert data["machine"]["date"] == "2031-01-01 00:00 UTC"


def test_a_room_history_is_measured_full_at_the_default_limits() -> None:
    """``make bench-memory``'s room history: kept at the message limit, every entry
    charged its datagram plus the overhead, the allocation seen by tracemalloc at least
    the datagrams themselves, and the figure on the page."""
    from tests.bench.memory import _history_lines, history_per_room
    from wire.limits import HISTORY_ENTRY_OVERHEAD_BYTES, HISTORY_MAX_MESSAGES

    h = history_per_room(100)
    assert h["entries"] == HISTORY_MAX_MESSAGES
    datagram = 9 + 1 + len("u1") + 100  # DATA header, then the ocm1 delivery
    assert h["charged"] == HISTORY_MAX_MESSAGES * (datagram + HISTORY_ENTRY_OVERHEAD_BYTES)
    assert h["allocated"] > HISTORY_MAX_MESSAGES * datagram
    assert h["rooms_in_worker_budget"] == h["worker_bytes"] // h["charged"]
    assert f"**{h['allocated']:,.0f} B per room**" in "".join(_history_lines(h))


def test_ocm_mac_joins_stay_under_the_servers_tls_handshake_limit() -> None:
    """All of ``ocm-mac``'s joins come from one IP: more TLS handshakes in flight than
    ``max_tls_handshakes_per_ip`` are closed at accept and the step fails to join."""
    import dataclasses

    from control.config import Config
    from tests.bench.percore import TLS_JOIN_CONCURRENCY

    limit = {f.name: f.default for f in dataclasses.fields(Config)}["max_tls_handshakes_per_ip"]
    assert 1 <= TLS_JOIN_CONCURRENCY <= limit
