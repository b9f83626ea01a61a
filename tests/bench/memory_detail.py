"""Where a member's bytes go: ``tracemalloc`` over the worker's ``RelayCore`` and control's
``Registry``, in this process, by source line (``python -m tests.bench.memory_detail``).

Members join as ``make bench-memory`` joins them (10 a room, framed, the host first) and
each is bound by a first datagram. As in the real processes, every string arrives as its
own object: the IP and token a worker gets over the pipe, and the IP of the address
``recvfrom`` returns, are copies, not the objects the registry holds. The figures are
Python's allocations only; ``make bench-memory`` measures the processes (USS), which adds
the allocator's slack.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from control.registry import Registry
from relay.core import RelayCore
from wire.codes import Framing

USERS = 10


def _ip(i: int) -> str:
    """A distinct string object per call, as unpickling or ``recvfrom`` makes one."""
    return "".join(("127.", str(100 + i // 64000), ".", str(i % 64000 // 250), ".",
                    str(i % 250 + 1)))


def _copy(token: bytes) -> bytes:
    """A new bytes object (``bytes(b)`` of a ``bytes`` would be ``b`` itself)."""
    return bytes(bytearray(token))


def worker_core(rooms: int, tokens: list[bytes]) -> RelayCore:
    core = RelayCore()
    for r in range(rooms):
        name = f"lg0a1b2c-{r}"
        for u in range(USERS):
            i = r * USERS + u
            core.add_member(name, _copy(tokens[i]), f"u{u}", _ip(i), Framing.OCM1, u == 0,
                            0.0)
    for i, token in enumerate(tokens):
        room = core.tokens[token].room.name_raw
        first = bytes((len(room), len(token))) + room + token
        core.handle_datagram(first, (_ip(i), 40000 + i % 20000), 1.0)
    core.outbox.clear()
    core.events.clear()
    return core


def control_registry(rooms: int, tokens: list[bytes]) -> Registry:
    issued = iter(tokens)
    reg = Registry(1, lambda worker: _copy(next(issued)))
    for r in range(rooms):
        host = reg.create(f"lg0a1b2c-{r}", "u0", _ip(r * USERS), Framing.OCM1, 0, None)
        reg.mark_live(host.room)
        for u in range(1, USERS):
            reg.join(host.room, f"u{u}", _ip(r * USERS + u), Framing.OCM1, 1000)
    for i, token in enumerate(tokens):
        reg.bind(token, (_ip(i), 40000 + i % 20000), proven=True)
    return reg


def measure(label: str, build: Callable[[], Any], members: int, top: int) -> None:
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    kept = build()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = [s for s in after.compare_to(before, "lineno") if s.size_diff > 0
             and not s.traceback[0].filename.endswith("tracemalloc.py")]
    total = sum(s.size_diff for s in stats)
    print(f"== {label}: {total / members:,.0f} B per member ({members:,} members); lines "
          "of memory_detail.py are objects it keeps that its caller made: _ip = IP strings, "
          "_copy = tokens, the add/join lines = usernames, the datagram/bind lines = "
          "address tuples and ports")
    for s in stats[:top]:
        frame = s.traceback[0]
        where = frame.filename.rsplit("/", 2)[-2:]
        print(f"  {s.size_diff / members:7.1f} B {s.count_diff / members:5.2f} blocks  "
              f"{'/'.join(where)}:{frame.lineno}")
    del kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.memory_detail",
                                description=__doc__)
    p.add_argument("--rooms", type=int, default=10_000)
    p.add_argument("--top", type=int, default=15, help="source lines shown [15]")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    members = args.rooms * USERS
    tokens = [secrets.token_urlsafe(24).encode() for _ in range(members)]  # 32 B, as OCM's
    measure("worker: relay/core.py RelayCore", lambda: worker_core(args.rooms, tokens),
            members, args.top)
    measure("control: control/registry.py Registry",
            lambda: control_registry(args.rooms, tokens), members, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
