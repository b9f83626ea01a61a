"""Cluster mode: several ``ocm-control`` nodes act as one service over a Redis registry.

Off unless ``--cluster redis://HOST:PORT/DB`` is given; then ``ControlApp``'s router is a
``ClusterRouter``. The relay data path never touches Redis: only TCRP requests and the
periodic lease renewal do (docs/architecture.md, "Past one machine").

Routing: the node receiving a create places it on the live node with the fewest members
(control/clusterleases.py, ``pick_node``) and forwards it there over the link
(control/clusterlink.py); the owner claims the name. A join goes to the node named by the
room's key. Redis unreachable means status 9 (UNAVAILABLE) for new creates and joins;
rooms already open keep relaying.

The router decides and the app serves: ``place`` answers ``Here`` (this node owns the
room, or takes the create; the name is claimed) or ``Elsewhere`` (the owner granted the
forwarded request). Requests from other nodes arrive through the link server
(control/clusterserve.py), which hands them to the app, not to this router.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from control import clusterlink as link
from control.clusterleases import HeldOff, Leases, NodeInfo, pick_node
from control.clusterserve import LinkServer, read_body
from control.clusterudp import FLOW_GRACE_S, UdpRelay
from control.config import Config, ConfigError
from control.registry import RegistryError
from control.router import HERE, Elsewhere, Here, Node, QuotaRefusal, password_refusal
from relay.steering import worker_tag
from wire import dgmac
from wire.codes import Operation, Status
from wire.e2e import MemberInfo
from wire.limits import REGISTRATION_WINDOW_S
from wire.tcrp import MembersRequest, Request

log = logging.getLogger("ocm.cluster")

TOKEN_RANDOM_BYTES = 24
"""As on one node (control/server.py): 192 random bits after the two tags."""


def load_secret(cfg: Config, environ: Mapping[str, str] | None = None) -> bytes:
    """The cluster secret from ``OCM_CLUSTER_SECRET`` or ``cluster_secret_file``.

    Raise ``ConfigError`` when cluster mode has none or one shorter than 16 bytes.
    """
    env = os.environ if environ is None else environ
    secret = env.get("OCM_CLUSTER_SECRET", "").encode()
    if not secret and cfg.cluster_secret_file:
        try:
            with open(cfg.cluster_secret_file, "rb") as fh:
                secret = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"{cfg.cluster_secret_file}: {exc.strerror}") from None
    if len(secret) < link.MIN_SECRET_BYTES:
        raise ConfigError("cluster mode needs a shared secret of at least "
                          f"{link.MIN_SECRET_BYTES} bytes: set OCM_CLUSTER_SECRET or "
                          "cluster_secret_file")
    return secret


class NodeUnreachable(RegistryError):
    """The link to another node could not be opened (nothing was sent to it)."""


def _unavailable() -> RegistryError:
    return RegistryError(Status.UNAVAILABLE, "the cluster registry is unreachable; try "
                         "again later")


def _held_off() -> RegistryError:
    return RegistryError(Status.UNAVAILABLE, "the cluster registry restarted and the "
                         "nodes are claiming their rooms again; try again in a few seconds")


def _pass_on(writer: asyncio.StreamWriter) -> Callable[[int], None]:
    """The registration of a member admitted by another node: sent on the open link."""

    def register(port: int) -> None:
        if not writer.is_closing():
            writer.write(link.encode(link.Registration(port)))
        writer.close()

    return register


class ClusterRouter:
    """This node's view of the cluster and its ``Router``: ``start()``, then requests."""

    def __init__(self, cfg: Config, secret: bytes, udp_port: int) -> None:
        self.cfg = cfg
        self.secret = secret
        self.node_id = cfg.node_id
        self.advertise = cfg.advertise or cfg.host
        self.udp_port = udp_port
        self.tcp_port = 0
        self.link_port = 0
        self.leases = Leases(cfg.cluster, cfg.node_id, cfg.cluster_lease)
        self.tag = 0
        """This node's token tag (0 until the registry assigned one)."""
        self.relay: UdpRelay | None = None
        self._node: Node | None = None
        self.nodes: dict[str, NodeInfo] = {}
        """Live nodes as of the last heartbeat (this one included)."""
        self.claimed: dict[str, str] = {}
        """Room names this node holds in the registry, with the IP that created each."""
        self.pending: set[str] = set()
        """Names claimed for a create still in progress (a password hash, the worker's
        ack): not in the registry yet, but neither released nor left to expire."""
        self.lost: set[str] = set()
        """Rooms still open here whose name another node claimed: no new members."""
        self.last_renewal = -float("inf")
        self.registry_up = False
        self.epoch = ""
        """The registry's epoch id as last seen (control/clusterleases.py)."""
        self.counters = {"forwarded": 0, "served_for_others": 0, "redis_errors": 0,
                         "link_refused": 0, "link_capped": 0, "rooms_lost": 0}
        self._server: asyncio.Server | None = None
        self._beat: asyncio.Task[None] | None = None

    @property
    def udp_host(self) -> str:
        """Sent as ``details.udp_host``: where this node's members send datagrams."""
        return self.advertise

    @property
    def node(self) -> Node:
        assert self._node is not None, "the router serves requests only once started"
        return self._node

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self, node: Node, tcp_port: int, relay: UdpRelay | None = None) -> int:
        """Bind the internal link and announce this node (retried by the heartbeat if
        Redis is away). Returns the link port."""
        self._node = node
        self.tcp_port = tcp_port
        self.relay = relay
        server = LinkServer(self.secret, node, self._origin, self.lost.__contains__,
                            self.counters)
        self._server = await asyncio.start_server(server.serve, self.cfg.host,
                                                  self.cfg.cluster_port)
        self.link_port = self._server.sockets[0].getsockname()[1]
        await self.heartbeat()
        self._beat = asyncio.ensure_future(self._heartbeats())
        return self.link_port

    async def close(self) -> None:
        """Leave the cluster: drop our node entry and release our rooms' names."""
        if self._beat is not None:
            self._beat.cancel()
        if self._server is not None:
            self._server.close()
        try:
            await self.leases.leave(list(self.claimed))
        except Exception as exc:  # leaving is best effort: the leases expire anyway
            log.warning("could not leave the cluster registry cleanly: %s", exc)
        if self.relay is not None:
            self.relay.close()
        await self.leases.close()

    def lease_valid(self, now: float | None = None) -> bool:
        """True while the last successful renewal is younger than one lease: past it,
        another node may have claimed our rooms' names, so we admit nobody."""
        now = time.monotonic() if now is None else now
        return now - self.last_renewal < self.cfg.cluster_lease

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.cluster_lease / 3)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Renew the node and room leases, release closed rooms, refresh the node table."""
        started = time.monotonic()
        registry = self.node.registry
        live = {name for name, room in registry.rooms.items() if room.live}
        try:
            if not self.tag:
                tag = await self.leases.claim_tag()
                if not tag:
                    raise RuntimeError("no free token tag: at most 94 node ids per registry")
                self.tag = tag
                if self.relay is not None:
                    try:
                        self.relay.start(self, tag)
                    except OSError as exc:
                        log.warning("cluster: cannot steer other nodes' tokens to the relay "
                                    "socket (%s): clients must use details.udp_host", exc)
                        self.relay = None
            epoch = await self.leases.epoch(self.epoch)
            if self.epoch and epoch != self.epoch:
                log.warning("cluster registry restarted (its epoch changed): every node "
                            "claims its rooms again; new rooms wait one lease")
            self.epoch = epoch
            for name in set(self.claimed) - set(registry.rooms) - self.pending:
                await self.leases.release(name)
                await self.leases.unhost(self.claimed.pop(name), name)
                self.lost.discard(name)
            names = sorted(((set(self.claimed) & live) | self.pending) - self.lost)
            for name in await self.leases.renew(names):
                self._lose(name)
            await self.leases.announce(NodeInfo(
                self.node_id, self.advertise, self.tcp_port, self.udp_port, self.link_port,
                len(registry.rooms), len(registry.tokens), self.tag))
            self.nodes = await self.leases.nodes()
        except Exception as exc:
            self.counters["redis_errors"] += 1
            if self.registry_up or self.last_renewal == -float("inf"):
                log.error("cluster registry unreachable (%s): new creates and joins get "
                          "UNAVAILABLE until it is back", exc)
            self.registry_up = False
            return
        if not self.registry_up:
            log.info("cluster registry reachable: node %s live (%d nodes)", self.node_id,
                     len(self.nodes))
        self.registry_up = True
        self.last_renewal = started

    def _lose(self, name: str) -> None:
        """Another node holds ``name`` now (our lease lapsed while we were cut off from
        the registry and it claimed the free name): close our room of that name, so that
        one name never means two rooms. Until the worker confirms, admit nobody."""
        self.lost.add(name)
        self.counters["rooms_lost"] += 1
        log.error("room name %r was claimed by another node while this one was cut off "
                  "from the registry: closing the room here", name)
        self.node.close_room(name, "moved")

    def view(self) -> dict[str, Any]:
        """The admin ``/cluster`` document: this node's view as of its last heartbeat."""
        return {"node": self.node_id, "registry": "up" if self.registry_up else "down",
                "lease_valid": self.lease_valid(), "lease_s": self.cfg.cluster_lease,
                "nodes": [n.to_json() for n in self.nodes.values()],
                "rooms_here": sorted(self.claimed), "counters": dict(self.counters),
                "udp_relay": self.relay.statistics() if self.relay is not None else None}

    def new_token(self, worker: int) -> bytes:
        """Worker tag, node tag, 32 random base64url characters (192 bits)."""
        assert self.tag, "no token before the registry assigned this node a tag"
        return (worker_tag(worker) + bytes((self.tag,))
                + secrets.token_urlsafe(TOKEN_RANDOM_BYTES).encode())

    def node_by_tag(self, tag: int) -> NodeInfo | None:
        """The other live node whose tokens carry ``tag``."""
        for node in self.nodes.values():
            if node.tag == tag and node.id != self.node_id:
                return node
        return None

    def relay_idle_s(self) -> float:
        """How long a relayed member may be silent: its owner has evicted it by then."""
        return self.node.cfg.inactivity_timeout + FLOW_GRACE_S

    def relay_recheck_s(self) -> float:
        """How often a flow in use asks its owner again whether the member is still
        there: once per lease."""
        return self.cfg.cluster_lease

    # --- the router --------------------------------------------------------------------
    async def place(self, request: Request, ip: str, secure: bool = False
                    ) -> Here | Elsewhere:
        """The cluster-wide rate check, then serve here or forward to the owner (telling
        it whether the client used TLS: ``secure``)."""
        owner = await self._owner_of(request.room, ip, request.operation is Operation.CREATE)
        if owner != self.node_id and owner not in self.nodes:
            await self._lookup_node(owner)
        if owner == self.node_id or owner not in self.nodes:
            if owner != self.node_id and request.operation is Operation.JOIN:
                raise RegistryError(Status.UNAVAILABLE, "the node that owns the room is "
                                    "not reachable")
            return await self.own(request, ip)
        self.counters["forwarded"] += 1
        try:
            return await self._forward(self.nodes[owner], request, ip, secure)
        except NodeUnreachable:
            if request.operation is not Operation.CREATE:
                raise
            # Nothing reached the chosen node: place the room here instead.
            return await self.own(request, ip)

    async def own(self, request: Request, ip: str) -> Here:
        """Take a request for a room that lives (or will live) here: a create claims the
        name and counts the room against the creator's IP, cluster-wide."""
        if not self.lease_valid():
            raise RegistryError(Status.UNAVAILABLE, "this node lost the cluster registry; "
                                "try again later")
        if request.operation is Operation.JOIN:
            if request.room in self.lost:
                raise RegistryError(Status.ROOM_NOT_FOUND, f"room {request.room!r} moved")
            return HERE
        limit = self.node.cfg.max_rooms_per_ip
        hosting = True
        try:
            claimed = await self.leases.claim(request.room)
            if claimed:
                hosting = await self.leases.host(ip, request.room, limit)
                if not hosting:
                    await self.leases.release(request.room)
        except HeldOff:
            raise _held_off() from None
        except Exception as exc:
            self.counters["redis_errors"] += 1
            raise _unavailable() from exc
        if not claimed:
            raise RegistryError(Status.ROOM_EXISTS, f"a room named {request.room!r} exists")
        if not hosting:
            raise QuotaRefusal(Status.RATE_LIMITED, f"your address hosts {limit} rooms "
                               "already (across the cluster)", "rooms")
        self.claimed[request.room] = ip
        self.pending.add(request.room)
        return HERE

    async def settle(self, request: Request, served: bool) -> None:
        """After a request placed here: a create that did not open its room gives the
        name and the creator's count back."""
        if request.operation is not Operation.CREATE:
            return
        name = request.room
        if not served and name not in self.node.registry.rooms:
            ip = self.claimed.pop(name, None)
            try:
                await self.leases.release(name)
                if ip is not None:
                    await self.leases.unhost(ip, name)
            except Exception:
                pass  # the lease expires on its own; the count is cleaned lazily
        self.pending.discard(name)

    async def members(self, request: MembersRequest, ip: str
                      ) -> Here | tuple[MemberInfo, ...]:
        """Operation 3 (docs/e2e.md §2.4): the cluster-wide rate check, then ``Here`` or
        the member list from the room's owner over the link."""
        owner = await self._owner_of(request.room, ip, False)
        if owner == self.node_id:
            return HERE
        if owner not in self.nodes:
            await self._lookup_node(owner)
        node = self.nodes.get(owner)
        if node is None:
            raise RegistryError(Status.UNAVAILABLE, "the node that owns the room is not "
                                "reachable")
        self.counters["forwarded"] += 1
        reply, writer, _ = await self._call(node, link.MembersQuery(
            request.room, request.token, ip, self.node_id), link.MemberList)
        writer.close()
        if isinstance(reply, link.Refused):
            raise RegistryError(reply.status, reply.error)
        return reply.members

    async def check_password_quota(self, ip: str, room: str) -> None:
        """Refuse while ``ip`` has ``max_password_failures`` wrong passwords for ``room``
        in the window (cluster-wide; UNAVAILABLE without Redis)."""
        try:
            failures, wait = await self.leases.password_failures(ip, room)
        except Exception as exc:
            self.counters["redis_errors"] += 1
            raise _unavailable() from exc
        if failures >= self.node.cfg.max_password_failures:
            raise QuotaRefusal(Status.RATE_LIMITED, password_refusal(wait), "password")

    async def password_failed(self, ip: str, room: str) -> None:
        try:
            await self.leases.password_failed(ip, room, self.node.cfg.password_failure_window)
        except Exception:
            self.counters["redis_errors"] += 1  # the answer is INVALID_PASSWORD anyway

    async def _owner_of(self, room: str, ip: str, create: bool) -> str:
        """The cluster-wide per-IP rate check, then the node id that owns ``room`` (for a
        create: the node to place it on). Raise ``RegistryError``: RATE_LIMITED,
        ROOM_NOT_FOUND, or UNAVAILABLE when Redis does not answer."""
        try:
            if await self.leases.count_request(ip) > self.node.cfg.conn_rate_per_ip:
                raise QuotaRefusal(Status.RATE_LIMITED, "too many requests from your "
                                   "address; slow down", "conn_rate")
            if create:
                target = pick_node(list(self.nodes.values())) if self.registry_up else None
                return target.id if target is not None else self.node_id
            owner = await self.leases.owner(room)
        except RegistryError:
            raise
        except HeldOff:
            raise _held_off() from None
        except Exception as exc:
            self.counters["redis_errors"] += 1
            raise _unavailable() from exc
        if owner is None:
            raise RegistryError(Status.ROOM_NOT_FOUND, f"no room named {room!r}")
        return owner

    async def _origin(self, node_id: str) -> NodeInfo | None:
        """The live node ``node_id``, read from the registry if it is new to us."""
        if node_id not in self.nodes:
            await self._lookup_node(node_id)
        return self.nodes.get(node_id)

    async def _lookup_node(self, node_id: str) -> None:
        """A node announced after our last heartbeat: read its entry now."""
        try:
            node = await self.leases.node(node_id)
        except Exception:
            return
        if node is not None:
            self.nodes[node_id] = node

    # --- the link, caller's side ---------------------------------------------------------
    async def _forward(self, node: NodeInfo, request: Request, ip: str,
                       secure: bool = False) -> Elsewhere:
        reply, writer, nonce = await self._call(
            node, link.Forward.of(request, ip, self.node_id, secure), link.Granted)
        if isinstance(reply, link.Refused):
            writer.close()
            raise RegistryError(reply.status, reply.error)
        reply = link.mask_granted(self.secret, nonce, reply)  # the datagram key, unmasked
        # Without a registration the owner closes its side after the same window.
        asyncio.get_running_loop().call_later(REGISTRATION_WINDOW_S + 1.0, writer.close)
        return Elsewhere(reply.details, reply.token, _pass_on(writer))

    async def _call(self, node: NodeInfo, request: link.LinkRequest, expected: type[link.R]
                    ) -> tuple[link.R | link.Refused, asyncio.StreamWriter, bytes]:
        """One authenticated request to ``node``'s link: (its reply, the open writer, the
        owner's nonce).
        Raise UNAVAILABLE if the node cannot be reached or does not answer."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(node.advertise, node.link_port), link.LINK_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise NodeUnreachable(Status.UNAVAILABLE, f"node {node.id} is not reachable"
                                  ) from exc
        try:
            hello = link.decode(await asyncio.wait_for(read_body(reader), link.LINK_TIMEOUT_S),
                                link.Hello)
            frame = link.encode(request)
            writer.write(frame + link.sign(self.secret, hello.nonce, frame[link.LENGTH.size:]))
            reply = link.decode_reply(
                await asyncio.wait_for(read_body(reader), link.LINK_TIMEOUT_S), expected)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, link.LinkError) as exc:
            writer.close()
            raise RegistryError(Status.UNAVAILABLE, f"node {node.id} did not answer"
                                ) from exc
        return reply, writer, hello.nonce

    async def request_relay(self, node: NodeInfo, token: bytes, client_ip: str,
                            proof: bytes | None = None) -> link.Accepted | bool | None:
        """Ask ``node`` to accept ``token`` (issued to ``client_ip``) from this node's IP,
        which relays for the client (control/clusterudp.py), with ``proof`` (a datagram of
        the member) if it has a datagram key. Its ``Accepted`` (the datagram key
        unmasked), False if it refuses, None if it did not answer (or answered with a key
        or nonce of the wrong size)."""
        try:
            reply, writer, nonce = await self._call(
                node, link.RelayRequest(token, client_ip, self.node_id, proof), link.Accepted)
        except RegistryError:
            return None
        writer.close()
        if not isinstance(reply, link.Accepted):
            return False
        if reply.datagram_key is None:
            return reply
        if (len(reply.datagram_key) != dgmac.KEY_BYTES
                or (reply.placement is not None
                    and len(reply.placement) != dgmac.NONCE_BYTES)):
            return None
        return link.mask_accepted(self.secret, nonce, reply)


def cluster_route(cluster: ClusterRouter) -> Callable[[], tuple[int, str, bytes]]:
    """The admin ``/cluster`` route: nodes, rooms per node and load, as JSON."""

    def route() -> tuple[int, str, bytes]:
        return 200, "application/json", orjson.dumps(cluster.view(),
                                                     option=orjson.OPT_INDENT_2)

    return route
