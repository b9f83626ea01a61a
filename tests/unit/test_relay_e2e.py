"""The relay core in an encrypted room (docs/e2e.md §3.2), without sockets: opaque
payloads, kind routing, addressed delivery to one member, leave, drops and their counters,
the delivery limit, and the ``joined`` notice with the newcomer's keys."""

from __future__ import annotations

import orjson
import pytest

from relay.core import RelayCore
from wire.chat import encode_chat, framed_prefix
from wire.codes import Framing
from wire.e2e import Kind, PublicKeys, decode_route, encode_message
from wire.limits import MAX_DATAGRAM_BYTES, MAX_DELIVERY_BYTES

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
C = ("127.0.0.1", 5003)
TA, TB, TC = b"A" + b"a" * 32, b"A" + b"b" * 32, b"A" + b"c" * 32
KEYS = {name: PublicKeys(bytes([i]) * 32, bytes([i + 1]) * 32)
        for i, name in ((1, "alice"), (3, "bob"), (5, "carol"))}


def encrypted_room(carol_bound: bool = True) -> RelayCore:
    core = RelayCore(inactivity_timeout=300.0, max_send_failures=3)
    for token, user, host in ((TA, "alice", True), (TB, "bob", False), (TC, "carol", False)):
        assert core.add_member("r", token, user, "127.0.0.1", Framing.OCM1, host, 0.0,
                               e2e=True, keys=KEYS[user])
    bound = ((TA, A), (TB, B), (TC, C)) if carol_bound else ((TA, A), (TB, B))
    for token, addr in bound:
        assert core.handle_datagram(encode_chat(b"r", token, b""), addr, 1.0) is None
    core.outbox.clear()
    core.events.clear()
    return core


def fan(fanout: object) -> list[tuple[bytes, tuple[str, int]]]:
    assert isinstance(fanout, tuple)
    plain, plain_addrs, framed, framed_addrs, src, _room = fanout
    assert plain is None or not [a for a in plain_addrs if a is not src]
    return sorted(((framed, a) for a in framed_addrs if a is not src), key=lambda s: s[1])


def test_joined_notice_carries_the_newcomers_keys() -> None:
    core = RelayCore()
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.OCM1, True, 0.0, e2e=True,
                    keys=KEYS["alice"])
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.OCM1, False, 0.0, e2e=True,
                    keys=KEYS["bob"])
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 1.0)
    core.handle_datagram(encode_chat(b"r", TB, b""), B, 1.0)
    ((notice, addr),) = core.outbox
    assert addr == A and notice[0] == 0
    body = orjson.loads(notice[1:])
    assert (body["event"], body["user"], body["keys"]) == ("joined", "bob",
                                                           KEYS["bob"].to_json())


def test_keys_are_kept_only_until_the_joined_notice_carries_them() -> None:
    """The relay needs a member's keys for its ``joined`` notice only: not one slot of
    every member, and not past the announcement, a resume or the member's leaving."""
    core = RelayCore()
    for token, user, host in ((TA, "alice", True), (TB, "bob", False), (TC, "carol", False)):
        core.add_member("r", token, user, "127.0.0.1", Framing.OCM1, host, 0.0, e2e=True,
                        keys=KEYS[user])
    assert core.join_keys == {TA: KEYS["alice"], TB: KEYS["bob"], TC: KEYS["carol"]}
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 1.0)
    assert set(core.join_keys) == {TB, TC}
    new = b"A" + b"n" * 32
    assert core.resume(TB, new, "127.0.0.1", 2.0)  # not announced yet: its keys follow it
    assert set(core.join_keys) == {new, TC}
    core.handle_datagram(encode_chat(b"r", new, b""), B, 2.0)
    ((notice, _),) = core.outbox
    assert orjson.loads(notice[1:])["keys"] == KEYS["bob"].to_json()
    core.close_room("r", "test")
    assert core.join_keys == {}  # carol never bound: hers went with her


def test_chat_is_opaque_no_utf8_check_and_no_exit_text() -> None:
    core = encrypted_room()
    message = b"\x01\xff\xfe\x00 not text"
    out = core.handle_datagram(encode_chat(b"r", TA, message), A, 2.0)
    expected = framed_prefix("alice") + message
    assert fan(out) == [(expected, B), (expected, C)]
    # "/exit" is not a kind: dropped, alice stays
    assert core.handle_datagram(encode_chat(b"r", TB, b"/exit"), B, 2.0) is None
    assert TB in core.tokens and core.drops["bad_kind"] == 1


@pytest.mark.parametrize("kind", [Kind.ENVELOPE, Kind.KEY_REQUEST])
def test_addressed_kinds_reach_only_the_one_member_named(kind: Kind) -> None:
    core = encrypted_room()
    message = encode_message(kind, b"\x01sealed", "carol")
    assert core.handle_datagram(encode_chat(b"r", TA, message), A, 2.0) is None
    route = decode_route(message)
    assert route is not None
    assert core.outbox == [(framed_prefix("alice") + bytes((kind,)) + b"\x01sealed", C)]
    assert core.relayed == 1


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (encode_message(Kind.ENVELOPE, b"x", "nobody"), "no_recipient"),
        (encode_message(Kind.ENVELOPE, b"x", "alice"), "no_recipient"),  # oneself
        (b"\x09abc", "bad_kind"),
        (b"\x00abc", "bad_kind"),
        (b"\x04\x00", "malformed"),  # leave with a body
        (b"\x02\x00x", "malformed"),  # empty recipient
        (b"\x02\x09bob", "malformed"),  # recipient past the end
        (b"\x03", "malformed"),
    ],
)
def test_drops_are_counted_and_nothing_is_sent(message: bytes, reason: str) -> None:
    core = encrypted_room()
    assert core.handle_datagram(encode_chat(b"r", TA, message), A, 2.0) is None
    assert core.outbox == [] and core.drops[reason] == 1
    assert TA in core.tokens


def test_addressed_to_an_unbound_member_is_dropped_after_refreshing_the_sender() -> None:
    core = encrypted_room(carol_bound=False)
    message = encode_message(Kind.ENVELOPE, b"x", "carol")
    assert core.handle_datagram(encode_chat(b"r", TA, message), A, 50.0) is None
    assert core.outbox == [] and core.drops["no_recipient"] == 1
    assert core.tokens[TA].last_seen == 50.0
    # a bad kind proves nothing: no refresh
    core.handle_datagram(encode_chat(b"r", TA, b"\x09"), A, 60.0)
    assert core.tokens[TA].last_seen == 50.0


def test_leave_kind_is_exit() -> None:
    core = encrypted_room()
    assert core.handle_datagram(encode_chat(b"r", TB, b"\x04"), B, 2.0) is None
    assert TB not in core.tokens
    assert sorted(a for _, a in core.outbox) == [A, C]
    for notice, _ in core.outbox:
        body = orjson.loads(notice[1:])
        assert (body["event"], body["user"], body["reason"]) == ("left", "bob", "exit")


def test_a_delivery_over_the_limit_is_refused_with_the_error_notice() -> None:
    core = RelayCore()
    long_name = "n" * 255
    core.add_member("r", TA, long_name, "127.0.0.1", Framing.OCM1, True, 0.0, e2e=True,
                    keys=KEYS["alice"])
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.OCM1, False, 0.0, e2e=True,
                    keys=KEYS["bob"])
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 1.0)
    core.handle_datagram(encode_chat(b"r", TB, b""), B, 1.0)
    core.outbox.clear()
    room_fits = MAX_DATAGRAM_BYTES - 2 - 1 - len(TA)  # the longest Message in a datagram
    for message in (b"\x01" + b"z" * (room_fits - 1),
                    encode_message(Kind.ENVELOPE, b"z" * (room_fits - 5), "bob")):
        over = len(framed_prefix(long_name)) + len(message) - MAX_DELIVERY_BYTES
        if message[0] == Kind.ENVELOPE:
            over -= 4  # the recipient field is removed
        assert over > 0
        assert core.handle_datagram(encode_chat(b"r", TA, message), A, 2.0) is None
        ((notice, addr),) = core.outbox
        assert addr == A and orjson.loads(notice[1:])["event"] == "error"
        core.outbox.clear()


def test_plain_rooms_are_unchanged() -> None:
    core = RelayCore()
    core.add_member("p", TA, "alice", "127.0.0.1", Framing.OCM1, True, 0.0)
    core.add_member("p", TB, "bob", "127.0.0.1", Framing.OCM1, False, 0.0,
                    keys=KEYS["bob"])  # keys without e2e are ignored
    core.handle_datagram(encode_chat(b"p", TA, b""), A, 1.0)
    core.handle_datagram(encode_chat(b"p", TB, b""), B, 1.0)
    ((notice, _),) = core.outbox
    assert "keys" not in orjson.loads(notice[1:])
    assert core.handle_datagram(encode_chat(b"p", TB, b"\x01\xff"), B, 2.0) is None
    assert core.drops["bad_utf8"] == 1


def test_the_pipe_carries_e2e_and_keys() -> None:
    from relay import ipc

    for keys in (KEYS["bob"], None):
        message = ipc.AddMember(7, "r", TB, "bob", "127.0.0.1", Framing.OCM1, False,
                                e2e=True, keys=keys)
        assert ipc.FrameDecoder().feed(ipc.encode(message)) == [message]
    bad = ipc.encode(ipc.AddMember(7, "r", TB, "bob", "127.0.0.1", Framing.OCM1, False))
    bad = bad.replace(b'"keys":null', b'"keys":{"x25519":"AA=="}')
    with pytest.raises(ipc.IpcError):
        ipc.FrameDecoder().feed(ipc.FRAME_HEADER.pack(len(bad) - 4) + bad[4:])


def test_a_resumed_members_addressed_bucket_follows_it_and_goes_with_it() -> None:
    core = encrypted_room()
    assert core.handle_datagram(
        encode_chat(b"r", TB, encode_message(Kind.ENVELOPE, b"x", "carol")), B, 2.0) is None
    assert set(core.addressed) == {TB}
    new = b"A" + b"n" * 32
    assert core.resume(TB, new, "127.0.0.1", 3.0)
    assert set(core.addressed) == {new}  # the bucket kept: no fresh burst by resuming
    core.handle_datagram(encode_chat(b"r", new, b""), B, 3.0)
    core.handle_datagram(encode_chat(b"r", new, bytes((Kind.LEAVE,))), B, 4.0)
    assert new not in core.tokens and core.addressed == {}
