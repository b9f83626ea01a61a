"""``ocm-loadgen``: the command line, and the order of a run (setup, runs, exits, report)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib.util
import os
import shlex
import sys
import time
from typing import Any, Final, NoReturn

from client.session import JoinFailed, JoinRefused
from loadgen import capacity, fastpath, options
from loadgen.e2eload import MIN_E2E_SIZE
from loadgen.messages import CapacityFigures, RunFigures
from loadgen.options import CAPACITY_SLO_LOSS_PCT, CAPACITY_SLO_P99_MS, Options
from loadgen.report import LiveView, machine_info, print_summary, write_json, write_plot
from loadgen.runner import WAIT_WARN_PCT, Fleet, LoadgenError
from loadgen.targets import first_host, split_servers
from loadgen.tokens import UnprintableField, encode_file
from loadgen.transport import resolve_mode
from runtime import sched

EXIT_OK: Final = 0
EXIT_SLO_BROKEN: Final = 1
EXIT_USAGE: Final = 2
EXIT_FAILED: Final = 3

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
  warm-up          deliveries of messages scheduled before the measured window (sent during
                   --warmup, or in an earlier run of a capacity search): received and
                   checked, but in none of the figures above.
  loadgen CPU      share of one core per loadgen process; above 90 % the loadgen itself
                   may be the bottleneck (a warning says so).

--find-capacity runs the profile at --rate, then x --step-factor while every SLO holds
(or / --step-factor while it breaks), then bisects to --precision; it reports the last
per-user rate that held. Without
explicit SLOs it uses p99 <= {CAPACITY_SLO_P99_MS:g} ms and loss <= {CAPACITY_SLO_LOSS_PCT:g} %.
A rate whose median latency keeps growing through the window (queues building: deep
socket buffers can hide an overload from the loss figure for seconds) breaks any SLO.

--join-only only joins and binds (no run, no /exit) and exits: the members stay until the
server's inactivity timeout (default 300 s) unless something speaks for them. With
--tokens-out FILE (which implies it) every member is written for cload --tokens
(tests/bench/perf); cload's first, empty datagram from its own port then re-binds each
member's address (a valid datagram from the IP the token is bound to, 127.0.0.1), so the
loadgen need not stay. Exit code 0 if every member joined, else 1 (the file lists those
that did).

exit codes: 0 ok (every SLO held, or a capacity was found), 1 an SLO was broken (or no
rate held), 2 bad usage, 3 the run failed (server unreachable, a loadgen process died,
the loadgen extra not installed).

example:  ocm-loadgen --rooms 500 --users 10 --rate 2 --json out.json --plot out.png
"""


class _OneLineParser(argparse.ArgumentParser):
    """Every usage error (bad choice, unknown flag, value out of range) is one line and
    exit code 2; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``Options`` and ``Output`` (loadgen/options.py), with this help."""
    parser = _OneLineParser(prog="ocm-loadgen", description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_arguments(parser)
    return parser


def _options_json(opts: Options) -> dict[str, Any]:
    out = dataclasses.asdict(opts)
    out["password"] = None if opts.password is None else "***"
    return out


def no_join_message(opts: Options, failures: dict[str, int]) -> str:
    """Why no member could join, said as ``ocm-chat`` says it when the server is not there.

    ``failures`` counts the joins by outcome: a status name (``ROOM_FULL``), ``timeout``,
    ``os:<errno>`` (the connection failed) or ``protocol:<error>``."""
    where = f"{opts.server}:{opts.tcp_port}"
    errnos = {int(k[3:]) for k in failures if k.startswith("os:") and k[3:].isdigit()}
    if failures and len(errnos) == len(failures):
        if errnos == {errno.ECONNREFUSED}:
            return (f"cannot reach the server at {where} (connection refused); is "
                    "ocm-control running there?")
        reasons = ", ".join(sorted(os.strerror(e) for e in errnos))
        return f"cannot reach the server at {where} ({reasons})"
    if set(failures) == {"timeout"}:
        return (f"the server at {where} did not answer within {opts.join_timeout:g} s "
                "(--join-timeout)")
    outcomes = ", ".join(f"{n} {name}" for name, n in sorted(failures.items()))
    return f"no member could join the server at {where}: {outcomes}"


def _held(run: RunFigures) -> bool:
    return run.slo.held and not run.aborted


def _disturbed(run: RunFigures) -> bool:
    """The loadgen waited for a CPU: something else (maybe the server) crowded the cores."""
    return max(run.loadgen_wait_pct or [0.0]) > WAIT_WARN_PCT


def _search(fleet: Fleet, opts: Options) -> tuple[list[RunFigures], CapacityFigures]:
    """``--find-capacity``: runs at the rates ``capacity.next_rate`` picks (a disturbed
    break is re-run up to ``--retries`` times)."""
    runs: list[RunFigures] = []
    steps: list[capacity.Step] = []
    rate = capacity.next_rate(steps, opts.rate, opts.step_factor, opts.precision,
                              opts.max_steps)
    while rate is not None and not fleet.interrupted:
        run = fleet.run(rate)
        runs.append(run)
        for _ in range(opts.retries):
            if _held(run) or not _disturbed(run) or fleet.interrupted:
                break
            run = fleet.run(rate)
            run.retry = True
            runs.append(run)
        steps.append(capacity.Step(rate, _held(run), run.loadgen_saturated))
        rate = capacity.next_rate(steps, opts.rate, opts.step_factor, opts.precision,
                                  opts.max_steps)
    best = capacity.capacity(steps)
    held = [r for r in runs if r.rate_per_user == best and _held(r)]
    return runs, CapacityFigures(
        rate_per_user=best, in_per_s=held[0].in_per_s if held else None,
        out_per_s=held[0].out_per_s if held else None, slo_p99_ms=opts.slo.p99_ms,
        slo_loss_pct=opts.slo.loss_pct, limited_by_loadgen=capacity.limited_by_loadgen(steps),
        steps=[(s.rate, s.held, s.loadgen_saturated) for s in steps])


def execute(opts: Options, live: LiveView) -> dict[str, Any]:
    """Setup, the run(s), exits; return the JSON report (without ``exit_code``)."""
    t_start = time.monotonic()
    report: dict[str, Any] = {"tool": "ocm-loadgen", "options": _options_json(opts),
                              "machine": machine_info()}
    cap: CapacityFigures | None = None
    with Fleet(opts, live.on_event) as fleet:
        report["procs"] = fleet.procs
        ready = fleet.start()
        report["accounting"] = sorted({r.accounting for r in ready})
        report["sched"] = sorted({r.sched for r in ready})
        notes = [fleet.accounting_note] if fleet.accounting_note else []
        setup = fleet.setup()
        report["setup"] = setup.to_json()
        if setup.joins_ok == 0:
            raise LoadgenError(no_join_message(opts, setup.failures))
        if setup.max_message < opts.size:
            raise LoadgenError(f"--size {opts.size} is over the server's max_message "
                               f"{setup.max_message}")
        if opts.join_only:
            report["tokens"] = fleet.tokens
            report["joined"] = setup.joins_ok
            return report
        if opts.find_capacity:
            runs, cap = _search(fleet, opts)
        else:
            runs = [fleet.run(opts.rate)]
        live.on_event("phase", {"phase": "leaving (/exit)"})
        report["exits"] = fleet.finish()
        report["parent_cpu_pct"] = fleet.parent_cpu_pct(time.monotonic() - t_start)
    for run in runs:
        run.warnings.extend(notes)
    result = runs[0]
    if cap is not None:
        held = [r for r in runs if r.rate_per_user == cap.rate_per_user and _held(r)]
        result = held[0] if held else runs[-1]
    report["runs"] = [run.to_json() for run in runs]
    report["result"] = result.to_json()
    report["capacity"] = None if cap is None else cap.to_json()
    return report


def _finish_join_only(report: dict[str, Any], opts: Options, tokens_out: str | None,
                      json_out: str | None) -> int:
    """``--join-only``: say how many joined, write ``--tokens-out``; exit 0 if all did."""
    tokens = report.pop("tokens")
    setup = report["setup"]
    where = ""
    if tokens_out:
        try:
            text = encode_file(tokens)
        except UnprintableField as exc:
            print(f"ocm-loadgen: --tokens-out: {exc}", file=sys.stderr)
            return EXIT_FAILED
        with open(tokens_out, "w", encoding="ascii") as out:
            out.write(text)
        where = f"; {len(tokens)} tokens in {tokens_out}"
    code = EXIT_OK if setup["joins_failed"] == 0 and not setup["framing_mismatch"] \
        else EXIT_SLO_BROKEN
    report["exit_code"] = code
    print(f"joined {setup['joins_ok']} of {opts.members} members in "
          f"{setup['join_seconds']:.1f} s ({setup['bound_missing']} not bound){where}; they "
          f"stay until {setup['inactivity_timeout_s']:g} s of silence (inactivity timeout)")
    if setup["failures"]:
        print(f"failed joins: {setup['failures']}", file=sys.stderr)
    if setup["framing_mismatch"]:
        print(f"{setup['framing_mismatch']} members were not given the {opts.framing} "
              "framing they asked for", file=sys.stderr)
    if json_out:
        write_json(json_out, report)
    return code


def _run_lossy(opts: options.Options, output: options.Output, argv_list: list[str]) -> int:
    """``--loss PCT``: reliable delivery under loss (loadgen/lossy.py)."""
    from loadgen import lossy

    host, port = split_servers(opts.server, opts.tcp_port)[0]
    why_not = lossy.cannot_run(host, opts.accounting)
    if why_not is not None:
        print(f"ocm-loadgen: --loss: {why_not}", file=sys.stderr)
        return EXIT_FAILED
    try:
        report = lossy.run_lossy(lossy.LossOptions(
            host, port, opts.rooms, opts.users, opts.rate, opts.duration, opts.drain,
            opts.loss or 0.0, not opts.no_recovery, server_pid=opts.server_pid,
            procs=opts.effective_procs(), outage_s=opts.outage_seconds,
            seed=opts.seed, accounting=opts.accounting))
    except (OSError, ValueError, JoinFailed, JoinRefused) as exc:
        print(f"ocm-loadgen: {exc}", file=sys.stderr)
        return EXIT_FAILED
    report["command"] = "ocm-loadgen " + shlex.join(argv_list)
    report["label"] = output.label
    report["exit_code"] = EXIT_OK
    if not output.quiet:
        for line in lossy.summary_lines(report):
            print(line, file=sys.stderr)
    if output.json:
        write_json(output.json, report)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    opts, output = options.from_args(args)
    if output.tokens_out:
        if opts.sockets == "shared":
            parser.error("--tokens-out needs --sockets member: the tokens are bound to the IP "
                         "each member joined from, and cload sends from 127.0.0.1")
        opts = dataclasses.replace(opts, join_only=True, sockets="member")
    if opts.framing == "ocm1r" and not opts.join_only:
        parser.error("--framing ocm1r needs --join-only or --tokens-out (cload --reliable "
                     "sends to such members); --loss runs ask for ocm1r themselves")
    if opts.join_only and opts.find_capacity:
        parser.error("--join-only (or --tokens-out) runs nothing: drop --find-capacity")
    try:
        split_servers(opts.server, opts.tcp_port)
        opts = dataclasses.replace(opts, sockets=resolve_mode(opts.sockets,
                                                                 first_host(opts.server)))
    except ValueError as exc:
        parser.error(str(exc))
    refused = sched.probe(opts.realtime_priority, "the loadgen", "--realtime-priority 0")
    if refused is not None:
        parser.error(refused)
    if opts.e2e:
        if opts.size < MIN_E2E_SIZE:
            parser.error(f"--e2e needs --size >= {MIN_E2E_SIZE} (the encrypted Message: "
                         f"{MIN_E2E_SIZE} bytes of header, tag and signature, then the text)")
        if opts.accounting == "c":
            parser.error("--accounting c cannot read encrypted deliveries; --e2e accounts "
                         "in Python (give --accounting python to the plain run it is "
                         "compared with)")
        if opts.framing != "ocm1":
            opts = dataclasses.replace(opts, framing="ocm1")  # encrypted rooms require it
    elif opts.e2e_corrupt_every:
        parser.error("--e2e-corrupt-every needs --e2e")
    if opts.accounting == "c":
        if opts.sockets != "shared":
            parser.error("--accounting c needs --sockets shared")
        if not opts.rx_timestamps:
            parser.error("--accounting c needs receive timestamps (drop --no-rx-timestamps)")
        why_not = fastpath.resolve("c")
        if why_not is not None:
            parser.error(f"--accounting c: {why_not}")
    if output.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib, from the loadgen extra: "
                     "pip install 'ocm[loadgen]'")
    argv_list = sys.argv[1:] if argv is None else argv
    if opts.loss is not None:
        return _run_lossy(opts, output, argv_list)
    if opts.no_recovery:
        parser.error("--no-recovery needs --loss")
    if opts.outage_seconds:
        parser.error("--outage-seconds needs --loss")
    if opts.seed is not None:
        parser.error("--seed needs --loss")
    live = LiveView(enabled=not output.quiet and sys.stderr.isatty(), members=opts.members)
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
    report["label"] = output.label
    if opts.join_only:
        return _finish_join_only(report, opts, output.tokens_out, output.json)
    if opts.find_capacity:
        code = EXIT_OK if report["capacity"]["rate_per_user"] is not None else EXIT_SLO_BROKEN
    else:
        code = EXIT_OK if report["result"]["slo"]["held"] else EXIT_SLO_BROKEN
    report["exit_code"] = code
    print_summary(report)
    if output.json:
        write_json(output.json, report)
    if output.plot:
        write_plot(output.plot, report)
    return code
