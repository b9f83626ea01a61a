"""The relay worker's I/O adapter (relay/worker.py) on real UDP sockets on 127.0.0.1.

No event loop and no mocks: the test owns the worker's UDP socket, queues datagrams on
it from real client sockets (loopback delivery is synchronous: once ``sendto`` returns,
the datagram waits in the worker's receive queue) and calls the reader, ``_on_udp``,
exactly as the loop would. A send that fails for real: a member bound to port 0 (Linux
refuses it with EINVAL), seeded as re-seeding would, since no datagram can come from it.
Every test runs on each path: the pure-Python loop with one ``sendmmsg`` per format, and
with ``sendto``; and the compiled loop (relay/hot.py), which must behave the same.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
from collections.abc import Iterator

import pytest

from relay.ipc import (
    Ack,
    AddMember,
    Bound,
    Closed,
    Configure,
    FrameDecoder,
    Message,
    Ping,
    WorkerSettings,
    encode,
)
from relay.worker import Worker, _PipeProtocol
from runtime import mmsg
from wire.chat import Notice, encode_chat, encode_plain_notice
from wire.codes import Framing, NoticeEvent, Reason

TIMEOUT_S = 10.0
TA, TB, TC = b"A" + b"a" * 32, b"A" + b"b" * 32, b"A" + b"c" * 32
DEAD = ("127.0.0.1", 0)
"""An address every send to fails locally (EINVAL), on both paths."""
COMPILED = "compiled"
PATHS = [pytest.param(True, id="sendmmsg"), pytest.param(False, id="sendto"),
         pytest.param(COMPILED, id="compiled")]


def settings(sendmmsg: bool, max_send_failures: int = 3, hot_path: str = "python"
             ) -> WorkerSettings:
    return WorkerSettings(inactivity_timeout=300.0, max_send_failures=max_send_failures,
                          chat_rate=1000.0, chat_burst=1000, max_stage1_clients=100,
                          log_level="info", log_format="text", realtime_priority=0,
                          sendmmsg=sendmmsg, hot_path=hot_path)


def left(user: str, reason: Reason) -> bytes:
    return encode_plain_notice(Notice(NoticeEvent.LEFT, user, reason))


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT_S)
    return sock


class Rig:
    """A worker with its UDP socket, and one client socket per member."""

    def __init__(self, batched: bool | str, max_send_failures: int = 3) -> None:
        """``batched``: True (sendmmsg), False (sendto), or ``COMPILED``: the compiled
        loop (which fans out with sendmmsg)."""
        compiled = batched == COMPILED
        if batched and not mmsg.available():
            pytest.fail("sendmmsg is not available on this machine")
        self.sock = udp()
        self.sock.setblocking(False)
        self.worker = Worker(0, settings(bool(batched), max_send_failures,
                                         COMPILED if compiled else "python"),
                             self.sock, None, None, None)
        self.loop = self.worker.loop = asyncio.new_event_loop()  # timers: never run here
        assert self.worker.batched is bool(batched)
        self.read = self.worker._on_udp
        if compiled:
            assert self.worker.hot_module is not None
            self.worker.hot = self.worker.compiled_loop(self.worker.hot_module)
            self.read = self.worker.hot.on_readable
        self.clients: dict[bytes, socket.socket] = {}

    def add(self, token: bytes, user: str, host: bool = False,
            framing: Framing = Framing.PLAIN, addr: tuple[str, int] | None = None) -> None:
        assert self.worker.core.add_member("r", token, user, "127.0.0.1", framing, host, 0.0,
                                           addr, addr is not None)
        if addr is None:  # bind it the ordinary way: a keepalive from its own socket
            self.clients[token] = udp()
            self.datagram(token, b"")

    def datagram(self, token: bytes, message: bytes) -> None:
        """``token``'s client sends a datagram; the worker reads it."""
        self.clients[token].sendto(encode_chat(b"r", token, message),
                                   self.sock.getsockname())
        ready, _, _ = select.select([self.sock], [], [], TIMEOUT_S)
        assert ready, "the datagram did not reach the worker's socket"
        self.read()

    def recv(self, token: bytes) -> bytes:
        return self.clients[token].recv(65536)

    def drain(self, token: bytes) -> list[bytes]:
        out = []
        client = self.clients[token]
        while select.select([client], [], [], 0)[0]:
            out.append(client.recv(65536))
        return out

    def close(self) -> None:
        for sock in (self.sock, *self.clients.values()):
            sock.close()
        self.loop.close()


@pytest.fixture(params=PATHS)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(request.param)
    yield r
    r.close()


def test_chat_reaches_every_other_member_of_both_formats(rig: Rig) -> None:
    rig.add(TA, "alice", host=True)
    rig.add(TB, "bob")
    rig.add(TC, "carol", framing=Framing.OCM1)
    for token in (TA, TB, TC):
        rig.drain(token)
    rig.datagram(TA, b"hi")
    assert rig.recv(TB) == b"alice: hi"
    assert rig.recv(TC) == b"\x05alicehi"
    assert rig.drain(TA) == []  # never to the sender
    if rig.worker.hot is not None:  # relayed by the compiled loop itself, not handed back
        assert rig.worker.hot.counters()["fast"] == 1


def test_consecutive_send_failures_evict_the_member(rig: Rig) -> None:
    rig.add(TA, "alice", host=True)
    rig.add(TB, "bob")
    rig.add(TC, "carol", addr=DEAD)
    rig.drain(TA)
    rig.drain(TB)
    core = rig.worker.core
    for n in (1, 2):
        rig.datagram(TA, f"chat {n}".encode())
        assert rig.recv(TB) == f"alice: chat {n}".encode()
        assert core.failing == {DEAD: n}
        assert TC in core.tokens
    rig.datagram(TA, b"chat 3")
    assert TC not in core.tokens
    assert core.evictions["send_failures"] == 1
    assert core.send_failures == 4  # three chats, then the "disconnected" notice to carol
    assert core.failing == {}
    assert rig.drain(TB) == [b"alice: chat 3", left("carol", Reason.SEND_FAILURES)]


def test_a_send_that_went_through_ends_the_streak_of_that_address_only(rig: Rig) -> None:
    rig.add(TA, "alice", host=True)
    rig.add(TB, "bob")
    rig.add(TC, "carol", framing=Framing.OCM1)
    for token in (TA, TB, TC):
        rig.drain(token)
    core = rig.worker.core
    a, b, c = (rig.clients[t].getsockname() for t in (TA, TB, TC))
    outsider = ("127.0.0.1", 9)
    core.failing.update({a: 2, b: 2, c: 2, outsider: 1})
    rig.datagram(TA, b"hi")
    assert rig.recv(TB) == b"alice: hi"
    assert rig.recv(TC) == b"\x05alicehi"
    # bob and carol were sent to: their streaks end; alice (the sender) was not, nor was
    # an address outside the room.
    assert core.failing == {a: 2, outsider: 1}


def test_the_send_cache_follows_membership_changes(rig: Rig) -> None:
    rig.add(TA, "alice", host=True)
    rig.add(TB, "bob")
    rig.drain(TA)
    rig.datagram(TA, b"one")
    assert rig.recv(TB) == b"alice: one"
    rig.add(TC, "carol")
    rig.drain(TA)
    rig.drain(TB)
    rig.datagram(TA, b"two")
    assert rig.recv(TB) == b"alice: two"
    assert rig.recv(TC) == b"alice: two"
    rig.datagram(TC, b"/exit")
    assert rig.drain(TB) == [left("carol", Reason.EXIT)]
    rig.drain(TA)
    rig.datagram(TA, b"three")
    assert rig.recv(TB) == b"alice: three"
    assert rig.drain(TC) == []


def test_a_closed_room_leaves_the_send_cache() -> None:
    rig = Rig(batched=True)
    try:
        rig.add(TA, "alice", host=True)
        rig.add(TB, "bob")
        rig.datagram(TA, b"hi")
        assert set(rig.worker._batches) == {"r"}
        rig.datagram(TA, b"/exit")  # the host leaves: the room closes
        assert "r" not in rig.worker.core.rooms
        assert rig.worker._batches == {}
    finally:
        rig.close()


def test_a_reload_switches_the_fan_out_path() -> None:
    rig = Rig(batched=True)
    try:
        rig.add(TA, "alice", host=True)
        rig.add(TB, "bob")
        rig.drain(TA)
        rig.datagram(TA, b"one")
        assert rig.recv(TB) == b"alice: one" and rig.worker._batches
        rig.worker.handle_command(Configure(settings(sendmmsg=False)))
        assert not rig.worker.batched and rig.worker._batches == {}
        rig.datagram(TA, b"two")
        assert rig.recv(TB) == b"alice: two" and rig.worker._batches == {}
        rig.worker.handle_command(Configure(settings(sendmmsg=True)))
        rig.datagram(TA, b"three")
        assert rig.recv(TB) == b"alice: three" and set(rig.worker._batches) == {"r"}
    finally:
        rig.close()


class _Transport(asyncio.Transport):
    """The worker's side of a real socketpair, written to synchronously."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def is_closing(self) -> bool:
        return False


def test_commands_in_and_typed_events_out_over_a_real_pipe() -> None:
    rig = Rig(batched=True)
    worker_end, control_end = socket.socketpair()
    control_end.settimeout(TIMEOUT_S)
    try:
        rig.worker.transport = _Transport(worker_end)
        decoder = FrameDecoder()
        rig.worker.handle_command(AddMember(5, "r", TA, "alice", "127.0.0.1",
                                            Framing.PLAIN, True))
        rig.worker.handle_command(AddMember(6, "nowhere", TB, "bob", "127.0.0.1",
                                            Framing.PLAIN, False))
        rig.clients[TA] = udp()
        rig.datagram(TA, b"/exit")
        events: list[Message] = []
        while len(events) < 4:
            events += decoder.feed(control_end.recv(65536))
        port = rig.clients[TA].getsockname()[1]
        assert events == [Ack(5, True), Ack(6, False), Bound(TA, "127.0.0.1", port, True),
                          Closed("r", "exit")]
    finally:
        worker_end.close()
        control_end.close()
        rig.close()


class _Writes(_Transport):
    """Also counts the writes: one per pipe write the worker makes."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.writes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        super().write(data)


@pytest.mark.parametrize("batched", [True, COMPILED])
def test_first_datagrams_answered_at_once_tell_control_in_one_write(
        batched: bool | str) -> None:
    """Three ``ocm1r`` members' first datagrams (keepalives, each answered with a SYNC at
    once) in one read: each gets its SYNC, and control learns the three addresses in one
    pipe write at the read's end, not one write (one wake-up of control) per member."""
    rig = Rig(batched)
    worker_end, control_end = socket.socketpair()
    control_end.settimeout(TIMEOUT_S)
    try:
        rig.worker.transport = writes = _Writes(worker_end)
        tokens = (TA, TB, TC)
        for i, token in enumerate(tokens):
            rig.worker.handle_command(AddMember(i, "r", token, f"u{i}", "127.0.0.1",
                                                Framing.OCM1R, i == 0))
            rig.clients[token] = udp()
        acks: list[Message] = []
        decoder = FrameDecoder()
        while len(acks) < 3:
            acks += decoder.feed(control_end.recv(65536))
        assert acks == [Ack(0, True), Ack(1, True), Ack(2, True)]
        writes.writes = 0
        for token in tokens:  # queued together, read at once
            rig.clients[token].sendto(encode_chat(b"r", token, b""), rig.sock.getsockname())
        ready, _, _ = select.select([rig.sock], [], [], TIMEOUT_S)
        assert ready
        rig.read()
        for token in tokens:
            assert rig.recv(token)[0] == 4  # SYNC (docs/protocol.md §9.3)
        events: list[Message] = []
        while len(events) < 3:
            events += decoder.feed(control_end.recv(65536))
        assert events == [Bound(t, "127.0.0.1", rig.clients[t].getsockname()[1], True)
                          for t in tokens]
        assert writes.writes == 1
    finally:
        worker_end.close()
        control_end.close()
        rig.close()


def test_a_corrupt_pipe_stops_the_worker_without_telling_members() -> None:
    rig = Rig(batched=True)
    try:
        rig.add(TA, "alice", host=True)
        rig.add(TB, "bob")
        rig.drain(TA)
        rig.worker.done = rig.loop.create_future()
        pipe = _PipeProtocol(rig.worker)
        pipe.data_received(encode(Ping(1))[:-1])  # a partial frame: nothing yet
        assert not rig.worker.done.done()
        pipe.data_received(b"}" + b"\x00\x00\x00\x02[]")  # Ping(1), then not an object
        assert rig.worker.done.done()  # control replaces the worker and re-seeds it
        assert rig.drain(TA) == [] and rig.drain(TB) == []  # no "closed" notice
    finally:
        rig.close()


def test_a_failing_socket_counts_against_every_recipient_but_the_sender() -> None:
    rig = Rig(batched=True)
    read_end, write_end = os.pipe()
    try:
        rig.add(TA, "alice", host=True)
        rig.add(TB, "bob")
        rig.add(TC, "carol", framing=Framing.OCM1)
        for token in (TA, TB, TC):
            rig.drain(token)
        b, c = (rig.clients[t].getsockname() for t in (TB, TC))
        rig.worker.fd = read_end  # not a socket: sendmmsg fails with ENOTSOCK for all
        rig.datagram(TA, b"hi")
        assert rig.worker.core.failing == {b: 1, c: 1}
        assert rig.drain(TB) == [] and rig.drain(TC) == []
    finally:
        os.close(read_end)
        os.close(write_end)
        rig.close()
