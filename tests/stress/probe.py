"""Probe rooms: a sender chatting every 10 ms to a receiver, every arrival timestamped.

Used by chaos.py and soak.py to measure, with 10 ms resolution, when delivery stops and
resumes around a fault, and how many messages were lost. A probe room lives on whichever
worker control placed it; ``make_probes`` creates rooms until every worker has one.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from tests.integration.harness import Server
from tests.integration.peer import Peer, join
from wire.codes import Operation

H = "127.0.0.1"
INTERVAL_S = 0.01
RCVBUF_BYTES = 4 << 20


@dataclass
class Probe:
    name: str
    worker: int
    host: Peer
    sender: Peer
    sent: list[float] = field(default_factory=list)
    """Send time (monotonic) of each sequence number."""
    arrived: dict[int, float] = field(default_factory=dict)
    """First arrival time of each sequence number."""
    other: list[str] = field(default_factory=list)
    """Anything else the receiver got (notices: there should be none)."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        # A restarted worker relays its backlog in a burst: a default 208 KiB receive
        # buffer would drop some of it here, at the client, and count it as loss.
        self.host.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        self._threads = [threading.Thread(target=self._send, daemon=True),
                         threading.Thread(target=self._receive, daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, drain: float = 2.0) -> None:
        """Stop sending; keep receiving for up to ``drain`` s or until all arrived."""
        self._stop.set()
        self._threads[0].join()
        deadline = time.monotonic() + drain
        while len(self.arrived) < len(self.sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._done.set()
        self._threads[1].join()

    def _send(self) -> None:
        prefix = f"p {self.name} "
        due = time.monotonic()
        while not self._stop.is_set():
            self.sent.append(time.monotonic())
            try:
                self.sender.send(prefix + str(len(self.sent) - 1))
            except OSError:
                pass
            due += INTERVAL_S
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                due = time.monotonic()  # fell behind (a busy machine): do not burst

    def _receive(self) -> None:
        sock = self.host.sock
        sock.settimeout(0.1)
        prefix = f"{self.sender.user}: p {self.name} "
        while not self._done.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            text = data.decode(errors="replace")
            if text.startswith(prefix):
                self.arrived.setdefault(int(text[len(prefix):]), now)
            else:
                self.other.append(text)

    # --- figures ----------------------------------------------------------------------
    def lost(self) -> int:
        return len(self.sent) - len(self.arrived)

    def resume_after(self, t: float) -> float | None:
        """Seconds from ``t`` until the first arrival of a message sent after ``t``."""
        first = None
        for seq in range(len(self.sent)):
            if self.sent[seq] > t:
                first = seq
                break
        if first is None:
            return None
        times = [at for seq, at in self.arrived.items() if seq >= first]
        return min(times) - t if times else None

    def longest_gap(self, start: float, end: float) -> float:
        """Longest silence between arrivals within [start, end] (seconds)."""
        times = sorted(a for a in self.arrived.values() if start <= a <= end)
        edges = [start, *times, end]
        return max(b - a for a, b in zip(edges, edges[1:], strict=False))

    def lost_between(self, start: float, end: float) -> int:
        return sum(1 for seq, t in enumerate(self.sent)
                   if start <= t <= end and seq not in self.arrived)


def make_probes(srv: Server, workers: int, prefix: str = "probe") -> list[Probe]:
    """One probe room per worker (creating rooms until each worker has one)."""
    probes: dict[int, Probe] = {}
    spare: list[Peer] = []
    for i in range(8 * workers):
        name = f"{prefix}-{i}"
        host = join(H, srv.tcp_port, Operation.CREATE, name, "probe-host")
        worker = host.token[0] - 0x41
        if worker in probes:
            spare.append(host)
            continue
        host.send(b"")  # it only listens: prove its registered port (protocol.md §4 (j))
        sender = join(H, srv.tcp_port, Operation.JOIN, name, "probe-sender")
        host.recv_text()  # the joined notice
        probes[worker] = Probe(name, worker, host, sender)
        if len(probes) == workers:
            break
    for peer in spare:
        peer.send("/exit")
        peer.close()
    if len(probes) < workers:
        raise RuntimeError(f"could not place a probe on every worker: {sorted(probes)}")
    return [probes[w] for w in sorted(probes)]
