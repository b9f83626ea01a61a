"""Micro-benchmark of the wire codecs on the relay's hot path (``make bench-wire``).

Each row runs ``N`` calls in a ``time.perf_counter_ns`` timed loop, five times, and
prints the median (and the min/max) in nanoseconds per call. The loop's own cost is shown
as the first row; it is included in every other row, not subtracted. Rows:

* ``decode_chat`` of a 100-byte Stage 2 datagram, against the same checks written inline
  (``data[0]``, ``data[1]``, slices; what ``relay/core.py::handle_datagram`` does), once
  as a function call and once pasted into the timed loop itself, and the cost of building
  the frozen ``ChatDatagram`` that ``decode_chat`` returns;
* building a delivery: ``encode_plain_chat`` versus a precomputed ``plain_prefix`` +
  message concatenation (what the relay does per message), ``encode_framed_chat``;
* notices (``encode_plain_notice``, ``encode_framed_notice``), ``decode_stage1`` of a
  100-byte datagram, and a whole TCRP request through a fresh ``FrameReader``.

Usage: ``python tests/bench/bench_wire.py [--n N] [--runs R]``. Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wire.chat import (
    ChatDatagram,
    Notice,
    decode_chat,
    encode_chat,
    encode_framed_chat,
    encode_framed_notice,
    encode_plain_chat,
    encode_plain_notice,
    framed_prefix,
    plain_prefix,
)
from wire.codes import Framing, NoticeEvent, Operation
from wire.limits import MAX_DATAGRAM_BYTES
from wire.stage1 import decode_stage1, encode_stage1
from wire.tcrp import FrameReader, Request, RequestBody, Role, encode_request

ROOM = b"room"
TOKEN = b"A" + b"x" * 32
MESSAGE = b"m" * (100 - 2 - len(ROOM) - len(TOKEN))  # a 100-byte datagram in all
DATAGRAM = encode_chat(ROOM, TOKEN, MESSAGE)
STAGE1 = encode_stage1("alice", "m" * (100 - 1 - 5))
REQUEST = encode_request(
    Request.of(Operation.JOIN, "room", RequestBody("alice", framing=Framing.OCM1)))
JOINED = Notice(NoticeEvent.JOINED, "alice")
PLAIN_PREFIX = plain_prefix("alice")
FRAMED_PREFIX = framed_prefix("alice")
assert len(DATAGRAM) == 100 and len(STAGE1) == 100

Loop = Callable[[int], int]
"""Runs ``n`` iterations and returns the elapsed nanoseconds."""


def timed(op: Callable[[], object]) -> Loop:
    def loop(n: int) -> int:
        rng = range(n)
        start = time.perf_counter_ns()
        for _ in rng:
            op()
        return time.perf_counter_ns() - start

    return loop


def loop_empty(n: int) -> int:
    rng = range(n)
    start = time.perf_counter_ns()
    for _ in rng:
        pass
    return time.perf_counter_ns() - start


def inline_parse(data: bytes) -> tuple[bytes, bytes, bytes] | None:
    """The relay's hand-written checks, same rules as ``decode_chat``."""
    size = len(data)
    if size > MAX_DATAGRAM_BYTES or size < 2:
        return None
    room_end = 2 + data[0]
    token_end = room_end + data[1]
    if token_end > size or room_end == 2 or token_end == room_end:
        return None
    message = data[token_end:]
    try:
        message.decode()
    except UnicodeDecodeError:
        return None
    return data[2:room_end], data[room_end:token_end], message


def loop_inline_in_body(n: int) -> int:
    """``inline_parse`` pasted into the loop: no call at all, as in datagram_received."""
    data = DATAGRAM
    rng = range(n)
    start = time.perf_counter_ns()
    for _ in rng:
        size = len(data)
        if size > MAX_DATAGRAM_BYTES or size < 2:
            continue
        room_end = 2 + data[0]
        token_end = room_end + data[1]
        if token_end > size or room_end == 2 or token_end == room_end:
            continue
        token = data[room_end:token_end]  # noqa: F841 - the lookup key in the relay
        message = data[token_end:]
        try:
            message.decode()
        except UnicodeDecodeError:
            continue
    return time.perf_counter_ns() - start


def new_datagram() -> object:
    return ChatDatagram(ROOM, TOKEN, MESSAGE)


def reader_request() -> object:
    reader = FrameReader(Role.SERVER)
    reader.receive_data(REQUEST)
    return reader.next_event()


ROWS: list[tuple[str, Loop, int]] = [
    # (name, loop, share of N: slower rows run fewer iterations)
    ("empty timed loop (overhead, included below)", loop_empty, 1),
    ("decode_chat(100-byte datagram)", timed(lambda: decode_chat(DATAGRAM)), 1),
    ("inline parse, as a function call", timed(lambda: inline_parse(DATAGRAM)), 1),
    ("inline parse, in the loop body", loop_inline_in_body, 1),
    ("ChatDatagram(...) alone (frozen dataclass)", timed(new_datagram), 1),
    ('encode_plain_chat("alice", 61 B)', timed(lambda: encode_plain_chat("alice", MESSAGE)), 1),
    ("plain_prefix + message (prefix cached)", timed(lambda: PLAIN_PREFIX + MESSAGE), 1),
    ('encode_framed_chat("alice", 61 B)', timed(lambda: encode_framed_chat("alice", MESSAGE)), 1),
    ("framed_prefix + message (prefix cached)", timed(lambda: FRAMED_PREFIX + MESSAGE), 1),
    ("encode_plain_notice(joined)", timed(lambda: encode_plain_notice(JOINED)), 2),
    ("encode_framed_notice(joined)", timed(lambda: encode_framed_notice(JOINED)), 2),
    ("decode_stage1(100-byte datagram)", timed(lambda: decode_stage1(STAGE1)), 1),
    (f"FrameReader: one {len(REQUEST)}-byte request", timed(reader_request), 10),
]


def machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (
        f"{platform.machine()}, nproc={cpus}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()} ({platform.python_implementation()}){load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="iterations per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per row (median shown)")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"N = {args.n:,} iterations per run (fewer for the slow rows), {args.runs} runs\n")
    print("| operation | iterations | median ns/op | min | max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, loop, share in ROWS:
        n = max(1, args.n // share)
        loop(min(n, 10_000))  # warm up
        per_op = [loop(n) / n for _ in range(args.runs)]
        print(
            f"| {name} | {n:,} | {statistics.median(per_op):.0f} | {min(per_op):.0f} "
            f"| {max(per_op):.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
