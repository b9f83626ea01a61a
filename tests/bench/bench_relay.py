"""Micro-benchmark of the relay core's hot path: ns per datagram, no sockets.

    .venv/bin/python tests/bench/bench_relay.py

Measures ``RelayCore.handle_datagram`` for a 100-byte chat in a 10-member room (plain,
and mixed plain/framed), a keepalive, and a datagram with an unknown token; medians of 5
runs of N calls each. The sends themselves are the kernel's cost (tests/bench/
bench_mmsg.py, docs/bench/micro.json).
"""

from __future__ import annotations

import os
import platform
import statistics
import time

from relay.core import RelayCore
from wire.chat import encode_chat
from wire.codes import Framing

N = 200_000
RUNS = 5


def room(framed_every: int = 0) -> tuple[RelayCore, list[bytes]]:
    core = RelayCore(chat_rate=1e9, chat_burst=10**9)
    tokens = [bytes([0x41]) + b"%032d" % i for i in range(10)]
    for i, token in enumerate(tokens):
        framing = Framing.OCM1 if framed_every and i % framed_every == 0 else Framing.PLAIN
        core.add_member("bench-room", token, f"user{i}", "127.0.0.1", framing, i == 0, 0.0,
                        ("127.0.0.1", 20000 + i), True)
    return core, tokens


def measure(label: str, core: RelayCore, data: bytes, addr: tuple[str, int]) -> None:
    handle = core.handle_datagram
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter_ns()
        for _ in range(N):
            handle(data, addr, 1.0)
        samples.append((time.perf_counter_ns() - start) / N)
        core.outbox.clear()
        core.events.clear()
    print(f"| {label} | {statistics.median(samples):.0f} | {min(samples):.0f} |")


def main() -> None:
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    print("command: .venv/bin/python tests/bench/bench_relay.py\n")
    print("| handle_datagram case | median ns | min ns |")
    print("| --- | --- | --- |")
    core, tokens = room()
    chat = encode_chat(b"bench-room", tokens[1], b"x" * 100)
    measure("chat, 10 plain members", core, chat, ("127.0.0.1", 20001))
    core, tokens = room(framed_every=2)
    measure("chat, 5 plain + 5 framed", core, encode_chat(b"bench-room", tokens[1], b"x" * 100),
            ("127.0.0.1", 20001))
    measure("keepalive", core, encode_chat(b"bench-room", tokens[1], b""), ("127.0.0.1", 20001))
    measure("unknown token (dropped)", core, encode_chat(b"bench-room", b"A" + b"z" * 32, b"x"),
            ("127.0.0.1", 20001))
    measure("wrong source IP (dropped)", core, chat, ("127.0.0.2", 20001))


if __name__ == "__main__":
    main()
