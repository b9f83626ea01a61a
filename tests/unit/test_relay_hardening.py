"""The relay core's hardening without sockets: departed members freed at once,
registered-but-unproven addresses on a delivery budget, Stage 1 rate and address limits."""

from __future__ import annotations

import gc

from relay.core import DEADLINE_COMPACT_SLACK, Member, RelayCore
from wire.chat import encode_chat
from wire.codes import Framing
from wire.limits import UNPROVEN_MAX_DELIVERIES

IP = "127.0.0.1"
TA, TB = b"A" + b"a" * 32, b"A" + b"b" * 32


def _members_with(token: bytes) -> list[Member]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, Member) and o.token == token]


# --- departed members (memory) -------------------------------------------------------------
def test_a_departed_member_is_freed_before_its_deadline() -> None:
    core = RelayCore(inactivity_timeout=300.0)
    assert core.add_member("r", TA, "alice", IP, Framing.PLAIN, True, 0.0)
    assert core.add_member("r", TB, "bob", IP, Framing.PLAIN, False, 0.0)
    core.handle_datagram(encode_chat(b"r", TB, b"/exit"), (IP, 5002), 1.0)
    assert TB not in core.tokens
    assert _members_with(TB) == []  # the deadline heap does not keep bob (or his room)
    core.handle_datagram(encode_chat(b"r", TA, b"/exit"), (IP, 5001), 1.0)
    assert _members_with(TA) == [] and core.rooms == {}


def test_churn_cannot_grow_the_deadline_heap() -> None:
    core = RelayCore(inactivity_timeout=300.0)
    core.add_member("stay", TA, "alice", IP, Framing.PLAIN, True, 0.0)
    for i in range(20_000):
        token = b"A%032d" % i
        assert core.add_member(f"r{i}", token, "host", IP, Framing.PLAIN, True, float(i))
        core.handle_datagram(encode_chat(f"r{i}".encode(), token, b"/exit"), (IP, 6000), i)
    assert len(core.tokens) == 1
    assert len(core._deadlines) <= 2 * len(core.tokens) + DEADLINE_COMPACT_SLACK + 1
    # The one live member is still evicted on time.
    core.handle_timer(300.0)
    assert TA not in core.tokens


# --- registered addresses on trial ------------------------------------------------------------
def test_registered_addresses_share_a_budget_until_a_datagram_proves_them() -> None:
    core = RelayCore(chat_rate=1000.0, chat_burst=1000)
    victim = (IP, 7000)
    core.add_member("r", TA, "alice", IP, Framing.PLAIN, True, 0.0)
    core.handle_datagram(encode_chat(b"r", TA, b""), (IP, 5001), 0.0)  # alice: proven
    guests = [b"A%032d" % i for i in range(5)]
    for i, token in enumerate(guests):
        core.add_member("r", token, f"g{i}", IP, Framing.PLAIN, False, 0.0)
        core.register(token, victim[1], 0.0)  # all five on the victim's port, on trial
    assert core.unproven == {victim: UNPROVEN_MAX_DELIVERIES - 10}  # 0+1+2+3+4 joined
    delivered = 10
    for n in range(20):
        out = core.handle_datagram(encode_chat(b"r", TA, b"hi %d" % n), (IP, 5001), 1.0)
        assert out is not None
        delivered += sum(a == victim for a in out[1])
    assert delivered == UNPROVEN_MAX_DELIVERIES  # 22 of the 100 chat copies, then none
    assert core.drops["unproven"] > 0
    # A closing notice still goes out (it is the member's own, once).
    core.outbox.clear()
    core.handle_datagram(encode_chat(b"r", TA, b"/exit"), (IP, 5001), 2.0)
    assert [a for _, a in core.outbox].count(victim) == 5


def test_a_datagram_from_the_registered_port_proves_it() -> None:
    core = RelayCore(chat_rate=1000.0, chat_burst=1000)
    core.add_member("r", TA, "alice", IP, Framing.PLAIN, True, 0.0)
    core.handle_datagram(encode_chat(b"r", TA, b""), (IP, 5001), 0.0)
    core.add_member("r", TB, "bob", IP, Framing.PLAIN, False, 0.0)
    core.register(TB, 5002, 0.0)
    for _ in range(UNPROVEN_MAX_DELIVERIES + 5):
        core.handle_datagram(encode_chat(b"r", TA, b"x"), (IP, 5001), 1.0)
    out = core.handle_datagram(encode_chat(b"r", TA, b"x"), (IP, 5001), 1.0)
    assert out is not None and (IP, 5002) not in out[1]  # muted
    core.handle_datagram(encode_chat(b"r", TB, b""), (IP, 5002), 1.0)  # proof
    assert core.unproven == {}
    out = core.handle_datagram(encode_chat(b"r", TA, b"x"), (IP, 5001), 1.0)
    assert out is not None and (IP, 5002) in out[1]
    # Another member registering the proven address is not on trial.
    tc = b"A" + b"c" * 32
    core.add_member("r", tc, "carol", IP, Framing.PLAIN, False, 0.0)
    core.register(tc, 5002, 1.0)
    assert core.unproven == {} and core.tokens[tc].trial is False
