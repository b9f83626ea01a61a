"""Reliable delivery (ocm1r) in an encrypted room, in the relay core without sockets: the
relay numbers opaque chat like plain chat, acknowledges ids, answers NACKs (first byte 05
there) from its history, marks addressed deliveries to an ocm1r member with 05 and keeps
routing envelopes (02) as before."""

from __future__ import annotations

from relay.core import RelayCore
from wire.chat import encode_chat, framed_prefix
from wire.codes import Framing
from wire.e2e import Kind, PublicKeys, encode_message
from wire.reliable import (
    Ack,
    Carried,
    Data,
    Direct,
    Lost,
    Sync,
    Up,
    decode_delivery,
    encode_nack,
    encode_send,
    encode_sync,
)

A = ("127.0.0.1", 5001)
B = ("127.0.0.1", 5002)
C = ("127.0.0.1", 5003)
TA, TB, TC = b"A" + b"a" * 32, b"A" + b"b" * 32, b"A" + b"c" * 32
EPOCH = 0x1234ABCD
KEYS = {name: PublicKeys(bytes([i]) * 32, bytes([i + 1]) * 32)
        for i, name in ((1, "alice"), (3, "bob"), (5, "carol"))}
CHAT = b"\x01\x02" + bytes(range(40)) + b"\xff\xfe"  # kind 01, then opaque (not UTF-8)


def room(carol: Framing = Framing.OCM1R) -> RelayCore:
    """alice (host) and bob ocm1r, carol ``carol``; an encrypted room, all bound."""
    core = RelayCore(new_epoch=lambda: EPOCH)
    for token, user, host, framing in ((TA, "alice", True, Framing.OCM1R),
                                       (TB, "bob", False, Framing.OCM1R),
                                       (TC, "carol", False, carol)):
        assert core.add_member("r", token, user, "127.0.0.1", framing, host, 0.0, e2e=True,
                               keys=KEYS[user])
    for token, addr in ((TA, A), (TB, B), (TC, C)):
        core.handle_datagram(encode_chat(b"r", token, b""), addr, 1.0)
    core.outbox.clear()
    core.events.clear()
    return core


def sent(core: RelayCore) -> list[tuple[object, tuple[str, int]]]:
    out = [(decode_delivery(d), a) for d, a in core.outbox]
    core.outbox.clear()
    return out


def test_opaque_chat_is_numbered_acknowledged_and_a_copy_is_not_relayed_again() -> None:
    core = room()
    assert core.rooms["r"].history is not None  # an encrypted room is numbered too
    out = core.handle_datagram(encode_chat(b"r", TA, encode_send(1, CHAT)), A, 2.0)
    delivery = framed_prefix("alice") + CHAT  # what ocm1 members of the room get
    assert out is not None and out.framed is None  # nobody unnumbered here
    got = sent(core)
    assert (Ack(EPOCH, 1, 4), A) in got  # 1..3: the joined notices of the three
    datas = [(d, a) for d, a in got if isinstance(d, Data)]
    assert datas == [(Data(EPOCH, 4, delivery), B), (Data(EPOCH, 4, delivery), C)]
    # the same id again (its ack was lost): acknowledged again, relayed to no one
    assert core.handle_datagram(encode_chat(b"r", TA, encode_send(1, CHAT)), A, 2.1) is None
    assert sent(core) == [(Ack(EPOCH, 1, 4), A)]
    assert core.relayed == 1


def test_a_held_send_of_an_encrypted_room_rides_on_the_next_data_and_decrypts_alike() -> None:
    """06 in an encrypted room: the opaque chat is numbered as an 01 SEND's, its ACK held
    and carried in front of the next DATA to the sender, which ReliableChat takes ACK first
    and then delivers the DATA's opaque chat."""
    from client.reliable import Acked, Delivered, ReliableChat

    core = room()
    core.handle_datagram(encode_chat(b"r", TA, encode_send(1, CHAT, held=True)), A, 2.0)
    assert [a for d, a in sent(core)] == [B, C]  # the DATA only: no ACK yet
    core.handle_datagram(encode_chat(b"r", TB, encode_send(1, CHAT)), B, 2.01)
    to_alice = [d for d, a in core.outbox if a == A]
    assert [decode_delivery(d) for d in to_alice] == [
        Carried(Ack(EPOCH, 1, 4), Data(EPOCH, 5, framed_prefix("bob") + CHAT))]
    alice = ReliableChat(Up.E2E_NACK)
    alice.handle_delivery(encode_sync(EPOCH, 4, 3), 2.0)  # alice starts after 1..3
    alice.send(CHAT, 2.0)
    events = alice.handle_delivery(to_alice[0], 2.02)
    assert events == [Acked(1, 4), Delivered(5, framed_prefix("bob") + CHAT)], events


def test_a_nack_starts_with_05_and_is_answered_from_the_history() -> None:
    core = room()
    for i in (1, 2):
        core.handle_datagram(encode_chat(b"r", TA, encode_send(i, CHAT + bytes([i]))), A, 2.0)
    core.outbox.clear()
    nack = encode_nack(EPOCH, [(1, 5)], Up.E2E_NACK)
    assert nack[0] == 5
    assert core.handle_datagram(encode_chat(b"r", TB, nack), B, 3.0) is None
    got = sent(core)
    assert [d.seq for d, a in got if isinstance(d, Data)] == [1, 2, 3, 4, 5]
    assert all(a == B for _, a in got)
    # 02 is an envelope in an encrypted room, never a NACK: routed to the one named
    envelope = encode_message(Kind.ENVELOPE, b"\x02\x01olm", "alice")
    assert core.handle_datagram(encode_chat(b"r", TB, envelope), B, 3.0) is None
    ((data, addr),) = core.outbox
    assert addr == A and data == b"\x05" + framed_prefix("bob") + b"\x02\x02\x01olm"
    assert decode_delivery(data) == Direct(framed_prefix("bob") + b"\x02\x02\x01olm")


def test_keepalive_is_answered_with_sync_and_old_numbers_with_lost() -> None:
    core = room()
    assert core.handle_datagram(encode_chat(b"r", TC, b""), C, 2.0) is None
    assert sent(core) == [(Sync(EPOCH, 4, 3), C)]  # carol starts after her joined (3)
    core.rooms["r"].history.clear()  # type: ignore[union-attr]
    core.handle_datagram(encode_chat(b"r", TC, encode_nack(EPOCH, [(1, 2)], Up.E2E_NACK)),
                         C, 3.0)
    assert sent(core) == [(Lost(EPOCH, 1, 2), C)]


def test_an_ocm1_member_of_the_same_room_gets_the_chat_unnumbered() -> None:
    core = room(carol=Framing.OCM1)
    out = core.handle_datagram(encode_chat(b"r", TA, encode_send(1, CHAT)), A, 2.0)
    assert out is not None and out.framed == framed_prefix("alice") + CHAT
    assert [a for a in out.framed_addrs if a is not out.sender] == [C]
    # carol's own chat (no id) is numbered for the ocm1r members all the same
    out = core.handle_datagram(encode_chat(b"r", TC, CHAT), C, 2.1)
    datas = [(d, a) for d, a in sent(core) if isinstance(d, Data)]
    assert datas[-2:] == [(Data(EPOCH, 5, framed_prefix("carol") + CHAT), A),
                          (Data(EPOCH, 5, framed_prefix("carol") + CHAT), B)]
    # an envelope to carol (ocm1) is not marked
    core.handle_datagram(encode_chat(b"r", TA, encode_message(Kind.ENVELOPE, b"\x02\x01x",
                                                              "carol")), A, 2.2)
    assert core.outbox == [(framed_prefix("alice") + b"\x02\x02\x01x", C)]


def test_a_send_carries_only_chat_and_the_relay_reads_nothing_past_the_kind() -> None:
    core = room()
    for bad in (encode_send(1, b"\x02" + bytes(8)), encode_send(1, b"\x04")):
        assert core.handle_datagram(encode_chat(b"r", TA, bad), A, 2.0) is None
    assert core.drops["bad_kind"] == 2
    assert core.handle_datagram(encode_chat(b"r", TA, encode_send(1, b"")), A, 2.0) is None
    assert core.drops["malformed"] == 1
    assert core.outbox == [] and core.relayed == 0
    # a leave (04) still leaves
    core.handle_datagram(encode_chat(b"r", TB, encode_message(Kind.LEAVE)), B, 2.0)
    assert TB not in core.tokens


def test_hex_examples_of_the_protocol_page() -> None:
    assert encode_nack(EPOCH, [(40, 2)], Up.E2E_NACK).hex(" ") == (
        "05 12 34 ab cd 00 00 00 28 00 02")
    assert encode_send(7, b"\x01\x02").hex(" ") == "01 00 00 00 07 01 02"
    direct = b"\x05\x03bob\x02\x02\x01"
    assert direct.hex(" ") == "05 03 62 6f 62 02 02 01"
    assert decode_delivery(direct) == Direct(b"\x03bob\x02\x02\x01")
