"""The baseline relay (tests/bench/baselines/simple_relay.py) speaks enough of the protocol for
ocm-loadgen: tokens, relaying to the others only, joined/left/closed notices, /exit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bench import servers
from tests.integration.peer import JoinRefused, Peer, join
from wire.codes import Framing, Operation, Status

H = "127.0.0.1"


@pytest.fixture(scope="module")
def relay() -> Iterator[servers.Running]:
    with servers.start(servers.baseline_command()) as running:
        assert running.workers == 1 and running.steering == "none"
        yield running


def pair(relay: servers.Running, room: str) -> tuple[Peer, Peer]:
    host = join(H, relay.tcp_port, Operation.CREATE, room, "alice", password="pw")
    guest = join(H, relay.tcp_port, Operation.JOIN, room, "bob", password="pw")
    assert host.recv_text() == "bob がチャットルームに参加しました"
    return host, guest


def test_create_join_chat_exit(relay: servers.Running) -> None:
    host, guest = pair(relay, "r1")
    assert host.details.host and not guest.details.host  # type: ignore[attr-defined]
    guest.send("hello")
    assert host.recv_text() == "bob: hello"
    host.send("hi")
    assert guest.recv_text() == "alice: hi"
    guest.expect_nothing(0.2)  # never its own message back
    guest.send(" /EXIT ")
    assert host.recv_text() == "bob がチャットルームから退出しました"
    carol = join(H, relay.tcp_port, Operation.JOIN, "r1", "carol", password="pw")
    assert host.recv_text() == "carol がチャットルームに参加しました"
    host.send("/exit")
    assert carol.recv_text() == "チャットルームが閉じられました"
    for peer in (host, guest, carol):
        peer.close()


def test_refusals(relay: servers.Running) -> None:
    host, guest = pair(relay, "r2")
    cases = [
        (Operation.CREATE, "r2", "zed", "pw", Status.ROOM_EXISTS),
        (Operation.JOIN, "nope", "zed", None, Status.ROOM_NOT_FOUND),
        (Operation.JOIN, "r2", "zed", "wrong", Status.INVALID_PASSWORD),
        (Operation.JOIN, "r2", "bob", "pw", Status.USERNAME_TAKEN),
    ]
    for op, room, user, password, status in cases:
        with pytest.raises(JoinRefused) as info:
            join(H, relay.tcp_port, op, room, user, password=password)
        assert info.value.status == status


def test_ocm1_request_gets_plain_delivery(relay: servers.Running) -> None:
    peer = join(H, relay.tcp_port, Operation.CREATE, "r3", "solo", framing=Framing.OCM1)
    assert peer.details.framing is Framing.PLAIN  # type: ignore[attr-defined]
    peer.close()
