"""Hypothesis for the encrypted-room codecs (wire/e2e.py) and the crypto engine's
receive path (client/e2e): only ``ProtocolError`` escapes a codec; nothing escapes
``RoomCrypto.receive`` (every bad input is a ``Rejected`` output or is ignored).

Same method as test_fuzz_wire.py: one hypothesis draw per example, turned by ``Picker``
into raw bytes or an almost-valid input.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.e2e.identity import IdentityKeys
from client.e2e.room import Decrypted, KeyInstalled, Rejected, RoomCrypto, Send
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
)
from wire.tcrp import RequestBody, decode_members_request, decode_request_payload

pytestmark = pytest.mark.no_cover

# 3,000 examples each: these codecs are small, and `make test` stays within its budget.
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
    [encode_sealed_chat(SealedChat(1, 2, b"c" * n, b"s" * 64)) for n in (16, 17, 100)],
    [encode_envelope(SealedEnvelope(b"e" * 32, b"c" * 56, b"s" * 64))],
    [encode_key_request(KeyRequest(1, 2)), encode_share(SenderKeyShare(1, 2, b"k" * 32))],
    [b"", b"\x01", b"\x02" + b"x" * 152, b"\x01" * 9, b"\x01" * 88, b"\x01" * 153],
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
        (decode_sealed_chat, encode_sealed_chat),
        (decode_envelope, encode_envelope),
        (decode_key_request, encode_key_request),
        (decode_share, encode_share),
    ]
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
def _rng(label: str) -> Callable[[int], bytes]:
    state = [0]

    def rng(n: int) -> bytes:
        state[0] += 1
        return hashlib.sha256(f"{label}{state[0]}".encode()).digest()[:n]

    return rng


ALICE = IdentityKeys.generate(_rng("alice-id"))
BOB = IdentityKeys.generate(_rng("bob-id"))


def _alice_outputs() -> list[bytes]:
    alice = RoomCrypto("room", "alice", ALICE, _rng("alice"))
    out = [o.message for o in alice.start([MemberInfo("bob", False, BOB.public())])
           if isinstance(o, Send)]
    out += [alice.seal(b"hello %d" % i) for i in range(3)]
    return out


ALICE_MESSAGES = _alice_outputs()


@settings(FUZZ, max_examples=2_000)
@given(seeds)
def test_fuzz_room_crypto_receive(seed: bytes) -> None:
    """Genuine, mutated and random deliveries, under any sender name and kind."""
    p = Picker(seed)
    bob = RoomCrypto("room", "bob", BOB, _rng("bob"))
    bob.start([MemberInfo("alice", True, ALICE.public())])
    pool: Pool = [[m[m.index(b"\x01", 1):] if m[0] != 1 else m[1:] for m in ALICE_MESSAGES],
                  BODY_POOL[0] + BODY_POOL[1] + BODY_POOL[2]]
    for _ in range(1 + p.byte() % 4):
        kind = Kind((1, 2, 3)[p.byte() % 3])
        sender = ("alice", "bob", "zed")[p.byte() % 3]
        body = p.mutated(pool)
        for output in bob.receive(E2EDelivery(sender, kind, body), float(p.byte())):
            assert isinstance(output, Send | Decrypted | Rejected | KeyInstalled)


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
@given(u32, u32, st.binary(min_size=16, max_size=200), st.binary(min_size=64, max_size=64))
def test_round_trip_sealed_chat(chain_id: int, counter: int, ct: bytes, sig: bytes) -> None:
    chat = SealedChat(chain_id, counter, ct, sig)
    assert decode_sealed_chat(encode_sealed_chat(chat)) == chat


@ROUND_TRIP
@given(u32, u32, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.binary(min_size=32, max_size=32))
def test_round_trip_share_keys_request(
    chain_id: int, counter: int, key: bytes, x: bytes, e: bytes
) -> None:
    share = SenderKeyShare(chain_id, counter, key)
    assert decode_share(encode_share(share)) == share
    request = KeyRequest(chain_id, counter)
    assert decode_key_request(encode_key_request(request)) == request
    keys = PublicKeys(x, e)
    assert decode_public_keys(keys.to_json()) == keys
    members = (MemberInfo("a", True, keys), MemberInfo("b", False))
    assert decode_members([m.to_json() for m in members]) == members
