"""loadgen/fastpath.py: the C accounting counts exactly what the Python path counts.

Two shared sockets (loadgen processes 0 and 1, so two loopback address ranges) receive
the same traffic over real loopback sockets: in-order chat, a gap and the late message
that fills it, a duplicate, a member's own message, a warm-up one, one to a member that is
not counted, a notice, garbage, a latency past the direct-count array and a datagram to
an address that is no member's. One socket accounts in C, the other in Python; every
counter must agree.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

from loadgen import fastpath
from loadgen.meter import DIRECT_US, LATENCY_UNIT_NS, Meter, encode_payload, username_of
from loadgen.transport import FIRST_OCTET_BASE, SharedSocket, member_ip

pytestmark = pytest.mark.skipif(fastpath.resolve("c") is not None,
                                reason=f"no C accounting here: {fastpath.resolve('c')}")

ROOMS, USERS = 3, 4
JOINED = "u2 がチャットルームに参加しました".encode()


def chat(room: int, sender: int, seq: int, sched_ns: int) -> bytes:
    text = encode_payload(room * USERS + sender, seq, sched_ns, 60, lag_us=3)
    return username_of(sender, USERS).encode() + b": " + text


def traffic(mstart: int) -> list[list[tuple[int | None, bytes]]]:
    """Rounds of (receiver member, datagram); None: an address that is no member's. Each
    round is sent at once, so it arrives in one or a few recvmmsg batches."""
    now = time.monotonic_ns()
    plain = [[(room * USERS + r, chat(room, s, seq, now)) for room in range(ROOMS)
              for s in range(USERS) for r in range(USERS) if r != s] for seq in range(3)]
    odd = [
        (0, chat(0, 1, 4, now)),  # gap: 3 missing
        (0, chat(0, 1, 5, now)),  # after the gap, same pair, same batch
        (0, chat(0, 1, 3, now)),  # fills the gap (reordered)
        (0, chat(0, 1, 3, now)),  # duplicate
        (1, chat(0, 1, 6, now)),  # the sender's own message: misrouted
        (2, chat(0, 1, 0, mstart - 1)),  # scheduled before the window: warmup
        (3, chat(0, 1, 0, now)),  # to the member that is not counted: extra
        (4, JOINED),  # a notice
        (5, b"u1: " + b"x" * 60),  # not our payload
        (6, chat(1, 1, 3, now - (DIRECT_US + 5) * LATENCY_UNIT_NS)),  # overflow latency
        (None, chat(0, 2, 3, now)),  # stray
    ]
    after = [(room * USERS + 2, chat(room, 1, (7, 4, 3)[room], now))  # a gap, in order x2
             for room in range(ROOMS)]
    return [*plain, odd, after]


def drain(sock: SharedSocket, meter: Meter, want: int) -> None:
    batch: list[tuple[int, bytes, int]] = []
    got = 0
    deadline = time.monotonic() + 10
    while got < want:
        left = deadline - time.monotonic()
        assert left > 0, f"only {got} of {want} datagrams arrived"
        select.select([sock.sock], [], [], left)
        before = meter.c.delivered + len(batch) + sock.stray
        sock.receive(-4, batch.append)
        got += meter.c.delivered + len(batch) + sock.stray - before
    meter.receive_batch(batch, time.monotonic_ns())


def test_c_and_python_accounting_count_the_same() -> None:
    socks = [SharedSocket(ROOMS * USERS, proc) for proc in (0, 1)]
    meters = [Meter(0, ROOMS, USERS) for _ in socks]
    socks[0].account_with(meters[0])
    fast = socks[0].fast
    assert fast is not None and socks[1].fast is None
    mstart = time.monotonic_ns() - 10 * 1_000_000_000
    for meter in meters:
        meter.known_bound = [True] * (ROOMS * USERS)
        meter.start_run(mstart)
        meter.counted[3] = 0
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for rounds in traffic(mstart):
            for proc, (sock, meter) in enumerate(zip(socks, meters, strict=True)):
                port = sock.sock.getsockname()[1]
                for lm, data in rounds:
                    ip = member_ip(proc, lm) if lm is not None else \
                        f"127.{FIRST_OCTET_BASE + proc}.0.251"
                    tx.sendto(data, (ip, port))
                drain(sock, meter, len(rounds))
    finally:
        tx.close()
        for sock in socks:
            sock.close()
    c_counts, py_counts = (m.counts() for m in meters)
    assert c_counts == py_counts
    assert socks[0].stray == socks[1].stray == 1
    # member 3 is not counted: its 3 deliveries a round are "extra"
    assert (c_counts.duplicated, c_counts.misrouted, c_counts.warmup, c_counts.extra,
            c_counts.unparsed, c_counts.notices, c_counts.reordered) == (1, 1, 1, 10, 1, 1, 1)
    in_order = 3 * (ROOMS * USERS * (USERS - 1) - 3)
    assert c_counts.delivered == in_order + 4 + ROOMS  # + gap, after it, fill, overflow
    assert fast.accounted >= in_order  # those went through C
    for meter in meters:  # every delivery has both latencies, the overflow one included
        meter.take_interval()
        assert meter.histogram.get_total_count() == c_counts.delivered
        assert meter.relay_histogram.get_total_count() == c_counts.delivered
        assert meter.histogram.get_max_value() >= DIRECT_US
