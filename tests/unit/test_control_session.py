"""The sans-IO TCRP session: bytes in, events and bytes out, whole and byte by byte."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from control.session import (
    ConnectionClosed,
    Registration,
    RequestRejected,
    Session,
    SessionState,
)
from wire import errors
from wire.codes import Framing, Operation, Status
from wire.tcrp import NEED_DATA, Details, Request, RequestBody, encode_request
from wire.tcrp_client import ClientExchange

REQ = encode_request(Request.of(Operation.JOIN, "room", RequestBody("bob", framing=Framing.OCM1)))
DETAILS = Details(9001, False, 4000, 300.0, Framing.OCM1)
TOKEN = b"B" + b"t" * 32


def chunks(data: bytes, whole: bool) -> Iterator[bytes]:
    if whole:
        yield data
    else:
        for i in range(len(data)):
            yield data[i : i + 1]


def feed(session: Session, data: bytes, whole: bool) -> list[object]:
    events = []
    for piece in chunks(data, whole):
        session.receive_data(piece)
        while (event := session.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, Request | RequestRejected | Registration | ConnectionClosed):
                break
    return events


@pytest.mark.parametrize("whole", [True, False])
def test_request_ok_then_registration(whole: bool) -> None:
    session = Session(4096)
    (request,) = feed(session, REQ, whole)
    assert isinstance(request, Request) and request.room == "room"
    assert session.state is SessionState.HANDLING
    out = session.send_ok(DETAILS, TOKEN)
    client = ClientExchange()  # the client's side of the same exchange
    client.send_raw_request(REQ)
    client.receive_data(out)
    response, complete = client.next_event(), client.next_event()
    assert response.status == Status.OK and response.details == DETAILS  # type: ignore[union-attr]
    assert complete.token == TOKEN  # type: ignore[union-attr]
    assert client.send_registration(5000) == b"\x13\x88"
    assert session.state is SessionState.AWAIT_REGISTRATION
    assert feed(session, b"\x13\x88", whole) == [Registration(5000)]
    assert session.state is SessionState.CLOSED


@pytest.mark.parametrize(("after", "expected"), [
    (b"\x00\x00", Registration(None)),  # port 0 registers nothing
    (b"\x13\x88\x01", Registration(None)),  # more than 2 bytes
])
def test_registration_rules(after: bytes, expected: Registration) -> None:
    session = Session(4096)
    feed(session, REQ, True)
    session.send_ok(DETAILS, TOKEN)
    session.receive_data(after)
    assert session.next_event() == expected


def test_single_byte_then_close_registers_nothing() -> None:
    session = Session(4096)
    feed(session, REQ, True)
    session.send_ok(DETAILS, TOKEN)
    session.receive_data(b"\x13")
    assert session.next_event() is NEED_DATA
    session.receive_data(b"")
    assert session.next_event() == Registration(None)


def test_port_sent_early_with_the_request_counts() -> None:
    session = Session(4096)
    feed(session, REQ + b"\x13\x88", True)
    session.send_ok(DETAILS, TOKEN)
    assert session.next_event() == Registration(5000)


def test_registration_window_timeout() -> None:
    session = Session(4096)
    feed(session, REQ, True)
    assert session.timeout() is None  # nothing to time out while handling
    session.send_ok(DETAILS, TOKEN)
    assert session.timeout() == Registration(None)
    assert session.state is SessionState.CLOSED


@pytest.mark.parametrize("whole", [True, False])
def test_protocol_error_is_rejected_with_echo(whole: bool) -> None:
    session = Session(4096)
    bad = bytes([3, 7, 0]) + (0).to_bytes(29, "big") + b"abc"
    (event,) = feed(session, bad, whole)
    assert event == RequestRejected(Status.INVALID_REQUEST, str(errors.UnknownOperation("7")))
    out = session.send_error(Status.INVALID_REQUEST, "bad")
    assert out[:3] == bytes([3, 7, 1]) and out[32:35] == b"abc" and out[35] == 4


def test_too_large_payload_is_refused_before_it_is_read() -> None:
    session = Session(100)
    header = bytes([1, 1, 0]) + (101).to_bytes(29, "big") + b"r"
    (event,) = feed(session, header, True)
    assert isinstance(event, RequestRejected) and event.status == Status.TOO_LARGE


def test_close_before_request_is_whole() -> None:
    session = Session(4096)
    session.receive_data(REQ[:10])
    assert session.next_event() is NEED_DATA
    session.receive_data(b"")
    assert session.next_event() == ConnectionClosed()


def test_error_answer_after_handling() -> None:
    session = Session(4096)
    feed(session, REQ, True)
    out = session.send_error(Status.ROOM_NOT_FOUND, "no room")
    assert out[2] == 1 and out[32 + 4] == Status.ROOM_NOT_FOUND
    assert session.state is SessionState.CLOSED


def test_illegal_transition_raises_local_protocol_error() -> None:
    session = Session(4096)
    with pytest.raises(errors.LocalProtocolError):
        session.send_ok(DETAILS, TOKEN)


@pytest.mark.parametrize("whole", [True, False])
def test_members_request_is_answered_once_then_closed(whole: bool) -> None:
    from wire.e2e import MemberInfo
    from wire.tcrp import FrameReader, MembersRequest, Role, encode_members_request

    session = Session(4096)
    (event,) = feed(session, encode_members_request("room", TOKEN), whole)
    assert event == MembersRequest("room", b"room", TOKEN)
    assert session.state is SessionState.HANDLING
    reader = FrameReader(Role.CLIENT)
    reader.receive_data(session.send_members((MemberInfo("bob", True),)))
    assert reader.next_event().members == (MemberInfo("bob", True),)  # type: ignore[union-attr]
    assert session.state is SessionState.CLOSED
    with pytest.raises(errors.LocalProtocolError):
        session.send_ok(DETAILS, TOKEN)
