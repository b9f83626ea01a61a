"""Joining a room over TCRP on the running asyncio loop (docs/protocol.md §1).

``join_room_async(...)`` is ``client.session.join_room`` without blocking: the same
``wire.tcrp_client.ClientExchange`` and request (``ocm1`` framing), optionally inside TLS
(``tls``: a context from ``client.session.client_tls_context``), the same State 1 /
State 2 reading, the same registration of a UDP socket bound to the IP the token is
bound to, the same ``Joined``, ``JoinRefused`` and ``JoinFailed`` with the same texts;
the overall timeout is an ``asyncio.timeout``. A window can await it and stay
responsive, and cancelling it closes both sockets at once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from client.session import (
    DEFAULT_TIMEOUT_S,
    RECV_CHUNK_BYTES,
    Addr,
    Joined,
    JoinFailed,
    TcrpTarget,
    _describe_os_error,
    answer_so_far,
    finish_join,
    request_framing,
)
from wire.codes import Operation
from wire.e2e import PublicKeys
from wire.limits import MAX_MEMBERS_RESPONSE_BYTES
from wire.tcrp import Complete, Response
from wire.tcrp_client import ClientExchange


async def resolve_async(host: str, port: int) -> tuple[socket.AddressFamily, Addr]:
    """The first address of ``host``, looked up on the loop; ``JoinFailed`` if none."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise JoinFailed(f"cannot resolve server name {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


async def join_room_async(
    host: str,
    tcp_port: int,
    operation: Operation,
    room: str,
    username: str,
    password: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    tls: ssl.SSLContext | None = None,
    keys: PublicKeys | None = None,
    e2e: bool = False,
    reliable: bool = False,
) -> Joined:
    """Create or join ``room`` as ``username``; see the module docstring. With ``tls`` the
    server's certificate must verify for ``host`` (``JoinFailed`` saying so otherwise).
    ``keys`` and ``e2e`` as in ``join_room`` (an encrypted room, docs/e2e.md §2.1)."""
    loop = asyncio.get_running_loop()
    where = f"{host}:{tcp_port}"
    # an encrypted room's reply lists its members (§2.2)
    exchange = ClientExchange(MAX_MEMBERS_RESPONSE_BYTES)
    request = exchange.send_request(operation, room, username, password,
                                    request_framing(reliable, e2e), keys=keys, e2e=e2e)
    tcp: socket.socket | None = None
    writer: asyncio.StreamWriter | None = None
    udp: socket.socket | None = None
    try:
        try:
            async with asyncio.timeout(timeout):
                family, addr = await resolve_async(host, tcp_port)
                tcp = socket.socket(family, socket.SOCK_STREAM)
                tcp.setblocking(False)
                await loop.sock_connect(tcp, addr)
                local_ip = tcp.getsockname()[0]
                udp = socket.socket(family, socket.SOCK_DGRAM)
                udp.bind((local_ip, 0))
                reader, writer = await asyncio.open_connection(
                    sock=tcp, ssl=tls, server_hostname=host if tls is not None else None)
                writer.write(request)
                await writer.drain()
                response, complete = await _read_answer(reader, exchange, where)
        except TimeoutError:
            raise JoinFailed(
                f"the server at {where} did not answer within {timeout:g} s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise JoinFailed(f"the server at {where} has a TLS certificate that cannot be "
                             f"verified ({exc.verify_message})") from None
        except ssl.SSLError as exc:
            raise JoinFailed(f"TLS with the server at {where} failed ({exc.reason or exc}); "
                             "is it the TLS port?") from None
        except OSError as exc:
            if tcp is None:
                raise JoinFailed(f"cannot open a socket: {_describe_os_error(exc)}") from None
            hint = "; is ocm-control running there?" if isinstance(
                exc, ConnectionRefusedError) else ""
            raise JoinFailed(
                f"cannot reach the server at {where} ({_describe_os_error(exc)}){hint}"
            ) from None
        assert response.details is not None and udp is not None
        # Best effort (§1.4): the first keepalive binds our address too.
        writer.write(exchange.send_registration(udp.getsockname()[1]))
    except BaseException:
        if udp is not None:
            udp.close()
        raise
    finally:
        if writer is not None:
            writer.close()  # closes tcp with the transport
        elif tcp is not None:
            tcp.close()
    return finish_join(room, username, complete, response.details,
                       (addr[0], response.details.udp_port), udp,
                       TcrpTarget(host, tcp_port, tls, timeout), e2e)


async def _read_answer(reader: asyncio.StreamReader, exchange: ClientExchange, where: str
                       ) -> tuple[Response, Complete]:
    """Read State 1 then State 2 (``answer_so_far``); the caller bounds the wait."""
    while (answer := answer_so_far(exchange, where)) is None:
        try:
            data = await reader.read(RECV_CHUNK_BYTES)
        except ConnectionResetError:
            data = b""  # §1.1: a reset after an answer is a close
        exchange.receive_data(data)
    return answer
