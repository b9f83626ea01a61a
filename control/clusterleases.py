"""The cluster registry in Redis: node and room leases, placement, cluster-wide quotas.

Keys (all under ``ocm:``):

* ``ocm:node:<id>``  JSON of the node (addresses, load), set with a lease (``PX``);
  ``ocm:nodes`` is the set of ids that may be live (stale ids are removed on sight).
* ``ocm:room:<name>``  the owning node's id, claimed with ``SET NX PX`` by the owner
  and renewed by it every lease/3 (one Lua script for all its rooms); released with a
  compare-and-delete script when the room closes.
* ``ocm:tag:<byte>``  the node id whose tokens carry that byte second (never released).
* ``ocm:iprooms:<ip>``  the names of the rooms an IP created (rooms per IP).
* ``ocm:rate:<ip>:<second>``  requests from one IP in one second (``INCR`` + ``EXPIRE``).
* ``ocm:pwfail:<ip>:<room>``  wrong passwords of one IP for one room, in a fixed window.

Placement: ``pick_node`` takes the live node with the fewest members (then the fewest
rooms, then the lowest id). Every method here is one round trip or script, raises what
the Redis client raises (the caller answers UNAVAILABLE), and keeps no state of its own
beyond the scripts it registered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

PREFIX = "ocm:"
REDIS_TIMEOUT_S = 1.0
"""Per Redis command: a request waits at most this long before UNAVAILABLE."""

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _room(name: str) -> str:
    return PREFIX + "room:" + name


class Leases:
    """This node's handle on the registry: ``node_id``'s leases and the shared counts."""

    def __init__(self, url: str, node_id: str, lease_s: float) -> None:
        import redis.asyncio as aioredis  # the optional "cluster" extra

        self.node_id = node_id
        self.lease_ms = int(lease_s * 1000)
        self.redis = aioredis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                       socket_connect_timeout=REDIS_TIMEOUT_S)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self._tag = self.redis.register_script(_TAG)
        self._host = self.redis.register_script(_HOST)

    async def close(self) -> None:
        await self.redis.aclose()

    # --- nodes ---------------------------------------------------------------------------
    async def claim_tag(self) -> int:
        """This node's token tag (kept across restarts); 0 if all 94 are taken."""
        return int(await self._tag(keys=[PREFIX + "tag:"], args=[self.node_id]))

    async def announce(self, me: NodeInfo) -> None:
        """Renew this node's entry (and its tag, after a Redis restart)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(PREFIX + "node:" + self.node_id, orjson.dumps(me.to_json()),
                 px=self.lease_ms)
        pipe.sadd(PREFIX + "nodes", self.node_id)
        pipe.set(PREFIX + f"tag:{me.tag}", self.node_id, nx=True)
        await pipe.execute()

    async def nodes(self) -> dict[str, NodeInfo]:
        """Every live node (ids whose lease expired are dropped from the set)."""
        ids = sorted(_text(m) for m in await self.redis.smembers(PREFIX + "nodes"))
        values = await self.redis.mget([PREFIX + "node:" + i for i in ids]) if ids else []
        nodes: dict[str, NodeInfo] = {}
        for node_id, raw in zip(ids, values, strict=True):
            if raw is None:
                await self.redis.srem(PREFIX + "nodes", node_id)  # its lease expired
                continue
            nodes[node_id] = NodeInfo.from_json(orjson.loads(raw))
        return nodes

    async def node(self, node_id: str) -> NodeInfo | None:
        raw = await self.redis.get(PREFIX + "node:" + node_id)
        return None if raw is None else NodeInfo.from_json(orjson.loads(raw))

    async def leave(self, rooms: list[str]) -> None:
        """Release ``rooms`` and drop this node's entry."""
        for name in rooms:
            await self.release(name)
        await self.redis.delete(PREFIX + "node:" + self.node_id)
        await self.redis.srem(PREFIX + "nodes", self.node_id)

    # --- rooms ---------------------------------------------------------------------------
    async def owner(self, room: str) -> str | None:
        """The id of the node that holds ``room``'s name, if any."""
        raw = await self.redis.get(_room(room))
        return None if raw is None else _text(raw)

    async def claim(self, room: str) -> bool:
        """Claim a free name for this node; False if some node holds it."""
        return bool(await self.redis.set(_room(room), self.node_id, nx=True,
                                         px=self.lease_ms))

    async def renew(self, rooms: list[str]) -> list[str]:
        """Renew (or claim again) every name of ``rooms``; the ones another node holds."""
        if not rooms:
            return []
        lost = await self._renew(keys=[_room(n) for n in rooms],
                                 args=[self.node_id, self.lease_ms])
        return [rooms[int(index) - 1] for index in lost]

    async def release(self, room: str) -> None:
        """Free ``room``'s name if this node still holds it."""
        await self._release(keys=[_room(room)], args=[self.node_id])

    async def host(self, ip: str, room: str, limit: int) -> bool:
        """Count ``room`` among the rooms ``ip`` hosts; False if it hosts ``limit``."""
        return bool(await self._host(keys=[PREFIX + "iprooms:" + ip],
                                     args=[limit, room, PREFIX + "room:"]))

    async def unhost(self, ip: str, room: str) -> None:
        await self.redis.srem(PREFIX + "iprooms:" + ip, room)

    # --- per-IP counts -------------------------------------------------------------------
    async def count_request(self, ip: str) -> int:
        """Count one request of ``ip``; the requests it made in this second."""
        key = f"{PREFIX}rate:{ip}:{int(time.time())}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 2)
        count, _ = await pipe.execute()
        return int(count)

    async def password_failures(self, ip: str, room: str) -> tuple[int, float]:
        """Wrong passwords of ``ip`` for ``room`` in the current window, and the seconds
        the window has left."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(PREFIX + f"pwfail:{ip}:{room}")
        pipe.pttl(PREFIX + f"pwfail:{ip}:{room}")
        count, ttl_ms = await pipe.execute()
        return (0 if count is None else int(count)), max(0.0, int(ttl_ms) / 1000)

    async def password_failed(self, ip: str, room: str, window_s: float) -> None:
        """Count a wrong password: a window of ``window_s`` that starts at the first
        failure (a fixed window; one node uses a sliding one)."""
        key = PREFIX + f"pwfail:{ip}:{room}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.pexpire(key, int(window_s * 1000), nx=True)
        await pipe.execute()
