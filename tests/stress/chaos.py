"""``make chaos``: kill relay workers under the headline load and measure the recovery.

    python -m tests.stress.chaos [--rooms 500 --users 10 --rate 2] [--kill-for 60]
                                 [--kill-every 5] [--workers 2] [--json FILE]

1. Starts ``ocm-control`` (2 workers; chat rate raised so that probes may chat every
   10 ms), one probe room per worker (tests/stress/probe.py: a member chatting every
   10 ms, every arrival timestamped), 40 silent canary rooms, and ``ocm-loadgen`` at the
   headline profile (500 rooms x 10 users x 2 msg/s) for ``--kill-for`` + 10 s.
2. Once every loadgen member has joined: SIGKILL a worker every ``--kill-every`` s for
   ``--kill-for`` s, alternating workers (pids from the log lines ``worker N started (pid
   P``). Per kill: the time until the replacement logged ``started`` (seeded and
   answering pings), the time until the probe on that worker got a message sent after the
   kill (delivery resumed), and the probe messages lost.
3. After the loadgen run: SIGSTOP a worker; the time until control logged ``missed
   pings``, until the replacement started, and until its probe's delivery resumed.
4. Every canary room must still relay (host -> guest), and a fresh member must be able to
   join each; the live room count after the kills must equal the rooms created (0 rooms
   lost). Then a graceful stop, which must log no traceback.

Prints a table per kill and a summary of figures; ``--json`` writes them. Exit code 0 if
no room was lost and every kill was recovered from, else 1. Bounded: about 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from tests.integration.harness import Server, start_server
from tests.integration.peer import Peer, join
from tests.stress.probe import Probe, make_probes
from tests.stress.tools import (
    admin_address,
    dropped,
    long_run_parser,
    report_long_run,
    scrape,
    start_loadgen,
    wait_for,
    worker_pids,
)
from wire.codes import Operation

H = "127.0.0.1"
CANARIES = 40
LOG_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z")


def log_events(srv: Server, pattern: str) -> list[tuple[float, re.Match[str]]]:
    """(wall time, match) of every log line matching ``pattern``."""
    rx = re.compile(pattern)
    out = []
    for line in srv.log_text().splitlines():
        m = rx.search(line)
        stamp = LOG_TIME_RE.match(line)
        if m and stamp:
            when = datetime.strptime(stamp[1], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
            out.append((when.timestamp(), m))
    return out


def first_after(srv: Server, pattern: str, wall: float, timeout: float) -> float | None:
    """Seconds from ``wall`` to the first log line matching ``pattern`` after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        later = [t for t, _ in log_events(srv, pattern) if t >= wall - 0.002]
        if later:
            return max(0.0, min(later) - wall)
        time.sleep(0.05)
    return None


def canary_rooms(srv: Server, n: int) -> list[tuple[Peer, Peer]]:
    rooms = []
    for i in range(n):
        host = join(H, srv.tcp_port, Operation.CREATE, f"canary-{i}", "host")
        guest = join(H, srv.tcp_port, Operation.JOIN, f"canary-{i}", "guest")
        guest.send(b"")  # it only listens: prove its registered port (protocol.md §4 (j))
        host.recv_text()  # joined
        rooms.append((host, guest))
    return rooms


def check_canaries(srv: Server, rooms: list[tuple[Peer, Peer]]) -> tuple[int, int]:
    """(rooms that still relay, rooms a fresh member could join and chat in)."""
    relaying = joined = 0
    text = ""
    for i, (host, guest) in enumerate(rooms):
        host.send(f"canary {i}")
        try:
            while (text := guest.recv_text(timeout=5)) != f"host: canary {i}":
                pass
            relaying += 1
        except TimeoutError:
            print(f"canary-{i}: no delivery (last: {guest.received[-1:]!r})")
            continue
        try:
            late = join(H, srv.tcp_port, Operation.JOIN, f"canary-{i}", "latecomer")
            late.send("hello")
            while (text := host.recv_text(timeout=5)) != "latecomer: hello":
                pass
            joined += 1
            late.close()
        except Exception as exc:  # report, do not stop the survey
            print(f"canary-{i}: fresh join failed: {exc!r} ({text!r})")
    return relaying, joined


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"profile": f"{args.rooms} rooms x {args.users} users x "
                                          f"{args.rate} msg/s", "workers": args.workers}
    # Probes chat at 100/s; a burst of 2,000 lets a frozen worker's backlog (~600 probe
    # messages after a SIGSTOP) through, so that probe loss measures the fault, not the
    # chat rate limit (which treats a backlog as a burst: docs/security.md).
    srv = start_server("--chat-rate", "500", "--chat-burst", "2000", "--admin-port", "0",
                       workers=args.workers)
    loadgen: subprocess.Popen[str] | None = None
    probes: list[Probe] = []
    try:
        admin = admin_address(srv.wait_log(r"admin http=").string)
        assert admin is not None
        probes = make_probes(srv, args.workers)
        canaries = canary_rooms(srv, CANARIES)
        ours = len(probes) + CANARIES
        for probe in probes:
            probe.start()
        duration = args.kill_for + 10
        loadgen, report_path = start_loadgen(srv, args, duration, "chaos", "ocm under chaos")
        members = args.rooms * args.users + 2 * ours
        wait_for(lambda: scrape(admin)["ocm_members"] >= members or None, 120.0,
                 f"{members} members to join")
        time.sleep(3.0)  # the loadgen's bind wait and warmup: kills land in its window
        kills = []
        start = time.monotonic()
        for k in range(int(args.kill_for // args.kill_every)):
            due = start + k * args.kill_every
            time.sleep(max(0.0, due - time.monotonic()))
            victim = k % args.workers
            pid = worker_pids(srv.log_text())[victim]
            wall, mono = time.time(), time.monotonic()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                kills.append({"k": k, "worker": victim, "pid": pid, "skipped": True})
                continue
            kills.append({"k": k, "worker": victim, "pid": pid, "wall": wall, "mono": mono})
            print(f"chaos: kill #{k + 1} worker {victim} (pid {pid})", flush=True)
        wait_for(lambda: scrape(admin)["ocm_ready"] == 1 or None, 30.0, "all workers ready")
        rooms_after = scrape(admin)["ocm_rooms"]
        figures["rooms_created"] = args.rooms + ours
        figures["rooms_live_after_kills"] = int(rooms_after)
        out, _ = loadgen.communicate(timeout=duration + 120)
        loadgen_report = json.loads(report_path.read_text()) if report_path.exists() else {}
        if not loadgen_report:
            print(out)
        for kill in kills:
            if kill.get("skipped"):
                continue
            w = kill["worker"]
            kill["restart_s"] = first_after(srv, rf"worker {w} started \(pid", kill["wall"],
                                            30.0)
            probe = next(p for p in probes if p.worker == w)
            kill["resume_s"] = probe.resume_after(kill["mono"])
            kill["probe_lost"] = probe.lost_between(kill["mono"] - 0.1, kill["mono"] + 5.0)
        figures["kills"] = [{k: v for k, v in kill.items() if k not in ("wall", "mono")}
                            for kill in kills]
        # SIGSTOP: detected by missed pings, killed and replaced.
        victim = 0
        pid = worker_pids(srv.log_text())[victim]
        wall, mono = time.time(), time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            detect = first_after(srv, rf"worker {victim} \(pid {pid}\) missed pings", wall,
                                 60.0)
            replaced = first_after(srv, rf"worker {victim} started \(pid", wall, 60.0)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        probe = next(p for p in probes if p.worker == victim)
        wait_for(lambda: probe.resume_after(mono) is not None or None, 30.0,
                 "delivery after SIGSTOP")
        resume = probe.resume_after(mono)
        for p in probes:
            p.stop()  # drains: the backlog of the stopped worker arrives late, not lost
        figures["sigstop"] = {"worker": victim, "pid": pid, "detected_s": detect,
                              "replaced_s": replaced, "resume_s": resume,
                              "probe_lost": probe.lost_between(mono - 0.1, mono + 20.0)}
        figures["probes"] = [{"worker": p.worker, "sent": len(p.sent),
                              "delivered": len(p.arrived), "lost": p.lost(),
                              "notices": p.other[:3]} for p in probes]
        figures["rate_limited_drops"] = dropped(scrape(admin), "rate_limited")
        relaying, joined = check_canaries(srv, canaries)
        figures["canaries"] = {"rooms": CANARIES, "relaying": relaying, "fresh_join": joined}
        if loadgen_report:
            result = loadgen_report["result"]
            timeline = result["timeline"]
            tail = [p["out_per_s"] for p in timeline if p.get("sending")][-6:]
            figures["loadgen"] = {
                "exit_code": loadgen_report.get("exit_code"),
                "joins_ok": loadgen_report["setup"]["joins_ok"],
                "expected": result["counts"]["expected"],
                "delivered": result["counts"]["delivered"],
                "lost": result["counts"]["lost"],
                "loss_pct": round(result["counts"]["loss_pct"], 4),
                "p50_ms": result["latency_ms"]["p50"], "p99_ms": result["latency_ms"]["p99"],
                "max_ms": result["latency_ms"]["max"],
                "target_out_per_s": result["target_out_per_s"],
                "out_per_s_last_3s": round(statistics.mean(tail)) if tail else None,
                "notices": result["notices"],
                "warnings": result["warnings"],
            }
        else:
            figures["loadgen"] = {"error": out[-2000:]}
    finally:
        for p in probes:
            if not p._done.is_set():
                p.stop(drain=0.5)
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        code = srv.stop(allow_tracebacks=True)
        figures["stop_exit_code"] = code
        figures["tracebacks"] = srv.log_text().count("Traceback")
    return figures


def summarize(f: dict[str, Any]) -> tuple[str, bool]:
    lines = [f"chaos: {f['profile']}, {f['workers']} workers"]
    lines.append(f"{'kill':>4} {'worker':>6} {'pid':>8} {'replaced (s)':>13} "
                 f"{'delivery resumed (s)':>21} {'probe lost':>10}")
    restarts, resumes = [], []
    for kill in f.get("kills", []):
        if kill.get("skipped"):
            lines.append(f"{kill['k'] + 1:>4} {kill['worker']:>6} {kill['pid']:>8}  skipped "
                         "(not yet restarted)")
            continue
        r, d = kill.get("restart_s"), kill.get("resume_s")
        restarts += [r] if r is not None else []
        resumes += [d] if d is not None else []
        lines.append(f"{kill['k'] + 1:>4} {kill['worker']:>6} {kill['pid']:>8} "
                     f"{_s(r):>13} {_s(d):>21} {kill.get('probe_lost', '-'):>10}")
    ok = True
    kills = [k for k in f.get("kills", []) if not k.get("skipped")]
    lines.append("")
    lines.append("figure                                   value")
    rows = [("worker kills (SIGKILL)", len(kills))]
    if restarts:
        rows += [("replacement ready after kill, median", _s(statistics.median(restarts))),
                 ("replacement ready after kill, max", _s(max(restarts)))]
    if resumes:
        rows += [("probe delivery resumed, median", _s(statistics.median(resumes))),
                 ("probe delivery resumed, max", _s(max(resumes)))]
    ok &= len(resumes) == len(kills) and len(restarts) == len(kills)
    for p in f.get("probes", []):
        rows.append((f"probe on worker {p['worker']}: sent / lost",
                     f"{p['sent']} / {p['lost']} ({100 * p['lost'] / max(p['sent'], 1):.2f} %)"))
    s = f.get("sigstop")
    if s:
        rows += [("SIGSTOP: missed pings detected after", _s(s["detected_s"])),
                 ("SIGSTOP: replacement ready after", _s(s["replaced_s"])),
                 ("SIGSTOP: probe delivery resumed after", _s(s["resume_s"])),
                 ("SIGSTOP: probe messages lost", s["probe_lost"])]
        ok &= s["replaced_s"] is not None
    lg = f.get("loadgen", {})
    if "expected" in lg:
        rows += [("loadgen joins", lg["joins_ok"]),
                 ("loadgen deliveries expected / lost",
                  f"{lg['expected']:,} / {lg['lost']:,} ({lg['loss_pct']} %)"),
                 ("loadgen latency p50 / p99 / max (ms)",
                  f"{lg['p50_ms']} / {lg['p99_ms']} / {lg['max_ms']}"),
                 ("loadgen out/s, last 3 s vs target",
                  f"{lg['out_per_s_last_3s']:,} / {lg['target_out_per_s']:,.0f}"),
                 ("loadgen notices", lg["notices"])]
    else:
        rows.append(("loadgen", lg.get("error", "no report")[-300:]))
        ok = False
    rows.append(("chat dropped by the rate limit", f.get("rate_limited_drops")))
    rooms_ok = f.get("rooms_live_after_kills") == f.get("rooms_created")
    rows.append(("rooms live after the kills / created",
                 f"{f.get('rooms_live_after_kills')} / {f.get('rooms_created')}"))
    c = f.get("canaries", {})
    rows.append(("canary rooms relaying / fresh join ok",
                 f"{c.get('relaying')} / {c.get('fresh_join')} of {c.get('rooms')}"))
    ok &= rooms_ok and c.get("relaying") == c.get("rooms") == c.get("fresh_join")
    rows.append(("graceful stop exit code, tracebacks",
                 f"{f.get('stop_exit_code')}, {f.get('tracebacks')}"))
    ok &= f.get("stop_exit_code") == 0 and f.get("tracebacks") == 0
    lines += [f"{name:<40} {value}" for name, value in rows]
    lines.append("verdict: " + ("OK: 0 rooms lost, every kill recovered" if ok else "FAILED"))
    return "\n".join(lines), ok


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = long_run_parser("python -m tests.stress.chaos", __doc__ or "")
    parser.add_argument("--kill-for", type=float, default=60.0)
    parser.add_argument("--kill-every", type=float, default=5.0)
    args = parser.parse_args(argv)
    return report_long_run(args, run(args), summarize)


if __name__ == "__main__":
    sys.exit(main())
