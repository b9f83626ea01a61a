"""Joining a room over TCRP on the running asyncio loop (docs/protocol.md §1).

``join_room_async(target, request)`` is ``client.session.join_room`` without blocking: a
second thin driver of the same ``client.joinflow.JoinFlow`` (the same request, exchange,
registration, ``Joined``, ``JoinRefused`` and ``JoinFailed`` texts); the overall timeout is
an ``asyncio.timeout``. A window can await it and stay responsive, and cancelling it
closes both sockets at once.
"""

from __future__ import annotations

import asyncio
import socket

from client.joinflow import E2EFor, JoinFlow, KeysFor, TcrpTarget, certificate_probe_context
from client.session import RECV_CHUNK_BYTES, Addr, Joined, _joined
from wire.tcrp import Request


async def join_room_async(target: TcrpTarget, request: Request,
                          keys_for: KeysFor | None = None, local_ip: str | None = None,
                          udp_port: int | None = None,
                          e2e_for: E2EFor | None = None) -> Joined:
    """Create or join ``request.room`` at ``target``, as ``join_room`` does. ``local_ip``:
    join from this address (the token is bound to it); ``udp_port``: the UDP port to
    register instead of the returned socket's (a caller that sends from a socket of its
    own, as the loadgen's shared socket)."""
    loop = asyncio.get_running_loop()
    flow = JoinFlow(target, request, keys_for, e2e_for)
    flow.check_request()
    tcp: socket.socket | None = None
    writer: asyncio.StreamWriter | None = None
    udp: socket.socket | None = None
    try:
        try:
            async with asyncio.timeout(target.timeout):
                infos = await loop.getaddrinfo(target.host, target.port,
                                               type=socket.SOCK_STREAM)
                family, addr = infos[0][0], _addr(infos[0][4])
                flow.connecting()
                tcp = socket.socket(family, socket.SOCK_STREAM)
                tcp.setblocking(False)
                if local_ip is not None:
                    tcp.bind((local_ip, 0))
                await loop.sock_connect(tcp, addr)
                flow.connected()
                udp = socket.socket(family, socket.SOCK_DGRAM)
                udp.bind((tcp.getsockname()[0], 0))
                reader, writer = await asyncio.open_connection(
                    sock=tcp, ssl=target.tls,
                    server_hostname=target.host if target.tls is not None else None)
                ssl_object = writer.get_extra_info("ssl_object")
                flow.secured(ssl_object.getpeercert(binary_form=True)
                             if ssl_object is not None else None)
                writer.write(flow.request_bytes())
                await writer.drain()
                while (answer := flow.answer()) is None:
                    try:
                        chunk = await reader.read(RECV_CHUNK_BYTES)
                    except ConnectionResetError:
                        chunk = b""  # §1.1: a reset after an answer is a close
                    flow.receive(chunk)
        except (OSError, UnicodeError) as exc:
            raise flow.failed(exc, await _certificate(flow, exc)) from None
        # Best effort (§1.4): the first keepalive binds our address too.
        writer.write(flow.registration(udp.getsockname()[1] if udp_port is None else udp_port))
        return _joined(flow, flow.granted(answer, addr[0]), udp)
    except BaseException:
        if udp is not None:
            udp.close()
        raise
    finally:
        if writer is not None:
            writer.close()  # closes tcp with the transport
        elif tcp is not None:
            tcp.close()


def _addr(sockaddr: tuple[object, ...]) -> Addr:
    return str(sockaddr[0]), int(sockaddr[1])  # type: ignore[call-overload]


async def _certificate(flow: JoinFlow, exc: BaseException) -> bytes | None:
    """The server's certificate, unverified, when ``flow`` would name what it holds."""
    if not flow.wants_certificate(exc):
        return None
    target = flow.target
    try:
        async with asyncio.timeout(target.timeout):
            _, writer = await asyncio.open_connection(
                target.host, target.port, ssl=certificate_probe_context())
    except OSError:
        return None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return der if isinstance(der, bytes) else None
    finally:
        writer.close()
