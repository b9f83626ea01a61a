"""Reliable framed delivery (ocm1r) in the relay core and its history, without sockets."""

from __future__ import annotations

from collections import deque

import pytest

from relay.core import RelayCore, Reliable
from relay.history import History, HistoryBudget
from wire import errors
from wire.chat import encode_chat
from wire.codes import Framing
from wire.limits import (
    ACK_HOLD_S,
    HISTORY_ENTRY_OVERHEAD_BYTES,
    MAX_DELIVERY_BYTES,
    NACK_BURST,
    NACK_MAX_RESENDS,
    NACK_RATE,
)
from wire.reliable import (
    Ack,
    Carried,
    Data,
    Lost,
    Notice,
    Sync,
    decode_delivery,
    decode_nack,
    encode_ack,
    encode_carried,
    encode_data,
    encode_lost,
    encode_nack,
    encode_send,
    encode_sync,
)

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
C = ("127.0.0.1", 5003)
TA, TB, TC = b"A" + b"a" * 32, b"A" + b"b" * 32, b"A" + b"c" * 32
EPOCH = 0x1234ABCD


# --- codecs: hex vectors (docs/protocol.md, our extension) -----------------------------------
def test_hex_vectors() -> None:
    assert encode_send(7, b"hi!").hex(" ") == "01 00 00 00 07 68 69 21"
    assert encode_nack(EPOCH, [(3, 2), (9, 1)]).hex(" ") == (
        "02 12 34 ab cd 00 00 00 03 00 02 00 00 00 09 00 01")
    assert encode_data(EPOCH, 5, b"\x05alicehi!").hex(" ") == (
        "01 12 34 ab cd 00 00 00 05 05 61 6c 69 63 65 68 69 21")
    assert encode_ack(EPOCH, 7, 5).hex(" ") == "02 12 34 ab cd 00 00 00 07 00 00 00 05"
    assert encode_lost(EPOCH, 3, 2).hex(" ") == "03 12 34 ab cd 00 00 00 03 00 02"
    assert encode_sync(EPOCH, 3, 9).hex(" ") == "04 12 34 ab cd 00 00 00 03 00 00 00 09"
    assert encode_send(8, b"yo", held=True).hex(" ") == "06 00 00 00 08 79 6f"
    assert encode_carried(8, 43, encode_data(EPOCH, 44, b"\x03bobok")).hex(" ") == (
        "06 00 00 00 08 00 00 00 2b 01 12 34 ab cd 00 00 00 2c 03 62 6f 62 6f 6b")


def test_deliveries_round_trip_and_bad_ones_raise_protocol_errors() -> None:
    assert decode_delivery(encode_data(EPOCH, 5, b"\x01xy")) == Data(EPOCH, 5, b"\x01xy")
    assert decode_delivery(encode_ack(EPOCH, 7, 5)) == Ack(EPOCH, 7, 5)
    assert decode_delivery(encode_lost(EPOCH, 3, 2)) == Lost(EPOCH, 3, 2)
    assert decode_delivery(encode_sync(EPOCH, 3, 9)) == Sync(EPOCH, 3, 9)
    assert decode_delivery(b"\x00{}") == Notice(b"\x00{}")
    assert decode_delivery(encode_carried(8, 43, encode_data(EPOCH, 44, b"\x03bobok"))) == \
        Carried(Ack(EPOCH, 8, 43), Data(EPOCH, 44, b"\x03bobok"))
    for bad in (encode_carried(8, 43, b""), encode_carried(8, 43, encode_ack(EPOCH, 1, 1)),
                encode_carried(8, 43, encode_data(EPOCH, 1, b""))):
        with pytest.raises(errors.ProtocolError):
            decode_delivery(bad)
    assert decode_nack(encode_nack(EPOCH, [(3, 2)])) == (EPOCH, [(3, 2)])
    for bad in (b"", b"\x01\x00", encode_ack(EPOCH, 1, 1) + b"x", b"\x09abc", b"\x01" * 4095):
        with pytest.raises(errors.ProtocolError):
            decode_delivery(bad)
    for bad in (b"\x02", encode_nack(EPOCH, [(1, 1)])[:-1], b"\x02" + bytes(4) + bytes(6),
                b"\x02" + bytes(4) + b"\x00\x00\x00\x01\x01\x01"):
        with pytest.raises(errors.ProtocolError):
            decode_nack(bad)
    with pytest.raises(errors.FieldOutOfRange):
        encode_nack(EPOCH, [(1, 1)] * 17)


# --- the history -------------------------------------------------------------------------------
def test_history_numbers_keeps_and_resends_within_count_bytes_and_age() -> None:
    budget = HistoryBudget(max_messages=3, max_bytes=10_000, max_age=60.0)
    h = History(EPOCH, budget)
    sent = [h.number(b"\x01x%d" % i, float(i)) for i in range(5)]  # seq 1..5
    assert sent[0] == encode_data(EPOCH, 1, b"\x01x0")
    out: list[bytes] = []
    h.resend(1, 5, 5.0, out)  # 1 and 2 fell out (count 3)
    assert out == [encode_lost(EPOCH, 1, 2), *sent[2:]]
    out.clear()
    h.resend(6, 3, 5.0, out)  # not given yet: nothing
    assert out == []
    h.expire(63.5)  # seq 3 (t=2) and 4 (t=3) are older than 60 s
    h.resend(3, 3, 63.5, out)
    assert out == [encode_lost(EPOCH, 3, 2), sent[4]]
    assert budget.used == h.bytes == len(sent[4]) + HISTORY_ENTRY_OVERHEAD_BYTES
    h.clear()
    assert budget.used == 0


def test_history_bytes_and_worker_budget_bound_memory_under_abuse() -> None:
    budget = HistoryBudget(max_messages=256, max_bytes=20_000, worker_bytes=30_000)
    rooms = [History(i, budget) for i in range(5)]
    for i in range(1000):  # 1000 maximal messages spread over 5 rooms
        rooms[i % 5].number(b"\x01" + b"x" * 4000, float(i))
        assert all(r.bytes <= 20_000 for r in rooms)
        assert budget.used <= 30_000
    assert budget.used == sum(r.bytes for r in rooms)


def test_a_history_keeping_nothing_holds_no_deque() -> None:
    """An empty deque is about 650 B with its first block: more than a member costs the
    worker (docs/performance.md), so a room that keeps nothing must not hold one."""
    budget = HistoryBudget(max_messages=4, max_age=60.0)
    h = History(EPOCH, budget)
    assert not isinstance(h.entries, deque)
    h.number(b"\x01a", 0.0)
    h.number(b"\x01b", 1.0)
    assert isinstance(h.entries, deque) and [seq for seq, _, _ in h.entries] == [1, 2]
    h.expire(61.0)  # both aged out: the deque goes with them
    assert not isinstance(h.entries, deque) and h.bytes == budget.used == 0
    out: list[bytes] = []
    h.resend(1, 3, 61.0, out)
    assert out == [encode_lost(EPOCH, 1, 2)]
    h.number(b"\x01c", 62.0)
    h.clear()
    assert not isinstance(h.entries, deque) and h.bytes == budget.used == 0
    off = History(EPOCH, HistoryBudget(max_messages=0))  # --history-messages 0
    assert off.number(b"\x01a", 0.0) == encode_data(EPOCH, 1, b"\x01a")
    assert not isinstance(off.entries, deque)


def test_history_skip_is_answered_as_lost() -> None:
    h = History(EPOCH, HistoryBudget())
    one = h.number(b"\x01a", 0.0)
    assert h.skip(0.0) == 2
    three = h.number(b"\x01b", 0.0)
    out: list[bytes] = []
    h.resend(1, 3, 0.0, out)
    assert out == [one, encode_lost(EPOCH, 2, 1), three]


# --- the core ----------------------------------------------------------------------------------
def reliable_room(c_framing: Framing = Framing.PLAIN) -> RelayCore:
    """alice (host) and bob are ocm1r, carol plain (or ``c_framing``); all bound."""
    core = RelayCore(new_epoch=lambda: EPOCH)
    assert core.add_member("r", TA, "alice", "127.0.0.1", Framing.OCM1R, True, 0.0)
    assert core.add_member("r", TB, "bob", "127.0.0.1", Framing.OCM1R, False, 0.0)
    assert core.add_member("r", TC, "carol", "127.0.0.1", c_framing, False, 0.0)
    for token, addr in ((TA, A), (TB, B), (TC, C)):
        core.handle_datagram(encode_chat(b"r", token, b""), addr, 1.0)
    core.outbox.clear()
    core.events.clear()
    return core


def test_join_notices_are_numbered_and_a_keepalive_answers_the_latest_seq() -> None:
    core = RelayCore(new_epoch=lambda: EPOCH)
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.OCM1R, True, 0.0)
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.OCM1R, False, 0.0)
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 1.0)
    assert core.outbox == [(encode_sync(EPOCH, 2, 1), A)]  # its own joined is seq 1
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TB, b""), B, 1.0)
    joined = (b'\x00{"event":"joined","user":"bob","text":"bob joined the room"}')
    assert core.outbox == [(encode_data(EPOCH, 2, joined), A), (encode_sync(EPOCH, 3, 2), B)]
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 2.0)
    assert core.outbox == [(encode_sync(EPOCH, 2, 2), A)]


def test_send_is_numbered_relayed_once_acked_each_time_and_plain_unchanged() -> None:
    core = reliable_room()
    out = core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"hi")), A, 2.0)
    assert out is not None and out.plain == b"alice: hi" and out.framed is None
    assert out.plain_addrs == [C]
    assert core.outbox == [(encode_data(EPOCH, 4, b"\x05alicehi"), B),
                           (encode_ack(EPOCH, 1, 4), A)]
    core.outbox.clear()
    again = core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"hi")), A, 2.5)
    assert again is None and core.outbox == [(encode_ack(EPOCH, 1, 4), A)]
    assert core.relayed == 1


def test_plain_chat_in_a_numbered_room_is_numbered_for_reliable_members() -> None:
    core = reliable_room(Framing.OCM1)
    out = core.handle_datagram(encode_chat(b"r", TC, b"yo"), C, 2.0)
    assert out is not None and out.framed is None and out.plain is None
    assert core.outbox == [(encode_data(EPOCH, 4, b"\x05carolyo"), A),
                           (encode_data(EPOCH, 4, b"\x05carolyo"), B)]


def test_nack_resends_from_history_and_answers_lost_rate_limited() -> None:
    core = RelayCore(new_epoch=lambda: EPOCH, history=HistoryBudget(max_messages=4))
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.OCM1R, True, 0.0)
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.OCM1R, False, 0.0)
    for token, addr in ((TA, A), (TB, B)):
        core.handle_datagram(encode_chat(b"r", token, b""), addr, 1.0)
    for i in range(6):  # seq 3..8; the history keeps 5..8
        core.handle_datagram(encode_chat(b"r", TA, encode_send(i + 1, b"m%d" % i)), A, 2.0)
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TB, encode_nack(EPOCH, [(2, 4), (8, 1)])), B, 2.1)
    assert core.outbox == [(encode_lost(EPOCH, 2, 3), B),
                           (encode_data(EPOCH, 5, b"\x05alicem2"), B),
                           (encode_data(EPOCH, 8, b"\x05alicem5"), B)]
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TB, encode_nack(EPOCH ^ 1, [(5, 1)])), B, 2.1)
    assert core.outbox == []  # another epoch: not this room's numbers
    for _ in range(NACK_BURST + 5):
        core.handle_datagram(encode_chat(b"r", TB, encode_nack(EPOCH, [(5, 1)])), B, 2.2)
    assert len(core.outbox) == NACK_BURST - 1 and core.drops["rate_limited"] == 6


def test_the_nack_bucket_allows_a_burst_then_its_rate() -> None:
    rel = Reliable()
    assert [rel.may_nack(5.0) for _ in range(NACK_BURST + 1)] == [True] * NACK_BURST + [False]
    assert not rel.may_nack(5.0 + 0.5 / NACK_RATE)  # half a NACK refilled: not enough
    assert rel.may_nack(5.0 + 1.0 / NACK_RATE) and not rel.may_nack(5.0 + 1.0 / NACK_RATE)
    # idle for long: full again, never more than the burst
    assert sum(rel.may_nack(100.0) for _ in range(3 * NACK_BURST)) == NACK_BURST
    # at exactly the rate, each one passes
    assert all(rel.may_nack(200.0 + i / NACK_RATE) for i in range(10 * NACK_BURST))


def test_one_nack_causes_at_most_nack_max_resends() -> None:
    core = reliable_room()
    core.chat_burst = 1000.0
    for i in range(80):
        core.handle_datagram(encode_chat(b"r", TA, encode_send(i + 1, b"x")), A, 2.0)
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TB, encode_nack(EPOCH, [(1, 256)] * 16)), B, 3.0)
    assert len(core.outbox) == NACK_MAX_RESENDS


def test_ocm1r_member_is_not_in_framed_fanout_and_room_hands_off_compiled_loop() -> None:
    core = reliable_room(Framing.OCM1)
    room = core.rooms["r"]
    assert room.framed_addrs == [C] and [m.addr for m in room.reliable] == [A, B]
    assert room.history is not None and room.history.epoch == EPOCH


def test_ids_are_taken_in_order_and_a_copy_gets_the_last_ack() -> None:
    core = reliable_room()
    for i in range(100):
        core.handle_datagram(encode_chat(b"r", TA, encode_send(i + 1, b"x")), A, 2.0 + i)
    core.outbox.clear()
    relayed = core.relayed
    core.handle_datagram(encode_chat(b"r", TA, encode_send(3, b"x")), A, 200.0)
    assert core.relayed == relayed  # a copy: nothing relayed, the last ack again
    assert core.outbox == [(encode_ack(EPOCH, 100, 103), A)]
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(102, b"x")), A, 201.0)
    assert core.relayed == relayed and core.drops["out_of_order"] == 1  # 101 is missing
    assert core.outbox == [(encode_ack(EPOCH, 100, 103), A)]


def test_a_held_send_is_acknowledged_in_front_of_the_next_data_to_its_sender() -> None:
    """A 06 SEND: relayed as an 01 one, no ACK now; the next numbered delivery to the
    sender carries it (a notice here: the core's own outbox path), and nothing is left
    for the timer."""
    core = reliable_room()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"hi", held=True)), A, 2.0)
    assert core.outbox == [(encode_data(EPOCH, 4, b"\x05alicehi"), B)]
    rel = core.tokens[TA].rel
    assert rel is not None and rel.held is not None and [m.token for m in core.held] == [TA] \
        and core.held_times == [2.0]
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TB, encode_send(1, b"yo")), B, 2.01)
    assert core.outbox == [(encode_carried(1, 4, encode_data(EPOCH, 5, b"\x03bobyo")), A),
                           (encode_ack(EPOCH, 1, 5), B)]
    assert rel.held is None
    core.outbox.clear()
    core.release_held(3.0)
    assert core.outbox == [] and core.held == []


def test_a_held_ack_no_data_carried_goes_alone_after_the_hold() -> None:
    core = reliable_room()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"hi", held=True)), A, 2.0)
    core.outbox.clear()
    core.release_held(2.0 + ACK_HOLD_S / 2)
    assert core.outbox == []
    core.release_held(2.0 + ACK_HOLD_S)
    assert core.outbox == [(encode_ack(EPOCH, 1, 4), A)] and core.held == []
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TB, encode_send(1, b"yo")), B, 2.5)
    assert (encode_data(EPOCH, 5, b"\x03bobyo"), A) in core.outbox  # nothing in front


def test_a_held_ack_of_a_member_gone_is_not_sent() -> None:
    core = reliable_room()
    core.handle_datagram(encode_chat(b"r", TB, encode_send(1, b"hi", held=True)), B, 2.0)
    core.handle_datagram(encode_chat(b"r", TB, b"/exit"), B, 2.01)  # bob leaves
    assert TB not in core.tokens
    core.outbox.clear()
    core.release_held(2.0 + ACK_HOLD_S)
    assert core.outbox == [] and core.held == []


def test_a_held_ack_goes_first_before_a_sync_a_resend_and_is_covered_by_any_ack() -> None:
    """The member must know its own number before it learns of later ones (a SYNC, the
    resends of its NACK); an 01 SEND's, a copy's ACK covers the held one."""
    core = reliable_room()
    send = encode_chat(b"r", TA, encode_send(1, b"hi", held=True))
    core.handle_datagram(send, A, 2.0)
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 2.01)  # a keepalive
    assert core.outbox == [(encode_ack(EPOCH, 1, 4), A), (encode_sync(EPOCH, 2, 4), A)]
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(2, b"x", held=True)), A, 2.1)
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, encode_nack(EPOCH, [(3, 1)])), A, 2.11)
    assert core.outbox[0] == (encode_ack(EPOCH, 2, 5), A) and len(core.outbox) == 2
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(3, b"y", held=True)), A, 2.2)
    core.handle_datagram(encode_chat(b"r", TA, encode_send(3, b"y", held=True)), A, 2.4)
    assert core.outbox[-1] == (encode_ack(EPOCH, 3, 6), A)  # the copy: at once
    core.outbox.clear()
    core.release_held(10.0)
    assert core.outbox == []


def test_a_held_ack_too_long_to_carry_goes_alone_just_before_the_data() -> None:
    core = RelayCore(new_epoch=lambda: EPOCH)
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.OCM1R, True, 0.0)
    core.add_member("r", b"T", "carol", "127.0.0.1", Framing.PLAIN, False, 0.0)  # 1-byte token
    for token, addr in ((TA, A), (b"T", C)):
        core.handle_datagram(encode_chat(b"r", token, b""), addr, 1.0)
    core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"hi", held=True)), A, 2.0)
    core.outbox.clear()
    longest = b"x" * (MAX_DELIVERY_BYTES - 9 - 1 - len(b"carol"))  # DATA at the limit
    core.handle_datagram(encode_chat(b"r", b"T", longest), C, 2.01)
    assert core.outbox == [(encode_ack(EPOCH, 1, 3), A),
                           (encode_data(EPOCH, 4, b"\x05carol" + longest), A)]


def test_rate_limited_send_is_not_acked_so_the_client_retries() -> None:
    core = RelayCore(new_epoch=lambda: EPOCH, chat_rate=1.0, chat_burst=1)
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.OCM1R, True, 0.0)
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 1.0)
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"a")), A, 1.0)
    core.handle_datagram(encode_chat(b"r", TA, encode_send(2, b"b")), A, 1.0)
    assert core.outbox == [(encode_ack(EPOCH, 1, 2), A)]
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(2, b"b")), A, 3.0)
    assert core.outbox == [(encode_ack(EPOCH, 2, 3), A)]


def test_room_close_returns_the_history_budget() -> None:
    core = reliable_room()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"x" * 3000)), A, 2.0)
    assert core.history_budget.used > 3000
    core.handle_datagram(encode_chat(b"r", TA, b"/exit"), A, 3.0)
    assert core.history_budget.used == 0 and not core.rooms


def test_resume_moves_the_member_to_a_new_token_and_ip_without_noise() -> None:
    core = reliable_room()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"one")), A, 2.0)
    core.outbox.clear()
    new = b"A" + b"n" * 32
    assert core.resume(TB, new, "127.0.0.9", 3.0)
    assert not core.resume(TB, new, "127.0.0.9", 3.0)  # the old token is dead
    core.handle_datagram(encode_chat(b"r", TA, encode_send(2, b"two")), A, 3.5)
    assert all(to != B for _, to in core.outbox)  # the old address gets nothing more
    assert core.handle_datagram(encode_chat(b"r", TB, b""), B, 3.6) is None
    assert core.drops["unknown_token"] == 1
    core.outbox.clear()
    moved = ("127.0.0.9", 7000)
    core.handle_datagram(encode_chat(b"r", new, b""), moved, 4.0)
    assert core.outbox == [(encode_sync(EPOCH, 3, 5), moved)]  # no joined for the others
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", new, encode_nack(EPOCH, [(5, 1)])), moved, 4.1)
    assert core.outbox == [(encode_data(EPOCH, 5, b"\x05alicetwo"), moved)]
    bob = core.tokens[new]
    assert bob.username == "bob" and bob.rel is not None and bob.rel.start == 3


def test_registry_resume_rekeys_and_a_dead_or_wrong_secret_is_room_not_found() -> None:
    from control.registry import Registry, RegistryError
    from wire.codes import Status

    tokens = iter([b"A" + bytes([65 + i]) * 32 for i in range(10)])
    registry = Registry(1, lambda worker: next(tokens))
    host = registry.create("r", "alice", "127.0.0.1", Framing.OCM1R, 0, None)
    registry.mark_live(host.room)
    bob = registry.join(registry.live_room("r"), "bob", "127.0.0.1", Framing.OCM1R, 10, None)
    registry.set_resume(bob, "s1")
    old = bob.token
    member, was = registry.resume("r", "bob", "s1", "127.0.0.2", registry.issue_token(0))
    assert member is bob and was == old and old not in registry.tokens
    assert registry.tokens[bob.token] is bob and bob.ip == "127.0.0.2"
    for room, name, secret in (("r", "bob", "nope"), ("r", "alice", "s1"), ("x", "bob", "s1")):
        with pytest.raises(RegistryError) as refused:
            registry.resume(room, name, secret, "127.0.0.3", registry.issue_token(0))
        assert refused.value.status is Status.ROOM_NOT_FOUND
    registry.remove_member(bob.token)
    assert registry.resumes == {}


def test_notices_numbered_before_any_chat_are_kept_for_resends() -> None:
    core = RelayCore(new_epoch=lambda: EPOCH)
    core.add_member("r", TA, "alice", "127.0.0.1", Framing.OCM1R, True, 1000.0)
    core.add_member("r", TB, "bob", "127.0.0.1", Framing.OCM1R, False, 1000.0)
    core.handle_datagram(encode_chat(b"r", TA, b""), A, 1001.0)
    core.handle_datagram(encode_chat(b"r", TB, b""), B, 1001.0)
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, encode_nack(EPOCH, [(2, 1)])), A, 1002.0)
    joined = b'\x00{"event":"joined","user":"bob","text":"bob joined the room"}'
    assert core.outbox == [(encode_data(EPOCH, 2, joined), A)]  # not answered as lost


def test_a_host_that_resumes_keeps_the_room_open() -> None:
    core = reliable_room()
    new = b"A" + b"h" * 32
    assert core.resume(TA, new, "127.0.0.7", 5.0)
    assert "r" in core.rooms and core.rooms["r"].host is core.tokens[new]
    assert core.events == [] and core.outbox == []  # nobody is told anything
    core.handle_datagram(encode_chat(b"r", new, b""), ("127.0.0.7", 6000), 5.5)
    out = core.handle_datagram(encode_chat(b"r", new, encode_send(1, b"back")), ("127.0.0.7",
                                                                                  6000), 6.0)
    assert out is not None and out.plain == b"alice: back"
    core.handle_datagram(encode_chat(b"r", new, b"/exit"), ("127.0.0.7", 6000), 7.0)
    assert core.rooms == {}  # still its host: its /exit closes the room
