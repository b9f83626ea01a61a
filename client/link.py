"""The UDP side of a chat, on asyncio: one ``Link`` per room (Stage 2) or global chat
(Stage 1). It sends messages and keepalives and turns every datagram it receives into a
``render.Line`` handed to ``on_line``; the first ``closed``/``disconnected`` notice
resolves ``ended``.

Datagrams are decoded inline in ``datagram_received`` (no queue, no task per datagram);
a malformed one is dropped and counted in ``dropped``, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import Final, cast

from client import commands, render
from client.commands import Action, Command
from client.render import Line
from client.session import Addr, Joined, JoinFailed, JoinRefused, fetch_members
from wire.chat import Notice, encode_chat
from wire.e2e import MemberInfo
from wire.limits import EXIT_COMMAND, MAX_DATAGRAM_BYTES
from wire.stage1 import encode_stage1

KEEPALIVE_ENV: Final = "OCM_CHAT_KEEPALIVE"
"""Testing knob: ``0`` turns periodic keepalives off (the join keepalive is still sent);
a positive number of seconds replaces the interval."""
STAGE1_KEEPALIVE_S: Final = 15.0
"""Stage 1 does not tell clients its inactivity timeout; this is far below the default 300 s."""
MIN_KEEPALIVE_S: Final = 0.05


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
        self._transport = None

    # -- internals ----------------------------------------------------------------------------
    def _encode(self, text: str) -> bytes:
        raise NotImplementedError

    def _send(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.sendto(data)

    def _arm_keepalive(self) -> None:
        if self._keepalive_s is None or self._transport is None:
            return
        loop = asyncio.get_running_loop()
        self._keepalive = loop.call_later(self._keepalive_s, self._on_keepalive)

    def _on_keepalive(self) -> None:
        self._send(self._encode(""))
        self._arm_keepalive()


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
        """Send ``/exit`` (the others see us leave; if we host, the room closes)."""
        self._send(self._encode(EXIT_COMMAND))

    def _encode(self, text: str) -> bytes:
        return encode_chat(self.joined.room_raw, self.joined.token, text.encode())

    def _send(self, data: bytes) -> None:
        """Every datagram of the membership goes out here: sealed with the MAC trailer
        when it has a datagram key (joined over TLS)."""
        if self._transport is not None:
            self._transport.sendto(self.joined.seal(data))

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        item = render.decode_delivery(data, self._framing)
        if item is None:
            self.dropped += 1
            return
        self._on_line(render.delivery_line(item))
        if isinstance(item, Notice):
            self._ended_by(item)

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

