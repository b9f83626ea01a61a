"""``make bench-percore``: the relay's cost per core against the C limit.

Follows tests/bench/perf/README.md (the method) on a 2-core machine:

* the relay under test runs on CPU 1 (``taskset -c 1`` on the whole command, so that
  ``ocm-control --workers 1`` and every process it starts inherit it); ``cload`` (and the
  loadgen that joins OCM's members) on CPU 0;
* OCM: 500 rooms × 10 users join through real TCRP with framed delivery (``ocm-loadgen
  --tokens-out``: each room's host creates it), then ``cload --tokens FILE --size 100``
  sends; the reference ``crelay --procs 1 --mode learn`` gets the same cload without
  ``--tokens``;
* a ladder of per-user rates (``--rates``, default 3, 3.5 … 11 msg/s), interleaved: at each
  rate every relay runs once before the next rate, and the order of the relays is
  reversed every repetition (``--repeat`` K times), so that the VM's drift (up to 30–45 %
  over tens of minutes) hits them alike;
* a rate is sustained when loss < 0.1 %, p99 ≤ 20 ms and the achieved inbound rate is at
  least 97 % of the target. Each relay's figure per repetition is its highest sustained
  rate; the ratio OCM / crelay is reported per repetition and as the median;
* CPU per inbound datagram (user and system µs, ``/proc/PID/stat`` utime/stime) of the
  relay's process tree (and, for OCM, of its worker alone) over each cload run; the table
  shows it at ``--cpu-rate`` (default 4 msg/s = 20,000 in/s), which is always on the ladder.

A fresh relay per step, for both: OCM is started and its members joined anew before each
cload run (tokens never outlive the room that issued them, and with a fresh token file
every step starts from the same state: no member evicted by an earlier overloaded step
(send failures, the inactivity timeout while the other relays ran), no rate-limit
allowance or address binding carried over, no memory grown by earlier steps). crelay is
fresh per step too. The cost is a few seconds of joining per OCM step, outside the
measured window. OCM's ``--chat-rate`` is raised above the highest rate of the ladder (2×
it), so that the per-member token bucket still runs on every datagram (its cost is in the
figures) but never drops the load it is measured with.

Other relays: ``--relays crelay,ocm,ocm-pure,ocm-mac,ocm-r`` (``ocm-pure`` is OCM with
``OCM_PURE_PYTHON=1``, the accelerator disabled; ``ocm-mac`` is OCM whose members join
over TLS, with a test CA made in the work directory, so that every datagram carries the
MAC trailer of docs/protocol.md §8 and the relay verifies it: the loadgen joins with
``--tls-ca`` and cload seals; ``ocm-r`` is OCM whose members ask for reliable delivery,
``ocm1r`` (docs/protocol.md §9): the loadgen joins with ``--framing ocm1r``, cload sends
each chat as a ``06`` SEND, as ``ocm-chat`` does in a busy room, and reads numbered DATA
and the ACKs (``cload --reliable 6``); with ``ocm`` in the same run the report gives
``ocm-r`` / ``ocm``, recovery on against off, per repetition); ``--ocm-command`` runs another
``ocm-control`` (another checkout's venv); ``--ocm-env KEY=VALUE`` adds environment to
every OCM relay. Writes ``percore.md`` (printed too) and ``percore.json`` (every step's
cload report and CPU figures) into ``--out``; ``--update-docs`` also replaces the section
of docs/performance.md and writes the full results to docs/bench/percore.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from loadgen.report import machine_info
from tests.bench import climit, docsout, servers
from tests.bench.docsout import FULL_CLOSE, FULL_OPEN

SECTION: Final = "## Per-core cost against the C limit (make bench)"
DEFAULT_RATES: Final = (3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0)
"""Broad and cheap (a relay's rates above two broken steps are skipped); the published
figures use a finer ladder around the limit, as their command line says."""
SLO_LOSS_PCT: Final = 0.1
"""Sustained: loss strictly below this (%)."""
SLO_P99_US: Final = 20_000
"""Sustained: p99 at most this (µs)."""
MIN_INBOUND_FRACTION: Final = 0.97
"""Sustained: cload's achieved inbound rate at least this share of the target."""
PURE_ENV: Final = {"OCM_PURE_PYTHON": "1"}
"""What disables the compiled accelerator (the pure-Python path runs)."""
RELAYS: Final = ("crelay", "ocm", "ocm-pure", "ocm-mac", "ocm-r")
RELIABLE_SEND: Final = "6"
"""``ocm-r``: cload's SEND kind (``06``, the ACK may ride on the next DATA: what
``ocm-chat`` sends in a busy room that sees no loss, docs/protocol.md §9.5)."""
TLS_RE: Final = re.compile(r"ready tcp=.* tls=[^:\s]+:(\d+)")
"""The TLS port in ``ocm-control``'s ready line (``ocm-mac``)."""
TLS_JOIN_CONCURRENCY: Final = 16
"""``ocm-mac``: TLS joins in flight. Every join comes from 127.0.0.1, and ``ocm-control``
closes at accept the handshakes past ``max_tls_handshakes_per_ip`` (16 by default)."""
JOIN_TIMEOUT_S: Final = 600.0
"""Joining 5,000 members through TCRP takes seconds; generous for a loaded machine."""


@dataclass(frozen=True, slots=True)
class Verdict:
    held: bool
    why: str
    """What broke (``loss 0.3 % ≥ 0.1 %``), or ``ok``."""


def verdict(report: dict[str, Any], rate: float, members: int) -> Verdict:
    """Is ``rate`` msg/s per user sustained in cload's ``report``, with ``members``
    sending? Loss < 0.1 %, p99 ≤ 20 ms, inbound ≥ 97 % of ``rate × members``."""
    broken = []
    loss = float(report["loss_pct"])
    if not loss < SLO_LOSS_PCT:
        broken.append(f"loss {loss:.3g} % ≥ {SLO_LOSS_PCT:g} %")
    p99 = float(report["p99_us"])
    if p99 < 0:  # cload's p99 when nothing was delivered
        broken.append("nothing delivered")
    elif p99 > SLO_P99_US:
        broken.append(f"p99 {p99 / 1000:.3g} ms > {SLO_P99_US / 1000:g} ms")
    target = rate * members
    achieved = float(report["rate_in"])
    if achieved < MIN_INBOUND_FRACTION * target:
        broken.append(f"in {achieved:.0f}/s < {MIN_INBOUND_FRACTION:.0%} of {target:.0f}/s")
    return Verdict(not broken, "; ".join(broken) or "ok")


def highest_sustained(steps: list[tuple[float, bool]]) -> float | None:
    """The highest rate that held among ``(rate, held)`` steps (None if none held). A
    lower rate that broke does not cap it: each step is an independent run."""
    held = [rate for rate, ok in steps if ok]
    return max(held) if held else None


def ratio(ocm: float | None, crelay: float | None) -> float | None:
    return None if ocm is None or not crelay else ocm / crelay


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@dataclass
class Step:
    """One cload run against one relay."""

    relay: str
    rep: int
    rate: float
    members: int = 0
    report: dict[str, Any] | None = None
    held: bool = False
    why: str = ""
    datagrams_in: int = 0
    """Every datagram cload sent to the relay: registrations, warm-up, measured."""
    cpu_tree: dict[str, float] = field(default_factory=dict)
    """user/sys seconds of the relay's whole process tree over the cload run."""
    cpu_worker: dict[str, float] = field(default_factory=dict)
    """The same for the process that relays (OCM's worker, crelay's forked worker)."""
    join_s: float | None = None
    error: str | None = None
    server_log: list[str] = field(default_factory=list)
    """OCM's first log lines (its settings, and which relay path runs)."""

    def us_per_datagram(self, which: str) -> dict[str, float] | None:
        cpu = self.cpu_tree if which == "tree" else self.cpu_worker
        if not cpu or not self.datagrams_in:
            return None
        user, sys_ = (cpu["user"] * 1e6 / self.datagrams_in,
                      cpu["sys"] * 1e6 / self.datagrams_in)
        return {"user": user, "sys": sys_, "total": user + sys_}


@dataclass(frozen=True)
class Settings:
    relays: tuple[str, ...]
    rates: tuple[float, ...]
    cpu_rate: float
    repeat: int
    rooms: int
    users: int
    size: int
    seconds: float
    warmup: float
    drain: float
    poll_us: int
    base_port: int
    relay_cpu: int
    load_cpu: int
    stop_after: int
    ocm_command: tuple[str, ...]
    ocm_env: dict[str, str]
    chat_rate: float

    @property
    def members(self) -> int:
        return self.rooms * self.users


class Bench:
    """Runs the steps (``run``); every step lands in ``steps``, in the order run."""

    def __init__(self, s: Settings, tools: dict[str, Path], work: Path) -> None:
        self.s = s
        self.tools = tools
        self.work = work
        self.steps: list[Step] = []

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _pin(self, cpu: int) -> list[str]:
        return ["taskset", "-c", str(cpu)]

    def _cload(self, rate: float, extra: list[str]) -> list[str]:
        s = self.s
        return [*self._pin(s.load_cpu), str(self.tools["cload"]), "--rate", f"{rate:g}",
                "--size", str(s.size), "--seconds", f"{s.seconds:g}", "--warmup",
                f"{s.warmup:g}", "--drain", f"{s.drain:g}", "--base-port", str(s.base_port),
                "--poll-us", str(s.poll_us), "--max-seconds", "100000", *extra]

    def _cload_timeout(self) -> float:
        return self.s.warmup + self.s.seconds + self.s.drain + 120.0

    def _control_command(self) -> tuple[list[str], bool]:
        """The OCM command (pinned) and whether this checkout goes on PYTHONPATH."""
        args = [*servers.control_command(1)[3:], "--chat-rate", f"{self.s.chat_rate:g}"]
        if self.s.ocm_command:
            return [*self._pin(self.s.relay_cpu), *self.s.ocm_command, *args], False
        return [*self._pin(self.s.relay_cpu), sys.executable, "-m", "control", *args], True

    def run_crelay(self, step: Step) -> None:
        s = self.s
        port = climit.free_udp_port()
        relay = climit.Crelay([*self._pin(s.relay_cpu), str(self.tools["crelay"]), "--port",
                               str(port), "--procs", "1", "--mode", "learn"])
        try:
            step.members = s.members
            self._measure(step, relay.pid, None, self._cload(step.rate, [
                "--target", f"127.0.0.1:{port}", "--rooms", str(s.rooms), "--users",
                str(s.users)]))
        finally:
            relay.stop()

    def _tls_files(self) -> tuple[Path, Path, Path]:
        """(CA, certificate, key) for ``ocm-mac``, made once in the work directory."""
        from tests.integration.test_tls import make_pki

        pki = self.work / "pki"
        if not pki.exists():
            pki.mkdir()
            make_pki(pki)
        return pki / "ca.pem", pki / "server.pem", pki / "server.key"

    def run_ocm(self, step: Step, env: dict[str, str], tls: bool = False,
                reliable: bool = False) -> None:
        """One OCM step; ``tls`` (``ocm-mac``): members join over TLS and seal;
        ``reliable`` (``ocm-r``): members ask for ``ocm1r`` and cload sends SENDs."""
        s = self.s
        cmd, on_path = self._control_command()
        join_tls: list[str] = []
        if tls:  # the base command turns TLS off (plain TCRP is what the others measure)
            ca, cert, key = self._tls_files()
            cmd = [arg for arg in cmd if arg != "--no-tls"]
            cmd += ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0"]
        server = servers.start(cmd, timeout=120.0, extra_env=env, repo_on_path=on_path)
        try:
            worker = servers.worker_pids(server.output()).get(0)
            step.server_log = list(server.lines)[:60]  # which path runs, as it says
            tcp_port = server.tcp_port
            if tls:
                found = TLS_RE.search(server.output())
                if found is None:
                    raise RuntimeError("ocm-control's ready line names no TLS port")
                tcp_port = int(found[1])
                join_tls = ["--tls-ca", str(ca), "--join-concurrency",
                            str(TLS_JOIN_CONCURRENCY)]
            tokens = self.work / f"tokens-{step.relay}-{step.rep}-{step.rate:g}.txt"
            t = time.monotonic()
            join = [*self._pin(s.load_cpu), sys.executable, "-m", "loadgen", "--server",
                    server.host, "--tcp-port", str(tcp_port), *join_tls, "--rooms", str(s.rooms),
                    "--users", str(s.users), "--framing", "ocm1r" if reliable else "ocm1",
                    "--procs", "1",
                    "--quiet", "--tokens-out", str(tokens)]
            done = _run(join, JOIN_TIMEOUT_S)
            step.join_s = time.monotonic() - t
            if done.returncode != 0:
                raise RuntimeError(f"joining failed ({done.returncode}):\n"
                                   f"{done.stdout[-1000:]}{done.stderr[-2000:]}")
            step.members = len(tokens.read_text().splitlines())
            self._measure(step, server.pid, worker, self._cload(step.rate, [
                "--target", f"127.0.0.1:{server.udp_port}", "--tokens", str(tokens),
                *(["--reliable", RELIABLE_SEND] if reliable else [])]))
        finally:
            server.stop()

    def _measure(self, step: Step, pid: int, worker: int | None, cmd: list[str]) -> None:
        before = climit.tree_times(pid)
        report = climit.run_cload(cmd, self._cload_timeout())
        after = climit.tree_times(pid)
        if worker is None:
            # crelay: the parent waits, its one forked child relays; an OCM whose log did
            # not name its worker: the descendant that used the most CPU
            zero = climit.Times(0.0, 0.0)
            used = {p: t.user + t.sys - before.get(p, zero).user - before.get(p, zero).sys
                    for p, t in after.items() if p != pid}
            worker = max(used, key=used.__getitem__) if used else None
        step.report = report
        step.datagrams_in = int(report["sent"]) + int(report["sent_warm"]) + step.members
        step.cpu_tree = asdict(climit.cpu_delta(before, after))
        if worker is not None:
            step.cpu_worker = asdict(climit.cpu_delta(before, after, only=worker))
        v = verdict(report, step.rate, step.members)
        step.held, step.why = v.held, v.why

    def run(self) -> None:
        s = self.s
        for rep in range(s.repeat):
            order = list(s.relays) if rep % 2 == 0 else list(reversed(s.relays))
            fails = dict.fromkeys(s.relays, 0)
            for rate in s.rates:
                for relay in order:
                    if s.stop_after and fails[relay] >= s.stop_after and rate != s.cpu_rate:
                        continue  # broke at the rates below: spare the machine the rest
                    step = Step(relay, rep, rate)
                    try:
                        if relay == "crelay":
                            self.run_crelay(step)
                        else:
                            env = dict(s.ocm_env, **(PURE_ENV if relay == "ocm-pure" else {}))
                            self.run_ocm(step, env, tls=relay == "ocm-mac",
                                         reliable=relay == "ocm-r")
                    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
                        step.error = str(exc)
                        step.why = f"error: {str(exc).splitlines()[0]}"
                    self.steps.append(step)
                    fails[relay] = 0 if step.held else fails[relay] + 1
                    self.log(_step_line(step))


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``cmd`` with this checkout on PYTHONPATH (the harness is not installed)."""
    path = os.pathsep.join(p for p in (str(servers.REPO_ROOT), os.environ.get("PYTHONPATH"))
                           if p)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ, PYTHONPATH=path))


def _step_line(step: Step) -> str:
    r = step.report or {}
    cpu = step.us_per_datagram("tree")
    cpu_text = f", {cpu['user']:.1f}+{cpu['sys']:.1f} µs/dgram" if cpu else ""
    join = f", joined in {step.join_s:.1f} s" if step.join_s is not None else ""
    return (f"rep {step.rep + 1} {step.rate:g}/s {step.relay:9s} "
            f"{'held ' if step.held else 'BROKE'} {step.why}; in {r.get('rate_in', 0):.0f}/s "
            f"out {r.get('rate_out', 0):.0f}/s loss {r.get('loss_pct', -1):.3f} % p99 "
            f"{r.get('p99_us', -1) / 1000:.2f} ms{cpu_text}{join}")


# --- results ---------------------------------------------------------------------------------
def summarise(s: Settings, steps: list[Step]) -> dict[str, Any]:
    """Highest sustained rate per relay and repetition, ratios, CPU at ``cpu_rate``."""
    best: dict[str, list[float | None]] = {r: [] for r in s.relays}
    for rep in range(s.repeat):
        for relay in s.relays:
            best[relay].append(highest_sustained(
                [(st.rate, st.held) for st in steps if st.relay == relay and st.rep == rep]))
    ratios = {r: [ratio(o, c) for o, c in zip(best[r], best.get("crelay", []), strict=False)]
              for r in s.relays if r != "crelay"}
    cpu: dict[str, dict[str, Any]] = {}
    for relay in s.relays:
        at = [st for st in steps if st.relay == relay and st.rate == s.cpu_rate
              and st.report is not None]
        cpu[relay] = {}
        for which in ("worker", "tree"):
            rows = [x for x in (st.us_per_datagram(which) for st in at) if x is not None]
            cpu[relay][which] = {k: median([row[k] for row in rows])
                                 for k in ("user", "sys", "total")} if rows else None
    fanout = s.users - 1
    recovery: dict[str, Any] | None = None
    if "ocm" in s.relays and "ocm-r" in s.relays:  # recovery on against off, per repetition
        cpu_ratios: list[float | None] = []
        for rep in range(s.repeat):
            pair = [next((st.us_per_datagram("tree") for st in steps if st.relay == r
                          and st.rep == rep and st.rate == s.cpu_rate), None)
                    for r in ("ocm-r", "ocm")]
            on, off = pair
            cpu_ratios.append(None if on is None or off is None or not off["total"]
                              else on["total"] / off["total"])
        rate_ratios = [ratio(on, off) for on, off in zip(best["ocm-r"], best["ocm"],
                                                         strict=True)]
        recovery = {"rate_ratios": rate_ratios, "median_rate_ratio": median(list(rate_ratios)),
                    "cpu_ratios": cpu_ratios, "median_cpu_ratio": median(list(cpu_ratios))}
    return {
        "best_rate": best,
        "median_rate": {r: median(list(v)) for r, v in best.items()},
        "deliveries_per_s": {r: None if m is None else m * s.members * fanout
                             for r, v in best.items() for m in [median(list(v))]},
        "ratios": ratios,
        "median_ratio": {r: median(v) for r, v in ratios.items()},
        "cpu_at_rate": cpu,
        "recovery": recovery,
    }


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "–" if value is None else format(value, spec)


def command_line(argv: list[str], module: str = "percore") -> str:
    """The command that reproduces a run (less where it wrote: ``--out``, ``--update-docs``)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif arg != "--update-docs" and not arg.startswith("--out="):
            kept.append(arg)
    return f"python -m tests.bench.{module} " + shlex.join(kept)


def put_section(name: str, text: str, results: dict[str, Any]) -> None:
    """Replace the section ``text`` opens with in docs/performance.md (the tables without
    the full-results blocks) and write docs/bench/NAME.json."""
    for path in docsout.publish(servers.REPO_ROOT / "docs", name, [text], results):
        print(f"written: {path}", file=sys.stderr)


def render(s: Settings, steps: list[Step], summary: dict[str, Any],
           machine: dict[str, Any], command: str) -> str:
    """The markdown section: result sentence, how to reproduce, the tables."""
    ocm = [r for r in s.relays if r != "crelay"]
    lines = [SECTION, ""]
    for r in ocm:
        lines.append(
            f"- **{r} / crelay: {_fmt(summary['median_ratio'][r], '.2f')}** (median of "
            f"{s.repeat}; per repetition "
            f"{', '.join(_fmt(x, '.2f') for x in summary['ratios'][r])}); goal ≥ 0.8.")
    rec = summary.get("recovery")
    if rec is not None:
        lines.append(
            f"- **ocm-r / ocm (recovery on / off), CPU per inbound datagram at "
            f"{s.cpu_rate:g} msg/s: × {_fmt(rec['median_cpu_ratio'], '.3f')}** (median of "
            f"{s.repeat}; per repetition "
            f"{', '.join(_fmt(x, '.3f') for x in rec['cpu_ratios'])}); highest sustained "
            f"rate × {_fmt(rec['median_rate_ratio'], '.2f')} (per repetition "
            f"{', '.join(_fmt(x, '.2f') for x in rec['rate_ratios'])}); goal: CPU ≤ × 1.05.")
    lines += [
        "",
        f"Setup: {s.rooms} rooms × {s.users} users, {s.size}-byte chat, one relay at a time "
        f"pinned to CPU {s.relay_cpu} (`taskset -c {s.relay_cpu}`, OCM as `ocm-control "
        f"--workers 1`, whole tree), cload on CPU {s.load_cpu}. OCM's members join through "
        "TCRP with framed delivery (`ocm-loadgen --tokens-out`), a fresh server per step; "
        "crelay is `crelay --procs 1 --mode learn`. Sustained: loss < "
        f"{SLO_LOSS_PCT:g} %, p99 ≤ {SLO_P99_US / 1000:g} ms, inbound ≥ "
        f"{MIN_INBOUND_FRACTION:.0%} of target. Relays interleaved at each rate, order "
        "reversed each repetition.",
        "",
        f"Reproduce on a quiet machine: `{command}` (or `make bench-percore`).",
        "",
        "| relay | highest sustained msg/s per user (each repetition) | median | "
        "deliveries/s at the median |",
        "|---|---|---|---|",
    ]
    top = max(s.rates)
    if any(x == top for v in summary["best_rate"].values() for x in v):
        lines.append(f"| (a rate of {top:g} held at the top of the ladder: that relay may do "
                     "more; extend --rates) | | | |")
    for r in s.relays:
        lines.append(f"| {r} | {', '.join(_fmt(x, 'g') for x in summary['best_rate'][r])} | "
                     f"{_fmt(summary['median_rate'][r], 'g')} | "
                     f"{_fmt(summary['deliveries_per_s'][r], ',.0f')} |")
    lines += ["", f"CPU per inbound datagram at {s.cpu_rate:g} msg/s per user "
              f"({s.cpu_rate * s.members:,.0f} in/s, 1→{s.users - 1} fan-out), µs, median "
              "over repetitions (worker: the process that relays; tree: every process of the "
              "relay):", "",
              "| relay | worker user | worker sys | worker total | tree user | tree sys | "
              "tree total |", "|---|---|---|---|---|---|---|"]
    for r in s.relays:
        c = summary["cpu_at_rate"][r]
        cells = []
        for which in ("worker", "tree"):
            row = c.get(which) or {}
            cells += [_fmt(row.get(k), ".1f") for k in ("user", "sys", "total")]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines += ["", FULL_OPEN, "", "Every step (✓ sustained, ✗ broken: why):", "",
              "| rate/user | in/s | " + " | ".join(s.relays) + " |",
              "|---|---|" + "---|" * len(s.relays)]
    for rate in s.rates:
        cells = []
        for r in s.relays:
            marks = []
            for st in steps:
                if st.relay == r and st.rate == rate:
                    rep = st.report or {}
                    p99 = rep.get("p99_us")
                    text = (f"✓ p99 {p99 / 1000:.1f} ms" if st.held and p99 is not None
                            else f"✗ {st.why}")
                    marks.append(text)
            cells.append("<br>".join(marks) or "–")
        lines.append(f"| {rate:g} | {rate * s.members:,.0f} | " + " | ".join(cells) + " |")
    lines += ["", FULL_CLOSE, "", f"Machine: {machine.get('cpu_model', '?')}, "
              f"{machine.get('nproc', '?')} CPUs, {machine.get('kernel', '?')}, "
              f"Python {machine.get('python', '?')}."]
    return "\n".join(lines) + "\n"


# --- command line ----------------------------------------------------------------------------
def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(x) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated numbers, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("at least one rate, all > 0")
    return rates


def _relays(text: str) -> tuple[str, ...]:
    relays = tuple(x for x in text.split(",") if x)
    bad = [x for x in relays if x not in RELAYS]
    if bad or not relays or len(set(relays)) != len(relays):
        raise argparse.ArgumentTypeError(f"distinct names from {', '.join(RELAYS)}")
    return relays


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench.percore",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--relays", type=_relays, default=("crelay", "ocm"),
                   help=f"relays to alternate, from {', '.join(RELAYS)} [crelay,ocm]")
    p.add_argument("--rates", type=_rates, default=DEFAULT_RATES,
                   help="msg/s per user, comma separated [3,3.5,4,4.5,5,6,...,11]")
    p.add_argument("--cpu-rate", type=float, default=4.0,
                   help="rate of the CPU-per-datagram table; added to the ladder [4]")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of the ladder [3]")
    p.add_argument("--rooms", type=int, default=500)
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--size", type=int, default=100, help="chat bytes (cload --size) [100]")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds [10]")
    p.add_argument("--warmup", type=float, default=2.0, help="[2]")
    p.add_argument("--drain", type=float, default=1.0, help="[1]")
    p.add_argument("--poll-us", type=int, default=0, help="cload --poll-us [0]")
    p.add_argument("--base-port", type=int, default=20000,
                   help="cload's first user port (users take base … base+rooms×users) [20000]")
    p.add_argument("--relay-cpu", type=int, default=1)
    p.add_argument("--load-cpu", type=int, default=0)
    p.add_argument("--stop-after", type=int, default=2,
                   help="skip a relay's higher rates in a repetition after this many "
                        "broken steps in a row; 0 = run them all [2]")
    add_common_arguments(p, "percore")
    return p


def add_common_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """``--ocm-command``, ``--ocm-env``, ``--out`` and ``--update-docs`` (``name``: the
    files written, ``NAME.md`` and ``NAME.json``)."""
    p.add_argument("--ocm-command", default="",
                   help="run this instead of `python -m control` (e.g. another checkout's "
                        "/path/.venv/bin/ocm-control); that checkout is then not shadowed "
                        "by this one on PYTHONPATH")
    p.add_argument("--ocm-env", type=_env, action="append", default=[], metavar="KEY=VALUE",
                   help="environment for every OCM relay (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"directory for {name}.md and {name}.json [build/perf/{name}-TIME]")
    p.add_argument("--update-docs", action="store_true",
                   help=f"replace the section in docs/performance.md and write "
                        f"docs/bench/{name}.json")


def main(argv: list[str] | None = None) -> int:
    argv_list = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv_list)
    rates = tuple(sorted(set(args.rates) | {args.cpu_rate}))
    s = Settings(relays=args.relays, rates=rates, cpu_rate=args.cpu_rate, repeat=args.repeat,
                 rooms=args.rooms, users=args.users, size=args.size, seconds=args.seconds,
                 warmup=args.warmup, drain=args.drain, poll_us=args.poll_us,
                 base_port=args.base_port, relay_cpu=args.relay_cpu, load_cpu=args.load_cpu,
                 stop_after=args.stop_after, ocm_command=tuple(shlex.split(args.ocm_command)),
                 ocm_env=dict(args.ocm_env), chat_rate=2 * max(rates))
    cpus = os.sched_getaffinity(0)
    if not {s.relay_cpu, s.load_cpu} <= cpus or s.relay_cpu == s.load_cpu:
        print(f"percore: needs two distinct CPUs --relay-cpu and --load-cpu among {sorted(cpus)}",
              file=sys.stderr)
        return 2
    try:
        climit.raise_nofile(s.members + 256)
        tools = climit.build()
    except (OSError, climit.BuildError) as exc:
        print(f"percore: {exc}", file=sys.stderr)
        return 2
    out = args.out or climit.BUILD_DIR / time.strftime("percore-%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="percore-") as work:
        bench = Bench(s, tools, Path(work))
        try:
            bench.run()
        except KeyboardInterrupt:
            print("percore: interrupted; reporting the steps so far", file=sys.stderr)
    summary = summarise(s, bench.steps)
    machine = machine_info()
    command = command_line(argv_list)
    text = render(s, bench.steps, summary, machine, command)
    print("\n" + text)
    (out / "percore.md").write_text(text)
    results = {"settings": asdict(s), "command": command, "machine": machine,
               "summary": summary, "steps": [asdict(st) for st in bench.steps]}
    (out / "percore.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"written: {out / 'percore.md'}, {out / 'percore.json'}", file=sys.stderr)
    if args.update_docs:
        put_section("percore", text, results)
    return 0 if all(st.error is None for st in bench.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
