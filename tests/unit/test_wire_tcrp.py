"""TCRP codecs (docs/protocol.md §1): hex vectors for every frame and every error.

Every incremental reader test feeds its input whole and then one byte at a time (h11's
``tests/test_io.py::tr``); error tests also check at which byte the reader gave up, which
is how "before any payload byte is read" (§1.1) is asserted.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from wire import errors
from wire.codes import Framing, Operation, State, Status
from wire.tcrp import (
    MAX_PAYLOAD_SIZE_FIELD,
    NEED_DATA,
    ROOM_EPOCH_BYTES,
    Complete,
    Details,
    FrameReader,
    Header,
    Request,
    RequestBody,
    Response,
    Role,
    check_request_header,
    check_token,
    decode_header,
    decode_request_payload,
    decode_response,
    encode_complete,
    encode_error,
    encode_frame,
    encode_header,
    encode_legacy_request,
    encode_ok,
    encode_request,
)

Event = Request | Response | Complete

Z28 = " 00" * 28
"""The 28 high bytes of OperationPayloadSize when the size is below 256."""
ROOM = "72 6f 6f 6d"  # b"room"
ALICE = "61 6c 69 63 65"  # b"alice"
TOKEN = b"A" + b"x" * 32  # the shape control/server.py issues (33 printable bytes)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def header_hex(room_size: int, operation: int, state: int, payload_size: int) -> str:
    """Only for sizes < 256; the big vectors below are spelled out."""
    assert payload_size < 256
    return f"{room_size:02x} {operation:02x} {state:02x}{Z28} {payload_size:02x}"


# --- feeding helpers (whole and byte by byte) ---------------------------------------------
def pieces(data: bytes, whole: bool) -> Iterator[bytes]:
    if whole:
        yield data
    else:
        for i in range(len(data)):
            yield data[i : i + 1]


def feed(reader: FrameReader, data: bytes, whole: bool) -> list[Event]:
    """Feed ``data``; on the server side stop reading events after the one Request."""
    events: list[Event] = []
    done = False
    for piece in pieces(data, whole):
        reader.receive_data(piece)
        while not done and (event := reader.next_event()) is not NEED_DATA:
            events.append(event)
            done = isinstance(event, Request)
    return events


def feed_until_error(
    reader: FrameReader, data: bytes, whole: bool
) -> tuple[errors.ProtocolError, int]:
    """Feed until the reader raises; return the error and how many bytes it had been fed."""
    fed = 0
    for piece in pieces(data, whole):
        reader.receive_data(piece)
        fed += len(piece)
        try:
            while reader.next_event() is not NEED_DATA:
                pass
        except errors.ProtocolError as exc:
            return exc, fed
    raise AssertionError("the reader raised nothing")


def tr(
    role: Role,
    data: bytes,
    expected: list[Event],
    *,
    trailing: bytes = b"",
    max_payload: int = 4096,
) -> None:
    for whole in (True, False):
        reader = FrameReader(role, max_payload)
        assert feed(reader, data, whole) == expected, f"whole={whole}"
        assert reader.trailing == trailing, f"whole={whole}"


def tr_error(
    role: Role,
    data: bytes,
    error: type[errors.ProtocolError],
    *,
    at: int,
    operation: int,
    room_raw: bytes,
    max_payload: int = 4096,
) -> None:
    """``at``: the number of bytes after which the byte-by-byte reader must raise."""
    for whole in (True, False):
        reader = FrameReader(role, max_payload)
        exc, fed = feed_until_error(reader, data, whole)
        assert type(exc) is error, f"whole={whole}: {exc!r}"
        assert fed == (len(data) if whole else at), f"whole={whole}"
        assert reader.operation == operation
        assert reader.room_raw == room_raw


# --- header ---------------------------------------------------------------------------------
HEADER_VECTORS = [
    (Header(4, 1, 0, 20), "04 01 00" + Z28 + " 14"),
    (Header(255, 2, 2, 0x1000), "ff 02 02" + " 00" * 27 + " 10 00"),
    (Header(0, 0, 0, 0), "00" * 32),
    (Header(255, 255, 255, MAX_PAYLOAD_SIZE_FIELD), "ff" * 32),
    (Header(1, 1, 1, 0x0102030405), "01 01 01" + " 00" * 24 + " 01 02 03 04 05"),
]


@pytest.mark.parametrize(("header", "hexed"), HEADER_VECTORS)
def test_header_vectors(header: Header, hexed: str) -> None:
    assert encode_header(header) == h(hexed)
    assert len(h(hexed)) == 32
    assert decode_header(h(hexed)) == header
    assert decode_header(h(hexed) + b"room") == header  # bytes after the header are ignored


def test_payload_size_field_is_29_bytes() -> None:
    assert MAX_PAYLOAD_SIZE_FIELD == 2**232 - 1


@pytest.mark.parametrize(
    "header",
    [
        Header(256, 1, 0, 0),
        Header(-1, 1, 0, 0),
        Header(1, 256, 0, 0),
        Header(1, -1, 0, 0),
        Header(1, 1, 256, 0),
        Header(1, 1, -1, 0),
        Header(1, 1, 0, MAX_PAYLOAD_SIZE_FIELD + 1),
        Header(1, 1, 0, -1),
    ],
)
def test_encode_header_out_of_range(header: Header) -> None:
    with pytest.raises(errors.FieldOutOfRange) as info:
        encode_header(header)
    assert isinstance(info.value, errors.LocalProtocolError)
    assert info.value.status == Status.INTERNAL_ERROR


@pytest.mark.parametrize("size", [0, 1, 31])
def test_decode_header_short(size: int) -> None:
    with pytest.raises(errors.TruncatedDatagram):
        decode_header(b"\x01" * size)


def test_encode_frame_echoes_raw_room() -> None:
    assert encode_frame(7, State.RESPONSE, b"", b"\x04") == h(header_hex(0, 7, 1, 1) + " 04")
    assert encode_frame(1, 2, b"\xff\xfe", b"") == h(header_hex(2, 1, 2, 0) + " ff fe")


# --- request encoding -----------------------------------------------------------------------
def test_encode_request_json() -> None:
    data = encode_request(Request.of(Operation.CREATE, "room", RequestBody("alice")))
    payload = b'{"username":"alice"}'
    assert data == h(header_hex(4, 1, 0, 20) + " " + ROOM) + payload
    assert data == h(
        "04 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
        " 00 00 00 14 72 6f 6f 6d 7b 22 75 73 65 72 6e 61 6d 65 22 3a 22 61 6c 69 63 65 22 7d"
    )


def test_encode_request_with_password_and_framing() -> None:
    data = encode_request(
        Request.of(Operation.JOIN, b"room", RequestBody("bob", "pw", framing=Framing.OCM1)))
    payload = b'{"username":"bob","password":"pw","framing":"ocm1"}'
    assert len(payload) == 0x33
    assert data == h(header_hex(4, 2, 0, 0x33) + " " + ROOM) + payload
    plain = encode_request(
        Request.of(Operation.JOIN, "r", RequestBody("bob", framing=Framing.PLAIN)))
    assert plain.endswith(b'{"username":"bob"}')  # plain is the default: not sent


@pytest.mark.parametrize("body", [
    RequestBody("bob"),
    RequestBody("bob", "pw", Framing.OCM1),
    RequestBody("bob", None, Framing.PLAIN, None, False),
    RequestBody("bob", framing=Framing.OCM1R, resume="c2VjcmV0"),
])
def test_a_request_body_round_trips(body: RequestBody) -> None:
    """What a client encodes is what the server decodes: one value on both sides."""
    frame = encode_request(Request.of(Operation.CREATE, "部屋", body))
    reader = FrameReader(Role.SERVER)
    reader.receive_data(frame)
    assert reader.next_event() == Request(Operation.CREATE, "部屋", "部屋".encode(), body)


def test_encode_request_utf8_room() -> None:
    data = encode_request(Request.of(Operation.CREATE, "部屋", RequestBody("a")))
    assert data[:1] == b"\x06"
    assert data[32:38] == h("e9 83 a8 e5 b1 8b")


@pytest.mark.parametrize("room", ["", b"", "r" * 256, b"r" * 256])
def test_encode_request_room_out_of_range(room: str | bytes) -> None:
    with pytest.raises(errors.FieldOutOfRange):
        encode_request(Request.of(Operation.CREATE, room, RequestBody("alice")))


def test_encode_legacy_request() -> None:
    data = encode_legacy_request(Operation.JOIN, "room", "alice")
    assert data == h(header_hex(4, 2, 0, 5) + " " + ROOM + " " + ALICE)
    assert encode_legacy_request(Operation.CREATE, b"room", "alice")[1] == 1
    with pytest.raises(errors.FieldOutOfRange):
        encode_legacy_request(Operation.CREATE, "r" * 256, "alice")


# --- request payloads -----------------------------------------------------------------------
OK_PAYLOADS = [
    (b'{"username":"alice"}', RequestBody("alice")),
    (
        b'{"username":"bob","password":"pw","framing":"ocm1"}',
        RequestBody("bob", "pw", Framing.OCM1),
    ),
    (b'{"username":"bob","password":"","framing":null}', RequestBody("bob")),
    (b'{"username":"bob","password":null,"framing":"plain"}', RequestBody("bob")),
    (b'{"username":"bob","framing":"OCM1"}', RequestBody("bob")),  # exact match only
    (b'{"username":"bob","framing":"x"}', RequestBody("bob")),
    (b'{"username":"bob","colour":[1,{"a":2}]}', RequestBody("bob")),  # unknown keys
    (b' {"username" : "bob"} ', RequestBody("bob")),
    (b'{"username":"a","username":"bob"}', RequestBody("bob")),  # orjson: the last wins
    (b'{"username":"a b"}', RequestBody("a b")),
    (b'{"username":"a\xc2\xa0b"}', RequestBody("a\xa0b")),  # inner NBSP is fine
    ('{"username":"アリス"}'.encode(), RequestBody("アリス")),
    (b'{"username":"\\u30a2"}', RequestBody("ア")),
    # legacy: not a JSON object -> the whole text is the username
    (b"alice", RequestBody("alice")),
    (b'"alice"', RequestBody('"alice"')),
    (b"123", RequestBody("123")),
    (b"null", RequestBody("null")),
    (b"[1,2]", RequestBody("[1,2]")),
    (b"not {json", RequestBody("not {json")),
    ("アリス".encode(), RequestBody("アリス")),
    (b"[{", RequestBody("[{")),
    ('{"username":"e\u0301"}'.encode(), RequestBody("e\u0301")),  # kept as sent (not NFC)
    (b'{"username":"a:b"}', RequestBody("a:b")),
    (b'{"username":"a :b"}', RequestBody("a :b")),
]


@pytest.mark.parametrize(("payload", "body"), OK_PAYLOADS)
def test_decode_request_payload(payload: bytes, body: RequestBody) -> None:
    assert decode_request_payload(payload) == body


U255 = "u" * 255
ERROR_PAYLOADS: list[tuple[bytes, type[errors.ProtocolError]]] = [
    (b"\xff", errors.PayloadNotUtf8),
    (b'{"username":"\xed\xa0\x80"}', errors.PayloadNotUtf8),  # an encoded surrogate
    (b"", errors.MissingUsername),
    (b"{}", errors.MissingUsername),
    (b'{"username":""}', errors.MissingUsername),
    (b'{"username":null}', errors.MissingUsername),
    (b'{"user":"alice"}', errors.MissingUsername),
    (b'{"username":1}', errors.BadFieldType),
    (b'{"username":["alice"]}', errors.BadFieldType),
    (b'{"username":"a","password":1}', errors.BadFieldType),
    (b'{"username":"a","password":true}', errors.BadFieldType),
    (b'{"username":"a","password":{}}', errors.BadFieldType),
    (b'{"username":"a","framing":1}', errors.BadFieldType),
    (b'{"username":"a","framing":["ocm1"]}', errors.BadFieldType),
    (b'{"username":"' + b"u" * 256 + b'"}', errors.FieldTooLong),
    (('{"username":"' + "あ" * 86 + '"}').encode(), errors.FieldTooLong),  # 258 bytes
    (b"u" * 256, errors.FieldTooLong),
    (b'{"username":"a","password":"' + b"p" * 256 + b'"}', errors.FieldTooLong),
    (b'{"username":"\\u0000a"}', errors.BadUsername),
    (b'{"username":"a\\u001f"}', errors.BadUsername),
    (b'{"username":"a\\u007fb"}', errors.BadUsername),
    (b'{"username":"a\\u0080b"}', errors.BadUsername),
    (b'{"username":"a\\u009fb"}', errors.BadUsername),
    (b'{"username":" alice"}', errors.BadUsername),
    (b'{"username":"alice "}', errors.BadUsername),
    (b'{"username":"alice\\u3000"}', errors.BadUsername),  # ideographic space
    (b'{"username":"   "}', errors.BadUsername),
    (b"alice\n", errors.BadUsername),  # legacy payloads are checked the same way
    (b"a\x00b", errors.BadUsername),
    (b" alice", errors.BadUsername),
    # a payload that starts like a JSON object must be one: it may carry a password
    (b'{"username":"alice","password":"hunter2",}', errors.MalformedJson),
    (b"{not json", errors.MalformedJson),
    (b" \n{", errors.MalformedJson),
    (b'{"username":"\\ud800"}', errors.MalformedJson),  # a lone surrogate is not JSON
    # the username policy: format characters, line separators, the plain separator
    (b'{"username":"\\u202eecila"}', errors.BadUsername),  # RIGHT-TO-LEFT OVERRIDE
    (b'{"username":"a\\u2066b"}', errors.BadUsername),  # LEFT-TO-RIGHT ISOLATE
    (b'{"username":"al\\u200bice"}', errors.BadUsername),  # ZERO WIDTH SPACE
    (b'{"username":"al\\u200dice"}', errors.BadUsername),  # ZERO WIDTH JOINER
    (b'{"username":"\\ufeffalice"}', errors.BadUsername),  # BYTE ORDER MARK
    (b'{"username":"al\\u00adice"}', errors.BadUsername),  # SOFT HYPHEN
    (b'{"username":"a\\u2028b"}', errors.BadUsername),  # LINE SEPARATOR
    (b'{"username":"a\\u2029b"}', errors.BadUsername),  # PARAGRAPH SEPARATOR
    (b'{"username":"bob: hi"}', errors.BadUsername),  # plain "bob: hi: ..." impersonates bob
    ("al\u200bice".encode(), errors.BadUsername),  # legacy payloads too
]


@pytest.mark.parametrize(("payload", "error"), ERROR_PAYLOADS)
def test_decode_request_payload_errors(
    payload: bytes, error: type[errors.ProtocolError]
) -> None:
    with pytest.raises(error) as info:
        decode_request_payload(payload)
    assert type(info.value) is error
    assert isinstance(info.value, errors.RemoteProtocolError)


def test_decode_request_payload_field_limits_are_inclusive() -> None:
    assert decode_request_payload(U255.encode()).username == U255
    body = decode_request_payload(('{"username":"' + "あ" * 85 + '"}').encode())
    assert len(body.username.encode()) == 255
    pw = "p" * 255
    assert decode_request_payload(f'{{"username":"a","password":"{pw}"}}'.encode()).password == pw


INVALID, TOO_LARGE = Status.INVALID_REQUEST, Status.TOO_LARGE
ORDER_PAYLOADS: list[tuple[bytes, type[errors.ProtocolError], Status]] = [
    # UTF-8 before anything else
    (b"\xff" + b"u" * 300, errors.PayloadNotUtf8, INVALID),
    # JSON types (4) before field sizes (5)
    (b'{"username":"' + b"u" * 300 + b'","password":1}', errors.BadFieldType, INVALID),
    (b'{"username":1,"password":"' + b"p" * 300 + b'"}', errors.BadFieldType, INVALID),
    # field sizes (5) before username characters (4)
    (b'{"username":" \\u0000' + b"u" * 300 + b'"}', errors.FieldTooLong, Status.TOO_LARGE),
    (b'{"username":" a","password":"' + b"p" * 256 + b'"}', errors.FieldTooLong, Status.TOO_LARGE),
    (b" " + b"u" * 300, errors.FieldTooLong, Status.TOO_LARGE),
    # the username before the password
    (b'{"username":"' + b"u" * 256 + b'","password":"' + b"p" * 256 + b'"}',
     errors.FieldTooLong, Status.TOO_LARGE),
]


@pytest.mark.parametrize(("payload", "error", "status"), ORDER_PAYLOADS)
def test_decode_request_payload_error_order(
    payload: bytes, error: type[errors.ProtocolError], status: Status
) -> None:
    with pytest.raises(error) as info:
        decode_request_payload(payload)
    assert info.value.status == status


def test_field_too_long_names_the_field() -> None:
    with pytest.raises(errors.FieldTooLong, match="username"):
        decode_request_payload(b"u" * 256)
    with pytest.raises(errors.FieldTooLong, match="password"):
        decode_request_payload(b'{"username":"a","password":"' + b"p" * 256 + b'"}')


# --- header checks (server) -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "error"),
    [
        (Header(0, 9, 9, 10**9), errors.EmptyRoomName),
        (Header(1, 0, 9, 10**9), errors.UnknownOperation),
        (Header(1, 4, 9, 10**9), errors.UnknownOperation),
        (Header(1, 1, 1, 10**9), errors.UnexpectedState),
        (Header(1, 2, 2, 10**9), errors.UnexpectedState),
        (Header(1, 1, 0, 4097), errors.PayloadTooLarge),
    ],
)
def test_check_request_header(header: Header, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error):
        check_request_header(header, 4096)


def test_check_request_header_accepts() -> None:
    check_request_header(Header(255, 1, 0, 4096), 4096)
    check_request_header(Header(1, 2, 0, 0), 0)


# --- FrameReader, server role ---------------------------------------------------------------
REQ_CREATE = encode_request(Request.of(Operation.CREATE, "room", RequestBody("alice")))
EV_CREATE = Request(Operation.CREATE, "room", b"room", RequestBody("alice"))


def test_reader_server_json_request() -> None:
    tr(Role.SERVER, REQ_CREATE, [EV_CREATE])


def test_reader_server_join_with_options() -> None:
    data = encode_request(
        Request.of(Operation.JOIN, "部屋", RequestBody("bob", "pw", framing=Framing.OCM1)))
    tr(Role.SERVER, data, [Request(Operation.JOIN, "部屋", "部屋".encode(),
                                  RequestBody("bob", "pw", Framing.OCM1))])


def test_reader_server_legacy_request() -> None:
    data = h(header_hex(4, 2, 0, 5) + " " + ROOM + " " + ALICE)
    tr(Role.SERVER, data, [Request(Operation.JOIN, "room", b"room", RequestBody("alice"))])


@pytest.mark.parametrize("extra", [b"\x13", b"\x13\x88", b"\x13\x88\x00", b"junk" * 20])
def test_reader_server_trailing(extra: bytes) -> None:
    """Bytes after the request stay in ``trailing`` (the early 2-byte registration, §1.4)."""
    tr(Role.SERVER, REQ_CREATE + extra, [EV_CREATE], trailing=extra)


def test_reader_server_payload_at_the_limit() -> None:
    payload = b"u" * 10
    data = h(header_hex(1, 1, 0, 10) + " 72") + payload
    tr(Role.SERVER, data, [Request(Operation.CREATE, "r", b"r", RequestBody("u" * 10))],
       max_payload=10)
    tr_error(Role.SERVER, data + b"u", errors.PayloadTooLarge, at=33, operation=1,
             room_raw=b"r", max_payload=9)


def test_reader_server_waits_for_room_before_checking_header() -> None:
    reader = FrameReader(Role.SERVER)
    reader.receive_data(h(header_hex(4, 9, 0, 5)) + b"ro")
    assert reader.next_event() is NEED_DATA
    assert reader.operation == 9
    reader.receive_data(b"om")
    with pytest.raises(errors.UnknownOperation):
        reader.next_event()
    assert reader.room_raw == b"room"


def test_reader_server_max_request() -> None:
    room = b"r" * 255
    payload = b'{"username":"' + b"u" * 255 + b'","x":"' + b"y" * 3819 + b'"}'
    assert len(payload) == 4096
    data = encode_frame(1, 0, room, payload)
    assert len(data) == 32 + 255 + 4096
    tr(Role.SERVER, data, [Request(Operation.CREATE, "r" * 255, room, RequestBody("u" * 255))])


# (data, error, byte at which it is raised, echoed operation, echoed room)
BODY = " " + ROOM + " " + ALICE  # room "room" and legacy payload "alice" (5 bytes)
SERVER_ERRORS: list[tuple[str, bytes, type[errors.ProtocolError], int, int, bytes]] = [
    ("empty room", h(header_hex(0, 1, 0, 5) + " " + ALICE), errors.EmptyRoomName, 32, 1, b""),
    ("op 0", h(header_hex(4, 0, 0, 5) + BODY), errors.UnknownOperation, 36, 0, b"room"),
    ("op 4", h(header_hex(4, 4, 0, 5) + BODY), errors.UnknownOperation, 36, 4, b"room"),
    ("op 255", h(header_hex(4, 255, 0, 5) + BODY), errors.UnknownOperation, 36, 255, b"room"),
    ("state 1", h(header_hex(4, 1, 1, 5) + BODY), errors.UnexpectedState, 36, 1, b"room"),
    ("state 2", h(header_hex(4, 2, 2, 5) + BODY), errors.UnexpectedState, 36, 2, b"room"),
    ("state 255", h(header_hex(4, 2, 255, 5) + BODY), errors.UnexpectedState, 36, 2, b"room"),
    (
        "payload 4097",
        h("04 01 00" + " 00" * 27 + " 10 01" + " " + ROOM) + b"u" * 4097,
        errors.PayloadTooLarge, 36, 1, b"room",
    ),
    ("payload 2**232-1", h("04 02 00" + " ff" * 29 + " " + ROOM), errors.PayloadTooLarge, 36,
     2, b"room"),
    # the header in field order: RoomNameSize, Operation, State, payload size
    ("all four", h("00 09 09" + " ff" * 29), errors.EmptyRoomName, 32, 9, b""),
    ("op+state+size", h("04 09 09" + " ff" * 29 + BODY), errors.UnknownOperation, 36, 9,
     b"room"),
    ("state+size", h("04 01 09" + " ff" * 29 + BODY), errors.UnexpectedState, 36, 1, b"room"),
    # header before UTF-8: a bad room name with an oversized payload is status 5
    ("size+utf8", h("02 01 00" + " ff" * 29 + " ff fe"), errors.PayloadTooLarge, 34, 1,
     b"\xff\xfe"),
    # then the room name, then the payload (only after the whole payload is in)
    ("room utf8", h(header_hex(2, 1, 0, 1) + " ff fe ff"), errors.RoomNameNotUtf8, 35, 1,
     b"\xff\xfe"),
    ("room surrogate", h(header_hex(3, 2, 0, 5) + " ed a0 80 " + ALICE),
     errors.RoomNameNotUtf8, 40, 2, b"\xed\xa0\x80"),
    ("payload utf8", h(header_hex(4, 1, 0, 2) + " " + ROOM + " c3 28"), errors.PayloadNotUtf8,
     38, 1, b"room"),
    ("empty payload", h(header_hex(4, 1, 0, 0) + " " + ROOM), errors.MissingUsername, 36, 1,
     b"room"),
    ("bad type", encode_frame(1, 0, b"room", b'{"username":"a","password":7}'),
     errors.BadFieldType, 65, 1, b"room"),
    ("too long", encode_frame(2, 0, b"room", b"u" * 256), errors.FieldTooLong, 292, 2, b"room"),
    ("bad user", encode_frame(2, 0, b"room", b"al\x7fce"), errors.BadUsername, 41, 2, b"room"),
]


@pytest.mark.parametrize(
    ("data", "error", "at", "operation", "room_raw"),
    [case[1:] for case in SERVER_ERRORS],
    ids=[case[0] for case in SERVER_ERRORS],
)
def test_reader_server_errors(
    data: bytes, error: type[errors.ProtocolError], at: int, operation: int, room_raw: bytes
) -> None:
    tr_error(Role.SERVER, data, error, at=at, operation=operation, room_raw=room_raw)


def test_reader_server_error_repeats() -> None:
    reader = FrameReader(Role.SERVER)
    reader.receive_data(h(header_hex(0, 1, 0, 0)))
    for _ in range(2):
        with pytest.raises(errors.EmptyRoomName):
            reader.next_event()


def test_reader_server_header_errors_need_no_payload_bytes() -> None:
    """The header is judged with the payload still unsent (§1.1: "at once")."""
    for data, error in [
        (h("04 01 00" + " 00" * 27 + " 10 01" + " " + ROOM), errors.PayloadTooLarge),
        (h(header_hex(4, 7, 0, 5) + " " + ROOM), errors.UnknownOperation),
        (h(header_hex(4, 1, 2, 5) + " " + ROOM), errors.UnexpectedState),
    ]:
        reader = FrameReader(Role.SERVER)
        reader.receive_data(data)
        with pytest.raises(error):
            reader.next_event()


# --- responses and completes ----------------------------------------------------------------
DETAILS = Details(9001, True, 4057, 300.0, Framing.PLAIN)
DETAILS_JSON = (
    b'{"udp_port":9001,"host":true,"max_message":4057,"inactivity_timeout":300.0,'
    b'"framing":"plain"}'
)
OK_FRAME = h(header_hex(4, 1, 1, 0x5E) + " " + ROOM + " 00") + DETAILS_JSON
ERROR_FRAME = h(header_hex(4, 2, 1, 0x19) + " " + ROOM + " 02") + b'{"error":"no such room"}'
COMPLETE_FRAME = h(header_hex(4, 1, 2, 0x21) + " " + ROOM) + TOKEN


def test_encode_ok() -> None:
    assert len(DETAILS_JSON) + 1 == 0x5E
    assert encode_ok(Operation.CREATE, b"room", DETAILS) == OK_FRAME


def test_encode_error() -> None:
    assert encode_error(Operation.JOIN, b"room", Status.ROOM_NOT_FOUND, "no such room") == (
        ERROR_FRAME
    )
    # an answer to a request with an unknown Operation and RoomNameSize 0 echoes both
    assert encode_error(7, b"", Status.INVALID_REQUEST, "x") == h(
        header_hex(0, 7, 1, 14) + " 04"
    ) + b'{"error":"x"}'
    assert encode_error(1, b"r", Status.INTERNAL_ERROR, "")[32:] == b'r\xff{"error":""}'


def test_encode_complete() -> None:
    assert encode_complete(Operation.CREATE, b"room", TOKEN) == COMPLETE_FRAME


@pytest.mark.parametrize(
    "token",
    [b"!" * 22, b"~" * 255, bytes(range(0x21, 0x7F)), b"A" + b"-_" * 16],
)
def test_check_token_accepts(token: bytes) -> None:
    check_token(token)


@pytest.mark.parametrize(
    "token",
    [b"", b"x" * 21, b"x" * 256, b"x" * 21 + b" ", b"x" * 21 + b"\x7f", b"x" * 21 + b"\x00",
     "é".encode() * 11, b"x" * 21 + b"\x20"],
)
def test_bad_tokens(token: bytes) -> None:
    with pytest.raises(errors.BadToken):
        check_token(token)
    with pytest.raises(errors.BadToken):
        encode_complete(1, b"room", token)


RESPONSES = [
    (b"\x00" + DETAILS_JSON, Response(1, b"room", Status.OK, DETAILS, "")),
    (
        b'\x00{"udp_port":1,"host":false,"max_message":0,"inactivity_timeout":5,'
        b'"framing":"ocm1","extra":1}',
        Response(1, b"room", Status.OK, Details(1, False, 0, 5.0, Framing.OCM1), ""),
    ),
    (b'\x01{"error":"room exists"}', Response(1, b"room", Status.ROOM_EXISTS, None,
                                               "room exists")),
    (b"\x04", Response(1, b"room", Status.INVALID_REQUEST, None, "")),  # byte 0 only
    (b"\x05{}", Response(1, b"room", Status.TOO_LARGE, None, "")),
    (b'\x09{"error":5}', Response(1, b"room", Status.UNAVAILABLE, None, "")),
    (b"\xff{}", Response(1, b"room", Status.INTERNAL_ERROR, None, "")),
    (b'\x2a{"error":"new"}', Response(1, b"room", 42, None, "new")),  # unknown code kept
]


@pytest.mark.parametrize(("payload", "response"), RESPONSES)
def test_decode_response(payload: bytes, response: Response) -> None:
    assert decode_response(1, b"room", payload) == response


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00",
        b"\x00{}",
        b"\x00[]",
        b"\x04[]",
        b"\x04{",
        b"\x04\xff",
        b"\x04null",
        DETAILS_JSON,  # no status byte: "{" is status 123 and the rest is not JSON
        b"\x00" + DETAILS_JSON.replace(b"9001", b'"9001"'),
        b"\x00" + DETAILS_JSON.replace(b"9001", b"true"),
        b"\x00" + DETAILS_JSON.replace(b"true", b"1"),
        b"\x00" + DETAILS_JSON.replace(b"4057", b"4057.5"),
        b"\x00" + DETAILS_JSON.replace(b"300.0", b'"300"'),
        b"\x00" + DETAILS_JSON.replace(b"300.0", b"false"),
        b"\x00" + DETAILS_JSON.replace(b'"plain"', b'"PLAIN"'),
        b"\x00" + DETAILS_JSON.replace(b'"plain"', b"[]"),
        b"\x00" + DETAILS_JSON.replace(b'"host"', b'"hosts"'),
    ],
)
def test_decode_response_errors(payload: bytes) -> None:
    with pytest.raises(errors.BadResponse):
        decode_response(1, b"room", payload)


def test_details_json_round_trip() -> None:
    assert DETAILS.to_json() == {
        "udp_port": 9001,
        "host": True,
        "max_message": 4057,
        "inactivity_timeout": 300.0,
        "framing": "plain",
    }
    assert Details.from_json(DETAILS.to_json()) == DETAILS


def test_details_udp_host_round_trip_and_type() -> None:
    """Cluster mode names the owning node's IP in ``udp_host``; a wrong type is refused."""
    remote = Details(9001, False, 4057, 300.0, Framing.OCM1, udp_host="127.0.1.2")
    assert remote.to_json()["udp_host"] == "127.0.1.2"
    assert Details.from_json(remote.to_json()) == remote
    with pytest.raises(errors.BadResponse):
        Details.from_json({**remote.to_json(), "udp_host": 5})


def test_details_of_a_resume_round_trip() -> None:
    """An ``ocm1r`` answer carries the next resume secret; the answer to a resume says so."""
    moved = Details(9001, False, 4052, 300.0, Framing.OCM1R, resume="bmV4dA", resumed=True)
    assert (moved.to_json()["resume"], moved.to_json()["resumed"]) == ("bmV4dA", True)
    assert Details.from_json(moved.to_json()) == moved
    for bad in ({"resume": 5}, {"resumed": "yes"}):
        with pytest.raises(errors.BadResponse):
            Details.from_json({**moved.to_json(), **bad})


def test_details_of_an_encrypted_room_with_and_without_an_epoch() -> None:
    """An epoch is optional in an encrypted room's answer (a server before room epochs)."""
    room = Details(9001, True, 4057, 300.0, Framing.OCM1, e2e=True)
    assert "epoch" not in room.to_json()
    assert Details.from_json(room.to_json()) == room
    epoch = bytes(range(ROOM_EPOCH_BYTES))
    assert Details.from_json({**room.to_json(), "epoch": base64.b64encode(epoch).decode()}) \
        == Details(9001, True, 4057, 300.0, Framing.OCM1, e2e=True, epoch=epoch)


# --- FrameReader, client role: State 1 then State 2 ----------------------------------------
def test_reader_client_ok_then_complete() -> None:
    tr(Role.CLIENT, OK_FRAME + COMPLETE_FRAME, [
        Response(1, b"room", Status.OK, DETAILS, ""),
        Complete(1, b"room", TOKEN),
    ])


def test_reader_client_complete_then_more() -> None:
    tr(Role.CLIENT, COMPLETE_FRAME + b"\x00\x01", [Complete(1, b"room", TOKEN)],
       trailing=b"\x00\x01")


def test_reader_client_error_response() -> None:
    tr(Role.CLIENT, ERROR_FRAME, [Response(2, b"room", Status.ROOM_NOT_FOUND, None,
                                           "no such room")])


def test_reader_client_error_echo_with_empty_room() -> None:
    data = encode_error(7, b"", Status.INVALID_REQUEST, "bad operation")
    tr(Role.CLIENT, data, [Response(7, b"", Status.INVALID_REQUEST, None, "bad operation")])


def test_reader_client_model_answer_reads_byte_0() -> None:
    """A response of the status byte alone (what a minimal server sends) is accepted."""
    tr(Role.CLIENT, h(header_hex(4, 2, 1, 1) + " " + ROOM + " 03"),
       [Response(2, b"room", Status.INVALID_PASSWORD, None, "")])


CLIENT_ERRORS: list[tuple[str, bytes, type[errors.ProtocolError], int, int, bytes]] = [
    ("state 0", encode_frame(1, 0, b"room", b"alice"), errors.UnexpectedFrame, 41, 1, b"room"),
    ("state 3", encode_frame(2, 3, b"room", b""), errors.UnexpectedFrame, 36, 2, b"room"),
    ("short token", encode_frame(1, 2, b"room", b"x" * 21), errors.BadToken, 57, 1, b"room"),
    ("space in token", encode_frame(1, 2, b"room", b"x x" * 8), errors.BadToken, 60, 1,
     b"room"),
    ("empty payload", encode_frame(1, 1, b"room", b""), errors.BadResponse, 36, 1, b"room"),
    ("ok without details", encode_frame(1, 1, b"room", b"\x00"), errors.BadResponse, 37, 1,
     b"room"),
    ("too large", h("04 01 01" + " 00" * 27 + " 10 01" + " " + ROOM), errors.PayloadTooLarge,
     36, 1, b"room"),
]


@pytest.mark.parametrize(
    ("data", "error", "at", "operation", "room_raw"),
    [case[1:] for case in CLIENT_ERRORS],
    ids=[case[0] for case in CLIENT_ERRORS],
)
def test_reader_client_errors(
    data: bytes, error: type[errors.ProtocolError], at: int, operation: int, room_raw: bytes
) -> None:
    tr_error(Role.CLIENT, data, error, at=at, operation=operation, room_raw=room_raw)


def test_reader_client_error_after_a_good_frame() -> None:
    for whole in (True, False):
        reader = FrameReader(Role.CLIENT)
        exc, _ = feed_until_error(reader, OK_FRAME + encode_frame(1, 2, b"room", b"short"),
                                  whole)
        assert type(exc) is errors.BadToken


def test_reader_needs_data_on_empty_input() -> None:
    for role in Role:
        reader = FrameReader(role)
        assert reader.next_event() is NEED_DATA
        reader.receive_data(b"")
        assert reader.next_event() is NEED_DATA
        assert reader.trailing == b""
        assert (reader.operation, reader.room_raw) == (0, b"")
