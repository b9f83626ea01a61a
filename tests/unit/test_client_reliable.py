"""The client's sans-IO reliable delivery (client/reliable.py): order, recovery, sending."""

from __future__ import annotations

import random

from client.reliable import (
    ACK_WAIT_S,
    HOLD_CALM_S,
    NACK_MAX_TRIES,
    REORDER_DELAY_S,
    SEND_FAIL_AFTER_S,
    SEND_WINDOW,
    Acked,
    Addressed,
    Delivered,
    Failed,
    Gap,
    Receiver,
    Refused,
    ReliableChat,
    Sender,
    Unnumbered,
)
from relay.core import RelayCore
from wire.chat import encode_chat
from wire.codes import Framing
from wire.reliable import (
    Up,
    decode_nack,
    encode_ack,
    encode_carried,
    encode_data,
    encode_lost,
    encode_send,
    encode_sync,
)

E = 77


def bodies(events: list[object]) -> list[object]:
    return [e.body if isinstance(e, Delivered) else e for e in events]


def test_in_order_reordered_and_duplicate_deliveries() -> None:
    rx = Receiver()
    rx.handle_sync(E, 5, 4, 0.0)
    assert bodies(rx.handle_data(E, 5, b"a", 0.0)) == [b"a"]
    assert rx.handle_data(E, 7, b"c", 0.0) == []  # 6 is awaited
    assert bodies(rx.handle_data(E, 6, b"b", 0.01)) == [b"b", b"c"]
    assert rx.handle_data(E, 6, b"b", 0.02) == [] and rx.handle_data(E, 5, b"a", 0.02) == []
    assert rx.handle_data(E + 1, 8, b"x", 0.02) == []  # another epoch: not ours
    assert rx.missing == {} and rx.held == {}


def test_a_hole_is_nacked_after_the_reorder_delay_with_backoff_then_given_up() -> None:
    rx = Receiver()
    rx.handle_sync(E, 1, 0, 0.0)
    rx.handle_data(E, 1, b"a", 0.0)
    rx.handle_data(E, 4, b"d", 0.0)
    assert rx.handle_timer(REORDER_DELAY_S / 2) == ([], [], False)
    now = REORDER_DELAY_S
    ranges, events, _ = rx.handle_timer(now)
    assert ranges == [(2, 2)] and events == []
    tries = 1
    while True:
        due = rx.next_deadline()
        assert due is not None and due > now
        now = due
        ranges, events, _ = rx.handle_timer(now)
        if events:
            break
        tries += 1
        assert ranges == [(2, 2)]
    assert tries == NACK_MAX_TRIES
    assert bodies(events) == [Gap(2, 2), b"d"]
    assert rx.next_deadline() is None


def test_lost_answer_makes_one_gap_marker_in_place() -> None:
    rx = Receiver()
    rx.handle_sync(E, 1, 0, 0.0)
    rx.handle_data(E, 1, b"a", 0.0)
    rx.handle_data(E, 5, b"e", 0.0)
    assert bodies(rx.handle_lost(E, 2, 2, 0.1)) == [Gap(2, 2)]  # in place; 4 awaited
    assert bodies(rx.handle_data(E, 4, b"d", 0.2)) == [b"d", b"e"]


def test_sync_sets_the_start_and_reveals_a_lost_last_message() -> None:
    rx = Receiver()
    assert rx.handle_sync(E, 11, 10, 0.0) == []
    assert bodies(rx.handle_data(E, 11, b"k", 0.0)) == [b"k"]
    rx.handle_sync(E, 11, 13, 1.0)  # 12 and 13 were sent and never arrived
    ranges, _, _ = rx.handle_timer(1.0 + REORDER_DELAY_S)
    assert ranges == [(12, 2)]


def test_nothing_is_shown_before_the_start_is_known() -> None:
    rx = Receiver()
    assert rx.handle_own(E, 6, 0.0) == []  # our own message's ack came first
    assert rx.handle_data(E, 7, b"g", 0.0) == []
    assert rx.handle_data(E, 3, b"c", 0.0) == []  # before our start: not ours
    due = rx.next_deadline()
    assert due is not None and rx.handle_timer(due)[2]  # ask for a sync (keepalive)
    assert rx.handle_sync(E, 4, 8, 0.1) == []  # we start at 4: 4, 5 and 8 are awaited
    assert rx.next == 4 and set(rx.missing) == {4, 5, 8}
    assert bodies(rx.handle_data(E, 5, b"e", 0.2)) == []
    assert bodies(rx.handle_data(E, 4, b"d", 0.2)) == [b"d", b"e", b"g"]


def test_own_message_fills_its_number_without_a_line() -> None:
    chat = ReliableChat()
    chat.handle_delivery(encode_sync(E, 4, 3), 0.0)  # we start at 4
    msg_id, message = chat.send(b"hello", 0.0)
    assert message == encode_send(msg_id, b"hello")
    assert chat.handle_delivery(encode_data(E, 5, b"\x03bobhi"), 0.01) == []
    events = chat.handle_delivery(encode_ack(E, msg_id, 4), 0.02)
    assert bodies(events) == [Acked(msg_id, 4), b"\x03bobhi"]
    assert chat.handle_delivery(b"\x00{}", 0.03) == [Unnumbered(b"\x00{}")]
    assert chat.handle_delivery(b"\x07junk", 0.03) == [] and chat.malformed == 1


def test_an_ack_for_a_number_already_passed_leaves_nothing_behind() -> None:
    rx = Receiver()
    rx.handle_sync(E, 4, 3, 0.0)
    # our own message 4 came back as DATA (a resend) before its ACK
    assert bodies(rx.handle_data(E, 4, b"\x03memine", 0.01)) == [b"\x03memine"]
    assert rx.handle_own(E, 4, 0.02) == []
    assert rx.own == set() and rx.next == 5 and rx.missing == {}


def test_sender_goes_back_until_acked_then_fails_and_retry_resends_same_ids() -> None:
    tx = Sender()
    one, first = tx.send(b"x", 0.0)
    two, second = tx.send(b"y", 0.0)
    assert first is not None and second is not None
    now, rounds = 0.0, 0
    while True:
        due = tx.next_deadline()
        assert due is not None
        now = due
        out, events = tx.handle_timer(now)
        if events:
            assert events == [Failed(one), Failed(two)] and out == []
            break
        assert out == [first, second]  # the whole window, in order
        rounds += 1
    assert now >= SEND_FAIL_AFTER_S and rounds > 5 and tx.next_deadline() is None
    assert tx.retry(now) == [one, two]
    assert tx.handle_timer(now) == ([first, second], [])
    assert tx.handle_ack(two, 9, now) == [Acked(one, 0), Acked(two, 9)]  # in order: both
    assert tx.handle_ack(two, 9, now) == [] and tx.pending == {}
    three, _ = tx.send(b"too long", now)
    assert tx.handle_ack(three, 0, now) == [Refused(three)]


def test_an_old_ack_again_makes_the_window_go_back_at_once() -> None:
    tx = Sender()
    one, _ = tx.send(b"1", 0.0)
    two, copy = tx.send(b"2", 0.0)
    tx.handle_ack(one, 5, 0.1)  # two was sent: the timer waits
    assert tx.next_deadline() == 0.1 + tx.rto()
    tx.handle_ack(one, 5, 0.2)  # the relay dropped a later one: go back now
    assert tx.next_deadline() == 0.2 and tx.handle_timer(0.2)[0] == [copy]


def test_sender_lets_the_relay_hold_its_acks_only_while_it_sees_no_loss() -> None:
    """01 SENDs until a round trip was measured; then 06 (the ACK may wait, so the
    timeout waits ACK_WAIT_S longer, and no round trip is measured from them); a go-back
    makes the copies 01 again for HOLD_CALM_S."""
    tx = Sender()
    tx.carriers = True  # a busy room (ReliableChat sets it)
    one, copy = tx.send(b"1", 0.0)
    assert copy == encode_send(one, b"1")  # no round trip measured yet
    tx.handle_ack(one, 5, 0.01)
    srtt = tx.srtt
    two, copy = tx.send(b"2", 1.0)
    assert copy == encode_send(two, b"2", held=True)
    assert tx.next_deadline() == 1.0 + tx.rto() + ACK_WAIT_S
    tx.handle_ack(two, 6, 1.12)  # held 0.11 s: not a round trip
    assert tx.srtt == srtt
    three, _ = tx.send(b"3", 2.0)
    due = tx.next_deadline()
    assert due is not None
    copies, _ = tx.handle_timer(due)  # lost: the copy goes as an 01 SEND
    assert copies == [encode_send(three, b"3")]
    tx.handle_ack(three, 7, due + 0.01)
    assert tx.send(b"4", due + 1.0)[1] == encode_send(4, b"4")
    assert tx.send(b"5", due + HOLD_CALM_S)[1] == encode_send(5, b"5", held=True)


def test_only_a_busy_room_gets_06_sends() -> None:
    """A held ACK goes alone after the hold in a quiet room, only making the message look
    pending longer: 06 only while the room's numbers advanced by CARRIER_RATE a second
    (measured between sends a second or more apart)."""
    chat = ReliableChat()
    chat.handle_delivery(encode_sync(E, 1, 0), 0.0)
    one, _ = chat.send(b"1", 0.0)
    chat.handle_delivery(encode_ack(E, one, 1), 0.01)  # a round trip measured
    for i in range(25):  # 20 DATA a second
        chat.handle_delivery(encode_data(E, 2 + i, b"\x03bobyo"), 0.05 * (i + 1))
    assert chat.send(b"2", 1.3)[1] == encode_send(2, b"2", held=True)
    chat.handle_delivery(encode_ack(E, 2, 27), 1.31)
    for i in range(4):  # 3 a second: quiet
        chat.handle_delivery(encode_data(E, 28 + i, b"\x03bobyo"), 1.4 + i / 3)
    assert chat.send(b"3", 2.5)[1] == encode_send(3, b"3")


def test_a_carried_ack_is_handled_before_the_data_it_rode_on() -> None:
    chat = ReliableChat()
    chat.handle_delivery(encode_sync(E, 1, 0), 0.0)
    msg_id, _ = chat.send(b"mine", 0.0)
    events = chat.handle_delivery(encode_carried(msg_id, 1, encode_data(E, 2, b"\x03bobyo")),
                                  0.1)
    assert bodies(events) == [Acked(msg_id, 1), b"\x03bobyo"]
    assert chat.sender.pending == {} and chat.receiver.next == 3


def test_sender_keeps_at_most_the_window_in_flight() -> None:
    tx = Sender()
    sent = [tx.send(b"m", 0.0)[1] for _ in range(SEND_WINDOW + 3)]
    assert sum(m is not None for m in sent) == SEND_WINDOW
    tx.handle_ack(3, 3, 0.0)
    out, _ = tx.handle_timer(0.0)
    assert len(out) == SEND_WINDOW  # the window moved: it includes the three waiting ones


def test_with_the_relay_core_through_random_loss_every_line_arrives_in_order() -> None:
    """Two ocm1r members and the real core, 20 % loss each way, a 3 s outage: alice
    sees all of bob's 200 lines in order, once, and bob's client never fails one."""
    rng = random.Random(7)
    core = RelayCore(new_epoch=lambda: E, chat_burst=1000)
    ta, tb = b"A" + b"a" * 32, b"A" + b"b" * 32
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    core.add_member("r", ta, "alice", "127.0.0.1", Framing.OCM1R, True, 0.0)
    core.add_member("r", tb, "bob", "127.0.0.1", Framing.OCM1R, False, 0.0)
    alice, bob = ReliableChat(), ReliableChat()
    chats = {a: (ta, alice), b: (tb, bob)}
    seen: list[bytes] = []
    now = 0.0

    def lossy(t: float) -> bool:
        return 5.0 <= t < 8.0 or rng.random() < 0.2

    def up(addr: tuple[str, int], message: bytes) -> None:
        if not lossy(now):
            core.handle_datagram(encode_chat(b"r", chats[addr][0], message), addr, now)
        core.release_held(now)  # the worker's timer: acknowledgements no DATA carried
        for data, to in core.outbox:
            if not lossy(now):
                for e in chats[to][1].handle_delivery(data, now):
                    if to == a and isinstance(e, Delivered) and e.body[0] == 3:
                        seen.append(e.body)
                    assert not isinstance(e, (Gap, Failed)), e
        core.outbox.clear()

    for addr in (a, b):
        core.handle_datagram(encode_chat(b"r", chats[addr][0], b""), addr, now)
        core.outbox.clear()
    for i in range(200):
        now = i * 0.05
        _, message = bob.send(b"line %d" % i, now)
        if message is not None:  # else the window is full: the timer sends it later
            up(b, message)
        for addr, (_, chat) in chats.items():
            while (due := chat.next_deadline()) is not None and due <= now:
                out, events = chat.handle_timer(due)
                assert not events, events
                for m in out:
                    up(addr, m)
        if i % 20 == 0:
            up(a, b"")  # alice's keepalive: the sync catches a lost last line
    history = core.rooms["r"].history
    assert history is not None
    while now < 60 and (alice.next_deadline() or bob.next_deadline()
                        or alice.receiver.next != history.next_seq):  # a lost last line
        now = min((t for t in (alice.next_deadline(), bob.next_deadline()) if t is not None),
                  default=now + 0.3)
        for addr, (_, chat) in chats.items():
            out, events = chat.handle_timer(now)
            for m in out:
                up(addr, m)
        up(a, b"")
    assert seen == [b"\x03bob" + b"line %d" % i for i in range(200)], (
        len(seen), seen[:8], alice.receiver.next, alice.receiver.missing, alice.receiver.held,
        bob.sender.pending, now)
    assert bob.sender.pending == {}
    assert decode_nack(bytes([2]) + E.to_bytes(4, "big") + bytes([0, 0, 0, 1, 0, 1]))[0] == E


def test_lost_encoding_is_what_the_receiver_reads() -> None:
    chat = ReliableChat()
    chat.handle_delivery(encode_sync(E, 1, 0), 0.0)
    chat.handle_delivery(encode_data(E, 1, b"\x01a"), 0.0)
    chat.handle_delivery(encode_data(E, 3, b"\x01c"), 0.0)
    assert bodies(chat.handle_delivery(encode_lost(E, 2, 1), 0.1)) == [Gap(2, 1), b"\x01c"]


def test_the_status_line_says_pending_failed_and_reconnecting() -> None:
    """What ocm-chat's bottom toolbar shows from a reliable link's state."""
    import asyncio
    import socket

    from client.link import RoomLink
    from client.session import Joined
    from client.ui import status_line
    from wire.tcrp import Details

    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            details = Details(9001, False, 1000, 300.0, Framing.OCM1R, resume="s" * 32)
            link = RoomLink(Joined(b"r", "bob", b"T" * 22, details, ("127.0.0.1", 9),
                                   udp), lambda line: None)
            assert status_line(link, "room r", "bob", False) == \
                " room r · bob · /help · Ctrl-D leaves "
            assert link.reliable is not None
            link.reliable.send(b"one", 0.0)
            link.reconnecting = True
            assert "reconnecting… · 1 pending" in status_line(link, "room r", "bob", False)
            link.reliable.sender.pending[1].failed = True
            link.reconnecting = False
            assert status_line(link, "room r", "bob", True) == \
                " room r · bob (host) · 1 failed (/retry) · /help · Ctrl-D leaves "

    asyncio.run(scenario())


def test_in_an_encrypted_room_nacks_start_with_05_and_addressed_deliveries_pass_through() -> None:
    chat = ReliableChat(Up.E2E_NACK)
    assert chat.handle_delivery(encode_sync(7, 1, 0), 0.0) == []
    assert chat.handle_delivery(encode_data(7, 3, b"\x01a\x01x"), 0.0) == []  # 1, 2 missing
    messages, _ = chat.handle_timer(1.0)
    (nack,) = messages
    assert nack[0] == Up.E2E_NACK and decode_nack(nack) == (7, [(1, 2)])
    assert chat.handle_delivery(b"\x05\x01a\x02\x02\x01", 1.0) == [Addressed(b"\x01a\x02\x02\x01")]


def test_a_message_makes_keepalives_urgent_only_once_it_waited_sync_s() -> None:
    """``client.link.urgent``: an acknowledgement that comes within ``SYNC_S`` (even one
    the relay held) asks for no keepalive; one overdue does, and so does an open hole."""
    from client.link import SYNC_S, urgent

    chat = ReliableChat()
    chat.handle_delivery(encode_sync(E, 1, 0), 0.0)
    assert not urgent(chat, 0.0)
    msg_id, _ = chat.send(b"mine", 1.0)
    assert chat.sender.waiting(1.5) == 0.5 and not urgent(chat, 1.5)
    assert urgent(chat, 1.0 + SYNC_S)
    chat.handle_delivery(encode_ack(E, msg_id, 1), 1.0 + SYNC_S)
    assert not urgent(chat, 5.0)
    chat.handle_delivery(encode_data(E, 3, b"\x03bobyo"), 5.0)  # 2 is missing
    assert urgent(chat, 5.0)
