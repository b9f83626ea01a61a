"""Joining a room over TCRP (docs/protocol.md §1), blocking, with one overall timeout.

``join_room(...)`` connects, sends one JSON request asking for ``ocm1`` framing, reads the
State 1 response and the State 2 token with ``wire.tcrp_client.ClientExchange``, then
registers a UDP socket bound to the same local IP (the token is bound to that IP, §1.4)
by sending its port as the 2 registration bytes. It returns a ``Joined`` (hand ``udp_sock`` to the
event loop) or raises ``JoinRefused`` (a status other than OK) or ``JoinFailed`` (the
server is unreachable, timed out, or spoke something that is not TCRP).
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from wire import errors
from wire.chat import encode_chat
from wire.codes import Framing, Operation, Status
from wire.e2e import MemberInfo, PublicKeys
from wire.limits import EXIT_COMMAND, MAX_MEMBERS_RESPONSE_BYTES
from wire.tcrp import (
    NEED_DATA,
    Complete,
    Details,
    FrameReader,
    Response,
    Role,
    encode_members_request,
)
from wire.tcrp_client import ClientExchange

Addr = tuple[str, int]

DEFAULT_TIMEOUT_S = 10.0
"""How long the whole TCRP exchange may take (the server's own default --tcp-timeout)."""
RECV_CHUNK_BYTES = 65536


class JoinFailed(Exception):
    """The exchange did not complete; ``str()`` is a one-line explanation."""


class NoEncryptedRooms(JoinFailed):
    """``e2e`` was asked and the server made a plain room (and the client left it)."""


class JoinRefused(Exception):
    """The server answered a status other than OK."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status!r}: {response.error}")
        self.status: Status | int = response.status
        self.error = response.error


@dataclass(frozen=True, slots=True)
class Joined:
    """A granted membership: what every chat datagram needs, and where to send it."""

    room_raw: bytes
    username: str
    token: bytes
    details: Details
    server: Addr  # (server IP, details.udp_port)
    udp_sock: socket.socket  # bound to the IP the token was issued to, non-blocking
    tcrp: TcrpTarget | None = None  # where to ask for the member list (/who)


@dataclass(frozen=True, slots=True)
class TcrpTarget:
    """The TCRP server as the user named it: ``where`` (``host:port`` as typed) is also
    the key under which member keys are pinned (docs/e2e.md §7.3)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    timeout: float = DEFAULT_TIMEOUT_S

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, Addr]:
    """The first address of ``host`` (TCP and UDP then use the same one); raise
    ``JoinFailed`` if the name does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise JoinFailed(f"cannot resolve server name {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or exc.__class__.__name__


def request_framing(reliable: bool, e2e: bool) -> Framing:
    """``ocm1r`` (room order and recovery, docs/protocol.md: what ocm-chat and ocm-gui
    ask for, ``reliable=True``) unless off or for a new encrypted room, which needs
    ``ocm1``; a server that does not number an encrypted
    room answers ``ocm1`` to a join asking for ``ocm1r``."""
    return Framing.OCM1R if reliable and not e2e else Framing.OCM1


def join_room(
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
    resume: str | None = None,
    source: str | None = None,
) -> Joined:
    """Create or join ``room`` as ``username``; see the module docstring. With ``tls``
    the TCRP exchange runs inside TLS, and the server's certificate must verify for
    ``host`` (``JoinFailed`` with a one-line reason otherwise). ``keys`` (our public
    identity) go with every request, so an encrypted room can be joined without a flag;
    ``e2e`` makes a created room encrypted (docs/e2e.md §2.1)."""
    family, addr = resolve(host, tcp_port)
    where = f"{host}:{tcp_port}"
    deadline = time.monotonic() + timeout
    # an encrypted room's reply lists its members (§2.2)
    exchange = ClientExchange(MAX_MEMBERS_RESPONSE_BYTES)
    request = exchange.send_request(operation, room, username, password,
                                    request_framing(reliable, e2e), keys=keys, e2e=e2e,
                                    resume=resume)
    try:
        tcp = socket.socket(family, socket.SOCK_STREAM)
        if source is not None:  # a resume from a given local address (tests, multi-homed)
            tcp.bind((source, 0))
    except OSError as exc:
        raise JoinFailed(f"cannot open a socket: {_describe_os_error(exc)}") from None
    udp: socket.socket | None = None
    try:
        try:
            tcp.settimeout(timeout)
            tcp.connect(addr)
            if tls is not None:
                tcp = _handshake(tls, tcp, host, where)
            local_ip = tcp.getsockname()[0]
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((local_ip, 0))
            tcp.sendall(request)
            response, complete = _read_answer(tcp, exchange, deadline, where)
        except TimeoutError:
            raise JoinFailed(
                f"the server at {where} did not answer within {timeout:g} s"
            ) from None
        except OSError as exc:
            hint = "; is ocm-control running there?" if isinstance(
                exc, ConnectionRefusedError) else ""
            raise JoinFailed(
                f"cannot reach the server at {where} ({_describe_os_error(exc)}){hint}"
            ) from None
        assert response.details is not None
        _register(tcp, udp, exchange)
    except BaseException:
        if udp is not None:
            udp.close()
        raise
    finally:
        tcp.close()
    return finish_join(room, username, complete, response.details, (addr[0],
                       response.details.udp_port), udp, TcrpTarget(host, tcp_port, tls, timeout),
                       e2e)


def finish_join(room: str, username: str, complete: Complete, details: Details,
                server_udp: Addr, udp: socket.socket, target: TcrpTarget, e2e: bool) -> Joined:
    """The ``Joined`` of a granted exchange (``join_room`` and ``join_room_async``).

    If ``e2e`` was asked and the server made a plain room (it has no encrypted rooms and
    ignored the flag), never chat in the clear by mistake: leave the room it made (as its
    host, this closes it), close ``udp`` and raise ``JoinFailed``."""
    if e2e and not details.e2e:
        try:
            udp.sendto(encode_chat(room.encode(), complete.token, EXIT_COMMAND.encode()),
                       server_udp)
        except OSError:
            pass
        udp.close()
        raise NoEncryptedRooms(f"the server at {target.where} made a plain room, not an encrypted "
                         "one (it does not support --e2e); left it")
    udp.setblocking(False)
    return Joined(room.encode(), username, complete.token, details, server_udp, udp, target)


def fetch_members(target: TcrpTarget, room_raw: bytes, token: bytes,
                  bind_ip: str | None = None) -> tuple[MemberInfo, ...]:
    """The room's member list (TCRP Operation 3, docs/e2e.md §2.4), blocking, from
    ``bind_ip`` (the token's IP). Raise ``JoinRefused`` on an error status, ``JoinFailed``
    if the exchange does not complete."""
    family, addr = resolve(target.host, target.port)
    where = target.where
    deadline = time.monotonic() + target.timeout
    try:
        with socket.socket(family, socket.SOCK_STREAM) as raw:
            if bind_ip is not None:
                raw.bind((bind_ip, 0))
            raw.settimeout(target.timeout)
            raw.connect(addr)
            tcp = raw if target.tls is None else _handshake(target.tls, raw, target.host, where)
            tcp.sendall(encode_members_request(room_raw, token))
            response = _read_members(tcp, deadline, where)
    except TimeoutError:
        raise JoinFailed(f"the server at {where} did not answer within "
                         f"{target.timeout:g} s") from None
    except OSError as exc:
        raise JoinFailed(f"cannot reach the server at {where} ({_describe_os_error(exc)})"
                         ) from None
    return response.members


def _read_members(tcp: socket.socket, deadline: float, where: str) -> Response:
    reader = FrameReader(Role.CLIENT, MAX_MEMBERS_RESPONSE_BYTES)
    while True:
        try:
            event = reader.next_event()
        except errors.ProtocolError as exc:
            raise JoinFailed(f"the server at {where} sent an invalid answer: {exc}") from None
        if isinstance(event, Response):
            if event.status != Status.OK:
                raise JoinRefused(event)
            return event
        if event is not NEED_DATA:
            raise JoinFailed(f"the server at {where} sent an unexpected frame")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        tcp.settimeout(left)
        data = tcp.recv(RECV_CHUNK_BYTES)
        if not data:
            raise JoinFailed(f"the server at {where} closed the connection before answering")
        reader.receive_data(data)


def client_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A context that verifies the server's certificate and name: against ``ca_file``
    (PEM) if given, else the system's CAs. Raises ``OSError`` if ``ca_file`` is unusable."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _handshake(tls: ssl.SSLContext, tcp: socket.socket, host: str, where: str
               ) -> ssl.SSLSocket:
    """Wrap the connected ``tcp`` in TLS; on a certificate that does not verify, raise
    ``JoinFailed`` saying so (a timeout or another ``OSError`` propagates)."""
    try:
        return tls.wrap_socket(tcp, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        raise JoinFailed(f"the server at {where} has a TLS certificate that cannot be "
                         f"verified ({exc.verify_message}); give its CA with --ca-file"
                         ) from None
    except ssl.SSLError as exc:
        raise JoinFailed(f"TLS with the server at {where} failed ({exc.reason or exc}); "
                         "is it the TLS port?") from None


def answer_so_far(exchange: ClientExchange, where: str) -> tuple[Response, Complete] | None:
    """The granted answer (State 1 and State 2) once ``exchange`` holds it whole, None while
    it needs more bytes; raises ``JoinRefused`` on an error status and ``JoinFailed`` on a
    premature close or an invalid answer. Shared by the blocking and asyncio joins, which
    differ only in how they read."""
    while True:
        try:
            event = exchange.next_event()
        except errors.PrematureClose:
            what = "the token" if exchange.response is not None else "answering"
            raise JoinFailed(
                f"the server at {where} closed the connection before {what}") from None
        except errors.ProtocolError as exc:
            raise JoinFailed(f"the server at {where} sent an invalid answer: {exc}") from None
        if event is NEED_DATA:
            return None
        if isinstance(event, Response):
            if event.status != Status.OK:
                raise JoinRefused(event)
        elif isinstance(event, Complete):
            assert exchange.response is not None
            return exchange.response, event


def _read_answer(tcp: socket.socket, exchange: ClientExchange, deadline: float, where: str
                 ) -> tuple[Response, Complete]:
    """Read State 1 then State 2 (``answer_so_far``) before ``deadline``."""
    while (answer := answer_so_far(exchange, where)) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        tcp.settimeout(left)
        try:
            data = tcp.recv(RECV_CHUNK_BYTES)
        except ConnectionResetError:
            data = b""  # §1.1: a reset after an answer is a close
        exchange.receive_data(data)
    return answer


def _register(tcp: socket.socket, udp: socket.socket, exchange: ClientExchange) -> None:
    """Send our UDP port as the 2 registration bytes (§1.4), so the server knows our
    address before the first datagram; best effort: the first keepalive binds it too."""
    port = udp.getsockname()[1]
    try:
        tcp.sendall(exchange.send_registration(port))
    except OSError:
        pass
