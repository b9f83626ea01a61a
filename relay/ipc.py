"""Messages between ``ocm-control`` and its relay workers (pure: no I/O).

One frozen slotted dataclass per message, declared once: the encoder and the decoder follow
from its fields (runtime/records.py). ``encode(message) -> bytes`` and
``FrameDecoder.feed(bytes) -> list[Message]`` are the only way in and out of the pipe, so
both ends agree on every field and its type. A frame that is not one of these messages,
lacks a field, has one more, or has a field of the wrong type raises ``IpcError``.

Transport: one duplex ``multiprocessing.Pipe`` per worker (a Unix stream socketpair).
Each message is a frame in ``multiprocessing.Connection``'s own format, a 4-byte signed
big-endian length then the body, so either end may also use ``send_bytes``/``recv_bytes``.
The body is an orjson object whose ``"t"`` names the message (the tags below), with one
key per field; a nested dataclass is a nested object, a token is ASCII text.

Commands, control -> worker:
  member    ``AddMember``  add a member (``host`` creates the room); answered by ``Ack``.
            Re-seeding a restarted worker sends the same with ``addr``, ``announced``
            and ``proven`` (a datagram came from ``addr``: it is not on trial,
            docs/protocol.md §4 (j)), and a fresh ``placement`` nonce for a member with
            a datagram key (wire/dgmac.py).
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import orjson

from runtime.records import Converter, RecordCodec, RecordError, Shape
from wire.codes import Framing, Reason
from wire.dgmac import DatagramKey
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
    addr: Annotated[Addr, Shape("[ip, port]")] | None = None
    announced: bool = False
    proven: bool = False
    e2e: bool = False
    """The room is encrypted (docs/e2e.md §3): read by the worker when ``host`` creates it."""
    keys: PublicKeys | None = None
    """The member's public keys, only for its ``joined`` notice in an encrypted room."""
    datagram_key: DatagramKey | None = None
    """Joined over TLS: the key of its datagrams' MAC trailer (wire/dgmac.py)."""
    placement: DatagramKey | None = None
    """Re-seeding a member with a ``datagram_key``: a fresh random nonce; the worker then
    uses ``wire.dgmac.placement_key(datagram_key, placement)`` and tells the member."""


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
    datagram_key: DatagramKey | None = None
    """A resume: the member's datagram key from now on (None: its datagrams go unsealed),
    given by the connection the resume came over; its replay window starts afresh."""
    seq: int | None = None
    """Cluster relay of a member with a datagram key: the ``Seq`` of a datagram whose tag
    control checked; the worker rebinds only if its replay window would accept it (Ack
    false otherwise)."""


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
        """The plain form for the log: chat counters at the top, Stage 1's (with its
        ``clients``) under ``"stage1"``."""
        out = _CODEC.to_body(self)
        del out["t"]
        chat, stage1, clients = out.pop("chat"), out.pop("stage1"), out.pop("stage1_clients")
        return {**out, **chat, "stage1": {"clients": clients, **stage1}}


Command = AddMember | Register | Start | Ping | Configure | Shutdown | CloseRoom | Rebind
Event = Ack | Pong | Bye | Bound | Left | Closed | Stats
Message = Command | Event


# --- encoding and decoding -------------------------------------------------------------------
_CODEC: Final[RecordCodec[Message]] = RecordCodec(
    {"member": AddMember, "register": Register, "start": Start, "ping": Ping,
     "config": Configure, "shutdown": Shutdown, "close": CloseRoom, "rebind": Rebind,
     "ack": Ack, "pong": Pong, "bye": Bye, "bound": Bound, "left": Left, "closed": Closed,
     "stats": Stats},
    converters={PublicKeys: Converter(PublicKeys.to_json, decode_public_keys, (BadKeys,)),
                DatagramKey: Converter(DatagramKey.to_json, DatagramKey.from_json)})


def encode(message: Message) -> bytes:
    """One framed message, ready to write to the pipe."""
    body = orjson.dumps(_CODEC.to_body(message))
    return FRAME_HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> Message:
    """One frame body (without its length header) as its typed message."""
    try:
        return _CODEC.from_body(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise IpcError(str(exc)) from None
    except RecordError as exc:
        raise IpcError(str(exc)) from None


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
