"""``ocm-loadgen --loss PCT``: reliable delivery (``ocm1r``) under datagram loss.

Asyncio on uvloop; every member a ``client.reliable.ReliableChat``, the code ``ocm-chat``
runs. ``procs`` ``spawn`` processes share the rooms (disjoint slices, started together on
the monotonic clock); their counters and HDR histograms are added up. Each process has one
shared socket (``transport.SharedSocket``, loopback servers only): member ``i`` is the
address 127.(100 + proc).x.y, its TCRP join comes from that IP, and ``recvmmsg`` batches
are told apart by destination IP (``IP_PKTINFO``).

Receiving (``lossyfast.py``, ``_reliable.c``): the common case -- the next in-order DATA
for a member whose receiver is clean (known epoch and next number, nothing held, nothing
missing), the next message of its sender -- is counted in C straight from the receive
buffers, as ``ReliableChat`` and ``show`` would count it. Everything else (ACK, SYNC, LOST,
notices, a gap, a duplicate, a member whose receiver Python holds) goes, in order, to the
member's ``ReliableChat``, which takes the receiver's epoch and next number over from C
and hands them back once it is clean. ``--accounting python`` (or a build without the
extension) sends everything that way; the report's ``receive_path`` says which ran.
The outage members' receivers stay with Python.

Loss is made here, in the loadgen, each way: a datagram a member would send is dropped
with probability PCT/100 before it is sent, and one it receives is dropped with the same
probability before the client code sees it (one draw of a seeded xorshift64* per datagram,
in C or in Python alike: ``--seed`` makes a process's drops reproducible for the same
traffic). The server is unchanged.

Each member sends ``rate`` messages a second for ``duration`` seconds (text: sender index,
its message number, the first send time), then the run drains until every message is
acknowledged and every receiver has no hole left (or ``drain`` seconds). Counted at each
receiver: deliveries (unique), duplicates (a message shown twice: must be 0), out of order
(a sender's message after a later one of the same sender: must be 0), "could not be
recovered" markers, and the latency from the sender's first copy to the delivery (the
recovery latency when a copy was lost). Counted at each sender: messages given up as failed
(unacknowledged 15 s after the first copy: ``ocm-chat`` would offer ``/retry``; the loadgen
does not retry). A drain that ends on its time limit says what was still unsettled (sends
unacknowledged, holes open): what a delivered share below 100 % without markers is made of.
``--no-recovery`` asks for ``ocm1`` instead: the same traffic without numbering,
acknowledgement or resends (what loss costs without it).
``outage_s``: the last member of every room goes silent both ways for that long, from a
third of the run on, then resumes as ``ocm-chat`` does after a short outage (NACKs every
hole, resends its window, asks where the room is); the report says how many of the
deliveries sent to it meanwhile came back, and how long after the outage ended.
The JSON report has the shape of the others: ``command``, ``options``, ``result``.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import heapq
import multiprocessing
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any, Final

from hdrh.histogram import HdrHistogram

from client.link import SYNC_S, keepalive_due, urgent
from client.reliable import Delivered, Failed, Gap, ReliableChat
from client.session import TcrpTarget
from client.session_aio import join_room_async
from loadgen import lossyfast
from loadgen.fastpath import Unavailable
from loadgen.meter import latency_ms, merge_histograms, new_histogram, room_slices
from loadgen.procstat import runqueue_wait_seconds, tree_cpu_seconds
from loadgen.transport import FIRST_OCTET_BASE, HOSTS_PER_BLOCK, SharedSocket, resolve_mode
from runtime import mmsg
from wire import chat
from wire.chat import encode_chat
from wire.codes import Framing, Operation
from wire.tcrp import Request, RequestBody

RECV_BATCH: Final = 256
"""Datagrams per ``recvmmsg`` call of the shared socket."""
TICK_S: Final = 0.005
"""How often members' timers (NACKs, resends, sends due) are looked at."""
KEEPALIVE_CHECK_S: Final = 0.25
"""While sending: how often each member's keepalive rule is looked at (``keepalive_now``)."""
DRAIN_KEEPALIVE_S: Final = 0.5
"""While draining: every member sends a keepalive this often (syncs reveal a lost last
message sooner than ``ocm-chat`` would ask)."""
JOIN_TIMEOUT_S: Final = 300.0
"""A loadgen process's joins (5,000 members over TCRP take a few seconds)."""
START_DELAY_S: Final = 0.3
"""From the parent's start command to the first send: every process has it by then."""
RESULT_EXTRA_S: Final = 60.0
"""Beyond ``drain``: leaving, and a loaded machine."""


@dataclass(frozen=True, slots=True)
class LossOptions:
    server: str
    tcp_port: int
    rooms: int
    users: int
    rate: float
    duration: float
    drain: float
    loss_pct: float
    recovery: bool = True
    seed: int | None = None
    server_pid: int | None = None
    prefix: str = field(default_factory=lambda: f"loss{int(time.time() * 1000) % 10**9}")
    procs: int = 1
    """Loadgen processes, each with a disjoint slice of the rooms (1: this process)."""
    outage_s: float = 0.0
    """One member per room (its last) goes silent both ways this long, from a third of
    the run on, then resumes (``ReliableChat.resumed``): what it missed must come back."""
    room_lo: int = 0
    """This process's first room (a slice of ``room_count`` rooms from it)."""
    room_count: int | None = None
    proc: int = 0
    """This process's index (its members' addresses are 127.(100 + proc).x.y)."""
    accounting: str = "auto"
    """``c``: the C receive path or refuse; ``python``; ``auto``: C if it was built."""


class _Member:
    """One member: its ``ReliableChat`` (the code ``ocm-chat`` runs), what it has shown,
    and how it sends."""

    __slots__ = ("run", "lm", "index", "room", "name", "chat", "send", "prefix", "sent",
                 "out", "pinned", "handed", "ahead", "base", "armed", "src", "dst", "port",
                 "keepalive_at")

    def __init__(self, run: _Run, lm: int, index: int, room: int) -> None:
        self.run = run
        self.lm = lm
        self.index = index
        self.room = room
        self.base = room * run.opts.users
        """The global index of the first member of its room (sender numbers are global)."""
        self.name = f"u{index - self.base}"
        self.chat = ReliableChat() if run.opts.recovery else None
        self.send: Callable[[bytes], object] | None = None
        """Sends one datagram now (set once joined)."""
        self.prefix = b""
        self.src = self.dst = b""
        """Our address and the relay's (4 bytes each) and its port: ``send_message``
        queues datagrams in ``run.outbox`` with them, ``_flush`` sends the lot."""
        self.port = 0
        self.sent = 0
        self.out = False
        """In its outage: nothing goes out, nothing comes in."""
        self.pinned = False
        """Its receiver stays with Python (the outage member: its deliveries are timed
        against the outage)."""
        self.handed = False
        """Its receiver is clean and held by C (epoch and next number in the arrays)."""
        self.armed: float | None = None
        """When its live entry in the timer heap is due (None: it has none)."""
        self.ahead: dict[int, set[int]] = {}
        """Per sender of the room: message numbers shown past the next one expected."""
        self.keepalive_at = 0.0
        """When its last keepalive went out (monotonic s)."""

    def keepalive_now(self, now: float, base_s: float) -> bool:
        """``ocm-chat``'s rule (``client.link.keepalive_due``; its last keepalive stands for
        its last datagram: members send messages far more often than ``base_s``, the
        inactivity timeout / 4). An ``ocm1`` member sends one per ``base_s`` (at most one
        per ``SYNC_S``)."""
        chat_ = self.chat
        if chat_ is None:
            return now - self.keepalive_at >= max(base_s, SYNC_S)
        heard = self.run.rs.heard[self.lm] / 1e6
        return keepalive_due(self.keepalive_at, heard, self.keepalive_at, base_s,
                             urgent(chat_, now)) <= now

    def send_message(self, message: bytes) -> None:
        run = self.run
        if self.out:
            run.outage_dropped += 1
            return
        if run.rng.random() < run.loss:
            run.dropped_out += 1
            return
        if self.send is not None:
            run.outbox.append((self.prefix + message, self.src, self.dst, self.port))

    def receive(self, data: bytes, now_us: int) -> None:
        """A datagram kept by the loss (the Python path): the member's client code."""
        run = self.run
        chat_ = self.chat
        if chat_ is None:
            self.show(data, now_us)
            return
        if self.handed:  # take the receiver over from C (until it is clean again: a
            self.handed = False  # hand-back earlier in this batch made C's state ST_C)
            chat_.receiver.next = run.rs.next[self.lm]
            run.rs.state[self.lm] = lossyfast.ST_PY
        now = now_us / 1e6
        for event in chat_.handle_delivery(data, now):
            if isinstance(event, Delivered):
                self.show(event.body, now_us)
            elif isinstance(event, Gap):
                run.gaps += event.count
        run.arm(self)
        self.hand_back()

    def hand_back(self) -> None:
        """Give a clean receiver to C (its fast path takes the member's deliveries)."""
        run, chat_ = self.run, self.chat
        if run.fast is None or chat_ is None or self.pinned or self.handed:
            return
        rx = chat_.receiver
        if rx.next is None or rx.epoch is None or rx.held or rx.missing or rx.lost \
                or rx.sync_due is not None or any(seq >= rx.next for seq in rx.own):
            return  # (an own number below next is one the relay also resent as DATA)
        rs = run.rs
        rs.epoch[self.lm], rs.next[self.lm] = rx.epoch, rx.next
        rs.state[self.lm] = lossyfast.ST_C
        self.handed = True

    def show(self, body: bytes, now_us: int) -> None:
        run = self.run
        try:
            item = chat.decode_framed(body)
        except Exception:  # a notice or junk: not traffic
            return
        if not isinstance(item, chat.FramedChat):
            return
        try:
            sender_s, number_s, first_s = item.message.split(" ", 2)
            sender, number = int(sender_s), int(number_s)
            first_us = round(float(first_s) * 1e6)
        except ValueError:
            return
        users = run.opts.users
        s = sender - self.base
        if not 0 <= s < users or sender == self.index:  # ours: resent, its ack was lost
            return
        k = self.lm * users + s
        nexp = run.rs.nexp
        expected = nexp[k]
        ahead = self.ahead.get(s)
        if number < expected or (ahead is not None and number in ahead):
            run.duplicates += 1
            return
        if ahead and number < max(ahead):
            run.out_of_order += 1
        if number == expected:
            expected += 1
            while ahead and expected in ahead:
                ahead.discard(expected)
                expected += 1
            nexp[k] = expected
        else:
            if ahead is None:
                ahead = self.ahead[s] = set()
            ahead.add(number)
        run.rs.pdirty[k] = 1 if ahead else 0
        if run.measuring or run.draining:
            run.delivered += 1
            lat = max(1, now_us - first_us)
            if run.lat is not None and lat < lossyfast.DIRECT_US:
                run.lat[lat] += 1  # the C path's per-µs counts (cheaper than an HDR record)
            else:
                run.hist.record_value(lat)
            if self.pinned and run.out_from_us <= first_us < run.out_until_us \
                    and run.outage_on is False and run.out_until != float("inf"):
                run.outage_back += 1
                run.outage_hist.record_value(max(1, now_us - run.out_until_us))


class _Run:
    def __init__(self, opts: LossOptions) -> None:
        self.opts = opts
        self.loss = opts.loss_pct / 100.0
        seed = None if opts.seed is None else opts.seed * 1_000_003 + opts.room_lo
        self.rng = random.Random(seed)
        """The send side's loss."""
        self.rx_rng = lossyfast.LossRng(lossyfast.seed_state(
            random.Random(seed).getrandbits(64) ^ 0x5EED), opts.loss_pct)
        """The receive side's loss (drawn in C on the fast path, the same way)."""
        self.members: list[_Member] = []
        self.rs = lossyfast.ReceiveState(0, opts.users)
        self.fast: lossyfast.FastReceive | None = None
        self.lat: array.array[int] | None = None
        """The C path's per-µs latency counts (``fast.lat``), folded in at the end."""
        self.path = "python"
        self.timers: list[tuple[float, int]] = []
        """A heap of (when, member) for members with a timer (NACK, resend, sync):
        ``_tick`` looks only at those due, not at every member every tick."""
        self.hist = new_histogram()
        self.delivered = self.duplicates = self.out_of_order = self.gaps = 0
        self.failed = 0
        """Messages their sender gave up on (unacknowledged 15 s after the first copy), as
        ``ocm-chat`` shows them: failed, with ``/retry``. The loadgen does not retry."""
        self.expected = 0
        self.dropped_out = self.dropped_in = 0
        self.stray = self.send_errors = self.recv_errors = 0
        self.fast_delivered = 0
        self.received = 0
        """Datagrams read from the shared socket."""
        self.outbox: list[tuple[bytes, bytes, bytes, int]] = []
        """Datagrams to send at the end of this loop iteration (``_flush``)."""
        self.send_batch: Callable[[int, list[tuple[bytes, bytes, bytes, int]]], int] | None \
            = None
        self.fd = -1
        self.measuring = self.draining = False
        self.framing = Framing.OCM1R if opts.recovery else Framing.OCM1
        self.outage_members: set[_Member] = set()
        self.outage_of: dict[int, _Member] = {}
        """The member of each room that has the outage."""
        self.out_from = self.out_until = float("inf")
        self.out_from_us = self.out_until_us = 1 << 62
        self.outage_on = False
        self.outage_expected = self.outage_back = self.outage_dropped = 0
        self.outage_hist = new_histogram()
        """From the end of the outage to the delivery of what was sent during it."""
        self.by_dest: dict[bytes, int] = {}
        self.keepalive_base_s = 75.0
        """The inactivity timeout / 4 (from the OK details; the default till the first)."""

    def arm(self, member: _Member) -> None:
        """Put ``member``'s next timer in the heap (one live entry per member: the
        earliest; a later one is found when that one is popped)."""
        chat_ = member.chat
        due = None if chat_ is None else chat_.next_deadline()
        if due is not None and (member.armed is None or due < member.armed):
            member.armed = due
            heapq.heappush(self.timers, (due, member.lm))

    def receive_rows(self, rows: list[tuple[bytes, bytes, int]], now_us: int) -> None:
        """The Python path of a batch: outage, loss, then the member's client code."""
        by_dest, state, members, rng = self.by_dest, self.rs.state, self.members, self.rx_rng
        heard = self.rs.heard
        for data, dest, _ in rows:
            lm = by_dest.get(dest)
            if lm is None:
                self.stray += 1
            elif state[lm] == lossyfast.ST_OUT:
                self.outage_dropped += 1
            elif rng.drop():
                self.dropped_in += 1
            else:
                heard[lm] = now_us  # (C sets it for the datagrams it reads)
                members[lm].receive(data, now_us)

    def receive_fast(self, batch: mmsg.RecvBatch, got: int, now_us: int) -> None:
        """The C path of a batch, then what it left to Python, in order."""
        fast = self.fast
        assert fast is not None
        n_slow = fast.receive(got, now_us, self.measuring or self.draining)
        b = fast.batch
        self.fast_delivered += b.delivered
        self.delivered += b.delivered
        self.dropped_in += b.dropped_in
        self.outage_dropped += b.outage_dropped
        self.stray += b.stray
        for j in range(b.n_over):
            self.hist.record_value(fast.over[j])
        if b.stray:
            batch.datagrams_to()  # restores any control slot the kernel shortened
        members, slow, slow_lm, datagram = self.members, fast.slow, fast.slow_lm, batch.datagram
        for j in range(n_slow):
            members[slow_lm[j]].receive(datagram(slow[j]), now_us)

    def hist_total(self) -> HdrHistogram:
        """The latencies recorded so far (the per-µs counts folded in, then cleared)."""
        if self.lat is not None:
            lossyfast.fold_latencies(self.hist, self.lat)
            ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(self.lat)), 0,
                          len(self.lat) * self.lat.itemsize)
        return self.hist


def _on_readable(run: _Run, batch: mmsg.RecvBatch, fd: int) -> None:
    """Read the shared socket empty, a ``recvmmsg`` batch at a time."""
    while True:
        try:
            got = batch.recv(fd)
        except OSError:
            run.recv_errors += 1
            return
        if not got:
            return
        run.received += got
        now_us = time.monotonic_ns() // 1000
        if run.fast is not None:
            run.receive_fast(batch, got, now_us)
        else:
            run.receive_rows(batch.datagrams_to(), now_us)
        if got < batch.max_batch:
            return


def _add_members(run: _Run) -> list[list[_Member]]:
    """This process's members, room by room (the last of each has the outage, if any)."""
    opts = run.opts
    count = opts.rooms if opts.room_count is None else opts.room_count
    rooms = []
    for r in range(opts.room_lo, opts.room_lo + count):
        base = r * opts.users
        members = [_Member(run, len(run.members) + u, base + u, r) for u in range(opts.users)]
        run.members += members
        if opts.outage_s > 0 and opts.users > 1:
            run.outage_members.add(members[-1])
            run.outage_of[r] = members[-1]
            members[-1].pinned = True
        rooms.append(members)
    return rooms


def _attach(run: _Run, shared: SharedSocket) -> mmsg.RecvBatch:
    """The receive state of ``run``'s members on ``shared``, and the C path unless
    ``--accounting python`` (or ``--no-recovery``) or where it was not built (``c``:
    ``Unavailable``); the batch ``_on_readable`` reads into."""
    opts = run.opts
    run.rs = lossyfast.ReceiveState(len(run.members), opts.users)
    run.by_dest = {socket.inet_aton(ip): lm for lm, ip in enumerate(shared.ips)}
    batch = mmsg.RecvBatch(max_batch=RECV_BATCH, pktinfo=True)
    if opts.accounting != "python" and opts.recovery:
        try:
            run.fast = lossyfast.FastReceive(
                batch, run.rs, shared.proc, HOSTS_PER_BLOCK, FIRST_OCTET_BASE, opts.users,
                opts.room_lo * opts.users, run.rx_rng)
            run.path = "c"
            run.lat = run.fast.lat
            run.send_batch = lossyfast.extension().send_batch
            run.fd = shared.sock.fileno()
        except Unavailable:
            if opts.accounting == "c":
                raise
    return batch


async def _join_all(run: _Run, shared: SharedSocket, rooms: list[list[_Member]]) -> None:
    opts = run.opts
    sem = asyncio.Semaphore(32)
    port = shared.sock.getsockname()[1]

    async def join(member: _Member, op: Operation) -> None:
        async with sem:
            room = f"{opts.prefix}-{member.room}"
            joined = await join_room_async(
                TcrpTarget(opts.server, opts.tcp_port),
                Request.of(op, room, RequestBody(member.name, framing=run.framing)),
                local_ip=shared.join_ip(member.lm), udp_port=port)
        joined.udp_sock.close()  # the shared socket sends and receives for it
        member.prefix = encode_chat(joined.room_raw, joined.token, b"")
        shared.attach(member.lm, joined.server)
        member.send = shared.senders[member.lm]
        member.src = socket.inet_aton(shared.ips[member.lm])
        member.dst, member.port = socket.inet_aton(joined.server[0]), joined.server[1]
        member.send_message(b"")  # binds (a lost one is retried by the keepalives)
        member.keepalive_at = time.monotonic()
        run.keepalive_base_s = joined.details.inactivity_timeout / 4
        _flush(run)

    for members in rooms:
        await join(members[0], Operation.CREATE)
        await asyncio.gather(*(join(m, Operation.JOIN) for m in members[1:]))


def _flush(run: _Run) -> None:
    """Send what the members queued: one ``sendmmsg`` per 128 datagrams in C (the relay's
    worker wakes once per batch, not per datagram), else one ``sendmsg`` each."""
    out = run.outbox
    if not out:
        return
    run.outbox = []
    if run.send_batch is not None:
        run.send_errors += run.send_batch(run.fd, out)
        return
    members = run.members
    for data, src, _, _ in out:
        member = members[run.by_dest[src]]
        assert member.send is not None
        try:
            member.send(data)
        except OSError:
            run.send_errors += 1


def _tick(run: _Run, now: float) -> None:
    timers, members = run.timers, run.members
    while timers and timers[0][0] <= now:
        when, lm = heapq.heappop(timers)
        member = members[lm]
        if member.armed != when:  # superseded by an earlier entry
            continue
        member.armed = None
        chat_ = member.chat
        assert chat_ is not None
        due = chat_.next_deadline()
        if due is not None and due <= now:
            messages, events = chat_.handle_timer(now)
            for message in messages:
                member.send_message(message)
            for event in events:
                if isinstance(event, Gap):
                    run.gaps += event.count
                elif isinstance(event, Failed):  # ocm-chat: "N failed (/retry)"
                    run.failed += 1
            member.hand_back()
        run.arm(member)


def _settled(run: _Run) -> bool:
    for member in run.members:
        chat_ = member.chat
        if chat_ is not None and (chat_.sender.pending or chat_.receiver.missing):
            return False
    return run.delivered >= run.expected


def _outage(run: _Run, now: float) -> None:
    """Start the outage of one member per room once its time has come, and end it
    ``outage_s`` after it really started (a late loop iteration delays it, never skips
    it): ``out_from`` and ``out_until`` become the times it really began and ended."""
    if not run.outage_members or run.out_until != float("inf"):
        return
    state = run.rs.state
    if not run.outage_on:
        if now >= run.out_from:
            run.outage_on = True
            run.out_from = float(f"{now:.6f}")  # as the texts carry their send times
            run.out_from_us = round(run.out_from * 1e6)
            for member in run.outage_members:
                member.out = True
                state[member.lm] = lossyfast.ST_OUT
        return
    if now >= run.out_from + run.opts.outage_s:
        run.outage_on = False
        run.out_until = float(f"{now:.6f}")
        run.out_until_us = round(run.out_until * 1e6)
        for member in run.outage_members:  # back: NACK every hole, resend the window,
            member.out = False  # and ask where the room is
            state[member.lm] = lossyfast.ST_PY
            if member.chat is not None:
                member.chat.resumed(now)
                run.arm(member)
            member.send_message(b"")


async def _run(opts: LossOptions, gate: Callable[[], Awaitable[float]] | None = None
               ) -> dict[str, Any]:
    """Join this slice's members, wait for ``gate`` (the start time, on the monotonic
    clock, from the parent; none: start now), send, drain, leave; raw figures."""
    run = _Run(opts)
    rooms = _add_members(run)
    shared = SharedSocket(len(run.members), opts.proc, timestamps=False)
    loop = asyncio.get_running_loop()
    fd = shared.sock.fileno()
    try:
        batch = _attach(run, shared)
        loop.add_reader(fd, _on_readable, run, batch, fd)
        try:
            await _join_all(run, shared, rooms)
            return await _drive(run, gate)
        finally:
            loop.remove_reader(fd)
    finally:
        shared.close()


async def _drive(run: _Run, gate: Callable[[], Awaitable[float]] | None) -> dict[str, Any]:
    """Send, drain, leave; the raw figures."""
    opts = run.opts
    await asyncio.sleep(0.5)  # joined notices and syncs settle
    if gate is not None:
        start = await gate()
        await asyncio.sleep(max(0.0, start - time.monotonic()))
    start = time.monotonic()
    interval = 1.0 / opts.rate
    if run.outage_members:
        run.out_from = start + opts.duration / 3  # planned; _outage sets the real one
    cpu0 = tree_cpu_seconds(opts.server_pid) if opts.server_pid else None
    own0 = (time.process_time(), runqueue_wait_seconds())
    run.measuring = True
    schedule = [(start + run.rng.random() * interval, i) for i in range(len(run.members))]
    heapq.heapify(schedule)
    next_keepalive = start + KEEPALIVE_CHECK_S
    users = opts.users
    now = start
    while now - start < opts.duration:
        _outage(run, now)
        while schedule[0][0] <= now:
            due, i = schedule[0]
            heapq.heapreplace(schedule, (due + interval, i))
            member = run.members[i]
            text = f"{member.index} {member.sent} {now:.6f}".encode()
            member.sent += 1
            run.expected += users - 1
            if run.outage_on:
                away = run.outage_of.get(member.room)
                if away is not None and away is not member:
                    run.outage_expected += 1
            if member.chat is None:
                member.send_message(text)
            else:
                if member.handed:  # C has the receiver: how far the room got (the rate
                    member.chat.receiver.next = run.rs.next[member.lm]  # of 06 SENDs)
                _, message = member.chat.send(text, now)
                run.arm(member)
                if message is not None:
                    member.send_message(message)
        if now >= next_keepalive:
            next_keepalive += KEEPALIVE_CHECK_S
            base_s = run.keepalive_base_s
            for member in run.members:
                if member.keepalive_now(now, base_s):
                    member.keepalive_at = now
                    member.send_message(b"")
        _tick(run, now)
        _flush(run)
        await asyncio.sleep(TICK_S)
        now = time.monotonic()
    sent_end = now
    cpu1 = tree_cpu_seconds(opts.server_pid) if opts.server_pid else None
    own1 = (time.process_time(), runqueue_wait_seconds())
    delivered_sending = run.delivered
    run.measuring, run.draining = False, True
    while not _settled(run) and now - sent_end < opts.drain:
        _outage(run, now)
        if now >= next_keepalive:  # syncs reveal a lost last message
            next_keepalive += DRAIN_KEEPALIVE_S
            for member in run.members:
                member.send_message(b"")
        _tick(run, now)
        _flush(run)
        await asyncio.sleep(TICK_S)
        now = time.monotonic()
    for member in run.members:
        if member.send is not None:
            try:
                member.send(member.prefix + b"/exit")
            except OSError:
                run.send_errors += 1
    return {
        "sent": sum(m.sent for m in run.members),
        "expected": run.expected, "delivered": run.delivered,
        "delivered_sending": delivered_sending,
        "duplicates": run.duplicates, "out_of_order": run.out_of_order, "gaps": run.gaps,
        "failed": run.failed,
        "pending_at_end": sum(1 for m in run.members if m.chat is not None
                              for p in m.chat.sender.pending.values() if not p.failed),
        "holes_at_end": sum(len(m.chat.receiver.missing) for m in run.members
                            if m.chat is not None),
        "dropped_out": run.dropped_out, "dropped_in": run.dropped_in,
        "resent": sum(m.chat.sender.copies - m.sent for m in run.members
                      if m.chat is not None),
        "hist": run.hist_total().encode(),
        "path": run.path, "fast_delivered": run.fast_delivered, "stray": run.stray,
        "send_errors": run.send_errors, "recv_errors": run.recv_errors,
        "outage_members": len(run.outage_members), "outage_expected": run.outage_expected,
        "outage_back": run.outage_back, "outage_dropped": run.outage_dropped,
        "outage_hist": run.outage_hist.encode(),
        "outage_real_s": None if run.out_until == float("inf") else run.out_until - run.out_from,
        "start": start, "sent_end": sent_end, "drain_s": now - sent_end,
        "server_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        "cpu_s": own1[0] - own0[0], "wait_s": own1[1] - own0[1],
    }


def _report(opts: LossOptions, parts: list[dict[str, Any]], procs: int,
            server_cpu_s: float | None) -> dict[str, Any]:
    """Sum the processes' raw figures into the report."""
    def total(key: str) -> int:
        return sum(int(p[key]) for p in parts)

    expected, delivered = total("expected"), total("delivered")
    sending_s = max(p["sent_end"] for p in parts) - min(p["start"] for p in parts)
    outage: dict[str, Any] | None = None
    if opts.outage_s > 0:
        missed, back = total("outage_expected"), total("outage_back")
        outage = {
            "seconds": opts.outage_s, "members": total("outage_members"),
            "real_seconds": [None if p["outage_real_s"] is None else round(p["outage_real_s"], 3)
                             for p in parts],
            "deliveries_sent_while_out": missed, "came_back": back,
            "came_back_pct": 100.0 * back / missed if missed else None,
            "datagrams_dropped_while_out": total("outage_dropped"),
            "after_resume_ms": latency_ms(merge_histograms(p["outage_hist"] for p in parts)),
        }
    return {
        "options": {"rooms": opts.rooms, "users": opts.users, "rate": opts.rate,
                    "duration": opts.duration, "loss_pct": opts.loss_pct,
                    "recovery": opts.recovery, "framing": (
                        Framing.OCM1R if opts.recovery else Framing.OCM1).value,
                    "outage_s": opts.outage_s},
        "procs": procs,
        "result": {
            "sent": total("sent"),
            "expected_deliveries": expected,
            "delivered": delivered,
            "delivered_pct": 100.0 * delivered / expected if expected else None,
            "duplicates": total("duplicates"),
            "out_of_order": total("out_of_order"),
            "unrecovered_markers": total("gaps"),
            "failed_sends": total("failed"),
            "unsettled_at_end": {"pending_sends": total("pending_at_end"),
                                 "holes": total("holes_at_end")},
            "latency_first_send_to_delivery_ms": latency_ms(
                merge_histograms(p["hist"] for p in parts)),
            "dropped_by_loadgen": {"out": total("dropped_out"), "in": total("dropped_in")},
            "resent_copies": total("resent"),
            "receive_path": sorted({p["path"] for p in parts}),
            "deliveries_counted_in_c": total("fast_delivered"),
            "stray": total("stray"),
            "socket_errors": total("send_errors") + total("recv_errors"),
            "drain_s": round(max(p["drain_s"] for p in parts), 3),
            "outage": outage,
            "loadgen_cpu_pct": round(100.0 * sum(p["cpu_s"] for p in parts) / sending_s, 1),
            "loadgen_cpu_wait_pct": round(100.0 * sum(p["wait_s"] for p in parts) / sending_s,
                                          1),
            "loadgen_cpu_us_per_delivery": round(
                1e6 * sum(p["cpu_s"] for p in parts) / total("delivered_sending"), 2)
            if total("delivered_sending") else None,
            "server_cpu_s": None if server_cpu_s is None else round(server_cpu_s, 3),
            "server_cpu_pct": None if server_cpu_s is None else round(
                100.0 * server_cpu_s / sending_s, 1),
        },
    }


def _new_loop_run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _child_main(conn: Connection, opts: LossOptions) -> None:
    """One loadgen process: join, say ``ready``, start when told, send the raw figures."""
    async def gate() -> float:
        conn.send("ready")
        start: float = await asyncio.to_thread(conn.recv)
        return start

    try:
        conn.send(_new_loop_run(_run(opts, gate)))
    except BaseException as exc:  # the parent reports it
        conn.send(f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _run_procs(opts: LossOptions, procs: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    children = []
    for index, (lo, count) in enumerate(room_slices(opts.rooms, procs)):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_main, args=(
            child, replace(opts, room_lo=lo, room_count=count, server_pid=None,
                           proc=index)), daemon=True)
        proc.start()
        child.close()
        children.append((proc, parent))
    try:
        for _, conn in children:
            if not conn.poll(JOIN_TIMEOUT_S):
                raise OSError("a loadgen process did not finish joining in time")
            ready = conn.recv()
            if ready != "ready":
                raise OSError(f"a loadgen process failed: {ready}")
        start = time.monotonic() + START_DELAY_S  # one clock for every process (Linux)
        for _, conn in children:
            conn.send(start)
        time.sleep(START_DELAY_S)
        cpu0 = tree_cpu_seconds(opts.server_pid) if opts.server_pid else None
        time.sleep(opts.duration)
        cpu1 = tree_cpu_seconds(opts.server_pid) if opts.server_pid else None
        parts = []
        for _, conn in children:
            if not conn.poll(opts.drain + RESULT_EXTRA_S):
                raise OSError("a loadgen process did not report in time")
            part = conn.recv()
            if not isinstance(part, dict):
                raise OSError(f"a loadgen process failed: {part}")
            parts.append(part)
    finally:
        for proc, conn in children:
            conn.close()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return _report(opts, parts, procs, server_cpu)


def run_lossy(opts: LossOptions) -> dict[str, Any]:
    """Join, run, drain, leave; the report (``options`` and ``result``). With ``procs``
    above 1 the rooms are split among that many ``spawn`` processes, started together."""
    procs = max(1, min(opts.procs, opts.rooms))
    if procs > 1:
        return _run_procs(opts, procs)
    part = _new_loop_run(_run(opts))
    return _report(opts, [part], 1, part["server_cpu_s"])


def summary_lines(report: dict[str, Any]) -> list[str]:
    r = report["result"]
    lat = r["latency_first_send_to_delivery_ms"]
    pct = r["delivered_pct"]
    lines = [
        f"framing {report['options']['framing']}, loss {report['options']['loss_pct']:g} % "
        f"each way (dropped {r['dropped_by_loadgen']['out']} out, "
        f"{r['dropped_by_loadgen']['in']} in), {report['procs']} loadgen process(es), "
        f"receive path {'/'.join(r['receive_path'])} ({r['deliveries_counted_in_c']} "
        "deliveries counted in C)",
        f"delivered {r['delivered']} of {r['expected_deliveries']} "
        f"({'n/a' if pct is None else f'{pct:.3f}'} %), duplicates {r['duplicates']}, "
        f"out of order {r['out_of_order']}, unrecovered {r['unrecovered_markers']}, "
        f"failed sends {r['failed_sends']}; when the drain ended: "
        f"{r['unsettled_at_end']['pending_sends']} sends unacknowledged, "
        f"{r['unsettled_at_end']['holes']} holes",
        f"first send to delivery: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
        f"max {lat.get('max')} ms; resent copies {r['resent_copies']}",
    ]
    outage = r["outage"]
    if outage is not None:
        back = outage["came_back_pct"]
        after = outage["after_resume_ms"]
        lines.append(
            f"outage of {outage['seconds']:g} s for {outage['members']} members: "
            f"{outage['came_back']} of {outage['deliveries_sent_while_out']} deliveries sent "
            f"meanwhile came back ({'n/a' if back is None else f'{back:.3f}'} %), "
            f"p50 {after.get('p50')} ms / p99 {after.get('p99')} ms / max {after.get('max')} "
            "ms after it ended")
    lines.append(f"loadgen CPU {r['loadgen_cpu_pct']} % of a core, "
                 f"{r['loadgen_cpu_wait_pct']} % waiting for one (all its processes); "
                 + (f"server CPU {r['server_cpu_pct']} % of a core"
                    if r["server_cpu_pct"] is not None
                    else "server CPU not measured (--server-pid)"))
    return lines


def cannot_run(server: str, accounting: str) -> str | None:
    """Why ``--loss`` cannot run against ``server`` with ``--accounting accounting``
    (``None``: it can). It needs a shared socket (a loopback server, recvmmsg), and for
    ``c`` the compiled ``loadgen._reliable``."""
    try:
        resolve_mode("shared", server)
    except ValueError as exc:
        return str(exc)
    if accounting == "c":
        try:
            lossyfast.extension()
        except Unavailable as exc:
            return f"--accounting c: {exc}"
    return None
