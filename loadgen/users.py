"""Simulated users: one loadgen process and every member of its slice of rooms.

``child_main(conn, plan)`` is the entry point of a ``spawn`` process. It owns ``plan.rooms``
consecutive rooms × ``plan.users`` members, each with its own address and token (one socket
per member, or one shared socket with an IP per member: ``transport.py``), and obeys
commands from the parent on ``conn`` (a ``multiprocessing`` pipe):

* ``("setup",)``: every member joins through TCRP (user 0 of each room creates it and is
  its host), asyncio on uvloop with bounded concurrency; right after its join each member
  sends an empty keepalive to bind its address; then wait until the ``joined`` notices show
  every member bound (or ``bind_timeout_s``). Answers a ``SetupPart`` (messages.py).
* ``("run", {...})``: paced sending from ``t0`` to ``end`` (warmup, then the measured
  window), receiving and accounting (``meter.Meter``), a ``Tick`` every
  ``tick_ns``, then a drain until every expected delivery arrived (or ``drain_ns``).
  Answers a ``RunPart``. An ``("abort",)`` during the run ends it early.
* ``("prepare", {...})`` (``--e2e`` only): seal every message of the next run in
  advance (loadgen/e2eload.py). Answers a ``Prepared``.
* ``("exit", "members" | "hosts")``: send ``/exit`` (in an encrypted room, the leave
  kind) from the non-hosts or the hosts.
* ``("quit",)``: close everything and return.

The data phase runs on a plain ``select.epoll`` loop over the transport's sockets, the pipe
and a ``timerfd`` (pacing.py). With one socket per member it costs no more CPU
than uvloop would, and the shared socket reads in ``recvmmsg``
batches. The plain loop is kept because it batches every datagram of one poll into one
``Meter.receive_batch`` call and waits on the timerfd with µs precision (libuv timers
have 1 ms resolution).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import select
import signal
import socket
import ssl
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, Final

from loadgen.e2eload import LEAVE_MESSAGE, E2EMeter
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
    RunPart,
    SendExits,
    Setup,
    SetupPart,
    Tick,
)
from loadgen.meter import HEADER_BYTES, HEADER_FMT, MAX_LAG_US, PAD_BYTE, Meter, username_of
from loadgen.pacing import MIN_TICK_NS, NS, Schedule, TimerFd
from loadgen.procstat import runqueue_wait_seconds
from loadgen.targets import first_host, split_servers
from loadgen.tokens import MemberToken
from loadgen.transport import SHARED_OWNER, MemberSockets, SharedSocket, Transport
from runtime import sched
from wire import errors
from wire.chat import encode_chat
from wire.codes import Framing, Operation, Status
from wire.dgmac import Sealer
from wire.limits import DEFAULT_MAX_PAYLOAD_BYTES, MAX_MEMBERS_RESPONSE_BYTES
from wire.tcrp import NEED_DATA, Complete, Request, RequestBody, Response
from wire.tcrp_client import ClientExchange

JOIN_ATTEMPTS: Final = 3
RETRY_STATUSES: Final = frozenset({Status.RATE_LIMITED, Status.UNAVAILABLE})
LATE_SEND_NS: Final = 1_000_000
"""A send more than 1 ms after its schedule counts as late (the loadgen lagging)."""
BIND_CHECK_NS: Final = 20_000_000
EXIT_MESSAGE: Final = b"/exit"
_OWNER_PIPE: Final = -1
_OWNER_TIMER: Final = -2
_OWNER_NONE: Final = -3


@dataclass(frozen=True)
class Plan:
    """What one loadgen process simulates and where the server is."""

    index: int
    server: str
    tcp_port: int
    room_prefix: str
    room_lo: int
    rooms: int
    users: int
    size: int
    framing: str = "plain"
    password: str | None = None
    tls_ca: str | None = None
    """Join over TLS, verifying against this CA file; members then seal their datagrams."""
    sockets: str = "member"
    """``member`` or ``shared`` (resolved by the parent: transport.resolve_mode)."""
    rx_timestamps: bool = True
    """Kernel receive timestamps (``SO_TIMESTAMPNS``) for the relay latency."""
    accounting: str = "python"
    """``c`` or ``python`` (resolved by the parent: fastpath.choose)."""
    realtime_priority: int = 0
    """``SCHED_FIFO`` priority of this process (0: normal scheduling); runtime/sched.py."""
    join_concurrency: int = 32
    join_timeout_s: float = 10.0
    bind_timeout_s: float = 10.0
    e2e: bool = False
    """Encrypted rooms (loadgen/e2eload.py); the parent sets ``framing`` to ``ocm1``."""
    verify_every: int = 10
    corrupt_every: int = 0
    collect_tokens: bool = False
    """Return every member's token and chat address in the ``SetupPart`` (``--join-only``)."""


def room_name(prefix: str, room: int) -> str:
    return f"{prefix}-{room}"


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class _JoinStats:
    ok: int = 0
    failed: int = 0
    done: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    framing_mismatch: int = 0
    max_message: int = 1 << 30
    inactivity_timeout_s: float = 300.0


MessageOf = Callable[[int, bool, int, int], bytes]
"""(member, measured, scheduled ns, lateness µs) -> the datagram of its next message."""


@dataclass(slots=True)
class _Run:
    """The state of one run between the phases of ``Simulator.run``'s loop."""

    sched: Schedule
    order: list[int]
    """Members in sending order (user-major, so a room's members are spread in time)."""
    message_of: MessageOf
    """The datagram of member ``lm``'s next message (``Simulator._send_due``)."""
    t0_ns: int
    mstart_ns: int
    end_ns: int
    drain_deadline: int
    tick_ns: int
    stray_start: int
    j: int = 0
    """The next tick's number (0 = the start of the measured window)."""
    next_tick: int = 0
    cpu_tick: float = 0.0
    wait_tick: float = 0.0
    wall_tick: int = 0
    cpu_start: int | None = None
    """Set (to the wall time, ns) once the run's CPU figures have a starting point."""
    cpu_wall_start: int = 0
    cpu_start_s: float = 0.0
    wait_start: float = 0.0
    cpu_run: float = 0.0
    wait_run: float = 0.0
    expected_final: int = -1
    """Deliveries that must arrive, known once sending is over (-1 before)."""
    ticks_cpu: list[float] = field(default_factory=list)
    late: int = 0
    max_lag: int = 0

    def start_cpu(self, now: int) -> None:
        self.cpu_start = self.cpu_wall_start = now
        self.cpu_start_s = cpu_seconds()
        self.wait_start = runqueue_wait_seconds()


def _sealing(send: Callable[[bytes], object], sealer: Sealer) -> Callable[[bytes], object]:
    """``send`` with the member's MAC trailer added to every datagram (wire/dgmac.py)."""
    seal = sealer.seal

    def sealed(data: bytes) -> object:
        return send(seal(data))

    return sealed


class Simulator:
    """The members of one process (see the module docstring for the command protocol)."""

    def __init__(self, conn: Connection, plan: Plan) -> None:
        self.conn = conn
        self.plan = plan
        self.targets = split_servers(plan.server, plan.tcp_port)
        """Where member ``lm`` joins: ``targets[lm % len(targets)]``."""
        users, rooms = plan.users, plan.rooms
        n = self.n = users * rooms
        self.e2e: E2EMeter | None = None
        if plan.e2e:
            self.e2e = E2EMeter(plan.room_lo, rooms, users, plan.size, plan.verify_every,
                                plan.corrupt_every)
        self.meter = self.e2e or Meter(plan.room_lo, rooms, users,
                                       framed=plan.framing == "ocm1")
        self.meter.active = [False] * n
        self.transport: Transport
        if plan.sockets == "shared":
            self.transport = SharedSocket(n, plan.index, plan.rx_timestamps)
        else:
            limit = raise_nofile_limit()
            if n + 64 > limit:
                raise OSError(f"{n} sockets needed but RLIMIT_NOFILE is {limit}")
            self.transport = MemberSockets(n, _local_ip_towards(first_host(plan.server),
                                                            plan.tcp_port),
                                           plan.rx_timestamps)
        self.accounting = "python"
        if isinstance(self.transport, SharedSocket) and plan.accounting == "c":
            self.transport.account_with(self.meter)  # fastpath.Unavailable: the parent said c
            self.accounting = "c"
        self.prefix: list[bytes] = [b""] * n
        self.tls: ssl.SSLContext | None = None
        """``--tls-ca``: the context of every join (members then seal their datagrams)."""
        if plan.tls_ca is not None:
            self.tls = ssl.create_default_context(cafile=plan.tls_ca)
            self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.is_host = [False] * n
        self.last_send_ns = [0] * n
        self.rooms_raw = [room_name(plan.room_prefix, plan.room_lo + r).encode()
                          for r in range(rooms)]
        self.ep = select.epoll()
        fds = self.transport.fds()
        try:
            self.timer: TimerFd | None = TimerFd()
        except OSError:
            self.timer = None
        special = [conn.fileno()] + ([self.timer.fileno()] if self.timer else [])
        size = max([fd for fd, _ in fds] + special) + 1
        self.owner = [_OWNER_NONE] * size
        for fd, owner in fds:
            self.owner[fd] = owner
            self.ep.register(fd, select.EPOLLIN)
        self.owner[conn.fileno()] = _OWNER_PIPE
        self.ep.register(conn.fileno(), select.EPOLLIN)
        if self.timer is not None:
            self.owner[self.timer.fileno()] = _OWNER_TIMER
            self.ep.register(self.timer.fileno(), select.EPOLLIN)
        self.join = _JoinStats()
        self.tokens: list[MemberToken] = []
        self.keepalive_ns = int(300.0 / 4 * NS)
        self.aborted = False

    # --- the command loop ------------------------------------------------------------------
    def serve(self) -> None:
        self.conn.send(Ready(self.plan.index, self.n, os.getpid(), self.timer is not None,
                             self.transport.mode, self.transport.rcvbuf, self.accounting,
                             sched.current()))
        while True:
            cmd: Command = self.conn.recv()
            if isinstance(cmd, Setup):
                self.conn.send(self.setup())
            elif isinstance(cmd, Run):
                self.aborted = False
                # no cyclic garbage is made while running: keep collector pauses out of the
                # latency figures
                gc.collect()
                gc.disable()
                try:
                    result = self.run(**cmd.arguments())
                finally:
                    gc.enable()
                self.conn.send(result)
            elif isinstance(cmd, Prepare):
                self.conn.send(self.prepare(cmd.per_member))
            elif isinstance(cmd, SendExits):
                self.conn.send(self.send_exits(hosts=cmd.hosts))
            elif isinstance(cmd, Quit):
                break
            elif not isinstance(cmd, Abort):  # an abort between runs: nothing to stop
                raise TypeError(f"not a loadgen command: {cmd!r}")
        self.close()

    def close(self) -> None:
        self.ep.close()
        if self.timer is not None:
            self.timer.close()
        self.transport.close()

    # --- setup: joins over TCRP ---------------------------------------------------------
    def setup(self) -> SetupPart:
        t_start = time.monotonic_ns()
        try:
            import uvloop

            factory: Any = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a dependency
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(self._join_all())
        t_end = time.monotonic_ns()
        bind_missing = self._wait_bound(t_end + int(self.plan.bind_timeout_s * NS))
        t_bound = time.monotonic_ns()
        if self.e2e is not None:
            for r, raw in enumerate(self.rooms_raw):
                self.e2e.start_room(raw.decode(), r)
        j = self.join
        return SetupPart(
            index=self.plan.index, joins_ok=j.ok, joins_failed=j.failed,
            failures=j.failures, t_start_ns=t_start, t_end_ns=t_end,
            join_latencies_ms=j.latencies_ms, bind_wait_s=(t_bound - t_end) / NS,
            bound_missing=bind_missing,
            framing=self.plan.framing if self.plan.framing == Framing.OCM1R.value
            else "ocm1" if self.meter.framed else "plain",
            framing_mismatch=j.framing_mismatch, max_message=j.max_message,
            inactivity_timeout_s=j.inactivity_timeout_s,
            notices=dict(self.meter.notice_events), tokens=self.tokens)

    async def _join_all(self) -> None:
        sem = asyncio.Semaphore(self.plan.join_concurrency)
        users = self.plan.users

        async def room(r: int) -> None:
            host = r * users
            if await self._join(sem, host, Operation.CREATE):
                await asyncio.gather(*(self._join(sem, lm, Operation.JOIN)
                                       for lm in range(host + 1, host + users)))
            else:
                self.join.done += users - 1

        progress = asyncio.create_task(self._report_joins())
        try:
            await asyncio.gather(*(room(r) for r in range(self.plan.rooms)))
        finally:
            progress.cancel()
        self._send_join_progress()

    async def _report_joins(self) -> None:
        while True:
            await asyncio.sleep(0.25)  # a progress report, not a wait for an event
            self._send_join_progress()

    def _send_join_progress(self) -> None:
        self.conn.send(JoinProgress(self.plan.index, self.join.done, self.join.failed))

    async def _join(self, sem: asyncio.Semaphore, lm: int, op: Operation) -> bool:
        plan, j = self.plan, self.join
        users = plan.users
        room_raw = self.rooms_raw[lm // users]
        framing = Framing(plan.framing)
        username = username_of(lm % users, users)
        outcome = "?"
        for attempt in range(JOIN_ATTEMPTS):
            async with sem:
                t = time.perf_counter()
                status: Status | int | str
                try:
                    async with asyncio.timeout(plan.join_timeout_s):
                        status, response, token = await self._tcrp(
                            op, room_raw, username, framing, lm)
                except TimeoutError:
                    status, response, token = "timeout", None, b""
                except errors.ProtocolError as exc:
                    status, response, token = f"protocol:{type(exc).__name__}", None, b""
                except OSError as exc:
                    status, response, token = f"os:{exc.errno}", None, b""
                elapsed_ms = (time.perf_counter() - t) * 1000
            if status == Status.OK and response is not None and response.details:
                j.latencies_ms.append(elapsed_ms)
                self._joined(lm, room_raw, token, response)
                j.ok += 1
                j.done += 1
                return True
            outcome = status.name if isinstance(status, Status) else str(status)
            retry = status in RETRY_STATUSES or isinstance(status, str)
            if not retry or attempt == JOIN_ATTEMPTS - 1:
                break
            await asyncio.sleep(0.05 * (attempt + 1))  # back off before retrying
        j.failed += 1
        j.done += 1
        j.failures[outcome] = j.failures.get(outcome, 0) + 1
        return False

    async def _tcrp(self, op: Operation, room_raw: bytes, username: str,
                    framing: Framing, lm: int
                    ) -> tuple[Status | int, Response | None, bytes]:
        keys = None if self.e2e is None else self.e2e.public[lm]
        body = RequestBody(username, self.plan.password, framing, keys,
                           keys is not None and op is Operation.CREATE)
        # An encrypted room's join reply lists its members with their keys.
        exchange = ClientExchange(MAX_MEMBERS_RESPONSE_BYTES if keys is not None else
                                  DEFAULT_MAX_PAYLOAD_BYTES)
        request = exchange.send_request(Request(op, room_raw.decode(), room_raw, body))
        ip = self.transport.join_ip(lm)  # the token is bound to the IP we join from
        host, port = self.targets[lm % len(self.targets)]
        reader, writer = await asyncio.open_connection(
            host, port,
            local_addr=None if ip is None else (ip, 0), ssl=self.tls,
            server_hostname=host if self.tls is not None else None)
        try:
            writer.write(request)
            while True:
                event = exchange.next_event()
                if event is NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        raise ConnectionResetError(0, "server closed the connection")
                    exchange.receive_data(data)
                elif isinstance(event, Response):
                    if event.status != Status.OK:
                        return event.status, event, b""
                elif isinstance(event, Complete):
                    return Status.OK, exchange.response, event.token
        finally:
            writer.close()

    def _joined(self, lm: int, room_raw: bytes, token: bytes, response: Response) -> None:
        details = response.details
        assert details is not None
        j = self.join
        j.max_message = min(j.max_message, details.max_message)
        j.inactivity_timeout_s = min(j.inactivity_timeout_s, details.inactivity_timeout)
        self.keepalive_ns = int(j.inactivity_timeout_s / 4 * NS)
        framed = details.framing is Framing.OCM1
        if self.plan.framing == Framing.OCM1R.value:  # join-only: cload --reliable sends
            if details.framing is not Framing.OCM1R:
                j.framing_mismatch += 1
        elif j.ok == 0 and framed != self.meter.framed:
            self.meter.set_framing(framed)  # the server decides (a baseline is plain-only)
        elif framed != self.meter.framed or (self.e2e is not None and not details.e2e):
            j.framing_mismatch += 1
        via = details.udp_host or self.targets[lm % len(self.targets)][0]
        self.transport.attach(lm, (via, details.udp_port))
        key = details.datagram_key
        if key is not None:  # joined over TLS: every datagram of this member is sealed
            self.transport.senders[lm] = _sealing(self.transport.senders[lm], Sealer(key))
        if self.plan.collect_tokens:
            self.tokens.append(MemberToken(self.plan.room_lo + lm // self.plan.users,
                                           lm % self.plan.users, room_raw, token, via,
                                           details.udp_port, key))
        self.prefix[lm] = encode_chat(room_raw, token, b"")
        self.is_host[lm] = details.host
        self.meter.active[lm] = True
        self._send(lm, b"")  # bind our address now; the others get a `joined` notice

    def _send(self, lm: int, message: bytes) -> bool:
        try:
            self.transport.senders[lm](self.prefix[lm] + message)
        except OSError:
            self.meter.c.send_errors += 1
            return False
        self.last_send_ns[lm] = time.monotonic_ns()
        return True

    def _wait_bound(self, deadline_ns: int) -> int:
        """Read notices until every active member is known to be bound; return how many
        are still unknown at the deadline."""
        meter = self.meter
        missing = meter.bound_missing()
        batch: list[tuple[int, bytes, int]] = []
        while missing:
            now = time.monotonic_ns()
            if now >= deadline_ns:
                break
            self._poll(min(deadline_ns - now, BIND_CHECK_NS) / NS, batch)
            if batch:
                meter.receive_batch(batch, time.monotonic_ns())
                batch.clear()
                missing = meter.bound_missing()
        return missing

    def _poll(self, timeout_s: float, batch: list[tuple[int, bytes, int]]) -> None:
        """One poll; received datagrams are appended to ``batch``."""
        owner, receive, append = self.owner, self.transport.receive, batch.append
        recv_errors = 0
        for fd, _ev in self.ep.poll(timeout_s):
            lm = owner[fd]
            if lm >= 0 or lm == SHARED_OWNER:
                recv_errors += receive(lm, append)
            elif lm == _OWNER_TIMER:
                assert self.timer is not None
                self.timer.ack()
            elif lm == _OWNER_PIPE:
                self._pipe_readable()
        if recv_errors:
            self.meter.c.recv_errors += recv_errors

    def _pipe_readable(self) -> None:
        while self.conn.poll():
            if isinstance(self.conn.recv(), Abort | Quit):
                self.aborted = True

    # --- a run ----------------------------------------------------------------------------
    def run(self, rate: float, t0_ns: int, mstart_ns: int, end_ns: int, drain_ns: int,
            tick_ns: int, pacing_ns: int = MIN_TICK_NS) -> RunPart:
        """One paced run (see the module docstring): send what is due, stop sending at
        ``end_ns`` and learn what must arrive, report a tick every ``tick_ns``, wait for
        datagrams; until everything expected arrived, ``drain_ns`` passed or an abort."""
        meter, plan = self.meter, self.plan
        users = plan.users
        meter.start_run(mstart_ns)
        order = [r * users + u for u in range(users) for r in range(plan.rooms)
                 if meter.active[r * users + u]]
        message_of = (self._plain_messages(PAD_BYTE * (plan.size - HEADER_BYTES),
                                           plan.room_lo * users)
                      if self.e2e is None else self.e2e.messages(self.prefix))
        r = _Run(Schedule(order, rate, t0_ns, end_ns, pacing_ns), order, message_of,
                 t0_ns, mstart_ns, end_ns, end_ns + drain_ns, tick_ns, self.transport.stray)
        # ticks are aligned to the measured window: tick j covers [mstart + (j-1)·tick, +tick)
        r.j = -((mstart_ns - t0_ns) // tick_ns)
        r.next_tick = mstart_ns + r.j * tick_ns
        if r.next_tick <= t0_ns:
            r.j += 1
            r.next_tick += tick_ns
        r.cpu_tick, r.wait_tick = cpu_seconds(), runqueue_wait_seconds()
        r.wall_tick = time.monotonic_ns()
        if self.timer is not None:
            self.timer.arm(t0_ns, r.sched.tick_ns)
        batch: list[tuple[int, bytes, int]] = []
        receive, counts = meter.receive_batch, meter.c
        while True:
            now = time.monotonic_ns()
            if r.cpu_start is None and now >= t0_ns:
                r.start_cpu(now)
            if not r.sched.done and r.sched.next_ns <= now:
                self._send_due(r, now)
            if r.expected_final < 0 and (r.sched.done and now >= end_ns or self.aborted):
                self._stop_sending(r, now)
            if now >= r.next_tick:
                self._tick(r, now)
            if r.expected_final >= 0 and (counts.delivered >= r.expected_final
                                          or now >= r.drain_deadline or self.aborted):
                break
            self._poll(max(self._wake_at(r, now) - time.monotonic_ns(), 0) / NS, batch)
            if batch:
                receive(batch, time.monotonic_ns())
                batch.clear()
        return self._run_result(r)

    def prepare(self, per_member: int) -> Prepared:
        """``--e2e``: seal the next run's messages now, before its schedule starts."""
        assert self.e2e is not None
        t = time.monotonic()
        total = self.e2e.prepare(per_member)
        return Prepared(self.plan.index, total, time.monotonic() - t)

    def _send_due(self, r: _Run, now: int) -> None:
        """Everything whose scheduled time has come goes out (schedule-based: late sends
        catch up); a measured send's lateness is counted. ``r.message_of`` makes each
        datagram (``_plain_messages``, or ``E2EMeter.messages``: pre-sealed)."""
        sched, order, n_order = r.sched, r.order, len(r.order)
        mstart = r.mstart_ns
        socks_send, message_of = self.transport.senders, r.message_of
        sent, last_send, counts = self.meter.sent, self.last_send_ns, self.meter.c
        late, max_lag = 0, r.max_lag
        while sched.next_ns <= now and not sched.done:
            due = sched.next_ns
            lm = order[sched.k % n_order]
            measured = due >= mstart
            lag_us = min((time.monotonic_ns() - due) // 1000, MAX_LAG_US)
            try:
                socks_send[lm](message_of(lm, measured, due, lag_us))
            except OSError:
                counts.send_errors += 1
            else:
                if measured:
                    sent[lm] += 1
                last_send[lm] = now
            if measured:
                lag = now - due
                if lag > LATE_SEND_NS:
                    late += 1
                if lag > max_lag:
                    max_lag = lag
            sched.advance()
        r.late += late
        r.max_lag = max_lag

    def _plain_messages(self, pad: bytes, g0: int) -> MessageOf:
        """A plain chat datagram: the header (sender, sequence number, schedule, lateness)
        padded to ``--size`` (meter.py)."""
        prefix, header, sent = self.prefix, HEADER_FMT, self.meter.sent

        def message(lm: int, measured: bool, due: int, lag_us: int) -> bytes:
            return prefix[lm] + header % (g0 + lm, sent[lm] if measured else 0, due,
                                          lag_us) + pad

        return message

    def _stop_sending(self, r: _Run, now: int) -> None:
        """Sending is over (or aborted): take the run's CPU figures and what must arrive."""
        if self.timer is not None:
            self.timer.disarm()
        if r.cpu_start is None:  # aborted before t0
            r.start_cpu(now)
        wall = max((now - r.cpu_wall_start) / NS, 1e-9)
        r.cpu_run = (cpu_seconds() - r.cpu_start_s) / wall
        r.wait_run = (runqueue_wait_seconds() - r.wait_start) / wall
        r.expected_final = self.meter.expected()

    def _tick(self, r: _Run, now: int) -> None:
        """A progress tick to the parent, and keepalives for members that have been quiet."""
        meter = self.meter
        cpu_now, wait_now = cpu_seconds(), runqueue_wait_seconds()
        wall = max((now - r.wall_tick) / NS, 1e-9)
        cpu_pct = 100.0 * (cpu_now - r.cpu_tick) / wall
        wait_pct = 100.0 * (wait_now - r.wait_tick) / wall
        r.cpu_tick, r.wait_tick, r.wall_tick = cpu_now, wait_now, now
        if now < r.end_ns:
            r.ticks_cpu.append(cpu_pct)
        interval = meter.take_interval()
        self.conn.send(Tick(self.plan.index, r.j, sum(meter.sent), meter.c.delivered,
                            interval.encode(), cpu_pct, wait_pct, now < r.end_ns))
        r.j += 1
        r.next_tick += r.tick_ns
        meter.c.keepalives += self._keepalives(now)

    def _wake_at(self, r: _Run, now: int) -> int:
        """When the loop must wake even if no datagram arrives (the timerfd, when there is
        one, wakes it for the sends)."""
        wake = r.next_tick
        if r.expected_final >= 0:
            return min(wake, r.drain_deadline)
        if self.timer is None and not r.sched.done:
            return min(wake, r.sched.next_ns)
        if now < r.t0_ns:
            return min(wake, r.t0_ns)
        return wake

    def _run_result(self, r: _Run) -> RunPart:
        meter, counts = self.meter, self.meter.c
        counts.late_sends += r.late
        # a delivery to an address that is no member's was misrouted by the server
        counts.misrouted += self.transport.stray - r.stray_start
        counts.max_send_lag_ns = max(counts.max_send_lag_ns, r.max_lag)
        meter.take_interval()
        if self.e2e is not None:  # after the measured window and the drain
            self.e2e.verify_samples()
        return RunPart(
            index=self.plan.index, counts=replace(meter.counts()),
            hist=meter.histogram.encode(), relay_hist=meter.relay_histogram.encode(),
            cpu_pct=100.0 * r.cpu_run, cpu_pct_max_tick=max(r.ticks_cpu, default=0.0),
            wait_pct=100.0 * r.wait_run, notices=dict(meter.notice_events),
            aborted=self.aborted, timerfd=self.timer is not None)

    def _keepalives(self, now: int) -> int:
        """Empty datagrams from members that sent nothing for inactivity_timeout / 4."""
        limit = now - self.keepalive_ns
        sent = 0
        last, active = self.last_send_ns, self.meter.active
        for lm in range(self.n):
            if active[lm] and last[lm] < limit:
                sent += self._send(lm, b"")
        return sent

    # --- the end: /exit ---------------------------------------------------------------------
    def send_exits(self, hosts: bool) -> Exits:
        sent = 0
        message = EXIT_MESSAGE if self.e2e is None else LEAVE_MESSAGE
        for lm in range(self.n):
            if self.meter.active[lm] and self.is_host[lm] == hosts:
                sent += self._send(lm, message)
        if hosts:
            self.meter.active = [False] * self.n
        else:
            self.meter.active = [a and h for a, h in zip(self.meter.active, self.is_host,
                                                          strict=True)]
        return Exits(self.plan.index, sent, hosts)


def _local_ip_towards(server: str, port: int) -> str:
    """The local address the kernel would use to reach ``server`` (the IP our tokens are
    bound to). A UDP ``connect`` sends nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((server, port or 9))
        return str(probe.getsockname()[0])


def child_main(conn: Connection, plan: Plan) -> None:
    """Entry point of a loadgen process (``multiprocessing`` spawn target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C once
    try:
        sched.apply(plan.realtime_priority)  # the parent has checked that it may
        Simulator(conn, plan).serve()
    except BaseException:  # report any failure to the parent instead of dying silently
        try:
            conn.send(ChildError(plan.index, traceback.format_exc()))
        except OSError:
            pass
        raise
    finally:
        conn.close()
