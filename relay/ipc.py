"""Messages between ``ocm-control`` and its relay workers (pure: no I/O).

One frozen slotted dataclass per message; ``encode(message) -> bytes`` and
``FrameDecoder.feed(bytes) -> list[Message]`` are the only way in and out of the pipe,
so both ends agree on every field and its type. A frame that is not one of these
messages, or whose fields have the wrong types, raises ``IpcError``.

Transport: one duplex ``multiprocessing.Pipe`` per worker (a Unix stream socketpair).
Each message is a frame in ``multiprocessing.Connection``'s own format, a 4-byte signed
big-endian length then the body, so either end may also use ``send_bytes``/``recv_bytes``.
The body is an orjson object whose ``"t"`` names the message.

Commands, control -> worker:
  member    ``AddMember``  add a member (``host`` creates the room); answered by ``Ack``.
            Re-seeding a restarted worker sends the same with ``addr``, ``announced``
            and ``proven`` (a datagram came from ``addr``: it is not on trial,
            docs/protocol.md §4 (j)).
  register  ``Register``   the 2-byte UDP port registration (docs/protocol.md §1.4)
  start     ``Start``      seeding done: start reading the UDP socket(s)
  ping      ``Ping``       answered by ``Pong`` from the event loop
  config    ``Configure``  the live-reloadable ``WorkerSettings`` (SIGHUP)
  shutdown  ``Shutdown``   send ``closed`` to every member, answer ``Bye``, exit
  close     ``CloseRoom``  close one room now (cluster: another node holds its name)
  rebind    ``Rebind``     a member's datagrams come through another node's IP from now
                           on (cluster relay); answered by ``Ack``

Events, worker -> control:
  ack ``Ack``, pong ``Pong``, bye ``Bye``
  bound     ``Bound``      a member's address became known or changed, or was proven
                           (a datagram came from it)
  left      ``Left``       a member is gone (exit, inactive, send_failures)
  closed    ``Closed``     a room closed (host left, or shutdown); all its tokens are dead
  stats     ``Stats``      the worker's counters, once a second

``WorkerSettings`` is what a worker is told at spawn (it is pickled to the child) and in
every ``config`` command: control builds it from its configuration in one place.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from wire.codes import Framing, Reason
from wire.e2e import PublicKeys, decode_public_keys
from wire.errors import BadKeys
from wire.limits import (
    HISTORY_MAX_AGE_S,
    HISTORY_MAX_BYTES,
    HISTORY_MAX_MESSAGES,
    HISTORY_WORKER_MAX_BYTES,
)

FRAME_HEADER: Final = struct.Struct("!i")
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""A single pipe message; re-seeding is sent member by member, so real frames are tiny."""

Addr = tuple[str, int]


class IpcError(Exception):
    """A pipe frame is malformed (a bug or a corrupted pipe: the peer is restarted)."""


# --- settings ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything a relay worker is configured with (control/config.py builds it)."""

    inactivity_timeout: float
    max_send_failures: int
    chat_rate: float
    chat_burst: int
    max_stage1_clients: int
    log_level: str
    log_format: str
    realtime_priority: int
    sendmmsg: bool
    """Fan out with one ``sendmmsg`` per room and format where the kernel allows it;
    False: one ``sendto`` per recipient."""
    hot_path: str = "auto"
    """Which hot loop to run: auto, compiled or python (relay/hot.py)."""
    history_messages: int = HISTORY_MAX_MESSAGES
    history_bytes: int = HISTORY_MAX_BYTES
    history_age: float = HISTORY_MAX_AGE_S
    history_worker_bytes: int = HISTORY_WORKER_MAX_BYTES
    """The limits of the rooms' histories for ``ocm1r`` members (relay/history.py)."""


# --- commands, control -> worker ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AddMember:
    id: int
    room: str
    token: bytes
    user: str
    ip: str
    framing: Framing
    host: bool
    addr: Addr | None = None
    announced: bool = False
    proven: bool = False
    e2e: bool = False
    """The room is encrypted (docs/e2e.md §3): read by the worker when ``host`` creates it."""
    keys: PublicKeys | None = None
    """The member's public keys, only for its ``joined`` notice in an encrypted room."""


@dataclass(frozen=True, slots=True)
class Register:
    token: bytes
    port: int


@dataclass(frozen=True, slots=True)
class Start:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    id: int


@dataclass(frozen=True, slots=True)
class Configure:
    settings: WorkerSettings


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class CloseRoom:
    room: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rebind:
    id: int
    token: bytes
    ip: str
    new_token: bytes | None = None
    """A resume (``ocm1r``): the member's token from now on (the old one dies)."""


# --- events, worker -> control --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ack:
    id: int
    ok: bool


@dataclass(frozen=True, slots=True)
class Pong:
    id: int


@dataclass(frozen=True, slots=True)
class Bye:
    pass


@dataclass(frozen=True, slots=True)
class Bound:
    token: bytes
    ip: str
    port: int
    proven: bool = False
    """A datagram came from this address (else: registered or re-seeded, on trial)."""


@dataclass(frozen=True, slots=True)
class Left:
    token: bytes
    reason: Reason


@dataclass(frozen=True, slots=True)
class Closed:
    room: str
    reason: str
    """A ``Reason`` value (why the host left), or ``"shutdown"``."""


@dataclass(frozen=True, slots=True)
class Counters:
    """The counters of one port (the chat port, or Stage 1's)."""

    received: int = 0
    relayed: int = 0
    drops: Mapping[str, int] = field(default_factory=dict)
    evictions: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stats:
    """One worker's snapshot: counters only grow within one process (``pid``)."""

    worker: int
    pid: int
    sendmmsg: bool
    forwarded: int
    rooms: int
    members: int
    send_failures: int
    chat: Counters
    stage1_clients: int
    stage1: Counters
    hot_path: str = "python"
    """The loop that reads the chat socket: ``compiled`` or ``python`` (relay/hot.py)."""

    def as_dict(self) -> dict[str, Any]:
        """The plain form (also the frame body, less ``"t"``): chat counters at the top,
        Stage 1's under ``"stage1"``."""
        return {"worker": self.worker, "pid": self.pid, "sendmmsg": self.sendmmsg,
                "hot_path": self.hot_path, "forwarded": self.forwarded, "rooms": self.rooms,
                "members": self.members,
                "send_failures": self.send_failures, **_counters_dict(self.chat),
                "stage1": {"clients": self.stage1_clients, **_counters_dict(self.stage1)}}


Command = AddMember | Register | Start | Ping | Configure | Shutdown | CloseRoom | Rebind
Event = Ack | Pong | Bye | Bound | Left | Closed | Stats
Message = Command | Event


# --- encoding -------------------------------------------------------------------------------
def _counters_dict(c: Counters) -> dict[str, Any]:
    return {"received": c.received, "relayed": c.relayed, "drops": dict(c.drops),
            "evictions": dict(c.evictions)}


def _settings_dict(s: WorkerSettings) -> dict[str, Any]:
    return {"inactivity_timeout": s.inactivity_timeout,
            "max_send_failures": s.max_send_failures, "chat_rate": s.chat_rate,
            "chat_burst": s.chat_burst, "max_stage1_clients": s.max_stage1_clients,
            "log_level": s.log_level, "log_format": s.log_format,
            "realtime_priority": s.realtime_priority, "sendmmsg": s.sendmmsg,
            "hot_path": s.hot_path, "history_messages": s.history_messages,
            "history_bytes": s.history_bytes, "history_age": s.history_age,
            "history_worker_bytes": s.history_worker_bytes}


def _body(message: Message) -> dict[str, Any]:
    if isinstance(message, AddMember):
        return {"t": "member", "id": message.id, "room": message.room,
                "token": message.token.decode("ascii"), "user": message.user,
                "ip": message.ip, "framing": message.framing.value, "host": message.host,
                "addr": list(message.addr) if message.addr is not None else None,
                "announced": message.announced, "proven": message.proven,
                "e2e": message.e2e,
                "keys": message.keys.to_json() if message.keys is not None else None}
    if isinstance(message, Register):
        return {"t": "register", "token": message.token.decode("ascii"),
                "port": message.port}
    if isinstance(message, Start):
        return {"t": "start"}
    if isinstance(message, Ping):
        return {"t": "ping", "id": message.id}
    if isinstance(message, Configure):
        return {"t": "config", "settings": _settings_dict(message.settings)}
    if isinstance(message, Shutdown):
        return {"t": "shutdown"}
    if isinstance(message, CloseRoom):
        return {"t": "close", "room": message.room, "reason": message.reason}
    if isinstance(message, Rebind):
        body = {"t": "rebind", "id": message.id, "token": message.token.decode("ascii"),
                "ip": message.ip}
        if message.new_token is not None:
            body["new_token"] = message.new_token.decode("ascii")
        return body
    if isinstance(message, Ack):
        return {"t": "ack", "id": message.id, "ok": message.ok}
    if isinstance(message, Pong):
        return {"t": "pong", "id": message.id}
    if isinstance(message, Bye):
        return {"t": "bye"}
    if isinstance(message, Bound):
        return {"t": "bound", "token": message.token.decode("ascii"), "ip": message.ip,
                "port": message.port, "proven": message.proven}
    if isinstance(message, Left):
        return {"t": "left", "token": message.token.decode("ascii"),
                "reason": message.reason.value}
    if isinstance(message, Closed):
        return {"t": "closed", "room": message.room, "reason": message.reason}
    return {"t": "stats", **message.as_dict()}


def encode(message: Message) -> bytes:
    """One framed message, ready to write to the pipe."""
    body = orjson.dumps(_body(message))
    return FRAME_HEADER.pack(len(body)) + body


# --- decoding -------------------------------------------------------------------------------
class _Fields:
    """Typed reads from one decoded body; any mismatch is an ``IpcError``."""

    __slots__ = ("body", "kind")

    def __init__(self, body: Mapping[str, Any], kind: str) -> None:
        self.body = body
        self.kind = kind

    def _get(self, key: str, types: tuple[type, ...], what: str) -> Any:
        value = self.body.get(key)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise IpcError(f"{self.kind}: {key} must be {what}, got {value!r}")
        return value

    def integer(self, key: str) -> int:
        value: int = self._get(key, (int,), "an integer")
        return value

    def number(self, key: str) -> float:
        value: int | float = self._get(key, (int, float), "a number")
        return float(value)

    def text(self, key: str) -> str:
        value: str = self._get(key, (str,), "a string")
        return value

    def flag(self, key: str) -> bool:
        value: bool = self._get(key, (bool,), "true or false")
        return value

    def token(self, key: str) -> bytes:
        text = self.text(key)
        if not text.isascii():
            raise IpcError(f"{self.kind}: {key} must be ASCII")
        return text.encode("ascii")

    def table(self, key: str) -> dict[str, int]:
        value = self._get(key, (dict,), "an object")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
            raise IpcError(f"{self.kind}: {key} must map names to integers")
        return dict(value)

    def section(self, key: str) -> _Fields:
        return _Fields(self._get(key, (dict,), "an object"), f"{self.kind}.{key}")


def _counters(f: _Fields) -> Counters:
    return Counters(f.integer("received"), f.integer("relayed"), f.table("drops"),
                    f.table("evictions"))


def _settings(f: _Fields) -> WorkerSettings:
    return WorkerSettings(
        inactivity_timeout=f.number("inactivity_timeout"),
        max_send_failures=f.integer("max_send_failures"), chat_rate=f.number("chat_rate"),
        chat_burst=f.integer("chat_burst"), max_stage1_clients=f.integer("max_stage1_clients"),
        log_level=f.text("log_level"), log_format=f.text("log_format"),
        realtime_priority=f.integer("realtime_priority"), sendmmsg=f.flag("sendmmsg"),
        hot_path=f.text("hot_path"), history_messages=f.integer("history_messages"),
        history_bytes=f.integer("history_bytes"), history_age=f.number("history_age"),
        history_worker_bytes=f.integer("history_worker_bytes"))


def _member(f: _Fields) -> AddMember:
    raw_addr = f.body.get("addr")
    addr: Addr | None = None
    if raw_addr is not None:
        if (not isinstance(raw_addr, list) or len(raw_addr) != 2
                or not isinstance(raw_addr[0], str) or not isinstance(raw_addr[1], int)
                or isinstance(raw_addr[1], bool)):
            raise IpcError(f"member: addr must be [ip, port] or null, got {raw_addr!r}")
        addr = (raw_addr[0], raw_addr[1])
    try:
        framing = Framing(f.text("framing"))
    except ValueError:
        raise IpcError(f"member: unknown framing {f.body.get('framing')!r}") from None
    raw_keys = f.body.get("keys")
    try:
        keys = None if raw_keys is None else decode_public_keys(raw_keys)
    except BadKeys as exc:
        raise IpcError(f"member: {exc}") from None
    return AddMember(f.integer("id"), f.text("room"), f.token("token"), f.text("user"),
                     f.text("ip"), framing, f.flag("host"), addr, f.flag("announced"),
                     f.flag("proven"), f.flag("e2e"), keys)


def _left(f: _Fields) -> Left:
    try:
        reason = Reason(f.text("reason"))
    except ValueError:
        raise IpcError(f"left: unknown reason {f.body.get('reason')!r}") from None
    return Left(f.token("token"), reason)


def _stats(f: _Fields) -> Stats:
    stage1 = f.section("stage1")
    return Stats(f.integer("worker"), f.integer("pid"), f.flag("sendmmsg"), f.integer("forwarded"),
                 f.integer("rooms"), f.integer("members"), f.integer("send_failures"), _counters(f),
                 stage1.integer("clients"), _counters(stage1), f.text("hot_path"))


_DECODERS: Final[dict[str, Callable[[_Fields], Message]]] = {
    "member": _member,
    "register": lambda f: Register(f.token("token"), f.integer("port")),
    "start": lambda f: Start(),
    "ping": lambda f: Ping(f.integer("id")),
    "config": lambda f: Configure(_settings(f.section("settings"))),
    "shutdown": lambda f: Shutdown(),
    "close": lambda f: CloseRoom(f.text("room"), f.text("reason")),
    "rebind": lambda f: Rebind(f.integer("id"), f.token("token"), f.text("ip"),
                               f.token("new_token") if "new_token" in f.body else None),
    "ack": lambda f: Ack(f.integer("id"), f.flag("ok")),
    "pong": lambda f: Pong(f.integer("id")),
    "bye": lambda f: Bye(),
    "bound": lambda f: Bound(f.token("token"), f.text("ip"), f.integer("port"),
                             f.flag("proven")),
    "left": _left,
    "closed": lambda f: Closed(f.text("room"), f.text("reason")),
    "stats": _stats,
}


def decode_body(body: bytes) -> Message:
    """One frame body (without its length header) as its typed message."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IpcError(str(exc)) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise IpcError("a message must be an object with a string 't'")
    decoder = _DECODERS.get(obj["t"])
    if decoder is None:
        raise IpcError(f"unknown message {obj['t']!r}")
    return decoder(_Fields(obj, obj["t"]))


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the whole messages now available."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes; return every whole message now available, in order."""
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        size = len(buf)
        while size - pos >= 4:
            (length,) = FRAME_HEADER.unpack_from(buf, pos)
            if not 0 <= length <= MAX_FRAME_BYTES:
                raise IpcError(f"frame length {length}")
            end = pos + 4 + length
            if end > size:
                break
            out.append(decode_body(bytes(buf[pos + 4 : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out
