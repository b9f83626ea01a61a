"""The compiled hot loop against the pure-Python one for members with a datagram key
(wire/dgmac.py): the same deliveries, core state and replay windows after every datagram,
with the compiled loop relaying sealed chat itself (a ``Seq`` above the window, the tag
verified by OpenSSL's BLAKE2SMAC) and handing everything else to Python: a late ``Seq``, a
replay, a wrong tag, a missing trailer, a keepalive, and the datagrams of a batch undone
after a failed send."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.unit.test_relay_hot import Pair, raw
from wire import dgmac
from wire.codes import Framing
from wire.e2e import Kind, PublicKeys, encode_message

KA, KB = bytes(range(32)), bytes(range(1, 33))
TA, TB, TC = (b"S" + bytes([c]) * 20 for c in b"abc")


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def add(p: Pair, token: bytes, user: str, key: bytes | None, host: bool = False,
        e2e: bool = False, room: str = "r",
        addr: tuple[str, int] | None = None) -> None:
    keys = PublicKeys(bytes(32), bytes(32)) if e2e else None
    framing = Framing.OCM1 if e2e or user == "carol" else Framing.PLAIN
    for w in p.workers:
        assert w.core.add_member(room, token, user, "127.0.0.1", framing, host, p.now, addr,
                                 addr is not None, addr is not None, e2e=e2e, keys=keys,
                                 mac_key=key)
        w._flush()
    p.check()


def windows(p: Pair) -> list[dict[bytes, tuple[int, int]]]:
    return [{t: (m.mac_top, m.mac_seen) for t, m in w.core.tokens.items()} for w in p.workers]


def send(p: Pair, client: str, data: bytes) -> None:
    p.send(client, data)
    py, c = windows(p)
    assert c == py, f"replay windows differ: compiled {c!r}, python {py!r}"


def sealed_room(p: Pair, e2e: bool = False) -> None:
    """alice (host) and bob with keys, carol (ocm1) without; all bound."""
    add(p, TA, "alice", KA, host=True, e2e=e2e)
    add(p, TB, "bob", KB, e2e=e2e)
    add(p, TC, "carol", None, e2e=e2e)
    room = b"r"
    for name, token, key in (("a", TA, KA), ("b", TB, KB), ("c", TC, None)):
        p.client(name)
        hello = raw(room, token, b"")
        send(p, name, dgmac.seal(key, hello, 1) if key else hello)


def fast(p: Pair) -> int:
    compiled = p.workers[1].hot
    assert compiled is not None
    return int(compiled.counters()["fast"])


def test_sealed_chat_is_relayed_in_c_alike(pair: Pair) -> None:
    sealed_room(pair)
    before = fast(pair)
    send(pair, "a", dgmac.seal(KA, raw(b"r", TA, b"hello"), 2))
    assert pair.last == {"b": [b"alice: hello"], "c": [b"\x05alicehello"]}
    send(pair, "b", dgmac.seal(KB, raw(b"r", TB, b"x" * 1000), 200))  # a jump past 64
    send(pair, "c", raw(b"r", TC, b"unsealed member"))
    assert fast(pair) == before + 3


def test_what_python_must_judge_is_judged_alike(pair: Pair) -> None:
    sealed_room(pair)
    before = fast(pair)
    chat = raw(b"r", TA, b"hi")
    send(pair, "a", dgmac.seal(KA, chat, 10))       # C
    send(pair, "a", dgmac.seal(KA, chat, 7))        # late, inside the window: Python
    send(pair, "a", dgmac.seal(KA, chat, 7))        # replayed
    send(pair, "a", dgmac.seal(KA, chat, 10))       # replayed (the top)
    send(pair, "a", dgmac.seal(KB, chat, 11))       # wrong key
    send(pair, "a", chat)                           # no trailer
    send(pair, "a", dgmac.seal(KA, chat, 11)[:-1] + b"\x00")  # tag cut and changed
    send(pair, "a", dgmac.seal(KA, raw(b"r", TA, b""), 12))  # sealed keepalive
    send(pair, "a", dgmac.seal(KA, raw(b"r", TA, b"\xff"), 13))  # bad UTF-8 after the seal
    send(pair, "a", dgmac.seal(KA, chat, 14))       # C again
    core = pair.workers[0].core
    assert (core.drops["replayed"], core.drops["bad_mac"], core.drops["bad_utf8"]) == (2, 3, 1)
    assert fast(pair) == before + 2
    send(pair, "b", dgmac.seal(KB, raw(b"r", TB, b"/exit"), 2))
    assert TB not in core.tokens


def test_random_sealed_traffic(pair: Pair) -> None:
    sealed_room(pair)
    rng = random.Random(21)
    seqs = {TA: 1, TB: 1}
    keys = {TA: KA, TB: KB}
    for _ in range(200):
        name, token = rng.choice([("a", TA), ("b", TB)])
        message = rng.choice([b"hi", b"\xff", b"x" * 200, b"", "ü".encode()])
        seq = seqs[token] + rng.choice([1, 1, 1, 2, 70, 0, -1, -5, -80])
        seqs[token] = max(seqs[token], seq)
        key = keys[token] if rng.random() > 0.1 else bytes(32)
        pair.now += rng.choice([0.0, 0.01, 0.3])
        send(pair, name, dgmac.seal(key, raw(b"r", token, message), max(seq, 0)))


def test_encrypted_room_sealed_chat_and_leave(pair: Pair) -> None:
    sealed_room(pair, e2e=True)
    before = fast(pair)
    chat = encode_message(Kind.CHAT, b"\x01" + bytes(range(256)))
    send(pair, "a", dgmac.seal(KA, raw(b"r", TA, chat), 2))
    assert set(pair.last) == {"b", "c"} and pair.last["b"] == [b"\x05alice" + chat]
    send(pair, "b", raw(b"r", TB, encode_message(Kind.LEAVE)))  # forged: unsealed
    send(pair, "b", dgmac.seal(KB, raw(b"r", TB, encode_message(Kind.LEAVE)), 2))
    assert fast(pair) == before + 1
    assert TB not in pair.workers[0].core.tokens


def test_a_batch_with_failing_sends_undoes_the_replay_window(pair: Pair) -> None:
    """Sealed datagrams queued after a failed send are undone, their replay window with
    them, and handed to Python, which then accepts them as fresh: as the Python loop did."""
    sealed_room(pair)
    add(pair, b"Sf" * 10, "frank", None, addr=("127.0.0.1", 0))  # every send fails
    before = fast(pair)
    pair.send_many([("a", dgmac.seal(KA, raw(b"r", TA, b"m%d" % i), 2 + i)) for i in range(2)]
                   + [("b", dgmac.seal(KB, raw(b"r", TB, b"n%d" % i), 2 + i))
                      for i in range(3)])
    py, c = windows(pair)
    assert c == py and py[TA] == (3, 0b111) and py[TB] == (4, 0b1111)
    assert fast(pair) == before + 1
    assert pair.workers[0].core.drops["replayed"] == 0
