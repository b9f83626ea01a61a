"""The authoritative registry of rooms, members and tokens (pure: no I/O, no clock).

Control is the source of truth (docs/architecture.md): a relay worker holds a copy of its own rooms
and reports changes (bound, left, closed) that control applies here. A restarted worker
is re-seeded from ``members_of(worker)``.

Worst-case memory: one ``MemberRecord`` (~500 bytes with its token and name) per member;
rooms are bounded by the per-IP quota and ``max_members`` (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from relay.ipc import AddMember
from wire import errors
from wire.codes import Framing, Status
from wire.dgmac import DatagramKey
from wire.e2e import MemberInfo, PublicKeys, SignedPrekey
from wire.limits import MAX_E2E_MEMBERS
from wire.names import username_key

Addr = tuple[str, int]


class RegistryError(Exception):
    """A request cannot be granted; ``status`` is the TCRP status to answer."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True, eq=False)
class MemberRecord:
    token: bytes
    username: str
    ip: str
    framing: Framing
    is_host: bool
    room: RoomRecord
    addr: Addr | None = None
    proven: bool = False
    """A datagram from ``addr`` reached the worker (docs/protocol.md §4 (j)); re-seeded."""
    alive: bool = True
    keys: PublicKeys | None = None
    """The member's identity keys in an encrypted room (docs/e2e.md §2.1); None otherwise."""
    datagram_key: bytes | None = None
    """Joined over TLS: the key of its datagrams' MAC trailer (wire/dgmac.py), given to
    the member in its OK details and to its worker (re-seeding included)."""
    placement: bytes | None = None
    """The nonce of its worker's current placement (wire/dgmac.py ``placement_key``):
    None for the first, set when a restarted worker is re-seeded. A cluster node that
    relays the member's datagrams is told it (control/clusterserve.py)."""
    issued_ip: str = ""
    """The IP the token was issued to. ``ip`` is where its datagrams come from, which a
    cluster node relaying for the member replaces with its own; this one never changes,
    and every check of who holds the token compares against it."""
    one_time: list[SignedPrekey] = field(default_factory=list)
    """Its one-time keys not handed out yet: each goes to one newcomer only."""
    fallback: SignedPrekey | None = None
    """Handed to every newcomer once ``one_time`` is empty."""
    claimed: tuple[MemberInfo, ...] = ()
    """What its join claimed: every other member with one prekey of each (the join reply's
    ``members``)."""

    resume: str | None = None
    """``ocm1r``: the secret that moves this membership to a new address and token."""

    def claim(self) -> MemberInfo:
        """This member with one prekey for a newcomer: a one-time key (removed, so no one
        else gets it), else the fallback key."""
        prekey = self.one_time.pop(0) if self.one_time else self.fallback
        return MemberInfo(self.username, self.is_host, self.keys, prekey)

    def info(self) -> MemberInfo:
        """This member as an entry of ``members`` (docs/e2e.md §2.2)."""
        return MemberInfo(self.username, self.is_host, self.keys)

    def command(self, command_id: int, placement: bytes | None = None) -> AddMember:
        """The ``member`` pipe command that installs this member on its worker.
        ``placement``: a fresh random nonce when a restarted worker is re-seeded (used
        only with a datagram key: the worker derives this placement's key from it)."""
        key = None if self.datagram_key is None else DatagramKey(self.datagram_key)
        return AddMember(command_id, self.room.name, self.token, self.username, self.ip,
                         self.framing, self.is_host, self.addr, self.addr is not None,
                         self.proven, self.room.e2e, self.keys, key,
                         DatagramKey(placement) if key is not None and placement is not None
                         else None)


@dataclass(slots=True, eq=False)
class RoomRecord:
    name: str
    worker: int
    password: Any
    """An opaque password hash (control/passwords.py), or None for an open room."""
    members: dict[str, MemberRecord] = field(default_factory=dict)
    """Members by ``wire.names.username_key`` (NFC): names unique up to normalisation."""
    host_ip: str = ""
    """The IP the room was created from (the per-IP room quota counts it)."""
    live: bool = False
    """False while the worker has not yet acknowledged the room (joins see no room)."""
    password_mac: bytes | None = None
    """A keyed hash of the password that last verified (control/passwords.py
    ``password_mac``): the same password is then accepted without scrypt."""
    e2e: bool = False
    """An encrypted room (docs/e2e.md): members need keys and ocm1 or ocm1r framing."""
    epoch: bytes = b""
    """An encrypted room's incarnation (random, drawn by the caller of ``create``)."""

    def member_infos(self, exclude: MemberRecord | None = None) -> tuple[MemberInfo, ...]:
        """Every member but ``exclude``, host first, then in join order (the dict's order:
        the host is added first at create)."""
        return tuple(m.info() for m in self.members.values() if m is not exclude)


class Registry:
    """Rooms by name, members by token, placement over workers."""

    def __init__(self, workers: int, new_token: Callable[[int], bytes]) -> None:
        self.workers = workers
        self._new_token = new_token
        self.rooms: dict[str, RoomRecord] = {}
        self.tokens: dict[bytes, MemberRecord] = {}
        self.load = [0] * workers
        """Members per worker: the placement key."""
        self.resumes: dict[str, MemberRecord] = {}
        """Live ``ocm1r`` members by resume secret."""

    def issue_token(self, worker: int) -> bytes:
        """A new token for a member of ``worker``, unused."""
        token = self._new_token(worker)
        while token in self.tokens:
            token = self._new_token(worker)
        return token

    def set_token_source(self, new_token: Callable[[int], bytes]) -> None:
        """Cluster mode: tokens also carry the node's tag (control/clusterroute.py)."""
        self._new_token = new_token

    # --- queries ---------------------------------------------------------------------
    def place(self, available: Iterable[int]) -> int | None:
        """The least-loaded available worker (ties: lowest index), or None."""
        best: int | None = None
        for index in available:
            if best is None or self.load[index] < self.load[best]:
                best = index
        return best

    def live_room(self, name: str) -> RoomRecord:
        room = self.rooms.get(name)
        if room is None or not room.live:
            raise RegistryError(Status.ROOM_NOT_FOUND, f"no room named {name!r}")
        return room

    def members_of(self, worker: int) -> Iterator[MemberRecord]:
        """Every member on ``worker``, each room's host first (the host creates it)."""
        for room in self.rooms.values():
            if room.worker != worker:
                continue
            members = sorted(room.members.values(), key=lambda m: not m.is_host)
            yield from members

    # --- changes -------------------------------------------------------------------------
    def create(self, name: str, username: str, ip: str, framing: Framing, worker: int,
               password: Any, e2e: bool = False,
               keys: PublicKeys | None = None, epoch: bytes = b"") -> MemberRecord:
        """Reserve a room with its host (not live until ``mark_live``). An encrypted room
        (``e2e``) needs the host's ``keys`` and ocm1 or ocm1r framing, which the TCRP
        reader has already required (``wire.tcrp.check_e2e_request``)."""
        if name in self.rooms:
            raise RegistryError(Status.ROOM_EXISTS, f"a room named {name!r} exists")
        room = self.rooms[name] = RoomRecord(name, worker, password, host_ip=ip, e2e=e2e,
                                             epoch=epoch if e2e else b"")
        return self._add(room, username, ip, framing, is_host=True, keys=keys)

    def join(self, room: RoomRecord, username: str, ip: str, framing: Framing,
             max_members: int, keys: PublicKeys | None = None) -> MemberRecord:
        """Add a member to a live room; raise ROOM_NOT_FOUND, INVALID_REQUEST (an encrypted
        room without keys or framing, docs/e2e.md §2.1), USERNAME_TAKEN or ROOM_FULL, in that
        order. An encrypted room is full at ``min(max_members, MAX_E2E_MEMBERS)``; there the
        newcomer claims one prekey of every other member (``MemberRecord.claimed``)."""
        if self.rooms.get(room.name) is not room or not room.live:
            raise RegistryError(Status.ROOM_NOT_FOUND, f"room {room.name!r} closed")
        if room.e2e and (keys is None or framing is Framing.PLAIN):
            raise RegistryError(Status.INVALID_REQUEST, str(errors.E2eNeedsKeys()))
        if username_key(username) in room.members:
            raise RegistryError(Status.USERNAME_TAKEN, f"{username!r} is in the room")
        limit = min(max_members, MAX_E2E_MEMBERS) if room.e2e else max_members
        if len(room.members) >= limit:
            raise RegistryError(Status.ROOM_FULL, f"the room has {limit} members")
        claimed = tuple(m.claim() for m in room.members.values()) if room.e2e else ()
        member = self._add(room, username, ip, framing, is_host=False, keys=keys)
        member.claimed = claimed
        return member

    def member_for(self, room_name: str, token: bytes, ip: str) -> MemberRecord:
        """The live member of ``room_name`` holding ``token`` and issued to ``ip``; raise
        ROOM_NOT_FOUND (no live room) or INVALID_REQUEST (docs/e2e.md §2.4)."""
        room = self.live_room(room_name)
        member = self.tokens.get(token)
        if member is None or member.room is not room or member.issued_ip != ip:
            raise RegistryError(Status.INVALID_REQUEST, "not a member of this room")
        return member

    def mark_live(self, room: RoomRecord) -> None:
        room.live = True

    def bind(self, token: bytes, addr: Addr, proven: bool = False) -> None:
        member = self.tokens.get(token)
        if member is not None:
            if addr[0] == member.ip:
                # the address's IP is the member's: share that string instead of keeping
                # the copy each Bound event brings over the pipe (~64 B per member)
                addr = (member.ip, addr[1])
            member.addr = addr
            member.proven = proven

    def set_resume(self, member: MemberRecord, secret: str) -> None:
        """Give ``member`` a (new) resume secret; the old one is dead."""
        if member.resume is not None:
            self.resumes.pop(member.resume, None)
        member.resume = secret
        self.resumes[secret] = member

    def resume(self, room_name: str, username: str, secret: str, ip: str,
               new_token: bytes) -> tuple[MemberRecord, bytes]:
        """Move the live membership that ``secret`` names to ``ip`` and ``new_token``;
        return it and its old token. ROOM_NOT_FOUND if no live membership of that room
        and name has that secret (it left, was evicted, or the room closed)."""
        member = self.resumes.get(secret)
        if member is None or not member.alive or member.room.name != room_name \
                or username_key(member.username) != username_key(username):
            raise RegistryError(Status.ROOM_NOT_FOUND, "nothing to resume: the membership "
                                "is gone (left, removed for inactivity, or the room closed)")
        old = member.token
        del self.tokens[old]
        member.token = new_token
        self.tokens[new_token] = member
        member.ip = member.issued_ip = ip
        member.addr = None
        member.proven = False
        return member, old

    def remove_member(self, token: bytes) -> MemberRecord | None:
        """Forget one member (left or evicted); its username is free again."""
        member = self.tokens.pop(token, None)
        if member is None:
            return None
        member.alive = False
        if member.resume is not None:
            self.resumes.pop(member.resume, None)
        room = member.room
        key = username_key(member.username)
        if room.members.get(key) is member:
            del room.members[key]
        self.load[room.worker] -= 1
        if member.is_host and self.rooms.get(room.name) is room:
            self.close_room(room.name)
        return member

    def close_room(self, name: str) -> RoomRecord | None:
        """Forget a room and every token of it; the name is free again."""
        room = self.rooms.pop(name, None)
        if room is None:
            return None
        for member in room.members.values():
            if self.tokens.pop(member.token, None) is not None:
                self.load[room.worker] -= 1
            member.alive = False
            if member.resume is not None:
                self.resumes.pop(member.resume, None)
        room.members.clear()
        return room

    def statistics(self) -> dict[str, Any]:
        return {"rooms": len(self.rooms), "members": len(self.tokens),
                "load": list(self.load)}

    def _add(self, room: RoomRecord, username: str, ip: str, framing: Framing,
             is_host: bool, keys: PublicKeys | None) -> MemberRecord:
        token = self._new_token(room.worker)
        while token in self.tokens:  # 192 random bits: never, but cheap to be sure
            token = self._new_token(room.worker)
        member = MemberRecord(token, username, ip, framing, is_host, room, issued_ip=ip)
        if room.e2e and keys is not None:  # a plain room ignores keys
            member.keys = keys.identity()
            if keys.prekeys is not None:
                member.one_time = list(keys.prekeys.one_time)
                member.fallback = keys.prekeys.fallback
        room.members[username_key(username)] = member
        self.tokens[token] = member
        self.load[room.worker] += 1
        return member
