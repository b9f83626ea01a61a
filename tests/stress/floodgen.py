"""Bounded floods against a local OCM server, run as a separate process.

    python -m tests.stress.floodgen tcp-garbage --port P --count 10000 --sources 127.0.0.10-17
    python -m tests.stress.floodgen tcp-stall   --port P --count 1000  --sources 127.0.0.2-9
    python -m tests.stress.floodgen udp-random  --port P --count 1000000
    python -m tests.stress.floodgen udp-spoof   --port P --count 50000 --sources 127.0.0.2-9 \\
        --room NAME:TOKEN ...
    python -m tests.stress.floodgen stage1      --port P --count 10000 --sources 127.0.0.1 \\
        --burst 600 --spread 0 --rounds 3 --interval 2

Every flood is bounded in count and in time (``--max-seconds``) and stops by itself; the
destination must be a loopback address (127.0.0.0/8) and so must every source. A separate
process keeps the flood's CPU and GIL away from the test that measures the legitimate
traffic. The result is one JSON line on stdout (``tcp-stall`` first prints ``ready N``
when its connections are open, then holds them until stdin closes or ``--hold`` passes).

The UDP floods also listen on every socket they sent from and report how many datagrams
came back (``replies``): the server must never answer an unauthenticated datagram.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import select
import socket
import sys
import time
from typing import Any


def loopback(address: str) -> str:
    if not ipaddress.ip_address(address).is_loopback:
        raise SystemExit(f"floodgen: {address} is not a loopback address; refusing")
    return address


def sources(spec: str) -> list[str]:
    """``127.0.0.2-9`` or ``127.0.0.2,127.0.0.5``."""
    out: list[str] = []
    for part in spec.split(","):
        prefix, _, tail = part.rpartition(".")
        if "-" in tail:
            first, last = tail.split("-")
            out += [f"{prefix}.{i}" for i in range(int(first), int(last) + 1)]
        else:
            out.append(part)
    return [loopback(a) for a in out]


# --- TCP ---------------------------------------------------------------------------------------
async def _garbage_one(host: str, port: int, src: str, rng: random.Random,
                       stats: dict[str, int]) -> None:
    try:
        _, writer = await asyncio.open_connection(host, port, local_addr=(src, 0))
    except OSError as exc:
        stats[f"connect_{type(exc).__name__}"] = stats.get(
            f"connect_{type(exc).__name__}", 0) + 1
        return
    kind = rng.randrange(4)
    if kind == 1:  # random bytes
        writer.write(rng.randbytes(rng.randint(1, 200)))
    elif kind == 2:  # a header that promises more than it sends
        writer.write(bytes((rng.randint(0, 255), rng.randint(0, 3), 0))
                     + rng.randint(0, 5000).to_bytes(29, "big") + rng.randbytes(8))
    if kind == 3:  # reset instead of a clean close
        writer.transport.abort()
    else:
        writer.close()
    stats["done"] += 1


async def tcp_garbage(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    srcs = sources(args.sources)
    stats = {"done": 0}
    sem = asyncio.Semaphore(args.concurrency)
    start = time.monotonic()
    deadline = start + args.max_seconds

    async def one(i: int) -> None:
        async with sem:
            if time.monotonic() < deadline:
                await _garbage_one(args.host, args.port, srcs[i % len(srcs)], rng, stats)

    await asyncio.gather(*(one(i) for i in range(args.count)))
    wall = time.monotonic() - start
    return {"flood": "tcp-garbage", "count": args.count, "wall_s": round(wall, 3),
            "per_s": round(stats["done"] / wall), **stats}


async def tcp_stall(args: argparse.Namespace) -> dict[str, Any]:
    srcs = sources(args.sources)
    writers = []
    failed = 0
    start = time.monotonic()
    for i in range(args.count):
        try:
            _, writer = await asyncio.open_connection(args.host, args.port,
                                                      local_addr=(srcs[i % len(srcs)], 0))
        except OSError:
            failed += 1
            continue
        if i % 2:  # half send a partial header, half send nothing at all
            writer.write(b"\x05\x01\x00")
        writers.append(writer)
    print(f"ready {len(writers)}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = loop.create_future()
    fd = sys.stdin.fileno()

    def on_stdin() -> None:
        if not os.read(fd, 4096) and not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(fd, on_stdin)
    try:
        await asyncio.wait_for(stdin_closed, args.hold)
    except TimeoutError:
        pass
    loop.remove_reader(fd)
    # How many did the server close on us meanwhile (its request deadline)?
    closed = sum(1 for w in writers if w.transport.is_closing() or _peer_closed(w))
    for writer in writers:
        writer.transport.abort()
    return {"flood": "tcp-stall", "count": args.count, "held": len(writers),
            "connect_failed": failed, "closed_by_server": closed,
            "held_s": round(time.monotonic() - start, 3)}


def _peer_closed(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


# --- UDP ---------------------------------------------------------------------------------------
def _udp_sockets(srcs: list[str], per_source: int) -> list[socket.socket]:
    socks = []
    for src in srcs:
        for _ in range(per_source):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            s.setblocking(False)
            socks.append(s)
    return socks


def _blast(socks: list[socket.socket], pool: list[bytes], dest: tuple[str, int], count: int,
           max_seconds: float) -> tuple[int, int, float]:
    """Send ``count`` datagrams from ``pool`` round robin over ``socks`` as fast as the
    kernel takes them. Returns (sent, refused by the local kernel, seconds)."""
    sent = refused = 0
    n_pool, n_socks = len(pool), len(socks)
    sendto = [s.sendto for s in socks]
    start = time.monotonic()
    i = 0
    while i < count:
        try:
            sendto[i % n_socks](pool[i % n_pool], dest)
            sent += 1
        except BlockingIOError:  # our send buffer is full: let the kernel drain it
            select.select([], [socks[i % n_socks]], [], 0.01)
            refused += 1
        except OSError:  # e.g. EMSGSIZE for an oversized one
            refused += 1
        i += 1
        if not i % 8192 and time.monotonic() - start > max_seconds:
            break
    return sent, refused, time.monotonic() - start


def _replies(socks: list[socket.socket], drain: float) -> int:
    """Datagrams that arrived on the flooding sockets, waiting ``drain`` seconds."""
    got = 0
    deadline = time.monotonic() + drain
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        ready, _, _ = select.select(socks, [], [], left)
        for s in ready:
            try:
                while True:
                    s.recv(65536)
                    got += 1
            except BlockingIOError:
                pass


def random_pool(rng: random.Random, n: int) -> list[bytes]:
    """Random datagrams of every shape: empty, short, chat-shaped, around 4096 bytes."""
    pool = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            data = rng.randbytes(rng.randint(0, 3))
        elif kind == 1:
            data = rng.randbytes(rng.randint(4, 200))
        elif kind == 2:  # chat-shaped, random tag (so the steering program spreads them)
            room, token = rng.randbytes(rng.randint(1, 20)), rng.randbytes(rng.randint(1, 40))
            data = bytes((len(room), len(token))) + room + token + rng.randbytes(50)
        elif kind == 3:
            data = bytes((rng.randint(0, 255), rng.randint(0, 255))) + rng.randbytes(100)
        elif kind == 4:
            data = rng.randbytes(rng.choice((4095, 4096, 4097, 4200)))
        else:
            data = rng.randbytes(rng.randint(200, 1400))
        pool.append(data)
    return pool


def udp_random(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    socks = _udp_sockets(sources(args.sources), 4)
    return {"flood": "udp-random", **_flood(socks, random_pool(rng, 4096), args)}


def _flood(socks: list[socket.socket], pool: list[bytes], args: argparse.Namespace
           ) -> dict[str, Any]:
    """Send ``pool`` round-robin from ``socks``, count the replies, close the sockets."""
    sent, refused, wall = _blast(socks, pool, (args.host, args.port), args.count,
                                 args.max_seconds)
    replies = _replies(socks, args.drain)
    for s in socks:
        s.close()
    return {"count": args.count, "sent": sent, "refused": refused, "wall_s": round(wall, 3),
            "per_s": round(sent / wall) if wall else None, "replies": replies}


def udp_spoof(args: argparse.Namespace) -> dict[str, Any]:
    """Well-formed datagrams from many source IPs: forged tokens (valid worker tags),
    real room names, real tokens (sent from IPs they were not issued to), /exit,
    keepalives and chat."""
    rng = random.Random(args.seed)
    srcs = sources(args.sources)
    socks = _udp_sockets(srcs, 2)
    rooms = [r.split(":", 1) for r in args.room]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    pool = []
    for i in range(4096):
        name, real = rooms[i % len(rooms)] if rooms else ("room", "")
        room = name.encode()
        kind = i % 4
        if kind == 0 or not real:  # forged token, real room name
            token = bytes((0x41 + i % 2,)) + bytes(rng.choice(alphabet) for _ in range(32))
        elif kind == 1:  # real token (stolen), wrong source IP
            token = real.encode()
        elif kind == 2:  # real token, another room's name
            token = real.encode()
            room = rooms[(i + 1) % len(rooms)][0].encode()
        else:  # real token with one character changed
            token = real.encode()
            at = rng.randrange(1, len(token))
            token = token[:at] + bytes((rng.choice(alphabet),)) + token[at + 1:]
        message = (b"", b"/exit", b"spoofed chat", b"x" * 3000)[i // 4 % 4]
        pool.append(bytes((len(room), len(token))) + room + token + message)
    return {"flood": "udp-spoof", "sources": len(srcs), **_flood(socks, pool, args)}


def stage1(args: argparse.Namespace) -> dict[str, Any]:
    """The Stage 1 fan-out attack: ``--count`` throwaway source ports per source IP each
    send one keepalive (``\\x01z``: remembered, then closed), then every ``--interval``
    seconds, ``--rounds`` times, the first address sends ``--burst`` chat datagrams
    (``\\x01Xy``) and ``--spread`` other remembered addresses one each."""
    dest = (args.host, args.port)
    srcs = sources(args.sources)
    per_ip = -(-args.spread // len(srcs))  # spread senders kept open per source IP
    keep: list[socket.socket] = []
    registered = 0
    start = time.monotonic()
    for n, src in enumerate(srcs):
        for i in range(args.count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((src, 0))
            s.sendto(b"\x01z", dest)
            registered += 1
            if (n == 0 and i == 0) or (i < per_ip and len(keep) < 1 + args.spread):
                s.setblocking(False)
                keep.append(s)  # keep[0] sends the bursts, the others one chat a round
            else:
                s.close()
    chats = 0
    for r in range(args.rounds):
        if r:
            time.sleep(args.interval)
        for _ in range(args.burst):
            keep[0].sendto(b"\x01Xy", dest)
            chats += 1
        for s in keep[1:]:
            s.sendto(b"\x01Xy", dest)
            chats += 1
    wall = time.monotonic() - start
    replies = _replies(keep, args.drain)
    for s in keep:
        s.close()
    return {"flood": "stage1", "registered": registered, "chats": chats,
            "wall_s": round(wall, 3), "replies_to_senders": replies}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress.floodgen",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("flood", choices=("tcp-garbage", "tcp-stall", "udp-random",
                                          "udp-spoof", "stage1"))
    parser.add_argument("--host", default="127.0.0.1", type=loopback)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--sources", default="127.0.0.10-17")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--hold", type=float, default=60.0,
                        help="tcp-stall: longest time to hold the connections")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--drain", type=float, default=0.5,
                        help="UDP: seconds to listen for replies after the flood")
    parser.add_argument("--room", action="append", default=[], metavar="NAME:TOKEN")
    parser.add_argument("--burst", type=int, default=600,
                        help="stage1: chat datagrams from the first address per round")
    parser.add_argument("--spread", type=int, default=0,
                        help="stage1: other addresses that send one chat each per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=2.0,
                        help="stage1: seconds between rounds")
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    args = parser.parse_args(argv)
    if args.count > 2_000_000:
        parser.error("--count is capped at 2,000,000")
    if args.flood == "tcp-garbage":
        result = asyncio.run(tcp_garbage(args))
    elif args.flood == "tcp-stall":
        result = asyncio.run(tcp_stall(args))
    elif args.flood == "udp-random":
        result = udp_random(args)
    elif args.flood == "stage1":
        result = stage1(args)
    else:
        result = udp_spoof(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
