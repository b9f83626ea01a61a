"""The compiled hot loop (relay/_hot.c) against the pure-Python one, on the same traffic.

Two workers, one per loop, each with its own UDP socket on 127.0.0.1 and the same clock
(pinned), get the same datagrams from the same client sockets (loopback delivery is
synchronous, so once ``sendto`` returns the datagram waits in the worker's queue). After
every datagram both must have sent the same deliveries to the same clients and have the
same core state: counters, drop and eviction reasons, rooms, and every member's address,
token bucket and last-seen time. The traffic covers what the compiled loop relays itself
and everything it must hand back: first datagrams, keepalives, /exit in its spellings,
invalid UTF-8, rate limits, over-long deliveries, trial addresses, failing addresses,
wrong IP/room/token, malformed headers, oversize datagrams, and encrypted rooms.
"""

from __future__ import annotations

import asyncio
import gc
import random
import select
import socket
from collections.abc import Iterator

import pytest

from relay import hot
from relay.core import RelayCore
from relay.ipc import WorkerSettings
from relay.worker import Worker
from wire import dgmac
from wire.chat import encode_chat
from wire.codes import Framing
from wire.e2e import Kind, PublicKeys, encode_message
from wire.limits import (
    ACK_HOLD_S,
    ADDRESSED_BURST,
    ADDRESSED_RATE,
    HISTORY_ENTRY_OVERHEAD_BYTES,
    MAX_DATAGRAM_BYTES,
    MAX_DELIVERY_BYTES,
)
from wire.reliable import Up, encode_ack, encode_carried, encode_data, encode_nack, encode_send

TIMEOUT_S = 10.0


def _extension():  # type: ignore[no-untyped-def]
    try:
        return hot.extension()
    except hot.Unavailable as exc:  # make test builds it (OCM_REQUIRE_EXTENSIONS=1)
        pytest.fail(f"the compiled hot loop is not available: {exc}")


def settings(hot_path: str) -> WorkerSettings:
    return WorkerSettings(inactivity_timeout=300.0, max_send_failures=3, chat_rate=10.0,
                          chat_burst=3, max_stage1_clients=100, log_level="info",
                          log_format="text", realtime_priority=0, sendmmsg=True,
                          hot_path=hot_path)


def udp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


class Pair:
    """A pure-Python worker and a compiled one, fed alike."""

    def __init__(self) -> None:
        module = _extension()
        self.now = 1000.0
        self.workers: list[Worker] = []
        self.loops = []
        for path in ("python", "compiled"):
            sock = udp()
            worker = Worker(0, settings(path), sock, None, None, None)
            worker.loop = asyncio.new_event_loop()
            self.loops.append(worker.loop)
            worker.clock = lambda: self.now
            worker.events_seen = []  # type: ignore[attr-defined]
            worker._send = lambda *m, seen=worker.events_seen: seen.extend(m)  # type: ignore[attr-defined,method-assign,misc]
            if path == "compiled":
                worker.hot = worker.compiled_loop(module)
                worker.read = worker.hot.on_readable  # type: ignore[attr-defined]
            else:
                worker.read = worker._on_udp  # type: ignore[attr-defined]
            self.workers.append(worker)
        self.clients: dict[str, socket.socket] = {}

    def client(self, name: str, host: str = "127.0.0.1") -> socket.socket:
        if name not in self.clients:
            self.clients[name] = udp(host)
        return self.clients[name]

    def add(self, room: str, token: bytes, user: str, host: bool = False,
            framing: Framing = Framing.PLAIN, e2e: bool = False,
            addr: tuple[str, int] | None = None, proven: bool = False,
            mac_key: bytes | None = None) -> None:
        keys = PublicKeys(bytes(32), bytes(32)) if e2e else None
        for w in self.workers:
            assert w.core.add_member(room, token, user, "127.0.0.1", framing, host, self.now,
                                     addr, proven, proven, e2e=e2e, keys=keys,
                                     mac_key=mac_key)
            w._flush()
        self.check()

    def register(self, token: bytes, client: str) -> None:
        port = self.client(client).getsockname()[1]
        for w in self.workers:
            w.core.register(token, port, self.now)
            w._flush()
        self.check()

    def send(self, client: str, data: bytes) -> None:
        sock = self.clients[client]
        for w in self.workers:
            sock.sendto(data, w.sock.getsockname())
            ready, _, _ = select.select([w.sock], [], [], TIMEOUT_S)
            assert ready, "the datagram did not reach the worker's socket"
            w.read()  # type: ignore[attr-defined]
        self.check()

    def send_many(self, datagrams: list[tuple[str, bytes]], ordered: bool = True) -> None:
        """Several datagrams queued before one read: the compiled loop gets them in one
        recvmmsg batch and sends its part with one sendmmsg. ``ordered=False``: each client
        gets the same deliveries, in any order (see ``test_a_batch_with_failing_sends``)."""
        self.ordered = ordered
        for w in self.workers:
            for client, data in datagrams:
                self.clients[client].sendto(data, w.sock.getsockname())
            ready, _, _ = select.select([w.sock], [], [], TIMEOUT_S)
            assert ready, "the datagrams did not reach the worker's socket"
            w.read()  # type: ignore[attr-defined]
        self.check()

    def chat(self, client: str, room: bytes, token: bytes, message: bytes) -> None:
        self.send(client, bytes((len(room), len(token))) + room + token + message)

    def deliveries(self) -> list[dict[str, list[bytes]]]:
        """What each worker sent to each client since the last call."""
        ports = [w.sock.getsockname() for w in self.workers]
        out: list[dict[str, list[bytes]]] = [{}, {}]
        for name, sock in self.clients.items():
            while True:
                try:
                    data, src = sock.recvfrom(65536)
                except BlockingIOError:
                    break
                out[ports.index(src)].setdefault(name, []).append(data)
        return out

    def check(self) -> None:
        py, c = self.deliveries()
        if not getattr(self, "ordered", True):
            self.ordered = True
            py = {k: sorted(v) for k, v in py.items()}
            c = {k: sorted(v) for k, v in c.items()}
        assert c == py, f"the compiled loop delivered differently: {c!r}, python {py!r}"
        self.last = py
        a, b = (w.core for w in self.workers)
        sa, sb = state(a), state(b)
        assert sb == sa, f"the compiled loop left a different state: {sb!r}, python {sa!r}"
        ea, eb = (w.events_seen for w in self.workers)  # type: ignore[attr-defined]
        assert eb == ea, f"the compiled loop's events: {eb!r}, python {ea!r}"

    def close(self) -> None:
        for w in self.workers:
            w.sock.close()
        for sock in self.clients.values():
            sock.close()
        for loop in self.loops:
            loop.close()


def state(core: RelayCore) -> object:
    members = {token: (m.username, m.addr, m.trial, m.muted, m.allowance, m.stamp,
                       m.last_seen, m.mac_top, m.mac_seen,
                       m.rel and (m.rel.top, m.rel.top_seq, m.rel.start, m.rel.nack_due,
                                  m.rel.held, m.rel.held_at))
               for token, m in core.tokens.items()}
    # Held ACKs still listed: an entry an undo of the compiled loop left is skipped (the
    # same chat, taken again by Python, lists it again).
    assert len(core.held) == len(core.held_times)
    held = sorted({(m.token, t) for m, t in zip(core.held, core.held_times, strict=True)
                   if m.rel is not None and m.rel.held is not None and m.rel.held_at == t})
    rooms = {name: (sorted(r.members), r.plain_addrs, r.framed_addrs, r.reliable_addrs,
                    sorted(r.by_name),
                    r.history and (r.history.epoch, r.history.next_seq, list(r.history.entries),
                                   r.history.bytes, r.history.now))
             for name, r in core.rooms.items()}
    return (core.received, core.relayed, dict(core.drops), dict(core.evictions),
            core.send_failures, dict(core.failing), dict(core.unproven), members, rooms,
            dict(core.addressed), dict(core.rekeys), core.history_budget.used, held)


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


TA, TB, TC, TD = (b"T" + bytes([c]) * 20 for c in b"abcd")
KEY = bytes(range(1, 33))  # a datagram key (wire/dgmac.py)


def plain_room(p: Pair) -> None:
    p.add("r", TA, "alice", host=True)
    p.add("r", TB, "bob")
    p.add("r", TC, "carol", framing=Framing.OCM1)
    p.add("r", TD, "dave", framing=Framing.OCM1)
    for name, token in (("a", TA), ("b", TB), ("c", TC), ("d", TD)):
        p.client(name)
        p.chat(name, b"r", token, b"")  # the first datagram binds


def test_ordinary_chat_is_relayed_by_the_compiled_loop_alike(pair: Pair) -> None:
    plain_room(pair)
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    pair.chat("a", b"r", TA, b"hello")
    assert pair.last == {"b": [b"alice: hello"], "c": [b"\x05alicehello"],
                         "d": [b"\x05alicehello"]}
    pair.chat("c", b"r", TC, "こんにちは 👋".encode())
    pair.now += 1.0
    pair.chat("b", b"r", TB, b"x" * 1000)
    assert compiled.counters()["fast"] == before + 3


def test_a_numbered_room_is_numbered_by_the_compiled_loop_alike(pair: Pair) -> None:
    """ocm1r (protocol.md §9): the compiled loop numbers a numbered room's chat itself, from
    any sender, and takes an ocm1r member's SEND with the next id (sealed or not): the ACK
    to the sender, the numbered datagram to the ocm1r members, the same history. Copies,
    gaps, NACKs and keepalives stay Python's; the same bytes out and the same state."""
    te, tf = b"Te" + bytes(20), b"Tf" + bytes(20)
    for w in pair.workers:
        w.core.new_epoch = lambda: 0x1234ABCD
    pair.add("r", TA, "alice", host=True, framing=Framing.OCM1R)
    pair.add("r", TB, "bob", framing=Framing.OCM1R, mac_key=KEY)
    pair.add("r", TC, "carol")
    pair.add("r", TD, "dave", framing=Framing.OCM1)
    pair.add("p", te, "erin", host=True)
    pair.add("p", tf, "frank")
    for name, token in (("a", TA), ("c", TC), ("d", TD)):
        pair.client(name)
        pair.chat(name, b"r", token, b"")
    pair.client("b")
    pair.send("b", dgmac.seal(KEY, raw(b"r", TB, b""), 1))
    for name, room, token in (("e", b"p", te), ("f", b"p", tf)):
        pair.client(name)
        pair.chat(name, room, token, b"")
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    pair.chat("a", b"r", TA, encode_send(1, b"hi"))
    assert pair.last == {"a": [encode_ack(0x1234ABCD, 1, 5)],
                         "b": [encode_data(0x1234ABCD, 5, b"\x05alicehi")],
                         "c": [b"alice: hi"], "d": [b"\x05alicehi"]}
    pair.chat("c", b"r", TC, b"plain")  # a plain sender in a numbered room
    assert pair.last["a"] == [encode_data(0x1234ABCD, 6, b"\x05carolplain")]
    pair.chat("d", b"r", TD, b"framed")  # an ocm1 sender in a numbered room
    assert pair.last["b"] == [encode_data(0x1234ABCD, 7, b"\x04daveframed")]
    pair.send("b", dgmac.seal(KEY, raw(b"r", TB, encode_send(1, b"/exit")), 2))  # sealed
    assert pair.last == {"b": [encode_ack(0x1234ABCD, 1, 8)],
                         "a": [encode_data(0x1234ABCD, 8, b"\x03bob/exit")],
                         "c": [b"bob: /exit"], "d": [b"\x03bob/exit"]}
    pair.chat("a", b"r", TA, encode_send(2, b"two"))
    assert compiled.counters()["fast"] == before + 5
    pair.chat("a", b"r", TA, encode_send(2, b"two"))  # a copy: acknowledged again
    pair.chat("a", b"r", TA, encode_send(9, b"gap"))  # out of order
    pair.send("b", dgmac.seal(KEY, raw(b"r", TB, encode_send(2, b"x")), 2))  # a replay
    pair.send("b", dgmac.seal(bytes(32), raw(b"r", TB, encode_send(2, b"x")), 3))  # bad tag
    pair.chat("a", b"r", TA, b"\x01\x00\x00\x00\x03")  # a SEND without text
    pair.chat("a", b"r", TA, b"no id")  # an ocm1r member's datagram that is not a SEND
    pair.chat("b", b"r", TB, encode_nack(0x1234ABCD, [(5, 3)]))  # unsealed: refused
    pair.send("b", dgmac.seal(KEY, raw(b"r", TB, encode_nack(0x1234ABCD, [(5, 3)])), 4))
    assert len(pair.last["b"]) == 3  # resends
    pair.chat("a", b"r", TA, b"")  # keepalive: SYNC
    assert compiled.counters()["fast"] == before + 5
    pair.chat("e", b"p", te, b"fast")  # an unnumbered room: the compiled loop's as ever
    assert compiled.counters()["fast"] == before + 6
    for w in pair.workers:
        rel = w.core.tokens[TA].rel
        assert rel is not None and (rel.top, rel.top_seq) == (2, 9)
        history = w.core.rooms["r"].history
        assert history is not None and history.next_seq == 11  # and "no id": 10


def numbered_room(pair: Pair, epoch: int) -> None:
    """Room "r" with ``epoch``: alice (host) and bob ocm1r, carol plain, all bound."""
    for w in pair.workers:
        w.core.new_epoch = lambda: epoch
    pair.add("r", TA, "alice", host=True, framing=Framing.OCM1R)
    pair.add("r", TB, "bob", framing=Framing.OCM1R)
    pair.add("r", TC, "carol")
    for name, token in (("a", TA), ("b", TB), ("c", TC)):
        pair.client(name)
        pair.chat(name, b"r", token, b"")


def room_with_a_failing_member(pair: Pair) -> None:
    """``numbered_room`` (epoch 0x0BADCAFE) and frank, an ocm1r member whose every send
    fails (port 0: EINVAL), re-seeded as proven."""
    numbered_room(pair, 0x0BADCAFE)
    pair.add("r", b"Tf" * 10, "frank", framing=Framing.OCM1R, addr=("127.0.0.1", 0),
             proven=True)


def test_a_held_ack_rides_on_the_senders_next_data_in_the_compiled_loop_alike(
        pair: Pair) -> None:
    """A 06 SEND (protocol.md §9.3): no ACK now; the next numbered datagram to the sender
    carries it (06 MsgId Seq in front), or, where both would be over the delivery limit,
    the ACK goes alone just before it; an 01 SEND's ACK covers a held one; one held past
    ACK_HOLD_S goes alone at the worker's tick. Both loops alike, the compiled one
    taking every SEND here."""
    epoch = 0x1234ABCD
    numbered_room(pair, epoch)
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    pair.chat("a", b"r", TA, encode_send(1, b"hi", held=True))
    assert pair.last == {"b": [encode_data(epoch, 4, b"\x05alicehi")], "c": [b"alice: hi"]}
    pair.chat("b", b"r", TB, encode_send(1, b"yo"))  # carries alice's ACK
    assert pair.last == {"a": [encode_carried(1, 4, encode_data(epoch, 5, b"\x03bobyo"))],
                         "b": [encode_ack(epoch, 1, 5)], "c": [b"bob: yo"]}
    pair.chat("c", b"r", TC, b"plain")  # nothing held any more
    assert pair.last["a"] == [encode_data(epoch, 6, b"\x05carolplain")]
    pair.chat("a", b"r", TA, encode_send(2, b"two", held=True))
    pair.chat("a", b"r", TA, encode_send(3, b"three"))  # its ACK covers the held one
    assert pair.last["a"] == [encode_ack(epoch, 3, 8)]
    pair.now += 1.0  # a refilled bucket (the workers' burst is small)
    pair.chat("a", b"r", TA, encode_send(4, b"four", held=True))
    longest = b"x" * (MAX_DATAGRAM_BYTES - 2 - 1 - len(TC))  # 9 + 6 + it: > limit - 9
    pair.chat("c", b"r", TC, longest)
    assert pair.last["a"] == [encode_ack(epoch, 4, 9),
                              encode_data(epoch, 10, b"\x05carol" + longest)]
    assert compiled.counters()["fast"] == before + 7
    pair.chat("b", b"r", TB, encode_send(2, b"later", held=True))
    for w in pair.workers:  # the tick before and after ACK_HOLD_S
        w.core.release_held(pair.now + 0.05)
        w._flush()
    pair.check()
    assert pair.last == {}
    for w in pair.workers:
        w.core.release_held(pair.now + ACK_HOLD_S)
        w._flush()
    pair.check()
    assert pair.last == {"b": [encode_ack(epoch, 2, 11)]}


def test_a_held_ack_is_listed_without_an_object_the_collector_tracks(pair: Pair) -> None:
    """Each 06 SEND lists its sender in ``core.held`` for a tenth of a second. A (member,
    time) pair per SEND is an object the garbage collector tracks (it holds a member):
    those that outlived a young collection reached the oldest generation, whose full
    collections then paused a busy worker for 15-50 ms. Both loops list the member and
    the time in two lists instead, so nothing but the lists refers to the member."""
    numbered_room(pair, 0x0BADCAFE)
    pair.chat("a", b"r", TA, encode_send(1, b"hi", held=True))
    for w in pair.workers:
        core = w.core
        member = core.tokens[TA]
        assert core.held == [member] and len(core.held_times) == 1
        gc.collect()
        assert not [r for r in gc.get_referrers(member) if isinstance(r, tuple)]


def test_held_acks_of_an_undone_batch_are_held_again(pair: Pair) -> None:
    """A batch with a failing send: the datagrams after it are undone, the held ACKs
    their deliveries took and the ones their SENDs held included, then taken by Python:
    the same deliveries, history and held ACKs as datagram by datagram in Python."""
    room_with_a_failing_member(pair)
    pair.send_many([("a", raw(b"r", TA, encode_send(1, b"m0", held=True))),
                    ("b", raw(b"r", TB, encode_send(1, b"n0", held=True))),
                    ("a", raw(b"r", TA, encode_send(2, b"m1", held=True))),
                    ("c", raw(b"r", TC, b"o")),
                    ("b", raw(b"r", TB, encode_send(2, b"n1")))])
    assert "Tf" * 10 not in pair.workers[0].core.tokens
    assert any(d[0] == 6 for d in pair.last["a"] + pair.last["b"])  # some were carried


def test_the_compiled_loop_keeps_history_within_its_limits_alike(pair: Pair) -> None:
    """The compiled loop keeps each numbered chat as History.keep does: the oldest entries
    go for the count and the room's bytes; where the worker's budget is short, History.keep
    itself takes over (dropping other rooms' room to spare, or clearing). The same entries,
    byte counts and budget in both loops."""
    for w in pair.workers:
        w.core.new_epoch = lambda: 5
        budget = w.core.history_budget
        budget.max_messages = 4
        budget.max_bytes = 3 * (HISTORY_ENTRY_OVERHEAD_BYTES + 40)
    pair.add("r", TA, "alice", host=True, framing=Framing.OCM1R)
    pair.add("r", TB, "bob")
    pair.add("q", TC, "carol", host=True, framing=Framing.OCM1R)
    pair.add("q", TD, "dave")
    for name, token in (("a", TA), ("b", TB), ("c", TC), ("d", TD)):
        pair.client(name)
        pair.chat(name, b"r" if name in "ab" else b"q", token, b"")
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    for i in range(6):  # short ones: the count limit; long ones: the bytes limit
        pair.now += 1.0
        pair.chat("b", b"r", TB, b"m%d" % i if i < 3 else b"l" * 20 + b"%d" % i)
    history = pair.workers[1].core.rooms["r"].history
    assert history is not None and len(history.entries) == 3
    for w in pair.workers:  # the worker's budget: the next keep needs the other room's
        w.core.history_budget.worker_bytes = w.core.history_budget.used - 100
    pair.now += 1.0
    pair.chat("d", b"q", TD, b"x" * 30)
    pair.now += 1.0
    pair.chat("b", b"r", TB, b"y" * 30)
    assert compiled.counters()["fast"] == before + 8


def test_a_numbered_chat_too_long_for_its_number_is_pythons(pair: Pair) -> None:
    """A chat whose numbered datagram would be over the delivery limit uses up a Seq with
    nothing kept (History.skip): Python's, with the same outcome; one that fits is C's."""
    name = "d" * 40
    for w in pair.workers:
        w.core.new_epoch = lambda: 7
    pair.add("r", TA, "alice", host=True, framing=Framing.OCM1R)
    pair.add("r", TD, name, framing=Framing.OCM1)
    for client, token in (("a", TA), ("d", TD)):
        pair.client(client)
        pair.chat(client, b"r", token, b"")
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    fits = MAX_DELIVERY_BYTES - 9 - 1 - len(name)
    pair.chat("d", b"r", TD, b"y" * fits)
    assert pair.last == {"a": [encode_data(7, 3, b"\x28" + name.encode() + b"y" * fits)]}
    assert compiled.counters()["fast"] == before + 1
    pair.chat("d", b"r", TD, b"y" * (fits + 1))
    assert pair.last == {}
    assert compiled.counters()["fast"] == before + 1
    for w in pair.workers:
        history = w.core.rooms["r"].history
        assert history is not None
        assert [(seq, len(d)) for seq, _, d in history.entries][-2:] == [
            (3, MAX_DELIVERY_BYTES), (4, 0)]


def test_a_numbered_chat_with_no_recipient_is_kept(pair: Pair) -> None:
    """The only bound member of a numbered room chats: nothing is sent, but the chat is
    numbered and kept for the ocm1r member that binds later, as in Python."""
    for w in pair.workers:
        w.core.new_epoch = lambda: 3
    pair.add("r", TA, "alice", host=True)
    pair.add("r", TB, "bob", framing=Framing.OCM1R)
    pair.client("a")
    pair.chat("a", b"r", TA, b"")
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    pair.chat("a", b"r", TA, b"alone")
    assert pair.last == {}
    assert compiled.counters()["fast"] == before + 1
    history = pair.workers[1].core.rooms["r"].history
    assert history is not None and [d[9:] for _, _, d in history.entries][-1] == b"\x05alicealone"


def test_a_numbered_batch_with_failing_sends_is_undone_to_the_number(pair: Pair) -> None:
    """Numbered chats queued after a failed send are undone (the room's next Seq, the
    ocm1r sender's last id, nothing kept) and handed to Python, which numbers them again
    after the eviction's "left" notice took its own Seq: the same history, ACKs and
    deliveries as datagram by datagram in Python."""
    room_with_a_failing_member(pair)
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()
    pair.send_many([("a", raw(b"r", TA, encode_send(1 + i, b"m%d" % i))) for i in range(2)]
                   + [("b", raw(b"r", TB, encode_send(1 + i, b"n%d" % i))) for i in range(3)]
                   + [("c", raw(b"r", TC, b"o"))])
    after = compiled.counters()
    assert after["fast"] == before["fast"] + 1  # m0; the rest went through Python
    assert after["slow"] == before["slow"] + 5
    assert "Tf" * 10 not in pair.workers[0].core.tokens
    history = pair.workers[1].core.rooms["r"].history
    assert history is not None
    kept = [(seq, datagram[9:]) for seq, _, datagram in history.entries]
    assert [seq for seq, _ in kept] == list(range(1, 11))
    assert [body[:8] for _, body in kept[3:]] == [
        b"\x05alicem0", b"\x05alicem1", b"\x03bobn0", b'\x00{"event', b"\x03bobn1",
        b"\x03bobn2", b"\x05carolo"]
    assert b'"left","user":"frank"' in kept[6][1]
    assert pair.last["a"][:2] == [encode_ack(0x0BADCAFE, 1, 4), encode_ack(0x0BADCAFE, 2, 5)]
    assert pair.last["b"][4:6] == [encode_ack(0x0BADCAFE, 2, 8), encode_ack(0x0BADCAFE, 3, 9)]


def test_an_eviction_by_a_numbered_chats_sends_is_numbered_after_it(pair: Pair) -> None:
    """Three members share an address that fails every send: one numbered chat of C's
    fails three times there, and the eviction's "left" notices take the Seqs after the
    chat's, as in Python, where the chat was numbered and kept before its sends."""
    for w in pair.workers:
        w.core.new_epoch = lambda: 0x51
    pair.add("r", TA, "alice", host=True, framing=Framing.OCM1R)
    pair.add("r", TC, "carol")
    for name, token in (("a", TA), ("c", TC)):
        pair.client(name)
        pair.chat(name, b"r", token, b"")
    for i, framing in enumerate((Framing.PLAIN, Framing.OCM1, Framing.OCM1R)):
        pair.add("r", f"Tz{i}".encode() * 7, f"z{i}", framing=framing, addr=("127.0.0.1", 0),
                 proven=True)
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    pair.chat("a", b"r", TA, encode_send(1, b"hi"))
    assert compiled.counters()["fast"] == before + 1
    assert pair.workers[1].core.evictions["send_failures"] == 3
    history = pair.workers[1].core.rooms["r"].history
    assert history is not None
    assert [(seq, d[9:12]) for seq, _, d in history.entries][2:] == [
        (3, b"\x05al"), (4, b'\x00{"'), (5, b'\x00{"'), (6, b'\x00{"')]


@pytest.mark.parametrize("message", [
    b"/exit", b" /EXIT\n", b"\t/Exit ", b"/exit please", b"a/b", b"\xe2\x80\x83/exit",
    b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"ok\xe3\x81", b"\x00",
    b"x" * 64 + b"/", b"/" + b"x" * 64,
])
def test_what_the_python_path_must_judge_is_judged_alike(pair: Pair, message: bytes) -> None:
    plain_room(pair)
    pair.chat("b", b"r", TB, message)
    pair.chat("a", b"r", TA, b"after")


def test_rate_limits_and_refills(pair: Pair) -> None:
    plain_room(pair)
    for i in range(6):  # burst 3, then rate-limited
        pair.chat("a", b"r", TA, b"m%d" % i)
    pair.now += 0.15  # 1.5 messages' worth
    for i in range(3):
        pair.chat("a", b"r", TA, b"n%d" % i)
    assert pair.workers[0].core.drops["rate_limited"] == 5


def test_over_long_deliveries_and_sizes(pair: Pair) -> None:
    plain_room(pair)
    head = len(encode_chat(b"r", TA, b""))
    for size in (4096 - head - 7, 4096 - head - 6, 4096 - head - 5, 4096 - head,
                 MAX_DATAGRAM_BYTES - head + 1, 6000):
        pair.now += 1.0
        pair.chat("a", b"r", TA, b"y" * size)


def test_wrong_token_room_ip_and_malformed(pair: Pair) -> None:
    plain_room(pair)
    pair.client("far", "127.0.0.2")
    pair.chat("a", b"r", b"nope", b"hi")
    pair.chat("a", b"other", TA, b"hi")
    pair.chat("far", b"r", TA, b"hi")
    pair.chat("b", b"r", TA, b"hi")  # alice's token from bob's port: moves alice here
    for data in (b"", b"\x00", b"\x01\x00r", b"\x00\x01T", b"\x05\x05r", b"\x01\x15r" + TA):
        pair.send("a", data)


def test_trial_and_failing_addresses(pair: Pair) -> None:
    plain_room(pair)
    pair.client("e")
    pair.add("r", b"Te" * 10, "erin")
    pair.register(b"Te" * 10, "e")  # bound by registration only: on trial
    for i in range(5):
        pair.chat("a", b"r", TA, b"while erin is on trial %d" % i)
        pair.now += 0.5
    pair.chat("e", b"r", b"Te" * 10, b"erin speaks")  # proven
    pair.chat("a", b"r", TA, b"after")
    pair.add("r", b"Tf" * 10, "frank", addr=("127.0.0.1", 0))  # every send fails: EINVAL
    for i in range(4):
        pair.now += 1.0
        pair.chat("b", b"r", TB, b"to a failing member %d" % i)
    assert "Tf" * 10 not in pair.workers[1].core.tokens


def test_membership_changes_rebuild_the_route(pair: Pair) -> None:
    plain_room(pair)
    pair.chat("a", b"r", TA, b"one")
    pair.chat("d", b"r", TD, b"/exit")
    pair.chat("a", b"r", TA, b"two")
    pair.add("r", b"Tg" * 10, "gina")
    pair.client("g")
    pair.chat("g", b"r", b"Tg" * 10, b"")
    pair.chat("a", b"r", TA, b"three")
    pair.chat("a", b"r", TA, b"/exit")  # the host leaves: the room closes
    pair.chat("b", b"r", TB, b"into a closed room")
    assert pair.workers[1]._routes == {}


def e2e_room(pair: Pair) -> list[tuple[bytes, str]]:
    """An encrypted room "sec" of xena (host), yuri and zoe, each bound from its client."""
    names = ("xena", "yuri", "zoe")
    users = [(b"E" + bytes([c]) * 20, name) for c, name in zip(b"xyz", names, strict=True)]
    for i, (token, name) in enumerate(users):
        pair.add("sec", token, name, host=i == 0, framing=Framing.OCM1, e2e=True)
        pair.client(name)
        pair.chat(name, b"sec", token, b"")
    return users


def test_encrypted_rooms(pair: Pair) -> None:
    users = e2e_room(pair)
    chat = encode_message(Kind.CHAT, b"\x01" + bytes(range(256)) * 2)
    pair.chat("xena", b"sec", users[0][0], chat)
    assert set(pair.last) == {"yuri", "zoe"}
    pair.chat("yuri", b"sec", users[1][0], encode_message(Kind.ENVELOPE, b"sealed", "zoe"))
    pair.chat("yuri", b"sec", users[1][0], encode_message(Kind.KEY_REQUEST, b"q", "xena"))
    pair.chat("yuri", b"sec", users[1][0], b"\x09bad kind")
    pair.chat("yuri", b"sec", users[1][0], b"\xff\xfe/exit")  # opaque: no UTF-8, no /exit
    pair.chat("zoe", b"sec", users[2][0], encode_message(Kind.LEAVE))
    pair.chat("xena", b"sec", users[0][0], chat)


def test_a_numbered_encrypted_room_is_numbered_by_the_compiled_loop_alike(pair: Pair) -> None:
    """An encrypted room with ocm1r members (what ocm-chat and ocm-gui ask for) is numbered
    by the compiled loop too (protocol.md §9.7): an ocm1r member's SEND of a chat Message
    with the next id (the ACK, the numbered datagram) and an ocm1 member's chat Message.
    Other kinds inside a SEND, copies, NACKs and keepalives stay Python's; both loops send
    the same bytes and end in the same state."""
    epoch = 0x1234ABCD
    for w in pair.workers:
        w.core.new_epoch = lambda: epoch
    members = (("xena", Framing.OCM1R), ("yuri", Framing.OCM1R), ("zoe", Framing.OCM1))
    tokens = {}
    for i, (name, framing) in enumerate(members):
        tokens[name] = b"N" + name[0].encode() * 20
        pair.add("sec", tokens[name], name, host=i == 0, framing=framing, e2e=True)
        pair.client(name)
        pair.chat(name, b"sec", tokens[name], b"")
    history = pair.workers[0].core.rooms["sec"].history
    assert history is not None
    compiled = pair.workers[1].hot
    assert compiled is not None
    before, seq = compiled.counters()["fast"], history.next_seq
    chat = encode_message(Kind.CHAT, b"\x01" + bytes(range(200)))
    pair.chat("xena", b"sec", tokens["xena"], encode_send(1, chat))
    assert pair.last == {"xena": [encode_ack(epoch, 1, seq)],
                         "yuri": [encode_data(epoch, seq, b"\x04xena" + chat)],
                         "zoe": [b"\x04xena" + chat]}
    pair.chat("zoe", b"sec", tokens["zoe"], chat)  # an ocm1 member: numbered for the others
    assert pair.last == {"xena": [encode_data(epoch, seq + 1, b"\x03zoe" + chat)],
                         "yuri": [encode_data(epoch, seq + 1, b"\x03zoe" + chat)]}
    assert compiled.counters()["fast"] == before + 2
    pair.chat("yuri", b"sec", tokens["yuri"],
              encode_send(1, encode_message(Kind.ENVELOPE, b"sealed", "zoe")))  # bad_kind
    pair.chat("xena", b"sec", tokens["xena"], encode_send(1, chat))  # a copy: ACK again
    pair.chat("yuri", b"sec", tokens["yuri"], encode_nack(epoch, [(seq, 2)], Up.E2E_NACK))
    assert len(pair.last["yuri"]) == 2  # resends
    pair.chat("yuri", b"sec", tokens["yuri"], b"")  # keepalive: SYNC
    assert compiled.counters()["fast"] == before + 2
    pair.chat("yuri", b"sec", tokens["yuri"], encode_send(1, chat))
    assert compiled.counters()["fast"] == before + 3
    for w in pair.workers:
        numbered = w.core.rooms["sec"].history
        assert numbered is not None and numbered.next_seq == seq + 3


def test_random_traffic(pair: Pair) -> None:
    """Seeded random datagrams from members and strangers: every step compared."""
    plain_room(pair)
    rng = random.Random(16)
    tokens = [("a", TA), ("b", TB), ("c", TC), ("d", TD)]
    pieces = [b"hi", b"/exit", b"\xff", "ü".encode(), b" ", b"x" * 300, b"/", b""]
    for _ in range(300):
        name, token = rng.choice(tokens)
        if token not in pair.workers[0].core.tokens:
            continue
        message = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
        if rng.random() < 0.1:
            token = rng.choice([b"zz", TA, TB])
        pair.now += rng.choice([0.0, 0.01, 0.3])
        pair.chat(name, b"r" if rng.random() > 0.05 else b"q", token, message)


def raw(room: bytes, token: bytes, message: bytes) -> bytes:
    return bytes((len(room), len(token))) + room + token + message


def test_a_batch_keeps_the_order_of_every_send(pair: Pair) -> None:
    """Chat relayed in C, then a datagram Python must take (/exit, a notice), then chat:
    every client gets them in the order they were sent."""
    plain_room(pair)
    pair.send_many([("a", raw(b"r", TA, b"one")), ("b", raw(b"r", TB, b"two")),
                    ("c", raw(b"r", TC, b"\xff")), ("d", raw(b"r", TD, b"/exit")),
                    ("a", raw(b"r", TA, b"three")), ("b", raw(b"r", TB, b"four"))])
    left = "dave がチャットルームから退出しました".encode()
    assert pair.last["b"] == [b"alice: one", left, b"alice: three"]
    assert pair.last["c"] == [
        b"\x05aliceone", b"\x03bobtwo",
        b'\x00{"event":"left","user":"dave","reason":"exit","text":"dave left the room"}',
        b"\x05alicethree", b"\x03bobfour"]


def test_a_batch_with_failing_sends(pair: Pair) -> None:
    """The compiled loop learns of a batch's failed sends when it flushes them: the first
    failure ends the flush with its datagram, and the datagrams queued after it are undone
    and handed to Python, so deliveries, notices and their order are Python's exactly."""
    plain_room(pair)
    # every send to port 0 fails (EINVAL); proven, as a re-seeded member: not on trial
    pair.add("r", b"Tf" * 10, "frank", addr=("127.0.0.1", 0), proven=True)
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()
    pair.send_many([("a", raw(b"r", TA, b"m%d" % i)) for i in range(2)]
                   + [("b", raw(b"r", TB, b"n%d" % i)) for i in range(3)])
    after = compiled.counters()
    assert after["fast"] == before["fast"] + 1  # m0; the rest went through Python
    assert after["slow"] == before["slow"] + 4
    assert "Tf" * 10 not in pair.workers[0].core.tokens
    # the third failed send (n0's) evicts frank: the notice comes before n1, as in Python
    assert [d[:30] for d in pair.last["c"]] == [
        b"\x05alicem0", b"\x05alicem1", b"\x03bobn0", b'\x00{"event":"left","user":"frank',
        b"\x03bobn1", b"\x03bobn2"]


def test_a_sender_gets_nothing_back_at_an_address_shared_across_formats(pair: Pair) -> None:
    """Carol (framed) bound at alice's (plain) address: alice's chat skips that address on
    both sides, as the Python path does, so nothing comes back to it."""
    plain_room(pair)
    pair.chat("a", b"r", TC, b"")  # carol's token from alice's socket: carol moves there
    pair.chat("a", b"r", TA, b"hello")
    assert pair.last == {"b": [b"alice: hello"], "d": [b"\x05alicehello"]}
    pair.chat("a", b"r", TC, b"hi")  # and carol's chat skips the plain side there too
    assert pair.last == {"b": [b"carol: hi"], "d": [b"\x05carolhi"]}


def test_a_flush_that_closes_the_room_stops_the_rest_of_the_batch(pair: Pair) -> None:
    """The host's address fails every send: the third failed send evicts it and closes the
    room in the middle of a batch. The chat after that point is not relayed (its tokens
    are dead), exactly as datagram by datagram in Python, notices in the same order."""
    pair.add("r", TA, "alice", host=True, addr=("127.0.0.1", 0), proven=True)
    # re-seeded (bound, announced): no "joined" notice fails towards alice beforehand
    pair.add("r", TB, "bob", addr=pair.client("b").getsockname(), proven=True)
    pair.add("r", TC, "carol", framing=Framing.OCM1, addr=pair.client("c").getsockname(),
             proven=True)
    assert not pair.workers[1].core.failing
    pair.send_many([(name, raw(b"r", token, b"%s%d" % (name.encode(), i)))
                    for i in range(3) for name, token in (("b", TB), ("c", TC))])
    assert pair.last["c"][:2] == [b"\x03bobb0", b"\x03bobb1"]
    assert pair.last["b"][:2] == [b"carol: c0", "チャットルームが閉じられました".encode()]
    assert len(pair.last["c"]) == 3  # then "closed"
    assert pair.workers[1].core.rooms == {}
    assert pair.workers[1].core.drops["unknown_token"] == 3


def test_notices_of_an_eviction_by_the_python_paths_sends_come_before_the_next_chat(
        pair: Pair) -> None:
    """Dave's /exit (Python's) sends "left" to frank, whose third failed send evicts him:
    frank's own "left" notice goes out before alice's next chat, which C could relay
    (no address is failing any more), as datagram by datagram in Python."""
    plain_room(pair)
    pair.add("r", b"Tf" * 10, "frank", addr=("127.0.0.1", 0), proven=True)
    pair.chat("a", b"r", TA, b"one")  # frank's address fails once, then twice
    pair.chat("a", b"r", TA, b"two")
    assert pair.workers[1].core.failing == {("127.0.0.1", 0): 2}
    pair.now += 1.0
    pair.send_many([("d", raw(b"r", TD, b"/exit")), ("a", raw(b"r", TA, b"three"))])
    assert pair.last["b"] == ["dave がチャットルームから退出しました".encode(),
                              "frank がチャットルームから退出しました".encode(), b"alice: three"]


def test_notices_left_by_a_flush_outside_the_loop_come_before_the_next_chat(
        pair: Pair) -> None:
    """A flush outside the reader (a timer's, or the one after a batch) whose send failed
    can evict and leave the eviction's notices in the outbox: the Python path sends them
    before the next datagram's deliveries, so the compiled loop hands that datagram over."""
    plain_room(pair)
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    notice = "frank がチャットルームから退出しました".encode()
    for w in pair.workers:
        w.core.outbox.append((notice, pair.clients["b"].getsockname()))
    pair.chat("a", b"r", TA, b"hello")
    assert pair.last["b"] == [notice, b"alice: hello"]
    assert compiled.counters()["fast"] == before
    pair.chat("a", b"r", TA, b"again")  # and the loop takes the next one again
    assert compiled.counters()["fast"] == before + 1


def test_addressed_kinds_have_their_own_token_bucket_in_both_loops(pair: Pair) -> None:
    """3,000 envelopes and 3,000 key requests in 2 s from one member: at most
    ``ADDRESSED_BURST + ADDRESSED_RATE * t`` of them are delivered (docs/security.md), by
    both loops alike; the compiled loop hands every addressed datagram to Python."""
    users = e2e_room(pair)
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()
    token = users[1][0]
    sent = delivered = 0
    start = pair.now
    for step in range(60):  # 100 datagrams per read, 1/30 s apart: 6,000 in 2 s
        batch = []
        for i in range(50):
            batch.append(("yuri", raw(b"sec", token, encode_message(
                Kind.ENVELOPE, b"e%d" % i, "zoe" if i % 2 else "xena"))))
            batch.append(("yuri", raw(b"sec", token, encode_message(
                Kind.KEY_REQUEST, b"q%d" % i, "xena" if i % 2 else "zoe"))))
        pair.send_many(batch)
        sent += len(batch)
        delivered += sum(len(v) for v in pair.last.values())
        pair.now = start + 2.0 * (step + 1) / 60
    assert sent == 6000
    bound = ADDRESSED_BURST + ADDRESSED_RATE * (pair.now - start)
    assert 0 < delivered <= bound
    assert pair.workers[0].core.drops["rate_limited"] == sent - delivered
    after = compiled.counters()
    assert after["fast"] == before["fast"]
    assert after["slow"] == before["slow"] + sent
    # the bucket is the addressed kinds' own: chat still goes through, in C
    pair.chat("yuri", b"sec", token, encode_message(Kind.CHAT, b"still chatting"))
    assert set(pair.last) == {"xena", "zoe"}
    assert compiled.counters()["fast"] == after["fast"] + 1


def test_the_utf8_check_is_pythons() -> None:
    utf8_valid = _extension().utf8_valid
    rng = random.Random(8)
    samples = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 12)))
               for _ in range(20000)]
    samples += [bytes([a, b, c]) for a in (0xE0, 0xED, 0xEF) for b in range(0x80, 0xC0, 7)
                for c in (0x80, 0xBF)]
    samples += [bytes([0xF0 + a, b, 0x80, 0x80]) for a in range(6) for b in range(0x80, 0xC0, 5)]
    samples += ["日本語 emoji 👋 ok".encode() * 5, b"a" * 17 + b"\xff", b"a" * 16]
    for data in samples:
        try:
            data.decode()
        except UnicodeDecodeError:
            expected = False
        else:
            expected = True
        assert utf8_valid(data) is expected, data


def test_choose() -> None:
    assert hot.choose("python")[0] is None
    module, why = hot.choose("auto")
    assert module is not None and why.startswith("compiled")
    with pytest.raises(ValueError):
        hot.choose("fast")


def test_auto_honours_ocm_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCM_PURE_PYTHON", "1")
    module, why = hot.choose("auto")
    assert module is None and "OCM_PURE_PYTHON" in why
    assert hot.choose("compiled")[0] is not None
