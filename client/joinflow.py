"""One join, sans-IO: the exchange, the decisions and the wording of every failure.

``client.session.join_room`` (blocking) and ``client.session_aio.join_room_async``
(asyncio) are two thin drivers of one ``JoinFlow``: they resolve, connect, run TLS, write
and read, and report each step here; the flow holds the TCRP exchange
(``wire.tcrp_client.ClientExchange``), decides what comes next, and words every failure
(``JoinFailed``: one line naming the cause and what to do) and refusal (``JoinRefused``).

A driver does, in order::

    flow = JoinFlow(target, request, keys_for)
    flow.check_request()                    # a room name that does not fit: raised now
    addr = <resolve target.host>            # error: raise flow.failed(exc)
    flow.connecting(); <connect>; flow.connected()
    <TLS handshake if target.tls>; flow.secured(<the server's certificate, DER>)
    <write flow.request_bytes()>            # keys_for(server's TLS key or None) called
    while (answer := flow.answer()) is None:
        flow.receive(<bytes read>, b"" when the server closed)
    <write flow.registration(udp_port)>      # best effort
    granted = flow.granted(answer, addr[0])  # raises NoEncryptedRooms after the driver
                                             # sent granted.leave (if any)

and on an exception from any step raises ``flow.failed(exc)``. A certificate whose names
do not match (``flow.wants_certificate(exc)``) may be fetched once more without
verification, only to name what it holds: ``flow.failed(exc, certificate=der)``.

The client's TLS settings live here too (``client_tls_context``, ``pinning_tls_context``,
``TcrpTarget``), so TLS is set up in one place for both drivers and for the member list.
Without a CA file the certificate is not verified by a CA but its key is pinned on first
use (``client.known_servers``, checked in ``secured``): a changed key is refused before
the request is sent.
"""

from __future__ import annotations

import enum
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from client.known_servers import (
    KnownServers,
    KnownServersError,
    ServerKeyChanged,
    key_fingerprint,
    server_identity,
)
from wire import dgmac, errors
from wire.chat import encode_chat
from wire.codes import Framing, Status
from wire.e2e import PublicKeys
from wire.limits import EXIT_COMMAND, MAX_MEMBERS_RESPONSE_BYTES
from wire.tcrp import NEED_DATA, Complete, Details, Request, Response, encode_request
from wire.tcrp_client import ClientExchange

Addr = tuple[str, int]

DEFAULT_TIMEOUT_S = 10.0
"""How long the whole TCRP exchange may take (the server's own default --tcp-timeout)."""

# OpenSSL's verify codes (x509_vfy.h) that a wording depends on.
_NAME_MISMATCH = frozenset({62, 64})  # hostname, IP address
_UNTRUSTED = frozenset({2, 18, 19, 20, 21})  # no issuer known, self-signed, unknown local CA
_SELF_SIGNED_LEAF = 18
_EXPIRED = 10
_NOT_YET_VALID = 9


class JoinFailed(Exception):
    """The exchange did not complete; ``str()`` is a one-line explanation."""


class NoEncryptedRooms(JoinFailed):
    """``e2e`` was asked and the server made a plain room (and the client left it)."""


class JoinRefused(Exception):
    """The server answered a status other than OK (``client.refusals`` words it)."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"{response.status!r}: {response.error}")
        self.status: Status | int = response.status
        self.error = response.error


@dataclass(frozen=True, slots=True)
class Hints:
    """How a failure names what the user can change: flags in ``ocm-chat``, fields in
    ``ocm-gui``."""

    ca_file: str = "--ca-file"
    add_tls: str = "drop --no-tls"
    drop_tls: str = "add --no-tls"


CLI_HINTS = Hints()
GUI_HINTS = Hints(ca_file="the CA file field", add_tls="tick TLS", drop_tls="untick TLS")


@dataclass(frozen=True, slots=True)
class TcrpTarget:
    """The TCRP server as the user named it: ``where`` (``host:port`` as typed) is also
    the key under which member keys are pinned (docs/e2e.md §7.3). ``ca_file``: the file
    ``tls`` trusts, named when a certificate does not verify. ``pins``: with a ``tls``
    from ``pinning_tls_context``, where the server's key is pinned on first use."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    ca_file: str | None = None
    pins: KnownServers | None = None
    hints: Hints = field(default=CLI_HINTS)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def client_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A context that verifies the server's certificate and name: against ``ca_file``
    (PEM) if given, else the system's CAs. Raises ``OSError`` if ``ca_file`` is unusable."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def pinning_tls_context() -> ssl.SSLContext:
    """A context for a server whose key is pinned on first use (``TcrpTarget.pins``):
    TLS 1.2 or later, no CA or name check, because the pin is the check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def check_pin(target: TcrpTarget, der: bytes | None) -> tuple[str | None, bool]:
    """(the server's key fingerprint, whether it was pinned just now) after a handshake
    with ``target``; raise ``JoinFailed`` when the key differs from its pin or cannot be
    checked. Without ``target.pins`` the certificate was verified (or there is no TLS):
    only its key is named."""
    if der is None:
        if target.pins is not None:
            raise JoinFailed(f"the server at {target.where} sent no TLS certificate")
        return None, False
    if target.pins is None:
        try:
            return key_fingerprint(der), False
        except ValueError:
            return None, False
    try:
        pinned = target.pins.check(target.host, target.port, der)
    except ServerKeyChanged as exc:
        raise JoinFailed(key_changed_text(exc, target.hints)) from None
    except KnownServersError as exc:
        raise JoinFailed(f"cannot check the TLS key of the server at {target.where}: {exc}"
                         ) from None
    return pinned.key, pinned.first_use


def key_changed_text(exc: ServerKeyChanged, hints: Hints = CLI_HINTS) -> str:
    """The loud refusal of a changed server key, with how to accept a legitimate change."""
    return (f"WARNING: THE TLS KEY OF THE SERVER AT {exc.where} HAS CHANGED: it presented "
            f"{exc.presented}, but {exc.pinned} was pinned on first use. Someone may be "
            "intercepting the connection, so nothing was sent. If the server's operator "
            f"made a new key, delete the line for {exc.where} in {exc.path} and connect "
            f"again, or give the server's CA with {hints.ca_file}")


def certificate_probe_context() -> ssl.SSLContext:
    """A context that verifies nothing: only for reading the names of a certificate that
    already failed verification, never for an exchange."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def certificate_names(der: bytes) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (its subjectAltName, else
    its common name); empty if it does not parse."""
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return [str(attr.value) for attr in
                    cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return [*san.get_values_for_type(x509.DNSName),
                *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    except (ImportError, ValueError):
        return []


KeysFor = Callable[[str | None], PublicKeys | None]
"""Called with the server's TLS key fingerprint (``None`` without TLS); returns the public
keys the request publishes."""
E2EFor = Callable[[str | None], bool]
"""Whether a join must be of an encrypted room, given the server's TLS key (``None``
without TLS): a room this device saw encrypted under that key (``IdentityChoice``)."""


class Stage(enum.Enum):
    RESOLVE = "resolve"  # looking up the host name
    CONNECT = "connect"  # opening the TCP connection
    HANDSHAKE = "handshake"  # TLS handshake
    EXCHANGE = "exchange"  # request sent, reading the answer


@dataclass(frozen=True, slots=True)
class Granted:
    """A granted exchange: what ``Joined`` needs. ``leave`` is set when ``e2e`` was asked
    and the server made a plain room: the driver sends that datagram to ``server_udp``
    (best effort, as the room's host this closes it) and raises ``flow.no_encrypted()``."""

    details: Details
    token: bytes
    server_udp: Addr
    leave: bytes | None = None


class JoinFlow:
    """One join, client side, without I/O; see the module docstring."""

    def __init__(self, target: TcrpTarget, request: Request,
                 keys_for: KeysFor | None = None, e2e_for: E2EFor | None = None) -> None:
        self.target = target
        self._keys_for = keys_for
        """Gives the request's ``keys`` once the server's TLS key is known (``None``
        without TLS): identities are kept per server identity (client.keystore)."""
        self._e2e_for = e2e_for
        """Asked once the server's TLS key is known: True makes the request require an
        encrypted room (it never lifts an ``e2e`` the request has)."""
        framing = request.body.framing
        if framing is not Framing.OCM1R:
            framing = Framing.OCM1
        self.request = replace(request, body=replace(request.body, framing=framing))
        """What is sent: asking for ``ocm1`` framing (names on every delivery), or
        ``ocm1r`` (room order and recovery, client/reliable.py) when the request does,
        in plain and encrypted rooms alike."""
        self.stage = Stage.RESOLVE
        # An encrypted room's answer lists its members with their keys.
        self._exchange = ClientExchange(MAX_MEMBERS_RESPONSE_BYTES)
        self._received = False  # whether the server sent any byte
        self.server_key: str | None = None
        """The server's TLS key fingerprint, once ``secured``."""
        self.pinned_now = False
        """Whether ``secured`` pinned the key on first use."""

    # --- progress reported by the driver ---------------------------------------------------
    def connecting(self) -> None:
        self.stage = Stage.CONNECT

    def connected(self) -> None:
        self.stage = Stage.HANDSHAKE if self.target.tls is not None else Stage.EXCHANGE

    def secured(self, certificate: bytes | None = None) -> None:
        """The handshake is done and the server sent ``certificate`` (DER): check its pin
        (raise ``JoinFailed`` on a changed key) before anything is written."""
        self.server_key, self.pinned_now = check_pin(self.target, certificate)
        self.stage = Stage.EXCHANGE

    @property
    def server_identity(self) -> str:
        """What identifies the server (``client.known_servers.server_identity``)."""
        return server_identity(self.target.host, self.target.port, self.server_key)

    def check_request(self) -> None:
        """Raise ``FieldOutOfRange`` now if the room name does not fit (before any
        connection is made)."""
        encode_request(self.request)

    def request_bytes(self) -> bytes:
        """The request to write (once, after ``secured`` when TLS is used); with
        ``keys_for`` its ``keys`` are chosen now. Raise ``FieldOutOfRange`` if the room
        name does not fit, and whatever ``keys_for`` raises (``JoinFailed``)."""
        if self._keys_for is not None:
            keys = self._keys_for(self.server_key)
            self.request = replace(self.request, body=replace(self.request.body, keys=keys))
        if self._e2e_for is not None and not self.request.body.e2e \
                and self._e2e_for(self.server_key):
            self.request = replace(self.request, body=replace(self.request.body, e2e=True))
        return self._exchange.send_request(self.request)

    def receive(self, data: bytes) -> None:
        """Bytes read from the server; ``b""`` when it closed or reset the connection."""
        self._received = self._received or bool(data)
        self._exchange.receive_data(data)

    def answer(self) -> tuple[Response, Complete] | None:
        """The granted answer (State 1 and State 2) once whole, None while more bytes are
        needed; raise ``JoinRefused`` on an error status, ``JoinFailed`` on a premature
        close or an answer that is not TCRP."""
        exchange = self._exchange
        while True:
            try:
                event = exchange.next_event()
            except errors.PrematureClose:
                raise self._premature_close() from None
            except errors.ProtocolError as exc:
                raise self._fail(f"sent an invalid answer: {exc}{self._tls_hint()}") from None
            if event is NEED_DATA:
                return None
            if isinstance(event, Response):
                if event.status != Status.OK:
                    raise JoinRefused(event)
            elif isinstance(event, Complete):
                assert exchange.response is not None
                return exchange.response, event

    def registration(self, udp_port: int) -> bytes:
        """The 2 bytes registering our UDP port (§1.4), after the answer."""
        return self._exchange.send_registration(udp_port)

    def granted(self, answer: tuple[Response, Complete], server_ip: str) -> Granted:
        """What the driver keeps of a granted answer (see ``Granted``)."""
        response, complete = answer
        details = response.details
        assert details is not None
        server_udp = (server_ip, details.udp_port)
        leave = None
        if self.request.body.e2e and not details.e2e:
            leave = encode_chat(self.request.room_raw, complete.token, EXIT_COMMAND.encode())
            if details.datagram_key is not None:  # the membership's first datagram
                leave = dgmac.Sealer(details.datagram_key).seal(leave)
        return Granted(details, complete.token, server_udp, leave)

    def no_encrypted(self) -> NoEncryptedRooms:
        return NoEncryptedRooms(f"room {self.request.room!r} at {self.target.where} is not "
                                "end-to-end encrypted; refused and left it (--e2e was given, or "
                                "this device saw the room encrypted before: --allow-plain "
                                "accepts a plain one)")

    # --- failures ------------------------------------------------------------------------
    def wants_certificate(self, exc: BaseException) -> bool:
        """Whether ``failed`` could name what the certificate holds (its names do not
        match the host): the driver may fetch it with ``certificate_probe_context``."""
        return isinstance(exc, ssl.SSLCertVerificationError) and \
            exc.verify_code in _NAME_MISMATCH

    def failed(self, exc: BaseException, certificate: bytes | None = None) -> JoinFailed:
        """The ``JoinFailed`` for ``exc`` raised by the driver at the current stage."""
        return failure(self.target, self.stage, exc, certificate)

    def _premature_close(self) -> JoinFailed:
        if self._exchange.response is not None:
            return self._fail("closed the connection before the token")
        return self._fail(f"closed the connection before answering{self._tls_hint()}")

    def _tls_hint(self) -> str:
        """Said when a plain client got nothing at all: a TLS server closes on a request
        that is not a TLS handshake, without a word."""
        if self.target.tls is None and not self._received:
            return (f"; if this is its TLS port, {self.target.hints.add_tls} (or use its plain "
                    "port)")
        return ""

    def _fail(self, what: str) -> JoinFailed:
        return JoinFailed(f"the server at {self.target.where} {what}")


def failure(target: TcrpTarget, stage: Stage, exc: BaseException,
            certificate: bytes | None = None) -> JoinFailed:
    """One line for a failure of the join or of the member list: resolving, connecting,
    TLS, a timeout (``TimeoutError``) or the connection breaking."""
    where = target.where
    if isinstance(exc, TimeoutError):
        return JoinFailed(f"the server at {where} did not answer within {target.timeout:g} s")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return JoinFailed(_certificate_text(target, exc, certificate))
    if stage is Stage.RESOLVE and isinstance(exc, (OSError, UnicodeError)):
        return JoinFailed(f"cannot resolve server name {target.host!r}: {exc}")
    if stage is Stage.HANDSHAKE and isinstance(exc, OSError):
        reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else \
            describe_os_error(exc)
        return JoinFailed(f"TLS with the server at {where} failed ({reason}): it may be "
                          f"its plain TCRP port; use its TLS port, or "
                          f"{target.hints.drop_tls}")
    if isinstance(exc, OSError):
        hint = "; is ocm-control running there?" if isinstance(
            exc, ConnectionRefusedError) else ""
        return JoinFailed(f"cannot reach the server at {where} ({describe_os_error(exc)})"
                          f"{hint}")
    raise exc


def _certificate_text(target: TcrpTarget, exc: ssl.SSLCertVerificationError,
                      certificate: bytes | None) -> str:
    head = f"the server at {target.where} has a TLS certificate"
    code = exc.verify_code
    if code in _NAME_MISMATCH:
        kind = "IP address" if _is_ip(target.host) else "name"
        names = certificate_names(certificate) if certificate is not None else []
        holds = f" (it names {', '.join(names)})" if names else ""
        return (f"{head} that does not name the {kind} {target.host}{holds}; connect by a "
                "name it holds, or give the server a certificate for this one")
    if code in _UNTRUSTED:
        hint = target.hints.ca_file
        if target.ca_file is not None:
            return (f"{head} from an unknown CA: the CA in {target.ca_file} did not issue it "
                    f"({exc.verify_message}); give the CA that did with {hint}")
        what = "is self-signed" if code == _SELF_SIGNED_LEAF else \
            "comes from a CA this computer does not trust"
        return (f"{head} that {what} ({exc.verify_message}); give its CA with {hint}")
    if code in (_EXPIRED, _NOT_YET_VALID):
        return f"{head} that is not valid now ({exc.verify_message})"
    return f"{head} that cannot be verified ({exc.verify_message})"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe_os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or exc.__class__.__name__
