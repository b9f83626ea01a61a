"""Authenticated datagrams (docs/protocol.md §8), without sockets: keyed BLAKE2s against
the BLAKE2 reference's published vectors, the compiled loop's MAC against hashlib, the
trailer and its replay window, the details field, and the relay core acting on a keyed
member's datagrams only when their tag is right (plain and encrypted rooms)."""

from __future__ import annotations

import hashlib
import os

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.joinflow import JoinFlow, TcrpTarget
from relay import ipc
from relay.core import RelayCore
from wire import dgmac, errors
from wire.chat import encode_chat
from wire.codes import Framing, Operation
from wire.e2e import Kind, PublicKeys, encode_message
from wire.tcrp import Details, Request, RequestBody, encode_complete, encode_ok

# Keyed BLAKE2s vectors of the BLAKE2 reference implementation: testvectors/blake2-kat.json
# (also blake2s-kat.txt) in https://github.com/BLAKE2/BLAKE2, key 00 01 .. 1f, input
# 00 01 .. (n-1), 32-byte output. n = 63, 64, 65 cross the 64-byte block boundary.
KAT_KEY = bytes(range(32))
KEYED_KAT = {
    0: "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49",
    1: "40d15fee7c328830166ac3f918650f807e7e01e177258cdc0a39b11f598066f1",
    2: "6bb71300644cd3991b26ccd4d274acd1adeab8b1d7914546c1198bbe9fc9d803",
    63: "c65382513f07460da39833cb666c5ed82e61b9e998f4b0c4287cee56c3cc9bcd",
    64: "8975b0577fd35566d750b362b0897a26c399136df07bababbde6203ff2954ed4",
    65: "21fe0ceb0052be7fb0f004187cacd7de67fa6eb0938d927677f2398c132317a8",
}

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
FORGER = ("127.0.0.1", 6666)  # the member's IP, another port
TA, TB = b"A" + b"a" * 32, b"A" + b"b" * 32
KEY = bytes(range(100, 132))


def _hot():  # type: ignore[no-untyped-def]
    try:
        from relay import _hot
    except ImportError:
        if os.environ.get("OCM_REQUIRE_EXTENSIONS") == "1":
            raise
        pytest.skip("relay._hot is not built")
    return _hot


@pytest.mark.parametrize("n", sorted(KEYED_KAT))
def test_hashlib_keyed_blake2s_matches_the_reference_vectors(n: int) -> None:
    assert hashlib.blake2s(bytes(range(n)), key=KAT_KEY).hexdigest() == KEYED_KAT[n]


@pytest.mark.parametrize("n", sorted(KEYED_KAT))
def test_compiled_keyed_blake2s_matches_the_reference_vectors(n: int) -> None:
    hot = _hot()
    assert hot.blake2s_mac(KAT_KEY, bytes(range(n)), 32).hex() == KEYED_KAT[n]


def test_compiled_tag_equals_the_python_tag() -> None:
    """The 16-byte tag (digest length 16 in the parameter block, not a truncation) of the
    compiled loop and of wire.dgmac, over many lengths and keys."""
    hot = _hot()
    for n in (0, 1, 15, 16, 63, 64, 65, 200, 4072):
        for key in (KAT_KEY, KEY, bytes(32)):
            data = bytes((i * 7 + n) % 256 for i in range(n))
            assert hot.blake2s_mac(key, data, 16) == dgmac.tag(key, data)
    assert dgmac.tag(KEY, b"x") != hashlib.blake2s(b"x", key=KEY).digest()[:16]


def test_seal_layout_and_verify() -> None:
    data = encode_chat(b"r", TA, b"hi")
    sealed = dgmac.seal(KEY, data, 5)
    assert sealed[:len(data)] == data
    assert sealed[len(data):len(data) + 8] == (5).to_bytes(8, "big")
    assert sealed[-16:] == dgmac.tag(KEY, sealed[:-16])
    assert dgmac.verify(KEY, sealed) == 5
    assert dgmac.verify(bytes(32), sealed) is None
    assert dgmac.verify(KEY, sealed[:-1] + bytes((sealed[-1] ^ 1,))) is None
    assert dgmac.verify(KEY, sealed[:20]) is None
    assert dgmac.verify(KEY, b"") is None


def test_hex_example_of_the_protocol_page() -> None:
    """docs/protocol.md §8 prints this datagram."""
    sealed = dgmac.seal(bytes(range(32)), encode_chat(b"r", b"T" * 22, b"hi"), 1)
    assert sealed.hex() == ("0116" "72" + "54" * 22 + "6869" "0000000000000001"
                            "7b6651922856d3157e0e1265291ac2b4")


def test_replay_window() -> None:
    assert dgmac.advance(0, 0, 0) is None  # Seq 0 is never valid
    top, seen = dgmac.advance(0, 0, 1) or (0, 0)
    assert (top, seen) == (1, 1)
    assert dgmac.advance(top, seen, 1) is None
    top, seen = dgmac.advance(top, seen, 5) or (0, 0)
    assert (top, seen) == (5, 0b10001)
    top, seen = dgmac.advance(top, seen, 3) or (0, 0)  # late but inside the window
    assert (top, seen) == (5, 0b10101)
    assert dgmac.advance(top, seen, 3) is None
    top, seen = dgmac.advance(top, seen, 5 + 64) or (0, 0)  # jumps past the whole window
    assert (top, seen) == (69, 1)
    assert dgmac.advance(top, seen, 5) is None  # below the window
    assert dgmac.advance(top, seen, 6) == (69, 1 | 1 << 63)
    top, seen = dgmac.advance(69, (1 << 64) - 1, 70) or (0, 0)
    assert seen == (1 << 64) - 1  # the oldest bit falls off


def test_sealer_counts_from_one() -> None:
    sealer = dgmac.Sealer(KEY)
    first, second = sealer.seal(b"\x01\x01rT"), sealer.seal(b"\x01\x01rT")
    assert (dgmac.verify(KEY, first), dgmac.verify(KEY, second)) == (1, 2)
    with pytest.raises(ValueError):
        dgmac.Sealer(b"short")


def test_details_field_round_trip_and_absent_by_default() -> None:
    details = Details(9001, False, 100, 300.0, Framing.OCM1, datagram_key=KEY)
    obj = details.to_json()
    assert obj["datagram_key"] == KEY.hex()
    assert Details.from_json(obj) == details
    plain = Details(9001, False, 100, 300.0, Framing.PLAIN)
    assert "datagram_key" not in plain.to_json()
    assert Details.from_json(plain.to_json()).datagram_key is None
    for bad in ("ab", 5, "zz" * 32):
        with pytest.raises(errors.BadResponse):
            Details.from_json({**obj, "datagram_key": bad})


# --- the relay core -----------------------------------------------------------------------
def keyed_room(e2e: bool = False) -> RelayCore:
    """alice (host, plain TCRP: no key) and bob (joined over TLS: KEY), both bound."""
    core = RelayCore(inactivity_timeout=300.0, max_send_failures=3)
    framing = Framing.OCM1 if e2e else Framing.PLAIN
    keys = PublicKeys(bytes(32), bytes(32)) if e2e else None
    assert core.add_member("r", TA, "alice", "127.0.0.1", framing, True, 0.0, e2e=e2e,
                           keys=keys)
    assert core.add_member("r", TB, "bob", "127.0.0.1", framing, False, 0.0, e2e=e2e,
                           keys=keys, mac_key=KEY)
    assert core.handle_datagram(encode_chat(b"r", TA, b""), A, 1.0) is None
    assert core.handle_datagram(dgmac.seal(KEY, encode_chat(b"r", TB, b""), 1), B, 1.0) \
        is None
    core.outbox.clear()
    core.events.clear()
    return core


def test_sealed_chat_is_relayed_without_its_trailer() -> None:
    core = keyed_room()
    fanout = core.handle_datagram(dgmac.seal(KEY, encode_chat(b"r", TB, b"hi"), 2), B, 2.0)
    assert fanout is not None and fanout.plain == b"bob: hi" and fanout.sender == B
    assert core.tokens[TB].mac_top == 2


@pytest.mark.parametrize("e2e", [False, True])
def test_sniffed_token_forged_leave_chat_and_keepalive_are_dropped(e2e: bool) -> None:
    """The attack: the token is known, the datagram comes from the member's IP and another
    port, without the key. Nothing happens: no leave, no relay, no refresh, no rebind."""
    core = keyed_room(e2e)
    leave = encode_message(Kind.LEAVE) if e2e else b"/exit"
    chat = encode_message(Kind.CHAT, b"x" * 40) if e2e else b"forged"
    bob = core.tokens[TB]
    for body in (leave, chat, b""):
        forged = encode_chat(b"r", TB, body)
        for attempt in (forged, forged + bytes(24), dgmac.seal(bytes(32), forged, 9)):
            assert core.handle_datagram(attempt, FORGER, 50.0) is None
    assert core.drops["bad_mac"] == 9
    assert core.tokens.get(TB) is bob and bob.addr == B and bob.last_seen == 1.0
    assert core.outbox == [] and core.events == []


def test_a_keyed_member_moves_to_a_relaying_node_only_on_a_fresh_seq() -> None:
    """Cluster mode: a node that relays for bob moves him there only with the ``Seq`` of a
    datagram of his (control checked its tag) that his window would still accept; the
    check does not move the window, so that datagram is then relayed."""
    core = keyed_room()
    bob = core.tokens[TB]
    assert core.rebind_ip(TB, "127.0.1.2") is False  # no proof
    assert core.rebind_ip(TB, "127.0.1.2", 1) is False  # seen before
    assert bob.ip == "127.0.0.1" and bob.addr == B
    assert core.rebind_ip(TB, "127.0.1.2", 2) is True
    assert bob.ip == "127.0.1.2" and bob.addr is None and bob.mac_top == 1
    relay = ("127.0.1.2", 40000)
    fanout = core.handle_datagram(dgmac.seal(KEY, encode_chat(b"r", TB, b"via"), 2), relay,
                                  2.0)
    assert fanout is not None and fanout.plain == b"bob: via" and bob.addr == relay
    assert core.rebind_ip(TB, "127.0.1.2") is True  # already there: nothing to prove


def test_replayed_datagrams_are_dropped() -> None:
    core = keyed_room()
    sealed = dgmac.seal(KEY, encode_chat(b"r", TB, b"/exit"), 7)
    earlier = dgmac.seal(KEY, encode_chat(b"r", TB, b"hi"), 2)
    assert core.handle_datagram(earlier, B, 2.0) is not None
    assert core.handle_datagram(earlier, FORGER, 3.0) is None
    assert core.drops["replayed"] == 1 and core.tokens[TB].addr == B
    assert core.handle_datagram(sealed, B, 4.0) is None  # the real leave
    assert TB not in core.tokens


def test_late_datagram_inside_the_window_is_accepted_once() -> None:
    core = keyed_room()
    late = dgmac.seal(KEY, encode_chat(b"r", TB, b"late"), 3)
    assert core.handle_datagram(dgmac.seal(KEY, encode_chat(b"r", TB, b"a"), 4), B, 2.0)
    assert core.handle_datagram(late, B, 2.0) is not None
    assert core.handle_datagram(late, B, 2.0) is None
    assert core.drops["replayed"] == 1


def test_unkeyed_member_works_as_before() -> None:
    core = keyed_room()
    fanout = core.handle_datagram(encode_chat(b"r", TA, b"hello"), A, 2.0)
    assert fanout is not None and fanout.plain == b"alice: hello"
    assert core.drops["bad_mac"] == 0


def test_keyed_member_in_an_encrypted_room_leaves_with_a_sealed_kind_04() -> None:
    core = keyed_room(e2e=True)
    leave = dgmac.seal(KEY, encode_chat(b"r", TB, encode_message(Kind.LEAVE)), 2)
    assert core.handle_datagram(leave, B, 2.0) is None
    assert TB not in core.tokens


def test_the_key_crosses_the_pipe_as_hex() -> None:
    key = dgmac.DatagramKey(bytes(range(200, 232)))  # not ASCII
    message = ipc.AddMember(1, "r", TB, "bob", "127.0.0.1", Framing.OCM1, False,
                            datagram_key=key)
    frame = ipc.encode(message)
    assert key.hex().encode() in frame
    (decoded,) = ipc.FrameDecoder().feed(frame)
    assert decoded == message
    assert isinstance(decoded, ipc.AddMember) and decoded.datagram_key == key
    for bad in ("ab", 5, "zz" * 32):
        body = orjson.loads(frame[4:])
        body["datagram_key"] = bad
        with pytest.raises(ipc.IpcError):
            ipc.decode_body(orjson.dumps(body))


def test_the_core_keeps_exact_bytes_for_the_compiled_loop() -> None:
    core = RelayCore()
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 0.0,
                    mac_key=dgmac.DatagramKey(KEY))
    assert type(core.tokens[TA].mac_key) is bytes


def test_compiled_trailer_sizes_are_the_wire_ones() -> None:
    hot = _hot()
    assert (hot.MAC_TRAILER_BYTES, hot.MAC_TAG_BYTES) == (dgmac.TRAILER_BYTES, dgmac.TAG_BYTES)
    with pytest.raises(ValueError):
        hot.blake2s_mac(KEY, b"", 33)


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=200))
def test_replay_window_against_a_set(seqs: list[int]) -> None:
    """``advance`` accepts exactly what a set of every accepted Seq would: a Seq never
    seen, above 0 and less than 64 below the highest accepted."""
    top = seen = 0
    accepted: set[int] = set()
    for seq in seqs:
        fresh = seq > 0 and seq not in accepted and seq > max(accepted, default=0) - 64
        window = dgmac.advance(top, seen, seq)
        assert (window is not None) == fresh, (seq, sorted(accepted))
        if window is not None:
            top, seen = window
            accepted.add(seq)
            assert 0 <= seen < 1 << 64


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=dgmac.MAX_SEQ))
def test_seal_verify_round_trip(data: bytes, seq: int) -> None:
    sealed = dgmac.seal(KEY, data, seq)
    assert dgmac.verify(KEY, sealed) == seq
    assert len(sealed) == len(data) + dgmac.TRAILER_BYTES


@given(st.binary(min_size=1, max_size=32), st.binary(max_size=600),
       st.integers(min_value=1, max_value=32))
def test_compiled_mac_equals_hashlib_for_any_key_data_and_size(key: bytes, data: bytes,
                                                               size: int) -> None:
    hot = _hot()
    assert hot.blake2s_mac(key, data, size) == hashlib.blake2s(data, key=key,
                                                               digest_size=size).digest()


def test_the_join_flow_seals_the_leave_of_an_unwanted_plain_room() -> None:
    """``--e2e`` asked and a plain room made over TLS: the leave the driver sends is the
    membership's first datagram, sealed with Seq 1."""
    room, token = "lobby", b"t" * 22
    details = Details(7001, True, 4033, 300.0, Framing.OCM1, datagram_key=KEY)
    flow = JoinFlow(TcrpTarget("127.0.0.1", 9443),
                    Request.of(Operation.CREATE, room, RequestBody("ann", e2e=True)))
    flow.request_bytes()
    flow.receive(encode_ok(Operation.CREATE, room.encode(), details)
                 + encode_complete(Operation.CREATE, room.encode(), token))
    answer = flow.answer()
    assert answer is not None
    leave = flow.granted(answer, "127.0.0.1").leave
    assert leave == dgmac.seal(KEY, encode_chat(room.encode(), token, b"/exit"), 1)


# --- placements: a fresh key per placement (a restarted worker) ---------------------------
NONCE = bytes(range(7, 39))


def test_rekey_round_trip_and_its_tag_checked() -> None:
    placed = dgmac.placement_key(KEY, NONCE)
    assert placed == hashlib.blake2s(NONCE, key=KEY, digest_size=32, person=b"ocmplace").digest()
    assert placed != KEY and len(placed) == dgmac.KEY_BYTES
    rekey = dgmac.encode_rekey(placed, NONCE)
    assert len(rekey) == dgmac.REKEY_BYTES and rekey[:1] == b"\x00" and dgmac.is_rekey(rekey)
    assert dgmac.decode_rekey(KEY, rekey) == placed
    assert dgmac.decode_rekey(bytes(32), rekey) is None  # another member's key
    assert dgmac.decode_rekey(KEY, rekey[:-1] + bytes([rekey[-1] ^ 1])) is None
    assert dgmac.decode_rekey(KEY, rekey[:-1]) is None  # not a rekey's shape
    assert dgmac.decode_rekey(KEY, b"\x01" + rekey[1:]) is None
    forged = dgmac.REKEY_MAGIC + bytes(32)
    assert dgmac.decode_rekey(KEY, forged + dgmac.tag(KEY, forged)) is None
    sealer = dgmac.Sealer(KEY)
    sealer.seal(b"x")
    sealer.seal(b"y")
    assert not sealer.rekey(rekey[:-1] + b"\x00") and sealer.key == KEY
    assert sealer.rekey(rekey) and sealer.key == placed
    assert dgmac.verify(placed, sealer.seal(b"z")) == 3  # Seq goes on counting


def placed_again(core: RelayCore) -> RelayCore:
    """``core`` after bob's worker died: a new one, seeded with bob (bound to B) and a
    placement nonce, as control re-seeds it."""
    fresh = RelayCore(inactivity_timeout=300.0, max_send_failures=3)
    for token, user, host, key, addr in ((TA, "alice", True, None, A),
                                         (TB, "bob", False, KEY, B)):
        assert fresh.add_member("r", token, user, "127.0.0.1", Framing.PLAIN, host, 60.0,
                                addr, True, True, mac_key=key,
                                placement=NONCE if key is not None else None)
    return fresh


def test_a_datagram_recorded_before_a_worker_restart_is_not_accepted_after() -> None:
    """The attack: a datagram of bob recorded before his worker restarted, replayed after
    (from bob's address). The new placement has its own key: the replay fails its tag and
    is not relayed; bob is told his placement key and chats on with it."""
    core = keyed_room()
    recorded = dgmac.seal(KEY, encode_chat(b"r", TB, b"recorded"), 2)
    assert core.handle_datagram(recorded, B, 2.0) is not None
    core = placed_again(core)
    rekey = dgmac.encode_rekey(dgmac.placement_key(KEY, NONCE), NONCE)
    assert core.outbox == [(rekey, B)]  # told at once, at its bound address
    core.outbox.clear()
    assert core.handle_datagram(recorded, B, 61.0) is None
    assert core.drops["bad_mac"] == 1
    assert core.outbox == [(rekey, B)]  # told again: a datagram under the old key came
    core.outbox.clear()
    assert core.handle_datagram(recorded, FORGER, 61.5) is None
    assert core.outbox == []  # at most once every REKEY_RESEND_S, never to the sender
    sealer = dgmac.Sealer(KEY)
    sealer.seq = 2
    assert sealer.rekey(rekey)
    fanout = core.handle_datagram(sealer.seal(encode_chat(b"r", TB, b"after")), B, 62.0)
    assert fanout is not None and fanout.plain == b"bob: after"


def test_the_placement_crosses_the_pipe_and_only_with_a_key() -> None:
    key = dgmac.DatagramKey(KEY)
    message = ipc.AddMember(1, "r", TB, "bob", "127.0.0.1", Framing.OCM1, False,
                            datagram_key=key, placement=dgmac.DatagramKey(NONCE))
    (decoded,) = ipc.FrameDecoder().feed(ipc.encode(message))
    assert decoded == message
    core = RelayCore()
    assert core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 0.0,
                           placement=NONCE)
    assert core.tokens[TA].mac_key is None and TA not in core.rekeys
    assert core.add_member("r", TB, "bob", "127.0.0.1", Framing.PLAIN, False, 0.0,
                           mac_key=key, placement=dgmac.DatagramKey(NONCE))
    assert type(core.tokens[TB].mac_key) is bytes  # exact bytes for the compiled loop
    assert core.outbox == []  # no address yet: told when a datagram fails its tag
