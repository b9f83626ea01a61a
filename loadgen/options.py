"""What ``ocm-loadgen`` is asked to do: two frozen dataclasses, and the flags derived from
them by the settings engine that also derives ``ocm-control``'s (runtime/settings.py).

``Options`` is everything a run needs (runner.py's ``Fleet`` takes it); ``Output`` is what
is shown and written afterwards. Every field is one flag (``--join-timeout`` for
``join_timeout``); its declaration holds the help text, the argument group and the bounds.
``add_arguments(parser)`` adds the flags, ``from_args(args)`` builds both dataclasses
from the parsed flags. A value out of bounds is an ``argparse`` error naming the flag.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import Field, dataclass, replace
from typing import Any, Final

from loadgen import capacity, fastpath
from loadgen.e2eload import DEFAULT_VERIFY_EVERY, MAX_VERIFY_EVERY, MIN_E2E_SIZE
from loadgen.meter import HEADER_BYTES, Slo
from loadgen.transport import MODES as SOCKET_MODES
from runtime import sched, settings
from runtime.settings import flag_name
from wire import limits

CAPACITY_SLO_P99_MS: Final = 5.0
"""The p99 SLO of ``--find-capacity`` when no SLO is given."""
CAPACITY_SLO_LOSS_PCT: Final = 0.1
"""The loss SLO of ``--find-capacity`` when no SLO is given."""

GROUPS: Final = ("profile", "server", "loadgen", "output", "SLOs and capacity")


def _f(default: Any, help: str, group: str, **meta: Any) -> Any:
    """A field and its flag in ``group``; ``meta`` as ``runtime.settings.Meta``: ``above``
    (exclusive), ``minimum`` and ``maximum`` (inclusive) bound a number; ``flag`` replaces
    the derived name (``--no-rx-timestamps`` for a boolean that defaults to true);
    ``shown`` replaces the default in the help."""
    assert group in GROUPS
    return settings.setting(default, help, group=group, **meta)


@dataclass(frozen=True, slots=True)
class Options:
    """Everything a run needs (``Fleet`` takes it; built by ``from_args``)."""

    rooms: int = _f(500, "chat rooms", "profile", above=0)
    users: int = _f(10, "members per room, host included", "profile", above=0)
    rate: float = _f(2.0, "chat messages per second per user (the start rate with "
                          "--find-capacity)", "profile", above=0)
    duration: float = _f(10.0, "measured seconds per run", "profile", above=0)
    warmup: float = _f(2.0, "seconds of sending before the measurement starts; their "
                            "deliveries are counted as 'warm-up', not measured", "profile",
                       minimum=0)
    size: int = _f(100, f"bytes of chat text per message, >= {HEADER_BYTES}; with --e2e the "
                        f"bytes of the whole encrypted Message (kind, header, ciphertext, "
                        f"tag, signature), >= {MIN_E2E_SIZE}, so a datagram has the same "
                        "size as a plain one", "profile", minimum=HEADER_BYTES)
    framing: str = _f("plain", "delivery format to ask for; ocm1r (numbered, acknowledged) "
                               "only with --join-only or --tokens-out, for cload --reliable "
                               "(--loss runs ask for ocm1r themselves)", "profile",
                      choices=("plain", "ocm1", "ocm1r"))
    password: str | None = _f(None, "protect the rooms with this password", "profile",
                              shown="none")
    e2e: bool = _f(False, "end-to-end encrypted rooms (docs/e2e.md): hosts create with "
                          "\"e2e\": true and every member sends its public keys; ocm1 "
                          "framing, Python accounting. Each member seals all of a run's "
                          "messages with the real engine (client/e2e) before the run and "
                          "sends them as plain messages are sent. Every delivery is "
                          "mapped back to its sender and sequence number by the chain id "
                          "and counter of the sealed message (send time from the "
                          "sender's log) and compared byte for byte with what that sender "
                          "sealed; 1 in --e2e-verify-every deliveries to each sender's "
                          "checking member is decrypted and its signature verified by "
                          "that member's engine after the run. A failed check breaks the "
                          "run (exit 1)", "profile")
    e2e_verify_every: int = _f(DEFAULT_VERIFY_EVERY, "--e2e: decrypt and verify every "
                                                     "N-th message of each sender at one "
                                                     "member of its room", "profile",
                               minimum=1, maximum=MAX_VERIFY_EVERY, metavar="N")
    e2e_corrupt_every: int = _f(0, "--e2e self-test of the checks: flip one ciphertext bit "
                                   "of every N-th sealed message before it is sent (the "
                                   "run must then fail)", "profile", minimum=0,
                                metavar="N", shown="0 = never")
    server: str = _f("127.0.0.1", "server address, or several comma-separated "
                             "HOST[:PORT] (a cluster's nodes): joins are spread over them",
                             "server")
    tcp_port: int = _f(limits.DEFAULT_TCP_PORT,
                       "TCRP port; the chat port comes from each join's State 1 details",
                       "server", minimum=1, maximum=65535)
    tls_ca: str | None = _f(None, "join over TLS (--tcp-port is then the server's TLS port), "
                                  "verifying its certificate against this CA file (PEM); "
                                  "the server then gives each member a datagram key and "
                                  "every datagram is sealed with its MAC (docs/protocol.md "
                                  "§8), by this loadgen and, with --tokens-out, by cload",
                            "server", metavar="FILE", shown="none: plain TCRP")
    sockets: str = _f("auto", "member addresses: 'member' = one UDP socket per member on "
                              "this host's IP (works against any server); 'shared' = one "
                              "socket per process and a loopback IP per member (127.100+.x.y), "
                              "read in recvmmsg batches; loopback servers only; 'auto' = "
                              "shared when the server is on loopback", "loadgen",
                      choices=SOCKET_MODES)
    """``member``, ``shared`` or ``auto`` (transport.py); ``from_args`` resolves ``auto``."""
    rx_timestamps: bool = _f(True, "do not ask the kernel for receive timestamps "
                                   "(SO_TIMESTAMPNS); they cost some CPU on both sides "
                                   "and without them the relay latency "
                                   "ends at the read time, like the end-to-end one", "loadgen",
                             flag="--no-rx-timestamps")
    accounting: str = _f("auto", "who accounts deliveries read from a shared socket: 'c' = "
                                 "the C extension built at install time (loadgen._account; "
                                 "with --loss loadgen._reliable), "
                                 "which takes most of the loadgen's CPU off the cores it "
                                 "shares with the server; 'python' = the reference path; "
                                 "'auto' = C where it was built, else Python with a warning",
                         "loadgen", choices=fastpath.MODES)
    realtime_priority: int = _f(0, "run the loadgen processes under SCHED_FIFO at priority "
                                   "N (1..99), so that their own waits for a CPU do not "
                                   "dominate the latency they measure; give the server a "
                                   "higher one (ocm-control --realtime-priority). Needs root "
                                   "or CAP_SYS_NICE", "loadgen", minimum=0,
                                maximum=sched.MAX_PRIORITY, metavar="N",
                                shown="0 = normal")
    """``SCHED_FIFO`` priority of the loadgen processes; 0 = normal scheduling."""
    procs: int = _f(0, "loadgen processes, each with a disjoint slice of rooms", "loadgen",
                    minimum=0, shown="0 = CPU count")
    join_concurrency: int = _f(64, "TCRP joins in flight, over all processes", "loadgen",
                               above=0)
    join_timeout: float = _f(10.0, "seconds per TCRP join", "loadgen", above=0)
    bind_timeout: float = _f(10.0, "seconds to wait for the `joined` notices after the "
                                   "joins", "loadgen", above=0)
    drain: float = _f(2.0, "seconds to wait for late deliveries after sending stops; ends "
                           "early once everything arrived", "loadgen", minimum=0)
    server_pid: int | None = _f(None, "also report the CPU used by this process and its "
                                      "descendants (e.g. ocm-control and its workers) while "
                                      "measuring; same machine only", "loadgen", above=0,
                                metavar="PID", shown="none")
    pacing_us: float = _f(100.0, "finest pacing step: sends due within it go out together; "
                                 "finer costs more timer wake-ups", "loadgen", above=0,
                          metavar="US")
    slo_p99_ms: float | None = _f(None, "fail (exit 1) if p99 latency is above this many ms",
                                  "SLOs and capacity", above=0, shown="none")
    slo_loss_pct: float | None = _f(None, "fail (exit 1) if more than this % of deliveries "
                                          "is lost", "SLOs and capacity", minimum=0,
                                    shown="none")
    find_capacity: bool = _f(False, "step the rate up until an SLO breaks; report the last "
                                    "rate that held (without an SLO: p99 <= "
                                    f"{CAPACITY_SLO_P99_MS:g} ms, loss <= "
                                    f"{CAPACITY_SLO_LOSS_PCT:g} %)", "SLOs and capacity")
    step_factor: float = _f(capacity.DEFAULT_FACTOR, "rate multiplier between steps",
                            "SLOs and capacity", above=1)
    precision: float = _f(capacity.DEFAULT_PRECISION, "stop bisecting when held and broken "
                                                      "rates are this close (relative)",
                          "SLOs and capacity", above=0)
    max_steps: int = _f(capacity.DEFAULT_MAX_STEPS, "most rates in a capacity search",
                        "SLOs and capacity", above=0)
    loss: float | None = _f(None, "reliable delivery under loss (loadgen/lossy.py): drop "
                                  "this % of the datagrams each way inside the loadgen, "
                                  "members ask for ocm1r and run ocm-chat's recovery; "
                                  "reports delivered % after recovery, first-send-to-"
                                  "delivery latency, duplicates, out of order. --procs "
                                  "processes, one shared socket each (loopback servers "
                                  "only; in-order deliveries counted in C, see "
                                  "--accounting); uses --rooms --users --rate --duration "
                                  "--drain --server-pid --seed", "profile",
                            minimum=0, maximum=100, metavar="PCT", shown="none")
    outage_seconds: float = _f(0.0, "with --loss: the last member of every room goes silent "
                                    "both ways this long, from a third of --duration on, "
                                    "then resumes; reports how much of what it missed came "
                                    "back and how fast", "profile", minimum=0,
                               metavar="S")
    no_recovery: bool = _f(False, "with --loss: ask for ocm1 (no numbering, acks or "
                                  "resends), to compare", "profile")
    seed: int | None = _f(None, "with --loss: seed of the loss draws (the same seed drops "
                                "the same datagrams of the same traffic, per process); "
                                "default: random", "profile", metavar="N", shown="none")
    join_only: bool = _f(False, "only join (and bind each member's address), then exit: "
                                "no run and no /exit, so the members stay in their rooms "
                                "until the server's inactivity timeout unless something "
                                "else speaks for them (e.g. cload --tokens, with "
                                "--tokens-out)", "profile")
    retries: int = _f(0, "re-run a capacity step that broke while the loadgen waited for a "
                         "CPU (other work on the machine) up to this many times",
                      "SLOs and capacity", minimum=0)

    @property
    def slo(self) -> Slo:
        return Slo(self.slo_p99_ms, self.slo_loss_pct)

    @property
    def members(self) -> int:
        return self.rooms * self.users

    def effective_procs(self) -> int:
        procs = self.procs or os.cpu_count() or 1
        return max(1, min(procs, self.rooms))


@dataclass(frozen=True, slots=True)
class Output:
    """What is shown and written once the run is over (cli.py)."""

    quiet: bool = _f(False, "no live progress", "output")
    label: str | None = _f(None, "name of the server in the report and the plot", "output",
                           shown="the server address")
    json: str | None = _f(None, "write every figure as JSON", "output", metavar="FILE",
                          shown="none")
    tokens_out: str | None = _f(None, "join only (as --join-only) and write every member to "
                                      "FILE for cload --tokens (tests/bench/perf): one a "
                                      "line, tab separated 'room slot room_name token "
                                      "udp_host udp_port', 0-based; implies --sockets member "
                                      "(the tokens are bound to the IP that joined, and "
                                      "cload sends from 127.0.0.1)", "output",
                                metavar="FILE", shown="none")
    plot: str | None = _f(None, "write latency percentiles and throughput over time as a "
                                "PNG", "output", metavar="FILE.png", shown="none")


__all__ = ["CAPACITY_SLO_LOSS_PCT", "CAPACITY_SLO_P99_MS", "GROUPS", "Options", "Output",
           "add_arguments", "flag_name", "from_args"]


def _help_text(f: Field[Any]) -> str:
    m = settings.meta(f)
    if settings.kind(f) is bool:
        return m.help
    return f"{m.help} [{settings.shown_default(f)}]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of ``Options`` and ``Output``, in argument groups."""
    settings.add_flags(parser, (Options, Output), _help_text, typed=True, groups=GROUPS)


def from_args(args: argparse.Namespace) -> tuple[Options, Output]:
    """``Options`` and ``Output`` from the flags. Without an SLO, ``--find-capacity`` gets
    ``CAPACITY_SLO_P99_MS`` and ``CAPACITY_SLO_LOSS_PCT``."""
    opts: Options = settings.from_namespace(Options, args)
    if opts.find_capacity and not opts.slo.enabled:
        opts = replace(opts, slo_p99_ms=CAPACITY_SLO_P99_MS,
                       slo_loss_pct=CAPACITY_SLO_LOSS_PCT)
    output: Output = settings.from_namespace(Output, args)
    return opts, output
