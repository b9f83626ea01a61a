"""A small blocking chat peer for integration tests, built on the wire codecs.

``join(server, op, room, user, ...)`` speaks TCRP and returns a ``Peer`` with its token,
details and a UDP socket; ``send``/``recv``/``expect`` move datagrams with timeouts.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from wire import errors
from wire.chat import FramedChat, Notice, decode_framed, encode_chat
from wire.codes import Framing, Operation, Status
from wire.e2e import PublicKeys
from wire.limits import MAX_MEMBERS_RESPONSE_BYTES
from wire.tcrp import NEED_DATA, Complete, Request, RequestBody, Response, _NeedData
from wire.tcrp_client import ClientExchange, ConnectionClosed

TIMEOUT_S = 10.0


class JoinRefused(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status!r}: {response.error}")
        self.response = response
        self.status = response.status


def tcrp_exchange(host: str, port: int, request: bytes, after: bytes = b"",
                  timeout: float = TIMEOUT_S, bind_ip: str = "127.0.0.1"
                  ) -> tuple[Response, Complete | None]:
    """Send one request from ``bind_ip``; read State 1 (and State 2 on OK); optionally
    send ``after``. Raises ``ConnectionError`` if the server closes without answering."""
    with socket.socket() as sock:
        sock.bind((bind_ip, 0))
        sock.settimeout(timeout)
        sock.connect((host, port))
        exchange = ClientExchange()
        sock.sendall(exchange.send_raw_request(request))
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = exchange.next_event()
            except errors.PrematureClose:
                if exchange.response is not None:
                    return exchange.response, None
                raise ConnectionError("server closed before answering") from None
            if event is NEED_DATA:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                exchange.receive_data(sock.recv(65536))
            elif isinstance(event, Response):
                if event.status != Status.OK:
                    return event, None
            elif isinstance(event, Complete):
                assert exchange.response is not None
                if after:
                    sock.sendall(after)
                return exchange.response, event


@dataclass
class Peer:
    host: str
    room: bytes
    user: str
    token: bytes
    details: object
    udp_port: int
    sock: socket.socket
    framing: Framing
    received: list[bytes] = field(default_factory=list)

    @property
    def addr(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def send(self, message: bytes | str) -> None:
        raw = message.encode() if isinstance(message, str) else message
        self.sock.sendto(encode_chat(self.room, self.token, raw), (self.host, self.udp_port))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, (self.host, self.udp_port))

    def recv(self, timeout: float = TIMEOUT_S) -> bytes:
        self.sock.settimeout(timeout)
        data, addr = self.sock.recvfrom(65536)
        assert addr == (self.host, self.udp_port), f"datagram from {addr}, not the chat port"
        self.received.append(data)
        return data

    def recv_text(self, timeout: float = TIMEOUT_S) -> str:
        return self.recv(timeout).decode()

    def recv_framed(self, timeout: float = TIMEOUT_S) -> FramedChat | Notice:
        return decode_framed(self.recv(timeout))

    def expect_nothing(self, timeout: float = 0.3) -> None:
        """Assert no datagram arrives within ``timeout`` (used only for negative checks,
        after a positive event has shown the server processed what came before)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected datagram {data!r}")

    def close(self) -> None:
        self.sock.close()


def _next(exchange: ClientExchange, udp: socket.socket
          ) -> Response | Complete | ConnectionClosed | _NeedData:
    try:
        return exchange.next_event()
    except errors.PrematureClose:
        udp.close()
        raise ConnectionError("closed") from None


def join(host: str, tcp_port: int, op: Operation, room: str, user: str,
         password: str | None = None, framing: Framing = Framing.PLAIN,
         bind_ip: str = "127.0.0.1", bind: str = "register",
         keys: PublicKeys | None = None, e2e: bool = False) -> Peer:
    """Create or join over TCRP from ``bind_ip``; bind the UDP socket to the same IP.

    ``bind`` says how the member's address becomes known: ``"register"`` sends the UDP
    port as 2 bytes after State 2 and waits for the server to close, so the worker has
    bound the address before this returns (the register command precedes any later
    join's command on the same pipe); ``"keepalive"`` sends an empty datagram;
    ``"none"`` leaves it to the caller's first datagram.
    """
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((bind_ip, 0))
    exchange = ClientExchange(MAX_MEMBERS_RESPONSE_BYTES)
    request = exchange.send_request(
        Request.of(op, room, RequestBody(user, password, framing=framing, keys=keys, e2e=e2e)))
    tcp = socket.socket()
    tcp.bind((bind_ip, 0))
    tcp.settimeout(TIMEOUT_S)
    tcp.connect((host, tcp_port))
    try:
        tcp.sendall(request)
        while (event := _next(exchange, udp)) is NEED_DATA or isinstance(event, Response):
            if event is NEED_DATA:
                exchange.receive_data(tcp.recv(65536))
            elif event.status != Status.OK:
                udp.close()
                raise JoinRefused(event)
        if bind == "register":
            tcp.sendall(exchange.send_registration(udp.getsockname()[1]))
            assert tcp.recv(1) == b"", "the server closes after the registration"
    finally:
        tcp.close()
    response, complete = exchange.response, exchange.complete
    assert response is not None and response.details is not None and complete is not None
    peer = Peer(host, room.encode(), user, complete.token, response.details,
                response.details.udp_port, udp, framing)
    if bind == "keepalive":
        peer.send(b"")
    return peer
