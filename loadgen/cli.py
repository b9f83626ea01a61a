"""``ocm-loadgen``: the command line, and the order of a run (setup, runs, exits, report)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from typing import Any, Final

from loadgen import capacity, fastpath
from loadgen.meter import HEADER_BYTES, Slo
from loadgen.report import LiveView, machine_info, print_summary, write_json, write_plot
from loadgen.runner import WAIT_WARN_PCT, Fleet, LoadgenError, Options
from loadgen.transport import MODES, resolve_mode
from relay import sched

EXIT_OK: Final = 0
EXIT_SLO_BROKEN: Final = 1
EXIT_USAGE: Final = 2
EXIT_FAILED: Final = 3
CAPACITY_SLO_P99_MS: Final = 5.0
CAPACITY_SLO_LOSS_PCT: Final = 0.1

DESCRIPTION = """\
Capacity tester for an OCM server (or any server speaking the OCM wire protocol).

Every simulated user joins through a real TCRP request with its own username, token and
UDP socket: user 0 of each room creates it (and is its host), the others join; each member
then sends an empty keepalive to bind its address, and the run starts once the `joined`
notices show every member bound. Then each user sends --rate chat messages per second of
--size bytes for --warmup + --duration seconds, paced by a schedule: latency is measured
from the SCHEDULED send time (as wrk2 does), so a stalled sender cannot hide queueing.
Only the --duration window counts. Each message carries its sender, sequence number and
scheduled time, so every delivery is accounted for: expected (sent x other bound members),
delivered, lost, duplicated, misrouted (another room's message). Latency percentiles come
from an HDR histogram merged across the --procs loadgen processes (each owns a disjoint
slice of rooms). At the end every non-host sends /exit, then every host.
"""

EPILOG = f"""\
reading the results:
  in/s and out/s   datagrams sent to the server and deliveries received per second;
                   the headline profile (500 x 10 x 2) is 10,000 in and 90,000 out.
  p50 ... max      delivery latency from the scheduled send time to the loadgen reading
                   it; p99 is the SLO figure.
  relay latency    from the real send to the kernel queueing the delivery on the receiving
                   socket (SO_TIMESTAMPNS): the server's part alone, without the loadgen's
                   own waits for a CPU (which the figure above includes).
  lost             expected - delivered after a --drain period; loss % = lost / expected.
  loadgen CPU      share of one core per loadgen process; above 90 % the loadgen itself
                   may be the bottleneck (a warning says so).

--find-capacity runs the profile at --rate, then x --step-factor while every SLO holds
(or / --step-factor while it breaks), then bisects to --precision; it reports the last
per-user rate that held. Without
explicit SLOs it uses p99 <= {CAPACITY_SLO_P99_MS:g} ms and loss <= {CAPACITY_SLO_LOSS_PCT:g} %.
A rate whose median latency keeps growing through the window (queues building: deep
socket buffers can hide an overload from the loss figure for seconds) breaks any SLO.

exit codes: 0 ok (every SLO held, or a capacity was found), 1 an SLO was broken (or no
rate held), 2 bad usage, 3 the run failed (server unreachable, a loadgen process died).

example:  ocm-loadgen --rooms 500 --users 10 --rate 2 --json out.json --plot out.png
"""


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ocm-loadgen", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("profile")
    g.add_argument("--rooms", type=_positive(int), default=500, help="chat rooms [500]")
    g.add_argument("--users", type=_positive(int), default=10,
                   help="members per room, host included [10]")
    g.add_argument("--rate", type=_positive(float), default=2.0,
                   help="chat messages per second per user (the start rate with "
                   "--find-capacity) [2]")
    g.add_argument("--duration", type=_positive(float), default=10.0,
                   help="measured seconds per run [10]")
    g.add_argument("--warmup", type=_non_negative, default=2.0,
                   help="seconds of sending before the measurement starts [2]")
    g.add_argument("--size", type=int, default=100,
                   help=f"bytes of chat text per message, >= {HEADER_BYTES} [100]")
    g.add_argument("--framing", choices=("plain", "ocm1"), default="plain",
                   help="delivery format to ask for [plain]")
    g.add_argument("--password", default=None, help="protect the rooms with this password")
    g = p.add_argument_group("server")
    g.add_argument("--server", default="127.0.0.1", help="server address [127.0.0.1]")
    g.add_argument("--tcp-port", type=int, default=9000, help="TCRP port [9000]; the chat "
                   "port comes from each join's State 1 details")
    g = p.add_argument_group("loadgen")
    g.add_argument("--sockets", choices=MODES, default="auto",
                   help="member addresses: 'member' = one UDP socket per member on this "
                   "host's IP (works against any server); 'shared' = one socket per "
                   "process and a loopback IP per member (127.100+.x.y), read in recvmmsg "
                   "batches; loopback servers only; 'auto' = shared when the server is on "
                   "loopback [auto]")
    g.add_argument("--no-rx-timestamps", dest="rx_timestamps", action="store_false",
                   help="do not ask the kernel for receive timestamps (SO_TIMESTAMPNS); "
                   "they cost some CPU on both sides (docs/benchmarks.md) and without them "
                   "the relay latency ends at the read time, like the end-to-end one")
    g.add_argument("--accounting", choices=fastpath.MODES, default="auto",
                   help="who accounts deliveries read from a shared socket: 'c' = a small C "
                   "routine compiled on first use with $CC (cc) into ~/.cache/ocm, which "
                   "takes most of the loadgen's CPU off the cores it shares with the "
                   "server; 'python' = the reference path; 'auto' = C where it can be "
                   "built, else Python with a warning [auto]")
    g.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                   help="run the loadgen processes under SCHED_FIFO at priority N (1..99), "
                   "so that their own waits for a CPU do not dominate the latency they "
                   "measure; give the server a higher one (ocm-control "
                   "--realtime-priority). Needs root or CAP_SYS_NICE [0 = normal]")
    g.add_argument("--procs", type=int, default=0,
                   help="loadgen processes, each with a disjoint slice of rooms "
                   "[0 = CPU count]")
    g.add_argument("--join-concurrency", type=_positive(int), default=64,
                   help="TCRP joins in flight, over all processes [64]")
    g.add_argument("--join-timeout", type=_positive(float), default=10.0,
                   help="seconds per TCRP join [10]")
    g.add_argument("--bind-timeout", type=_positive(float), default=10.0,
                   help="seconds to wait for the `joined` notices after the joins [10]")
    g.add_argument("--drain", type=_non_negative, default=2.0,
                   help="seconds to wait for late deliveries after sending stops; ends "
                   "early once everything arrived [2]")
    g.add_argument("--server-pid", type=int, default=None, metavar="PID",
                   help="also report the CPU used by this process and its descendants "
                   "(e.g. ocm-control and its workers) while measuring; same machine only")
    g.add_argument("--pacing-us", type=_positive(float), default=100.0, metavar="US",
                   help="finest pacing step: sends due within it go out together; finer "
                   "costs more timer wake-ups [100]")
    g.add_argument("--quiet", action="store_true", help="no live progress")
    g.add_argument("--label", default=None, help="name of the server in the report/plot")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", default=None, help="write every figure as JSON")
    g.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write latency percentiles and throughput over time as a PNG")
    g = p.add_argument_group("SLOs and capacity")
    g.add_argument("--slo-p99-ms", type=_positive(float), default=None,
                   help="fail (exit 1) if p99 latency is above this many ms")
    g.add_argument("--slo-loss-pct", type=_non_negative, default=None,
                   help="fail (exit 1) if more than this %% of deliveries is lost")
    g.add_argument("--find-capacity", action="store_true",
                   help="step the rate up until an SLO breaks; report the last rate that held")
    g.add_argument("--step-factor", type=float, default=capacity.DEFAULT_FACTOR,
                   help=f"rate multiplier between steps [{capacity.DEFAULT_FACTOR}]")
    g.add_argument("--precision", type=_positive(float), default=capacity.DEFAULT_PRECISION,
                   help="stop bisecting when held and broken rates are this close "
                   f"(relative) [{capacity.DEFAULT_PRECISION}]")
    g.add_argument("--max-steps", type=_positive(int), default=capacity.DEFAULT_MAX_STEPS,
                   help=f"most rates in a capacity search [{capacity.DEFAULT_MAX_STEPS}]")
    g.add_argument("--retries", type=int, default=0,
                   help="re-run a capacity step that broke while the loadgen waited for a "
                   "CPU (other work on the machine) up to this many times [0]")
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    slo = Slo(args.slo_p99_ms, args.slo_loss_pct)
    if args.find_capacity and not slo.enabled:
        slo = Slo(CAPACITY_SLO_P99_MS, CAPACITY_SLO_LOSS_PCT)
    return Options(
        rooms=args.rooms, users=args.users, rate=args.rate, duration=args.duration,
        warmup=args.warmup, size=args.size, procs=args.procs, server=args.server,
        tcp_port=args.tcp_port, framing=args.framing, password=args.password, slo=slo,
        find_capacity=args.find_capacity, step_factor=args.step_factor,
        precision=args.precision, max_steps=args.max_steps, drain=args.drain,
        join_concurrency=args.join_concurrency, join_timeout=args.join_timeout,
        bind_timeout=args.bind_timeout, server_pid=args.server_pid, pacing_us=args.pacing_us,
        retries=args.retries, sockets=args.sockets, rx_timestamps=args.rx_timestamps,
        accounting=args.accounting, realtime_priority=args.realtime_priority,
    )


def _options_json(opts: Options) -> dict[str, Any]:
    out = {k: getattr(opts, k) for k in Options.__dataclass_fields__ if k != "slo"}
    out["password"] = None if opts.password is None else "***"
    out["slo_p99_ms"] = opts.slo.p99_ms
    out["slo_loss_pct"] = opts.slo.loss_pct
    return out


def _held(run: dict[str, Any]) -> bool:
    return bool(run["slo"]["held"]) and not run["aborted"]


def _disturbed(run: dict[str, Any]) -> bool:
    """The loadgen waited for a CPU: something else (maybe the server) crowded the cores."""
    return bool(max(run.get("loadgen_wait_pct") or [0.0]) > WAIT_WARN_PCT)


def execute(opts: Options, live: LiveView) -> dict[str, Any]:
    """Setup, the run(s), exits; return the report (without ``exit_code``)."""
    t_start = time.monotonic()
    report: dict[str, Any] = {"tool": "ocm-loadgen", "options": _options_json(opts),
                              "machine": machine_info()}
    with Fleet(opts, live.on_event) as fleet:
        report["procs"] = fleet.procs
        ready = fleet.start()
        report["accounting"] = sorted({r["accounting"] for r in ready})
        report["sched"] = sorted({r["sched"] for r in ready})
        notes = [fleet.accounting_note] if fleet.accounting_note else []
        setup = report["setup"] = fleet.setup()
        if setup["joins_ok"] == 0:
            raise LoadgenError(f"no member could join: {setup['failures']}")
        if setup["max_message"] < opts.size:
            raise LoadgenError(f"--size {opts.size} is over the server's max_message "
                               f"{setup['max_message']}")
        runs: list[dict[str, Any]] = []
        steps: list[capacity.Step] = []
        if opts.find_capacity:
            rate = capacity.next_rate(steps, opts.rate, opts.step_factor, opts.precision,
                                      opts.max_steps)
            while rate is not None and not fleet.interrupted:
                run = fleet.run(rate)
                runs.append(run)
                for _ in range(opts.retries):
                    if _held(run) or not _disturbed(run) or fleet.interrupted:
                        break
                    run = fleet.run(rate)
                    run["retry"] = True
                    runs.append(run)
                steps.append(capacity.Step(rate, _held(run), run["loadgen_saturated"]))
                rate = capacity.next_rate(steps, opts.rate, opts.step_factor, opts.precision,
                                          opts.max_steps)
        else:
            runs.append(fleet.run(opts.rate))
        live.on_event("phase", {"phase": "leaving (/exit)"})
        report["exits"] = fleet.finish()
        report["parent_cpu_pct"] = fleet.parent_cpu_pct(time.monotonic() - t_start)
    for run in runs:
        run["warnings"].extend(notes)
    report["runs"] = runs
    if opts.find_capacity:
        best = capacity.capacity(steps)
        held = [r for r in runs if r["rate_per_user"] == best and _held(r)]
        report["result"] = held[0] if held else runs[-1]
        report["capacity"] = {
            "rate_per_user": best,
            "in_per_s": held[0]["in_per_s"] if held else None,
            "out_per_s": held[0]["out_per_s"] if held else None,
            "slo_p99_ms": opts.slo.p99_ms,
            "slo_loss_pct": opts.slo.loss_pct,
            "limited_by_loadgen": capacity.limited_by_loadgen(steps),
            "steps": [{"rate_per_user": s.rate, "held": s.held,
                       "loadgen_saturated": s.loadgen_saturated} for s in steps],
        }
    else:
        report["result"] = runs[0]
        report["capacity"] = None
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < HEADER_BYTES:
        parser.error(f"--size must be at least {HEADER_BYTES} bytes")
    if args.step_factor <= 1.0:
        parser.error("--step-factor must be > 1")
    opts = options_from_args(args)
    try:
        opts = dataclasses.replace(opts, sockets=resolve_mode(opts.sockets, opts.server))
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= opts.realtime_priority <= sched.MAX_PRIORITY:
        parser.error(f"--realtime-priority must be 0..{sched.MAX_PRIORITY}")
    refused = sched.probe(opts.realtime_priority, "the loadgen", "--realtime-priority 0")
    if refused is not None:
        parser.error(refused)
    if opts.accounting == "c":
        if opts.sockets != "shared":
            parser.error("--accounting c needs --sockets shared")
        if not opts.rx_timestamps:
            parser.error("--accounting c needs receive timestamps (drop --no-rx-timestamps)")
        why_not = fastpath.resolve("c")
        if why_not is not None:
            parser.error(f"--accounting c: {why_not}")
    argv_list = sys.argv[1:] if argv is None else argv
    live = LiveView(enabled=not args.quiet and sys.stderr.isatty(), members=opts.members)
    try:
        with live:
            report = execute(opts, live)
    except LoadgenError as exc:
        print(f"ocm-loadgen: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("ocm-loadgen: interrupted", file=sys.stderr)
        return EXIT_FAILED
    report["command"] = "ocm-loadgen " + shlex.join(argv_list)
    report["label"] = args.label
    if opts.find_capacity:
        code = EXIT_OK if report["capacity"]["rate_per_user"] is not None else EXIT_SLO_BROKEN
    else:
        code = EXIT_OK if report["result"]["slo"]["held"] else EXIT_SLO_BROKEN
    report["exit_code"] = code
    print_summary(report)
    if args.json:
        write_json(args.json, report)
    if args.plot:
        write_plot(args.plot, report)
    return code
