"""``make soak``: the headline load for a long time; memory, descriptors and delivery
must stay flat.

    python -m tests.stress.soak [--minutes 10] [--rooms 500 --users 10 --rate 2]
                                [--workers 2] [--json FILE]

Starts ``ocm-control`` (2 workers) and ``ocm-loadgen`` at the headline profile for
``--minutes``; every minute it samples the resident memory (``VmRSS`` of
``/proc/PID/status``) and the open descriptors (``/proc/PID/fd``) of control and of every
worker (pids from the log lines ``worker N started (pid P``), and, from the loadgen's
timeline, the share of expected deliveries that arrived that minute (deliveries /
(sends x other members)). Prints a table and a verdict: RSS and descriptors of every
process flat within 5 % from the end of minute 1 (the first minute warms allocators and
caches up) to the end, no worker restarted, and the loadgen's total loss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from tests.integration.harness import start_server
from tests.stress.tools import (
    admin_address,
    long_run_parser,
    open_fds,
    report_long_run,
    rss_kib,
    scrape,
    start_loadgen,
    wait_for,
    worker_pids,
)

FLAT_PCT = 5.0
FD_SLACK = 2
"""Descriptors may differ by a couple (a TCRP connection in flight, an admin scrape)."""


def sample(control_pid: int, workers: dict[int, int]) -> dict[str, Any]:
    procs = {"control": control_pid, **{f"worker{i}": pid for i, pid in sorted(workers.items())}}
    return {name: {"pid": pid, "rss_kib": rss_kib(pid), "fds": open_fds(pid)}
            for name, pid in procs.items()}


def delivery_by_minute(report: dict[str, Any], users: int, minutes: int) -> list[float | None]:
    """Per minute of the measured window: delivered / (sent x (users - 1)), in %."""
    points = report["result"]["timeline"]
    out: list[float | None] = []
    prev_sent = prev_delivered = 0
    for m in range(1, minutes + 1):
        window = [p for p in points if p["t_s"] <= 60.0 * m]
        if not window:
            out.append(None)
            continue
        last = window[-1]
        sent, delivered = last["sent"] - prev_sent, last["delivered"] - prev_delivered
        prev_sent, prev_delivered = last["sent"], last["delivered"]
        out.append(100.0 * delivered / (sent * (users - 1)) if sent else None)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = int(args.minutes * 60)
    minutes = max(1, round(args.minutes))
    srv = start_server("--admin-port", "0", workers=args.workers)
    figures: dict[str, Any] = {"profile": f"{args.rooms} rooms x {args.users} users x "
                                          f"{args.rate} msg/s", "minutes": args.minutes,
                               "samples": []}
    loadgen: subprocess.Popen[str] | None = None
    try:
        admin = admin_address(srv.wait_log(r"admin http=").string)
        assert admin is not None
        loadgen, report_path = start_loadgen(srv, args, seconds, "soak", "ocm soak")
        members = args.rooms * args.users
        wait_for(lambda: scrape(admin)["ocm_members"] >= members or None, 120.0,
                 f"{members} members to join")
        start = time.monotonic() + 2.3  # the loadgen's start delay and warmup
        time.sleep(max(0.0, start - time.monotonic()))
        pids = worker_pids(srv.log_text())
        for m in range(minutes + 1):
            due = start + 60.0 * m if m < minutes else start + seconds - 1.0
            time.sleep(max(0.0, due - time.monotonic()))
            now = worker_pids(srv.log_text())
            row = {"minute": m, "procs": sample(srv.proc.pid, now),
                   "rooms": scrape(admin)["ocm_rooms"]}
            figures["samples"].append(row)
            print(f"soak: minute {m}: " + ", ".join(
                f"{n} {p['rss_kib'] / 1024:.1f} MiB {p['fds']} fds"
                for n, p in row["procs"].items() if p["rss_kib"]), flush=True)
        figures["worker_restarts"] = sum(1 for w, pid in worker_pids(srv.log_text()).items()
                                         if pids.get(w) != pid) + srv.log_text().count(" died: ")
        out, _ = loadgen.communicate(timeout=seconds + 180)
        if report_path.exists():
            report = json.loads(report_path.read_text())
            counts = report["result"]["counts"]
            figures["loadgen"] = {
                "exit_code": report.get("exit_code"), "expected": counts["expected"],
                "delivered": counts["delivered"], "lost": counts["lost"],
                "loss_pct": round(counts["loss_pct"], 4),
                "p50_ms": report["result"]["latency_ms"]["p50"],
                "p99_ms": report["result"]["latency_ms"]["p99"],
                "warnings": report["result"]["warnings"]}
            for row, pct in zip(figures["samples"][1:],
                                delivery_by_minute(report, args.users, minutes), strict=False):
                row["delivery_pct"] = pct
        else:
            figures["loadgen"] = {"error": out[-2000:]}
    finally:
        if loadgen is not None and loadgen.poll() is None:
            loadgen.kill()
            loadgen.wait()
        figures["stop_exit_code"] = srv.stop(allow_tracebacks=True)
        figures["tracebacks"] = srv.log_text().count("Traceback")
    return figures


def summarize(f: dict[str, Any]) -> tuple[str, bool]:
    samples = f["samples"]
    names = list(samples[0]["procs"]) if samples else []
    head = f"{'min':>3} " + " ".join(f"{n + ' MiB':>13} {'fds':>4}" for n in names) + \
        f" {'rooms':>6} {'delivery %':>10}"
    lines = [f"soak: {f['profile']} for {f['minutes']} min", head]
    for row in samples:
        cells = []
        for n in names:
            p = row["procs"].get(n, {})
            rss = p.get("rss_kib")
            cells.append(f"{rss / 1024 if rss else float('nan'):>13.1f} {p.get('fds') or '-':>4}")
        pct = row.get("delivery_pct")
        lines.append(f"{row['minute']:>3} " + " ".join(cells) + f" {row['rooms']:>6.0f} "
                     f"{'-' if pct is None else f'{pct:.3f}':>10}")
    ok = True
    base = samples[1] if len(samples) > 2 else samples[0]
    last = samples[-1]
    verdicts = []
    for n in names:
        b, e = base["procs"][n], last["procs"][n]
        if not (b["rss_kib"] and e["rss_kib"]):
            verdicts.append(f"{n}: gone")
            ok = False
            continue
        growth = 100.0 * (e["rss_kib"] - b["rss_kib"]) / b["rss_kib"]
        fd_delta = (e["fds"] or 0) - (b["fds"] or 0)
        flat = abs(growth) <= FLAT_PCT and abs(fd_delta) <= FD_SLACK
        ok &= flat
        verdicts.append(f"{n}: RSS {growth:+.2f} %, fds {fd_delta:+d} "
                        f"({'flat' if flat else 'NOT flat'})")
    lines.append(f"from minute {base['minute']} to {last['minute']}: " + "; ".join(verdicts))
    lg = f.get("loadgen", {})
    if "expected" in lg:
        lines.append(f"loadgen: {lg['expected']:,} deliveries expected, {lg['lost']:,} lost "
                     f"({lg['loss_pct']} %), p50 {lg['p50_ms']} ms, p99 {lg['p99_ms']} ms")
    else:
        lines.append(f"loadgen failed: {lg.get('error', '')[-300:]}")
        ok = False
    lines.append(f"worker restarts: {f.get('worker_restarts')}; graceful stop exit code "
                 f"{f.get('stop_exit_code')}, tracebacks {f.get('tracebacks')}")
    ok &= f.get("worker_restarts") == 0 and f.get("stop_exit_code") == 0 \
        and f.get("tracebacks") == 0
    lines.append("verdict: " + (f"OK: flat within {FLAT_PCT:g} %" if ok else "FAILED"))
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    parser = long_run_parser("python -m tests.stress.soak", __doc__ or "")
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    return report_long_run(args, run(args), summarize)


if __name__ == "__main__":
    sys.exit(main())
