"""Many TCRP joins at once, each registering a chosen UDP port (for the abuse tests).

``join_all(tcp_port, requests, port)`` sends every ``(op, room, user)`` request with the
2-byte registration of ``port`` right behind it (docs/protocol.md §4 (d)) and waits for
the server to close each connection, so every registration has reached the relay worker
when it returns. Returns the tokens in request order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from wire.codes import Operation, Status
from wire.tcrp import (
    NEED_DATA,
    Complete,
    FrameReader,
    Request,
    RequestBody,
    Response,
    Role,
    encode_registration,
    encode_request,
)

H = "127.0.0.1"
TIMEOUT_S = 30.0
CONCURRENCY = 32


async def join_registering(tcp_port: int, op: Operation, room: str, user: str,
                           port: int) -> bytes:
    """One request with the registration of ``port`` behind it; the token."""
    reader, writer = await asyncio.open_connection(H, tcp_port)
    try:
        writer.write(encode_request(
            Request.of(op, room, RequestBody(user))) + encode_registration(port))
        frames = FrameReader(Role.CLIENT)
        while True:
            event = frames.next_event()
            if event is NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed before State 2")
                frames.receive_data(data)
            elif isinstance(event, Response):
                if event.status != Status.OK:
                    raise AssertionError(f"{op!r} {room!r} {user!r}: {event!r}")
            elif isinstance(event, Complete):
                await reader.read()  # the server closes once it has registered the port
                return event.token
    finally:
        writer.close()


def join_all(tcp_port: int, requests: Sequence[tuple[Operation, str, str]], port: int
             ) -> list[bytes]:
    """Every request, ``CONCURRENCY`` at a time; creates first so that joins find them."""

    async def run() -> list[bytes]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(op: Operation, room: str, user: str) -> bytes:
            async with gate:
                return await asyncio.wait_for(
                    join_registering(tcp_port, op, room, user, port), TIMEOUT_S)

        tokens: dict[int, bytes] = {}
        for phase in (Operation.CREATE, Operation.JOIN):
            batch = [i for i, r in enumerate(requests) if r[0] is phase]
            got = await asyncio.gather(*(one(*requests[i]) for i in batch))
            tokens.update(zip(batch, got, strict=True))
        return [tokens[i] for i in range(len(requests))]

    return asyncio.run(run())
