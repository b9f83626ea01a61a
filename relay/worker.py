"""Relay worker process: a thin uvloop adapter around ``RelayCore`` (and ``GlobalChat``).

Entry point ``main(index, settings, udp_sock, stage1_sock, conn, inbox, peers)`` is run by
control's supervisor in a ``spawn`` process, ``settings`` being the typed
``relay.ipc.WorkerSettings``. The worker:

* reads its UDP socket on ``loop.add_reader`` with one of two hot loops (relay/hot.py
  chooses, and the worker logs which): the compiled one (``relay._hot``: ``recvmmsg``
  batches, the ordinary chat relayed in C, everything else handed to the Python path in
  order), or the pure-Python one: a raw non-blocking ``recvfrom`` loop (not
  ``DatagramProtocol``) that hands each datagram to the core and sends the returned
  ``Fanout`` with one ``sendmmsg`` per room and delivery format (runtime/mmsg.py; batches
  cached here, per room, until ``Room.generation`` changes), or with one ``sendto`` per
  recipient when ``settings.sendmmsg`` is off or unavailable;
* counts a failed send against the recipient (``RelayCore.handle_send_failure``) and ends
  the recipient's failure streak at a send that went through
  (``RelayCore.handle_send_success``), on both paths;
* reads typed commands from its pipe (relay/ipc.py) and writes typed events back;
* does not read UDP until control has re-seeded it and sent ``start`` (so a restarted
  worker never drops a datagram of a room it is about to own: they wait in the socket
  buffer, which control keeps open across restarts);
* runs under ``SCHED_FIFO`` when control was given ``--realtime-priority`` (runtime/sched.py);
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
from multiprocessing.connection import Connection
from types import ModuleType
from typing import Final, TypeVar, cast

from relay import hot, ipc
from relay.core import CHAT_KIND, Addr, Fanout, GlobalChat, Member, RelayCore, Reliable, Room
from relay.globalchat import GlobalChatRelay
from relay.history import History, HistoryBudget
from relay.steering import tag_worker
from runtime import logs, mmsg, sched
from wire.limits import (
    ACK_HOLD_TICK_S,
    EXIT_MATCH_MAX_BYTES,
    HISTORY_ENTRY_OVERHEAD_BYTES,
    MAX_DATAGRAM_BYTES,
    MAX_DELIVERY_BYTES,
)

log = logging.getLogger("ocm.relay")
T = TypeVar("T")

RECV_BUFFER_BYTES: Final = MAX_DATAGRAM_BYTES + 1
"""One byte over the limit: a longer datagram arrives truncated to 4097 and is dropped."""
BATCH_DATAGRAMS: Final = 512
"""Datagrams per reader callback before yielding to the pipe and timers."""
STATS_INTERVAL_S: Final = 1.0
WORKER_BOOT_ERROR: Final = 3
"""Exit code of a worker that cannot start: control halts instead of crash-looping."""
FORWARD_HEADER: Final = struct.Struct("!4sH")
"""Forwarded datagram over the inbox socketpair: source IPv4 (4) + port (2) + datagram."""


def _random_epoch() -> int:
    """A room history's epoch: 32 random bits, never 0."""
    return int.from_bytes(os.urandom(4), "big") or 1


class Worker:
    def __init__(self, index: int, settings: ipc.WorkerSettings, udp_sock: socket.socket,
                 stage1_sock: socket.socket | None, inbox: socket.socket | None,
                 peers: list[socket.socket] | None) -> None:
        self.index = index
        self.settings = settings
        self.sock = udp_sock
        self.stage1_sock = stage1_sock
        self.inbox = inbox
        self.peers = peers or []
        self.forwarding = inbox is not None  # steering=forward: check every tag
        self.batched = settings.sendmmsg and mmsg.available()
        """Relay with one sendmmsg per room and format (runtime/mmsg.py); else sendto."""
        self.fan_out = self._relay_batched if self.batched else self._relay
        self.fd = udp_sock.fileno()
        self.core = RelayCore(settings.inactivity_timeout, settings.max_send_failures,
                              settings.chat_rate, settings.chat_burst,
                              HistoryBudget(settings.history_messages, settings.history_bytes,
                                            settings.history_age,
                                            settings.history_worker_bytes),
                              _random_epoch)
        self.stage1 = GlobalChat(settings.inactivity_timeout, settings.max_send_failures,
                                 settings.max_stage1_clients)
        self.stage1_relay: GlobalChatRelay | None = None
        self.core.batch_numbered = True  # numbered chat goes out with the fan-out
        self._batches: dict[str, _RoomBatches] = {}
        """The send cache of ``_relay_batched``, by room name; a closed room's entry goes
        when its ``Closed`` event is flushed."""
        self.hot_module, self.hot_path = hot.choose(settings.hot_path)
        """The compiled hot loop's module (None: pure Python), and a sentence saying which
        runs and why. Raises ``hot.Unavailable`` for ``compiled`` where it cannot be had."""
        self.hot: hot.Hot | None = None
        self._routes: dict[str, hot.Route] = {}
        """The compiled loop's send cache, by room name (as ``_batches``)."""
        self.forwarded = 0
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._started = False
        self.clock: Callable[[], float] = time.monotonic
        """The hot loops' time source (tests pin it to compare both loops exactly)."""

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
        loop.call_later(ACK_HOLD_TICK_S, self._release_held)
        await self.done

    def start(self) -> None:
        """Seeding is done: start reading datagrams."""
        if self._started:
            return
        self._started = True
        assert self.loop is not None
        if self.hot_module is not None and not self.forwarding:
            self.hot = self.compiled_loop(self.hot_module)
        self._install_reader()
        if self.stage1_sock is not None:  # budgeted fan-out: relay/globalchat.py
            self.stage1_relay = GlobalChatRelay(self.stage1_sock, self.stage1, self.loop)
            self.stage1_relay.start()
        if self.inbox is not None:
            self.inbox.setblocking(False)
            self.loop.add_reader(self.inbox.fileno(), self._on_inbox)

    def compiled_loop(self, module: ModuleType) -> hot.Hot:
        """The compiled hot loop on this worker's socket, core and caches."""
        compiled: hot.Hot = module.Hot(
            fd=self.fd, core=self.core, routes=self._routes, slow=self._handle_one,
            warn=self._hot_warn, clock=None if self.clock is time.monotonic else self.clock,
            after=self._flush, member_type=Member, room_type=Room, history_type=History,
            reliable_type=Reliable, budget_type=HistoryBudget, chat_kind=CHAT_KIND,
            max_datagram=MAX_DATAGRAM_BYTES, max_delivery=MAX_DELIVERY_BYTES,
            exit_max=EXIT_MATCH_MAX_BYTES, max_batch=BATCH_DATAGRAMS,
            entry_overhead=HISTORY_ENTRY_OVERHEAD_BYTES)
        return compiled

    def _install_reader(self) -> None:
        """(Re)attach the UDP reader: forwarding, compiled (while fan-out may be batched)
        or pure Python."""
        assert self.loop is not None
        reader: Callable[[], None]
        if self.forwarding:
            reader, why = self._on_udp_forwarding, "pure Python (steering: forward)"
        elif self.hot is not None and self.batched:
            reader, why = self.hot.on_readable, self.hot_path
        elif self.hot_module is not None:
            reader, why = self._on_udp, "pure Python (relay_sendmmsg is off)"
        else:
            reader, why = self._on_udp, self.hot_path
        self.loop.remove_reader(self.fd)
        self.loop.add_reader(self.fd, reader)
        log.info("worker %d: hot loop %s", self.index, why)

    @property
    def hot_path_running(self) -> str:
        """``compiled`` or ``python``: the loop that reads the chat socket now."""
        return hot.COMPILED if self.hot is not None and self.batched and not self.forwarding \
            else hot.PYTHON

    def stop(self, notify: bool) -> None:
        if self.hot is not None:
            c = self.hot.counters()
            log.info("worker %d: the compiled loop relayed %d datagrams itself and handed %d "
                     "to Python, in %d reads", self.index, c["fast"], c["slow"], c["calls"])
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
        # the headline's relay latency was worse (CHANGELOG.md, Relay hot path).
        recvfrom = self.sock.recvfrom
        handle = self.core.handle_datagram
        relay = self.fan_out
        core = self.core
        now = self.clock()
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
                self._flush_notices()
            if out is not None:
                relay(out, now)
        if core.events:
            self._flush()

    @staticmethod
    def _hot_warn(what: str, err: int) -> None:
        log.warning("%s: %s", what, os.strerror(err))

    def _relay_batched(self, out: Fanout, now: float) -> None:
        """One ``sendmmsg`` per delivery format instead of a ``sendto`` per member."""
        plain, _, framed, _, src, room = out
        cached = self._batches.get(room.name)
        if cached is None or cached.generation != room.generation:
            cached = self._batches[room.name] = _RoomBatches(room)
        fd = self.fd
        sides: tuple[tuple[bytes | None, _Batch], ...] = (
            (plain, cached.plain), (framed, cached.framed))
        if room.history is not None:  # a numbered room: its ocm1r members' delivery too
            numbered, self.core.numbered = self.core.numbered, None
            if numbered is not None and self.core.held and any(
                    m.rel is not None and m.rel.held is not None for m in room.reliable):
                carrying = numbered  # one by one, after the other sides (as sides go)
                numbered = None
            else:
                carrying = None
            sides += ((numbered, cached.numbered),)
        else:
            carrying = None
        for payload, batch in sides:
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
            if self.core.failing:  # a streak ends at a send that went through
                index = batch.index
                for a in list(self.core.failing):
                    j = index.get(a)
                    if j is not None and j != k and j not in failed:
                        self.core.handle_send_success(a)
        if carrying is not None:
            self._send_numbered(room, carrying, src, now)

    def _relay(self, out: Fanout, now: float) -> None:
        """Fallback fan-out: one ``sendto`` per recipient, skipping the sender."""
        plain, plain_addrs, framed, framed_addrs, src, room = out
        sendto = self.sock.sendto
        core = self.core
        sides: tuple[tuple[bytes | None, list[Addr]], ...] = (
            (plain, plain_addrs), (framed, framed_addrs))
        numbered = None
        if room.history is not None:
            numbered, self.core.numbered = self.core.numbered, None
        for payload, addrs in sides:
            if payload is None:
                continue
            skip: Addr | None = src  # the sender's address, once per side (as sendmmsg)
            for a in addrs:
                if skip is not None and a == skip:
                    skip = None
                    continue
                try:
                    sendto(payload, a)
                except OSError as exc:
                    self._send_failed(exc, a, now)
                else:
                    if core.failing:  # the streak ends at a send that went through
                        core.handle_send_success(a)
        if numbered is not None:
            self._send_numbered(room, numbered, src, now)

    def _send_numbered(self, room: Room, datagram: bytes, src: Addr, now: float) -> None:
        """A numbered chat to the room's ``ocm1r`` members but the sender, one ``sendto``
        each, with each one's held acknowledgement in front (``RelayCore.carry``, as the
        compiled loop does): the fallback, and the batched path's while any is held."""
        sendto = self.sock.sendto
        core = self.core
        skip: Addr | None = src  # the sender's address, once (as sendmmsg)
        for m, a in zip(room.reliable, room.reliable_addrs, strict=True):  # as at the start
            if skip is not None and a == skip:
                skip = None
                continue
            payloads = core.carry(m, datagram)
            for payload in payloads:
                try:
                    sendto(payload, a)
                except OSError as exc:
                    self._send_failed(exc, a, now)
                else:  # the streak ends at a delivery that went through (not an ACK)
                    if core.failing and payload is payloads[-1]:
                        core.handle_send_success(a)

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
            self._flush_notices()
        if out is not None:
            self.fan_out(out, now)

    # --- timers and control ---------------------------------------------------------------
    def _tick(self) -> None:
        assert self.loop is not None
        now = time.monotonic()
        self.stage1.handle_timer(now)
        self._on_timer()
        self._send(self.statistics())
        self.loop.call_later(STATS_INTERVAL_S, self._tick)

    def _release_held(self) -> None:
        """Every ``ACK_HOLD_TICK_S``: send alone the acknowledgements held too long."""
        assert self.loop is not None
        if self.core.held:
            self.core.release_held(self.clock())
            self._flush()
        self.loop.call_later(ACK_HOLD_TICK_S, self._release_held)

    def statistics(self) -> ipc.Stats:
        core = self.core
        return ipc.Stats(worker=self.index, pid=os.getpid(), sendmmsg=self.batched,
                         hot_path=self.hot_path_running,
                         forwarded=self.forwarded, rooms=len(core.rooms),
                         members=len(core.tokens), send_failures=core.send_failures,
                         chat=core.statistics(), stage1_clients=len(self.stage1.clients),
                         stage1=self.stage1.statistics())

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
                if isinstance(event, ipc.Closed):
                    self._batches.pop(event.room, None)
                    self._routes.pop(event.room, None)
            self._send(*events)
        self._send_outbox()

    def _flush_notices(self) -> None:
        """The notices one datagram left, before its fan-out. The events go first (see
        ``_flush``), unless every one is a ``Bound``: an address learned frees nothing a
        client could race for (a name, a room), so those wait for the read's end, one
        pipe write for all of them: control is not woken once per member's first
        datagram (an ``ocm1r`` member's is answered with a SYNC at once)."""
        if all(type(event) is ipc.Bound for event in self.core.events):
            self._send_outbox()
        else:
            self._flush()

    def _send_outbox(self) -> None:
        core = self.core
        if core.outbox:
            outbox, core.outbox = core.outbox, []
            sendto = self.sock.sendto
            now = time.monotonic()
            for payload, addr in outbox:
                try:
                    sendto(payload, addr)
                except OSError as exc:
                    self._send_failed(exc, addr, now)

    def _send(self, *messages: ipc.Event) -> None:
        """Write ``messages`` to control in one pipe write."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(map(ipc.encode, messages)))

    def handle_command(self, msg: ipc.Message) -> None:
        now = time.monotonic()
        if isinstance(msg, ipc.AddMember):
            ok = self.core.add_member(msg.room, msg.token, msg.user, msg.ip, msg.framing,
                                      msg.host, now, msg.addr, msg.announced, msg.proven,
                                      e2e=msg.e2e, keys=msg.keys, mac_key=msg.datagram_key,
                                      placement=msg.placement)
            self._send(ipc.Ack(msg.id, ok))
            self._flush()
            self._arm_timer()
        elif isinstance(msg, ipc.Register):
            self.core.register(msg.token, msg.port, now)
            self._flush()
        elif isinstance(msg, ipc.CloseRoom):
            self.core.close_room(msg.room, msg.reason)
            self._flush()
        elif isinstance(msg, ipc.Rebind):
            if msg.new_token is not None:  # a resume: a new token, and its history
                ok = self.core.resume(msg.token, msg.new_token, msg.ip, now, msg.datagram_key)
                self._flush()
                self._send(ipc.Ack(msg.id, ok))
            else:
                self._send(ipc.Ack(msg.id, self.core.rebind_ip(msg.token, msg.ip, msg.seq)))
        elif isinstance(msg, ipc.Ping):
            self._send(ipc.Pong(msg.id))
        elif isinstance(msg, ipc.Start):
            self.start()
        elif isinstance(msg, ipc.Configure):
            self.configure(msg.settings, now)
        elif isinstance(msg, ipc.Shutdown):
            self.core.shutdown()
            self._flush()
            self._send(ipc.Bye())
            self.stop(notify=False)
        else:  # an event: control never sends one
            log.warning("worker %d: unexpected message %r", self.index, msg)

    def configure(self, settings: ipc.WorkerSettings, now: float) -> None:
        """Apply live-reloaded settings (SIGHUP). Those that need a restart (the log
        format, the scheduling, the Stage 1 bound) stay as the worker started."""
        self.settings = settings
        batched = settings.sendmmsg and mmsg.available()
        if batched != self.batched:
            self.batched = batched
            self.fan_out = self._relay_batched if batched else self._relay
            self._batches.clear()
            self._routes.clear()
            log.info("worker %d: fan-out with %s", self.index,
                     "sendmmsg" if batched else "sendto")
            if self._started:
                self._install_reader()
        self.core.configure(settings.inactivity_timeout, settings.max_send_failures, now,
                            settings.chat_rate, settings.chat_burst)
        logging.getLogger().setLevel(settings.log_level.upper())
        self.stage1.inactivity_timeout = settings.inactivity_timeout
        self.stage1.max_send_failures = settings.max_send_failures
        self._timer_due = float("inf")
        self._arm_timer()


class _Batch:
    """A room's prebuilt ``sendmmsg`` batch for one delivery format."""

    __slots__ = ("addrs", "index", "sender")

    def __init__(self, addrs: list[Addr]) -> None:
        self.addrs = addrs
        self.index = {a: i for i, a in enumerate(addrs)}
        self.sender = mmsg.SendBatch(addrs)


class _RoomBatches:
    """The worker's send cache of one room: both formats' batches, valid while the room's
    ``generation`` is the one they were built from."""

    __slots__ = ("generation", "plain", "framed", "numbered")

    def __init__(self, room: Room) -> None:
        self.generation = room.generation
        self.plain = _Batch(room.plain_addrs)
        self.framed = _Batch(room.framed_addrs)
        self.numbered = _Batch(room.reliable_addrs)


class _PipeProtocol(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.decoder = ipc.FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.worker.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ipc.IpcError as exc:
            # A bug or a corrupted pipe: exit without telling members, so that control
            # replaces this worker and re-seeds it from its registry.
            log.error("worker %d: corrupt pipe (%s); exiting", self.worker.index, exc)
            self.worker.stop(notify=False)
            return
        for message in messages:
            self.worker.handle_command(message)

    def connection_lost(self, exc: Exception | None) -> None:
        # Control is gone: its registry (and so every token) with it. Tell members.
        self.worker.transport = None
        self.worker.stop(notify=True)


def main(index: int, settings: ipc.WorkerSettings, udp_sock: socket.socket,
         stage1_sock: socket.socket | None, conn: Connection,
         inbox: socket.socket | None = None, peers: list[socket.socket] | None = None
         ) -> None:
    """Process entry point (multiprocessing spawn target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.setup_logging(settings.log_level, settings.log_format, f"worker-{index}")
    try:
        import uvloop

        sched.apply(settings.realtime_priority)
        conn_sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        worker = Worker(index, settings, udp_sock, stage1_sock, inbox, peers)
    except Exception:
        log.exception("worker %d failed to boot", index)
        sys.exit(WORKER_BOOT_ERROR)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(worker.run(conn_sock))
    sys.exit(0)
