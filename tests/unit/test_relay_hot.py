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
import random
import select
import socket
from collections.abc import Iterator

import pytest

from relay import hot
from relay.core import RelayCore
from relay.ipc import WorkerSettings
from relay.worker import Worker
from wire.chat import encode_chat
from wire.codes import Framing
from wire.e2e import Kind, PublicKeys, encode_message
from wire.limits import MAX_DATAGRAM_BYTES
from wire.reliable import encode_ack, encode_data, encode_nack, encode_send

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
            worker._send = worker.events_seen.append  # type: ignore[attr-defined,method-assign]
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
            addr: tuple[str, int] | None = None, proven: bool = False) -> None:
        keys = PublicKeys(bytes(32), bytes(32)) if e2e else None
        for w in self.workers:
            assert w.core.add_member(room, token, user, "127.0.0.1", framing, host, self.now,
                                     addr, proven, proven, e2e=e2e, keys=keys)
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
        assert c == py, "the compiled loop delivered differently"
        self.last = py
        a, b = (w.core for w in self.workers)
        assert state(b) == state(a), "the compiled loop left a different state"
        ea, eb = (w.events_seen for w in self.workers)  # type: ignore[attr-defined]
        assert eb == ea

    def close(self) -> None:
        for w in self.workers:
            w.sock.close()
        for sock in self.clients.values():
            sock.close()
        for loop in self.loops:
            loop.close()


def state(core: RelayCore) -> object:
    members = {token: (m.username, m.addr, m.trial, m.muted, m.allowance, m.stamp,
                       m.last_seen, m.failures, m.alive)
               for token, m in core.tokens.items()}
    rooms = {name: (sorted(r.members), r.plain_addrs, r.framed_addrs)
             for name, r in core.rooms.items()}
    return (core.received, core.relayed, dict(core.drops), dict(core.evictions),
            core.send_failures, dict(core.failing), dict(core.unproven), members, rooms)


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


TA, TB, TC, TD = (b"T" + bytes([c]) * 20 for c in b"abcd")


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
    """ocm1r (protocol.md §8): the compiled loop numbers chat through history.number(),
    sends the numbered datagram to the ocm1r members and the ACK to an ocm1r sender, and
    leaves copies, gaps, NACKs and keepalives to Python, with the same bytes out."""
    for w in pair.workers:
        w.core.new_epoch = lambda: 0x1234ABCD
    pair.add("r", TA, "alice", host=True, framing=Framing.OCM1R)
    pair.add("r", TB, "bob", framing=Framing.OCM1R)
    pair.add("r", TC, "carol")
    pair.add("r", TD, "dave", framing=Framing.OCM1)
    for name, token in (("a", TA), ("b", TB), ("c", TC), ("d", TD)):
        pair.client(name)
        pair.chat(name, b"r", token, b"")
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    pair.chat("a", b"r", TA, encode_send(1, b"hi"))
    assert pair.last == {"a": [encode_ack(0x1234ABCD, 1, 5)],
                         "b": [encode_data(0x1234ABCD, 5, b"\x05alicehi")],
                         "c": [b"alice: hi"], "d": [b"\x05alicehi"]}
    pair.chat("c", b"r", TC, b"plain")  # a plain sender in a numbered room
    assert pair.last["a"] == [encode_data(0x1234ABCD, 6, b"\x05carolplain")]
    pair.chat("a", b"r", TA, encode_send(2, b"two"))
    assert compiled.counters()["fast"] == before + 3
    pair.chat("a", b"r", TA, encode_send(2, b"two"))  # a copy: Python acknowledges again
    pair.chat("a", b"r", TA, encode_send(9, b"gap"))  # out of order: Python
    pair.chat("b", b"r", TB, encode_nack(0x1234ABCD, [(5, 3)]))  # Python resends
    assert len(pair.last["b"]) == 3
    pair.chat("b", b"r", TB, b"")  # keepalive: SYNC from Python
    assert compiled.counters()["fast"] == before + 3
    for w in pair.workers:
        rel = w.core.tokens[TA].rel
        assert rel is not None and (rel.top, rel.top_seq) == (2, 7)


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


def test_encrypted_rooms(pair: Pair) -> None:
    names = ("xena", "yuri", "zoe")
    users = [(b"E" + bytes([c]) * 20, name) for c, name in zip(b"xyz", names, strict=True)]
    for i, (token, name) in enumerate(users):
        pair.add("sec", token, name, host=i == 0, framing=Framing.OCM1, e2e=True)
        pair.client(name)
        pair.chat(name, b"sec", token, b"")
    chat = encode_message(Kind.CHAT, b"\x01" + bytes(range(256)) * 2)
    pair.chat("xena", b"sec", users[0][0], chat)
    assert set(pair.last) == {"yuri", "zoe"}
    pair.chat("yuri", b"sec", users[1][0], encode_message(Kind.ENVELOPE, b"sealed", "zoe"))
    pair.chat("yuri", b"sec", users[1][0], encode_message(Kind.KEY_REQUEST, b"q", "xena"))
    pair.chat("yuri", b"sec", users[1][0], b"\x09bad kind")
    pair.chat("yuri", b"sec", users[1][0], b"\xff\xfe/exit")  # opaque: no UTF-8, no /exit
    pair.chat("zoe", b"sec", users[2][0], encode_message(Kind.LEAVE))
    pair.chat("xena", b"sec", users[0][0], chat)


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
    assert pair.last["b"] == [b"alice: one", b"dave left (exit)".replace(b"dave left (exit)",
                              pair.last["b"][1]), b"alice: three"]
    assert len(pair.last["c"]) == 5


def test_a_batch_with_failing_sends(pair: Pair) -> None:
    """The compiled loop learns of a batch's failed sends when it flushes them, so an
    eviction for send failures, and its notice, come after the chat of that batch rather
    than between two of its messages: the same deliveries and the same state, but the
    ``left`` notice may come later (docs/architecture.md)."""
    plain_room(pair)
    # every send to port 0 fails (EINVAL); proven, as a re-seeded member: not on trial
    pair.add("r", b"Tf" * 10, "frank", addr=("127.0.0.1", 0), proven=True)
    compiled = pair.workers[1].hot
    assert compiled is not None
    before = compiled.counters()["fast"]
    pair.send_many([("a", raw(b"r", TA, b"m%d" % i)) for i in range(2)]
                   + [("b", raw(b"r", TB, b"n%d" % i)) for i in range(3)], ordered=False)
    assert compiled.counters()["fast"] == before + 5
    assert "Tf" * 10 not in pair.workers[0].core.tokens


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
