"""wire/tcrp_client.py: the client side of one TCRP exchange (docs/protocol.md §1).

Every answer is fed whole and then one byte at a time (h11's ``tests/test_io.py::tr``);
the frames are the hex vectors of tests/unit/test_wire_tcrp.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wire import errors
from wire.codes import Framing, Operation, Status
from wire.tcrp import NEED_DATA, Complete, Details, Request, RequestBody, Response, encode_frame
from wire.tcrp_client import ClientExchange, ConnectionClosed, ExchangeState

Event = Response | Complete | ConnectionClosed
Z28 = " 00" * 28
TOKEN = b"A" + b"x" * 32
DETAILS = Details(9001, True, 4057, 300.0, Framing.PLAIN)
DETAILS_JSON = (
    b'{"udp_port":9001,"host":true,"max_message":4057,"inactivity_timeout":300.0,'
    b'"framing":"plain"}'
)
# create "room" as alice: {"username":"alice"}
REQUEST = bytes.fromhex("04 01 00" + Z28 + " 14 72 6f 6f 6d") + b'{"username":"alice"}'
OK_FRAME = bytes.fromhex("04 01 01" + Z28 + " 5e 72 6f 6f 6d 00") + DETAILS_JSON
COMPLETE_FRAME = bytes.fromhex("04 01 02" + Z28 + " 21 72 6f 6f 6d") + TOKEN
REFUSAL_FRAME = bytes.fromhex("04 01 01" + Z28 + " 1a 72 6f 6f 6d 01") + (
    b'{"error":"room exists!!"}')
OK = Response(1, b"room", Status.OK, DETAILS, "")
COMPLETE = Complete(1, b"room", TOKEN)
REFUSAL = Response(1, b"room", Status.ROOM_EXISTS, None, "room exists!!")


def pieces(data: bytes, whole: bool) -> Iterator[bytes]:
    if whole:
        yield data
    else:
        for i in range(len(data)):
            yield data[i : i + 1]


def started() -> ClientExchange:
    exchange = ClientExchange()
    assert exchange.send_request(
        Request.of(Operation.CREATE, "room", RequestBody("alice"))) == REQUEST
    assert exchange.state is ExchangeState.AWAIT_RESPONSE
    return exchange


def drain(exchange: ClientExchange) -> list[Event]:
    events: list[Event] = []
    while (event := exchange.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


def feed(exchange: ClientExchange, data: bytes, whole: bool, close: bool = True) -> list[Event]:
    events: list[Event] = []
    for piece in pieces(data, whole):
        exchange.receive_data(piece)
        events += drain(exchange)
    if close:
        exchange.receive_data(b"")
        events += drain(exchange)
    return events


@pytest.mark.parametrize("whole", [True, False])
def test_ok_complete_register_close(whole: bool) -> None:
    exchange = started()
    assert feed(exchange, OK_FRAME + COMPLETE_FRAME, whole, close=False) == [OK, COMPLETE]
    assert exchange.state is ExchangeState.JOINED
    assert (exchange.response, exchange.complete) == (OK, COMPLETE)
    assert exchange.send_registration(0x1388) == bytes.fromhex("13 88")
    assert exchange.state is ExchangeState.REGISTERED
    assert exchange.next_event() is NEED_DATA
    exchange.receive_data(b"")
    assert exchange.next_event() == ConnectionClosed()
    assert exchange.state is ExchangeState.CLOSED
    assert exchange.next_event() == ConnectionClosed()  # stays closed


@pytest.mark.parametrize("whole", [True, False])
def test_close_after_the_token_without_registering(whole: bool) -> None:
    exchange = started()
    assert feed(exchange, OK_FRAME + COMPLETE_FRAME, whole) == [OK, COMPLETE,
                                                                ConnectionClosed()]
    with pytest.raises(errors.ExchangeMisuse):
        exchange.send_registration(5000)


@pytest.mark.parametrize("whole", [True, False])
def test_refusal_then_close(whole: bool) -> None:
    exchange = started()
    assert feed(exchange, REFUSAL_FRAME, whole) == [REFUSAL, ConnectionClosed()]
    assert exchange.response == REFUSAL and exchange.complete is None


def test_refusal_may_echo_another_room() -> None:
    """Only OK answers are held to the echo: an error may echo an empty room (§1.1)."""
    exchange = ClientExchange()
    exchange.send_raw_request(bytes.fromhex("00 07 00" + Z28 + " 00"))
    answer = bytes.fromhex("00 07 01" + Z28 + " 01 04")
    assert feed(exchange, answer, True) == [
        Response(7, b"", Status.INVALID_REQUEST, None, ""), ConnectionClosed()]


def test_json_request_with_every_field() -> None:
    exchange = ClientExchange()
    data = exchange.send_request(
        Request.of(Operation.JOIN, b"r", RequestBody("bob", "pw", framing=Framing.OCM1)))
    assert data == encode_frame(
        2, 0, b"r", b'{"username":"bob","password":"pw","framing":"ocm1"}')


def test_raw_request_is_sent_unchanged() -> None:
    for frame in (b"", b"\x05\x01", REQUEST[:34], REQUEST):
        exchange = ClientExchange()
        assert exchange.send_raw_request(frame) == frame
        assert exchange.state is ExchangeState.AWAIT_RESPONSE


def test_raw_request_shorter_than_its_room_is_not_echo_checked() -> None:
    exchange = ClientExchange()
    exchange.send_raw_request(REQUEST[:34])  # room "ro" of 4 bytes: no echo known
    other = encode_frame(1, 1, b"elsewhere", b"\x00" + DETAILS_JSON)
    assert feed(exchange, other, True, close=False)[0].room_raw == b"elsewhere"


REMOTE_ERRORS: list[tuple[str, bytes, type[errors.ProtocolError]]] = [
    ("close before the response", b"", errors.PrematureClose),
    ("close inside the response", OK_FRAME[:40], errors.PrematureClose),
    ("close before the token", OK_FRAME, errors.PrematureClose),
    ("token first", COMPLETE_FRAME, errors.UnexpectedFrame),
    ("two responses", OK_FRAME + OK_FRAME, errors.UnexpectedFrame),
    ("ok then a refusal", OK_FRAME + REFUSAL_FRAME, errors.UnexpectedFrame),
    ("bytes after the token", OK_FRAME + COMPLETE_FRAME + b"\x00", errors.UnexpectedFrame),
    ("bytes after a refusal", REFUSAL_FRAME + b"x", errors.UnexpectedFrame),
    ("another room", encode_frame(1, 1, b"roam", b"\x00" + DETAILS_JSON),
     errors.UnexpectedFrame),
    ("another operation", encode_frame(2, 1, b"room", b"\x00" + DETAILS_JSON),
     errors.UnexpectedFrame),
    ("token for another room", OK_FRAME + encode_frame(1, 2, b"roam", TOKEN),
     errors.UnexpectedFrame),
    ("a request", encode_frame(1, 0, b"room", b"alice"), errors.UnexpectedFrame),
    ("bad token", OK_FRAME + encode_frame(1, 2, b"room", b"short"), errors.BadToken),
    ("bad details", encode_frame(1, 1, b"room", b"\x00{}"), errors.BadResponse),
]


@pytest.mark.parametrize(("data", "error"), [c[1:] for c in REMOTE_ERRORS],
                         ids=[c[0] for c in REMOTE_ERRORS])
@pytest.mark.parametrize("whole", [True, False])
def test_remote_errors(data: bytes, error: type[errors.ProtocolError], whole: bool) -> None:
    exchange = started()
    with pytest.raises(errors.ProtocolError) as info:
        feed(exchange, data, whole)
    assert type(info.value) is error
    assert isinstance(info.value, errors.RemoteProtocolError)
    assert info.value.detail
    assert exchange.state is ExchangeState.FAILED
    with pytest.raises(errors.ExchangeMisuse):  # a failed exchange is over
        exchange.next_event()
    with pytest.raises(errors.ExchangeMisuse):
        exchange.receive_data(b"more")


def test_unexpected_frames_say_what_came() -> None:
    for data, detail in ((COMPLETE_FRAME, "a token before the response"),
                         (OK_FRAME + REFUSAL_FRAME, "a second response")):
        with pytest.raises(errors.UnexpectedFrame, match=detail):
            feed(started(), data, True)


def test_local_misuse() -> None:
    exchange = ClientExchange()
    with pytest.raises(errors.ExchangeMisuse):
        exchange.next_event()  # nothing sent yet
    with pytest.raises(errors.ExchangeMisuse):
        exchange.send_registration(5000)
    exchange.send_request(Request.of(Operation.CREATE, "room", RequestBody("alice")))
    with pytest.raises(errors.ExchangeMisuse):
        exchange.send_request(Request.of(Operation.CREATE, "room", RequestBody("alice")))
    with pytest.raises(errors.ExchangeMisuse):
        exchange.send_raw_request(REQUEST)
    with pytest.raises(errors.ExchangeMisuse):
        exchange.send_registration(5000)  # no token yet
    exchange.receive_data(b"")
    with pytest.raises(errors.ExchangeMisuse):
        exchange.receive_data(b"")  # the stream already ended
    assert isinstance(errors.ExchangeMisuse(), errors.LocalProtocolError)


def test_request_and_registration_field_checks() -> None:
    exchange = ClientExchange()
    with pytest.raises(errors.FieldOutOfRange):
        exchange.send_request(Request.of(Operation.CREATE, "", RequestBody("alice")))
    assert exchange.state is ExchangeState.SEND_REQUEST  # nothing was sent
    exchange.send_request(Request.of(Operation.CREATE, "room", RequestBody("alice")))
    feed(exchange, OK_FRAME + COMPLETE_FRAME, True, close=False)
    with pytest.raises(errors.FieldOutOfRange):
        exchange.send_registration(0)
    assert exchange.state is ExchangeState.JOINED  # still allowed to register
    assert exchange.send_registration(65535) == b"\xff\xff"


def test_payload_limit_applies_to_answers() -> None:
    exchange = ClientExchange(max_payload=10)
    exchange.send_raw_request(REQUEST)
    exchange.receive_data(OK_FRAME)
    with pytest.raises(errors.PayloadTooLarge):
        exchange.next_event()
