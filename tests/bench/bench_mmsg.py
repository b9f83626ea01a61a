"""Batched vs per-datagram UDP syscalls on loopback, 100-byte payloads.

    python tests/bench/bench_mmsg.py [--fanouts 10000] [--burst 10000] [--runs 5]

Send: one sender relays to 9 members of a 10-member room (1 -> 9 fan-out), either
(a) a Python loop of ``sock.sendto`` or (b) one ``SendBatch.send_except`` per message.
Receive: a socket with ``--burst`` datagrams queued from 4 senders is drained either
(c) with a ``recvfrom`` loop or (d) with ``RecvBatch.recv`` + ``datagrams()`` (which also
builds the (bytes, (ip, port)) pairs, so both sides hand the caller the same thing).

Receivers get 8 MiB buffers (the kernel doubles them) and are drained between timed runs,
so no datagram is dropped or refused; every run checks that. Runs alternate between the
two methods; each figure is the median of ``--runs`` runs: wall-clock datagrams/s, and
the process's CPU time (user + system) per datagram. On loopback the
kernel delivers into the receiver's queue inside the sender's syscall, so the send
figures include delivery.
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import sys
import time
from collections.abc import Callable

from relay.steering import create_udp_socket
from runtime import mmsg
from runtime.mmsg import RecvBatch, SendBatch

HOST = "127.0.0.1"
PAYLOAD = b"m" * 100
ROOM = 10  # the sender plus 9 recipients


def sockets(n: int) -> list[socket.socket]:
    return [create_udp_socket(HOST, 0) for _ in range(n)]  # SOCKET_BUFFER_BYTES each


def drain(socks: list[socket.socket], expected: int) -> int:
    """Receive (untimed) until ``expected`` datagrams or 1 s of silence; returns the count.
    (Loopback normally delivers inside the send call, but softirq work can be deferred.)"""
    total = 0
    while total < expected and select.select(socks, [], [], 1.0)[0]:
        for s in socks:
            while True:
                try:
                    s.recv(65535)
                except BlockingIOError:
                    break
                total += 1
    return total


def send_loop(sender: socket.socket, members: list[tuple[str, int]], fanouts: int) -> None:
    sendto = sender.sendto
    src = members[0]
    for _ in range(fanouts):
        for a in members:
            if a is not src:
                sendto(PAYLOAD, a)


def send_batch(sender: socket.socket, members: list[tuple[str, int]], fanouts: int) -> None:
    batch = SendBatch(members)
    send_except = batch.send_except
    fd = sender.fileno()
    for _ in range(fanouts):
        if send_except(fd, PAYLOAD, 0):
            raise SystemExit(f"send failed: {batch.last_errnos}")


def recv_loop(sock: socket.socket, expected: int) -> None:
    recvfrom = sock.recvfrom
    got = 0
    while True:
        try:
            recvfrom(4097)  # -> (bytes, (ip, port)), like datagrams() items
        except BlockingIOError:
            break
        got += 1
    check(got, expected)


def recv_batch(sock: socket.socket, expected: int) -> None:
    batch = RecvBatch()
    recv = batch.recv
    datagrams = batch.datagrams
    fd = sock.fileno()
    got = 0
    while recv(fd):
        got += len(datagrams())
    check(got, expected)


def check(got: int, expected: int) -> None:
    if got != expected:
        raise SystemExit(f"received {got} datagrams, expected {expected}: buffers too small?")


class Figures:
    """Per-run wall-clock rate and process CPU time (user + system) per datagram."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.cpu_us: list[float] = []

    def run(self, fn: Callable[[], None], datagrams: int) -> None:
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        self.rates.append(datagrams / elapsed)
        self.cpu_us.append(cpu / datagrams * 1e6)

    def median(self) -> tuple[float, float]:
        return statistics.median(self.rates), statistics.median(self.cpu_us)


def bench_send(fanouts: int, runs: int) -> dict[str, Figures]:
    sender, *rx = sockets(ROOM)
    members = [sender.getsockname()] + [s.getsockname() for s in rx]
    total = fanouts * (ROOM - 1)
    figures = {"sendto": Figures(), "sendmmsg": Figures()}
    try:
        for _ in range(runs):
            for name, fn in (("sendto", send_loop), ("sendmmsg", send_batch)):
                figures[name].run(lambda fn=fn: fn(sender, members, fanouts), total)
                check(drain(rx, total), total)
    finally:
        for s in (sender, *rx):
            s.close()
    return figures


def bench_recv(burst: int, runs: int) -> dict[str, Figures]:
    target, *senders = sockets(5)
    dest = target.getsockname()
    figures = {"recvfrom": Figures(), "recvmmsg": Figures()}
    try:
        for _ in range(runs):
            for name, fn in (("recvfrom", recv_loop), ("recvmmsg", recv_batch)):
                for i in range(burst):  # queue the burst (untimed)
                    senders[i % 4].sendto(PAYLOAD, dest)
                figures[name].run(lambda fn=fn: fn(target, burst), burst)
    finally:
        for s in (target, *senders):
            s.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fanouts", type=int, default=10_000,
                        help="messages relayed per send run (x9 datagrams)")
    parser.add_argument("--burst", type=int, default=10_000,
                        help="datagrams drained per receive run")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if not mmsg.available():
        print("recvmmsg/sendmmsg unavailable here", file=sys.stderr)
        return 1
    print(f"python {sys.version.split()[0]}, 100-byte payloads, median of {args.runs} runs")
    send = {k: f.median() for k, f in bench_send(args.fanouts, args.runs).items()}
    recv = {k: f.median() for k, f in bench_recv(args.burst, args.runs).items()}
    rows = [("(a) send: sendto loop, 1->9", send["sendto"]),
            ("(b) send: SendBatch.send_except, 1->9", send["sendmmsg"]),
            ("(c) recv: recvfrom loop", recv["recvfrom"]),
            ("(d) recv: RecvBatch.recv + datagrams()", recv["recvmmsg"])]
    print(f"{'':42s} {'datagrams/s':>12s} {'wall us':>8s} {'CPU us':>8s}  (per datagram)")
    for label, (rate, cpu_us) in rows:
        print(f"{label:42s} {rate:12,.0f} {1e6 / rate:8.2f} {cpu_us:8.2f}")
    print(f"send ratio (b)/(a): {send['sendmmsg'][0] / send['sendto'][0]:.2f}x")
    print(f"recv ratio (d)/(c): {recv['recvmmsg'][0] / recv['recvfrom'][0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
