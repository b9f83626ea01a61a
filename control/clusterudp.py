"""Cluster mode: relay the datagrams of clients that talk to the wrong node.

A client that ignores ``details.udp_host`` (the curriculum's reference client does) sends
its datagrams to the node it made its TCRP request to. Tokens carry the issuing node's
tag as their second byte, and that node's steering program sends such datagrams to one
extra socket of the public reuseport group, read here in the control process.

For each (client IP, token) this node opens one *flow*: a UDP socket on its advertised
IP connected to the owner's public UDP port. Over the authenticated link it first asks
the owner to accept the token from this node's IP (the owner checks that the token was
issued to the client's IP, then tells its worker, which acknowledges). A datagram is
relayed only through the flow of its own source IP and token, so a token sent from any
other IP goes through the owner's check again (and is refused). Then:

    client --datagram--> this node's public port --flow socket--> owner's public port
    client <--from the public port-- this node <--flow socket-- owner's deliveries

so every datagram the client receives comes from the port it sends to (docs/protocol.md
§2.1). Deliveries go to the source address of the member's latest accepted datagram (its
port may change behind a NAT; its IP may not).

A member that joined over TLS seals its datagrams (wire/dgmac.py). The owner's answer to
the relay request carries its datagram key (masked on the link) and its worker's current
placement nonce, but moves the member here only when asked again with one of its queued
datagrams whose tag is right (the proof; the owner's worker checks its ``Seq`` is
fresh): forged datagrams alone open no flow. This node checks every datagram of the flow
as the owner's worker would, before it acts on it: a wrong tag (``bad_mac``) or a
``Seq`` already accepted or below the 64-wide window (``replayed``) is dropped and
counted, and only a datagram whose ``Seq`` is the highest yet moves the deliveries to
its address. So a sniffed token sent from the member's IP through this node neither
speaks nor redirects. Key changes follow the owner: a rekey datagram from the owner to
the member passes through the flow and is read here with the member's key (the datagrams
sealed under the key before it still pass, so that a member that missed the rekey makes
the owner's worker send it again), and each recheck's answer carries the current
placement. The key lives in the flow only, and is never logged. Members without a key
are relayed on their token and IP, as the spec's clients expect.

Costs: one extra hop each way through a Python process, and one socket per relayed
member. The table is bounded three ways: ``MAX_FLOWS`` in all,
``MAX_FLOWS_PER_TOKEN`` and ``MAX_FLOWS_PER_IP`` (open or waiting for the owner); a
flow closes ``FLOW_GRACE_S`` after the owner would evict its silent member, and a flow in
use asks the owner again once per ``relay_recheck_s`` (a lease), closing when the owner no
longer has the member (it left, was evicted, or its room closed).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import Any, Final, Protocol

from control import clusterlink as link
from control.clusterleases import NodeInfo
from relay import steering
from runtime.sockbuf import set_buffers
from wire import dgmac
from wire.limits import MAX_DATAGRAM_BYTES

log = logging.getLogger("ocm.cluster")

Addr = tuple[str, int]
MAX_FLOWS: Final = 4096
"""Relayed members at once (one socket each: ~4,096 descriptors, a few MB of kernel
buffers at the 64 KiB asked per socket). Past it, new flows are refused (counted)."""
MAX_PENDING: Final = 64
"""Flows waiting for the owner's answer at once: a flood of made-up tokens costs at most
this many link requests in flight."""
MAX_QUEUED: Final = 16
"""Datagrams kept per flow while the owner's answer is pending (the first datagram of a
client is never lost to the set-up)."""
MAX_FLOWS_PER_TOKEN: Final = 2
"""Flows of one token, over every client IP: its holder's, and one more waiting for the
owner's verdict (a token replayed from another IP is refused there)."""
MAX_FLOWS_PER_IP: Final = 64
"""Flows of one client IP (each needs a token issued to that IP)."""
MAX_PENDING_PER_IP: Final = 4
"""Flows of one client IP waiting for the owner's answer."""
REFUSED_HOLD_S: Final = 5.0
"""After the owner refuses a (client IP, token), its datagrams are dropped this long
without asking again."""
FLOW_GRACE_S: Final = 2.0
"""A flow outlives its member's last datagram by the owner's inactivity timeout plus
this: the owner has evicted the member by then."""
FLOW_BUFFER_BYTES: Final = 64 * 1024


class Peers(Protocol):
    """What the relay asks of the cluster (``control.clusterroute.ClusterRouter``)."""

    @property
    def advertise(self) -> str:
        """This node's IP: flows are bound to it."""

    def node_by_tag(self, tag: int) -> NodeInfo | None:
        """The other live node whose tokens carry ``tag``."""

    async def request_relay(self, node: NodeInfo, token: bytes, client_ip: str,
                            proof: bytes | None = None) -> link.Accepted | bool | None:
        """Ask ``node`` to accept ``token`` from this node's IP: its ``Accepted`` (with the
        member's datagram key, unmasked, if it has one; ``moved`` false until asked with
        a ``proof``, a datagram of the member) or True once it does, False if it refuses,
        None if it did not answer."""

    def relay_idle_s(self) -> float:
        """How long a flow may stay idle before it is closed."""

    def relay_recheck_s(self) -> float:
        """How often a flow in use is checked with its owner again."""


FlowKey = tuple[str, bytes]
"""(client IP, token)."""


class Flow:
    __slots__ = ("ip", "client", "token", "node", "sock", "queue", "last_seen", "checked",
                 "base", "key", "previous", "top", "seen")

    def __init__(self, ip: str, token: bytes, node: NodeInfo, now: float) -> None:
        self.ip = ip
        self.client: Addr | None = None
        """Where deliveries go: the source of the latest accepted datagram (None before
        the first)."""
        self.token = token
        self.node = node
        self.sock: socket.socket | None = None
        self.queue: deque[tuple[bytes, Addr]] | None = deque()
        self.last_seen = now
        self.checked = now
        """When the owner last accepted the token (+inf while a check is in flight)."""
        self.base: bytes | None = None
        """The member's datagram key (None: the member has none)."""
        self.key: bytes | None = None
        """The key of its current placement (``dgmac.placement_key``)."""
        self.previous: bytes | None = None
        """The placement key before the last rekey."""
        self.top = 0
        self.seen = 0
        """The replay window (``dgmac.advance``)."""

    def follow(self, accepted: link.Accepted | bool) -> None:
        """Take the member's key and placement from the owner's answer."""
        if not isinstance(accepted, link.Accepted) or accepted.datagram_key is None:
            return
        self.base = accepted.datagram_key
        placement = accepted.placement
        self.switch(self.base if placement is None else dgmac.placement_key(self.base,
                                                                            placement))

    def switch(self, key: bytes) -> None:
        """The member's datagrams are sealed under ``key`` from now on."""
        if key != self.key:
            self.previous, self.key = self.key, key


class UdpRelay:
    """Reads the relay socket; one ``Flow`` per relayed member."""

    def __init__(self, front: socket.socket, group: socket.socket, workers: int) -> None:
        self.peers: Peers | None = None
        self.front = front
        self.group = group
        self.workers = workers
        self.flows: dict[FlowKey, Flow] = {}
        self.per_token: dict[bytes, int] = {}
        self.per_ip: dict[str, int] = {}
        self.pending = 0
        self.pending_per_ip: dict[str, int] = {}
        self.refused: dict[FlowKey, float] = {}
        """(client IP, token) the owner refused, with when to ask again."""
        self.counters = {"relayed_in": 0, "relayed_out": 0, "flows_opened": 0,
                         "flows_refused": 0, "dropped": 0, "bad_mac": 0, "replayed": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def start(self, peers: Peers, node_tag: int) -> None:
        """Steer other nodes' tokens to the relay socket and start reading it."""
        self.peers = peers
        steering.attach_program(self.group,
                                steering.cluster_steering_program(self.workers, node_tag))
        self._loop = asyncio.get_running_loop()
        self.front.setblocking(False)
        self._loop.add_reader(self.front.fileno(), self._on_front)
        self._sweeper = asyncio.ensure_future(self._sweep())

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.front.fileno())
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in list(self.flows.values()):
            self._drop(flow)

    def statistics(self) -> dict[str, int]:
        return {**self.counters, "flows": len(self.flows)}

    # --- client -> owner ---------------------------------------------------------------
    def _on_front(self) -> None:
        recv = self.front.recvfrom
        for _ in range(256):  # bounded per wake-up: other work runs between batches
            try:
                data, addr = recv(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["dropped"] += 1
                continue
            self._handle(data, addr)

    def _handle(self, data: bytes, addr: Addr) -> None:
        size = len(data)
        if size > MAX_DATAGRAM_BYTES or size < 2:
            self.counters["dropped"] += 1
            return
        room_end = 2 + data[0]
        token_end = room_end + data[1]
        if token_end > size or data[1] < 2:
            self.counters["dropped"] += 1
            return
        token = data[room_end:token_end]
        ip = addr[0]
        key = (ip, token)
        now = time.monotonic()
        peers = self.peers
        assert peers is not None
        flow = self.flows.get(key)
        if flow is not None:
            if flow.sock is not None:
                if not self._accept(flow, data, addr):
                    return
                flow.last_seen = now
                self._send_up(flow, data)
                if now - flow.checked > peers.relay_recheck_s() and self.pending < MAX_PENDING:
                    flow.checked = float("inf")
                    self.pending += 1
                    asyncio.ensure_future(self._recheck(flow))
            elif flow.queue is not None and len(flow.queue) < MAX_QUEUED:
                flow.queue.append((data, addr))  # checked once the owner has answered
            return
        if key in self.refused:
            if self.refused[key] > now:
                self.counters["flows_refused"] += 1
                return
            del self.refused[key]
        node = peers.node_by_tag(token[1])
        if node is None:
            self.counters["dropped"] += 1
            return
        if (len(self.flows) >= MAX_FLOWS or self.pending >= MAX_PENDING
                or self.per_token.get(token, 0) >= MAX_FLOWS_PER_TOKEN
                or self.per_ip.get(ip, 0) >= MAX_FLOWS_PER_IP
                or self.pending_per_ip.get(ip, 0) >= MAX_PENDING_PER_IP):
            self.counters["flows_refused"] += 1
            return
        flow = self.flows[key] = Flow(ip, token, node, now)
        _count(self.per_token, token, 1)
        _count(self.per_ip, ip, 1)
        assert flow.queue is not None
        flow.queue.append((data, addr))
        self.pending += 1
        _count(self.pending_per_ip, ip, 1)
        asyncio.ensure_future(self._open(flow))

    def _proof(self, flow: Flow) -> bytes | None:
        """The first queued datagram with a right tag and a fresh ``Seq`` (nothing is
        accepted yet: ``_accept`` does that when it is relayed)."""
        if flow.key is None:
            return None
        for data, _ in flow.queue or ():
            seq = dgmac.verify(flow.key, data)
            if seq is not None and dgmac.advance(flow.top, flow.seen, seq) is not None:
                return data
        return None

    def _accept(self, flow: Flow, data: bytes, addr: Addr) -> bool:
        """Whether to relay ``data`` from ``addr`` for ``flow``'s member; it moves the
        deliveries to ``addr`` if so (for a keyed member: if its ``Seq`` is the highest
        yet). A keyed member's datagram must carry a right tag and a fresh ``Seq``."""
        if flow.key is None:
            flow.client = addr  # the client's port may change (NAT); its IP may not
            return True
        seq = dgmac.verify(flow.key, data)
        if seq is None and flow.previous is not None:
            seq = dgmac.verify(flow.previous, data)
        if seq is None:
            self.counters["bad_mac"] += 1
            return False
        window = dgmac.advance(flow.top, flow.seen, seq)
        if window is None:
            self.counters["replayed"] += 1
            return False
        if seq > flow.top:
            flow.client = addr
        flow.top, flow.seen = window
        return True

    async def _recheck(self, flow: Flow) -> None:
        """Ask the owner again; close the flow if it no longer has the member, else take
        the member's current placement from its answer."""
        key = (flow.ip, flow.token)
        try:
            assert self.peers is not None
            accepted = await self.peers.request_relay(flow.node, flow.token, key[0])
        finally:
            self.pending -= 1
        flow.checked = time.monotonic()
        if accepted is False and self.flows.get(key) is flow:
            self.counters["flows_refused"] += 1
            self._hold(key)
            self._drop(flow)
        elif isinstance(accepted, link.Accepted) and not accepted.moved:
            self._drop(flow)  # the member moved to another node since
        elif accepted is not None:
            flow.follow(accepted)

    def _hold(self, key: FlowKey) -> None:
        """Drop the datagrams of ``key`` for ``REFUSED_HOLD_S`` without asking again."""
        if len(self.refused) < MAX_FLOWS:
            self.refused[key] = time.monotonic() + REFUSED_HOLD_S

    async def _open(self, flow: Flow) -> None:
        ip = flow.ip
        key = (ip, flow.token)
        node = flow.node
        try:
            assert self.peers is not None
            accepted = await self.peers.request_relay(node, flow.token, ip)
            if (isinstance(accepted, link.Accepted) and not accepted.moved
                    and self.flows.get(key) is flow):
                # A member with a datagram key: the owner moves it here only on one of its
                # datagrams. Without one (only forged ones came), the flow closes unheld,
                # so that the member's next datagram asks again.
                flow.follow(accepted)
                proof = self._proof(flow)
                if proof is None:
                    self.counters["flows_refused"] += 1
                    self._drop(flow)
                    return
                accepted = await self.peers.request_relay(node, flow.token, ip, proof)
                if isinstance(accepted, link.Accepted) and not accepted.moved:
                    accepted = False
        finally:
            self.pending -= 1
            _count(self.pending_per_ip, ip, -1)
        if self.flows.get(key) is not flow:
            return  # closed meanwhile (the relay stopped)
        if accepted is None or accepted is False:
            self.counters["flows_refused"] += 1
            self._hold(key)
            self._drop(flow)
            return
        flow.follow(accepted)
        flow.checked = time.monotonic()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            set_buffers(sock, FLOW_BUFFER_BYTES, FLOW_BUFFER_BYTES)
            assert self.peers is not None
            sock.bind((self.peers.advertise, 0))
            sock.connect((node.advertise, node.udp_port))
        except OSError as exc:
            sock.close()
            log.warning("cannot open a relay flow to node %s: %s", node.id, exc)
            self._drop(flow)
            return
        assert self._loop is not None
        flow.sock = sock
        self._loop.add_reader(sock.fileno(), self._on_flow, flow)
        self.counters["flows_opened"] += 1
        queue, flow.queue = flow.queue, None
        for data, addr in queue or ():
            if self._accept(flow, data, addr):
                self._send_up(flow, data)

    def _send_up(self, flow: Flow, data: bytes) -> None:
        assert flow.sock is not None
        try:
            flow.sock.send(data)
            self.counters["relayed_in"] += 1
        except OSError:  # the owner's port refused (ICMP) or the buffer is full
            self.counters["dropped"] += 1

    # --- owner -> client ---------------------------------------------------------------
    def _on_flow(self, flow: Flow) -> None:
        sock = flow.sock
        if sock is None:
            return
        for _ in range(256):
            try:
                data = sock.recv(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP from the owner: it is gone; the flow idles out
                self.counters["dropped"] += 1
                return
            if flow.base is not None and dgmac.is_rekey(data):
                placed = dgmac.decode_rekey(flow.base, data)
                if placed is not None:
                    flow.switch(placed)  # the member takes it from this same datagram
            if flow.client is None:
                self.counters["dropped"] += 1
                continue
            try:
                self.front.sendto(data, flow.client)  # from the port the client uses
                self.counters["relayed_out"] += 1
            except OSError:
                self.counters["dropped"] += 1

    # --- expiry --------------------------------------------------------------------------
    async def _sweep(self) -> None:
        """Close flows idle for longer than a member may be (the owner evicted it)."""
        assert self.peers is not None
        while True:
            idle = self.peers.relay_idle_s()
            await asyncio.sleep(min(idle / 8, FLOW_GRACE_S / 2))
            now = time.monotonic()
            for flow in [f for f in self.flows.values() if f.last_seen < now - idle]:
                self._drop(flow)
            for key in [k for k, until in self.refused.items() if until <= now]:
                del self.refused[key]

    def _drop(self, flow: Flow) -> None:
        key = (flow.ip, flow.token)
        if self.flows.get(key) is flow:
            del self.flows[key]
            _count(self.per_token, flow.token, -1)
            _count(self.per_ip, flow.ip, -1)
        if flow.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(flow.sock.fileno())
            flow.sock.close()
            flow.sock = None


def _count(counts: dict[Any, int], key: Any, delta: int) -> None:
    """Add ``delta`` to ``counts[key]``, forgetting keys that reach zero."""
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)
