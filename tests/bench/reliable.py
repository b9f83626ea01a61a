"""``make bench-reliable`` (and the end of ``make bench``): reliable delivery (``ocm1r``) at
the headline profile, the figures of docs/performance.md's "Reliable delivery" section.

Against a fresh ``ocm-control --workers 2`` on kernel-chosen loopback ports, ``--repeat``
rounds (default 3) of two ``ocm-loadgen --loss 5`` runs, 500 rooms × 10 users × 2 msg/s:

1. loss alone: delivered % after recovery, first send to delivery p50/p99, duplicates,
   out of order;
2. the same with ``--outage-seconds 3``: one member per room silent both ways for 3 s,
   then resumed; how much of what it missed came back, and how long after.

It prints one line per run and the medians, and writes every report and a summary to
``--out`` (default: a temporary directory). It rewrites no docs: the figures go into
docs/performance.md by hand, with the machine's state (a shared machine skews latency).
``--quick`` runs a small profile (for testing).

``--engine c`` runs both kinds with the C load generator instead: each run joins 500 × 10
fresh ``ocm1r`` members (``ocm-loadgen --framing ocm1r --tokens-out``) to a fresh server,
and ``cload --reliable 1 --loss 5 --shared --poll-us 1000 --phases`` (``CLOAD_SOCKETS``) drives
them, every member recovering as ``client/reliable.py`` does (tests/bench/perf/recover.h)
at a C program's cost, so that the loss engine does not take the CPU the server needs
(the Python engine needs more than the two cores leave it past 400 rooms). Same figures,
from cload's report; its outage member goes on at the same address
(``ReliableChat.resumed``), as ``ocm-loadgen --outage-seconds``'s does.

``--cost`` measures instead what ``ocm1r`` costs the server at 0 % loss: ``--pairs``
interleaved pairs (default 7) of ``ocm-loadgen --loss 0`` runs, ``ocm1r`` then ``ocm1``
(``--no-recovery``), 100 rooms × 10 users × 2 msg/s for 15 s each, against one server;
it prints the server's CPU per delivery of each run, each pair's ratio and the medians.
With ``--engine c`` the pairs are cload runs instead, 500 rooms × 10 users × 2 msg/s for
8 s, each against a fresh server with fresh members: ``cload --reliable 6`` (``06``
SENDs, numbered DATA, no loss) then plain ``ocm1`` chat, the server's CPU per inbound chat
datagram (what ``make bench-percore`` compares, here with two unpinned workers sharing
the cores with a load generator in C instead of a Python one).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import orjson

from tests.bench import climit, servers

PROFILE: Final = ["--rooms", "500", "--users", "10", "--rate", "2", "--duration", "10",
                  "--drain", "60"]
QUICK: Final = ["--rooms", "6", "--users", "4", "--rate", "4", "--duration", "3",
                "--drain", "20"]
LOSS: Final = ["--loss", "5", "--procs", "2"]
OUTAGE: Final = ["--outage-seconds", "3"]
QUICK_OUTAGE: Final = ["--outage-seconds", "1"]
LOADGEN_TIMEOUT_S: Final = 900
COST: Final = ["--rooms", "100", "--users", "10", "--rate", "2", "--duration", "15",
               "--drain", "5", "--loss", "0"]
QUICK_COST: Final = ["--rooms", "10", "--users", "5", "--rate", "10", "--duration", "2",
                     "--drain", "5", "--loss", "0"]


CLOAD_PROFILE: Final = {"rooms": 500, "users": 10, "rate": 2.0, "seconds": 10.0, "warmup": 1.0,
                        "drain": 15.0, "outage": 3.0}
CLOAD_QUICK: Final = {"rooms": 6, "users": 4, "rate": 4.0, "seconds": 3.0, "warmup": 0.5,
                      "drain": 4.0, "outage": 1.0}
CLOAD_LOSS_PCT: Final = 5
CLOAD_SOCKETS: Final = ["--shared", "--poll-us", "1000", "--phases"]
"""One socket per user slot, read in batches every millisecond: the load generator's
kernel cost per delivery (which the server's two cores pay too here) falls from about 8
to 5 µs of system time, and the relay's sends wake no sleeping receiver. Each member
sends from a random phase of its own, as ``ocm-loadgen`` paces them: a room's gaps vary
(evenly spaced sends would show every hole within 50 ms)."""


def drive_with_cload(server: servers.Running, cload: Path, profile: dict[str, float],
                     framing: str, tokens: Path, *extra: str
                     ) -> tuple[dict[str, Any], climit.Times, float]:
    """Join fresh members to ``server`` (``ocm-loadgen --tokens-out``) and drive them with
    cload for ``profile`` (``extra``: its mode); its report (with ``command``), the
    server's CPU meanwhile and the wall time of the cload run."""
    rooms, users = int(profile["rooms"]), int(profile["users"])
    join = [sys.executable, "-m", "loadgen", "--server", server.host, "--tcp-port",
            str(server.tcp_port), "--rooms", str(rooms), "--users", str(users), "--framing",
            framing, "--procs", "2", "--quiet", "--tokens-out", str(tokens)]
    done = subprocess.run(join, capture_output=True, text=True, timeout=LOADGEN_TIMEOUT_S,
                          cwd=servers.REPO_ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(join)} exited {done.returncode}: {done.stderr}")
    climit.raise_nofile(rooms * users + 1024)
    cmd = [str(cload), "--target", f"{server.host}:{server.udp_port}", "--tokens", str(tokens),
           "--rate", str(profile["rate"]), "--seconds", str(profile["seconds"]), "--warmup",
           str(profile["warmup"]), "--drain", str(profile["drain"]), "--base-port", "0",
           "--max-seconds", "100000", *extra]
    before = climit.tree_times(server.pid)
    t = time.monotonic()
    report = climit.run_cload(cmd, LOADGEN_TIMEOUT_S)
    wall = time.monotonic() - t
    used = climit.cpu_delta(before, climit.tree_times(server.pid))
    report["command"] = cmd
    return report, used, wall


def run_cload(server: servers.Running, cload: Path, profile: dict[str, float], out: Path,
              kind: str, round_no: int) -> dict[str, float | None]:
    """One ``--engine c`` run of ``kind`` (``loss``, or ``outage``: one member per room
    silent both ways for 3 s, as ``--outage-seconds`` has it): fresh members joined, then
    cload with recovery and loss; the same figures as ``figures``."""
    report, used, wall = drive_with_cload(
        server, cload, profile, "ocm1r", out / f"tokens-{kind}-{round_no}.txt",
        "--reliable", "1", "--loss", str(CLOAD_LOSS_PCT), *CLOAD_SOCKETS,
        *(["--outage-seconds", str(profile["outage"])] if kind == "outage" else []))
    (out / f"cload-{kind}-{round_no}.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2))
    expected = max(1, int(report["expected"]))
    return {
        "delivered_pct": 100.0 * report["delivered"] / expected,
        "p50_ms": report["p50_us"] / 1000, "p99_ms": report["p99_us"] / 1000,
        "p999_ms": report["p999_us"] / 1000,
        "duplicates": report["dups"], "out_of_order": report["out_of_order"],
        "unrecovered": report["unrecovered"], "pending_at_end": report["pending_at_end"],
        "holes_open_at_end": report["holes_open_at_end"],
        "server_cpu_pct": 100.0 * (used.user + used.sys) / wall,
        "loadgen_cpu_pct": 100.0 * (report["gen_cpu_user"] + report["gen_cpu_sys"]) / wall,
        "late_sends": report["late_sends"],
        **({"outage_came_back_pct": 100.0 * report["outage_back"]
            / max(1, report["outage_expected"]),
            "outage_after_p99_ms": report["outage_after_p99_ms"]} if kind == "outage" else {}),
    }


def run_one(server: servers.Running, args: list[str], out: Path) -> dict[str, Any]:
    """One ``ocm-loadgen`` run; its JSON report (raise ``RuntimeError`` if it failed)."""
    cmd = [sys.executable, "-m", "loadgen", "--server", server.host, "--tcp-port",
           str(server.tcp_port), "--server-pid", str(server.pid), "--quiet", "--json",
           str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=LOADGEN_TIMEOUT_S,
                          cwd=servers.REPO_ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr}")
    report: dict[str, Any] = orjson.loads(out.read_bytes())
    return report


def figures(report: dict[str, Any]) -> dict[str, float | None]:
    r = report["result"]
    lat = r["latency_first_send_to_delivery_ms"]
    outage = r.get("outage") or {}
    return {
        "delivered_pct": r["delivered_pct"], "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
        "duplicates": r["duplicates"], "out_of_order": r["out_of_order"],
        "unrecovered": r["unrecovered_markers"], "failed_sends": r.get("failed_sends"),
        "server_cpu_pct": r["server_cpu_pct"],
        "loadgen_cpu_pct": r.get("loadgen_cpu_pct"),
        "loadgen_cpu_wait_pct": r.get("loadgen_cpu_wait_pct"),
        "outage_came_back_pct": outage.get("came_back_pct"),
        "outage_after_p99_ms": (outage.get("after_resume_ms") or {}).get("p99"),
    }


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def server_us_per_delivery(report: dict[str, Any]) -> float:
    """The server's CPU (all its processes) while sending, per delivery, in µs (at 0 %
    loss nearly everything is delivered while sending)."""
    r = report["result"]
    return float(1e6 * r["server_cpu_s"] / max(1, r["delivered"]))


def cost(args: argparse.Namespace, out: Path) -> int:
    """Interleaved pairs at 0 % loss, ``ocm1r`` then ``ocm1``: the server's CPU ratio."""
    profile = QUICK_COST if args.quick else COST
    pairs: list[tuple[float, float]] = []
    loadgen: list[tuple[float | None, float | None]] = []
    with servers.start(servers.control_command(2)) as server:
        for i in range(args.pairs):
            on_run = run_one(server, profile, out / f"ocm1r-{i + 1}.json")
            off_run = run_one(server, [*profile, "--no-recovery"], out / f"ocm1-{i + 1}.json")
            on, off = server_us_per_delivery(on_run), server_us_per_delivery(off_run)
            if not on or not off:
                raise SystemExit("the server's CPU did not register (clock ticks of 10 ms): "
                                 "a longer or larger profile is needed")
            pairs.append((on, off))
            # the loadgen shares the cores: its own CPU per delivery, beside the server's
            lg = (on_run["result"].get("loadgen_cpu_us_per_delivery"),
                  off_run["result"].get("loadgen_cpu_us_per_delivery"))
            loadgen.append(lg)
            print(f"pair {i + 1}: ocm1r {on:.2f} µs/delivery, ocm1 {off:.2f}, "
                  f"ratio {on / off:.3f} (loadgen: {lg[0]} and {lg[1]} µs/delivery)",
                  flush=True)
    return summarize_pairs(pairs, {"profile": profile, "loadgen_us": loadgen}, "/delivery",
                           out)


def summarize_pairs(pairs: list[tuple[float, float]], extra: dict[str, Any], unit: str,
                    out: Path) -> int:
    """The pairs' ratios and medians: printed, and written to ``out``/cost.json."""
    ratios = [on / off for on, off in pairs]
    summary = {**extra, "pairs": pairs, "ratios": ratios,
               "median_ocm1r_us": statistics.median(p[0] for p in pairs),
               "median_ocm1_us": statistics.median(p[1] for p in pairs),
               "median_ratio": statistics.median(ratios)}
    (out / "cost.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    print(f"median: ocm1r {summary['median_ocm1r_us']:.2f} µs{unit}, ocm1 "
          f"{summary['median_ocm1_us']:.2f}, ratio {summary['median_ratio']:.3f} "
          f"(pairs {min(ratios):.3f} to {max(ratios):.3f})")
    print(f"reports in {out}")
    return 0


COST_C_PROFILE: Final = {"rooms": 500, "users": 10, "rate": 2.0, "seconds": 8.0, "warmup": 1.0,
                         "drain": 1.0}
COST_C_QUICK: Final = {"rooms": 6, "users": 4, "rate": 10.0, "seconds": 2.0, "warmup": 0.5,
                       "drain": 0.5}


def cost_run_c(cload: Path, profile: dict[str, float], framing: str, out: Path) -> float:
    """One ``--cost --engine c`` run against a fresh server: its CPU (all processes, µs)
    per inbound chat datagram; the cload report goes to ``out``."""
    with servers.start(servers.control_command(2)) as server:
        report, used, _ = drive_with_cload(server, cload, profile, framing,
                                           out.with_suffix(".tokens"),
                                           *(["--reliable", "6"] if framing == "ocm1r" else []))
    report["server_cpu_s"] = used.user + used.sys
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    inbound = int(report["sent"]) + int(report["sent_warm"])
    if report["delivered"] != report["expected"]:
        print(f"{out.name}: {report['expected'] - report['delivered']} deliveries missing",
              file=sys.stderr)
    return 1e6 * (used.user + used.sys) / max(1, inbound)


def cost_c(args: argparse.Namespace, out: Path) -> int:
    """``--cost --engine c``: interleaved pairs, ``ocm1r`` then ``ocm1``, with cload."""
    profile = COST_C_QUICK if args.quick else COST_C_PROFILE
    cload = climit.build()["cload"]
    pairs: list[tuple[float, float]] = []
    for i in range(args.pairs):
        on = cost_run_c(cload, profile, "ocm1r", out / f"cload-ocm1r-{i + 1}.json")
        off = cost_run_c(cload, profile, "ocm1", out / f"cload-ocm1-{i + 1}.json")
        pairs.append((on, off))
        print(f"pair {i + 1}: ocm1r {on:.2f} µs per inbound datagram, ocm1 {off:.2f}, "
              f"ratio {on / off:.3f}", flush=True)
    return summarize_pairs(pairs, {"engine": "c", "profile": profile},
                           " per inbound datagram", out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.reliable",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the two runs")
    parser.add_argument("--quick", action="store_true", help="a small profile, for testing")
    parser.add_argument("--cost", action="store_true",
                        help="measure ocm1r's server CPU against ocm1 at 0 %% loss instead")
    parser.add_argument("--pairs", type=int, default=7, help="--cost: interleaved pairs")
    parser.add_argument("--engine", choices=("python", "c"), default="python",
                        help="the loss engine: ocm-loadgen (client/reliable.py itself, "
                             "loss and outage rounds) or cload --loss (its C port, loss "
                             "rounds only) [python]")
    parser.add_argument("--rooms", type=int, default=None,
                        help="--engine c: rooms of 10 [500; --quick: 6 of 4]")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the reports go (default: a temporary directory)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="ocm-bench-reliable-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.cost:
        return cost_c(args, out) if args.engine == "c" else cost(args, out)
    if args.engine == "c":
        return c_engine(args, out)
    profile = QUICK if args.quick else PROFILE
    kinds = {"loss": [*profile, *LOSS],
             "outage": [*profile, *LOSS, *(QUICK_OUTAGE if args.quick else OUTAGE)]}
    runs: dict[str, list[dict[str, float | None]]] = {kind: [] for kind in kinds}
    with servers.start(servers.control_command(2)) as server:
        for i in range(args.repeat):
            for kind, loadgen_args in kinds.items():
                report = run_one(server, loadgen_args, out / f"{kind}-{i + 1}.json")
                runs[kind].append(figures(report))
                print(f"{kind} {i + 1}: " + ", ".join(
                    f"{k} {v}" for k, v in runs[kind][-1].items() if v is not None))
    summary = {kind: {key: median([f[key] for f in found]) for key in found[0]}
               for kind, found in runs.items()}
    summary_text = orjson.dumps({"profile": profile, "runs": runs, "medians": summary},
                                option=orjson.OPT_INDENT_2)
    (out / "summary.json").write_bytes(summary_text)
    for kind, medians in summary.items():
        print(f"median {kind}: " + ", ".join(f"{k} {v}" for k, v in medians.items()
                                              if v is not None))
    print(f"reports in {out}")
    return 0


def c_engine(args: argparse.Namespace, out: Path) -> int:
    """``--engine c``: ``--repeat`` rounds of both kinds with cload, each run against a
    fresh server."""
    profile = dict(CLOAD_QUICK if args.quick else CLOAD_PROFILE)
    if args.rooms is not None:
        profile["rooms"] = args.rooms
    cload = climit.build()["cload"]
    runs: dict[str, list[dict[str, float | None]]] = {"loss": [], "outage": []}
    for i in range(args.repeat):
        for kind, found in runs.items():  # a fresh server: no members of the last run
            with servers.start(servers.control_command(2)) as server:
                found.append(run_cload(server, cload, profile, out, kind, i + 1))
            print(f"{kind} {i + 1} (cload): " + ", ".join(
                f"{k} {v:.4g}" for k, v in found[-1].items() if v is not None), flush=True)
    medians = {kind: {key: median([r[key] for r in found]) for key in found[0]}
               for kind, found in runs.items()}
    (out / "summary.json").write_bytes(orjson.dumps(
        {"engine": "c", "profile": profile, "loss_pct": CLOAD_LOSS_PCT, "runs": runs,
         "medians": medians}, option=orjson.OPT_INDENT_2))
    for kind, found_medians in medians.items():
        print(f"median {kind} (cload): " + ", ".join(
            f"{k} {v:.4g}" for k, v in found_medians.items() if v is not None))
    print(f"reports in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
