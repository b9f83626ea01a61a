"""The UDP side of a chat, on asyncio: one ``Link`` per room (Stage 2) or global chat
(Stage 1). It sends messages and keepalives and turns every datagram it receives into a
``render.Line`` handed to ``on_line``; the first ``closed``/``disconnected`` notice
resolves ``ended``.

Datagrams are decoded inline in ``datagram_received`` (no queue, no task per datagram);
a malformed one is dropped and counted in ``dropped``, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import time
from collections.abc import Callable
from typing import Final, cast

from client import commands, render
from client import reliable as rel
from client.commands import Action, Command
from client.render import Line
from client.session import Addr, Joined, JoinFailed, JoinRefused, fetch_members, join_room
from wire import dgmac
from wire.chat import FramedChat, Notice, encode_chat
from wire.codes import Framing, NoticeEvent, Operation
from wire.e2e import MemberInfo
from wire.limits import EXIT_COMMAND, MAX_DATAGRAM_BYTES
from wire.reliable import Up
from wire.stage1 import encode_stage1
from wire.tcrp import Request, RequestBody

KEEPALIVE_ENV: Final = "OCM_CHAT_KEEPALIVE"
"""Testing knob: ``0`` turns periodic keepalives off (the join keepalive is still sent);
a positive number of seconds replaces the interval."""
STAGE1_KEEPALIVE_S: Final = 15.0
"""Stage 1 does not tell clients its inactivity timeout; this is far below the default 300 s."""
MIN_KEEPALIVE_S: Final = 0.05
SYNC_S: Final = 2.0
"""``ocm1r``: keepalives this often while a message is pending, a hole is open or a
keepalive is unanswered; while the room is merely active (``ACTIVE_S``), one after this
long without a datagram from the relay, so that a lost last message is noticed (the relay
answers each with the room's latest sequence number; while datagrams keep coming, a lost
one shows as a hole). Else the usual interval."""
ACTIVE_S: Final = 10.0
"""``ocm1r``: how long after the last delivery or message of ours the room counts as
active."""
RESUME_AFTER_S: Final = 3 * SYNC_S + 0.5
"""``ocm1r``: a keepalive unanswered this long (the relay answers every one): the path is
gone (a new address, a dead network): resume over TCRP."""
RESUME_RETRY_S: Final = 2.0


def keepalive_due(last: float, heard: float, sent: float, base: float, urgent: bool) -> float:
    """When an ``ocm1r`` member's next keepalive is due (``RoomLink``; ``ocm-loadgen --loss``
    follows the same rule): ``SYNC_S`` after the ``last`` one while ``urgent`` (a message
    waiting ``SYNC_S`` for its acknowledgement, a hole open, a keepalive unanswered); else
    ``SYNC_S`` after the relay was last ``heard`` (while its datagrams keep coming a lost one
    shows as a hole; after that a lost last message shows in the answer) and at the latest
    ``base`` after the last datagram we ``sent`` (the relay's inactivity timeout counts what
    we send), never sooner than ``SYNC_S`` after the ``last`` one."""
    if urgent:
        return last + SYNC_S
    return max(last + SYNC_S, min(heard + SYNC_S, sent + base))


def urgent(chat: rel.ReliableChat, now: float) -> bool:
    """Keepalives every ``SYNC_S`` whatever is heard (``keepalive_due``): a hole is open, or
    a message has waited ``SYNC_S`` for its acknowledgement (one acknowledged sooner needs
    none: the relay answers it; one held by the relay, docs/protocol.md §9.3, waits
    0.15 s at most)."""
    return bool(chat.receiver.missing) or chat.sender.waiting(now) >= SYNC_S


class Resumed(enum.Enum):
    """How a resume went: everything missed came back, some of it, or nothing."""

    YES = "yes"
    PARTLY = "partly"
    NO = "no"


class SendState(enum.Enum):
    """Where one of our ``ocm1r`` messages is (``RoomLink.on_send_state``)."""

    PENDING = "pending"  # sent, not acknowledged yet (resent on a timer)
    SENT = "sent"  # the relay has it, in the room's order
    FAILED = "failed"  # never acknowledged: ``RoomLink.retry`` sends it again
    REFUSED = "refused"  # the relay refused it (too long: an error notice follows)


def gap_text(count: int) -> str:
    return (f"{count} message{'s' if count != 1 else ''} could not be recovered")


def keepalive_interval(default_s: float, env: dict[str, str] | os._Environ[str]) -> float | None:
    """Seconds between keepalives, ``None`` for none (``OCM_CHAT_KEEPALIVE=0``)."""
    raw = env.get(KEEPALIVE_ENV, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = default_s
        else:
            if value <= 0:
                return None
        return max(MIN_KEEPALIVE_S, value)
    return max(MIN_KEEPALIVE_S, default_s)


class Link(asyncio.DatagramProtocol):
    """Common machinery; see ``RoomLink`` and ``GlobalLink``."""

    max_message: int
    scope = render.ROOM_SCOPE
    """Where ``max_message`` applies, as said when a message is too long."""

    def __init__(self, on_line: Callable[[Line], None], keepalive_s: float | None) -> None:
        self._on_line = on_line
        self._keepalive_s = keepalive_s
        self._transport: asyncio.DatagramTransport | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._warned_unreachable = False
        self.ended: asyncio.Future[Notice] = asyncio.get_running_loop().create_future()
        self.dropped = 0

    # -- what the UI calls ---------------------------------------------------------------
    async def start(self, sock: socket.socket, server: Addr) -> None:
        """Adopt ``sock`` (bound), connect it to ``server``, send the first keepalive."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sock.connect(server)  # only the server's datagrams reach us (§2.1: same port)
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._send(self._encode(""))  # binds our address right away (§2.1)
        self._arm_keepalive()

    def send(self, text: str) -> None:
        """Send one chat message; raise ``MessageTooLong`` over ``max_message`` bytes."""
        # no lone surrogates
        clean = render.check_length(text, self.max_message, self.scope).decode()
        self._send(self._encode(clean))

    def leave(self) -> None:
        """Tell the server we are leaving (what that means depends on the chat)."""
        raise NotImplementedError

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until the server has every message we sent; only
        ``ocm1r`` knows, the others return at once."""

    async def command(self, text: str) -> list[Line] | None:
        """Run a client command typed as ``text`` (``/who``, ``/verify NAME``); ``None``
        if it is not one this chat has."""
        return await self.answer(commands.parse_input(text))

    async def answer(self, command: Command) -> list[Line] | None:
        """The lines that answer ``command`` (from ``client.commands.parse_input``);
        ``None`` if this chat has no such command (global chat has none)."""
        return None

    def close(self) -> None:
        """Stop the keepalives and close the socket (after ``leave``, or at the end)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- asyncio callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not a subclass of asyncio.DatagramTransport: cast.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # A connected UDP socket reports ICMP port unreachable: the server is gone.
        if not self._warned_unreachable:
            self._warned_unreachable = True
            self._on_line(render.warning_line(f"the server is not answering ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        # After a resume the old socket's loss arrives while the new one is open.
        if self._transport is None or self._transport.is_closing():
            self._transport = None

    # -- internals ----------------------------------------------------------------------------
    def _encode(self, text: str) -> bytes:
        raise NotImplementedError

    def _send(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.sendto(data)

    def _arm_keepalive(self, delay: float | None = None) -> None:
        interval = self._keepalive_interval() if delay is None else delay
        if interval is None or (self._transport is None and not self._lost_path()):
            return
        loop = asyncio.get_running_loop()
        self._keepalive = loop.call_later(interval, self._on_keepalive)

    def _keepalive_interval(self) -> float | None:
        return self._keepalive_s

    def _on_keepalive(self) -> None:
        self._send(self._encode(""))
        self._arm_keepalive()

    def _lost_path(self) -> bool:
        """The socket is gone but the chat goes on (a resume will replace it)."""
        return False


class RoomLink(Link):
    """A room membership (Stage 2, docs/protocol.md §2)."""

    def __init__(self, joined: Joined, on_line: Callable[[Line], None],
                 env: dict[str, str] | os._Environ[str] | None = None) -> None:
        details = joined.details
        interval = keepalive_interval(details.inactivity_timeout / 4,
                                      os.environ if env is None else env)
        super().__init__(on_line, interval)
        self.joined = joined
        self.max_message = details.max_message
        self._framing = details.framing
        self.on_notice: Callable[[Notice], None] | None = None
        """Called with every notice after its line (the GUI refreshes its member list)."""
        self.reliable: rel.ReliableChat | None = (
            rel.ReliableChat(Up.E2E_NACK if details.e2e else Up.NACK)
            if details.framing is Framing.OCM1R else None)
        """``ocm1r``: room order, recovery and our messages' states (client/reliable.py)."""
        self.on_send_state: Callable[[int, SendState, str], None] | None = None
        """``ocm1r``: called with (message id, state, text) as our messages progress."""
        self.on_status: Callable[[], None] | None = None
        """Called when ``pending``, ``failed`` or ``reconnecting`` may have changed."""
        self.reconnecting = False
        """A resume is under way (the status line says so)."""
        self.last_id = 0
        """The id of our last message (``ocm1r``; 0 otherwise)."""
        self._texts: dict[int, str] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        """When ``_timer`` fires, on ``clock`` (uvloop's handles do not say)."""
        self._changed = asyncio.Event()
        self._closed = False
        self.gaps = 0
        """Deliveries shown as "could not be recovered" so far."""
        self._gaps_at_resume: int | None = None
        self.clock: Callable[[], float] = time.monotonic
        self.heard = self.clock()
        """When a datagram last came from the relay."""
        self.active = self.heard
        """When the room last delivered something, or we last sent a message."""
        self.asked: float | None = None
        """When the first keepalive since the relay was last heard went out (None: none)."""
        self.sent = self.heard
        """When we last sent a datagram."""
        self.keepalive_at = self.heard
        """When our last keepalive went out."""
        self.resume_source: str | None = None
        """The local IP to resume from (None: the system chooses)."""
        self._resuming: asyncio.Task[None] | None = None
        self.on_resumed: Callable[[Resumed], None] | None = None
        """Called when a resume is over (``Resumed.NO``: the membership is gone)."""
        self.status_lines = True
        """Write the resume's outcome ("reconnected: ...") and each undelivered message
        ("not delivered: ...") as lines, as ``ocm-chat`` shows them. A client that shows
        them itself from ``on_resumed`` and ``on_send_state`` (``ocm-gui``: a banner, a
        mark on the message) turns this off, so that each is shown once."""

    @property
    def pending(self) -> int:
        """Our messages not yet acknowledged (and not failed)."""
        if self.reliable is None:
            return 0
        return sum(1 for p in self.reliable.sender.pending.values() if not p.failed)

    @property
    def failed(self) -> list[int]:
        """The ids of our messages that failed (``retry`` sends them again)."""
        if self.reliable is None:
            return []
        return [p.msg_id for p in self.reliable.sender.pending.values() if p.failed]

    def send(self, text: str) -> None:
        """Send one chat message (``ocm1r``: with an id, pending until acknowledged);
        raise ``MessageTooLong`` over ``max_message`` bytes."""
        if self.reliable is None or commands.is_exit_command(text):
            super().send(text)
            return
        data = render.check_length(text, self.max_message, self.scope)
        self._send_numbered(data, data.decode())

    def _send_numbered(self, message: bytes, text: str) -> None:
        """Send ``message`` with an id (``ocm1r``): pending until acknowledged, resent
        meanwhile; ``text`` is what the send states name."""
        assert self.reliable is not None
        msg_id, first = self.reliable.send(message, self.clock())
        self.last_id = msg_id
        self.active = self.clock()
        self._texts[msg_id] = text
        if first is not None:
            self._send(encode_chat(self.joined.room_raw, self.joined.token, first))
        self._state(msg_id, SendState.PENDING)
        self._arm_timer()

    async def settle(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and loop.time() < deadline and not self.ended.done():
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except TimeoutError:
                return

    def retry(self) -> int:
        """Send the failed messages again (in their order); how many there were."""
        if self.reliable is None:
            return 0
        ids = self.reliable.sender.retry(self.clock())
        for one in ids:
            self._state(one, SendState.PENDING)
        self._arm_timer()
        return len(ids)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._resuming is not None and not self._resuming.done():
            self._resuming.cancel()
        self._closed = True
        super().close()

    # -- resume (ocm1r) ----------------------------------------------------------------------
    def _lost_path(self) -> bool:
        return self.reliable is not None and not self.ended.done() and not self._closed

    def _keepalive_interval(self) -> float | None:
        base = self._keepalive_s
        chat = self.reliable
        if base is None or chat is None or base <= SYNC_S:
            return base
        busy = self._urgent(chat) or self.clock() - self.active < ACTIVE_S
        return SYNC_S if busy else base

    def _urgent(self, chat: rel.ReliableChat) -> bool:
        """A keepalive is wanted every ``SYNC_S`` whatever is heard (``keepalive_due``)."""
        return self.asked is not None or urgent(chat, self.clock())

    def _on_keepalive(self) -> None:
        now = self.clock()
        quiet_for = self._unneeded_keepalive(now)
        if quiet_for is not None:
            self._arm_keepalive(quiet_for)
            return
        if self.asked is None:
            self.asked = now
        self.keepalive_at = now
        super()._on_keepalive()
        if (self.reliable is not None and self._resuming is None and not self.ended.done()
                and now - self.asked > RESUME_AFTER_S):
            self._resuming = asyncio.ensure_future(self._resume_until_done())

    def _unneeded_keepalive(self, now: float) -> float | None:
        """``ocm1r``: ``None`` if a keepalive is due now (``keepalive_due``), else how long
        until it is."""
        chat = self.reliable
        base = self._keepalive_s
        if chat is None or base is None or base <= SYNC_S:
            return None
        wait = keepalive_due(self.keepalive_at, self.heard, self.sent, base,
                             self._urgent(chat)) - now
        return wait if wait >= MIN_KEEPALIVE_S else None

    async def _resume_until_done(self) -> None:
        try:
            while not self.ended.done():
                try:
                    await self.resume(self.resume_source)
                    return
                except JoinFailed:  # no network yet: try again
                    await asyncio.sleep(RESUME_RETRY_S)
        finally:
            self._resuming = None

    async def resume(self, source: str | None = None) -> None:
        """Move this membership to a new socket over TCRP (``ocm1r``): same name, same
        place in the room, a new token for the new address; then ask for what was missed
        and resend what is pending. The status says ``reconnecting`` meanwhile;
        ``on_resumed`` gets the outcome (``Resumed.NO`` ends the chat: the membership was
        gone). Raise ``JoinFailed`` if the server cannot be reached."""
        joined = self.joined
        secret = joined.details.resume
        target = joined.tcrp
        if self.reliable is None or secret is None or target is None:
            raise JoinFailed("this chat cannot resume")
        self.reconnecting = True
        self._status()
        try:
            new = await asyncio.to_thread(
                join_room, target, Request.of(Operation.JOIN, joined.room_raw.decode(),
                                              RequestBody(joined.username,
                                                          framing=Framing.OCM1R,
                                                          resume=secret)), source)
        except JoinRefused as exc:
            self.reconnecting = False
            self._resumed(Resumed.NO)
            self._on_line(render.warning_line(
                f"could not resume: {render.sanitize(exc.error)}"))
            if not self.ended.done():
                self.close()
                self.ended.set_result(Notice(NoticeEvent.DISCONNECTED))
            return
        except JoinFailed:
            self._status()
            raise
        old = self._transport
        self.joined = new
        self._transport = None
        if old is not None:
            old.close()
        loop = asyncio.get_running_loop()
        new.udp_sock.connect(new.server)
        await loop.create_datagram_endpoint(lambda: self, sock=new.udp_sock)
        now = self.clock()
        self.heard = self.active = now
        self.asked = None
        self.reconnecting = False
        self._gaps_at_resume = self.gaps
        self.reliable.resumed(now)
        self._send(self._encode(""))  # binds the new address; the answer says where we are
        self._arm_timer()
        self._status()

    def _resumed(self, outcome: Resumed) -> None:
        self._gaps_at_resume = None
        if outcome is not Resumed.NO and self.status_lines:
            self._on_line(render.notice_line(
                "reconnected: nothing was lost" if outcome is Resumed.YES
                else "reconnected: some messages could not be recovered"))
        if self.on_resumed is not None:
            self.on_resumed(outcome)

    def _status(self) -> None:
        self._changed.set()
        if self.on_status is not None:
            self.on_status()

    async def open(self) -> None:
        await self.start(self.joined.udp_sock, self.joined.server)

    async def answer(self, command: Command) -> list[Line] | None:
        """``/who``: the room's members from the server (TCRP Operation 3); ``/verify``
        has nothing to compare in a plain room."""
        if command.action is Action.WHO:
            lines, _ = await self.who()
            return lines
        if command.action is Action.VERIFY:
            return [render.warning_line("/verify: this room is not end-to-end encrypted, "
                                        "there are no keys to compare")]
        if command.action is Action.RETRY:
            count = self.retry()
            return [render.notice_line(f"sending {count} message{'s' if count != 1 else ''} "
                                       "again" if count else "no message to send again")]
        return None

    async def who(self) -> tuple[list[Line], tuple[MemberInfo, ...]]:
        """The ``/who`` lines and the members they list (none if the fetch failed: the
        lines say why)."""
        try:
            members = await self.fetch_members()
        except (JoinFailed, JoinRefused) as exc:
            return [render.warning_line(f"/who failed: {render.sanitize(str(exc))}")], ()
        return self.who_lines(members), members

    async def fetch_members(self) -> tuple[MemberInfo, ...]:
        """The member list (docs/e2e.md §2.4), from a thread; raise ``JoinFailed`` or
        ``JoinRefused``."""
        target = self.joined.tcrp
        if target is None:
            raise JoinFailed("this chat does not know its TCRP server")
        local_ip = str(self.joined.udp_sock.getsockname()[0])  # the token's IP
        return await asyncio.to_thread(fetch_members, target, self.joined.room_raw,
                                       self.joined.token, local_ip)

    def who_lines(self, members: tuple[MemberInfo, ...]) -> list[Line]:
        names = ", ".join(render.member_label(m.user, m.host, m.user == self.joined.username)
                          for m in members)
        return [render.notice_line(f"{len(members)} in the room: {names}")]

    def leave(self) -> None:
        """Send ``/exit`` (the others see us leave; if we host, the room closes); twice
        with ``ocm1r``, whose clients count on the way being lossy (the relay ignores a
        second one: the token is gone)."""
        for _ in range(1 if self.reliable is None else 2):
            self._send(self._encode(EXIT_COMMAND))

    def _encode(self, text: str) -> bytes:
        return encode_chat(self.joined.room_raw, self.joined.token, text.encode())

    def _send(self, data: bytes) -> None:
        """Every datagram of the membership goes out here: sealed with the MAC trailer
        when it has a datagram key (joined over TLS)."""
        if self._transport is not None:
            self._transport.sendto(self.joined.seal(data))
            self.sent = self.clock()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.heard = self.clock()
        self.asked = None
        if self.rekeyed(data):
            return
        if self.reliable is not None:
            self._reliable_events(self.reliable.handle_delivery(data, self.clock()))
            self._arm_timer()
            return
        self._show(render.decode_delivery(data, self._framing))

    def rekeyed(self, data: bytes) -> bool:
        """Whether ``data`` was a rekey datagram (a restarted worker placed this
        membership again: wire/dgmac.py); a valid one switches the datagram key."""
        sealer = self.joined.sealer
        if sealer is None or not dgmac.is_rekey(data):
            return False
        if not sealer.rekey(data):
            self.dropped += 1
        return True

    def _show(self, item: FramedChat | Notice | None) -> None:
        if item is None:
            self.dropped += 1
            return
        self._on_line(render.delivery_line(item))
        if isinstance(item, Notice):
            self._ended_by(item)

    def _reliable_events(self, events: list[rel.Event]) -> None:
        for event in events:
            if isinstance(event, rel.Delivered):
                self.active = self.heard
                self._room_delivery(event.body)
            elif isinstance(event, rel.Addressed):
                self._addressed(event.body)
            elif isinstance(event, rel.Unnumbered):
                self._show(render.decode_delivery(event.body, Framing.OCM1))
            elif isinstance(event, rel.Gap):
                self.gaps += event.count
                self._on_line(render.warning_line(gap_text(event.count)))
            elif isinstance(event, rel.Acked):
                self._state(event.msg_id, SendState.SENT)
            elif isinstance(event, rel.Refused):
                self._state(event.msg_id, SendState.REFUSED)
            elif isinstance(event, rel.Failed):
                self._state(event.msg_id, SendState.FAILED)
                if self.status_lines:
                    text = render.sanitize(self._texts.get(event.msg_id, ""))
                    self._on_line(render.warning_line(
                        f"not delivered: {text!r} (/retry sends it again)"))

        if self._gaps_at_resume is not None and self.reliable is not None \
                and self.reliable.receiver.next is not None \
                and not self.reliable.receiver.missing:  # the resume's holes are settled
            self._resumed(Resumed.YES if self.gaps == self._gaps_at_resume
                          else Resumed.PARTLY)

    def _room_delivery(self, body: bytes) -> None:
        """One delivery of the room, in room order (an ``ocm1`` chat or notice)."""
        item = render.decode_delivery(body, Framing.OCM1)
        if isinstance(item, FramedChat) and item.username == self.joined.username:
            return  # our own message, resent because its ack was lost: shown already
        self._show(item)

    def _addressed(self, body: bytes) -> None:
        """An addressed delivery: only encrypted rooms have them."""
        self.dropped += 1

    def _state(self, msg_id: int, state: SendState) -> None:
        text = self._texts.get(msg_id, "")
        if state in (SendState.SENT, SendState.REFUSED):
            self._texts.pop(msg_id, None)
        self._changed.set()
        if self.on_send_state is not None:
            self.on_send_state(msg_id, state, text)
        if self.on_status is not None:
            self.on_status()

    def _arm_timer(self) -> None:
        """(Re)arm the one ``ocm1r`` timer at the earliest NACK or resend."""
        if self.reliable is None or self._transport is None:
            return
        due = self.reliable.next_deadline()
        if self._timer is not None:
            if due is not None and self._timer_due <= due + 0.001:
                return
            self._timer.cancel()
            self._timer = None
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer_due = due
            self._timer = loop.call_later(max(0.0, due - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.reliable is None or self._transport is None:
            return
        messages, events = self.reliable.handle_timer(self.clock())
        for message in messages:
            self._send(encode_chat(self.joined.room_raw, self.joined.token, message))
        self._reliable_events(events)
        self._arm_timer()

    def _ended_by(self, notice: Notice) -> None:
        """After a notice's line: tell ``on_notice``; a final one ends the chat."""
        if self.on_notice is not None:
            self.on_notice(notice)
        if render.is_final(notice) and not self.ended.done():
            self.close()
            self.ended.set_result(notice)


class GlobalLink(Link):
    """Global chat on the Stage 1 port (docs/protocol.md §3): no TCRP, no notices."""

    scope = render.GLOBAL_SCOPE

    def __init__(self, username: str, on_line: Callable[[Line], None],
                 env: dict[str, str] | os._Environ[str] | None = None) -> None:
        super().__init__(on_line, keepalive_interval(STAGE1_KEEPALIVE_S,
                                                     os.environ if env is None else env))
        self.username = username
        self.max_message = MAX_DATAGRAM_BYTES - 1 - len(username.encode())

    def leave(self) -> None:
        """Stage 1 has no ``/exit``: the server forgets us when we fall silent."""

    def _encode(self, text: str) -> bytes:
        return encode_stage1(self.username, text)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        item = render.decode_global(data)
        if item is None:
            self.dropped += 1
            return
        self._on_line(render.delivery_line(item))


async def open_global(host: str, port: int, username: str,
                      on_line: Callable[[Line], None]) -> GlobalLink:
    """Resolve ``host``, bind a UDP socket and start chatting on the Stage 1 port."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        link = GlobalLink(username, on_line)
        await link.start(sock, (str(sockaddr[0]), int(sockaddr[1])))
    except BaseException:
        sock.close()
        raise
    return link

