"""The join flow without sockets: the bytes it sends, the answers it reads (whole and one
byte at a time), its decisions, and the one wording of every failure."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from client.joinflow import (
    JoinFailed,
    JoinFlow,
    JoinRefused,
    Stage,
    TcrpTarget,
    certificate_names,
    client_tls_context,
)
from wire.chat import encode_chat
from wire.codes import Framing, Operation, Status
from wire.limits import EXIT_COMMAND
from wire.tcrp import (
    Details,
    Request,
    RequestBody,
    encode_complete,
    encode_error,
    encode_ok,
    encode_request,
)

TOKEN = b"t" * 22
ROOM = "lobby"
PLAIN = TcrpTarget("127.0.0.1", 9000)
DETAILS = Details(7001, True, 4057, 300.0, Framing.OCM1)


def request(e2e: bool = False) -> Request:
    return Request.of(Operation.CREATE, ROOM, RequestBody("ann", "pw", e2e=e2e))


def granted_bytes(details: Details = DETAILS) -> bytes:
    return (encode_ok(Operation.CREATE, ROOM.encode(), details)
            + encode_complete(Operation.CREATE, ROOM.encode(), TOKEN))


def feed(flow: JoinFlow, data: bytes, whole: bool) -> object:
    """Feed ``data`` (then the close) whole or byte by byte; the first answer, or None."""
    chunks = [data] if whole else [data[i:i + 1] for i in range(len(data))]
    for chunk in [*chunks, b""]:
        flow.receive(chunk)
        if (answer := flow.answer()) is not None:
            return answer
    return None


def test_the_request_asks_for_ocm1_framing() -> None:
    flow = JoinFlow(PLAIN, request())
    sent = flow.request_bytes()
    wanted = Request.of(Operation.CREATE, ROOM, RequestBody("ann", "pw", Framing.OCM1))
    assert sent == encode_request(wanted)
    assert flow.request == wanted


@pytest.mark.parametrize("whole", [True, False])
def test_a_granted_answer_then_the_registration(whole: bool) -> None:
    flow = JoinFlow(PLAIN, request())
    flow.request_bytes()
    answer = feed(flow, granted_bytes(), whole)
    assert isinstance(answer, tuple)
    response, complete = answer
    assert response.details == DETAILS and complete.token == TOKEN
    assert flow.registration(40000) == (40000).to_bytes(2, "big")
    granted = flow.granted(answer, "127.0.0.1")
    assert (granted.details, granted.token, granted.server_udp, granted.leave) == (
        DETAILS, TOKEN, ("127.0.0.1", 7001), None)


@pytest.mark.parametrize("whole", [True, False])
def test_a_refusal_is_raised_with_the_servers_status_and_words(whole: bool) -> None:
    flow = JoinFlow(PLAIN, request())
    flow.request_bytes()
    with pytest.raises(JoinRefused) as refused:
        feed(flow, encode_error(Operation.CREATE, ROOM.encode(), Status.ROOM_EXISTS,
                                "a room named 'lobby' exists"), whole)
    assert (refused.value.status, refused.value.error) == (
        Status.ROOM_EXISTS, "a room named 'lobby' exists")


@pytest.mark.parametrize("whole", [True, False])
def test_a_close_before_the_token(whole: bool) -> None:
    flow = JoinFlow(PLAIN, request())
    flow.request_bytes()
    with pytest.raises(JoinFailed, match=r"^the server at 127.0.0.1:9000 closed the "
                                         r"connection before the token$"):
        feed(flow, encode_ok(Operation.CREATE, ROOM.encode(), DETAILS), whole)


def test_a_silent_close_hints_at_the_tls_port_only_without_tls() -> None:
    flow = JoinFlow(PLAIN, request())
    flow.request_bytes()
    with pytest.raises(JoinFailed) as failed:
        feed(flow, b"", True)
    assert str(failed.value) == ("the server at 127.0.0.1:9000 closed the connection before "
                                 "answering; if this is its TLS port, drop --no-tls (or use its "
                                 "plain port)")
    secure = JoinFlow(TcrpTarget("h", 9443, client_tls_context()), request())
    secure.request_bytes()
    with pytest.raises(JoinFailed) as failed:
        feed(secure, b"", True)
    assert str(failed.value) == "the server at h:9443 closed the connection before answering"


@pytest.mark.parametrize("whole", [True, False])
def test_an_answer_that_is_not_tcrp(whole: bool) -> None:
    flow = JoinFlow(PLAIN, request())
    flow.request_bytes()
    with pytest.raises(JoinFailed, match="sent an invalid answer"):
        feed(flow, b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 300, whole)


@pytest.mark.parametrize("whole", [True, False])
def test_e2e_asked_and_a_plain_room_made_leaves_it(whole: bool) -> None:
    flow = JoinFlow(PLAIN, request(e2e=True))
    flow.request_bytes()
    answer = feed(flow, granted_bytes(), whole)
    assert isinstance(answer, tuple)
    granted = flow.granted(answer, "127.0.0.1")
    assert granted.leave == encode_chat(ROOM.encode(), TOKEN, EXIT_COMMAND.encode())
    assert str(flow.no_encrypted()) == ("the server at 127.0.0.1:9000 made a plain room, not "
                                        "an encrypted one (it does not support --e2e); left it")


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, message)
    exc.verify_code, exc.verify_message = code, message
    return exc


def test_failure_wording_by_stage() -> None:
    flow = JoinFlow(PLAIN, request())
    assert str(flow.failed(socket.gaierror(-2, "Name or service not known"))) == (
        "cannot resolve server name '127.0.0.1': [Errno -2] Name or service not known")
    flow.stage = Stage.CONNECT
    assert str(flow.failed(ConnectionRefusedError(111, "Connection refused"))) == (
        "cannot reach the server at 127.0.0.1:9000 (connection refused); is ocm-control "
        "running there?")
    assert str(flow.failed(TimeoutError())) == (
        "the server at 127.0.0.1:9000 did not answer within 10 s")
    secure = JoinFlow(TcrpTarget("h", 9000, client_tls_context()), request())
    secure.connected()
    assert secure.stage is Stage.HANDSHAKE
    assert str(secure.failed(ConnectionResetError(104, "Connection reset by peer"))) == (
        "TLS with the server at h:9000 failed (Connection reset by peer): it may be its plain "
        "TCRP port; use its TLS port, or add --no-tls")


def test_certificate_wording(tmp_path: Path) -> None:
    from tests.integration.test_tls import make_pki

    _, cert, _ = make_pki(tmp_path, names=("ocm.test", "127.0.0.9"))
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    assert certificate_names(der) == ["ocm.test", "127.0.0.9"]
    assert certificate_names(b"not a certificate") == []
    mismatch = _verify_error(64, "IP address mismatch")
    target = TcrpTarget("127.0.0.1", 9443, client_tls_context(), 10, "ca.pem")
    flow = JoinFlow(target, request())
    flow.connected()
    assert flow.wants_certificate(mismatch)
    assert str(flow.failed(mismatch, der)) == (
        "the server at 127.0.0.1:9443 has a TLS certificate that does not name the IP address "
        "127.0.0.1 (it names ocm.test, 127.0.0.9); connect by a name it holds, or give the "
        "server a certificate for this one")
    assert "(it names" not in str(flow.failed(mismatch))  # the certificate could not be read
    unknown = _verify_error(20, "unable to get local issuer certificate")
    assert not flow.wants_certificate(unknown)
    assert "from an unknown CA: the CA in ca.pem did not issue it" in str(flow.failed(unknown))
    no_ca = JoinFlow(TcrpTarget("h", 9443, client_tls_context()), request())
    assert str(no_ca.failed(_verify_error(18, "self-signed certificate"))) == (
        "the server at h:9443 has a TLS certificate that is self-signed (self-signed "
        "certificate); give its CA with --ca-file")
    assert str(no_ca.failed(_verify_error(10, "certificate has expired"))) == (
        "the server at h:9443 has a TLS certificate that is not valid now (certificate has "
        "expired)")
