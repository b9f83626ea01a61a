"""The relay core without sockets: explicit ``now``, assertions on bytes and events."""

from __future__ import annotations

import orjson
import pytest

from relay.core import GlobalChat, RelayCore
from relay.ipc import Bound, Closed, Left
from wire.chat import encode_chat
from wire.codes import Framing, Reason

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
C = ("127.0.0.1", 5003)
TA, TB, TC = b"A" + b"a" * 32, b"A" + b"b" * 32, b"A" + b"c" * 32
JOINED_BOB = "bob がチャットルームに参加しました".encode()


def room_of_three(framing_c: Framing = Framing.PLAIN, timeout: float = 300.0) -> RelayCore:
    core = RelayCore(inactivity_timeout=timeout, max_send_failures=3)
    assert core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 0.0)
    assert core.add_member("r", TB, "bob", "127.0.0.1", Framing.PLAIN, False, 0.0)
    assert core.add_member("r", TC, "carol", "127.0.0.1", framing_c, False, 0.0)
    for token, addr in ((TA, A), (TB, B), (TC, C)):
        assert core.handle_datagram(encode_chat(b"r", token, b""), addr, 1.0) is None
    core.outbox.clear()
    core.events.clear()
    return core


def sends(core: RelayCore, fanout: object) -> list[tuple[bytes, tuple[str, int]]]:
    """What the adapter would send for a fan-out (same skip-the-sender rule)."""
    assert isinstance(fanout, tuple)
    plain, plain_addrs, framed, framed_addrs, src, _room = fanout
    out = [(plain, a) for a in plain_addrs if a is not src] if plain is not None else []
    out += [(framed, a) for a in framed_addrs if a is not src] if framed is not None else []
    return sorted(out, key=lambda s: s[1])


def test_first_datagram_binds_and_announces_once() -> None:
    core = RelayCore()
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 0.0)
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.PLAIN, False, 0.0)
    assert core.handle_datagram(encode_chat(b"r", TA, b""), A, 1.0) is None
    assert core.outbox == []  # nobody else is bound yet
    assert core.handle_datagram(encode_chat(b"r", TB, b""), B, 1.0) is None
    assert core.outbox == [(JOINED_BOB, A)]
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TB, b""), B, 2.0)  # keepalive: no re-announce
    assert core.outbox == []
    assert [type(e) for e in core.events] == [Bound, Bound]


def test_chat_relayed_to_every_other_member_plain_and_framed() -> None:
    core = room_of_three(framing_c=Framing.OCM1)
    out = core.handle_datagram(encode_chat(b"r", TA, "héllo".encode()), A, 2.0)
    assert sends(core, out) == [("alice: héllo".encode(), B),
                                (b"\x05alice" + "héllo".encode(), C)]


def test_sender_never_gets_its_own_message() -> None:
    core = room_of_three()
    out = core.handle_datagram(encode_chat(b"r", TB, b"hi"), B, 2.0)
    assert [a for _, a in sends(core, out)] == [A, C]


@pytest.mark.parametrize(
    ("data", "addr", "reason"),
    [
        (encode_chat(b"r", b"A" + b"z" * 32, b"x"), A, "unknown_token"),
        (encode_chat(b"r", TA, b"x"), ("127.0.0.2", 5001), "wrong_ip"),
        (encode_chat(b"q", TA, b"x"), A, "wrong_room"),
        (encode_chat(b"r", TA, b"\xff"), A, "bad_utf8"),
        (encode_chat(b"r", TA, b"x")[:5], A, "malformed"),
        (b"\x00\x01x", A, "malformed"),
        (b"\x01", A, "malformed"),
        (encode_chat(b"r", TA, b"x" * 4000) + b"y" * 100, A, "too_large"),
    ],
)
def test_bad_datagrams_are_dropped_counted_and_change_nothing(data: bytes, addr: tuple[str, int],
                                                               reason: str) -> None:
    core = room_of_three()
    seen = core.tokens[TA].last_seen
    assert core.handle_datagram(data, addr, 50.0) is None
    assert core.drops[reason] == 1
    assert core.outbox == [] and core.events == []
    assert core.tokens[TA].last_seen == seen and core.tokens[TA].addr == A


def test_rebinding_from_another_port_of_the_same_ip() -> None:
    core = room_of_three()
    new = ("127.0.0.1", 6001)
    out = core.handle_datagram(encode_chat(b"r", TB, b"moved"), new, 2.0)
    assert core.tokens[TB].addr == new
    assert core.events[-1] == Bound(TB, "127.0.0.1", 6001, proven=True)
    assert [a for _, a in sends(core, out)] == [A, C]
    out = core.handle_datagram(encode_chat(b"r", TA, b"to bob"), A, 3.0)
    assert new in [a for _, a in sends(core, out)]


@pytest.mark.parametrize("text", [b"/exit", b"  /EXIT \n", b"/Exit"])
def test_exit_leaves_and_tells_the_others(text: bytes) -> None:
    core = room_of_three()
    assert core.handle_datagram(encode_chat(b"r", TB, text), B, 2.0) is None
    left = "bob がチャットルームから退出しました".encode()
    assert sorted(core.outbox, key=lambda s: s[1]) == [(left, A), (left, C)]
    assert core.events == [Left(TB, Reason.EXIT)]
    assert TB not in core.tokens
    core.outbox.clear()
    assert core.handle_datagram(encode_chat(b"r", TB, b"again"), B, 3.0) is None
    assert core.drops["unknown_token"] == 1


def test_host_exit_closes_the_room_with_closed_and_no_left() -> None:
    core = room_of_three(framing_c=Framing.OCM1)
    core.handle_datagram(encode_chat(b"r", TA, b"/exit"), A, 2.0)
    closed_plain = "チャットルームが閉じられました".encode()
    framed = dict(core.outbox)
    assert sorted(core.outbox, key=lambda s: s[1])[0] == (closed_plain, B)
    notice = orjson.loads([p for p, a in core.outbox if a == C][0][1:])
    assert notice["event"] == "closed"
    assert A not in framed.values() and len(core.outbox) == 2
    assert core.events == [Closed("r", "exit")]
    assert core.rooms == {} and core.tokens == {}


def test_inactivity_evicts_member_with_disconnected_and_left() -> None:
    core = room_of_three(timeout=10.0)
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 8.0)
    core.handle_datagram(encode_chat(b"r", TC, b""), C, 8.0)
    assert core.next_deadline() == 10.0
    core.handle_timer(9.9)
    assert core.outbox == []
    core.handle_timer(10.5)  # bob silent since his bind at 1.0: due at 11.0
    assert core.outbox == []
    core.handle_timer(11.0)
    disconnected = "しばらく発言しなかったので、チャットルームから退出させました".encode()
    left = "bob がチャットルームから退出しました".encode()
    assert sorted(core.outbox, key=lambda s: s[1]) == [(left, A), (disconnected, B), (left, C)]
    assert core.events == [Left(TB, Reason.INACTIVE)]
    assert core.evictions["inactive"] == 1


def test_inactivity_clock_starts_when_token_is_issued() -> None:
    core = RelayCore(inactivity_timeout=5.0)
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 100.0)
    core.handle_timer(104.9)
    assert TA in core.tokens
    core.handle_timer(105.0)
    assert core.tokens == {} and core.events == [Closed("r", "inactive")]


def test_host_inactive_closes_room_host_gets_disconnected() -> None:
    core = room_of_three(framing_c=Framing.OCM1, timeout=10.0)
    for token, addr in ((TB, B), (TC, C)):
        core.handle_datagram(encode_chat(b"r", token, b""), addr, 9.0)
    core.handle_timer(11.0)
    by_addr = {a: p for p, a in core.outbox}
    assert by_addr[A] == "しばらく発言しなかったので、チャットルームから退出させました".encode()
    assert by_addr[B] == "チャットルームが閉じられました".encode()
    assert orjson.loads(by_addr[C][1:])["event"] == "closed"
    assert core.events == [Closed("r", "inactive")]


def test_send_failures_must_be_consecutive_then_evict() -> None:
    core = room_of_three()
    core.handle_send_failure(B, 2.0)
    core.handle_send_failure(B, 2.0)
    core.handle_send_success(B)
    core.handle_send_failure(B, 2.0)
    core.handle_send_failure(B, 2.0)
    assert TB in core.tokens
    core.handle_send_failure(B, 2.0)
    assert TB not in core.tokens
    assert core.events == [Left(TB, Reason.SEND_FAILURES)]
    assert core.evictions["send_failures"] == 1
    assert core.failing == {}


def test_too_long_for_a_recipient_goes_to_nobody_and_sender_gets_error() -> None:
    core = RelayCore()
    long_name = "n" * 200
    core.add_member("r", TA, long_name, "127.0.0.1", Framing.OCM1, True, 0.0)
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.PLAIN, False, 0.0)
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 1.0)
    core.handle_datagram(encode_chat(b"r", TB, b""), B, 1.0)
    core.outbox.clear()
    message = b"m" * (4096 - 2 - 1 - len(TA))  # the longest datagram A can send
    assert core.handle_datagram(encode_chat(b"r", TA, message), A, 2.0) is None
    over = len(long_name) + 2 + len(message) - 4094
    assert len(core.outbox) == 1 and core.outbox[0][1] == A
    notice = orjson.loads(core.outbox[0][0][1:])
    assert notice["event"] == "error" and notice["over"] == over
    assert str(over) in notice["text"]


def test_registration_binds_issued_ip_and_announces() -> None:
    core = RelayCore()
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 0.0)
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.PLAIN, False, 0.0)
    core.register(TA, 5001, 0.5)
    core.register(TB, 0, 0.5)  # port 0 registers nothing
    assert core.tokens[TB].addr is None
    core.register(TB, 5002, 0.5)
    assert core.outbox == [(JOINED_BOB, A)]


def test_add_member_rules() -> None:
    core = RelayCore()
    assert not core.add_member("r", TB, "bob", "127.0.0.1", Framing.PLAIN, False, 0.0)
    assert core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 0.0)
    assert core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 0.0)  # same
    assert not core.add_member("r", TC, "carol", "127.0.0.1", Framing.PLAIN, True, 0.0)


def test_reseeded_member_keeps_address_without_new_announcement() -> None:
    core = RelayCore()
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.PLAIN, True, 0.0, A, True)
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.PLAIN, False, 0.0, B, True)
    assert core.outbox == []
    out = core.handle_datagram(encode_chat(b"r", TA, b"still here"), A, 1.0)
    assert sends(core, out) == [(b"alice: still here", B)]


def test_shutdown_sends_closed_to_everyone() -> None:
    core = room_of_three()
    core.shutdown()
    assert sorted(a for _, a in core.outbox) == [A, B, C]
    assert core.events == [Closed("r", "shutdown")]


def test_shutdown_closed_says_why_framed_and_stays_exact_plain() -> None:
    """Framed members learn the server is shutting down (§2.3 allows the reason); plain
    members get the exact §2.2 text; a host's /exit sends no reason."""
    core = room_of_three(framing_c=Framing.OCM1)
    core.shutdown()
    got = {addr: data for data, addr in core.outbox}
    assert got[C] == (b'\x00{"event":"closed","reason":"shutdown",'
                      b'"text":"the server is shutting down"}')
    assert got[A] == got[B] == "チャットルームが閉じられました".encode()
    assert core.evictions == {"exit": 0, "inactive": 0, "send_failures": 0}
    core = room_of_three(framing_c=Framing.OCM1)
    core.handle_datagram(encode_chat(b"r", TA, b"/exit"), A, 2.0)
    assert (b'\x00{"event":"closed","text":"the room was closed"}', C) in core.outbox


def test_global_chat_relays_unchanged_to_others_and_forgets_silent() -> None:
    chat = GlobalChat(inactivity_timeout=10.0, max_send_failures=2, max_clients=2)
    assert chat.handle_datagram(b"\x05alice", A, 0.0) is None  # keepalive remembers
    assert chat.handle_datagram(b"\x03bobhello", B, 1.0) == [A, B]
    assert chat.handle_datagram(b"\x03carhi", C, 1.0) is None
    assert chat.drops["too_many_clients"] == 1
    for bad in (b"", b"\x00x", b"\x09ab", b"\x01a\xff", b"\x01" + b"a" * 4096):
        assert chat.handle_datagram(bad, C, 1.0) is None
    assert chat.drops["malformed"] == 3 and chat.drops["bad_utf8"] == 1
    assert chat.drops["too_large"] == 1
    chat.handle_timer(10.0)
    assert chat.addrs == [B]
    chat.handle_send_failure(B)
    chat.handle_send_success(B)
    chat.handle_send_failure(B)
    assert chat.addrs == [B]
    chat.handle_send_failure(B)
    assert chat.addrs == [] and chat.evictions == {"exit": 0, "inactive": 1,
                                                   "send_failures": 1}


def test_chat_rate_token_bucket_drops_excess_and_refills() -> None:
    core = room_of_three()
    core.configure(300.0, 3, 1.0, chat_rate=2.0, chat_burst=3)
    results = [core.handle_datagram(encode_chat(b"r", TA, b"m"), A, 2.0) for _ in range(5)]
    assert [r is not None for r in results] == [True, True, True, False, False]
    assert core.drops["rate_limited"] == 2
    assert core.handle_datagram(encode_chat(b"r", TA, b""), A, 2.1) is None  # keepalive ok
    assert core.handle_datagram(encode_chat(b"r", TA, b"m"), A, 2.2) is None  # 0.4 refilled
    assert core.handle_datagram(encode_chat(b"r", TA, b"m"), A, 2.6) is not None  # 1.2
    assert core.handle_datagram(encode_chat(b"r", TB, b"m"), B, 2.6) is not None  # per member


def test_rebind_ip_moves_a_member_behind_a_relaying_node() -> None:
    """Cluster mode: after ``rebind_ip`` only the relaying node's IP is accepted, and the
    member's old address gets nothing until it speaks from there."""
    core = room_of_three()
    core.rebind_ip(TB, "127.0.1.2")
    assert core.tokens[TB].addr is None
    out = core.handle_datagram(encode_chat(b"r", TA, b"hi"), A, 2.0)
    assert [a for _, a in sends(core, out)] == [C]
    assert core.handle_datagram(encode_chat(b"r", TB, b"x"), B, 2.0) is None
    assert core.drops["wrong_ip"] == 1
    relay = ("127.0.1.2", 40000)
    out = core.handle_datagram(encode_chat(b"r", TB, b"via B"), relay, 3.0)
    assert [a for _, a in sends(core, out)] == [A, C]
    assert core.outbox == []  # no second "joined"
    core.rebind_ip(TB, "127.0.1.2")  # idempotent
    core.rebind_ip(b"unknown", "127.0.1.2")
    assert core.tokens[TB].addr == relay


def test_close_room_on_order_tells_everyone_closed() -> None:
    core = room_of_three()
    core.close_room("r", "moved")
    core.close_room("nope", "moved")  # unknown: nothing happens
    assert sorted(a for _, a in core.outbox) == [A, B, C]
    assert core.events == [Closed("r", "moved")]
    assert not core.tokens and not core.rooms
