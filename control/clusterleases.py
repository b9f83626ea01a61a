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
* ``ocm:epoch``  a hash: ``id``, random per registry lifetime, and ``until``, the Redis
  time (ms) before which no name may be claimed.

A registry that restarts empty loses every room key at once, while the owners still
serve their rooms: they claim the names again at their next renewal (every lease/3).
So that no other node takes a live room's name meanwhile, every node remembers the
epoch id it saw; a node that finds none, or a new one, after having seen one knows the
registry restarted and pushes ``until`` to one lease from then. A claim is refused while
``until`` lies ahead or the epoch is missing, and a join of an unknown name answers
UNAVAILABLE then instead of "no such room": within one lease every live owner has
renewed its names. (A registry that is new for every node, a fresh cluster, has no
such wait.)

Placement: ``pick_node`` takes the live node with the fewest members (then the fewest
rooms, then the lowest id). Every method here is one round trip or script, raises what
the Redis client raises (the caller answers UNAVAILABLE), and keeps no state of its own
beyond the scripts it registered.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

PREFIX = "ocm:"
EPOCH = PREFIX + "epoch"
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
# The registry's epoch (see the module docstring). ARGV: the epoch id this node saw last
# ("" if none), a fresh id, the lease (ms). Returns the current id.
_EPOCH = """
local id = redis.call('HGET', KEYS[1], 'id')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold = 0
if ARGV[1] ~= '' and id ~= ARGV[1] then
  hold = now + tonumber(ARGV[3])
end
if not id then
  id = ARGV[2]
  redis.call('HSET', KEYS[1], 'id', id, 'until', hold)
elseif hold > tonumber(redis.call('HGET', KEYS[1], 'until') or 0) then
  redis.call('HSET', KEYS[1], 'until', hold)
end
return id
"""
# Whether the registry may still be missing live rooms' names: the epoch is missing, or
# its hold-off lies ahead (Redis's own clock, one for every node).
_HELD = """
local function held(key)
  local hold = redis.call('HGET', key, 'until')
  if not hold then
    return true
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) < tonumber(hold)
end
"""
# Claim a free name unless held off. KEYS: epoch, room. Returns 1 claimed, 0 taken,
# -1 held off.
_CLAIM = _HELD + """
if held(KEYS[1]) then
  return -1
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
# KEYS: epoch, room. Returns {the owner's id or "", 1 if held off else 0}.
_OWNER = _HELD + """
return {redis.call('GET', KEYS[2]) or '', held(KEYS[1]) and 1 or 0}
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


class HeldOff(Exception):
    """The registry restarted less than one lease ago (or has no epoch yet): the owners
    of live rooms may not have claimed their names again."""


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
        self._epoch = self.redis.register_script(_EPOCH)
        self._claim = self.redis.register_script(_CLAIM)
        self._owner = self.redis.register_script(_OWNER)

    async def close(self) -> None:
        await self.redis.aclose()

    # --- nodes ---------------------------------------------------------------------------
    async def claim_tag(self) -> int:
        """This node's token tag (kept across restarts); 0 if all 94 are taken."""
        return int(await self._tag(keys=[PREFIX + "tag:"], args=[self.node_id]))

    async def epoch(self, known: str) -> str:
        """The registry's epoch id; ``known`` is the one this node saw last ("" if none).
        A different one (or none) means the registry restarted: claims are held off for
        one lease from now, cluster-wide."""
        return _text(await self._epoch(keys=[EPOCH], args=[known, secrets.token_hex(8),
                                                            self.lease_ms]))

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
        """The id of the node that holds ``room``'s name, if any; ``HeldOff`` if none
        does while the registry may still miss live names (it restarted)."""
        owner, held = await self._owner(keys=[EPOCH, _room(room)])
        if owner:
            return _text(owner)
        if held:
            raise HeldOff()
        return None

    async def claim(self, room: str) -> bool:
        """Claim a free name for this node; False if some node holds it, ``HeldOff``
        while the registry may still miss live names."""
        claimed = int(await self._claim(keys=[EPOCH, _room(room)],
                                        args=[self.node_id, self.lease_ms]))
        if claimed < 0:
            raise HeldOff()
        return bool(claimed)

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
