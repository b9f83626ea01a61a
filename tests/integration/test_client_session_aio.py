"""client.session_aio.join_room_async against a real ocm-control and stand-in servers."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from client.session import JoinFailed, JoinRefused, TcrpTarget, client_tls_context
from client.session_aio import join_room_async
from tests.integration.harness import Server, free_udp_port, start_server
from tests.integration.test_tls import make_pki, tls_port
from wire.codes import Operation, Status
from wire.tcrp import Request, RequestBody

H = "127.0.0.1"


def test_create_then_join_gives_bound_memberships(server: Server, room_name: str) -> None:
    async def scenario() -> None:
        host = await join_room_async(TcrpTarget(H, server.tcp_port),
            Request.of(Operation.CREATE, room_name, RequestBody("ann")))
        guest = await join_room_async(TcrpTarget(H, server.tcp_port),
            Request.of(Operation.JOIN, room_name, RequestBody("bob")))
        try:
            assert host.details.host and not guest.details.host
            assert guest.room_raw == room_name.encode() and guest.username == "bob"
            assert guest.server == (H, guest.details.udp_port)
            assert guest.udp_sock.getsockname()[0] == H
            assert guest.udp_sock.getblocking() is False
            assert len(guest.token) >= 22
        finally:
            host.udp_sock.close()
            guest.udp_sock.close()

    asyncio.run(scenario())


def test_refusal_carries_the_status(server: Server, room_name: str) -> None:
    with pytest.raises(JoinRefused) as refused:
        asyncio.run(join_room_async(TcrpTarget(H, server.tcp_port),
            Request.of(Operation.JOIN, room_name, RequestBody("cy"))))
    assert refused.value.status == Status.ROOM_NOT_FOUND


def test_nobody_listening_is_join_failed() -> None:
    port = free_udp_port()  # free for UDP; nobody listens on TCP there either
    refused = r"\(connection refused\); is ocm-control running there\?"
    with pytest.raises(JoinFailed, match=refused):
        asyncio.run(join_room_async(TcrpTarget(H, port),
            Request.of(Operation.CREATE, "r", RequestBody("dee"))))


class SilentServer:
    """Accepts one connection, reads the request and says nothing; ``received`` is set
    once the request arrived, ``closed`` once the client closed the connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server((H, 0))
        self.port = self.listener.getsockname()[1]
        self.received = threading.Event()
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(20)
        with conn:
            while conn.recv(4096):
                self.received.set()
        self.closed.set()


def test_silent_server_times_out_and_the_socket_is_closed() -> None:
    silent = SilentServer()
    with silent.listener, pytest.raises(JoinFailed, match=r"did not answer within 0\.3 s"):
        asyncio.run(join_room_async(TcrpTarget(H, silent.port, timeout=0.3),
            Request.of(Operation.CREATE, "r", RequestBody("eve"))))
    assert silent.received.is_set() and silent.closed.wait(10)


def test_cancelling_closes_the_connection_at_once() -> None:
    silent = SilentServer()

    async def scenario() -> None:
        task = asyncio.create_task(join_room_async(TcrpTarget(H, silent.port, timeout=30),
            Request.of(Operation.CREATE, "r", RequestBody("fay"))))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, silent.received.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with silent.listener:
        asyncio.run(scenario())
        assert silent.closed.wait(10), "the TCP connection was left open after cancelling"


def test_tls_join_verifies_the_certificate(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    with start_server("--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0",
                      workers=1) as srv:
        port = tls_port(srv)

        async def scenario() -> None:
            joined = await join_room_async(TcrpTarget(H, port, tls=client_tls_context(str(ca))),
                Request.of(Operation.CREATE, "secure", RequestBody("ann", "pw")))
            joined.udp_sock.close()
            assert joined.details.host
            with pytest.raises(JoinFailed, match=r"has a TLS certificate that comes from a CA "
                                                 r"this computer does not trust \("):
                await join_room_async(TcrpTarget(H, port, tls=client_tls_context()),
                    Request.of(Operation.JOIN, "secure",
                        RequestBody("bob", "pw")))  # the system's CAs
            with pytest.raises(JoinFailed, match=r"TLS with the server at .* failed .*: it may "
                                                 r"be its plain TCRP port"):
                await join_room_async(
                    TcrpTarget(H, srv.tcp_port, tls=client_tls_context(str(ca)), timeout=10),
                    Request.of(Operation.JOIN, "secure", RequestBody("bob", "pw")))

        asyncio.run(scenario())
