"""What relaying through the wrong node costs (cluster mode), on loopback.

Starts a real redis-server and two nodes (A on 127.0.1.1, B on 127.0.1.2, one worker
each), opens a room on A with a host that talks to A, a member that talks to A directly
and a member that joined through B and sends to B's UDP port (relayed by B). Then, paced
at ``--rate`` messages/s, measures the one-way latency (send -> receive, same clock) of

* member -> host: direct to A, and through B;
* host -> member: delivered directly by A, and through B;

and the CPU time B's control process spends per relayed datagram. Run:
``.venv/bin/python -m tests.bench.bench_cluster [--messages N] [--rate R]``.
The figures on a shared, busy machine are rough; docs/bench/cluster.json records a run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import time

from tests.integration.harness import Server, start_server
from tests.integration.peer import Peer, join
from tests.integration.redisproc import RedisServer
from wire.codes import Framing, Operation

SECRET = "bench-cluster-secret-0123456789"
STAMP = struct.Struct("!d")


def node(redis: RedisServer, name: str, ip: str) -> Server:
    server = start_server(
        "--host", ip, "--cluster", redis.url, "--node-id", name, "--cluster-port", "0",
        "--cluster-lease", "3", "--admin-port", "-1", "--chat-rate", "1000000",
        "--chat-burst", "1000000", workers=1,
        env={"OCM_CLUSTER_SECRET": SECRET})
    return server


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_way(sender: Peer, receiver: Peer, count: int, rate: float) -> list[float]:
    """Latencies in µs of ``count`` paced messages; each is received before the next."""
    out = []
    gap = 1.0 / rate
    receiver.sock.settimeout(5.0)
    prefix = len(sender.user) + 2  # plain delivery: "user: " + message
    for _ in range(count):
        t0 = time.perf_counter()
        sender.send(STAMP.pack(t0).hex())
        data = receiver.sock.recv(65536)
        t1 = time.perf_counter()
        sent = STAMP.unpack(bytes.fromhex(data[prefix:].decode()))[0]
        out.append((t1 - sent) * 1e6)
        left = gap - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)
    return out


def describe(name: str, lat: list[float]) -> str:
    lat = sorted(lat)
    p99 = lat[int(len(lat) * 0.99) - 1]
    return (f"{name:<28} p50 {statistics.median(lat):7.1f} µs   p99 {p99:7.1f} µs   "
            f"({len(lat)} messages)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    redis = RedisServer().start()
    a = b = None
    try:
        a = node(redis, "A", "127.0.1.1")
        b = node(redis, "B", "127.0.1.2")
        time.sleep(2.0)  # both nodes see each other after a heartbeat (lease/3 = 1 s)
        host = join(a.host, a.tcp_port, Operation.CREATE, "bench", "host",
                    framing=Framing.PLAIN, bind_ip="127.0.2.1", bind="keepalive")
        assert host.details.udp_host == "127.0.1.1"  # type: ignore[attr-defined]
        direct = join(a.host, a.tcp_port, Operation.JOIN, "bench", "direct",
                      bind_ip="127.0.2.2", bind="register")
        relayed = join(b.host, b.tcp_port, Operation.JOIN, "bench", "relayed",
                       bind_ip="127.0.2.3", bind="register")
        relayed.udp_port = b.udp_port  # as the model client: to the node it asked
        relayed.send(b"")
        for peer in (host, direct, relayed):  # drain the joined notices
            peer.sock.settimeout(0.5)
            try:
                while True:
                    peer.sock.recv(65536)
            except TimeoutError:
                pass
        results = []
        for name, sender, receiver in (("member -> host, direct", direct, host),
                                       ("member -> host, via B", relayed, host),
                                       ("host -> member, direct", host, direct),
                                       ("host -> member, via B", host, relayed)):
            cpu0 = cpu_seconds(b.proc.pid)
            lat = one_way(sender, receiver, args.messages, args.rate)
            cpu = cpu_seconds(b.proc.pid) - cpu0
            results.append(describe(name, lat)
                           + f"   B control CPU {cpu / args.messages * 1e6:5.1f} µs/msg")
            for peer in (host, direct, relayed):
                peer.sock.settimeout(0.2)
                try:
                    while True:
                        peer.sock.recv(65536)
                except TimeoutError:
                    pass
        print(f"cluster relay, loopback, {args.rate:g} msg/s paced, 3-member room")
        for line in results:
            print(line)
        print("In every phase B relays exactly one datagram per message (the relayed "
              "member sends it, or receives its copy), so B's CPU per message is its cost "
              "per relayed datagram")
    finally:
        for server in (a, b):
            if server is not None:
                server.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
