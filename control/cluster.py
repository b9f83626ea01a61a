"""Cluster mode: several ``ocm-control`` nodes act as one service over a Redis registry.

Off unless ``--cluster redis://HOST:PORT/DB`` is given; then ``ControlApp.handle`` hands
every request to ``Cluster.handle``. The relay data path never touches Redis: only TCRP
requests and the periodic lease renewal do (docs/architecture.md, "Past one machine").

Keys (all under ``ocm:``):

* ``ocm:node:<id>``  JSON of the node (addresses, load), set with a lease (``PX``);
  ``ocm:nodes`` is the set of ids that may be live (stale ids are removed on sight).
* ``ocm:room:<name>``  the owning node's id, claimed with ``SET NX PX`` by the owner
  and renewed by it every lease/3 (one Lua script for all its rooms); released with a
  compare-and-delete script when the room closes.
* ``ocm:rate:<ip>:<second>``  requests from one IP in one second, cluster-wide
  (``INCR`` + ``EXPIRE``).

Placement: the node receiving a create picks the live node with the fewest members
(itself included, ties: the lowest id) and forwards the request to it; the owner claims
the name. A join goes to the node named by the room's key. Redis unreachable means
status 9 (UNAVAILABLE) for new creates and joins; rooms already open keep relaying.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from control import clusterlink as link
from control.config import Config, ConfigError
from control.registry import MemberRecord, RegistryError
from relay.ipc import CloseRoom, Rebind
from relay.steering import worker_tag
from wire import errors
from wire.codes import Framing, Operation, Status
from wire.e2e import MemberInfo, decode_members
from wire.limits import REGISTRATION_WINDOW_S
from wire.tcrp import Details, MembersRequest, Request, RequestBody

if TYPE_CHECKING:
    from control.clusterudp import UdpRelay
    from control.server import ControlApp

log = logging.getLogger("ocm.cluster")

PREFIX = "ocm:"
REDIS_TIMEOUT_S = 1.0
"""Per Redis command: a request waits at most this long before UNAVAILABLE."""
TOKEN_RANDOM_BYTES = 24
"""As on one node (control/server.py): 192 random bits after the two tags."""
LINK_TIMEOUT_S = 5.0
"""A forwarded request's whole exchange with the owner."""

# Renew every room this node holds: PEXPIRE where the key still names us; where it is
# gone (the lease lapsed while Redis was away, or Redis restarted empty) claim it again
# with NX. Returns the 1-based indices of the keys another node now owns.
_RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif not owner then
    if not redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
      table.insert(lost, i)
    end
  else
    table.insert(lost, i)
  end
end
return lost
"""
# Delete a key only if it still names us (a released room must not free a name that
# another node claimed after our lease lapsed).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# A node's token tag: the printable byte already held by this node id, else the first
# free one. Tags are never released: a node that comes back under its id keeps its tag.
_TAG = """
local free = nil
for c = 33, 126 do
  local owner = redis.call('GET', KEYS[1] .. c)
  if owner == ARGV[1] then
    return c
  elseif not owner and not free then
    free = c
  end
end
if free then
  redis.call('SET', KEYS[1] .. free, ARGV[1])
  return free
end
return 0
"""


# Rooms hosted per IP, cluster-wide: the set of names an IP created. Names whose room key
# is gone (closed, or its node died) are dropped as they are met, so the count heals
# itself. Reads room keys it is not passed (fine on one Redis; a Redis Cluster would need
# them in one slot). Returns 1 and adds the room if under the limit, else 0.
_HOST = """
local n = 0
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if name ~= ARGV[2] and redis.call('EXISTS', ARGV[3] .. name) == 1 then
    n = n + 1
  elseif name ~= ARGV[2] then
    redis.call('SREM', KEYS[1], name)
  end
end
if n >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[2])
return 1
"""


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


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One live node as announced in the registry."""

    id: str
    advertise: str
    tcp_port: int
    udp_port: int
    link_port: int
    rooms: int
    members: int
    tag: int = 0
    """The byte this node's tokens carry second (0: none yet)."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "advertise": self.advertise, "tcp_port": self.tcp_port,
                "udp_port": self.udp_port, "link_port": self.link_port,
                "rooms": self.rooms, "members": self.members, "tag": self.tag}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> NodeInfo:
        return cls(str(obj["id"]), str(obj["advertise"]), int(obj["tcp_port"]),
                   int(obj["udp_port"]), int(obj["link_port"]), int(obj["rooms"]),
                   int(obj["members"]), int(obj.get("tag", 0)))


def pick_node(nodes: list[NodeInfo]) -> NodeInfo | None:
    """Least-loaded placement: fewest members, then fewest rooms, then lowest id."""
    return min(nodes, key=lambda n: (n.members, n.rooms, n.id), default=None)


@dataclass(slots=True, eq=False)
class RemoteMember:
    """A member admitted by another node: only its token and the open link to the owner
    (for the 2-byte registration) live here."""

    token: bytes
    writer: asyncio.StreamWriter
    is_host: bool

    def register(self, port: int) -> None:
        if not self.writer.is_closing():
            self.writer.write(link.encode_frame({"port": port}))
        self.writer.close()


class Cluster:
    """This node's view of the cluster; ``start()``, then ``handle()`` per request."""

    def __init__(self, cfg: Config, app: ControlApp, secret: bytes, tcp_port: int,
                 udp_port: int, relay: UdpRelay | None = None) -> None:
        import redis.asyncio as aioredis  # the optional "cluster" extra

        self.cfg = cfg
        self.app = app
        self.secret = secret
        self.node_id = cfg.node_id
        self.advertise = cfg.advertise or cfg.host
        self.tcp_port = tcp_port
        self.udp_port = udp_port
        self.link_port = 0
        self.lease_ms = int(cfg.cluster_lease * 1000)
        self.redis = aioredis.from_url(cfg.cluster, socket_timeout=REDIS_TIMEOUT_S,
                                       socket_connect_timeout=REDIS_TIMEOUT_S)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._tag = self.redis.register_script(_TAG)
        self._host = self.redis.register_script(_HOST)
        self.tag = 0
        """This node's token tag (0 until the registry assigned one)."""
        self.relay = relay
        app.registry.set_token_source(self.new_token)
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
        self.counters = {"forwarded": 0, "served_for_others": 0, "redis_errors": 0,
                         "link_refused": 0, "rooms_lost": 0}
        self._server: asyncio.Server | None = None
        self._beat: asyncio.Task[None] | None = None
        app.cluster = self
        app.udp_host = self.advertise

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> int:
        """Bind the internal link and announce this node (retried by the heartbeat if
        Redis is away). Returns the link port."""
        self._server = await asyncio.start_server(self._serve_link, self.cfg.host,
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
            for name in list(self.claimed):
                await self._release(keys=[PREFIX + "room:" + name], args=[self.node_id])
            await self.redis.delete(PREFIX + "node:" + self.node_id)
            await self.redis.srem(PREFIX + "nodes", self.node_id)
        except Exception as exc:  # leaving is best effort: the leases expire anyway
            log.warning("could not leave the cluster registry cleanly: %s", exc)
        if self.relay is not None:
            self.relay.close()
        await self.redis.aclose()

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
        registry = self.app.registry
        live = {name for name, room in registry.rooms.items() if room.live}
        try:
            if not self.tag:
                tag = int(await self._tag(keys=[PREFIX + "tag:"], args=[self.node_id]))
                if not tag:
                    raise RuntimeError("no free token tag: at most 94 node ids per registry")
                self.tag = tag
                if self.relay is not None:
                    try:
                        self.relay.start(tag)
                    except OSError as exc:
                        log.warning("cluster: cannot steer other nodes' tokens to the relay "
                                    "socket (%s): clients must use details.udp_host", exc)
                        self.relay = None
            for name in set(self.claimed) - set(registry.rooms) - self.pending:
                await self._release(keys=[PREFIX + "room:" + name], args=[self.node_id])
                await self.redis.srem(PREFIX + "iprooms:" + self.claimed.pop(name), name)
                self.lost.discard(name)
            names = sorted(((set(self.claimed) & live) | self.pending) - self.lost)
            if names:
                lost = await self._renew(keys=[PREFIX + "room:" + n for n in names],
                                         args=[self.node_id, self.lease_ms])
                for index in lost:
                    self._lose(names[int(index) - 1])
            me = NodeInfo(self.node_id, self.advertise, self.tcp_port, self.udp_port,
                          self.link_port, len(registry.rooms), len(registry.tokens),
                          self.tag)
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(PREFIX + "node:" + self.node_id, orjson.dumps(me.to_json()),
                     px=self.lease_ms)
            pipe.sadd(PREFIX + "nodes", self.node_id)
            pipe.set(PREFIX + f"tag:{self.tag}", self.node_id, nx=True)  # after a restart
            await pipe.execute()
            await self._refresh_nodes()
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
        room = self.app.registry.rooms.get(name)
        log.error("room name %r was claimed by another node while this one was cut off "
                  "from the registry: closing the room here", name)
        if room is not None and self.app.supervisor is not None:
            self.app.supervisor.send(room.worker, CloseRoom(name, "moved"))

    async def _refresh_nodes(self) -> None:
        ids = sorted(_text(m) for m in await self.redis.smembers(PREFIX + "nodes"))
        values = await self.redis.mget([PREFIX + "node:" + i for i in ids]) if ids else []
        nodes: dict[str, NodeInfo] = {}
        for node_id, raw in zip(ids, values, strict=True):
            if raw is None:
                await self.redis.srem(PREFIX + "nodes", node_id)  # its lease expired
                continue
            nodes[node_id] = NodeInfo.from_json(orjson.loads(raw))
        self.nodes = nodes

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

    # --- requests ----------------------------------------------------------------------
    async def handle(self, request: Request, ip: str
                     ) -> tuple[Details, MemberRecord | RemoteMember]:
        """Route one client request: rate check, then serve it here or at the owner."""
        owner = await self._owner_of(request.room, ip, request.operation is Operation.CREATE)
        if owner != self.node_id and owner not in self.nodes:
            await self._lookup_node(owner)
        if owner == self.node_id or owner not in self.nodes:
            if owner != self.node_id and request.operation is Operation.JOIN:
                raise RegistryError(Status.UNAVAILABLE, "the node that owns the room is "
                                    "not reachable")
            return await self.handle_owned(request, ip)
        self.counters["forwarded"] += 1
        try:
            return await self._forward(self.nodes[owner], request, ip)
        except NodeUnreachable:
            if request.operation is not Operation.CREATE:
                raise
            # Nothing reached the chosen node: place the room here instead.
            return await self.handle_owned(request, ip)

    async def members(self, request: MembersRequest, ip: str) -> tuple[MemberInfo, ...]:
        """Operation 3 (docs/e2e.md §2.4) in cluster mode: the cluster-wide rate check,
        then the member list from the owner of the room (this node's registry, or the
        owner's over the link). Raise ``RegistryError`` with the status to answer."""
        owner = await self._owner_of(request.room, ip, False)
        if owner == self.node_id:
            return self._local_members(request.room, request.token, ip, None)
        if owner not in self.nodes:
            await self._lookup_node(owner)
        node = self.nodes.get(owner)
        if node is None:
            raise RegistryError(Status.UNAVAILABLE, "the node that owns the room is not "
                                "reachable")
        self.counters["forwarded"] += 1
        reply, writer = await self._link_call(node, {
            "kind": "members", "room": request.room,
            "token": request.token.decode("ascii", "replace"), "ip": ip,
            "origin": self.node_id})
        writer.close()
        status = int(reply.get("status", Status.INTERNAL_ERROR))
        if status != Status.OK:
            raise RegistryError(Status(status), str(reply.get("error", "refused")))
        try:
            return decode_members(reply.get("members"))
        except errors.ProtocolError as exc:
            raise RegistryError(Status.UNAVAILABLE, f"node {owner} answered a bad member "
                                "list") from exc

    def _local_members(self, room: str, token: bytes, ip: str, relay_ip: str | None
                       ) -> tuple[MemberInfo, ...]:
        """The member list of a room of this node, for ``token`` presented from ``ip``
        (or, for a member relayed through another node, whose token is bound to that
        node's address ``relay_ip``)."""
        registry = self.app.registry
        if relay_ip is not None:
            member = registry.tokens.get(token)
            if member is not None and member.ip == relay_ip:
                ip = relay_ip
        return registry.member_for(room, token, ip).room.member_infos()

    async def _serve_members(self, obj: Any) -> dict[str, Any]:
        """The owner's side of ``members``: answer from this node's registry."""
        try:
            room, token = str(obj["room"]), str(obj["token"]).encode()
            ip, origin = str(obj["ip"]), str(obj["origin"])
        except (KeyError, TypeError):
            raise link.LinkError("members request lacks a key") from None
        if origin not in self.nodes:
            await self._lookup_node(origin)
        node = self.nodes.get(origin)
        try:
            if room in self.lost:
                raise RegistryError(Status.ROOM_NOT_FOUND, f"room {room!r} moved")
            members = self._local_members(room, token, ip,
                                          None if node is None else node.advertise)
        except RegistryError as exc:
            return {"status": int(exc.status), "error": exc.reason}
        return {"status": 0, "members": [m.to_json() for m in members]}

    async def _owner_of(self, room: str, ip: str, create: bool) -> str:
        """The cluster-wide per-IP rate check, then the node id that owns ``room`` (for a
        create: the node to place it on). Raise ``RegistryError``: RATE_LIMITED,
        ROOM_NOT_FOUND, or UNAVAILABLE when Redis does not answer."""
        try:
            if not await self._allow_request(ip):
                raise RegistryError(Status.RATE_LIMITED, "too many requests from your "
                                    "address; slow down")
            if create:
                target = pick_node(list(self.nodes.values())) if self.registry_up else None
                return target.id if target is not None else self.node_id
            raw = await self.redis.get(PREFIX + "room:" + room)
        except RegistryError:
            raise
        except Exception as exc:
            self.counters["redis_errors"] += 1
            raise RegistryError(Status.UNAVAILABLE, "the cluster registry is unreachable; "
                                "try again later") from exc
        if raw is None:
            raise RegistryError(Status.ROOM_NOT_FOUND, f"no room named {room!r}")
        return _text(raw)

    async def _lookup_node(self, node_id: str) -> None:
        """A node announced after our last heartbeat: read its entry now."""
        try:
            raw = await self.redis.get(PREFIX + "node:" + node_id)
        except Exception:
            return
        if raw is not None:
            self.nodes[node_id] = NodeInfo.from_json(orjson.loads(raw))

    async def _allow_request(self, ip: str) -> bool:
        """The per-IP request rate, counted in Redis so that it holds cluster-wide."""
        key = f"{PREFIX}rate:{ip}:{int(time.time())}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 2)
        count, _ = await pipe.execute()
        if count > self.app.cfg.conn_rate_per_ip:
            self.app.quotas.refused["conn_rate"] += 1
            return False
        return True

    async def password_blocked(self, ip: str, room: str) -> float | None:
        """Seconds until ``ip`` may try ``room`` again while it has
        ``max_password_failures`` wrong passwords in the window, else None (cluster-wide;
        UNAVAILABLE without Redis)."""
        key = f"{PREFIX}pwfail:{ip}:{room}"
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            count, ttl_ms = await pipe.execute()
        except Exception as exc:
            self.counters["redis_errors"] += 1
            raise RegistryError(Status.UNAVAILABLE, "the cluster registry is unreachable; "
                                "try again later") from exc
        if count is not None and int(count) >= self.app.cfg.max_password_failures:
            self.app.quotas.refused["password"] += 1
            return max(0.0, int(ttl_ms) / 1000)
        return None

    async def password_failed(self, ip: str, room: str) -> None:
        """Count a wrong password: a window of ``password_failure_window`` seconds that
        starts at the first failure (a fixed window; one node uses a sliding one)."""
        key = f"{PREFIX}pwfail:{ip}:{room}"
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.incr(key)
            pipe.pexpire(key, int(self.app.cfg.password_failure_window * 1000), nx=True)
            await pipe.execute()
        except Exception:
            self.counters["redis_errors"] += 1  # the answer is INVALID_PASSWORD anyway

    async def handle_owned(self, request: Request, ip: str) -> tuple[Details, MemberRecord]:
        """Serve a request for a room that lives (or will live) here."""
        if not self.lease_valid():
            raise RegistryError(Status.UNAVAILABLE, "this node lost the cluster registry; "
                                "try again later")
        if request.operation is Operation.JOIN:
            if request.room in self.lost:
                raise RegistryError(Status.ROOM_NOT_FOUND, f"room {request.room!r} moved")
            return await self.app.handle_local(request, ip)
        key = PREFIX + "room:" + request.room
        limit = self.app.cfg.max_rooms_per_ip
        hosting = True
        try:
            claimed = await self.redis.set(key, self.node_id, nx=True, px=self.lease_ms)
            if claimed:
                hosting = bool(await self._host(keys=[PREFIX + "iprooms:" + ip],
                                                args=[limit, request.room, PREFIX + "room:"]))
                if not hosting:
                    await self._release(keys=[key], args=[self.node_id])
        except Exception as exc:
            self.counters["redis_errors"] += 1
            raise RegistryError(Status.UNAVAILABLE, "the cluster registry is unreachable; "
                                "try again later") from exc
        if not claimed:
            raise RegistryError(Status.ROOM_EXISTS, f"a room named {request.room!r} exists")
        if not hosting:
            self.app.quotas.refused["rooms"] += 1
            raise RegistryError(Status.RATE_LIMITED, f"your address hosts {limit} rooms "
                                "already (across the cluster)")
        self.claimed[request.room] = ip
        self.pending.add(request.room)
        try:
            return await self.app.handle_local(request, ip)
        except BaseException:
            if request.room not in self.app.registry.rooms:
                self.claimed.pop(request.room, None)
                try:
                    await self._release(keys=[key], args=[self.node_id])
                    await self.redis.srem(PREFIX + "iprooms:" + ip, request.room)
                except Exception:
                    pass  # the lease expires on its own; the count is cleaned lazily
            raise
        finally:
            self.pending.discard(request.room)

    async def _forward(self, node: NodeInfo, request: Request, ip: str
                       ) -> tuple[Details, RemoteMember]:
        body = request.body
        forwarded = link.ForwardedRequest(int(request.operation), request.room,
                                          body.username, body.password, body.framing.value,
                                          ip, self.node_id, body.keys, body.e2e, body.resume)
        reply, writer = await self._link_call(node, forwarded.to_json())
        status = int(reply.get("status", Status.INTERNAL_ERROR))
        if status != Status.OK:
            writer.close()
            raise RegistryError(Status(status), str(reply.get("error", "refused")))
        details = Details.from_json(reply["details"])
        member = RemoteMember(reply["token"].encode(), writer, details.host)
        # Without a registration the owner closes its side after the same window.
        asyncio.get_running_loop().call_later(REGISTRATION_WINDOW_S + 1.0, writer.close)
        return details, member

    async def _link_call(self, node: NodeInfo, message: dict[str, Any]
                         ) -> tuple[Any, asyncio.StreamWriter]:
        """One authenticated request to ``node``'s link: (its reply, the open writer).
        Raise UNAVAILABLE if the node cannot be reached or does not answer."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(node.advertise, node.link_port), LINK_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise NodeUnreachable(Status.UNAVAILABLE, f"node {node.id} is not reachable"
                                  ) from exc
        try:
            hello = await asyncio.wait_for(_read_frame(reader), LINK_TIMEOUT_S)
            nonce = bytes.fromhex(hello["nonce"])
            frame = link.encode_frame(message)
            writer.write(frame + link.sign(self.secret, nonce, frame[link.LENGTH.size:]))
            reply = await asyncio.wait_for(_read_frame(reader), LINK_TIMEOUT_S)
            if not isinstance(reply, dict):
                raise link.LinkError("reply is not an object")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, link.LinkError,
                KeyError, ValueError, TypeError) as exc:
            writer.close()
            raise RegistryError(Status.UNAVAILABLE, f"node {node.id} did not answer"
                                ) from exc
        return reply, writer

    async def request_relay(self, node: NodeInfo, token: bytes, client_ip: str) -> bool:
        """Ask ``node`` to accept ``token`` (issued to ``client_ip``) from this node's IP,
        which relays for the client (control/clusterudp.py). True once its worker has it."""
        try:
            reply, writer = await self._link_call(node, {
                "kind": "relay", "token": token.decode("ascii", "replace"),
                "ip": client_ip, "origin": self.node_id})
        except RegistryError:
            return False
        writer.close()
        return bool(reply.get("status") == Status.OK)

    async def _accept_relay(self, obj: Any) -> dict[str, Any]:
        """The owner's side of ``request_relay``: rebind the member to the relaying node."""
        try:
            token, client_ip, origin = str(obj["token"]), str(obj["ip"]), str(obj["origin"])
        except (KeyError, TypeError):
            raise link.LinkError("relay request lacks a key") from None
        if origin not in self.nodes:
            await self._lookup_node(origin)
        node = self.nodes.get(origin)
        member = self.app.registry.tokens.get(token.encode())
        if node is None or member is None or not member.alive:
            return {"status": int(Status.ROOM_NOT_FOUND), "error": "no such member"}
        if member.ip not in (client_ip, node.advertise):
            return {"status": int(Status.INVALID_REQUEST), "error": "token of another IP"}
        member.ip = node.advertise  # the registry re-seeds a restarted worker with it
        supervisor = self.app.supervisor
        if supervisor is not None:
            try:
                await supervisor.call(member.room.worker,
                                      Rebind(0, token.encode(), node.advertise))
            except (ConnectionError, TimeoutError):
                pass  # a replacement worker is seeded with the new IP
        log.info("member relayed through node %s from now on", origin)
        return {"status": 0}

    async def _serve_link(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """The owner's side of one forwarded request."""
        nonce = secrets.token_bytes(link.NONCE_BYTES)
        try:
            writer.write(link.encode_frame({"nonce": nonce.hex()}))
            header = await asyncio.wait_for(reader.readexactly(link.LENGTH.size),
                                            LINK_TIMEOUT_S)
            body = await asyncio.wait_for(
                reader.readexactly(link.frame_length(header)), LINK_TIMEOUT_S)
            mac = await asyncio.wait_for(reader.readexactly(link.MAC_BYTES), LINK_TIMEOUT_S)
            if not link.verify(self.secret, nonce, body, mac):
                self.counters["link_refused"] += 1
                log.warning("cluster link: refused a request with a bad MAC from %s",
                            writer.get_extra_info("peername"))
                return
            obj = link.decode_body(body)
            if isinstance(obj, dict) and obj.get("kind") == "relay":
                writer.write(link.encode_frame(await self._accept_relay(obj)))
                await writer.drain()
                return
            if isinstance(obj, dict) and obj.get("kind") == "members":
                writer.write(link.encode_frame(await self._serve_members(obj)))
                await writer.drain()
                return
            forwarded = link.ForwardedRequest.from_json(obj)
            self.counters["served_for_others"] += 1
            await self._serve_forwarded(forwarded, reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, link.LinkError,
                ValueError) as exc:
            log.debug("cluster link: dropped a connection: %s", exc)
        except asyncio.CancelledError:
            pass  # the node is stopping: the caller sees the link close
        finally:
            writer.close()

    async def _serve_forwarded(self, forwarded: link.ForwardedRequest,
                               reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        """Serve one forwarded TCRP request and pass on the member's registration."""
        request = Request(Operation(forwarded.operation), forwarded.room,
                          forwarded.room.encode(),
                          RequestBody(forwarded.username, forwarded.password,
                                      Framing(forwarded.framing), forwarded.keys,
                                      forwarded.e2e, forwarded.resume))
        try:
            details, member = await self.handle_owned(request, forwarded.ip)
        except RegistryError as exc:
            writer.write(link.encode_frame({"status": int(exc.status), "error": exc.reason}))
            await writer.drain()
            return
        except Exception:
            log.exception("internal error serving a request forwarded by node %s",
                          forwarded.origin)
            writer.write(link.encode_frame({"status": int(Status.INTERNAL_ERROR),
                                            "error": "internal error"}))
            await writer.drain()
            return
        writer.write(link.encode_frame({"status": 0, "details": details.to_json(),
                                        "token": member.token.decode()}))
        try:
            reply = await asyncio.wait_for(_read_frame(reader), REGISTRATION_WINDOW_S)
        except (TimeoutError, asyncio.IncompleteReadError):
            return
        port = reply.get("port") if isinstance(reply, dict) else None
        if type(port) is int and 0 < port < 65536:
            self.app.register(member, port)


def cluster_route(cluster: Cluster) -> Callable[[], tuple[int, str, bytes]]:
    """The admin ``/cluster`` route: nodes, rooms per node and load, as JSON."""

    def route() -> tuple[int, str, bytes]:
        return 200, "application/json", orjson.dumps(cluster.view(),
                                                     option=orjson.OPT_INDENT_2)

    return route


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    header = await reader.readexactly(link.LENGTH.size)
    return link.decode_body(await reader.readexactly(link.frame_length(header)))
