"""Micro-benchmark of the compiled hot loop in process: CPU ns per chat datagram.

    .venv/bin/python tests/bench/bench_hot.py [ROUNDS] [ROOM_SIZE] [MODE] [BATCH]

MODE: mac, framed, numbered, numbered-held or numbered-e2e (default: none of these); several,
comma-separated (``framed,numbered-held``), run in the same process round by round, and
each median is also given as a ratio to the first: an A/B that the machine's drift does
not skew.

One worker with the compiled loop (relay/_hot.c) on a loopback UDP socket, 100 members in
rooms of ROOM_SIZE (default 10; half plain, half framed), each bound to its own socket.
A round: BATCH members (default 64) send one 100-byte chat each, then one
``Hot.on_readable()`` reads and relays them (recvmmsg, authentication, token bucket,
sendmmsg to the rest of the room); the round's thread CPU time (user and system, so that a
busy machine's preemption is not counted) divided by BATCH is one sample. Prints the
median over ROUNDS (default 1500).
With ``mac`` every member has a datagram key and seals each datagram (wire/dgmac.py; the
sealing is done by the clients, outside the measured time), so the sample includes the
loop's MAC verification. With ``numbered`` every member asks for ``ocm1r`` and sends each
chat as a SEND with its next id (docs/protocol.md §9: numbered, acknowledged, kept in the
room's history); ``numbered-held`` sends them as ``06`` SENDs, whose ACK rides in front of
the sender's next DATA (§9.3, held ACKs); ``framed`` makes every member ``ocm1`` (what
``numbered`` costs on top of is this); ``numbered-e2e`` does the same as ``numbered`` in
encrypted rooms (§9.7: the SEND carries a chat Message of 100 opaque bytes). ``Python
path: N`` in the output counts the datagrams the compiled loop handed to Python (0 when it
relayed every one itself).

For an A/B of two checkouts, run the same file from each (its own directory first on
``sys.path``), alternately, and compare the medians.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())

from relay import hot  # noqa: E402
from relay.ipc import WorkerSettings  # noqa: E402
from relay.worker import Worker  # noqa: E402
from wire import dgmac  # noqa: E402
from wire.codes import Framing  # noqa: E402
from wire.e2e import Kind, PublicKeys, encode_message  # noqa: E402
from wire.reliable import encode_send  # noqa: E402

BATCH = 64
MODES = ("", "mac", "framed", "numbered", "numbered-held", "numbered-e2e")


class Bench:
    """One worker with the compiled loop and its members, set up for one MODE."""

    def __init__(self, mode: str, size: int, batch: int) -> None:
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}: mac, framed, numbered, numbered-held "
                             "or numbered-e2e")
        self.mode = mode
        self.mac = mode == "mac"
        self.numbered = mode.startswith("numbered")
        self.held = mode == "numbered-held"
        e2e = mode == "numbered-e2e"
        settings = WorkerSettings(inactivity_timeout=1e6, max_send_failures=3, chat_rate=1e9,
                                  chat_burst=10**9, max_stage1_clients=100, log_level="info",
                                  log_format="text", realtime_priority=0, sendmmsg=True,
                                  hot_path="compiled")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        worker = self.worker = Worker(0, settings, sock, None, None, None)
        worker.loop = asyncio.new_event_loop()
        worker._send = lambda *messages: None  # type: ignore[method-assign]
        self.compiled = worker.hot = worker.compiled_loop(hot.extension())
        members = []
        now = time.monotonic()
        for r in range(100 // size):
            room = b"r%04d" % r
            for u in range(size):
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(("127.0.0.1", 0))
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # nobody reads
                token = b"B%02d%02d" % (r, u) + b"x" * 20
                framing = Framing.OCM1R if self.numbered else Framing.OCM1 \
                    if u % 2 or mode == "framed" else Framing.PLAIN
                key = bytes([r, u]) * 16 if self.mac else None
                assert worker.core.add_member(
                    room.decode(), token, f"user{u}", "127.0.0.1", framing, u == 0, now,
                    client.getsockname(), True, True, mac_key=key, e2e=e2e,
                    keys=PublicKeys(bytes(32), bytes(32)) if e2e else None)
                members.append((client, bytes((len(room), len(token))) + room + token, key))
        worker._flush()
        self.dest = sock.getsockname()
        self.batch = members[:batch]
        self.text = encode_message(Kind.CHAT, b"y" * 99) if e2e else b"y" * 100
        self.samples: list[float] = []

    def round(self, seq: int) -> None:
        """BATCH members send one chat each; one read relays them: one sample."""
        message = encode_send(seq, self.text, self.held) if self.numbered else self.text
        for client, head, key in self.batch:
            data = head + message
            client.sendto(dgmac.seal(key, data, seq) if key else data, self.dest)
        start = time.thread_time_ns()
        self.compiled.on_readable()
        if self.held and seq % max(1, BATCH // len(self.batch)) == 0:
            # the worker's tick (every ACK_HOLD_TICK_S there): here once per BATCH chats
            self.worker.core.release_held(time.monotonic())
        self.samples.append((time.thread_time_ns() - start) / len(self.batch))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    modes = (sys.argv[3] if len(sys.argv) > 3 else "").split(",")
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else BATCH
    if not 1 <= batch <= 100:
        raise SystemExit("BATCH: 1 to 100 chats a read")
    benches = [Bench(mode, size, batch) for mode in modes]
    for seq in range(1, rounds + 1):
        for bench in benches:  # several modes: interleaved, round by round
            bench.round(seq)
    first = statistics.median(benches[0].samples)
    for bench in benches:
        median = statistics.median(bench.samples)
        python_path = rounds * batch - bench.compiled.counters()["fast"]
        ratio = f", x {median / first:.3f} against {modes[0] or 'the default'}" \
            if len(benches) > 1 else ""
        print(f"{median:.0f} CPU ns per datagram (median of {rounds} rounds of {batch}, "
              f"rooms of {size}{', ' + bench.mode if bench.mode else ''}; Python path: "
              f"{python_path}){ratio}")


if __name__ == "__main__":
    main()
