"""Hypothesis for the encrypted-room codecs (wire/e2e.py) and the crypto engine's
receive path (client/e2e): only ``ProtocolError`` escapes a codec; nothing escapes
``RoomCrypto.receive`` (every bad input is a ``Rejected`` output or is ignored).

Same method as test_fuzz_wire.py: one hypothesis draw per example, turned by ``Picker``
into raw bytes or an almost-valid input.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.e2e.identity import IdentityKeys
from client.e2e.room import (
    Decrypted,
    KeyInstalled,
    Rejected,
    RoomCrypto,
    SasMessage,
    Send,
    room_binding,
)
from tests.fuzz.test_fuzz_wire import (
    FUZZ,
    JSON_VALUES,
    ROUND_TRIP,
    Picker,
    Pool,
    objects,
    parse,
    seeds,
    usernames,
)
from wire import errors
from wire.e2e import (
    Content,
    ContentType,
    E2EDelivery,
    GroupChat,
    Kind,
    MemberInfo,
    OlmEnvelope,
    OlmType,
    PublicKeys,
    RoomKey,
    Route,
    decode_content,
    decode_delivery,
    decode_group_chat,
    decode_members,
    decode_olm_envelope,
    decode_public_keys,
    decode_room_key,
    decode_route,
    encode_content,
    encode_delivery,
    encode_group_chat,
    encode_message,
    encode_olm_envelope,
    encode_room_key,
)
from wire.tcrp import RequestBody, decode_members_request, decode_request_payload

pytestmark = pytest.mark.no_cover

# 3,000 examples per parser here, beside the stdlib engine's 10,000 inputs for each of them
# (tests/fuzz/test_fuzz_main.py: e2e_route, e2e_delivery with every body codec, e2e_keys,
# request_payload with keys, members_request).
FUZZ_E2E = settings(FUZZ, max_examples=3_000)

B64_32 = base64.b64encode(bytes(range(32))).decode()
KEYS_JSON: dict[str, object] = {"x25519": B64_32, "ed25519": B64_32}
KEY_STRINGS: list[object] = [B64_32, B64_32[:-1], B64_32 + "=", "AA==", "", "é" * 44,
                             base64.b64encode(bytes(33)).decode(), "!" * 44]
# JSON texts: ``objects`` returns each variant as JSON bytes
KEYS_POOL: Pool = [objects(KEYS_JSON, ["x25519", "ed25519"]),
             [orjson.dumps({**KEYS_JSON, "x25519": s}) for s in KEY_STRINGS]]
REQUEST_KEYS_POOL: Pool = [
    objects({"username": "a", "framing": "ocm1", "e2e": True, "keys": KEYS_JSON},
            ["e2e", "keys", "framing"]),
    [b'{"username":"a","keys":' + k + b"}" for k in KEYS_POOL[0] + KEYS_POOL[1]],
]
MEMBERS_POOL: Pool = [
    [b"[" + m + b"]" for m in objects({"user": "a", "host": True, "keys": KEYS_JSON},
                                      ["user", "host", "keys"])],
    [orjson.dumps(v) for v in JSON_VALUES],
]
BODY_POOL: Pool = [
    [encode_group_chat(GroupChat(b"i" * 32, b"m" * n)) for n in (1, 93, 200)],
    [encode_olm_envelope(OlmEnvelope(OlmType(t), b"c" * 160)) for t in (0, 1)],
    [encode_content(Content(b"b" * 32, ContentType.ROOM_KEY,
                            encode_room_key(RoomKey("alice", "bob", "k" * 40)))),
     encode_content(Content(b"b" * 32, ContentType.KEY_REQUEST, b"i" * 32))],
    [b"", b"\x02", b"\x02" + b"x" * 152, b"\x02" * 9, b"\x02" * 88, b"\x02" * 153],
]
MESSAGE_POOL: Pool = [
    [b"", b"\x04", b"\x04\x00", b"\x01", b"\x02", b"\x03\x00", b"\x02\x03bob", b"\x02\x04bob",
     b"\x05", b"\x00", b"\xff"],
    [encode_message(Kind.CHAT, body) for body in BODY_POOL[0]],
    [encode_message(kind, body, "bob") for kind in (Kind.ENVELOPE, Kind.KEY_REQUEST)
     for body in BODY_POOL[1] + BODY_POOL[2]],
]
DELIVERY_POOL: Pool = [
    [encode_delivery(b"alice", Kind(k), body) for k in (1, 2, 3) for body in pool]
    for pool in BODY_POOL
] + [[b"", b"\x00{}", b"\x01a", b"\x01a\x04", b"\x01\xffa\x01", b"\x05ali\x01"]]


def bytes_from(seed: bytes, pool: Pool) -> bytes:
    """Raw bytes (1 in 4), else a mutated pool entry."""
    p = Picker(seed)
    return p.rest() if p.byte() % 4 == 3 else p.mutated(pool)


def check(decode: Callable[[bytes], object], seed: bytes, pool: Pool) -> object:
    return parse(decode, bytes_from(seed, pool))


# --- fuzz: every parser ----------------------------------------------------------------------
@FUZZ_E2E
@given(seeds)
def test_fuzz_decode_route(seed: bytes) -> None:
    data = bytes_from(seed, MESSAGE_POOL)
    route = parse(decode_route, data)
    if isinstance(route, Route):
        assert 1 <= route.body_offset <= len(data)
        assert (route.kind in (Kind.ENVELOPE, Kind.KEY_REQUEST)) == bool(route.recipient)


@FUZZ_E2E
@given(seeds)
def test_fuzz_decode_delivery(seed: bytes) -> None:
    data = bytes_from(seed, DELIVERY_POOL)
    value = parse(decode_delivery, data)
    if isinstance(value, E2EDelivery):
        assert encode_delivery(value.sender.encode(), value.kind, value.body) == data


@FUZZ_E2E
@given(seeds)
def test_fuzz_decode_bodies(seed: bytes) -> None:
    data = bytes_from(seed, BODY_POOL)
    codecs: list[tuple[Callable[[bytes], object], Callable[..., bytes]]] = [
        (decode_group_chat, encode_group_chat),
        (decode_olm_envelope, encode_olm_envelope),
        (decode_content, encode_content),
    ]
    parse(decode_room_key, data)
    for decode, encode in codecs:
        value = parse(decode, data)
        if not isinstance(value, errors.RemoteProtocolError):
            assert encode(value) == data


@FUZZ_E2E
@given(seeds)
def test_fuzz_decode_keys_and_members(seed: bytes) -> None:
    p = Picker(seed)
    raw = p.mutated(KEYS_POOL + MEMBERS_POOL)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = raw.decode("utf-8", "replace")
    for decode in (decode_public_keys, decode_members):
        try:
            decode(obj)
        except errors.RemoteProtocolError:
            pass


@FUZZ_E2E
@given(seeds)
def test_fuzz_request_payload_with_keys(seed: bytes) -> None:
    body = check(decode_request_payload, seed, REQUEST_KEYS_POOL)
    if isinstance(body, RequestBody) and body.keys is not None:
        assert len(body.keys.x25519) == len(body.keys.ed25519) == 32


@FUZZ_E2E
@given(seeds)
def test_fuzz_members_request(seed: bytes) -> None:
    pool: Pool = [objects({"token": "T" * 22}, ["token"])]
    token = check(decode_members_request, seed, pool)
    assert isinstance(token, bytes | errors.RemoteProtocolError)


# --- fuzz: the crypto engine never raises ------------------------------------------------------
ALICE = IdentityKeys.generate()
BOB = IdentityKeys.generate()
BINDING = room_binding("room", b"e" * 16)


def _alice_outputs() -> list[bytes]:
    published = BOB.publish(1)
    assert published.prekeys is not None
    alice = RoomCrypto("room", "alice", ALICE, BINDING)
    out = [o.message for o in alice.start([MemberInfo("bob", False, BOB.public(),
                                                      published.prekeys.one_time[0])])
           if isinstance(o, Send)]
    for i in range(3):
        out += [o.message for o in alice.seal(b"hello %d" % i) if isinstance(o, Send)]
    return out


ALICE_MESSAGES = _alice_outputs()


@settings(FUZZ, max_examples=500)
@given(seeds)
def test_fuzz_room_crypto_receive(seed: bytes) -> None:
    """Genuine, mutated and random deliveries, under any sender name and kind."""
    p = Picker(seed)
    bob = RoomCrypto("room", "bob", BOB, BINDING)
    bob.start([MemberInfo("alice", True, ALICE.public())])
    pool: Pool = [[m[m.index(b"\x02", 1):] if m[0] != 1 else m[1:] for m in ALICE_MESSAGES],
                  BODY_POOL[0] + BODY_POOL[1] + BODY_POOL[2]]
    for _ in range(1 + p.byte() % 4):
        kind = Kind((1, 2, 3)[p.byte() % 3])
        sender = ("alice", "bob", "zed")[p.byte() % 3]
        body = p.mutated(pool)
        for output in bob.receive(E2EDelivery(sender, kind, body), float(p.byte())):
            assert isinstance(output, Send | Decrypted | Rejected | KeyInstalled | SasMessage)


# --- round trips ---------------------------------------------------------------------------------
u32 = st.integers(0, 2**32 - 1)


@ROUND_TRIP
@given(st.sampled_from(Kind), st.binary(max_size=64), usernames)
def test_round_trip_message(kind: Kind, body: bytes, recipient: str) -> None:
    addressed = kind in (Kind.ENVELOPE, Kind.KEY_REQUEST)
    body = b"" if kind is Kind.LEAVE else body
    data = encode_message(kind, body, recipient if addressed else "")
    route = decode_route(data)
    assert route == Route(kind, recipient.encode() if addressed else b"",
                          len(data) - len(body))
    if kind is not Kind.LEAVE:
        delivery = encode_delivery(b"alice", kind, data[route.body_offset :])
        assert decode_delivery(delivery) == E2EDelivery("alice", kind, body)


@ROUND_TRIP
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=1, max_size=200),
       st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_round_trip_bodies_and_keys(sid: bytes, megolm: bytes, x: bytes, e: bytes) -> None:
    chat = GroupChat(sid, megolm)
    assert decode_group_chat(encode_group_chat(chat)) == chat
    envelope = OlmEnvelope(OlmType.NORMAL, megolm)
    assert decode_olm_envelope(encode_olm_envelope(envelope)) == envelope
    keys = PublicKeys(x, e)
    assert decode_public_keys(keys.to_json()) == keys
    members = (MemberInfo("a", True, keys), MemberInfo("b", False))
    assert decode_members([m.to_json() for m in members]) == members
