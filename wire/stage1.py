"""Stage 1 global chat datagrams (docs/protocol.md §3): ``UsernameLen(1) Username Message``."""

from __future__ import annotations

from dataclasses import dataclass

from wire import errors
from wire.limits import MAX_DATAGRAM_BYTES


@dataclass(frozen=True, slots=True)
class Stage1Datagram:
    username: bytes
    message: bytes


def encode_stage1(username: str, message: str) -> bytes:
    """Build a Stage 1 datagram; raise ``FieldOutOfRange`` if it cannot be sent."""
    raw = username.encode()
    if not 1 <= len(raw) <= 255:
        raise errors.FieldOutOfRange("username must be 1..255 bytes")
    data = bytes((len(raw),)) + raw + message.encode()
    if len(data) > MAX_DATAGRAM_BYTES:
        raise errors.FieldOutOfRange(f"datagram of {len(data)} bytes > {MAX_DATAGRAM_BYTES}")
    return data


def decode_stage1(data: bytes) -> Stage1Datagram:
    """Parse or raise exactly one ``RemoteProtocolError`` subclass (over 4096 bytes,
    length byte 0 or past the end, invalid UTF-8). An empty message is a keepalive."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise errors.DatagramTooLarge(f"{len(data)} bytes")
    if not data or data[0] == 0:
        raise errors.EmptyField("username length is 0")
    end = 1 + data[0]
    if end > len(data):
        raise errors.TruncatedDatagram("username past the end")
    username, message = data[1:end], data[end:]
    try:
        username.decode("utf-8")
        message.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.MessageNotUtf8() from None
    return Stage1Datagram(username, message)
