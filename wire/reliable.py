"""Reliable framed delivery (``"framing": "ocm1r"``): room order, recovery and resume.

Our extension of ``ocm1`` framing (docs/protocol.md). A member that asks for it gets every
room-ordered delivery numbered, can ask the relay for what it missed, and gets its own
messages acknowledged. Pure codecs, no I/O.

Client -> relay, the Message of a Stage 2 datagram (after room and token):

- ``01 | MsgId(4) | Text``: chat with a per-member message id (the relay relays an id once
  and acknowledges every copy);
- ``06 | MsgId(4) | Text``: the same, but the acknowledgement may wait (up to
  ``ACK_HOLD_S``) to ride in front of the next DATA to the sender (``06`` below);
- ``02 | Epoch(4) | (First(4) | Count(2))*n``, 1 <= n <= ``NACK_MAX_RANGES``: resend these
  sequence numbers of the room;
- anything else, empty included, means what it means for ``ocm1`` (keepalive, ``/exit``,
  chat without an id).

In an encrypted room (docs/e2e.md §3) the SEND's text is the Message of kind ``01``
(``01 | MsgId(4) | 01 | GroupChat``), opaque to the relay, and the NACK starts with ``05``
(``02`` is an envelope there).

Relay -> client:

- ``01 | Epoch(4) | Seq(4) | ocm1 delivery``: a room-ordered delivery (chat, or ``00`` +
  JSON for ``joined``/``left``);
- ``02 | Epoch(4) | MsgId(4) | Seq(4)``: your message ``MsgId`` is the room's ``Seq``
  (``Seq`` 0: refused, e.g. too long; an ``error`` notice says why);
- ``03 | Epoch(4) | First(4) | Count(2)``: these sequence numbers cannot be recovered;
- ``04 | Epoch(4) | Start(4) | Latest(4)``: the answer to a keepalive: the member's first
  number (the one after its own ``joined``) and the room's latest one;
- ``00 | JSON``: a notice outside the room order (``error``, ``closed``, ``disconnected``);
- ``05 | ocm1 delivery``: encrypted rooms only, an addressed delivery (an Olm envelope or a
  key request, ``UsernameLen Username Kind Body``) outside the room order;
- ``06 | MsgId(4) | Seq(4) | DATA``: a held acknowledgement (of a ``06`` SEND) carried in
  front of a DATA, whose epoch it shares: the ``02`` ACK, then the DATA.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from wire import errors
from wire.limits import MAX_DELIVERY_BYTES, NACK_MAX_RANGE_COUNT, NACK_MAX_RANGES


class Up(enum.IntEnum):
    """The first byte of a reliable member's Message (client -> relay)."""

    SEND = 1  # chat with a message id
    NACK = 2  # resend these sequence numbers
    E2E_NACK = 5  # the same NACK in an encrypted room, where 02 is an envelope
    SEND_HELD = 6  # a SEND whose acknowledgement may wait for a DATA to carry it


class Down(enum.IntEnum):
    """The first byte of a delivery to a reliable member (relay -> client)."""

    NOTICE = 0  # 00 + JSON, outside the room order
    DATA = 1  # a numbered delivery of the room
    ACK = 2  # your message id is this sequence number
    LOST = 3  # these sequence numbers are gone from the history
    SYNC = 4  # the answer to a keepalive: where this member starts, the latest number
    DIRECT = 5  # encrypted rooms: an addressed delivery (``ocm1``), outside the room order
    CARRIED = 6  # a held ACK (MsgId, Seq) in front of a DATA


SEND_HEADER: Final = struct.Struct("!BI")
"""Kind, MsgId."""
DATA_HEADER: Final = struct.Struct("!BII")
"""Kind, Epoch, Seq: 9 bytes before the ``ocm1`` delivery."""
ACK: Final = struct.Struct("!BIII")
"""Kind, Epoch, MsgId, Seq."""
CARRIED: Final = struct.Struct("!BII")
"""Kind, MsgId, Seq: 9 bytes in front of a DATA (the ACK takes the DATA's epoch)."""
LOST: Final = struct.Struct("!BIIH")
"""Kind, Epoch, First, Count."""
SYNC: Final = struct.Struct("!BIII")
"""Kind, Epoch, Start, Latest."""
NACK_HEADER: Final = struct.Struct("!BI")
"""Kind, Epoch; ranges follow."""
RANGE: Final = struct.Struct("!IH")
"""First, Count."""
MAX_SEQ: Final = 0xFFFFFFFF
"""Sequence numbers start at 1 and do not wrap within an epoch (a room that reaches it
closes; at 10 messages/s that is 13 years)."""


@dataclass(frozen=True, slots=True)
class Data:
    epoch: int
    seq: int
    body: bytes
    """The ``ocm1`` delivery: ``UsernameLen Username Message`` or ``00`` + JSON."""


@dataclass(frozen=True, slots=True)
class Ack:
    epoch: int
    msg_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Lost:
    epoch: int
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Sync:
    epoch: int
    start: int
    latest: int


@dataclass(frozen=True, slots=True)
class Notice:
    body: bytes
    """The ``ocm1`` notice, ``00`` + JSON."""


@dataclass(frozen=True, slots=True)
class Direct:
    body: bytes
    """Encrypted rooms: an addressed ``ocm1`` delivery (``UsernameLen Username Kind Body``,
    an envelope or key request), outside the room order."""


@dataclass(frozen=True, slots=True)
class Carried:
    """A held acknowledgement and the DATA that carried it: handle ``ack``, then ``data``."""

    ack: Ack
    data: Data


Delivery = Data | Ack | Lost | Sync | Notice | Direct | Carried


def encode_send(msg_id: int, text: bytes, held: bool = False) -> bytes:
    """A SEND; ``held``: its acknowledgement may wait for a DATA to carry it (``06``)."""
    return SEND_HEADER.pack(Up.SEND_HELD if held else Up.SEND, msg_id) + text


def encode_carried(msg_id: int, seq: int, datagram: bytes) -> bytes:
    """The held acknowledgement of ``msg_id`` (room ``seq``) in front of a DATA datagram."""
    return CARRIED.pack(Down.CARRIED, msg_id, seq) + datagram


def encode_nack(epoch: int, ranges: list[tuple[int, int]], kind: Up = Up.NACK) -> bytes:
    """A NACK for ``ranges`` of ``(first, count)`` (``kind`` ``Up.E2E_NACK`` in an encrypted
    room); raise ``FieldOutOfRange`` past the limits (1..``NACK_MAX_RANGES`` ranges of
    1..``NACK_MAX_RANGE_COUNT``)."""
    if not 1 <= len(ranges) <= NACK_MAX_RANGES:
        raise errors.FieldOutOfRange(f"{len(ranges)} ranges")
    out = [NACK_HEADER.pack(kind, epoch)]
    for first, count in ranges:
        if not (1 <= first <= MAX_SEQ and 1 <= count <= NACK_MAX_RANGE_COUNT):
            raise errors.FieldOutOfRange(f"range {first}+{count}")
        out.append(RANGE.pack(first, count))
    return b"".join(out)


def decode_nack(message: bytes) -> tuple[int, list[tuple[int, int]]]:
    """``(epoch, ranges)`` of a NACK Message, or raise a ``RemoteProtocolError``."""
    size = len(message)
    if size < NACK_HEADER.size + RANGE.size or (size - NACK_HEADER.size) % RANGE.size:
        raise errors.TruncatedDatagram(f"NACK of {size} bytes")
    n = (size - NACK_HEADER.size) // RANGE.size
    if n > NACK_MAX_RANGES:
        raise errors.FieldOutOfRange(f"NACK of {n} ranges")
    _, epoch = NACK_HEADER.unpack_from(message)
    ranges = [RANGE.unpack_from(message, NACK_HEADER.size + i * RANGE.size) for i in range(n)]
    for first, count in ranges:
        if first == 0 or count == 0 or count > NACK_MAX_RANGE_COUNT:
            raise errors.FieldOutOfRange(f"NACK range {first}+{count}")
    return epoch, ranges


def encode_data(epoch: int, seq: int, body: bytes) -> bytes:
    return DATA_HEADER.pack(Down.DATA, epoch, seq) + body


def encode_ack(epoch: int, msg_id: int, seq: int) -> bytes:
    return ACK.pack(Down.ACK, epoch, msg_id, seq)


def encode_lost(epoch: int, first: int, count: int) -> bytes:
    return LOST.pack(Down.LOST, epoch, first, count)


def encode_sync(epoch: int, start: int, latest: int) -> bytes:
    return SYNC.pack(Down.SYNC, epoch, start, latest)


def decode_delivery(data: bytes) -> Delivery:
    """One delivery to a reliable member, or raise a ``RemoteProtocolError``."""
    size = len(data)
    if size > MAX_DELIVERY_BYTES:
        raise errors.DatagramTooLarge(f"{size} bytes")
    if not size:
        raise errors.TruncatedDatagram("empty delivery")
    kind = data[0]
    if kind == Down.NOTICE:
        return Notice(data)
    if kind == Down.DATA:
        if size <= DATA_HEADER.size:
            raise errors.TruncatedDatagram(f"DATA of {size} bytes")
        _, epoch, seq = DATA_HEADER.unpack_from(data)
        return Data(epoch, seq, data[DATA_HEADER.size:])
    if kind == Down.ACK and size == ACK.size:
        _, epoch, msg_id, seq = ACK.unpack(data)
        return Ack(epoch, msg_id, seq)
    if kind == Down.SYNC and size == SYNC.size:
        _, epoch, start, latest = SYNC.unpack(data)
        return Sync(epoch, start, latest)
    if kind == Down.LOST and size == LOST.size:
        _, epoch, first, count = LOST.unpack(data)
        return Lost(epoch, first, count)
    if kind == Down.DIRECT and size > 1:
        return Direct(data[1:])
    if kind == Down.CARRIED and size > CARRIED.size + DATA_HEADER.size \
            and data[CARRIED.size] == Down.DATA:
        _, msg_id, ack_seq = CARRIED.unpack_from(data)
        _, epoch, seq = DATA_HEADER.unpack_from(data, CARRIED.size)
        return Carried(Ack(epoch, msg_id, ack_seq),
                       Data(epoch, seq, data[CARRIED.size + DATA_HEADER.size:]))
    raise errors.TruncatedDatagram(f"delivery kind {kind} of {size} bytes")
