"""Messages between ``ocm-control`` and its relay workers (pure: no I/O).

Transport: one duplex ``multiprocessing.Pipe`` per worker (a Unix stream socketpair).
Each message is a frame in ``multiprocessing.Connection``'s own format, a 4-byte signed
big-endian length then the body, so either end may also use ``send_bytes``/``recv_bytes``.
The body is an orjson object whose ``"t"`` names the message.

Commands, control -> worker:
  member    {id, room, token, user, ip, framing, host, addr|null, announced, proven}
            add a member (``host`` creates the room); answered by ``ack {id, ok}``.
            Re-seeding a restarted worker sends the same with ``addr``, ``announced`` and
            ``proven`` (a datagram came from ``addr``: it is not on trial, protocol.md §4 (j)).
  register  {token, port}          the 2-byte UDP port registration of §1.4
  start     {}                     seeding done: start reading the UDP socket(s)
  ping      {id}                   answered by ``pong {id}`` from the event loop
  config    {inactivity_timeout, max_send_failures, ...}   live-reloadable settings
  shutdown  {}                     send ``closed`` to every member, answer ``bye``, exit

Events, worker -> control:
  ack {id, ok}, pong {id}, bye {}
  bound     {token, ip, port, proven}   a member's address became known or changed, or
                                   was proven (a datagram came from it)
  left      {token, reason}        a member is gone (exit, inactive, send_failures)
  closed    {room, reason}         a room closed (host left); all its tokens are dead
  stats     {...counters}          once a second
"""

from __future__ import annotations

import struct
from typing import Any, Final

import orjson

FRAME_HEADER: Final = struct.Struct("!i")
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""A single pipe message; re-seeding is sent member by member, so real frames are tiny."""

Message = dict[str, Any]


class IpcError(Exception):
    """A pipe frame is malformed (a bug or a corrupted pipe: the peer is restarted)."""


def encode(message: Message) -> bytes:
    """One framed message, ready to write to the pipe."""
    body = orjson.dumps(message)
    return FRAME_HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` then iterate ``messages()``."""

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
            try:
                message = orjson.loads(bytes(buf[pos + 4 : end]))
            except orjson.JSONDecodeError as exc:
                raise IpcError(str(exc)) from None
            if not isinstance(message, dict) or not isinstance(message.get("t"), str):
                raise IpcError("a message must be an object with a string 't'")
            out.append(message)
            pos = end
        if pos:
            del buf[:pos]
        return out
