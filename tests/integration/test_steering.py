"""The reuseport steering program on real loopback sockets.

Each test checks one kernel fact that relay/steering.py documents: tagged datagrams reach
the socket of their tag whatever their source port, an index outside the group falls
back to hash selection, a load past the end returns 0, and the group order only changes
when a member is closed. Waits use ``select.poll`` with a timeout, never ``sleep``.
"""

from __future__ import annotations

import random
import select
import socket
import struct
from collections.abc import Iterator

import pytest

from relay import steering
from relay.steering import (
    MAX_WORKERS,
    attach_steering,
    create_reuseport_group,
    create_udp_socket,
    steering_program,
    tag_worker,
    worker_tag,
)

HOST = "127.0.0.1"
WAIT_MS = 2000
"""Give up waiting for a datagram after this long with nothing arriving (loopback
delivers within microseconds; this only bounds a failing test)."""


def datagram(tag: bytes, seq: int, room: bytes = b"room") -> bytes:
    """A Stage 2 datagram whose token starts with ``tag``; ``seq`` is the message."""
    token = tag + b"0123456789abcdef"
    return bytes((len(room), len(token))) + room + token + struct.pack("!I", seq)


def seq_of(data: bytes) -> int:
    return int(struct.unpack_from("!I", data, len(data) - 4)[0])


def collect(socks: list[socket.socket], expected: int) -> list[tuple[int, bytes]]:
    """Receive until ``expected`` datagrams arrived (or nothing came for ``WAIT_MS``);
    returns (socket index, datagram) pairs."""
    poller = select.poll()
    index = {s.fileno(): i for i, s in enumerate(socks)}
    for s in socks:
        poller.register(s, select.POLLIN)
    got: list[tuple[int, bytes]] = []
    while len(got) < expected:
        events = poller.poll(WAIT_MS)
        if not events:
            break
        for fd, _ in events:
            sock = socks[index[fd]]
            while True:
                try:
                    got.append((index[fd], sock.recv(65535)))
                except BlockingIOError:
                    break
    return got


def assert_quiet(socks: list[socket.socket], ms: int = 50) -> None:
    """Nothing more is waiting (the extra datagrams would have been delivered already:
    loopback delivery is synchronous in the sender's syscall)."""
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    assert poller.poll(ms) == []


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    """Eight senders, each with its own source port (so its own reuseport hash)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    for s in socks:
        s.bind((HOST, 0))
    yield socks
    for s in socks:
        s.close()


def group(n: int, attach: bool = True) -> list[socket.socket]:
    socks = create_reuseport_group(HOST, 0, n)
    if attach:
        attach_steering(socks[0], n)
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


# --- pure parts -------------------------------------------------------------------------

def test_tags_round_trip() -> None:
    assert worker_tag(0) == b"A"
    assert worker_tag(MAX_WORKERS - 1) == b"`"
    for i in range(MAX_WORKERS):
        tag = worker_tag(i)
        assert len(tag) == 1 and 0x20 < tag[0] < 0x7F  # printable, token-safe
        assert tag_worker(tag[0]) == i
    assert tag_worker(0x40) is None
    assert tag_worker(0x41 + MAX_WORKERS) is None
    for bad in (-1, MAX_WORKERS):
        with pytest.raises(ValueError):
            worker_tag(bad)


def test_program_bytes() -> None:
    # ldb [0]; tax; ldb [x+2]; sub #0x41; ret a -- struct sock_filter, little endian here
    assert steering_program(4).hex() == (
        "3000000000000000"
        "0700000000000000"
        "5000000002000000"
        "1400000041000000"
        "1600000000000000"
    )
    for bad in (0, MAX_WORKERS + 1):
        with pytest.raises(ValueError):
            steering_program(bad)


# --- sockets ----------------------------------------------------------------------------

def test_group_shares_one_port_with_big_buffers() -> None:
    socks = group(4, attach=False)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(ports) == 1 and ports != {0}
        for s in socks:
            assert not s.getblocking()
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            # The kernel doubles what it was given; as root the FORCE option passes the cap.
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 8 * 1024 * 1024
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 8 * 1024 * 1024
    finally:
        close_all(socks)


def test_single_socket_is_not_reuseport() -> None:
    sock = create_udp_socket(HOST, 0, 1 << 20, 1 << 20)
    try:
        assert not sock.getblocking()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        # No reuseport group to attach to: the kernel refuses (EINVAL).
        with pytest.raises(OSError):
            attach_steering(sock, 2)
        # ... and nobody can join its port.
        with pytest.raises(OSError):
            create_reuseport_group(HOST, sock.getsockname()[1], 2)
    finally:
        sock.close()


@pytest.mark.parametrize("n", [2, 4])
def test_every_datagram_reaches_the_socket_of_its_tag(
        n: int, clients: list[socket.socket]) -> None:
    socks = group(n)
    try:
        addr = socks[0].getsockname()
        rng = random.Random(n)
        owners = [rng.randrange(n) for _ in range(300)]
        for seq, owner in enumerate(owners):
            clients[seq % len(clients)].sendto(datagram(worker_tag(owner), seq), addr)
        got = collect(socks, len(owners))
        assert len(got) == len(owners)
        assert sorted(seq_of(d) for _, d in got) == list(range(len(owners)))
        misrouted = [(i, seq_of(d)) for i, d in got if owners[seq_of(d)] != i]
        assert misrouted == []
        assert {i for i, _ in got} == set(range(n))
        assert_quiet(socks)
    finally:
        close_all(socks)


def test_room_name_length_moves_the_tag(clients: list[socket.socket]) -> None:
    """The program follows RoomNameSize: the tag is found after any room name length."""
    socks = group(4)
    try:
        addr = socks[0].getsockname()
        cases = [(size, size % 4) for size in (0, 1, 7, 64, 255)]
        for seq, (size, owner) in enumerate(cases):
            data = datagram(worker_tag(owner), seq, room=b"r" * size)
            clients[seq % len(clients)].sendto(data, addr)
        got = collect(socks, len(cases))
        assert sorted((seq_of(d), i) for i, d in got) == [
            (seq, owner) for seq, (_, owner) in enumerate(cases)]
    finally:
        close_all(socks)


def test_index_outside_the_group_falls_back_to_hash(clients: list[socket.socket]) -> None:
    """Tags for workers 4..31 and bytes below ``A`` (which wrap to huge indexes) are not
    dropped: the kernel picks a socket by the 4-tuple hash, the same one for every
    datagram of a sender, and different senders spread over the group."""
    socks = group(4)
    extra = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(24)]
    try:
        senders = clients + extra
        for s in extra:
            s.bind((HOST, 0))
        addr = socks[0].getsockname()
        tags = [worker_tag(i) for i in range(4, MAX_WORKERS)] + [b"0", b"@", b"~"]
        seq = 0
        sender_of: dict[int, int] = {}
        for k, sender in enumerate(senders):
            for tag in tags[k % len(tags):] + tags[:k % len(tags)]:
                sender.sendto(datagram(tag, seq), addr)
                sender_of[seq] = k
                seq += 1
        got = collect(socks, seq)
        assert len(got) == seq  # none dropped
        by_sender: dict[int, set[int]] = {}
        for i, d in got:
            by_sender.setdefault(sender_of[seq_of(d)], set()).add(i)
        assert all(len(landed) == 1 for landed in by_sender.values())  # hash: per 4-tuple
        # 32 senders all hashing to one socket of 4 would have probability 4**-31.
        assert len(set().union(*by_sender.values())) > 1
    finally:
        close_all(socks + extra)


def test_load_past_the_end_returns_socket_0(clients: list[socket.socket]) -> None:
    """Short datagrams (tag byte missing) end the program with 0 -- whatever the source."""
    socks = group(4)
    try:
        addr = socks[0].getsockname()
        shorts = [b"", b"\x05", b"\x00", b"\x00\x10", b"\x09\x01room", b"\xff\x01" + b"x" * 200]
        for k, client in enumerate(clients):
            for data in shorts:
                client.sendto(data, addr)
            # One well-formed datagram per client for the last socket: steering still works.
            client.sendto(datagram(worker_tag(3), k), addr)
        got = collect(socks, len(clients) * (len(shorts) + 1))
        assert len(got) == len(clients) * (len(shorts) + 1)
        assert sorted(d for i, d in got if i == 0) == sorted(shorts * len(clients))
        assert sorted(seq_of(d) for i, d in got if i == 3) == list(range(len(clients)))
        assert {i for i, _ in got} == {0, 3}
    finally:
        close_all(socks)


def test_order_is_stable_while_all_sockets_stay_open(clients: list[socket.socket]) -> None:
    """A socket nobody reads (a crashed worker) keeps its index and queues its
    datagrams; closing an unrelated socket on the same port changes nothing."""
    socks = group(4)
    try:
        addr = socks[0].getsockname()
        bystander = create_udp_socket(HOST, 0)
        bystander.close()
        for round_ in range(3):
            for seq in range(40):
                clients[seq % len(clients)].sendto(datagram(worker_tag(seq % 4), seq), addr)
            live = [socks[0], socks[2], socks[3]]  # socket 1 is not read this round
            got = collect(live, 30)
            assert sorted((seq_of(d) % 4, [0, 2, 3][i]) for i, d in got) == sorted(
                (s % 4, s % 4) for s in range(40) if s % 4 != 1), round_
            queued = collect([socks[1]], 10)  # the "restarted worker" finds them waiting
            assert sorted(seq_of(d) for _, d in queued) == list(range(1, 40, 4))
    finally:
        close_all(socks)


def test_closing_a_member_moves_the_last_into_its_slot(clients: list[socket.socket]) -> None:
    """Why control never closes a member: the kernel fills the hole with the last socket,
    so worker 1's datagrams would reach socket 3 and tag 3 would fall back to hash."""
    socks = group(4)
    try:
        addr = socks[0].getsockname()
        socks[1].close()
        live = [socks[0], socks[2], socks[3]]
        for seq in range(12):
            clients[seq % len(clients)].sendto(datagram(worker_tag(seq % 3), seq), addr)
        got = collect(live, 12)
        assert sorted((seq_of(d) % 3, i) for i, d in got) == sorted(
            (s % 3, {0: 0, 1: 2, 2: 1}[s % 3]) for s in range(12))
    finally:
        close_all(socks)


def test_reattach_replaces_the_program_and_detach_restores_hash(
        clients: list[socket.socket]) -> None:
    socks = group(2)
    try:
        addr = socks[0].getsockname()
        # Through the *other* member, a program that always answers 1.
        steering.attach_program(socks[1], steering.SOCK_FILTER.pack(0x06, 0, 0, 1))
        for seq in range(20):
            clients[seq % len(clients)].sendto(datagram(worker_tag(0), seq), addr)
        assert {i for i, _ in collect(socks, 20)} == {1}
        steering.detach_steering(socks[0])
        with pytest.raises(OSError):
            steering.detach_steering(socks[0])  # ENOENT: nothing attached any more
    finally:
        close_all(socks)


# --- cluster mode: another node's tokens go to the relay socket -------------------------
def test_cluster_program_steers_other_nodes_tokens_to_the_relay_socket(
        clients: list[socket.socket]) -> None:
    """Two workers plus the relay socket (index 2); this node's tag is ``#``."""
    socks = create_reuseport_group(HOST, 0, 3)
    try:
        steering.attach_program(socks[0], steering.cluster_steering_program(2, ord("#")))
        port = socks[0].getsockname()[1]
        cases = [(b"A#", 0), (b"B#", 1), (b"A$", 2), (b"B!", 2)]
        for seq, (tag, _) in enumerate(cases * 4):
            clients[seq % len(clients)].sendto(datagram(tag, seq), (HOST, port))
        got = collect(socks, len(cases) * 4)
        assert sorted((seq_of(d), i) for i, d in got) == [
            (seq, cases[seq % len(cases)][1]) for seq in range(len(cases) * 4)]
        clients[0].sendto(b"\x04", (HOST, port))  # too short for a node tag: socket 0
        assert [i for i, _ in collect(socks, 1)] == [0]
        assert_quiet(socks)
    finally:
        close_all(socks)
    with pytest.raises(ValueError):
        steering.cluster_steering_program(2, 0x20)
    with pytest.raises(ValueError):
        steering.cluster_steering_program(steering.MAX_WORKERS, ord("#"))
