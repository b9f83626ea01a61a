"""Stage 1 traffic must not stall, or get killed, the relay worker that serves it.

Stage 1 is unauthenticated and lives on worker 0's event loop. The attack (two flood
processes, tests/stress/floodgen.py ``stage1``): 10,000 throwaway source ports on one IP
each send one keepalive, then one of them sends 600 chat datagrams every second; meanwhile
20 other IPs fill their share of the table and 10 of their addresses chat once a round.
Before the defences each message fanned out to every remembered address in one go:
worker 0 missed its pings and was killed, and a room on it lost messages. Now the per-IP
cap, the per-address rate and the fan-out budget (per loop turn and per second) keep room
chat flowing: every
probe message on both workers arrives, no worker restarts. The latency figures printed
here are in docs/bench/security.json; the test asserts no timing.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time

from tests.integration.harness import Server, start_server
from tests.integration.peer import Peer, join
from tests.stress.tools import admin_address, dropped, scrape, wait_for
from wire.codes import Operation
from wire.limits import STAGE1_MAX_CLIENTS_PER_IP
from wire.stage1 import encode_stage1

H = "127.0.0.1"
PROBE_INTERVAL_S = 0.02
FLOOD_TIMEOUT_S = 120.0
ATTACKS = (  # (floodgen arguments, what it is)
    (["--sources", "127.0.0.1", "--count", "10000", "--burst", "600", "--spread", "0"],
     "10,000 ports on one IP, 600 chats a round from one of them"),
    (["--sources", "127.0.0.2-21", "--count", str(STAGE1_MAX_CLIENTS_PER_IP), "--burst",
      "0", "--spread", "10"], "20 IPs x 64 ports, 10 of them chat once a round"),
)


def _room_on(srv: Server, worker: int) -> tuple[Peer, Peer]:
    """A host and a guest in a room owned by ``worker`` (the token's first byte names it)."""
    for i in range(20):
        host = join(H, srv.tcp_port, Operation.CREATE, f"probe{worker}-{i}", "host",
                    bind="keepalive")
        if host.token[0] == 0x41 + worker:
            guest = join(H, srv.tcp_port, Operation.JOIN, f"probe{worker}-{i}", "guest",
                         bind="keepalive")
            host.recv()  # "guest joined"
            return host, guest
        host.close()
    raise AssertionError(f"no room landed on worker {worker}")


class Probe(threading.Thread):
    """Chat from host to guest every ``PROBE_INTERVAL_S`` until stopped; latency of each."""

    def __init__(self, host: Peer, guest: Peer, limit: int | None = None) -> None:
        super().__init__(daemon=True)
        self.limit = limit
        self.host, self.guest = host, guest
        self.stop = threading.Event()
        self.sent = 0
        self.latencies_ms: list[float] = []
        self.lost: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set() and self.sent != self.limit:
            t0 = time.monotonic()
            self.host.send(f"p{self.sent}")
            try:
                text = self.guest.recv_text(timeout=15.0)
            except TimeoutError:
                self.lost.append(self.sent)
            else:
                assert text == f"host: p{self.sent}", text
                self.latencies_ms.append((time.monotonic() - t0) * 1000)
            self.sent += 1
            self.stop.wait(PROBE_INTERVAL_S)

    def summary(self) -> str:
        lat = sorted(self.latencies_ms)
        if not lat:
            return "no latency"
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (f"{len(lat)}/{self.sent} delivered, p50 {statistics.median(lat):.2f} ms, "
                f"p99 {p99:.2f} ms, max {lat[-1]:.2f} ms")


def _stage1_works(srv: Server) -> bool:
    """Two newcomers on another IP: one's chat reaches the other (after any backlog)."""
    a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    try:
        for s in (a, b):
            s.bind(("127.0.0.50", 0))
            s.sendto(encode_stage1("new", ""), (H, srv.stage1_port))
        a.sendto(encode_stage1("new", "hello after the flood"), (H, srv.stage1_port))
        b.settimeout(FLOOD_TIMEOUT_S)
        while True:
            if b.recv(4096) == encode_stage1("new", "hello after the flood"):
                return True
    finally:
        a.close()
        b.close()


def test_stage1_flood_leaves_room_chat_on_every_worker_alone() -> None:
    with start_server("--ping-interval", "0.5", "--ping-timeout", "3", "--admin-port", "0",
                      "--chat-burst", "1000", workers=2, stage1=True) as srv:
        admin = admin_address(srv.wait_log(r"admin http=").string)
        assert admin is not None
        peers = [_room_on(srv, 0), _room_on(srv, 1)]
        baseline = [Probe(*p, limit=50) for p in peers]
        for p in baseline:
            p.start()
        for p in baseline:
            p.join(60)
        floods = [subprocess.Popen(
            [sys.executable, "-m", "tests.stress.floodgen", "stage1", "--port",
             str(srv.stage1_port), "--rounds", "3", "--interval", "1", *args],
            stdout=subprocess.PIPE, text=True) for args, _ in ATTACKS]
        probes = [Probe(*p) for p in peers]
        for p in probes:
            p.start()
        results = [json.loads(f.communicate(timeout=FLOOD_TIMEOUT_S)[0]) for f in floods]
        for p in probes:
            p.stop.set()
        for p in probes:
            p.join(30)
        metrics = scrape(admin)
        print("\nStage 1 flood:", results)
        for w, (base, during) in enumerate(zip(baseline, probes, strict=True)):
            print(f"  room on worker {w}: idle {base.summary()}; under attack "
                  f"{during.summary()}")
        print("  stage1 drops:", {r: dropped(metrics, r, "stage1") for r in
                                  ("too_many_per_ip", "rate_limited", "too_many_clients")})
        for p in (*baseline, *probes):
            assert p.lost == [], f"room messages lost: {p.lost}"
            assert p.sent > 10
        for w in range(2):
            assert metrics[f'ocm_worker_restarts_total{{worker="{w}"}}'] == 0
        assert "missed pings" not in srv.log_text()
        assert _stage1_works(srv)  # Stage 1 still serves newcomers, after its backlog
        # The counters arrive once a second: wait for the defences to show in them.
        wait_for(lambda: dropped(scrape(admin), "rate_limited", "stage1") > 0, 30.0,
                 "Stage 1 rate_limited drops")
        assert dropped(scrape(admin), "too_many_per_ip", "stage1") > 5_000
        for host, guest in peers:
            host.close()
            guest.close()
