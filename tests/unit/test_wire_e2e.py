"""Encrypted-room wire formats (docs/e2e.md §2, §3, §4): hex vectors, every error.

The hex vectors are the ones printed in docs/e2e.md; a change to either must fail here.
"""

from __future__ import annotations

import orjson
import pytest

from wire import errors
from wire.chat import Notice, decode_framed, encode_framed_notice
from wire.codes import Framing, NoticeEvent, Operation, Status
from wire.e2e import (
    ENVELOPE_BYTES,
    KEY_REQUEST_BYTES,
    MEMBERS_OPERATION,
    MIN_SEALED_CHAT_BYTES,
    SHARE_BYTES,
    E2EDelivery,
    KeyRequest,
    Kind,
    MemberInfo,
    PublicKeys,
    Route,
    SealedChat,
    SealedEnvelope,
    SenderKeyShare,
    decode_delivery,
    decode_envelope,
    decode_key_request,
    decode_members,
    decode_public_keys,
    decode_route,
    decode_sealed_chat,
    decode_share,
    encode_delivery,
    encode_envelope,
    encode_key_request,
    encode_message,
    encode_sealed_chat,
    encode_share,
    max_chat_body,
)
from wire.tcrp import (
    Details,
    FrameReader,
    MembersRequest,
    Request,
    RequestBody,
    Response,
    Role,
    check_e2e_request,
    decode_members_request,
    decode_request_payload,
    decode_response,
    encode_frame,
    encode_members_ok,
    encode_members_request,
    encode_request,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


X = bytes(range(32))
E = bytes(range(32, 64))
KEYS = PublicKeys(X, E)
KEYS_JSON = {
    "x25519": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "ed25519": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
}
TOKEN = b"T" * 22


# --- client -> relay: routing ----------------------------------------------------------------
def test_encode_message_vectors() -> None:
    assert encode_message(Kind.CHAT, b"\x01abc") == h("01 01 61 62 63")
    assert encode_message(Kind.ENVELOPE, b"\x01", "bob") == h("02 03 62 6f 62 01")
    assert encode_message(Kind.KEY_REQUEST, b"\x01", "ボ") == h("03 03 e3 83 9c 01")
    assert encode_message(Kind.LEAVE) == h("04")


@pytest.mark.parametrize(
    ("kind", "body", "recipient"),
    [
        (Kind.ENVELOPE, b"", ""),
        (Kind.KEY_REQUEST, b"", "x" * 256),
        (Kind.CHAT, b"", "bob"),
        (Kind.LEAVE, b"", "bob"),
        (Kind.LEAVE, b"x", ""),
    ],
)
def test_encode_message_errors(kind: Kind, body: bytes, recipient: str) -> None:
    with pytest.raises(errors.FieldOutOfRange):
        encode_message(kind, body, recipient)


@pytest.mark.parametrize(
    ("message", "route"),
    [
        (b"", None),
        (h("01"), Route(Kind.CHAT, b"", 1)),
        (h("01 ff 00"), Route(Kind.CHAT, b"", 1)),
        (h("04"), Route(Kind.LEAVE, b"", 1)),
        (h("02 03 62 6f 62 01"), Route(Kind.ENVELOPE, b"bob", 5)),
        (h("03 01 ff"), Route(Kind.KEY_REQUEST, b"\xff", 3)),  # names compared as bytes
        (h("02 03 62 6f 62"), Route(Kind.ENVELOPE, b"bob", 5)),  # empty body: still routed
        (b"\x01" + b"m" * 4091, Route(Kind.CHAT, b"", 1)),
    ],
)
def test_decode_route(message: bytes, route: Route | None) -> None:
    assert decode_route(message) == route


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"\x01" + b"m" * 4092, errors.DatagramTooLarge),
        (h("00"), errors.UnknownKind),
        (h("05 00"), errors.UnknownKind),
        (h("ff"), errors.UnknownKind),
        (h("04 00"), errors.TrailingBytes),
        (h("02"), errors.EmptyField),
        (h("03 00 61"), errors.EmptyField),
        (h("02 04 62 6f 62"), errors.TruncatedDatagram),
    ],
)
def test_decode_route_errors(message: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error):
        decode_route(message)


def test_unknown_kind_is_counted_under_its_own_reason() -> None:
    assert errors.UnknownKind.reason == "bad_kind"
    assert errors.UnknownKind.status is Status.INVALID_REQUEST


# --- relay -> client -------------------------------------------------------------------------
def test_delivery_vectors() -> None:
    data = encode_delivery(b"alice", Kind.CHAT, h("01 02"))
    assert data == h("05 61 6c 69 63 65 01 01 02")
    assert decode_delivery(data) == E2EDelivery("alice", Kind.CHAT, h("01 02"))
    assert decode_delivery(h("01 62 02")) == E2EDelivery("b", Kind.ENVELOPE, b"")
    assert decode_delivery(h("01 62 03 09")) == E2EDelivery("b", Kind.KEY_REQUEST, h("09"))
    longest = encode_delivery(b"a", Kind.CHAT, b"m" * 4091)
    assert len(longest) == 4094 and decode_delivery(longest).body == b"m" * 4091


@pytest.mark.parametrize(
    ("sender", "kind", "body", "error"),
    [
        (b"", Kind.CHAT, b"", errors.FieldOutOfRange),
        (b"x" * 256, Kind.CHAT, b"", errors.FieldOutOfRange),
        (b"a", Kind.LEAVE, b"", errors.FieldOutOfRange),
        (b"a", Kind.CHAT, b"m" * 4092, errors.DeliveryTooLarge),
    ],
)
def test_encode_delivery_errors(
    sender: bytes, kind: Kind, body: bytes, error: type[errors.ProtocolError]
) -> None:
    with pytest.raises(error):
        encode_delivery(sender, kind, body)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", errors.TruncatedDatagram),
        (b"\x01a\x01" + b"m" * 4092, errors.DatagramTooLarge),
        (h("00 7b 7d"), errors.EmptyField),
        (h("01 61"), errors.TruncatedDatagram),
        (h("05 61 62"), errors.TruncatedDatagram),
        (h("01 ff 01"), errors.MessageNotUtf8),
        (h("01 61 04"), errors.UnknownKind),
        (h("01 61 00"), errors.UnknownKind),
        (h("01 61 07"), errors.UnknownKind),
    ],
)
def test_decode_delivery_errors(data: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error):
        decode_delivery(data)


def test_max_chat_body() -> None:
    # the datagram bounds it: 4096 - 2 - 4 - 22 - 1
    assert max_chat_body(4, 22, 5) == 4067
    # the delivery bounds it: 4094 - 1 - 255 - 1
    assert max_chat_body(1, 22, 255) == 3837
    room, token, user = b"r", TOKEN, b"u" * 255
    body = b"m" * max_chat_body(len(room), len(token), len(user))
    assert len(encode_delivery(user, Kind.CHAT, body)) == 4094


# --- bodies ----------------------------------------------------------------------------------
CHAT_VECTOR = h("01 0000002a 00000007") + b"C" * 16 + b"S" * 64


def test_sealed_chat_vector() -> None:
    chat = SealedChat(42, 7, b"C" * 16, b"S" * 64)
    assert encode_sealed_chat(chat) == CHAT_VECTOR
    assert chat.header() == h("01 0000002a 00000007")
    assert decode_sealed_chat(CHAT_VECTOR) == chat
    assert len(CHAT_VECTOR) == MIN_SEALED_CHAT_BYTES == 89
    top = SealedChat(0xFFFFFFFF, 0xFFFFFFFF, b"C" * 100, b"S" * 64)
    assert decode_sealed_chat(encode_sealed_chat(top)) == top


@pytest.mark.parametrize(
    "chat",
    [
        SealedChat(0, 0, b"C" * 15, b"S" * 64),
        SealedChat(0, 0, b"C" * 16, b"S" * 63),
        SealedChat(-1, 0, b"C" * 16, b"S" * 64),
        SealedChat(0, 1 << 32, b"C" * 16, b"S" * 64),
    ],
)
def test_encode_sealed_chat_errors(chat: SealedChat) -> None:
    with pytest.raises(errors.FieldOutOfRange):
        encode_sealed_chat(chat)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", errors.TruncatedDatagram),
        (b"\x02" + CHAT_VECTOR[1:], errors.UnsupportedVersion),
        (CHAT_VECTOR[:-1], errors.TruncatedDatagram),
    ],
)
def test_decode_sealed_chat_errors(body: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error):
        decode_sealed_chat(body)


ENVELOPE_VECTOR = h("01") + b"E" * 32 + b"C" * 56 + b"S" * 64


def test_envelope_vector() -> None:
    envelope = SealedEnvelope(b"E" * 32, b"C" * 56, b"S" * 64)
    assert encode_envelope(envelope) == ENVELOPE_VECTOR
    assert decode_envelope(ENVELOPE_VECTOR) == envelope
    assert envelope.sealed() == b"E" * 32 + b"C" * 56
    assert len(ENVELOPE_VECTOR) == ENVELOPE_BYTES == 153


@pytest.mark.parametrize(
    "envelope",
    [
        SealedEnvelope(b"E" * 31, b"C" * 57, b"S" * 64),
        SealedEnvelope(b"E" * 32, b"C" * 56, b"S" * 65),
        SealedEnvelope(b"E" * 32, b"C" * 55, b"S" * 64),
    ],
)
def test_encode_envelope_errors(envelope: SealedEnvelope) -> None:
    with pytest.raises(errors.FieldOutOfRange):
        encode_envelope(envelope)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", errors.TruncatedDatagram),
        (b"\x00" + ENVELOPE_VECTOR[1:], errors.UnsupportedVersion),
        (ENVELOPE_VECTOR[:-1], errors.TruncatedDatagram),
        (ENVELOPE_VECTOR + b"\x00", errors.TrailingBytes),
    ],
)
def test_decode_envelope_errors(body: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error):
        decode_envelope(body)


def test_key_request_vector() -> None:
    data = encode_key_request(KeyRequest(0x01020304, 9))
    assert data == h("01 01020304 00000009")
    assert len(data) == KEY_REQUEST_BYTES
    assert decode_key_request(data) == KeyRequest(0x01020304, 9)
    with pytest.raises(errors.FieldOutOfRange):
        encode_key_request(KeyRequest(1 << 32, 0))
    for bad, error in [
        (data[:-1], errors.TruncatedDatagram),
        (data + b"\x00", errors.TrailingBytes),
        (b"\x07" + data[1:], errors.UnsupportedVersion),
    ]:
        with pytest.raises(error):
            decode_key_request(bad)


def test_share_vector() -> None:
    share = SenderKeyShare(0xA1B2C3D4, 3, X)
    data = encode_share(share)
    assert data == h("a1b2c3d4 00000003") + X
    assert len(data) == SHARE_BYTES == 40
    assert decode_share(data) == share
    with pytest.raises(errors.FieldOutOfRange):
        encode_share(SenderKeyShare(0, 0, X[:31]))
    with pytest.raises(errors.TruncatedDatagram):
        decode_share(data[:-1])
    with pytest.raises(errors.TrailingBytes):
        decode_share(data + b"\x00")


# --- keys and members ------------------------------------------------------------------------
def test_public_keys_json() -> None:
    assert KEYS.to_json() == KEYS_JSON
    assert decode_public_keys(KEYS_JSON) == KEYS
    assert decode_public_keys({**KEYS_JSON, "other": 1}) == KEYS


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "x",
        {},
        {"x25519": KEYS_JSON["x25519"]},
        {**KEYS_JSON, "ed25519": 5},
        {**KEYS_JSON, "x25519": "AAEC"},  # 3 bytes
        {**KEYS_JSON, "x25519": KEYS_JSON["x25519"][:-1]},  # bad padding
        {**KEYS_JSON, "x25519": "!" + KEYS_JSON["x25519"][1:]},  # not the alphabet
        {**KEYS_JSON, "ed25519": "é" * 44},  # not ASCII
        {**KEYS_JSON, "ed25519": KEYS_JSON["ed25519"].rstrip("=")},  # padding required
    ],
)
def test_decode_public_keys_errors(obj: object) -> None:
    with pytest.raises(errors.BadKeys) as info:
        decode_public_keys(obj)
    assert info.value.status is Status.INVALID_REQUEST


def test_members_json() -> None:
    members = (MemberInfo("alice", True, KEYS), MemberInfo("bob", False))
    as_json = [member.to_json() for member in members]
    assert as_json == [
        {"user": "alice", "host": True, "keys": KEYS_JSON},
        {"user": "bob", "host": False},
    ]
    assert decode_members(as_json) == members
    assert decode_members([]) == ()


@pytest.mark.parametrize(
    "value",
    [
        None,
        {},
        [1],
        [{"user": "", "host": True}],
        [{"user": 1, "host": True}],
        [{"user": "a", "host": 1}],
        [{"user": "a"}],
        [{"user": "a", "host": False, "keys": {"x25519": "AA=="}}],
    ],
)
def test_decode_members_errors(value: object) -> None:
    with pytest.raises(errors.BadResponse):
        decode_members(value)


# --- the joined notice carries keys ----------------------------------------------------------
def test_joined_notice_keys() -> None:
    notice = Notice(NoticeEvent.JOINED, "bob", keys=KEYS)
    data = encode_framed_notice(notice)
    assert data == (
        b'\x00{"event":"joined","user":"bob","keys":{"x25519":"' + KEYS_JSON["x25519"].encode()
        + b'","ed25519":"' + KEYS_JSON["ed25519"].encode() + b'"},"text":"bob joined the room"}'
    )
    assert decode_framed(data) == notice
    # keys are only ever sent with joined
    left = encode_framed_notice(Notice(NoticeEvent.LEFT, "bob", keys=KEYS))
    assert b"keys" not in left
    with pytest.raises(errors.BadNotice):
        decode_framed(b'\x00{"event":"joined","user":"bob","keys":{"x25519":1}}')
    assert decode_framed(b'\x00{"event":"joined","user":"b","keys":null}') == Notice(
        NoticeEvent.JOINED, "b"
    )


# --- TCRP: request fields ----------------------------------------------------------------------
KEYS_FIELD = (
    b'"keys":{"x25519":"' + KEYS_JSON["x25519"].encode() + b'","ed25519":"'
    + KEYS_JSON["ed25519"].encode() + b'"}'
)


def test_encode_request_with_keys_vector() -> None:
    frame = encode_request(
        Request.of(Operation.CREATE, "r",
            RequestBody("a", framing=Framing.OCM1, keys=KEYS, e2e=True)))
    assert frame[32:] == b'r{"username":"a","framing":"ocm1",' + KEYS_FIELD + b',"e2e":true}'
    # without them the request is byte for byte what it always was
    assert encode_request(
        Request.of(Operation.JOIN, "r", RequestBody("a")))[32:] == b'r{"username":"a"}'


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        (b'{"username":"a",' + KEYS_FIELD + b"}", RequestBody("a", keys=KEYS)),
        (b'{"username":"a","e2e":true}', RequestBody("a", e2e=True)),
        (b'{"username":"a","e2e":false,"keys":null}', RequestBody("a")),
        (b'{"username":"a","e2e":null}', RequestBody("a")),
    ],
)
def test_decode_request_payload_e2e_fields(payload: bytes, body: RequestBody) -> None:
    assert decode_request_payload(payload) == body


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b'{"username":"a","e2e":1}', errors.BadFieldType),
        (b'{"username":"a","e2e":"true"}', errors.BadFieldType),
        (b'{"username":"a","keys":[]}', errors.BadKeys),
        (b'{"username":"a","keys":{"x25519":"AA==","ed25519":"AA=="}}', errors.BadKeys),
        # key errors come with the other JSON type errors, before the username's size
        (b'{"username":"' + b"u" * 256 + b'","keys":5}', errors.BadKeys),
    ],
)
def test_decode_request_payload_e2e_errors(
    payload: bytes, error: type[errors.ProtocolError]
) -> None:
    with pytest.raises(error) as info:
        decode_request_payload(payload)
    assert info.value.status is Status.INVALID_REQUEST


def test_check_e2e_request() -> None:
    good = RequestBody("a", framing=Framing.OCM1, keys=KEYS, e2e=True)
    check_e2e_request(Operation.CREATE, good)
    for bad in (RequestBody("a", framing=Framing.OCM1, e2e=True),
                RequestBody("a", keys=KEYS, e2e=True)):
        with pytest.raises(errors.E2eNeedsKeys) as info:
            check_e2e_request(Operation.CREATE, bad)
        assert info.value.status is Status.INVALID_REQUEST
        check_e2e_request(Operation.JOIN, bad)  # a join is judged against the room


def test_reader_rejects_e2e_create_without_keys() -> None:
    reader = FrameReader(Role.SERVER)
    reader.receive_data(encode_request(
        Request.of(Operation.CREATE, "r", RequestBody("a", e2e=True))))
    with pytest.raises(errors.E2eNeedsKeys):
        reader.next_event()
    reader = FrameReader(Role.SERVER)
    reader.receive_data(encode_request(
        Request.of(Operation.CREATE, "r",
            RequestBody("a", framing=Framing.OCM1, keys=KEYS, e2e=True))))
    event = reader.next_event()
    assert isinstance(event, Request) and event.body.e2e and event.body.keys == KEYS


# --- TCRP: details and the member list ---------------------------------------------------------
def test_details_e2e_round_trip() -> None:
    members = (MemberInfo("alice", True, KEYS),)
    details = Details(9001, False, 3000, 300.0, Framing.OCM1, True, members)
    obj = details.to_json()
    assert obj["e2e"] is True
    assert obj["members"] == [{"user": "alice", "host": True, "keys": KEYS_JSON}]
    assert Details.from_json(obj) == details
    plain = Details(9001, False, 3000, 300.0, Framing.OCM1)
    assert set(plain.to_json()) == {"udp_port", "host", "max_message", "inactivity_timeout",
                                    "framing"}
    assert Details.from_json({**plain.to_json(), "e2e": False, "members": 5}) == plain
    for bad in ({**obj, "e2e": 1}, {**obj, "members": None}):
        with pytest.raises(errors.BadResponse):
            Details.from_json(bad)


def test_members_request_vector() -> None:
    frame = encode_members_request("room", TOKEN)
    payload = b'{"token":"' + TOKEN + b'"}'
    assert frame == h("04 03 00" + " 00" * 28 + f" {len(payload):02x}") + b"room" + payload
    assert decode_members_request(payload) == TOKEN
    assert MEMBERS_OPERATION == 3
    with pytest.raises(errors.BadToken):
        encode_members_request("room", b"short")
    with pytest.raises(errors.FieldOutOfRange):
        encode_members_request("", TOKEN)


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"[]", b'{"token":5}', b'{"tok":"x"}', b'{"token":"short"}', b"\xff"],
)
def test_decode_members_request_errors(payload: bytes) -> None:
    with pytest.raises(errors.BadFieldType) as info:
        decode_members_request(payload)
    assert info.value.status is Status.INVALID_REQUEST


def test_reader_server_reads_a_members_request() -> None:
    reader = FrameReader(Role.SERVER)
    reader.receive_data(encode_members_request("room", TOKEN))
    assert reader.next_event() == MembersRequest("room", b"room", TOKEN)
    assert Operation.MEMBERS == MEMBERS_OPERATION
    reader = FrameReader(Role.SERVER)
    reader.receive_data(encode_frame(3, 0, b"room", b'{"token":5}'))
    with pytest.raises(errors.BadFieldType):
        reader.next_event()
    assert reader.operation == 3


def test_members_response() -> None:
    members = (MemberInfo("alice", True, KEYS), MemberInfo("bob", False, KEYS))
    frame = encode_members_ok(b"room", members)
    assert frame[:3] == h("04 03 01")
    reader = FrameReader(Role.CLIENT, 1 << 20)
    reader.receive_data(frame)
    assert reader.next_event() == Response(3, b"room", Status.OK, None, "", members)
    assert decode_response(3, b"r", b'\x00{"members":[]}').members == ()
    assert decode_response(3, b"r", b'\x04{"error":"not a member"}').error == "not a member"
    with pytest.raises(errors.BadResponse):
        decode_response(3, b"r", b"\x00{}")


def test_members_response_bound_holds_the_worst_case() -> None:
    from wire.limits import MAX_E2E_MEMBERS, MAX_MEMBERS_ENTRY_BYTES, MAX_MEMBERS_RESPONSE_BYTES

    worst = MemberInfo('"' * 255, False, KEYS)
    entry = encode_members_ok(b"r", (worst,))
    assert len(entry) - len(encode_members_ok(b"r", ())) - 1 < MAX_MEMBERS_ENTRY_BYTES
    assert len(orjson.dumps(worst.to_json())) == MAX_MEMBERS_ENTRY_BYTES
    details = Details(65535, True, 4096, 300.0, Framing.OCM1, True, (worst,) * MAX_E2E_MEMBERS)
    assert len(orjson.dumps(details.to_json())) + 1 < MAX_MEMBERS_RESPONSE_BYTES
