"""The relay worker's sans-IO core: datagrams in, deliveries out (PROTOCOL.md §2, §3).

Shape (aioquic ``QuicConnection``): the adapter calls ``handle_datagram(data, addr, now)``
for every datagram and sends what it returns, calls ``handle_timer(now)`` at
``next_deadline()``, applies control commands (``add_member``, ``register``, ...), and
after each call flushes ``outbox`` (notices: ``(payload, addr)`` pairs) and ``events``
(pipe messages for control, see relay/ipc.py). Time is always an argument.

Hot path (STYLE.md §2 exception): a chat datagram does not allocate a list of sends.
``handle_datagram`` returns a ``Fanout`` tuple ``(plain, plain_addrs, framed,
framed_addrs, sender_addr, room)`` and the adapter loops over the room's precomputed
address lists, skipping ``sender_addr`` by identity (or hands a list to one batched
``sendmmsg``, cached on ``room.send_cache`` until the next membership change). The lists
are rebuilt on every membership change, never per datagram.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any, Final

from wire.chat import (
    Notice,
    encode_framed_notice,
    encode_plain_notice,
    framed_prefix,
    is_exit,
    plain_prefix,
)
from wire.codes import Framing, NoticeEvent, Reason
from wire.limits import (
    DEFAULT_INACTIVITY_TIMEOUT_S,
    DEFAULT_MAX_SEND_FAILURES,
    EXIT_MATCH_MAX_BYTES,
    MAX_DATAGRAM_BYTES,
    MAX_DELIVERY_BYTES,
)

Addr = tuple[str, int]
Send = tuple[bytes, Addr]
Fanout = tuple[bytes | None, list[Addr], bytes | None, list[Addr], Addr, "Room"]

DEFAULT_CHAT_RATE: Final = 10.0
"""Chat messages per second per member; excess is dropped and counted (rate_limited)."""
DEFAULT_CHAT_BURST: Final = 20

DROP_REASONS: Final = (
    "too_large",  # over 4096 bytes
    "malformed",  # lengths 0 or past the end
    "bad_utf8",  # message not UTF-8
    "unknown_token",  # no live member has that token
    "wrong_room",  # the token belongs to another room
    "wrong_ip",  # the source IP is not the IP the token was issued to
    "rate_limited",  # over the member's chat rate (token bucket)
    "too_many_clients",  # Stage 1: the address table is full
)


class Member:
    """One member of one room. Slotted: ~400 bytes with its prefixes (DESIGN: <= 1 KiB)."""

    __slots__ = (
        "token", "username", "ip", "addr", "framed", "is_host", "last_seen", "failures",
        "room", "plain_prefix", "framed_prefix", "announced", "alive", "allowance", "stamp",
    )

    def __init__(self, token: bytes, username: str, ip: str, framed: bool, is_host: bool,
                 room: Room, now: float) -> None:
        self.token = token
        self.username = username
        self.ip = ip
        self.addr: Addr | None = None
        self.framed = framed
        self.is_host = is_host
        self.last_seen = now
        self.failures = 0
        self.room = room
        self.plain_prefix = plain_prefix(username)
        self.framed_prefix = framed_prefix(username)
        self.announced = False
        self.alive = True
        self.allowance = float("inf")
        """Chat token bucket: messages this member may send now (capped at the burst)."""
        self.stamp = now


class Room:
    """A live room: members by token, and the bound addresses split by delivery format."""

    __slots__ = ("name", "name_raw", "host", "members", "plain_addrs", "framed_addrs",
                 "send_cache")

    def __init__(self, name: str) -> None:
        self.name = name
        self.name_raw = name.encode()
        self.host: Member | None = None
        self.members: dict[bytes, Member] = {}
        self.plain_addrs: list[Addr] = []
        self.framed_addrs: list[Addr] = []
        self.send_cache: Any = None
        """Owned by the I/O adapter (e.g. prebuilt sendmmsg batches); reset on change."""

    def rebuild(self) -> None:
        """Recompute the address lists after a membership or binding change."""
        self.plain_addrs = [m.addr for m in self.members.values() if m.addr and not m.framed]
        self.framed_addrs = [m.addr for m in self.members.values() if m.addr and m.framed]
        self.send_cache = None


class RelayCore:
    """Rooms of one worker: authentication, relay, notices, eviction. No I/O."""

    def __init__(self, inactivity_timeout: float = DEFAULT_INACTIVITY_TIMEOUT_S,
                 max_send_failures: int = DEFAULT_MAX_SEND_FAILURES,
                 chat_rate: float = DEFAULT_CHAT_RATE, chat_burst: int = DEFAULT_CHAT_BURST
                 ) -> None:
        self.inactivity_timeout = inactivity_timeout
        self.max_send_failures = max_send_failures
        self.chat_rate = chat_rate
        """Chat messages per second per member (token bucket refill), issue #6."""
        self.chat_burst = float(chat_burst)
        """Bucket size: a member may send this many at once."""
        self.rooms: dict[str, Room] = {}
        self.tokens: dict[bytes, Member] = {}
        self.by_addr: dict[Addr, list[Member]] = {}
        self.failing: dict[Addr, int] = {}
        """Consecutive send failures per address; empty in the common case so the hot
        path's ``if failing`` test costs one truth check."""
        self.outbox: list[Send] = []
        self.events: list[dict[str, Any]] = []
        self._deadlines: list[tuple[float, int, Member]] = []
        self._seq = 0
        self.received = 0
        self.relayed = 0
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.evictions: dict[str, int] = {r.value: 0 for r in Reason}
        self.send_failures = 0

    # --- control commands ---------------------------------------------------------------
    def add_member(self, room_name: str, token: bytes, username: str, ip: str,
                   framing: Framing, is_host: bool, now: float, addr: Addr | None = None,
                   announced: bool = False) -> bool:
        """Add a member (``is_host`` creates the room). False if the room is not live
        (or already exists, for a host): control then answers ROOM_NOT_FOUND/EXISTS."""
        room = self.rooms.get(room_name)
        known = self.tokens.get(token)
        if known is not None:  # idempotent: a restarted worker may be seeded, then asked
            return known.room is room
        if is_host:
            if room is not None:
                return False
            room = self.rooms[room_name] = Room(room_name)
        elif room is None:
            return False
        member = Member(token, username, ip, framing is Framing.OCM1, is_host, room, now)
        if is_host:
            room.host = member
        room.members[token] = member
        self.tokens[token] = member
        self._push_deadline(member, now + self.inactivity_timeout)
        if addr is not None:
            member.announced = announced
            self._bind(member, addr)
        return True

    def register(self, token: bytes, port: int, now: float) -> None:
        """The 2-byte UDP port registration: bind ``(issued ip, port)`` and refresh."""
        member = self.tokens.get(token)
        if member is None or not 0 < port < 65536:
            return
        member.last_seen = now
        if member.addr != (member.ip, port):
            self._bind(member, (member.ip, port))

    def configure(self, inactivity_timeout: float, max_send_failures: int, now: float,
                  chat_rate: float | None = None, chat_burst: int | None = None) -> None:
        """Apply live-reloaded settings; deadlines are recomputed."""
        self.inactivity_timeout = inactivity_timeout
        self.max_send_failures = max_send_failures
        if chat_rate is not None:
            self.chat_rate = chat_rate
        if chat_burst is not None:
            self.chat_burst = float(chat_burst)
        self._deadlines = []
        for member in self.tokens.values():
            self._push_deadline(member, member.last_seen + inactivity_timeout)

    def shutdown(self) -> None:
        """Graceful stop (§2.4): every bound member gets ``closed``; all rooms go."""
        for room in list(self.rooms.values()):
            self._close_room(room, None, "shutdown")

    # --- datagrams ---------------------------------------------------------------------
    def rebind_ip(self, token: bytes, ip: str) -> None:
        """Cluster mode: the member now reaches us through another node at ``ip`` (it sends
        to that node, which relays for it). Its datagrams must come from ``ip`` from now
        on, and its old address gets nothing more until the first one does."""
        member = self.tokens.get(token)
        if member is None or member.ip == ip:
            return
        member.ip = ip
        if member.addr is not None and member.addr[0] != ip:
            self._unlink_addr(member)
            member.addr = None
            member.room.rebuild()

    def close_room(self, room_name: str, reason: str) -> None:
        """Close a room on control's order (cluster mode: its name now belongs to another
        node): every member gets ``closed``, tokens die, a ``closed`` event follows."""
        room = self.rooms.get(room_name)
        if room is not None:
            self._close_room(room, None, reason)

    def handle_datagram(self, data: bytes, addr: Addr, now: float) -> Fanout | None:
        """Authenticate and act on one Stage 2 datagram (§2.1).

        Returns a ``Fanout`` for chat to relay, else None (dropped, keepalive, /exit,
        too long: notices and events are then in ``outbox``/``events``).
        """
        self.received += 1
        size = len(data)
        if size > MAX_DATAGRAM_BYTES:
            self.drops["too_large"] += 1
            return None
        if size < 2:
            self.drops["malformed"] += 1
            return None
        room_end = 2 + data[0]
        token_end = room_end + data[1]
        if token_end > size or room_end == 2 or token_end == room_end:
            self.drops["malformed"] += 1
            return None
        member = self.tokens.get(data[room_end:token_end])
        if member is None:
            self.drops["unknown_token"] += 1
            return None
        if member.ip != addr[0]:
            self.drops["wrong_ip"] += 1
            return None
        room = member.room
        if room.name_raw != data[2:room_end]:
            self.drops["wrong_room"] += 1
            return None
        message = data[token_end:]
        try:
            message.decode()
        except UnicodeDecodeError:
            self.drops["bad_utf8"] += 1
            return None
        member.last_seen = now
        if member.addr != addr:
            self._bind(member, addr)
        if not message:
            return None
        if len(message) <= EXIT_MATCH_MAX_BYTES and is_exit(message):
            self._remove(member, Reason.EXIT)
            return None
        allowance = member.allowance + (now - member.stamp) * self.chat_rate
        member.stamp = now
        if allowance > self.chat_burst:
            allowance = self.chat_burst
        if allowance < 1.0:
            member.allowance = allowance
            self.drops["rate_limited"] += 1
            return None
        member.allowance = allowance - 1.0
        plain_addrs = room.plain_addrs
        framed_addrs = room.framed_addrs
        sender = member.addr
        assert sender is not None
        plain = framed = None
        n_plain = len(plain_addrs) - (not member.framed)
        if n_plain:
            plain = member.plain_prefix + message
        if len(framed_addrs) - member.framed:
            framed = member.framed_prefix + message
        # The plain form (name + ": ") is always the longer one (§2.3: relay to nobody).
        longest = len(plain) if plain is not None else len(framed) if framed is not None else 0
        if longest > MAX_DELIVERY_BYTES:
            self._notify(member, Notice(NoticeEvent.ERROR, over=longest - MAX_DELIVERY_BYTES))
            return None
        self.relayed += 1
        return plain, plain_addrs, framed, framed_addrs, sender, room

    def handle_send_failure(self, addr: Addr, now: float) -> None:
        """A send to ``addr`` failed (or ICMP said unreachable): count, maybe evict."""
        self.send_failures += 1
        count = self.failing.get(addr, 0) + 1
        members = self.by_addr.get(addr)
        if not members:
            self.failing.pop(addr, None)
            return
        if count < self.max_send_failures:
            self.failing[addr] = count
            return
        self.failing.pop(addr, None)
        for member in list(members):
            if member.alive:
                self._evict(member, Reason.SEND_FAILURES)

    def handle_send_success(self, addr: Addr) -> None:
        """A send to a failing address went through: failures must be consecutive."""
        self.failing.pop(addr, None)

    # --- timers ------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When ``handle_timer`` has work next (None when no member is live)."""
        return self._deadlines[0][0] if self._deadlines else None

    def handle_timer(self, now: float) -> None:
        """Evict every member silent for ``inactivity_timeout`` seconds (§2.4)."""
        heap = self._deadlines
        timeout = self.inactivity_timeout
        while heap and heap[0][0] <= now:
            _, _, member = heapq.heappop(heap)
            if not member.alive:
                continue
            due = member.last_seen + timeout
            if due <= now:
                self._evict(member, Reason.INACTIVE)
            else:
                self._push_deadline(member, due)

    def statistics(self) -> dict[str, Any]:
        """A snapshot of plain counters (sent to control once a second)."""
        return {
            "rooms": len(self.rooms),
            "members": len(self.tokens),
            "received": self.received,
            "relayed": self.relayed,
            "send_failures": self.send_failures,
            "drops": dict(self.drops),
            "evictions": dict(self.evictions),
        }

    # --- internals ---------------------------------------------------------------------
    def _push_deadline(self, member: Member, due: float) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (due, self._seq, member))

    def _unlink_addr(self, member: Member) -> None:
        """Take ``member`` out of ``by_addr``; forget the address once nobody uses it."""
        addr = member.addr
        if addr is None:
            return
        peers = self.by_addr.get(addr)
        if peers is not None:
            peers.remove(member)
            if not peers:
                del self.by_addr[addr]
                self.failing.pop(addr, None)

    def _bind(self, member: Member, addr: Addr) -> None:
        self._unlink_addr(member)
        member.addr = addr
        self.by_addr.setdefault(addr, []).append(member)
        member.room.rebuild()
        self.events.append({"t": "bound", "token": member.token.decode(), "ip": addr[0],
                            "port": addr[1]})
        if not member.announced:
            member.announced = True
            self._broadcast(member.room, Notice(NoticeEvent.JOINED, member.username),
                            exclude=member)

    def _remove(self, member: Member, reason: Reason) -> None:
        """Take ``member`` out; if it hosts the room, close the room instead (§2.4)."""
        room = member.room
        if member.is_host:
            self._close_room(room, member, reason.value)
            return
        self._drop_member(member)
        room.rebuild()
        self.events.append({"t": "left", "token": member.token.decode(),
                            "reason": reason.value})
        self._broadcast(room, Notice(NoticeEvent.LEFT, member.username, reason))

    def _evict(self, member: Member, reason: Reason) -> None:
        self.evictions[reason.value] += 1
        self._notify(member, Notice(NoticeEvent.DISCONNECTED, reason=reason))
        self._remove(member, reason)

    def _close_room(self, room: Room, host: Member | None, reason: str) -> None:
        closed = Notice(NoticeEvent.CLOSED)
        for member in list(room.members.values()):
            if member is not host:
                self._notify(member, closed)
            self._drop_member(member)
        del self.rooms[room.name]
        self.events.append({"t": "closed", "room": room.name, "reason": reason})

    def _drop_member(self, member: Member) -> None:
        member.alive = False
        del member.room.members[member.token]
        del self.tokens[member.token]
        self._unlink_addr(member)

    def _notify(self, member: Member, notice: Notice) -> None:
        if member.addr is not None:
            encode: Callable[[Notice], bytes] = (
                encode_framed_notice if member.framed else encode_plain_notice)
            self.outbox.append((encode(notice), member.addr))

    def _broadcast(self, room: Room, notice: Notice, exclude: Member | None = None) -> None:
        plain = framed = b""
        for member in room.members.values():
            if member is exclude or member.addr is None:
                continue
            if member.framed:
                framed = framed or encode_framed_notice(notice)
                self.outbox.append((framed, member.addr))
            else:
                plain = plain or encode_plain_notice(notice)
                self.outbox.append((plain, member.addr))


class GlobalChat:
    """Stage 1 (§3): everyone who sent a well-formed datagram gets every other's chat."""

    def __init__(self, inactivity_timeout: float = DEFAULT_INACTIVITY_TIMEOUT_S,
                 max_send_failures: int = DEFAULT_MAX_SEND_FAILURES,
                 max_clients: int = 10_000) -> None:
        self.inactivity_timeout = inactivity_timeout
        self.max_send_failures = max_send_failures
        self.max_clients = max_clients
        """Bound of the address table: 10,000 × ~200 bytes = 2 MB worst case."""
        self.last_seen: dict[Addr, float] = {}
        self.addrs: list[Addr] = []
        self.failing: dict[Addr, int] = {}
        self.received = 0
        self.relayed = 0
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.evictions: dict[str, int] = {r.value: 0 for r in Reason}

    def handle_datagram(self, data: bytes, addr: Addr, now: float) -> list[Addr] | None:
        """Validate; remember the sender; return the addresses to relay ``data`` to
        (the caller skips ``addr``), or None."""
        self.received += 1
        size = len(data)
        if size > MAX_DATAGRAM_BYTES:
            self.drops["too_large"] += 1
            return None
        end = 1 + data[0] if size else 0
        if end <= 1 or end > size:
            self.drops["malformed"] += 1
            return None
        try:
            data[1:end].decode()
            data[end:].decode()
        except UnicodeDecodeError:
            self.drops["bad_utf8"] += 1
            return None
        if addr not in self.last_seen:
            if len(self.last_seen) >= self.max_clients:
                self.drops["too_many_clients"] += 1
                return None
            self.addrs = [*self.addrs, addr]
        self.last_seen[addr] = now
        if end == size:
            return None
        self.relayed += 1
        return self.addrs

    def handle_send_failure(self, addr: Addr) -> None:
        count = self.failing.get(addr, 0) + 1
        if count >= self.max_send_failures:
            self._forget(addr, Reason.SEND_FAILURES)
        elif addr in self.last_seen:
            self.failing[addr] = count

    def handle_send_success(self, addr: Addr) -> None:
        self.failing.pop(addr, None)

    def next_deadline(self) -> float | None:
        if not self.last_seen:
            return None
        return min(self.last_seen.values()) + self.inactivity_timeout

    def handle_timer(self, now: float) -> None:
        """Forget clients silent for ``inactivity_timeout`` seconds (no notices in §3)."""
        limit = now - self.inactivity_timeout
        for addr, seen in list(self.last_seen.items()):
            if seen <= limit:
                self._forget(addr, Reason.INACTIVE)

    def _forget(self, addr: Addr, reason: Reason) -> None:
        self.failing.pop(addr, None)
        if self.last_seen.pop(addr, None) is not None:
            self.evictions[reason.value] += 1
            self.addrs = [a for a in self.addrs if a != addr]

    def statistics(self) -> dict[str, Any]:
        return {"clients": len(self.last_seen), "received": self.received,
                "relayed": self.relayed, "drops": dict(self.drops),
                "evictions": dict(self.evictions)}
