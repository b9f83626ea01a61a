"""The relay worker's sans-IO core: datagrams in, deliveries out (docs/protocol.md §2, §3).

Shape (aioquic ``QuicConnection``): the adapter calls ``handle_datagram(data, addr, now)``
for every datagram and sends what it returns, calls ``handle_timer(now)`` at
``next_deadline()``, applies control commands (``add_member``, ``register``, ...), and
after each call flushes ``outbox`` (notices: ``(payload, addr)`` pairs) and ``events``
(the typed pipe events ``Bound``, ``Left``, ``Closed`` for control, see relay/ipc.py).
Time is always an argument.

Hot path: a chat datagram does not allocate a list of sends. ``handle_datagram`` returns
a ``Fanout`` (a NamedTuple: ``plain, plain_addrs, framed, framed_addrs, sender, room``)
and the adapter loops over the room's precomputed address lists, skipping ``sender`` by
identity, or hands them to one batched ``sendmmsg`` that the adapter caches itself and
rebuilds when ``room.generation`` changes. The lists are rebuilt (and the generation
bumped) on every membership change, never per datagram.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable
from typing import Final, NamedTuple

from relay.history import History, HistoryBudget
from relay.ipc import Bound, Closed, Counters, Left
from wire import dgmac
from wire.chat import (
    Notice,
    encode_framed_notice,
    encode_plain_notice,
    framed_prefix,
    is_exit,
    plain_prefix,
)
from wire.codes import EVICTION_REASONS, Framing, NoticeEvent, Reason
from wire.e2e import Kind, PublicKeys
from wire.errors import ProtocolError
from wire.limits import (
    ACK_HOLD_S,
    ADDRESSED_BURST,
    ADDRESSED_RATE,
    DEFAULT_CHAT_BURST,
    DEFAULT_CHAT_RATE,
    DEFAULT_INACTIVITY_TIMEOUT_S,
    DEFAULT_MAX_SEND_FAILURES,
    EXIT_MATCH_MAX_BYTES,
    MAX_DATAGRAM_BYTES,
    MAX_DELIVERY_BYTES,
    NACK_BURST,
    NACK_MAX_RESENDS,
    NACK_RATE,
    STAGE1_CHAT_BURST,
    STAGE1_CHAT_RATE,
    STAGE1_MAX_CLIENTS,
    STAGE1_MAX_CLIENTS_PER_IP,
    UNPROVEN_MAX_DELIVERIES,
)
from wire.reliable import CARRIED, DATA_HEADER, Down, Up, decode_nack, encode_ack, encode_sync

Addr = tuple[str, int]
Send = tuple[bytes, Addr]


class Fanout(NamedTuple):
    """One accepted chat datagram to relay: each payload (None when no member of that
    delivery format other than the sender is bound) goes to every address of its list
    except ``sender``. The lists are the room's own (read-only for the adapter)."""

    plain: bytes | None
    plain_addrs: list[Addr]
    framed: bytes | None
    framed_addrs: list[Addr]
    sender: Addr
    room: Room


_new_fanout: Final = tuple.__new__

_CHAT: Final = int(Kind.CHAT)
CHAT_KIND: Final = _CHAT
"""The kind byte of an encrypted room's chat Message (for the compiled loop)."""
HOT_MEMBER_SLOTS: Final = ("addr", "trial", "room", "plain_prefix", "framed_prefix", "framed",
                           "allowance", "stamp", "last_seen", "mac_key", "mac_top", "mac_seen",
                           "rel")
"""The compiled loop's contract (relay/_hot.c, held to it by tests/unit/test_hot_contract.py):
the ``Member`` slots it reads, resolved to offsets once."""
HOT_MEMBER_WRITES: Final = ("allowance", "stamp", "last_seen", "mac_top", "mac_seen")
"""The only ``Member`` slots it writes: what ``_chat``, the refresh and the replay window of
a sealed datagram (``_unseal``, for a ``Seq`` above the window only) write."""
HOT_ROOM_SLOTS: Final = ("name", "name_raw", "e2e", "trial", "generation", "plain_addrs",
                         "framed_addrs", "reliable_addrs", "reliable", "history")
"""The ``Room`` slots it reads (it writes none); the address lists (and ``reliable``, the
members of ``reliable_addrs``) only to build a room's ``Route`` when ``generation`` has
changed."""
HOT_HISTORY_SLOTS: Final = ("epoch", "next_seq", "now", "entries", "bytes", "budget")
"""The ``History`` slots of a numbered room it reads: it numbers a chat as
``History.number`` does (``HOT_HISTORY_WRITES``) and, once the chat's deliveries are sent,
keeps it as ``History.keep`` does (the ``entries`` deque's ``HOT_DEQUE_METHODS``, the bytes
of the history and of its ``HistoryBudget``), calling ``History.keep`` itself (its only
call of the history) where the worker's budget or a limit of nothing calls for more, or
where the history holds no deque yet (``entries`` is ``()``); or it undoes the number."""
HOT_HISTORY_WRITES: Final = ("next_seq", "now", "bytes")
HOT_BUDGET_SLOTS: Final = ("max_messages", "max_bytes", "worker_bytes", "used")
"""The ``HistoryBudget`` slots it reads; it writes ``used`` only."""
HOT_BUDGET_WRITES: Final = ("used",)
HOT_DEQUE_METHODS: Final = ("append", "popleft")
HOT_RELIABLE_SLOTS: Final = ("top", "top_seq", "held", "held_at")
"""The ``Reliable`` slots of an ``ocm1r`` member it reads and writes: the SEND with the
next id is taken, acknowledged (or its acknowledgement held) and recorded as
``_handle_reliable`` does; a held acknowledgement rides on the member's next DATA, as
``carry`` does."""
HOT_HISTORY_METHODS: Final = ("keep",)
HOT_CORE_ATTRIBUTES: Final = ("tokens", "failing", "chat_rate", "chat_burst", "received",
                              "relayed", "events", "outbox", "held", "held_times",
                              "handle_send_failure", "handle_send_success")
"""What it uses of ``RelayCore``: reads ``tokens``, ``failing``, the chat rate and burst and
whether ``events``/``outbox`` are empty; adds what it relayed to ``received`` and
``relayed``; appends to ``held`` and ``held_times`` (lists for the core's life); reports
sends through the two methods (the one rule for failure streaks)."""
HOT_CALLBACKS: Final = ("slow", "warn", "clock", "after")
"""The adapter's callbacks it calls: the Python path for a datagram, a log line for a
socket error, the time, and the flush of events and notices."""
_NACK_EMISSION: Final = 1.0 / NACK_RATE
_NACK_AHEAD: Final = (NACK_BURST - 1) / NACK_RATE + 1e-6
"""How far ahead of now the NACK bucket's full-again time may be for one more NACK (and
1 µs for the sum of float steps: ten steps of 0.1 s are 0.9000000000000001)."""
_ENVELOPE: Final = int(Kind.ENVELOPE)
_KEY_REQUEST: Final = int(Kind.KEY_REQUEST)
_LEAVE: Final = int(Kind.LEAVE)
_SEND: Final = int(Up.SEND)
_SEND_HELD: Final = int(Up.SEND_HELD)
_NACK: Final = int(Up.NACK)
_E2E_NACK: Final = int(Up.E2E_NACK)
_DIRECT_BYTE: Final = bytes((Down.DIRECT,))
DATA_HEADER_BYTES: Final = DATA_HEADER.size
_pack_carried: Final = CARRIED.pack
_CARRIED: Final = int(Down.CARRIED)

_FULL: Final = float("inf")
"""A new member's allowance (capped at the burst on its first chat): one shared float."""

DEADLINE_TICK_S: Final = 0.25
"""Inactivity deadlines are kept in buckets this wide: a silent member is evicted at most
this late. A power of two, so that ``key * DEADLINE_TICK_S`` is exact."""
DEADLINE_COMPACT_SLACK: Final = 1024
"""Stale deadline entries (of departed members, 8 B each) tolerated beyond the number of
live members before the buckets are rebuilt: at most 2 x members + 1,024 entries."""

DROP_REASONS: Final = (
    "too_large",  # over 4096 bytes
    "malformed",  # lengths 0 or past the end
    "bad_utf8",  # message not UTF-8
    "unknown_token",  # no live member has that token
    "wrong_room",  # the token belongs to another room
    "wrong_ip",  # the source IP is not the IP the token was issued to
    "rate_limited",  # over the member's chat rate (token bucket)
    "too_many_clients",  # Stage 1: the address table is full
    "too_many_per_ip",  # Stage 1: the sender's IP has its share of the table
    "unproven",  # outbound: a delivery withheld from a registered address never proven
    "bad_kind",  # encrypted room: the first byte is not a kind (docs/e2e.md §3.2)
    "no_recipient",  # encrypted room: addressed to no bound member but the sender
    "out_of_order",  # ocm1r: a message id past the next one (the client resends it)
    "bad_mac",  # a member with a datagram key: trailer missing or its tag wrong
    "replayed",  # a member with a datagram key: a Seq accepted before or below the window
)
TERMINAL_NOTICES: Final = frozenset((NoticeEvent.CLOSED, NoticeEvent.DISCONNECTED))
"""Notices a member gets about itself once in its life: never withheld (docs/protocol.md
§4 (j)), so that a client that only listens still learns that its token is dead."""


class Member:
    """One member of one room. Slotted (docs/performance.md has the bytes per member)."""

    __slots__ = (
        "token", "username", "ip", "addr", "framed", "last_seen", "room", "plain_prefix",
        "framed_prefix", "announced", "allowance", "stamp", "trial", "muted", "rel",
        "mac_key", "mac_top", "mac_seen",
    )
    # Every slot is 8 bytes of every member: what only some members need lives beside
    # them (the rekey datagram in ``RelayCore.rekeys``, an encrypted room's public keys
    # until they are announced in ``RelayCore.join_keys``), what can be derived is (the
    # host: ``room.host is member``; a live member: ``core.tokens[member.token] is
    # member``; send failures: ``RelayCore.failing``, by address).

    def __init__(self, token: bytes, username: str, ip: str, framed: bool, room: Room,
                 now: float) -> None:
        self.token = token
        self.username = username
        self.ip = ip
        self.addr: Addr | None = None
        self.framed = framed
        self.last_seen = now
        self.room = room
        self.plain_prefix = plain_prefix(username)
        self.framed_prefix = framed_prefix(username)
        self.announced = False
        self.allowance = _FULL
        """Chat token bucket: messages this member may send now (capped at the burst)."""
        self.stamp = 0.0
        """When ``allowance`` was last brought up to date (a full bucket needs none: 0.0 is
        one float shared by every member that has not chatted yet)."""
        self.trial = False
        """Bound to an address only registered (§1.4), not yet proven by a datagram from
        it: deliveries draw on that address's budget (``RelayCore.unproven``)."""
        self.muted = False
        """On trial and the budget is spent: left out of deliveries until proven."""
        self.rel: Reliable | None = None
        """``ocm1r`` members: their recovery state (numbered deliveries, ids, NACKs)."""
        self.mac_key: bytes | None = None
        """Joined over TLS: its datagram key; every datagram must carry a valid trailer
        (wire/dgmac.py), checked before anything else is read past the token."""
        self.mac_top = 0
        """The highest trailer ``Seq`` accepted (0: none yet)."""
        self.mac_seen = 0
        """The replay window below ``mac_top`` (``wire.dgmac.advance``)."""


# --- reliable framed delivery (ocm1r, wire/reliable.py) -----------------------------------
class Reliable:
    """A reliable member's state: the last message id taken and its ``Seq``, where the
    member starts, and its NACK token bucket. Ids are taken in order, 1, 2, 3...: a later
    one waits for the one before (the client resends both), so that a member's messages
    keep the order it sent them in, and a copy of an id already taken is answered with the
    acknowledgement of the last one (acknowledgements are cumulative)."""

    __slots__ = ("top", "top_seq", "held", "held_at", "nack_due", "start")

    def __init__(self) -> None:
        self.top = 0
        """The last id taken."""
        self.top_seq = 0
        """Its ``Seq`` (0: refused)."""
        self.held: bytes | None = None
        """The acknowledgement of ``top`` held for the member's next DATA to carry
        (``06 MsgId Seq``, docs/protocol.md §9.3), or None."""
        self.held_at = 0.0
        """When it was held (``RelayCore.release_held`` sends it alone after
        ``ACK_HOLD_S``)."""
        self.nack_due = 0.0
        """Its NACK bucket (``NACK_BURST`` refilled at ``NACK_RATE``) as one time: when the
        bucket is full again; at or before now, it is full. One slot and no float of its
        own until the member's first NACK."""
        self.start = 1
        """Its first sequence number: the one after its own ``joined`` notice."""

    def may_nack(self, now: float) -> bool:
        """Take one NACK from the bucket if it holds one (the generic cell rate algorithm:
        each NACK moves the full-again time ``1 / NACK_RATE`` later; it may lie at most
        ``(NACK_BURST - 1) / NACK_RATE`` ahead of now)."""
        due = self.nack_due if self.nack_due > now else now
        if due - now > _NACK_AHEAD:
            return False
        self.nack_due = due + _NACK_EMISSION
        return True


class Room:
    """A live room: members by token, and the bound addresses split by delivery format."""

    __slots__ = ("name", "name_raw", "host", "members", "plain_addrs", "framed_addrs",
                 "trial", "generation", "e2e", "by_name", "history", "reliable",
                 "reliable_addrs")

    _generations: Final = itertools.count(1)
    """Shared by every room of the process, so that a generation is never reused, even by
    a new room of the same name."""

    def __init__(self, name: str, e2e: bool = False) -> None:
        self.name = name
        self.name_raw = name.encode()
        self.e2e = e2e
        """An encrypted room (docs/e2e.md §3.2): opaque Messages routed by kind byte."""
        self.by_name: dict[bytes, Member] = {}
        """Encrypted rooms: members by UTF-8 username, for addressed delivery."""
        self.host: Member | None = None
        self.members: dict[bytes, Member] = {}
        self.plain_addrs: list[Addr] = []
        self.framed_addrs: list[Addr] = []
        self.trial: list[Member] = []
        """Members on trial and not muted: each chat charges their addresses' budgets."""
        self.generation = next(Room._generations)
        """Changes whenever the address lists do: an adapter's cache built from them (e.g.
        prebuilt sendmmsg batches) is valid while the generation it recorded is current."""
        self.history: History | None = None
        """Numbered deliveries, once an ``ocm1r`` member joined: the room is numbered from
        then on."""
        self.reliable: list[Member] = []
        """The bound, unmuted ``ocm1r`` members (not in ``framed_addrs``)."""
        self.reliable_addrs: list[Addr] = []
        """Their addresses (an adapter's batch of numbered chat, see ``numbered``)."""

    def rebuild(self) -> None:
        """Recompute the address lists after a membership or binding change."""
        members = self.members.values()
        self.plain_addrs = [m.addr for m in members if m.addr and not m.framed and not m.muted]
        self.framed_addrs = [m.addr for m in members
                             if m.addr and m.framed and not m.muted and m.rel is None]
        if self.history is not None:
            self.reliable = [m for m in members if m.addr and m.rel is not None and not m.muted]
            self.reliable_addrs = [m.addr for m in self.reliable]  # type: ignore[misc]
        self.trial = [m for m in members if m.trial and not m.muted]
        self.generation = next(Room._generations)


class RelayCore:
    """Rooms of one worker: authentication, relay, notices, eviction. No I/O."""

    def __init__(self, inactivity_timeout: float = DEFAULT_INACTIVITY_TIMEOUT_S,
                 max_send_failures: int = DEFAULT_MAX_SEND_FAILURES,
                 chat_rate: float = DEFAULT_CHAT_RATE, chat_burst: int = DEFAULT_CHAT_BURST,
                 history: HistoryBudget | None = None,
                 new_epoch: Callable[[], int] | None = None) -> None:
        self.inactivity_timeout = inactivity_timeout
        self.max_send_failures = max_send_failures
        self.chat_rate = chat_rate
        """Chat messages per second per member (token bucket refill)."""
        self.chat_burst = float(chat_burst)
        """Bucket size: a member may send this many at once."""
        self.rooms: dict[str, Room] = {}
        self.tokens: dict[bytes, Member] = {}
        self.by_addr: dict[Addr, Member | list[Member]] = {}
        """The members bound to each address: the ``Member`` itself while it is the only
        one (the common case: ~64 bytes less per member than a one-element list), a list
        once several share the address. Read it with ``_at``."""
        self.failing: dict[Addr, int] = {}
        """Consecutive send failures per address; empty in the common case so the hot
        path's ``if failing`` test costs one truth check."""
        self.unproven: dict[Addr, int] = {}
        """Deliveries left for each bound address that no accepted datagram has come from
        (bound by the 2-byte registration or by re-seeding). One entry per such address,
        so bounded by ``by_addr``; the entry goes when the address is proven or unused."""
        self.outbox: list[Send] = []
        self.events: list[Bound | Left | Closed] = []
        self.addressed: dict[bytes, list[float]] = {}
        """Encrypted rooms: the addressed-kind token bucket ``[allowance, stamp]`` of each
        member (by token) that has sent an envelope or a key request; the entry goes with
        the member."""
        self.join_keys: dict[bytes, PublicKeys] = {}
        """Encrypted rooms: the public keys of each member (by token) not announced yet,
        for its ``joined`` notice (docs/e2e.md); the entry goes with the announcement."""
        self.rekeys: dict[bytes, tuple[bytes, float]] = {}
        """Members placed again (a restarted worker), by token: the rekey datagram that
        tells the member its placement key (wire/dgmac.py), and when it was last sent."""
        self._due: dict[int, list[bytes]] = {}
        """Inactivity deadlines, a timing wheel: the tokens due by ``key * DEADLINE_TICK_S``
        (a token, not the ``Member``, so that a departed member and its room are freed at
        once, not at its old deadline). 8 bytes a member (a heap of ``(due, token)`` tuples
        would take 64). Entries of departed members are skipped when due, and the buckets are
        rebuilt once they outnumber the live members (``_drop_member``)."""
        self._due_keys: list[int] = []
        """The keys of ``_due``, a heap: the next bucket due is ``_due_keys[0]``."""
        self._due_entries = 0
        """Tokens in ``_due`` (live members' and departed ones')."""
        self.received = 0
        self.relayed = 0
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.evictions: dict[str, int] = {r.value: 0 for r in EVICTION_REASONS}
        self.send_failures = 0
        self.history_budget = history if history is not None else HistoryBudget()
        """The limits of the rooms' histories (``ocm1r`` members), shared by the worker."""
        self.new_epoch: Callable[[], int] = new_epoch or itertools.count(1).__next__
        """A room history's epoch (the adapter injects a CSPRNG: 32 random bits)."""
        self._history_swept = 0.0
        self.batch_numbered = False
        """Set by an adapter that sends a numbered chat to ``room.reliable_addrs`` itself
        (one ``sendmmsg``): ``_chat`` then leaves it in ``numbered`` instead of ``outbox``."""
        self.numbered: bytes | None = None
        """With ``batch_numbered``: the numbered datagram of the chat ``handle_datagram``
        just returned a ``Fanout`` for (to every address of ``room.reliable_addrs`` but
        the Fanout's ``sender``, through ``carry``), or None."""
        self.held: list[Member] = []
        """Acknowledgements held (``06`` SENDs): the members, in time order, and in
        ``held_times`` when each was held; ``release_held`` sends those still held after
        ``ACK_HOLD_S`` alone. An entry whose acknowledgement was carried or superseded
        meanwhile is skipped. Two lists, not a list of pairs: a pair holding a member is an
        object the garbage collector tracks, and those that lived through a young
        collection (the tenth of a second an entry is listed) piled up in the oldest
        generation, whose full collections then paused a busy worker for 15–50 ms."""
        self.held_times: list[float] = []

    # --- control commands ---------------------------------------------------------------
    def add_member(self, room_name: str, token: bytes, username: str, ip: str,
                   framing: Framing, is_host: bool, now: float, addr: Addr | None = None,
                   announced: bool = False, proven: bool = False, e2e: bool = False,
                   keys: PublicKeys | None = None, mac_key: bytes | None = None,
                   placement: bytes | None = None) -> bool:
        """Add a member (``is_host`` creates the room, encrypted if ``e2e``). False if the
        room is not live (or already exists, for a host): control then answers
        ROOM_NOT_FOUND/EXISTS. ``addr``, ``announced`` and ``proven`` re-seed a restarted
        worker; ``keys`` go into the member's ``joined`` notice in an encrypted room;
        ``mac_key`` (a member that joined over TLS) makes every datagram of the member
        need its trailer (wire/dgmac.py). ``placement`` (re-seeding, with ``mac_key``):
        the nonce of this placement: the member's datagrams must carry the placement key's
        tag, and the member is sent the rekey datagram (now if ``addr`` is known)."""
        room = self.rooms.get(room_name)
        known = self.tokens.get(token)
        if known is not None:  # idempotent: a restarted worker may be seeded, then asked
            return known.room is room
        if is_host:
            if room is not None:
                return False
            room = self.rooms[room_name] = Room(room_name, e2e)
        elif room is None:
            return False
        member = Member(token, username, ip, framing.framed, room, now)
        member.mac_key = None if mac_key is None else bytes(mac_key)  # exact bytes for C
        if mac_key is not None and placement is not None:
            member.mac_key = dgmac.placement_key(bytes(mac_key), bytes(placement))
            self.rekeys[token] = (dgmac.encode_rekey(member.mac_key, bytes(placement)), now)
        if framing is Framing.OCM1R:  # reliable: the room is numbered from now on
            member.rel = Reliable()
            if room.history is None:
                room.history = History(self.new_epoch() & 0xFFFFFFFF, self.history_budget,
                                       now)
        if room.e2e:
            if keys is not None and not announced:
                self.join_keys[token] = keys
            room.by_name[username.encode()] = member
        if is_host:
            room.host = member
        room.members[token] = member
        self.tokens[token] = member
        self._push_deadline(member, now + self.inactivity_timeout)
        if addr is not None:
            member.announced = announced
            self._bind(member, addr, proven=proven)
            if (rekey := self.rekeys.get(token)) is not None:
                self.outbox.append((rekey[0], addr))
        return True

    def register(self, token: bytes, port: int, now: float) -> None:
        """The 2-byte UDP port registration: bind ``(issued ip, port)`` and refresh. The
        address is on trial until a datagram from it proves it (``unproven``)."""
        member = self.tokens.get(token)
        if member is None or not 0 < port < 65536:
            return
        member.last_seen = now
        if member.addr != (member.ip, port):
            self._bind(member, (member.ip, port), proven=False)

    def configure(self, inactivity_timeout: float, max_send_failures: int, now: float,
                  chat_rate: float | None = None, chat_burst: int | None = None) -> None:
        """Apply live-reloaded settings; deadlines are recomputed."""
        self.inactivity_timeout = inactivity_timeout
        self.max_send_failures = max_send_failures
        if chat_rate is not None:
            self.chat_rate = chat_rate
        if chat_burst is not None:
            self.chat_burst = float(chat_burst)
        self._rebuild_deadlines()

    def shutdown(self) -> None:
        """Graceful stop (§2.4): every bound member gets ``closed``; all rooms go."""
        for room in list(self.rooms.values()):
            self._close_room(room, None, Reason.SHUTDOWN.value)

    # --- datagrams ---------------------------------------------------------------------
    def rebind_ip(self, token: bytes, ip: str, seq: int | None = None) -> bool:
        """Cluster mode: the member now reaches us through another node at ``ip`` (it sends
        to that node, which relays for it). Its datagrams must come from ``ip`` from now
        on, and its old address gets nothing more until the first one does. A member
        with a datagram key moves only with proof: ``seq``, the ``Seq`` of a datagram of
        it whose tag control checked, must be one its replay window would accept (the
        window itself is not moved). False if it did not move for want of one."""
        member = self.tokens.get(token)
        if member is None or member.ip == ip:
            return True
        if member.mac_key is not None and (
                seq is None or dgmac.advance(member.mac_top, member.mac_seen, seq) is None):
            return False
        member.ip = ip
        if member.addr is not None and member.addr[0] != ip:
            self._unlink_addr(member)
            member.addr = None
            member.room.rebuild()
        return True

    def resume(self, token: bytes, new_token: bytes, ip: str, now: float,
               mac_key: bytes | None = None) -> bool:
        """An ``ocm1r`` member moves (a TCRP resume): ``new_token``, issued to ``ip``,
        replaces ``token``; its name, membership, message ids and place in the room
        stay, and it is not announced again. Its old address gets nothing more; its
        first datagram from the new one binds it (then it NACKs what it missed). Its
        datagram key is ``mac_key`` from now on (a fresh one, or None), with a fresh
        replay window. False if ``token`` is no live member (control then answers
        ROOM_NOT_FOUND)."""
        member = self.tokens.get(token)
        if member is None or new_token in self.tokens:
            return False
        room = member.room
        del self.tokens[token]
        del room.members[token]
        member.token = new_token
        self.tokens[new_token] = member
        room.members[new_token] = member
        self.rekeys.pop(token, None)  # a fresh key (or none): the placement's rekey is void
        if (bucket := self.addressed.pop(token, None)) is not None:
            self.addressed[new_token] = bucket
        if (keys := self.join_keys.pop(token, None)) is not None:
            self.join_keys[new_token] = keys
        member.ip = ip
        member.last_seen = now
        member.mac_key = None if mac_key is None else bytes(mac_key)  # exact bytes for C
        member.mac_top = member.mac_seen = 0
        self._unlink_addr(member)
        member.addr = None
        member.trial = member.muted = False
        room.rebuild()
        self._push_deadline(member, now + self.inactivity_timeout)
        return True

    def close_room(self, room_name: str, reason: str) -> None:
        """Close a room on control's order (cluster mode: its name now belongs to another
        node): every member gets ``closed``, tokens die, a ``closed`` event follows."""
        room = self.rooms.get(room_name)
        if room is not None:
            self._close_room(room, None, reason)

    def handle_datagram(self, data: bytes, addr: Addr, now: float) -> Fanout | None:
        """Authenticate and act on one Stage 2 datagram (§2.1).

        Returns a ``Fanout`` for chat to relay, else None (dropped, keepalive, /exit,
        too long: notices and events are then in ``outbox``/``events``).
        """
        self.received += 1
        size = len(data)
        if size > MAX_DATAGRAM_BYTES:
            self.drops["too_large"] += 1
            return None
        if size < 2:
            self.drops["malformed"] += 1
            return None
        room_end = 2 + data[0]
        token_end = room_end + data[1]
        if token_end > size or room_end == 2 or token_end == room_end:
            self.drops["malformed"] += 1
            return None
        member = self.tokens.get(data[room_end:token_end])
        if member is None:
            self.drops["unknown_token"] += 1
            return None
        if member.ip != addr[0]:
            self.drops["wrong_ip"] += 1
            return None
        room = member.room
        if room.name_raw != data[2:room_end]:
            self.drops["wrong_room"] += 1
            return None
        if member.mac_key is not None:
            unsealed = self._unseal(member, data, token_end, now)
            if unsealed is None:
                return None
            data = unsealed
        if room.e2e:
            return self._handle_e2e(member, data, token_end, addr, now)
        message = data[token_end:]
        if member.rel is not None and message and (
                message[0] == _SEND or message[0] == _NACK or message[0] == _SEND_HELD):
            return self._handle_reliable(member, message, addr, now)
        try:
            message.decode()
        except UnicodeDecodeError:
            self.drops["bad_utf8"] += 1
            return None
        member.last_seen = now
        if member.addr != addr:
            self._bind(member, addr, proven=True)
        elif member.trial:  # its registered address speaks: proven
            self._prove(addr)
        if not message:
            if member.rel is not None and room.history is not None:  # sync: the latest Seq
                self._sync(member)
            return None
        if len(message) <= EXIT_MATCH_MAX_BYTES and is_exit(message):
            self._remove(member, Reason.EXIT)
            return None
        return self._chat(member, message, now)

    def _handle_reliable(self, member: Member, message: bytes, addr: Addr,
                         now: float) -> Fanout | None:
        """An ``ocm1r`` member's SEND (chat with an id: relayed once, acknowledged every
        time; a ``06`` SEND's first acknowledgement is held for a DATA to carry) or NACK
        (resend from the history, answer the rest as lost). In an encrypted room the SEND
        carries a kind-01 Message, opaque past that byte, and the NACK's first byte is 05
        (02 is an envelope there); the rest is the same."""
        rel = member.rel
        room = member.room
        history = room.history
        assert rel is not None and history is not None
        kind = message[0]
        if kind == _SEND or kind == _SEND_HELD:
            if len(message) < 5:
                self.drops["malformed"] += 1
                return None
            if room.e2e:  # opaque: only the kind byte of the Message is read
                if len(message) > 5 and message[5] != _CHAT:
                    self.drops["bad_kind"] += 1
                    return None
            else:
                try:
                    message[5:].decode()
                except UnicodeDecodeError:
                    self.drops["bad_utf8"] += 1
                    return None
        else:
            try:
                epoch, ranges = decode_nack(message)
            except ProtocolError:
                self.drops["malformed"] += 1
                return None
        member.last_seen = now
        if member.addr != addr:
            self._bind(member, addr, proven=True)
        elif member.trial:
            self._prove(addr)
        if kind != _SEND and kind != _SEND_HELD:  # a NACK (02, or 05 in an encrypted room)
            if not rel.may_nack(now):
                self.drops["rate_limited"] += 1
            elif epoch == history.epoch and member.addr is not None:
                if rel.held is not None:  # it may be asking for its own message
                    self._ack(member, rel.top, rel.top_seq)
                out: list[bytes] = []
                budget = NACK_MAX_RESENDS
                for first, count in ranges:
                    history.resend(first, min(count, budget), now, out)
                    budget = NACK_MAX_RESENDS - len(out)
                    if budget <= 0:
                        break
                target = member.addr
                self.outbox.extend((d, target) for d in out[:NACK_MAX_RESENDS])
            return None
        msg_id = int.from_bytes(message[1:5], "big")
        if msg_id <= rel.top:  # a copy of an id taken: acknowledge again, relay nothing
            self._ack(member, rel.top, rel.top_seq)
            return None
        if msg_id != rel.top + 1:  # one before it is missing: the client resends both,
            self.drops["out_of_order"] += 1  # told so by the last id acknowledged again
            if rel.top:
                self._ack(member, rel.top, rel.top_seq)
            return None
        text = message[5:]
        if not text:
            self.drops["malformed"] += 1
            return None
        before, limited = history.next_seq, self.drops["rate_limited"]
        out_fanout = self._chat(member, text, now)
        if history.next_seq != before:
            seq = history.next_seq - 1
        elif self.drops["rate_limited"] != limited:  # not taken: no ack, the client retries
            return out_fanout
        else:
            seq = 0  # refused (too long: the error notice says why)
        rel.top, rel.top_seq = msg_id, seq
        if kind == _SEND_HELD and seq and member.addr is not None:
            rel.held = _pack_carried(_CARRIED, msg_id, seq)
            rel.held_at = now
            self.held.append(member)
            self.held_times.append(now)
        else:
            self._ack(member, msg_id, seq)
        return out_fanout

    def _number(self, room: Room, body: bytes, exclude: Member | None, now: float,
                admit: bool = False) -> None:
        """Number an ``ocm1`` delivery of ``room`` (chat or notice), keep it in the history
        and send it to the room's reliable members but ``exclude``; ``admit`` charges the
        trial members (``_chat`` has charged them already)."""
        history = room.history
        assert history is not None
        if len(body) + DATA_HEADER_BYTES > MAX_DELIVERY_BYTES:  # too long for ocm1r: lost
            history.skip(now)
            return
        datagram = history.number(body, now)
        if self.batch_numbered and not admit:  # a chat: the adapter batches it
            self.numbered = datagram
            return
        outbox = self.outbox
        for m in room.reliable:
            if m is not exclude and (not admit or not m.trial or self._admit(m)):
                outbox.extend((d, m.addr) for d in self.carry(m, datagram))  # type: ignore[misc]

    def carry(self, member: Member, datagram: bytes) -> tuple[bytes, ...]:
        """What to send ``member`` for the numbered ``datagram``: its held
        acknowledgement in front of it (the held one is then gone), or, if that would be
        too long, the acknowledgement alone and then the datagram; the datagram alone if
        nothing is held."""
        rel = member.rel
        held = rel.held if rel is not None else None
        if held is None:
            return (datagram,)
        assert rel is not None
        rel.held = None
        if len(held) + len(datagram) <= MAX_DELIVERY_BYTES:
            return (held + datagram,)
        history = member.room.history
        assert history is not None
        return encode_ack(history.epoch, rel.top, rel.top_seq), datagram

    def release_held(self, now: float) -> None:
        """Send alone every acknowledgement held for ``ACK_HOLD_S`` (no DATA carried it)."""
        held, times = self.held, self.held_times
        done = bisect.bisect_right(times, now - ACK_HOLD_S)  # in time order
        for i in range(done):
            member, rel = held[i], held[i].rel
            if rel is not None and rel.held is not None and rel.held_at == times[i]:
                self._ack(member, rel.top, rel.top_seq)
        if done:
            del held[:done], times[:done]

    def _ack(self, member: Member, msg_id: int, seq: int) -> None:
        """Acknowledge ``msg_id`` and every id before it (a held one is covered)."""
        history = member.room.history
        if member.rel is not None:
            member.rel.held = None
        if member.addr is not None and history is not None:
            self.outbox.append((encode_ack(history.epoch, msg_id, seq), member.addr))

    def _sync(self, member: Member) -> None:
        """Answer an ``ocm1r`` keepalive with where the member starts and the room's
        latest ``Seq``: a receiver learns its start, and about a lost last message."""
        history = member.room.history
        assert history is not None and member.rel is not None and member.addr is not None
        if member.rel.held is not None:  # else its own message would look missing
            self._ack(member, member.rel.top, member.rel.top_seq)
        self.outbox.append((encode_sync(history.epoch, member.rel.start,
                                        history.next_seq - 1), member.addr))
    def _unseal(self, member: Member, data: bytes, token_end: int,
                now: float) -> bytes | None:
        """The datagram without its trailer if the tag is right and its ``Seq`` is fresh
        (the window moves), else None, counted (docs/protocol.md §8). A member placed
        again whose tag fails is sent its rekey datagram, at most once every
        ``REKEY_RESEND_S``, to its bound address only (never to the sender's)."""
        key = member.mac_key
        assert key is not None
        seq = dgmac.verify(key, data) if len(data) - token_end >= dgmac.TRAILER_BYTES \
            else None
        if seq is None:
            self.drops["bad_mac"] += 1
            rekey = self.rekeys.get(member.token)
            if rekey is not None and member.addr is not None and \
                    now - rekey[1] >= dgmac.REKEY_RESEND_S:
                self.rekeys[member.token] = (rekey[0], now)
                self.outbox.append((rekey[0], member.addr))
            return None
        window = dgmac.advance(member.mac_top, member.mac_seen, seq)
        if window is None:
            self.drops["replayed"] += 1
            return None
        member.mac_top, member.mac_seen = window
        return data[:-dgmac.TRAILER_BYTES]

    def _chat(self, member: Member, message: bytes, now: float) -> Fanout | None:
        """A chat message of an authenticated, refreshed member: charge its token bucket,
        refuse it whole if a delivery would be too long (§2.3), admit trial addresses and
        return the room's fan-out. Shared by plain rooms and encrypted ones (whose members
        are all framed, so their opaque message travels in the framed form only)."""
        allowance = member.allowance + (now - member.stamp) * self.chat_rate
        member.stamp = now
        if allowance > self.chat_burst:
            allowance = self.chat_burst
        if allowance < 1.0:
            member.allowance = allowance
            self.drops["rate_limited"] += 1
            return None
        member.allowance = allowance - 1.0
        room = member.room
        plain_addrs = room.plain_addrs
        framed_addrs = room.framed_addrs
        sender = member.addr
        assert sender is not None
        plain = framed = None
        n_plain = len(plain_addrs) - (not member.framed)
        if n_plain:
            plain = member.plain_prefix + message
        if len(framed_addrs) - (member.framed and member.rel is None):  # ocm1r: not listed
            framed = member.framed_prefix + message
        # The plain form (name + ": ") is always the longer one (§2.3: relay to nobody).
        longest = len(plain) if plain is not None else len(framed) if framed is not None else 0
        if longest > MAX_DELIVERY_BYTES:
            self._notify(member, Notice(NoticeEvent.ERROR, over=longest - MAX_DELIVERY_BYTES))
            return None
        if room.trial:  # registered addresses not yet proven: charge or leave them out
            for m in room.trial:
                if m is not member:
                    self._admit(m)
            plain_addrs = room.plain_addrs
            framed_addrs = room.framed_addrs
        if room.history is not None:
            self._number(room, member.framed_prefix + message, member, now)
        self.relayed += 1
        # tuple.__new__ skips the Python-level frame of the NamedTuple's own __new__.
        return _new_fanout(Fanout, (plain, plain_addrs, framed, framed_addrs, sender, room))

    def _handle_e2e(self, member: Member, data: bytes, start: int, addr: Addr,
                    now: float) -> Fanout | None:
        """An authenticated datagram of an encrypted room (docs/e2e.md §3.2). The Message
        is opaque: only its kind byte and an addressed kind's recipient are read (held to
        ``wire.e2e.decode_route`` by the tests); no UTF-8 check, no ``/exit`` text."""
        size = len(data)
        kind = data[start] if start < size else 0
        end = start
        if member.rel is not None and (kind == _SEND or kind == _E2E_NACK or kind == _SEND_HELD):
            return self._handle_reliable(member, data[start:], addr, now)
        if kind == _LEAVE:
            if size - start != 1:
                self.drops["malformed"] += 1
                return None
            self._remove(member, Reason.EXIT)
            return None
        if kind == _ENVELOPE or kind == _KEY_REQUEST:
            if size - start < 2 or data[start + 1] == 0:
                self.drops["malformed"] += 1
                return None
            end = start + 2 + data[start + 1]
            if end > size:
                self.drops["malformed"] += 1
                return None
        elif kind != _CHAT and start < size:
            self.drops["bad_kind"] += 1
            return None
        member.last_seen = now  # the token is proven: refresh and bind
        if member.addr != addr:
            self._bind(member, addr, proven=True)
        elif member.trial:
            self._prove(addr)
        if start == size:  # keepalive
            if member.rel is not None and member.room.history is not None:
                self._sync(member)
            return None
        if kind == _CHAT:
            return self._chat(member, data[start:], now)
        target = member.room.by_name.get(data[start + 2:end])
        if target is None or target is member or target.addr is None:
            self.drops["no_recipient"] += 1
            return None
        delivery = member.framed_prefix + data[start:start + 1] + data[end:]
        if target.rel is not None:  # outside the room order: marked apart from DATA & co.
            delivery = _DIRECT_BYTE + delivery
        if len(delivery) > MAX_DELIVERY_BYTES:
            self._notify(member, Notice(NoticeEvent.ERROR,
                                        over=len(delivery) - MAX_DELIVERY_BYTES))
            return None
        if not self._charge_addressed(member, now):
            return None
        if target.trial and not self._admit(target):
            return None
        self.outbox.append((delivery, target.addr))
        self.relayed += 1
        return None

    def _charge_addressed(self, member: Member, now: float) -> bool:
        """Charge ``member``'s addressed-kind bucket (``ADDRESSED_BURST``, refilled at
        ``ADDRESSED_RATE`` a second); False (counted ``rate_limited``) when it is empty."""
        bucket = self.addressed.get(member.token)
        if bucket is None:
            bucket = self.addressed[member.token] = [float(ADDRESSED_BURST), now]
        allowance = bucket[0] + (now - bucket[1]) * ADDRESSED_RATE
        bucket[1] = now
        if allowance > ADDRESSED_BURST:
            allowance = float(ADDRESSED_BURST)
        if allowance < 1.0:
            bucket[0] = allowance
            self.drops["rate_limited"] += 1
            return False
        bucket[0] = allowance - 1.0
        return True

    def handle_send_failure(self, addr: Addr, now: float) -> None:
        """A send to ``addr`` failed (or ICMP said unreachable): count, maybe evict."""
        self.send_failures += 1
        count = self.failing.get(addr, 0) + 1
        members = self._at(addr)
        if not members:
            self.failing.pop(addr, None)
            return
        if count < self.max_send_failures:
            self.failing[addr] = count
            return
        self.failing.pop(addr, None)
        for member in members:
            if self.tokens.get(member.token) is member:  # not gone with an evicted host
                self._evict(member, Reason.SEND_FAILURES)

    def handle_send_success(self, addr: Addr) -> None:
        """A send to ``addr`` went through: its failure streak ends (failures count only
        when consecutive). The one rule for every adapter, the compiled loop included;
        an adapter may skip the call while ``failing`` is empty."""
        self.failing.pop(addr, None)

    # --- timers ------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When ``handle_timer`` has work next (None when no member is live)."""
        return self._due_keys[0] * DEADLINE_TICK_S if self._due_keys else None

    def handle_timer(self, now: float) -> None:
        """Evict every member silent for ``inactivity_timeout`` seconds (§2.4)."""
        if now - self._history_swept >= 1.0:  # histories age out even in idle rooms
            self._history_swept = now
            for room in self.rooms.values():
                if room.history is not None:
                    room.history.expire(now)
        timeout = self.inactivity_timeout
        tokens = self.tokens
        while self._due_keys and self._due_keys[0] * DEADLINE_TICK_S <= now:
            bucket = self._due.pop(heapq.heappop(self._due_keys))
            self._due_entries -= len(bucket)
            for token in bucket:  # an eviction may rebuild the buckets: this one is out
                member = tokens.get(token)
                if member is None:  # departed: its entry outlived it
                    continue
                due = member.last_seen + timeout
                if due <= now:
                    self._evict(member, Reason.INACTIVE)
                else:  # a later bucket: its key * TICK >= due > now
                    self._push_deadline(member, due)

    def statistics(self) -> Counters:
        """A snapshot of the datagram counters (the worker sends them once a second)."""
        return Counters(self.received, self.relayed, dict(self.drops), dict(self.evictions))

    # --- internals ---------------------------------------------------------------------
    def _push_deadline(self, member: Member, due: float) -> None:
        key = -int(-due // DEADLINE_TICK_S)  # the first bucket at or after ``due``
        bucket = self._due.get(key)
        if bucket is None:
            self._due[key] = [member.token]
            heapq.heappush(self._due_keys, key)
        else:
            bucket.append(member.token)
        self._due_entries += 1

    def _rebuild_deadlines(self) -> None:
        """One entry per live member, at ``last_seen + inactivity_timeout``: O(members)."""
        self._due, self._due_keys, self._due_entries = {}, [], 0
        timeout = self.inactivity_timeout
        for member in self.tokens.values():
            self._push_deadline(member, member.last_seen + timeout)

    def _at(self, addr: Addr) -> list[Member]:
        """The members bound to ``addr`` (a new list: safe to change ``by_addr`` while
        iterating it)."""
        peers = self.by_addr.get(addr)
        if peers is None:
            return []
        return [peers] if isinstance(peers, Member) else list(peers)

    def _unlink_addr(self, member: Member) -> None:
        """Take ``member`` out of ``by_addr``; forget the address once nobody uses it."""
        addr = member.addr
        if addr is None:
            return
        peers = self.by_addr.get(addr)
        if peers is None:
            return
        if isinstance(peers, Member):
            if peers is not member:
                return
            rest: list[Member] = []
        else:
            if member in peers:
                peers.remove(member)
            rest = peers
        if len(rest) == 1:
            self.by_addr[addr] = rest[0]
        elif not rest:
            del self.by_addr[addr]
            self.failing.pop(addr, None)
            self.unproven.pop(addr, None)

    def _bind(self, member: Member, addr: Addr, proven: bool) -> None:
        """Bind ``member`` to ``addr``: ``proven`` if a datagram came from it, else (a
        registration, a re-seed) on trial unless another member has proven it already."""
        self._unlink_addr(member)
        if addr[0] == member.ip:  # share the member's IP string, not the copy recvfrom made
            addr = (member.ip, addr[1])
        member.addr = addr
        peers = self.by_addr.get(addr)
        if proven:
            if addr in self.unproven:
                self._prove(addr)
            member.trial = member.muted = False
        elif peers is None or addr in self.unproven:
            left = self.unproven.setdefault(addr, UNPROVEN_MAX_DELIVERIES)
            member.trial = True
            member.muted = left <= 0
        else:
            member.trial = member.muted = False
        if peers is None:
            self.by_addr[addr] = member
        elif isinstance(peers, Member):
            self.by_addr[addr] = [peers, member]
        else:
            peers.append(member)
        member.room.rebuild()
        self.events.append(Bound(member.token, addr[0], addr[1], not member.trial))
        if not member.announced:
            member.announced = True
            self._broadcast(member.room, Notice(NoticeEvent.JOINED, member.username,
                                                keys=self.join_keys.pop(member.token, None)),
                            exclude=member)
            if member.rel is not None and member.room.history is not None:
                member.rel.start = member.room.history.next_seq

    def _prove(self, addr: Addr) -> None:
        """A datagram from ``addr`` was accepted: every member bound to it comes off trial."""
        del self.unproven[addr]
        rooms = {}
        for peer in self._at(addr):
            peer.trial = peer.muted = False
            rooms[id(peer.room)] = peer.room
            self.events.append(Bound(peer.token, addr[0], addr[1], True))  # for re-seeding
        for room in rooms.values():
            room.rebuild()

    def _admit(self, member: Member) -> bool:
        """May one more datagram go to ``member``? Always, unless it is on trial: then its
        address's budget pays for it, and once that is spent it is muted (left out of its
        room's address lists) until proven; each withheld delivery is counted."""
        if not member.trial:
            return True
        addr = member.addr
        if addr is not None and not member.muted:
            left = self.unproven.get(addr, 0)
            if left > 0:
                self.unproven[addr] = left - 1
                return True
        self.drops["unproven"] += 1
        if not member.muted:
            member.muted = True
            member.room.rebuild()
        return False

    def _remove(self, member: Member, reason: Reason) -> None:
        """Take ``member`` out; if it hosts the room, close the room instead (§2.4)."""
        room = member.room
        if room.host is member:
            self._close_room(room, member, reason.value)
            return
        self._drop_member(member)
        room.rebuild()
        self.events.append(Left(member.token, reason))
        self._broadcast(room, Notice(NoticeEvent.LEFT, member.username, reason))

    def _evict(self, member: Member, reason: Reason) -> None:
        self.evictions[reason.value] += 1
        self._notify(member, Notice(NoticeEvent.DISCONNECTED, reason=reason))
        self._remove(member, reason)

    def _close_room(self, room: Room, host: Member | None, reason: str) -> None:
        shutdown = reason == Reason.SHUTDOWN.value  # framed clients can say why (§2.3)
        closed = Notice(NoticeEvent.CLOSED, reason=Reason.SHUTDOWN if shutdown else None)
        for member in list(room.members.values()):
            if member is not host:
                self._notify(member, closed)
            self._drop_member(member)
        # Members point at their room; the room must not point back, or the closed room
        # and its members would form cycles that wait for the cyclic GC instead of being
        # freed at once when the last reference goes.
        room.host = None
        room.trial = []
        room.reliable = []
        if room.history is not None:
            room.history.clear()
        del self.rooms[room.name]
        self.events.append(Closed(room.name, reason))

    def _drop_member(self, member: Member) -> None:
        room = member.room
        del room.members[member.token]
        if member.rel is not None:
            member.rel.held = None  # nothing to release for it (``release_held``)
        if room.e2e:
            if room.by_name.get(name := member.username.encode()) is member:
                del room.by_name[name]
            self.addressed.pop(member.token, None)
            self.join_keys.pop(member.token, None)
        self.rekeys.pop(member.token, None)
        del self.tokens[member.token]
        self._unlink_addr(member)
        if self._due_entries > 2 * len(self.tokens) + DEADLINE_COMPACT_SLACK:
            # Departed members' entries outnumber the live ones: drop them all now, so that
            # churn cannot grow the wheel whatever the timeout (amortised O(1) per departure).
            self._rebuild_deadlines()

    def _notify(self, member: Member, notice: Notice) -> None:
        if member.addr is not None and (notice.event in TERMINAL_NOTICES
                                        or self._admit(member)):
            encode: Callable[[Notice], bytes] = (
                encode_framed_notice if member.framed else encode_plain_notice)
            self.outbox.append((encode(notice), member.addr))

    def _broadcast(self, room: Room, notice: Notice, exclude: Member | None = None) -> None:
        plain = framed = b""
        if room.history is not None:  # in the room's order for ocm1r members
            self._number(room, encode_framed_notice(notice), exclude, room.history.now, True)
        for member in room.members.values():
            if member is exclude or member.addr is None or member.rel is not None or (
                    member.trial and not self._admit(member)):
                continue
            if member.framed:
                framed = framed or encode_framed_notice(notice)
                self.outbox.append((framed, member.addr))
            else:
                plain = plain or encode_plain_notice(notice)
                self.outbox.append((plain, member.addr))


class _Stage1Client:
    """One remembered Stage 1 address: when it last spoke and its chat token bucket."""

    __slots__ = ("last_seen", "allowance", "stamp")

    def __init__(self, now: float, burst: float) -> None:
        self.last_seen = now
        self.allowance = burst
        self.stamp = now


class GlobalChat:
    """Stage 1 (§3): everyone who sent a well-formed datagram gets every other's chat.

    Bounds (wire/limits.py): ``max_clients`` addresses in all and ``max_per_ip`` per source
    IP; each address may chat ``rate`` times a second (token bucket of ``burst``). Every
    operation on the table is O(1) (an expiry is O(expired)): ``clients`` is a dict kept in
    last-seen order, and the address list handed to the adapter is rebuilt lazily, as a
    new list, on the first chat after a change, so a list already handed out never
    changes under a fan-out in progress.
    """

    def __init__(self, inactivity_timeout: float = DEFAULT_INACTIVITY_TIMEOUT_S,
                 max_send_failures: int = DEFAULT_MAX_SEND_FAILURES,
                 max_clients: int = STAGE1_MAX_CLIENTS,
                 max_per_ip: int = STAGE1_MAX_CLIENTS_PER_IP,
                 rate: float = STAGE1_CHAT_RATE, burst: int = STAGE1_CHAT_BURST) -> None:
        self.inactivity_timeout = inactivity_timeout
        self.max_send_failures = max_send_failures
        self.max_clients = max_clients
        """Bound of the address table: 10,000 x ~300 bytes = 3 MB worst case."""
        self.max_per_ip = max_per_ip
        """Addresses remembered per source IP (caps what one host, or one spoofed IP, can
        make a message fan out to)."""
        self.rate = rate
        self.burst = float(burst)
        self.clients: dict[Addr, _Stage1Client] = {}
        """Remembered addresses, oldest ``last_seen`` first (a refresh re-inserts)."""
        self.per_ip: dict[str, int] = {}
        self.failing: dict[Addr, int] = {}
        self._addrs: list[Addr] | None = []
        self.received = 0
        self.relayed = 0
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.evictions: dict[str, int] = {r.value: 0 for r in EVICTION_REASONS}

    @property
    def addrs(self) -> list[Addr]:
        """Every remembered address, as a list that is never mutated once returned."""
        addrs = self._addrs
        if addrs is None:
            addrs = self._addrs = list(self.clients)
        return addrs

    def handle_datagram(self, data: bytes, addr: Addr, now: float) -> list[Addr] | None:
        """Validate; remember the sender; return the addresses to relay ``data`` to
        (the caller skips ``addr``), or None (dropped, keepalive, over the sender's rate)."""
        self.received += 1
        size = len(data)
        if size > MAX_DATAGRAM_BYTES:
            self.drops["too_large"] += 1
            return None
        end = 1 + data[0] if size else 0
        if end <= 1 or end > size:
            self.drops["malformed"] += 1
            return None
        try:
            data[1:end].decode()
            data[end:].decode()
        except UnicodeDecodeError:
            self.drops["bad_utf8"] += 1
            return None
        clients = self.clients
        client = clients.pop(addr, None)
        if client is None:
            if len(clients) >= self.max_clients:
                self.drops["too_many_clients"] += 1
                return None
            ip = addr[0]
            count = self.per_ip.get(ip, 0)
            if count >= self.max_per_ip:
                self.drops["too_many_per_ip"] += 1
                return None
            self.per_ip[ip] = count + 1
            client = _Stage1Client(now, self.burst)
            self._addrs = None
        clients[addr] = client  # (re-)inserted last: the dict stays in last-seen order
        client.last_seen = now
        if end == size:
            return None
        allowance = client.allowance + (now - client.stamp) * self.rate
        client.stamp = now
        if allowance > self.burst:
            allowance = self.burst
        if allowance < 1.0:
            client.allowance = allowance
            self.drops["rate_limited"] += 1
            return None
        client.allowance = allowance - 1.0
        self.relayed += 1
        return self.addrs

    def handle_send_failure(self, addr: Addr) -> None:
        count = self.failing.get(addr, 0) + 1
        if count >= self.max_send_failures:
            self._forget(addr, Reason.SEND_FAILURES)
        elif addr in self.clients:
            self.failing[addr] = count

    def handle_send_success(self, addr: Addr) -> None:
        self.failing.pop(addr, None)

    def handle_timer(self, now: float) -> None:
        """Forget clients silent for ``inactivity_timeout`` seconds (no notices in §3);
        O(expired), since ``clients`` is in last-seen order."""
        limit = now - self.inactivity_timeout
        expired = []
        for addr, client in self.clients.items():
            if client.last_seen > limit:
                break
            expired.append(addr)
        for addr in expired:
            self._forget(addr, Reason.INACTIVE)

    def _forget(self, addr: Addr, reason: Reason) -> None:
        self.failing.pop(addr, None)
        if self.clients.pop(addr, None) is not None:
            self.evictions[reason.value] += 1
            ip = addr[0]
            left = self.per_ip[ip] - 1
            if left:
                self.per_ip[ip] = left
            else:
                del self.per_ip[ip]
            self._addrs = None

    def statistics(self) -> Counters:
        """A snapshot of the datagram counters (``clients`` is ``len(clients)``)."""
        return Counters(self.received, self.relayed, dict(self.drops), dict(self.evictions))
