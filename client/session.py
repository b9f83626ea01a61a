"""Joining a room over TCRP (docs/protocol.md §1), blocking, with one overall timeout.

``join_room(target, request)`` drives ``client.joinflow.JoinFlow`` over a blocking socket:
it connects (inside TLS with ``target.tls``), sends the request asking for ``ocm1``
framing, reads the State 1 response and the State 2 token, then registers a UDP socket
bound to the same local IP (the token is bound to that IP, §1.4) by sending its port as
the 2 registration bytes. It returns a ``Joined`` (hand ``udp_sock`` to the event loop) or
raises ``JoinRefused`` (a status other than OK) or ``JoinFailed`` (the server is
unreachable, timed out, failed TLS, or spoke something that is not TCRP), worded by the
flow.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from client.joinflow import (
    DEFAULT_TIMEOUT_S,
    Addr,
    E2EFor,
    Granted,
    JoinFailed,
    JoinFlow,
    JoinRefused,
    KeysFor,
    NoEncryptedRooms,
    Stage,
    TcrpTarget,
    certificate_probe_context,
    check_pin,
    client_tls_context,
    failure,
)
from wire import errors
from wire.codes import Status
from wire.dgmac import Sealer
from wire.e2e import MemberInfo
from wire.limits import MAX_MEMBERS_RESPONSE_BYTES
from wire.tcrp import (
    NEED_DATA,
    Details,
    FrameReader,
    Request,
    Response,
    Role,
    encode_members_request,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Addr",
    "JoinFailed",
    "JoinRefused",
    "Joined",
    "NoEncryptedRooms",
    "TcrpTarget",
    "client_tls_context",
    "describe_connection",
    "fetch_members",
    "join_room",
    "resolve",
]

RECV_CHUNK_BYTES = 65536


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
    server_identity: str = ""
    """The server's TLS key fingerprint (pinned or verified), else its ``host:port``:
    what identifies it to others (``client.known_servers.server_identity``)."""
    pinned_now: bool = False
    """The server's key was pinned on first use by this join."""
    sealer: Sealer | None = None
    """Joined over TLS: adds the MAC trailer to every datagram (wire/dgmac.py)."""

    def seal(self, data: bytes) -> bytes:
        """``data`` as it must be sent: with the next MAC trailer when the server gave
        this membership a datagram key, else unchanged."""
        return data if self.sealer is None else self.sealer.seal(data)


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, Addr]:
    """The first address of ``host`` (TCP and UDP then use the same one); raise
    ``JoinFailed`` if the name does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise failure(TcrpTarget(host, port), Stage.RESOLVE, exc) from None
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def join_room(target: TcrpTarget, request: Request, source: str | None = None,
              keys_for: KeysFor | None = None, e2e_for: E2EFor | None = None) -> Joined:
    """Create or join ``request.room`` at ``target``; see the module docstring. With
    ``target.tls`` the server's certificate must verify for ``target.host``. The request's
    ``keys`` (our public identity) let an encrypted room be joined without a flag; its
    ``e2e`` makes a created room encrypted (docs/e2e.md §2.1). ``source``: the local IP
    to connect from (a resume from a given address; else the system chooses).
    ``keys_for``: chooses the request's ``keys`` once the server's TLS key is known
    (``client.e2e_link.IdentityChoice``); ``e2e_for`` whether the join must be of an
    encrypted room, once that key is known (``IdentityChoice.seen_encrypted``)."""
    flow = JoinFlow(target, request, keys_for, e2e_for)
    flow.check_request()
    family, addr = resolve(target.host, target.port)
    deadline = time.monotonic() + target.timeout
    tcp: socket.socket | None = None
    udp: socket.socket | None = None
    try:
        try:
            tcp = socket.socket(family, socket.SOCK_STREAM)
            if source is not None:
                tcp.bind((source, 0))
            flow.connecting()
            tcp.settimeout(target.timeout)
            tcp.connect(addr)
            flow.connected()
            if target.tls is not None:
                tcp = target.tls.wrap_socket(tcp, server_hostname=target.host)
                flow.secured(tcp.getpeercert(binary_form=True))
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((tcp.getsockname()[0], 0))
            tcp.sendall(flow.request_bytes())
            while (answer := flow.answer()) is None:
                flow.receive(_recv(tcp, deadline))
        except OSError as exc:
            raise flow.failed(exc, _certificate(flow, exc, addr, deadline)) from None
        try:  # best effort (§1.4): the first keepalive binds our address too
            tcp.sendall(flow.registration(udp.getsockname()[1]))
        except OSError:
            pass
        return _joined(flow, flow.granted(answer, addr[0]), udp)
    except BaseException:
        if udp is not None:
            udp.close()
        raise
    finally:
        if tcp is not None:
            tcp.close()


def _recv(tcp: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    tcp.settimeout(left)
    try:
        return tcp.recv(RECV_CHUNK_BYTES)
    except ConnectionResetError:
        return b""  # §1.1: a reset after an answer is a close


def _certificate(flow: JoinFlow, exc: OSError, addr: Addr, deadline: float) -> bytes | None:
    """The server's certificate, unverified, when ``flow`` would name what it holds."""
    if not flow.wants_certificate(exc):
        return None
    try:
        with socket.create_connection(addr, max(0.1, deadline - time.monotonic())) as raw, \
                certificate_probe_context().wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)
    except OSError:
        return None


def _joined(flow: JoinFlow, granted: Granted, udp: socket.socket) -> Joined:
    """The ``Joined`` of a granted exchange (both drivers): if ``e2e`` was asked and the
    server made a plain room, never chat in the clear by mistake: leave it (as its host,
    this closes it), close ``udp`` and raise ``NoEncryptedRooms``."""
    if granted.leave is not None:
        try:
            udp.sendto(granted.leave, granted.server_udp)
        except OSError:
            pass
        udp.close()
        raise flow.no_encrypted()
    udp.setblocking(False)
    request = flow.request
    key = granted.details.datagram_key
    return Joined(request.room_raw, request.body.username, granted.token, granted.details,
                  granted.server_udp, udp, flow.target, flow.server_identity, flow.pinned_now,
                  Sealer(key) if key is not None else None)


def describe_connection(joined: Joined) -> str:
    """How the join went, for the status line: over TLS (with the server's key, and
    whether it was pinned just now) or in clear."""
    target = joined.tcrp
    if target is None or target.tls is None:
        return "joined over plain TCRP (not TLS)"
    if target.pins is None:
        return f"joined over TLS (certificate verified, key {joined.server_identity})"
    if joined.pinned_now:
        return (f"joined over TLS; first connection to {target.where}: its key "
                f"{joined.server_identity} is now pinned in {target.pins.path}")
    return f"joined over TLS (key {joined.server_identity}, as pinned)"


def fetch_members(target: TcrpTarget, room_raw: bytes, token: bytes,
                  bind_ip: str | None = None) -> tuple[MemberInfo, ...]:
    """The room's member list (TCRP Operation 3, docs/e2e.md §2.4), blocking, from
    ``bind_ip`` (the token's IP). Raise ``JoinRefused`` on an error status, ``JoinFailed``
    if the exchange does not complete."""
    family, addr = resolve(target.host, target.port)
    deadline = time.monotonic() + target.timeout
    stage = Stage.CONNECT
    try:
        with socket.socket(family, socket.SOCK_STREAM) as raw:
            if bind_ip is not None:
                raw.bind((bind_ip, 0))
            raw.settimeout(target.timeout)
            raw.connect(addr)
            stage = Stage.HANDSHAKE
            tcp = raw
            if target.tls is not None:
                tcp = secured = target.tls.wrap_socket(raw, server_hostname=target.host)
                check_pin(target, secured.getpeercert(binary_form=True))
            stage = Stage.EXCHANGE
            tcp.sendall(encode_members_request(room_raw, token))
            response = _read_members(tcp, deadline, target.where)
    except OSError as exc:
        raise failure(target, stage, exc) from None
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
