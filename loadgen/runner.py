"""The parent side of ``ocm-loadgen``: spawns the loadgen processes, drives their phases,
and merges what they report.

``Fleet(options, on_event)`` splits the rooms into ``procs`` disjoint slices, starts one
``spawn`` process per slice (users.child_main) and talks to each over a pipe:
``setup()`` (joins, binding), ``run(rate)`` once per run (one, or several for
``--find-capacity``, reusing the same members), ``finish()`` (``/exit`` from non-hosts,
then from hosts, then quit). The children's messages are typed (messages.py); progress
(``joins``, ``tick``) is passed to ``on_event`` as it arrives; results are merged here into
``SetupFigures`` and ``RunFigures``: counters summed, HDR histograms decoded and added.
A child's traceback or death raises ``LoadgenError``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Final, TypeVar

from loadgen import fastpath
from loadgen.e2eload import MIN_E2E_SIZE
from loadgen.messages import (
    Abort,
    ChildError,
    Command,
    Exits,
    JoinProgress,
    Prepare,
    Prepared,
    Quit,
    Ready,
    Run,
    RunFigures,
    RunPart,
    SendExits,
    Setup,
    SetupFigures,
    SetupPart,
    SloVerdict,
    Tick,
    TimelinePoint,
)
from loadgen.meter import (
    HEADER_BYTES,
    backlog_growth,
    check_slo,
    latency_ms,
    merge_counts,
    merge_histograms,
    room_slices,
)
from loadgen.options import Options
from loadgen.pacing import NS
from loadgen.procstat import tree_usage
from loadgen.targets import first_host
from loadgen.tokens import MemberToken
from loadgen.transport import resolve_mode
from loadgen.users import Plan, child_main

START_DELAY_S: Final = 0.3
"""Time between the parent's ``run`` command and the first scheduled send (``t0``): every
child must have the command before its schedule starts."""
TICK_S: Final = 0.5
SATURATED_CPU_PCT: Final = 90.0
"""A loadgen process above this share of one core may be the bottleneck."""
SATURATED_TICK_PCT: Final = 98.0
"""... or one 0.5 s tick of the sending phase above this."""
LATE_SEND_WARN_FRACTION: Final = 0.01
WAIT_WARN_PCT: Final = 10.0
"""A loadgen process that waited this share of the time for a CPU was delayed by others."""
READY_TIMEOUT_S: Final = 60.0
PREPARE_TIMEOUT_S: Final = 600.0
"""``--e2e``: sealing a run's messages."""
SETUP_TIMEOUT_EXTRA_S: Final = 120.0

EventSink = Callable[[str, dict[str, Any]], None]
"""Progress for the live view: ``phase``, ``joins``, ``tick`` (a ``TimelinePoint`` as a
dict) and ``interrupted``."""
_Answer = TypeVar("_Answer", Ready, SetupPart, Prepared, RunPart, Exits)


class LoadgenError(RuntimeError):
    """A loadgen process failed (its traceback is the message) or the run cannot go on."""


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


class Fleet:
    """The loadgen processes of one invocation (see the module docstring)."""

    def __init__(self, options: Options, on_event: EventSink | None = None) -> None:
        if options.size < HEADER_BYTES:
            raise ValueError(f"--size must be at least {HEADER_BYTES} bytes")
        if options.e2e and options.size < MIN_E2E_SIZE:
            raise ValueError(f"--size must be at least {MIN_E2E_SIZE} bytes with --e2e")
        self.opts = options
        self.on_event = on_event or (lambda kind, payload: None)
        self.procs = options.effective_procs()
        self.room_prefix = "lg" + secrets.token_hex(3)
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        self.plans: list[Plan] = []
        self.active_members = 0
        self.interrupted = False
        self._timeline: _Timeline | None = None
        """The current run's ticks (``None`` between runs)."""
        self._server_usage: tuple[tuple[float, float] | None, float] = (None, 0.0)
        """The server's (CPU, wait) seconds at the last tick, and when (``--server-pid``)."""
        self.accounting_note: str | None = None
        """Why shared-socket deliveries are accounted in Python under ``auto``, if they are."""
        self._cpu0 = _cpu()
        self.tokens: list[MemberToken] = []
        """Every joined member's token and chat address after ``setup`` (``--join-only``)."""

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> list[Ready]:
        ctx = multiprocessing.get_context("spawn")
        opts = self.opts
        per_proc = max(1, opts.join_concurrency // self.procs)
        sockets = resolve_mode(opts.sockets, first_host(opts.server))
        accounting = "python"
        if sockets == "shared" and not opts.e2e:
            # decided here, once: every process then uses the same path (a ``c`` that
            # cannot be honoured raises, as the CLI has checked)
            try:
                accounting, self.accounting_note = fastpath.choose(opts.accounting)
            except fastpath.Unavailable as exc:
                raise LoadgenError(f"--accounting c: {exc}") from None
        for i, (lo, count) in enumerate(room_slices(opts.rooms, self.procs)):
            plan = Plan(index=i, server=opts.server, tcp_port=opts.tcp_port,
                        room_prefix=self.room_prefix, room_lo=lo, rooms=count,
                        users=opts.users, size=opts.size,
                        framing="ocm1" if opts.e2e else opts.framing,
                        password=opts.password, tls_ca=opts.tls_ca,
                        join_concurrency=per_proc,
                        sockets=sockets,
                        rx_timestamps=opts.rx_timestamps, accounting=accounting,
                        realtime_priority=opts.realtime_priority,
                        join_timeout_s=opts.join_timeout, bind_timeout_s=opts.bind_timeout,
                        e2e=opts.e2e, verify_every=opts.e2e_verify_every,
                        corrupt_every=opts.e2e_corrupt_every, collect_tokens=opts.join_only)
            parent_conn, child_conn = ctx.Pipe()
            proc = ctx.Process(target=child_main, args=(child_conn, plan),
                               name=f"ocm-loadgen-{i}", daemon=True)
            proc.start()
            child_conn.close()
            self.plans.append(plan)
            self.conns.append(parent_conn)
            self.processes.append(proc)
        return self._collect(Ready, READY_TIMEOUT_S)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(Quit())
            except OSError:
                pass
        for proc in self.processes:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _broadcast(self, message: Command) -> None:
        for conn in self.conns:
            conn.send(message)

    def _collect(self, kind: type[_Answer], timeout_s: float) -> list[_Answer]:
        """Wait for one ``kind`` answer from every child, forwarding progress meanwhile."""
        answers: dict[int, _Answer] = {}
        deadline = time.monotonic() + timeout_s
        by_sentinel: dict[int, int] = {p.sentinel: i for i, p in enumerate(self.processes)}
        while len(answers) < len(self.conns):
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadgenError(f"timed out waiting for {kind.__name__} from the loadgen "
                                   "processes")
            try:
                ready = wait([*self.conns, *by_sentinel], timeout=min(left, 1.0))
            except KeyboardInterrupt:
                if self.interrupted:
                    raise
                self.interrupted = True
                self.on_event("interrupted", {})
                for conn in self.conns:
                    try:
                        conn.send(Abort())
                    except OSError:
                        pass
                continue
            for obj in ready:
                if obj in by_sentinel:
                    i = by_sentinel[obj]
                    if self.conns[i].poll():
                        continue  # read its last words first
                    if i not in answers:
                        code = self.processes[i].exitcode
                        raise LoadgenError(f"loadgen process {i} died (exit code {code})")
                    continue
                assert isinstance(obj, Connection)
                try:
                    message = obj.recv()
                except EOFError:
                    i = self.conns.index(obj)
                    if i in answers:
                        continue
                    self.processes[i].join(5)
                    code = self.processes[i].exitcode
                    raise LoadgenError(f"loadgen process {i} exited (exit code {code})") from None
                if isinstance(message, ChildError):
                    raise LoadgenError(f"loadgen process {message.index} failed:\n"
                                       + message.traceback)
                if isinstance(message, kind):
                    answers[self.conns.index(obj)] = message
                elif isinstance(message, JoinProgress):
                    self.on_event("joins", asdict(message))
                elif isinstance(message, Tick):
                    self._on_tick(message)
        return [answers[i] for i in range(len(self.conns))]

    # --- phases -----------------------------------------------------------------------------
    def setup(self) -> SetupFigures:
        """Every member joins and binds; return the merged join figures."""
        opts = self.opts
        self.on_event("phase", {"phase": "joining", "members": opts.members})
        timeout = opts.members * opts.join_timeout / max(opts.join_concurrency, 1)
        parts = self._send_and_collect(Setup(), SetupPart,
                                       timeout + opts.bind_timeout + SETUP_TIMEOUT_EXTRA_S)
        ok = sum(p.joins_ok for p in parts)
        failed = sum(p.joins_failed for p in parts)
        failures: dict[str, int] = {}
        for p in parts:
            for name, n in p.failures.items():
                failures[name] = failures.get(name, 0) + n
        t_start = min(p.t_start_ns for p in parts)
        t_end = max(p.t_end_ns for p in parts)
        seconds = max((t_end - t_start) / NS, 1e-9)
        lat = [x for p in parts for x in p.join_latencies_ms]
        self.active_members = ok
        self.tokens = [t for p in parts for t in p.tokens]
        framings = sorted({p.framing for p in parts})
        return SetupFigures(
            joins_ok=ok, joins_failed=failed, failures=failures, join_seconds=seconds,
            joins_per_s=(ok + failed) / seconds,
            join_latency_ms={"p50": _percentile(lat, 50), "p99": _percentile(lat, 99),
                             "max": max(lat) if lat else None},
            bind_wait_s=max(p.bind_wait_s for p in parts),
            bound_missing=sum(p.bound_missing for p in parts),
            framing=framings[0] if len(framings) == 1 else "mixed",
            framing_mismatch=sum(p.framing_mismatch for p in parts),
            max_message=min(p.max_message for p in parts),
            inactivity_timeout_s=min(p.inactivity_timeout_s for p in parts))

    def _send_and_collect(self, message: Command, kind: type[_Answer],
                          timeout_s: float) -> list[_Answer]:
        self._broadcast(message)
        return self._collect(kind, timeout_s)

    def run(self, rate: float) -> RunFigures:
        """One paced run at ``rate`` msg/s per member; return its merged figures."""
        opts = self.opts
        tick_ns = int(TICK_S * NS)
        if opts.e2e:  # seal every message of the run before its schedule starts
            self.on_event("phase", {"phase": "sealing (--e2e)"})
            per_member = math.ceil(rate * (opts.warmup + opts.duration)) + 2
            self._send_and_collect(Prepare(per_member), Prepared,
                                   PREPARE_TIMEOUT_S)
        t0 = time.monotonic_ns() + int(START_DELAY_S * NS)
        mstart = t0 + int(opts.warmup * NS)
        end = mstart + int(opts.duration * NS)
        command = Run(rate, t0, mstart, end, drain_ns=int(opts.drain * NS), tick_ns=tick_ns,
                      pacing_ns=int(opts.pacing_us * 1000))
        timeline = self._timeline = _Timeline(len(self.conns), TICK_S)
        pid = opts.server_pid
        self._server_usage = (tree_usage(pid) if pid else None, time.monotonic())
        self.on_event("phase", {"phase": "running", "rate": rate, "t0_ns": t0,
                                "mstart_ns": mstart, "end_ns": end})
        cpu0, wall0 = _cpu(), time.monotonic()
        try:
            self._broadcast(command)
            parts = self._collect(RunPart, opts.warmup + opts.duration + opts.drain + 60.0)
        finally:
            self._timeline = None
        parent_cpu = 100.0 * (_cpu() - cpu0) / max(time.monotonic() - wall0, 1e-9)
        return self._merge_run(rate, parts, timeline, parent_cpu)

    def _on_tick(self, tick: Tick) -> None:
        """Merge a process's tick; once every process reported it, add the server's CPU
        over it (``--server-pid``) and pass it on."""
        if self._timeline is None:
            return
        point = self._timeline.add(tick)
        if point is None:
            return
        pid, (last, wall0) = self.opts.server_pid, self._server_usage
        if pid and last is not None:
            usage, wall = tree_usage(pid), time.monotonic()
            if usage is not None:
                dt = max(wall - wall0, 1e-9)
                point = replace(point, server_cpu_pct=100.0 * (usage[0] - last[0]) / dt,
                                server_wait_pct=100.0 * (usage[1] - last[1]) / dt)
                self._server_usage = (usage, wall)
        self._timeline.keep(point)
        self.on_event("tick", asdict(point))

    def _merge_run(self, rate: float, parts: list[RunPart], timeline: _Timeline,
                   parent_cpu: float) -> RunFigures:
        opts = self.opts
        counts = merge_counts(p.counts for p in parts)
        hist = merge_histograms(p.hist for p in parts)
        latency = latency_ms(hist)
        relay_latency = latency_ms(merge_histograms(p.relay_hist for p in parts))
        window = [p for p in timeline.points() if 0 < p.t_s <= opts.duration]
        growth = backlog_growth([p.latency_ms["p50"] for p in window])
        breaches = check_slo(opts.slo, counts, latency, growth)
        cpu = [p.cpu_pct for p in parts]
        warnings = []
        saturated = False
        for i, p in enumerate(parts):
            if p.cpu_pct > SATURATED_CPU_PCT or p.cpu_pct_max_tick > SATURATED_TICK_PCT:
                saturated = True
                warnings.append(f"loadgen process {i} used {p.cpu_pct:.0f} % of a core "
                                f"(peak tick {p.cpu_pct_max_tick:.0f} %): the loadgen "
                                "itself may be the bottleneck")
        if counts.sent and counts.late_sends > LATE_SEND_WARN_FRACTION * counts.sent:
            warnings.append(f"{counts.late_sends} of {counts.sent} sends were more than 1 ms "
                            "behind schedule (the loadgen did not get the CPU in time: "
                            "saturated, or the cores are shared with a busy server)")
        if not parts[0].timerfd:
            warnings.append("no timerfd: pacing has 1 ms resolution")
        if counts.misrouted:
            warnings.append(f"{counts.misrouted} misrouted deliveries")
        if growth is not None:
            warnings.append(f"median latency grew from {growth[0]:.1f} ms to "
                            f"{growth[1]:.1f} ms through the window: queues were building, "
                            "so this rate is not sustained")
        server_cpus = [p.server_cpu_pct for p in window if p.server_cpu_pct is not None]
        server_waits = [p.server_wait_pct for p in window if p.server_wait_pct is not None]
        server_cpu = sum(server_cpus) / len(server_cpus) if server_cpus else None
        server_wait = sum(server_waits) / len(server_waits) if server_waits else None
        waits = [p.wait_pct for p in parts]
        if max(waits) > WAIT_WARN_PCT:
            warnings.append("loadgen processes waited " + ", ".join(f"{w:.0f}" for w in waits)
                            + " % of the time for a CPU (run queue): the cores were "
                            "oversubscribed, so latency includes scheduling delay")
        notices: dict[str, int] = {}
        for p in parts:
            for name, n in p.notices.items():
                notices[name] = notices.get(name, 0) + n
        return RunFigures(
            rate_per_user=rate,
            target_in_per_s=rate * self.active_members,
            target_out_per_s=rate * self.active_members * max(opts.users - 1, 0),
            duration_s=opts.duration, warmup_s=opts.warmup, counts=counts,
            in_per_s=counts.sent / opts.duration,
            out_per_s=counts.delivered / opts.duration,
            latency_ms=latency, relay_latency_ms=relay_latency, backlog_growth_ms=growth,
            slo=SloVerdict(opts.slo.p99_ms, opts.slo.loss_pct, breaches, not breaches),
            loadgen_cpu_pct=cpu, parent_cpu_pct=parent_cpu, server_cpu_pct=server_cpu,
            server_wait_pct=server_wait, loadgen_wait_pct=waits, loadgen_saturated=saturated,
            warnings=warnings, notices=notices, aborted=any(p.aborted for p in parts),
            timeline=timeline.points(), hdr_histogram=hist.encode().decode("ascii"))

    def finish(self) -> dict[str, int]:
        """``/exit`` from every non-host, then from every host."""
        members = self._send_and_collect(SendExits(hosts=False), Exits, 60.0)
        hosts = self._send_and_collect(SendExits(hosts=True), Exits, 60.0)
        return {"member_exits": sum(p.exits for p in members),
                "host_exits": sum(p.exits for p in hosts)}

    def parent_cpu_pct(self, wall_s: float) -> float:
        return 100.0 * (_cpu() - self._cpu0) / max(wall_s, 1e-9)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


class _Timeline:
    """Per-tick figures merged across processes (a tick is complete once every process
    reported it)."""

    def __init__(self, procs: int, tick_s: float) -> None:
        self.procs = procs
        self.tick_s = tick_s
        self._pending: dict[int, list[Tick]] = {}
        self._points: list[TimelinePoint] = []
        self._last_sent = 0
        self._last_delivered = 0

    def add(self, tick: Tick) -> TimelinePoint | None:
        """The merged point once every process reported tick ``tick.j`` (else ``None``);
        ``keep`` it to have it in ``points``."""
        parts = self._pending.setdefault(tick.j, [])
        parts.append(tick)
        if len(parts) < self.procs:
            return None
        del self._pending[tick.j]
        parts.sort(key=lambda p: p.index)
        sent = sum(p.sent for p in parts)
        delivered = sum(p.delivered for p in parts)
        point = TimelinePoint(
            t_s=tick.j * self.tick_s, sent=sent, delivered=delivered,
            in_per_s=(sent - self._last_sent) / self.tick_s,
            out_per_s=(delivered - self._last_delivered) / self.tick_s,
            latency_ms=latency_ms(merge_histograms(p.hist for p in parts), mean=False),
            loadgen_cpu_pct=[p.cpu_pct for p in parts],
            loadgen_wait_pct=[p.wait_pct for p in parts],
            sending=any(p.sending for p in parts))
        self._last_sent, self._last_delivered = sent, delivered
        return point

    def keep(self, point: TimelinePoint) -> None:
        """Record a point of the run (the warmup's, before t = 0, only go to the view)."""
        if point.t_s > 0:
            self._points.append(point)

    def points(self) -> list[TimelinePoint]:
        return sorted(self._points, key=lambda p: p.t_s)
