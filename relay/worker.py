"""Relay worker process: a thin uvloop adapter around ``RelayCore`` (and ``GlobalChat``).

Entry point ``main(index, settings, udp_sock, stage1_sock, conn, inbox, peers)`` is run by
control's supervisor in a ``spawn`` process. The worker:

* reads its UDP socket from a raw non-blocking ``recvfrom`` loop on ``loop.add_reader``
  (DESIGN.md: 72 % of C against 55 % for ``DatagramProtocol``), hands each datagram to
  the core and sends the returned fan-out with one ``sendto`` per recipient;
* reads commands from its pipe (relay/ipc.py) and writes events back;
* does not read UDP until control has re-seeded it and sent ``start`` (so a restarted
  worker never drops a datagram of a room it is about to own: they wait in the socket
  buffer, which control keeps open across restarts);
* runs under ``SCHED_FIFO`` when control was given ``--realtime-priority`` (relay/sched.py);
* ignores SIGINT and SIGTERM: control decides when it stops (``shutdown`` over the pipe,
  or pipe EOF if control died) so that members always get their ``closed`` notice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar, cast

from relay import ipc, mmsg, sched
from relay.core import Addr, GlobalChat, RelayCore
from relay.globalchat import GlobalChatRelay
from relay.steering import tag_worker
from wire.codes import Framing

log = logging.getLogger("ocm.relay")
T = TypeVar("T")

RECV_BUFFER_BYTES: Final = 4097
"""One byte over the limit: a longer datagram arrives truncated to 4097 and is dropped."""
BATCH_DATAGRAMS: Final = 512
"""Datagrams per reader callback before yielding to the pipe and timers."""
STATS_INTERVAL_S: Final = 1.0
WORKER_BOOT_ERROR: Final = 3
"""Exit code of a worker that cannot start: control halts instead of crash-looping."""
FORWARD_HEADER: Final = struct.Struct("!4sH")
"""Forwarded datagram over the inbox socketpair: source IPv4 (4) + port (2) + datagram."""


class Worker:
    def __init__(self, index: int, settings: dict[str, Any], udp_sock: socket.socket,
                 stage1_sock: socket.socket | None, inbox: socket.socket | None,
                 peers: list[socket.socket] | None) -> None:
        self.index = index
        self.settings = settings
        self.sock = udp_sock
        self.stage1_sock = stage1_sock
        self.inbox = inbox
        self.peers = peers or []
        self.forwarding = inbox is not None  # steering=forward: check every tag
        self.batched = mmsg.available() and bool(settings.get(
            "sendmmsg", os.environ.get("OCM_RELAY_SENDMMSG", "1") != "0"))
        """Relay with one sendmmsg per room and format (relay/mmsg.py); else sendto."""
        self.fan_out = self._relay_batched if self.batched else self._relay
        self.fd = udp_sock.fileno()
        self.core = RelayCore(settings["inactivity_timeout"], settings["max_send_failures"],
                              settings.get("chat_rate", 10.0), settings.get("chat_burst", 20))
        self.stage1 = GlobalChat(settings["inactivity_timeout"], settings["max_send_failures"],
                                 settings.get("max_stage1_clients", 10_000))
        self.stage1_relay: GlobalChatRelay | None = None
        self.forwarded = 0
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------
    async def run(self, conn_sock: socket.socket) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        # No IP_RECVERR: a queued ICMP error raises EPOLLERR, and libuv stops a poll
        # handle on POLLERR, which would silently kill this reader. Without it Linux does
        # not report ICMP errors on unconnected UDP sockets, so only local send errors
        # (ENOBUFS, EAGAIN, EPERM, EHOSTUNREACH...) count as send failures.
        for sock in (self.sock, self.stage1_sock):
            if sock is not None:
                sock.setblocking(False)
        await loop.create_unix_connection(lambda: _PipeProtocol(self), sock=conn_sock)
        loop.call_later(STATS_INTERVAL_S, self._tick)
        await self.done

    def start(self) -> None:
        """Seeding is done: start reading datagrams."""
        if self._started:
            return
        self._started = True
        assert self.loop is not None
        reader = self._on_udp_forwarding if self.forwarding else self._on_udp
        self.loop.add_reader(self.sock.fileno(), reader)
        if self.stage1_sock is not None:  # budgeted fan-out: relay/globalchat.py
            self.stage1_relay = GlobalChatRelay(self.stage1_sock, self.stage1, self.loop)
            self.stage1_relay.start()
        if self.inbox is not None:
            self.inbox.setblocking(False)
            self.loop.add_reader(self.inbox.fileno(), self._on_inbox)

    def stop(self, notify: bool) -> None:
        if notify:
            self.core.shutdown()
            self._flush()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    # --- the hot path -------------------------------------------------------------------
    @staticmethod
    def _drain(recv: Callable[[int], T], what: str) -> Iterator[T]:
        """What ``recv(RECV_BUFFER_BYTES)`` returns, until the socket is empty or
        ``BATCH_DATAGRAMS`` were read (then the loop serves the pipe and timers before
        this reader is called again). An unexpected error is logged and ends the batch.
        For the readers off the main path (forwarding, the inbox); see ``_on_udp``."""
        for _ in range(BATCH_DATAGRAMS):
            try:
                yield recv(RECV_BUFFER_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:  # not expected on an unconnected socket: log, go on
                log.warning("%s: %s", what, exc)
                return

    def _on_udp(self) -> None:
        # The relay's own reader keeps the loop of _drain inline: through the generator,
        # the headline's relay p50 went from 0.15 to 0.25 ms (docs/benchmarks.md).
        recvfrom = self.sock.recvfrom
        handle = self.core.handle_datagram
        relay = self.fan_out
        core = self.core
        now = time.monotonic()
        for _ in range(BATCH_DATAGRAMS):
            try:
                data, addr = recvfrom(RECV_BUFFER_BYTES)
            except BlockingIOError:
                break
            except OSError as exc:  # not expected on an unconnected socket: log, go on
                log.warning("recvfrom: %s", exc)
                break
            out = handle(data, addr, now)
            if core.outbox:  # notices first: "joined" precedes the member's first chat
                self._flush()
            if out is not None:
                relay(out, now)
        if core.events:
            self._flush()

    def _relay_batched(self, out: tuple[Any, ...], now: float) -> None:
        """One ``sendmmsg`` per delivery format instead of a ``sendto`` per member."""
        plain, plain_addrs, framed, framed_addrs, src, room = out
        cache = room.send_cache
        if cache is None:
            cache = room.send_cache = (_Batch(plain_addrs), _Batch(framed_addrs))
        fd = self.fd
        for payload, batch in ((plain, cache[0]), (framed, cache[1])):
            if payload is None:
                continue
            k = batch.index.get(src)
            try:
                failed = (batch.sender.send_all(fd, payload) if k is None
                          else batch.sender.send_except(fd, payload, k))
            except OSError as exc:  # the socket itself failed: count it on everyone
                log.warning("sendmmsg: %s", exc)
                failed = tuple(i for i in range(len(batch.addrs)) if i != k)
            for i in failed:
                self._send_failed(None, batch.addrs[i], now)
            failing = self.core.failing
            if failing:
                for a in batch.addrs:
                    if a not in failed:
                        failing.pop(a, None)

    def _relay(self, out: tuple[Any, ...], now: float) -> None:
        """Fallback fan-out: one ``sendto`` per recipient, skipping the sender."""
        plain, plain_addrs, framed, framed_addrs, src, _ = out
        sendto = self.sock.sendto
        failing = self.core.failing
        for payload, addrs in ((plain, plain_addrs), (framed, framed_addrs)):
            if payload is None:
                continue
            for a in addrs:
                if a is not src:
                    try:
                        sendto(payload, a)
                    except OSError as exc:
                        self._send_failed(exc, a, now)
                    else:
                        if failing:
                            failing.pop(a, None)

    def _send_failed(self, exc: OSError | None, addr: Addr, now: float) -> None:
        """A send raised (a local error: the datagram was not sent). Cold path."""
        log.debug("send to %s failed: %s", addr, exc)
        self.core.handle_send_failure(addr, now)

    def _on_udp_forwarding(self) -> None:
        """Fallback when the steering program is not attached: datagrams land on any
        worker; those whose token names another worker are forwarded to it."""
        index = self.index
        n_peers = len(self.peers)
        now = time.monotonic()
        for data, addr in self._drain(self.sock.recvfrom, "recvfrom"):
            if len(data) > 2 and data[0] + 2 < len(data):
                owner = tag_worker(data[data[0] + 2])
                if owner is not None and owner != index and owner < n_peers:
                    self._forward(owner, data, addr)
                    continue
            self._handle_one(data, addr, now)
        self._flush()

    def _forward(self, owner: int, data: bytes, addr: Addr) -> None:
        self.forwarded += 1
        try:
            header = FORWARD_HEADER.pack(socket.inet_aton(addr[0]), addr[1])
            self.peers[owner].send(header + data)
        except OSError:
            self.core.drops["malformed"] += 1

    def _on_inbox(self) -> None:
        assert self.inbox is not None
        now = time.monotonic()
        inbox_recv = self.inbox.recv

        def recv(size: int) -> bytes:
            return inbox_recv(size + FORWARD_HEADER.size)

        for packet in self._drain(recv, "forwarded recv"):
            ip, port = FORWARD_HEADER.unpack_from(packet)
            self._handle_one(packet[FORWARD_HEADER.size:], (socket.inet_ntoa(ip), port), now)
        self._flush()

    def _handle_one(self, data: bytes, addr: Addr, now: float) -> None:
        out = self.core.handle_datagram(data, addr, now)
        if self.core.outbox:
            self._flush()
        if out is not None:
            self.fan_out(out, now)

    # --- timers and control ---------------------------------------------------------------
    def _tick(self) -> None:
        assert self.loop is not None
        now = time.monotonic()
        self.stage1.handle_timer(now)
        self._on_timer()
        self._send({"t": "stats", "worker": self.index, "pid": os.getpid(),
                    "forwarded": self.forwarded, "sendmmsg": self.batched,
                    "stage1": self.stage1.statistics(),
                    **self.core.statistics()})
        self.loop.call_later(STATS_INTERVAL_S, self._tick)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = float("inf")
        self.core.handle_timer(time.monotonic())
        self._flush()
        self._arm_timer()

    def _arm_timer(self) -> None:
        due = self.core.next_deadline()
        if due is None or due >= self._timer_due:
            return
        assert self.loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.loop.call_later(max(0.0, due - time.monotonic()), self._on_timer)

    def _flush(self) -> None:
        """Write pending events to control, then send pending notices. Events go first so
        that control's registry has caught up (e.g. a freed username) before a client can
        react to the notice."""
        core = self.core
        if core.events:
            events, core.events = core.events, []
            for event in events:
                self._send(event)
        if core.outbox:
            outbox, core.outbox = core.outbox, []
            sendto = self.sock.sendto
            now = time.monotonic()
            for payload, addr in outbox:
                try:
                    sendto(payload, addr)
                except OSError as exc:
                    self._send_failed(exc, addr, now)

    def _send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ipc.encode(message))

    def handle_command(self, msg: dict[str, Any]) -> None:
        kind = msg["t"]
        now = time.monotonic()
        if kind == "member":
            addr = msg.get("addr")
            ok = self.core.add_member(
                msg["room"], msg["token"].encode(), msg["user"], msg["ip"],
                Framing(msg["framing"]), msg["host"], now,
                (addr[0], addr[1]) if addr else None, msg.get("announced", False),
                bool(msg.get("proven", False)))
            self._send({"t": "ack", "id": msg["id"], "ok": ok})
            self._flush()
            self._arm_timer()
        elif kind == "register":
            self.core.register(msg["token"].encode(), msg["port"], now)
            self._flush()
        elif kind == "ping":
            self._send({"t": "pong", "id": msg["id"]})
        elif kind == "start":
            self.start()
        elif kind == "config":
            timeout = msg["inactivity_timeout"]
            self.core.configure(timeout, msg["max_send_failures"], now,
                                msg.get("chat_rate"), msg.get("chat_burst"))
            logging.getLogger().setLevel(str(msg.get("log_level", "info")).upper())
            self.stage1.inactivity_timeout = timeout
            self.stage1.max_send_failures = msg["max_send_failures"]
            self._timer_due = float("inf")
            self._arm_timer()
        elif kind == "shutdown":
            self.core.shutdown()
            self._flush()
            self._send({"t": "bye"})
            self.stop(notify=False)
        else:
            log.warning("worker %d: unknown command %r", self.index, kind)


class _Batch:
    """A room's prebuilt ``sendmmsg`` batch for one delivery format."""

    __slots__ = ("addrs", "index", "sender")

    def __init__(self, addrs: list[Addr]) -> None:
        self.addrs = addrs
        self.index = {a: i for i, a in enumerate(addrs)}
        self.sender = mmsg.SendBatch(addrs)


class _PipeProtocol(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.decoder = ipc.FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.worker.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for message in self.decoder.feed(data):
            self.worker.handle_command(message)

    def connection_lost(self, exc: Exception | None) -> None:
        # Control is gone: its registry (and so every token) with it. Tell members.
        self.worker.transport = None
        self.worker.stop(notify=True)


def main(index: int, settings: dict[str, Any], udp_sock: socket.socket,
         stage1_sock: socket.socket | None, conn: Any, inbox: socket.socket | None = None,
         peers: list[socket.socket] | None = None) -> None:
    """Process entry point (multiprocessing spawn target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from control.logs import setup_logging  # stdlib + orjson only: one log format for all

    setup_logging(settings.get("log_level", "info"), settings.get("log_format", "text"),
                  f"worker-{index}")
    try:
        import uvloop

        sched.apply(settings.get("realtime_priority", 0))
        conn_sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        worker = Worker(index, settings, udp_sock, stage1_sock, inbox, peers)
    except Exception:
        log.exception("worker %d failed to boot", index)
        sys.exit(WORKER_BOOT_ERROR)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(worker.run(conn_sock))
    sys.exit(0)
