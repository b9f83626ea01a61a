"""``ocm-loadgen --loss PCT``: reliable delivery (``ocm1r``) under datagram loss.

One process, asyncio on uvloop, one UDP socket per member on 127.0.0.1 (or this host's
address towards the server), every member a ``client.reliable.ReliableChat``: the code
``ocm-chat`` runs. Loss is made here, in the loadgen, each way: a datagram a member would
send is dropped with probability PCT/100 before ``sendto``, and one it receives is dropped
with the same probability before the client code sees it. The server is unchanged.

Each member sends ``rate`` messages a second for ``duration`` seconds (text: sender index,
its message number, the first send time), then the run drains until every message is
acknowledged and every receiver has no hole left (or ``drain`` seconds). Counted at each
receiver: deliveries (unique), duplicates (a message shown twice: must be 0), out of order
(a sender's message after a later one of the same sender: must be 0), "could not be
recovered" markers, and the latency from the sender's first copy to the delivery (the
recovery latency when a copy was lost). ``--no-recovery`` asks for ``ocm1`` instead: the
same traffic without numbering, acknowledgement or resends (what loss costs without it).
The JSON report has the shape of the others: ``command``, ``options``, ``result``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Final

from client.reliable import Delivered, Gap, ReliableChat
from client.session import TcrpTarget
from client.session_aio import join_room_async
from loadgen.meter import latency_ms, new_histogram
from loadgen.procstat import tree_cpu_seconds
from wire import chat
from wire.chat import encode_chat
from wire.codes import Framing, Operation
from wire.tcrp import Request, RequestBody

TICK_S: Final = 0.005
"""How often members' timers (NACKs, resends, sends due) are looked at."""
KEEPALIVE_S: Final = 2.0


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


class _Member(asyncio.DatagramProtocol):
    def __init__(self, run: _Run, index: int, room: int) -> None:
        self.run = run
        self.index = index
        self.room = room
        self.name = f"u{index}"
        self.chat = ReliableChat() if run.opts.recovery else None
        self.transport: asyncio.DatagramTransport | None = None
        self.room_raw = b""
        self.token = b""
        self.sent = 0
        self.last_from: dict[int, int] = {}
        """Per sender: the highest message number shown (out-of-order check)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send_message(self, message: bytes) -> None:
        run = self.run
        if run.rng.random() < run.loss:
            run.dropped_out += 1
            return
        if self.transport is not None:
            self.transport.sendto(encode_chat(self.room_raw, self.token, message))

    def datagram_received(self, data: bytes, addr: object) -> None:
        run = self.run
        if run.rng.random() < run.loss:
            run.dropped_in += 1
            return
        now = time.monotonic()
        if self.chat is None:
            self.show(data, now)
            return
        for event in self.chat.handle_delivery(data, now):
            if isinstance(event, Delivered):
                self.show(event.body, now)
            elif isinstance(event, Gap):
                run.gaps += event.count

    def show(self, body: bytes, now: float) -> None:
        run = self.run
        try:
            item = chat.decode_framed(body)
        except Exception:  # a notice or junk: not traffic
            return
        if not isinstance(item, chat.FramedChat):
            return
        try:
            sender_s, number_s, first_s = item.message.split(" ", 2)
            sender, number, first = int(sender_s), int(number_s), float(first_s)
        except ValueError:
            return
        if sender == self.index:  # our own, resent because its ack was lost
            return
        key = (self.index, sender, number)
        if key in run.seen:
            run.duplicates += 1
            return
        run.seen.add(key)
        if number < self.last_from.get(sender, -1):
            run.out_of_order += 1
        self.last_from[sender] = max(number, self.last_from.get(sender, -1))
        if run.measuring or run.draining:
            run.delivered += 1
            run.hist.record_value(max(1, int((now - first) * 1e6)))


class _Run:
    def __init__(self, opts: LossOptions) -> None:
        self.opts = opts
        self.loss = opts.loss_pct / 100.0
        self.rng = random.Random(opts.seed)
        self.members: list[_Member] = []
        self.seen: set[tuple[int, int, int]] = set()
        self.hist = new_histogram()
        self.delivered = self.duplicates = self.out_of_order = self.gaps = 0
        self.expected = 0
        self.dropped_out = self.dropped_in = 0
        self.measuring = self.draining = False
        self.framing = Framing.OCM1R if opts.recovery else Framing.OCM1


async def _join_all(run: _Run) -> None:
    opts = run.opts
    sem = asyncio.Semaphore(32)
    loop = asyncio.get_running_loop()

    async def join(member: _Member, op: Operation) -> None:
        async with sem:
            room = f"{opts.prefix}-{member.room}"
            joined = await join_room_async(
                TcrpTarget(opts.server, opts.tcp_port),
                Request.of(op, room, RequestBody(member.name, framing=run.framing)))
        member.room_raw, member.token = joined.room_raw, joined.token
        sock = joined.udp_sock
        sock.connect(joined.server)
        await loop.create_datagram_endpoint(lambda: member, sock=sock)
        member.send_message(b"")  # binds (a lost one is retried by the keepalives)

    for r in range(opts.rooms):
        base = r * opts.users
        members = [_Member(run, base + u, r) for u in range(opts.users)]
        run.members += members
        await join(members[0], Operation.CREATE)
        await asyncio.gather(*(join(m, Operation.JOIN) for m in members[1:]))


def _tick(run: _Run, now: float) -> None:
    for member in run.members:
        chat_ = member.chat
        if chat_ is None:
            continue
        due = chat_.next_deadline()
        if due is not None and due <= now:
            messages, events = chat_.handle_timer(now)
            for message in messages:
                member.send_message(message)
            for event in events:
                if isinstance(event, Gap):
                    run.gaps += event.count


def _settled(run: _Run) -> bool:
    for member in run.members:
        chat_ = member.chat
        if chat_ is not None and (chat_.sender.pending or chat_.receiver.missing):
            return False
    return run.delivered >= run.expected


async def _run(opts: LossOptions) -> dict[str, Any]:
    run = _Run(opts)
    await _join_all(run)
    await asyncio.sleep(0.5)  # joined notices and syncs settle
    interval = 1.0 / opts.rate
    start = time.monotonic()
    cpu0 = tree_cpu_seconds(opts.server_pid) if opts.server_pid else None
    run.measuring = True
    next_send = [start + run.rng.random() * interval for _ in run.members]
    next_keepalive = start + KEEPALIVE_S
    now = start
    while now - start < opts.duration:
        for i, member in enumerate(run.members):
            if next_send[i] <= now:
                next_send[i] += interval
                text = f"{member.index} {member.sent} {now:.6f}".encode()
                member.sent += 1
                run.expected += opts.users - 1
                if member.chat is None:
                    member.send_message(text)
                else:
                    _, message = member.chat.send(text, now)
                    if message is not None:
                        member.send_message(message)
        if now >= next_keepalive:
            next_keepalive += KEEPALIVE_S
            for member in run.members:
                member.send_message(b"")
        _tick(run, now)
        await asyncio.sleep(TICK_S)
        now = time.monotonic()
    sent_end = now
    cpu1 = tree_cpu_seconds(opts.server_pid) if opts.server_pid else None
    run.measuring, run.draining = False, True
    while not _settled(run) and now - sent_end < opts.drain:
        if now >= next_keepalive:  # syncs reveal a lost last message
            next_keepalive += 0.5
            for member in run.members:
                member.send_message(b"")
        _tick(run, now)
        await asyncio.sleep(TICK_S)
        now = time.monotonic()
    for member in run.members:
        if member.transport is not None:
            member.transport.sendto(encode_chat(member.room_raw, member.token, b"/exit"))
            member.transport.close()
    latency = latency_ms(run.hist)
    delivered_pct = 100.0 * run.delivered / run.expected if run.expected else None
    resends = sum(m.chat.sender.copies - m.sent for m in run.members if m.chat is not None)
    return {
        "options": {"rooms": opts.rooms, "users": opts.users, "rate": opts.rate,
                    "duration": opts.duration, "loss_pct": opts.loss_pct,
                    "recovery": opts.recovery, "framing": run.framing.value},
        "result": {
            "sent": sum(m.sent for m in run.members),
            "expected_deliveries": run.expected,
            "delivered": run.delivered,
            "delivered_pct": delivered_pct,
            "duplicates": run.duplicates,
            "out_of_order": run.out_of_order,
            "unrecovered_markers": run.gaps,
            "latency_first_send_to_delivery_ms": latency,
            "dropped_by_loadgen": {"out": run.dropped_out, "in": run.dropped_in},
            "resent_copies": resends,
            "drain_s": round(now - sent_end, 3),
            "server_cpu_s": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3),
            "server_cpu_pct": None if cpu0 is None or cpu1 is None else round(
                100.0 * (cpu1 - cpu0) / (sent_end - start), 1),
        },
    }


def run_lossy(opts: LossOptions) -> dict[str, Any]:
    """Join, run, drain, leave; the report (``options`` and ``result``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(opts))
    return uvloop.run(_run(opts))


def summary_lines(report: dict[str, Any]) -> list[str]:
    r = report["result"]
    lat = r["latency_first_send_to_delivery_ms"]
    pct = r["delivered_pct"]
    return [
        f"framing {report['options']['framing']}, loss {report['options']['loss_pct']:g} % "
        f"each way (dropped {r['dropped_by_loadgen']['out']} out, "
        f"{r['dropped_by_loadgen']['in']} in)",
        f"delivered {r['delivered']} of {r['expected_deliveries']} "
        f"({'n/a' if pct is None else f'{pct:.3f}'} %), duplicates {r['duplicates']}, "
        f"out of order {r['out_of_order']}, unrecovered {r['unrecovered_markers']}",
        f"first send to delivery: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, "
        f"max {lat.get('max')} ms; resent copies {r['resent_copies']}",
        f"server CPU {r['server_cpu_pct']} % of a core" if r["server_cpu_pct"] is not None
        else "server CPU not measured (--server-pid)",
    ]

