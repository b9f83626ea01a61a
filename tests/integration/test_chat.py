"""docs/protocol.md §2 against the real server, in both delivery formats."""

from __future__ import annotations

import socket

import orjson
import pytest

from tests.integration.harness import Server, start_server
from tests.integration.peer import Peer, join, tcrp_exchange
from wire.chat import FramedChat, Notice, encode_chat
from wire.codes import Framing, NoticeEvent, Operation, Reason
from wire.tcrp import Request, RequestBody, encode_request

H = "127.0.0.1"
JOINED = "{} がチャットルームに参加しました"
LEFT = "{} がチャットルームから退出しました"
CLOSED = "チャットルームが閉じられました"
INACTIVE = "しばらく発言しなかったので、チャットルームから退出させました"


def trio(server: Server, room: str, framing: Framing = Framing.PLAIN) -> list[Peer]:
    """Host alice, then bob and carol, each bound; all join notices consumed."""
    alice = join(H, server.tcp_port, Operation.CREATE, room, "alice", framing=framing)
    bob = join(H, server.tcp_port, Operation.JOIN, room, "bob", framing=framing)
    expect_notice(alice, NoticeEvent.JOINED, "bob")
    carol = join(H, server.tcp_port, Operation.JOIN, room, "carol", framing=framing)
    expect_notice(alice, NoticeEvent.JOINED, "carol")
    expect_notice(bob, NoticeEvent.JOINED, "carol")
    return [alice, bob, carol]


def expect_notice(peer: Peer, event: NoticeEvent, user: str = "",
                  reason: Reason | None = None) -> None:
    if peer.framing is Framing.OCM1:
        notice = peer.recv_framed()
        assert isinstance(notice, Notice), notice
        assert notice.event is event and notice.user == user and notice.reason == reason
        return
    text = peer.recv_text()
    expected = {
        NoticeEvent.JOINED: JOINED.format(user),
        NoticeEvent.LEFT: LEFT.format(user),
        NoticeEvent.CLOSED: CLOSED,
        NoticeEvent.DISCONNECTED: INACTIVE if reason is Reason.INACTIVE
        else "チャットルームから切断されました",
    }[event]
    assert text == expected


def expect_chat(peer: Peer, user: str, message: str) -> None:
    if peer.framing is Framing.OCM1:
        assert peer.recv_framed() == FramedChat(user, message)
    else:
        assert peer.recv_text() == f"{user}: {message}"


@pytest.mark.parametrize("framing", [Framing.PLAIN, Framing.OCM1])
def test_chat_reaches_every_other_member_not_the_sender(server: Server, room_name: str,
                                                        framing: Framing) -> None:
    alice, bob, carol = trio(server, room_name, framing)
    bob.send("こんにちは, world")
    expect_chat(alice, "bob", "こんにちは, world")
    expect_chat(carol, "bob", "こんにちは, world")
    alice.send("second")
    expect_chat(bob, "alice", "second")
    expect_chat(carol, "alice", "second")
    bob.expect_nothing()  # bob got alice's message but never his own


def test_mixed_formats_in_one_room(server: Server, room_name: str) -> None:
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob", framing=Framing.OCM1)
    expect_notice(alice, NoticeEvent.JOINED, "bob")
    alice.send("hi")
    assert bob.recv_framed() == FramedChat("alice", "hi")
    bob.send("yo")
    assert alice.recv_text() == "bob: yo"


def test_first_datagram_may_be_chat(server: Server, room_name: str) -> None:
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob", bind="none")
    bob.send("first words")  # binds bob, announces him, and is relayed
    assert alice.recv_text() == JOINED.format("bob")
    assert alice.recv_text() == "bob: first words"


def test_keepalive_is_never_relayed(server: Server, room_name: str) -> None:
    alice, bob, carol = trio(server, room_name)
    bob.send(b"")
    bob.send("after")
    assert alice.recv_text() == "bob: after"


@pytest.mark.parametrize("framing", [Framing.PLAIN, Framing.OCM1])
def test_exit_leaves_with_left_notice_and_no_reply(server: Server, room_name: str,
                                                   framing: Framing) -> None:
    alice, bob, carol = trio(server, room_name, framing)
    bob.send("  /EXIT ")
    expect_notice(alice, NoticeEvent.LEFT, "bob", Reason.EXIT if framing is Framing.OCM1
                  else None)
    expect_notice(carol, NoticeEvent.LEFT, "bob", Reason.EXIT if framing is Framing.OCM1
                  else None)
    bob.send("ghost")  # token revoked: dropped
    carol.send("still here")
    expect_chat(alice, "carol", "still here")
    bob.expect_nothing()


@pytest.mark.parametrize("framing", [Framing.PLAIN, Framing.OCM1])
def test_host_exit_closes_room_and_frees_name(server: Server, room_name: str,
                                              framing: Framing) -> None:
    alice, bob, carol = trio(server, room_name, framing)
    alice.send("/exit")
    expect_notice(bob, NoticeEvent.CLOSED)
    expect_notice(carol, NoticeEvent.CLOSED)
    # The name is free again; the old tokens stay dead in the new room.
    zed = join(H, server.tcp_port, Operation.CREATE, room_name, "zed")
    yan = join(H, server.tcp_port, Operation.JOIN, room_name, "yan")
    assert zed.recv_text() == JOINED.format("yan")
    bob.send("old token")
    yan.send("new room")
    assert zed.recv_text() == "yan: new room"
    alice.expect_nothing()


def test_registration_by_two_byte_port(server: Server, room_name: str) -> None:
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((H, 0))
    port = udp.getsockname()[1]
    response, complete = tcrp_exchange(H, server.tcp_port,
                                       encode_request(
                                           Request.of(Operation.JOIN, room_name,
                                               RequestBody("bob"))),
                                       after=port.to_bytes(2, "big"))
    assert complete is not None
    assert alice.recv_text() == JOINED.format("bob")  # announced by the registration
    alice.send("to the registered port")
    udp.settimeout(10)
    assert udp.recv(4096) == b"alice: to the registered port"
    udp.close()


def test_token_from_another_ip_is_dropped(server: Server, room_name: str) -> None:
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    assert alice.recv_text() == JOINED.format("bob")
    thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    thief.bind(("127.0.0.2", 0))
    thief.sendto(encode_chat(bob.room, bob.token, b"stolen"), (H, server.udp_port))
    thief.sendto(encode_chat(alice.room, alice.token, b"/exit"), (H, server.udp_port))
    bob.send("real")
    assert alice.recv_text() == "bob: real"
    thief.settimeout(0.3)
    with pytest.raises(TimeoutError):
        thief.recv(4096)  # never answered
    thief.close()


def test_members_from_a_second_ip(server: Server, room_name: str) -> None:
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob", bind_ip="127.0.0.2")
    assert alice.recv_text() == JOINED.format("bob")
    bob.send("from .2")
    assert alice.recv_text() == "bob: from .2"


def test_rebinding_to_a_new_port(server: Server, room_name: str) -> None:
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    assert alice.recv_text() == JOINED.format("bob")
    new = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    new.bind((H, 0))
    new.sendto(encode_chat(bob.room, bob.token, b"moved"), (H, server.udp_port))
    assert alice.recv_text() == "bob: moved"
    alice.send("follow")
    new.settimeout(10)
    assert new.recv(4096) == b"alice: follow"
    new.close()


def test_too_long_message_error_notice_in_both_formats(server: Server, room_name: str) -> None:
    name = "n" * 250
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, name, framing=Framing.OCM1)
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    expect_notice(alice, NoticeEvent.JOINED, "bob")
    max_message = alice.details.max_message  # type: ignore[attr-defined]
    alice.send("m" * max_message)  # exactly the limit: relayed
    assert bob.recv_text() == f"{name}: " + "m" * max_message
    # Longer than max_message but within 4096 bytes: over 4094 for bob's plain delivery.
    longest = 4096 - 2 - len(room_name.encode()) - len(alice.token)
    alice.send("m" * longest)
    notice = alice.recv_framed()
    over = len(name) + 2 + longest - 4094
    assert isinstance(notice, Notice) and notice.event is NoticeEvent.ERROR
    assert notice.over == over
    bob.send("x" * (4096 - 2 - len(room_name.encode()) - len(bob.token)))
    bob.send("ok")  # bob's longest fits alice's framed delivery? check what arrives
    first = alice.recv_framed()
    assert isinstance(first, FramedChat) and first.username == "bob"


def test_plain_error_notice_text(server: Server, room_name: str) -> None:
    name = "p" * 250
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, name)
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    assert alice.recv_text() == JOINED.format("bob")
    longest = 4096 - 2 - len(room_name.encode()) - len(alice.token)
    alice.send("m" * longest)
    over = len(name) + 2 + longest - 4094
    assert alice.recv_text() == f"メッセージが長すぎます（{over} バイト超過）"
    bob.expect_nothing()


def test_invalid_utf8_and_oversized_datagrams_are_dropped(server: Server,
                                                          room_name: str) -> None:
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    assert alice.recv_text() == JOINED.format("bob")
    bob.send(b"\xff\xfe")
    bob.send_raw(encode_chat(bob.room, bob.token, b"x") + b"y" * 4096)
    bob.send("valid")
    assert alice.recv_text() == "bob: valid"


def test_replies_come_from_the_chat_port(server: Server, room_name: str) -> None:
    alice = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    bob.sock.connect((H, server.udp_port))  # a connected socket only accepts that source
    assert alice.recv_text() == JOINED.format("bob")
    alice.send("via connected")
    assert bob.sock.recv(4096) == b"alice: via connected"


def test_inactivity_eviction_and_host_timeout() -> None:
    with start_server("--inactivity-timeout", "1.5", workers=2) as srv:
        alice = join(H, srv.tcp_port, Operation.CREATE, "idle", "alice", framing=Framing.OCM1)
        bob = join(H, srv.tcp_port, Operation.JOIN, "idle", "bob")
        expect_notice(alice, NoticeEvent.JOINED, "bob")
        # alice keeps talking; bob goes quiet and is evicted.
        got_left = False
        for _ in range(40):
            alice.send(b"")
            try:
                notice = alice.recv_framed(timeout=0.25)
            except TimeoutError:
                continue
            assert notice == Notice(NoticeEvent.LEFT, "bob", Reason.INACTIVE)
            got_left = True
            break
        assert got_left
        assert bob.recv_text() == INACTIVE
        # Now alice (the host) goes quiet: the room closes, she is disconnected.
        carol = join(H, srv.tcp_port, Operation.JOIN, "idle", "carol")
        assert alice.recv_framed() == Notice(NoticeEvent.JOINED, "carol")
        for _ in range(40):
            carol.send(b"")
            try:
                text = carol.recv_text(timeout=0.25)
            except TimeoutError:
                continue
            assert text == CLOSED
            break
        else:
            raise AssertionError("room did not close")
        notice = alice.recv_framed()
        assert notice == Notice(NoticeEvent.DISCONNECTED, "", Reason.INACTIVE)
        frame = orjson.loads(alice.received[-1][1:])
        assert frame["text"]
