"""runtime/mmsg.py on real loopback sockets: SendBatch fan-out (all, all-but-one, past
UIO_MAXIOV, failures) and RecvBatch (bursts, addresses, truncation). No sleeps: every
wait is ``select.poll`` with a timeout."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from relay.steering import create_udp_socket
from runtime import mmsg
from runtime.mmsg import RecvBatch, SendBatch

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg unavailable")

HOST = "127.0.0.1"
WAIT_MS = 2000
"""Bound on waiting for a datagram that should come (loopback delivers at once)."""
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)

Received = dict[int, list[tuple[bytes, tuple[str, int]]]]


def make_socket() -> socket.socket:
    return create_udp_socket(HOST, 0, 4 << 20, 4 << 20)


@pytest.fixture
def receivers() -> Iterator[list[socket.socket]]:
    socks = [make_socket() for _ in range(9)]
    yield socks
    for s in socks:
        s.close()


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    sock = make_socket()
    yield sock
    sock.close()


def collect(socks: list[socket.socket], expected: int) -> Received:
    """Receive (with recvfrom) until ``expected`` datagrams in all or ``WAIT_MS`` of
    silence; returns socket index -> [(datagram, source)]."""
    poller = select.poll()
    index = {s.fileno(): i for i, s in enumerate(socks)}
    for s in socks:
        poller.register(s, select.POLLIN)
    got: Received = {i: [] for i in range(len(socks))}
    total = 0
    while total < expected:
        events = poller.poll(WAIT_MS)
        if not events:
            break
        for fd, _ in events:
            while True:
                try:
                    got[index[fd]].append(socks[index[fd]].recvfrom(65535))
                except BlockingIOError:
                    break
                total += 1
    return got


def next_datagram(sock: socket.socket) -> bytes:
    assert select.select([sock], [], [], WAIT_MS / 1000)[0], "nothing arrived"
    return sock.recv(65535)


def receive_all(batch: RecvBatch, sock: socket.socket, expected: int
                ) -> tuple[list[tuple[bytes, tuple[str, int]]], list[int]]:
    """RecvBatch until ``expected`` datagrams; returns them and each recv's count."""
    out: list[tuple[bytes, tuple[str, int]]] = []
    counts = []
    while len(out) < expected:
        got = batch.recv(sock.fileno())
        if got == 0:
            if not select.select([sock], [], [], WAIT_MS / 1000)[0]:
                break
            continue
        counts.append(got)
        out += batch.datagrams()
    return out, counts


# --- SendBatch --------------------------------------------------------------------------

def test_send_all_reaches_every_member_once(receivers: list[socket.socket],
                                            sender: socket.socket) -> None:
    batch = SendBatch([s.getsockname() for s in receivers])
    payload = b"x" * 100
    assert batch.send_all(sender.fileno(), payload) == ()
    assert batch.last_errnos == ()
    got = collect(receivers, 9)
    assert got == {i: [(payload, sender.getsockname())] for i in range(9)}


def test_send_except_skips_exactly_the_sender(receivers: list[socket.socket],
                                              sender: socket.socket) -> None:
    batch = SendBatch([s.getsockname() for s in receivers])
    for k in range(9):
        assert batch.send_except(sender.fileno(), b"from %d" % k, k) == ()
    got = collect(receivers, 9 * 8)
    for i in range(9):
        assert sorted(d for d, _ in got[i]) == [b"from %d" % k for k in range(9) if k != i]
    # Nothing more is on its way: a marker sent after everything arrives first everywhere
    # (one sender to one receiver over loopback keeps order).
    for s in receivers:
        sender.sendto(b"marker", s.getsockname())
    assert all(next_datagram(s) == b"marker" for s in receivers)


def test_send_except_edges(receivers: list[socket.socket], sender: socket.socket) -> None:
    solo = SendBatch([receivers[0].getsockname()])
    assert solo.send_except(sender.fileno(), b"alone", 0) == ()  # nobody else: no syscall
    assert SendBatch([]).send_all(sender.fileno(), b"void") == ()
    for bad in (-1, 1):
        with pytest.raises(IndexError):
            solo.send_except(sender.fileno(), b"x", bad)
    sender.sendto(b"marker", receivers[0].getsockname())
    assert next_datagram(receivers[0]) == b"marker"


def test_batches_longer_than_uio_maxiov(receivers: list[socket.socket],
                                        sender: socket.socket) -> None:
    """The kernel caps one sendmmsg at 1024 messages; the rest goes in further calls."""
    addrs = [receivers[i % 3].getsockname() for i in range(2500)]
    batch = SendBatch(addrs)
    assert batch.send_except(sender.fileno(), b"m", 1234) == ()
    got = collect(receivers[:3], 2499)
    assert [len(got[i]) for i in range(3)] == [834, 832, 833]  # index 1234 is socket 1


def test_payload_must_be_bytes(receivers: list[socket.socket], sender: socket.socket) -> None:
    batch = SendBatch([receivers[0].getsockname()])
    for bad in ("text", bytearray(b"x"), memoryview(b"x"), 12345, None):
        with pytest.raises(TypeError):
            batch.send_all(sender.fileno(), bad)  # type: ignore[arg-type]


def test_bad_addresses_raise_at_build() -> None:
    with pytest.raises(OSError):
        SendBatch([("not-an-ip", 9)])
    with pytest.raises(OSError):
        SendBatch([("::1", 9)])
    with pytest.raises(ValueError):
        SendBatch([(HOST, 70000)])


def test_failed_recipient_is_reported_and_others_still_get_it(
        receivers: list[socket.socket], sender: socket.socket) -> None:
    """Port 0 is refused by udp_sendmsg (EINVAL) for that one message only."""
    addrs = [s.getsockname() for s in receivers[:4]]
    addrs.insert(2, (HOST, 0))
    batch = SendBatch(addrs)
    assert batch.send_all(sender.fileno(), b"a") == (2,)
    assert batch.last_errnos == (errno.EINVAL,)
    assert batch.send_except(sender.fileno(), b"b", 2) == ()  # the bad one excluded
    assert batch.last_errnos == ()
    assert batch.send_except(sender.fileno(), b"c", 4) == (2,)  # wraps around past the end
    got = collect(receivers[:4], 11)
    assert [sorted(d for d, _ in got[i]) for i in range(4)] == [
        [b"a", b"b", b"c"], [b"a", b"b", b"c"], [b"a", b"b", b"c"], [b"a", b"b"]]


def test_pending_icmp_error_is_not_blamed_on_the_next_recipient(
        receivers: list[socket.socket], sender: socket.socket) -> None:
    """With IP_RECVERR, an ICMP port-unreachable for an earlier send makes the next send
    call fail (ECONNREFUSED) without sending; the batch retries that message once."""
    sender.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    gone = make_socket()
    gone_addr = gone.getsockname()
    gone.close()
    sender.sendto(b"to nobody", gone_addr)
    poller = select.poll()
    poller.register(sender, select.POLLERR)
    assert poller.poll(WAIT_MS), "no ICMP error came back"
    batch = SendBatch([s.getsockname() for s in receivers[:3]])
    assert batch.send_all(sender.fileno(), b"fine") == ()
    got = collect(receivers[:3], 3)
    assert [[d for d, _ in got[i]] for i in range(3)] == [[b"fine"]] * 3
    # The error queue still names the real culprit for the caller to count.
    _, _, _, culprit = sender.recvmsg(1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    assert culprit == gone_addr


def test_dead_member_inside_the_batch_costs_nobody_their_datagram(
        receivers: list[socket.socket], sender: socket.socket) -> None:
    """A member whose port closed: its ICMP error can come back while the same sendmmsg
    is still running and stop the batch at the next message. Every live member still gets
    the payload exactly once, and the error queue names the dead one."""
    sender.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    gone = make_socket()
    gone_addr = gone.getsockname()
    gone.close()
    live = receivers[:4]
    batch = SendBatch([live[0].getsockname(), gone_addr] + [s.getsockname() for s in live[1:]])
    for round_ in range(3):
        assert batch.send_all(sender.fileno(), b"round %d" % round_) == ()
    got = collect(live, 12)
    assert [sorted(d for d, _ in got[i]) for i in range(4)] == [
        [b"round 0", b"round 1", b"round 2"]] * 4
    poller = select.poll()
    poller.register(sender, select.POLLERR)
    assert poller.poll(WAIT_MS)
    _, _, _, culprit = sender.recvmsg(1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
    assert culprit == gone_addr


def test_socket_errors_raise(receivers: list[socket.socket]) -> None:
    batch = SendBatch([s.getsockname() for s in receivers[:2]])
    recv = RecvBatch()
    with open(os.devnull, "rb") as not_a_socket:
        for call in (lambda fd: batch.send_all(fd, b"x"), recv.recv):
            with pytest.raises(OSError) as info:
                call(not_a_socket.fileno())
            assert info.value.errno == errno.ENOTSOCK
    closed = make_socket()
    fd = closed.detach()
    os.close(fd)
    for call in (lambda fd: batch.send_except(fd, b"x", 0), lambda fd: batch.send_all(fd, b"x"),
                 recv.recv):
        with pytest.raises(OSError) as info:
            call(fd)
        assert info.value.errno == errno.EBADF


# --- RecvBatch --------------------------------------------------------------------------

def test_recv_burst_from_several_senders(receivers: list[socket.socket]) -> None:
    target = receivers[0]
    senders = receivers[1:5]
    for seq in range(100):
        senders[seq % 4].sendto(b"msg %03d" % seq, target.getsockname())
    batch = RecvBatch(max_batch=64)
    got, counts = receive_all(batch, target, 100)
    assert counts[0] == 64 and sum(counts) == 100  # all were queued: a full first batch
    assert [d for d, _ in got] == [b"msg %03d" % seq for seq in range(100)]
    assert [a for _, a in got] == [senders[seq % 4].getsockname() for seq in range(100)]
    assert batch.recv(target.fileno()) == 0 and batch.datagrams() == []


def test_recv_accessors_and_address_cache(receivers: list[socket.socket]) -> None:
    target, a, b = receivers[:3]
    batch = RecvBatch(max_batch=8, addr_cache_entries=2)
    first: list[tuple[str, int]] = []
    for round_ in range(3):
        for s in (a, b, receivers[3]):
            s.sendto(b"r%d" % round_, target.getsockname())
        got, _ = receive_all(batch, target, 3)
        assert got == [(b"r%d" % round_, s.getsockname()) for s in (a, b, receivers[3])]
        assert batch.datagram(2) == b"r%d" % round_
        assert batch.address(0) == a.getsockname()
        assert not batch.truncated(1)
        first.append(got[0][1])
        assert len(batch._cache) <= 2  # bounded: cleared when full
    with pytest.raises(IndexError):
        batch.datagram(3)
    big = RecvBatch()
    for _ in range(2):
        a.sendto(b"same sender", target.getsockname())
        got, _ = receive_all(big, target, 1)
        first.append(got[0][1])
    assert first[-1] is first[-2]  # repeated sender: the cached tuple, no new str


def test_truncation_is_detectable(receivers: list[socket.socket],
                                  sender: socket.socket) -> None:
    target = receivers[0]
    sizes = [4096, 4097, 5000, 1]
    for size in sizes:
        sender.sendto(bytes([size % 251]) * size, target.getsockname())
    batch = RecvBatch()
    got, _ = receive_all(batch, target, 4)
    assert [len(d) for d, _ in got] == [4096, 4097, 4097, 1]  # > 4096: drop it
    assert [batch.truncated(i) for i in range(4)] == [False, False, True, False]
    assert got[2][0] == bytes([5000 % 251]) * 4097


def test_send_batch_to_recv_batch(receivers: list[socket.socket],
                                  sender: socket.socket) -> None:
    out = SendBatch([receivers[0].getsockname()] * 50)
    assert out.send_all(sender.fileno(), b"p" * 100) == ()
    got, counts = receive_all(RecvBatch(max_batch=16), receivers[0], 50)
    assert counts == [16, 16, 16, 2]
    assert got == [(b"p" * 100, sender.getsockname())] * 50


def test_bad_sizes_raise() -> None:
    for kwargs in ({"max_batch": 0}, {"max_batch": 1025}, {"bufsize": 0}):
        with pytest.raises(ValueError):
            RecvBatch(**kwargs)


# --- RecvBatch(pktinfo=True): one wildcard socket standing in for many addresses ---------

@pytest.fixture
def wildcard() -> Iterator[socket.socket]:
    """Bound to 0.0.0.0 (so it gets datagrams for every 127.x address on its port) with
    IP_PKTINFO on. Only loopback addresses are ever sent to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", 0))
    sock.setsockopt(socket.IPPROTO_IP, mmsg.IP_PKTINFO, 1)
    sock.setblocking(False)
    yield sock
    sock.close()


def test_pktinfo_gives_each_datagrams_destination(wildcard: socket.socket,
                                                  sender: socket.socket) -> None:
    port = wildcard.getsockname()[1]
    dests = [f"127.77.{i // 250}.{i % 250 + 1}" for i in range(300)]
    for seq, ip in enumerate(dests):
        sender.sendto(b"to %d" % seq, (ip, port))
    batch = RecvBatch(max_batch=128, pktinfo=True)
    got: list[tuple[bytes, bytes, int]] = []
    counts = []
    while len(got) < len(dests):
        n = batch.recv(wildcard.fileno())
        if n == 0:
            assert select.select([wildcard], [], [], WAIT_MS / 1000)[0], "nothing arrived"
            continue
        counts.append(n)
        got += batch.datagrams_to()
    assert counts[0] == 128  # all queued before the first call: full batches
    assert got == [(b"to %d" % seq, socket.inet_aton(ip), 0) for seq, ip in enumerate(dests)]
    assert batch.datagrams()[0][1] == sender.getsockname()  # sources still available


def test_pktinfo_slot_missing_is_reported_not_stale(wildcard: socket.socket,
                                                    sender: socket.socket) -> None:
    """A datagram that carries no IP_PKTINFO (the option switched off) gets ``b""``, not
    the previous datagram's destination left in the slot, and the slots are restored."""
    port = wildcard.getsockname()[1]
    batch = RecvBatch(max_batch=4, pktinfo=True)
    sender.sendto(b"first", ("127.77.1.1", port))
    assert select.select([wildcard], [], [], WAIT_MS / 1000)[0]
    assert batch.recv(wildcard.fileno()) == 1
    assert batch.datagrams_to() == [(b"first", socket.inet_aton("127.77.1.1"), 0)]
    wildcard.setsockopt(socket.IPPROTO_IP, mmsg.IP_PKTINFO, 0)
    sender.sendto(b"second", ("127.77.1.2", port))
    assert select.select([wildcard], [], [], WAIT_MS / 1000)[0]
    assert batch.recv(wildcard.fileno()) == 1
    assert batch.datagrams_to() == [(b"second", b"", 0)]
    wildcard.setsockopt(socket.IPPROTO_IP, mmsg.IP_PKTINFO, 1)
    sender.sendto(b"third", ("127.77.1.3", port))
    assert select.select([wildcard], [], [], WAIT_MS / 1000)[0]
    assert batch.recv(wildcard.fileno()) == 1
    assert batch.datagrams_to() == [(b"third", socket.inet_aton("127.77.1.3"), 0)]


def test_timestamps_say_when_the_kernel_queued_each_datagram(wildcard: socket.socket,
                                                             sender: socket.socket) -> None:
    wildcard.setsockopt(socket.SOL_SOCKET, mmsg.SO_TIMESTAMPNS, 1)
    port = wildcard.getsockname()[1]
    batch = RecvBatch(max_batch=8, pktinfo=True, timestamps=True)
    before = time.time_ns()
    for i in range(3):
        sender.sendto(b"t%d" % i, (f"127.77.2.{i + 1}", port))
    assert select.select([wildcard], [], [], WAIT_MS / 1000)[0]
    got = []
    while len(got) < 3:
        if batch.recv(wildcard.fileno()) == 0:
            assert select.select([wildcard], [], [], WAIT_MS / 1000)[0], "nothing arrived"
        got += batch.datagrams_to()
    assert [(d, dest) for d, dest, _ in got] == [
        (b"t%d" % i, socket.inet_aton(f"127.77.2.{i + 1}")) for i in range(3)]
    read = time.time_ns()
    stamps = [queued for _, _, queued in got]
    assert stamps == sorted(stamps)
    # stamped by the kernel's receive path: after the first send began, before the read
    # (loopback may finish that path in a softirq just after sendto returned)
    assert before <= stamps[0] and stamps[-1] <= read


def test_a_datagram_without_the_asked_for_timestamp_gives_neither(
        wildcard: socket.socket, sender: socket.socket) -> None:
    """Control bytes that do not match the layout asked for are not guessed at: that
    datagram gets ``b""`` and 0; the slots are restored for the next call."""
    port = wildcard.getsockname()[1]
    batch = RecvBatch(max_batch=4, pktinfo=True, timestamps=True)
    for stamped, ip in ((False, "127.77.3.1"), (True, "127.77.3.2")):
        wildcard.setsockopt(socket.SOL_SOCKET, mmsg.SO_TIMESTAMPNS, int(stamped))
        sender.sendto(b"x", (ip, port))
        assert select.select([wildcard], [], [], WAIT_MS / 1000)[0]
        assert batch.recv(wildcard.fileno()) == 1
        ((data, dest, queued),) = batch.datagrams_to()
        if stamped:
            assert dest == socket.inet_aton(ip) and queued > 0
        else:
            assert (data, dest, queued) == (b"x", b"", 0)


def test_datagrams_to_needs_pktinfo() -> None:
    batch = RecvBatch()
    with pytest.raises(ValueError):
        batch.datagrams_to()
    assert RecvBatch(pktinfo=True).datagrams_to() == []
    with pytest.raises(ValueError):
        RecvBatch(timestamps=True)


def test_buffers_and_slot_size_for_in_place_readers() -> None:
    with pytest.raises(ValueError):
        RecvBatch().buffers()
    assert RecvBatch().slot_bytes == 0
    assert RecvBatch(pktinfo=True).slot_bytes == mmsg.PKTINFO_SLOT_BYTES
    batch = RecvBatch(max_batch=4, bufsize=100, pktinfo=True, timestamps=True)
    assert batch.slot_bytes == mmsg.PKTINFO_SLOT_BYTES + mmsg.TIMESTAMP_SLOT_BYTES
    data, hdrs, ctrl = batch.buffers()
    assert len(data) == 4 * 100 and len(hdrs) == 4 and len(ctrl) == 4 * batch.slot_bytes
