"""The relay core's hardening without sockets: departed members freed at once,
registered-but-unproven addresses on a delivery budget, Stage 1 rate and address limits."""

from __future__ import annotations

import gc
import secrets
import time

from relay.core import DEADLINE_COMPACT_SLACK, GlobalChat, Member, RelayCore
from relay.ipc import Bound
from wire.chat import encode_chat
from wire.codes import Framing
from wire.limits import UNPROVEN_MAX_DELIVERIES

IP = "127.0.0.1"
# Tokens of this module only: the gc-based checks below look members up by token, and
# members that other test modules leave alive (their cores, their workers) must not match.
TA, TB = b"A" + secrets.token_hex(16).encode(), b"A" + secrets.token_hex(16).encode()


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


def test_a_closed_room_and_its_members_are_freed_without_the_cyclic_gc() -> None:
    gc.collect()
    gc.disable()
    try:
        core = RelayCore(inactivity_timeout=300.0)
        assert core.add_member("r", TA, "alice", IP, Framing.PLAIN, True, 0.0)
        assert core.add_member("r", TB, "bob", IP, Framing.PLAIN, False, 0.0)
        core.register(TB, 5002, 0.0)  # on trial: in the room's trial list
        core.handle_datagram(encode_chat(b"r", TA, b"/exit"), (IP, 5001), 1.0)
        assert core.rooms == {}
        alive = [o for o in gc.get_objects() if isinstance(o, Member) and o.token in (TA, TB)]
        assert alive == []  # freed by reference counting: no cycle through the room
    finally:
        gc.enable()


def test_churn_cannot_grow_the_deadline_wheel() -> None:
    core = RelayCore(inactivity_timeout=300.0)
    core.add_member("stay", TA, "alice", IP, Framing.PLAIN, True, 0.0)
    for i in range(20_000):
        token = b"A%032d" % i
        assert core.add_member(f"r{i}", token, "host", IP, Framing.PLAIN, True, float(i))
        core.handle_datagram(encode_chat(f"r{i}".encode(), token, b"/exit"), (IP, 6000), i)
    assert len(core.tokens) == 1
    assert core._due_entries <= 2 * len(core.tokens) + DEADLINE_COMPACT_SLACK + 1
    assert core._due_entries == sum(map(len, core._due.values()))
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


# --- Stage 1 ----------------------------------------------------------------------------------
def test_stage1_caps_addresses_per_ip_and_chat_per_address() -> None:
    chat = GlobalChat(max_clients=1000, max_per_ip=3, rate=2.0, burst=5)
    for port in range(1, 6):
        chat.handle_datagram(b"\x01z", ("127.0.0.2", port), 0.0)
    assert len(chat.clients) == 3 and chat.drops["too_many_per_ip"] == 2
    chat.handle_datagram(b"\x01z", ("127.0.0.3", 1), 0.0)  # another IP has its own share
    assert len(chat.clients) == 4
    sender = ("127.0.0.2", 1)
    passed = [chat.handle_datagram(b"\x01Xy", sender, 1.0) is not None for _ in range(600)]
    assert sum(passed) == 5 and chat.drops["rate_limited"] == 595  # the burst, then none
    assert chat.handle_datagram(b"\x01Xy", sender, 2.0) is not None  # 1 s refilled 2
    assert chat.handle_datagram(b"\x01Xy", sender, 2.0) is not None
    assert chat.handle_datagram(b"\x01Xy", sender, 2.0) is None
    chat.handle_timer(1000.0)  # all forgotten: the IP's share is free again
    assert chat.clients == {} and chat.per_ip == {} and chat.addrs == []
    chat.handle_datagram(b"\x01z", ("127.0.0.2", 9), 1000.0)
    assert chat.addrs == [("127.0.0.2", 9)]


def test_stage1_address_list_handed_out_never_changes() -> None:
    chat = GlobalChat(max_clients=1000, max_per_ip=1000)
    chat.handle_datagram(b"\x01z", ("127.0.0.2", 1), 0.0)
    targets = chat.handle_datagram(b"\x01Xy", ("127.0.0.2", 2), 0.0)
    assert targets == [("127.0.0.2", 1), ("127.0.0.2", 2)]
    chat.handle_datagram(b"\x01z", ("127.0.0.2", 3), 0.0)
    chat.handle_send_failure(("127.0.0.2", 1))
    chat.handle_send_failure(("127.0.0.2", 1))
    chat.handle_send_failure(("127.0.0.2", 1))
    assert targets == [("127.0.0.2", 1), ("127.0.0.2", 2)]  # a fan-out in progress keeps it
    assert chat.addrs == [("127.0.0.2", 2), ("127.0.0.2", 3)]


def test_stage1_expiry_is_linear_in_the_expired() -> None:
    """50,000 addresses expiring at once (the old list rebuild per removal was quadratic:
    minutes here); the bound is a 30x margin over the linear time on a busy machine."""
    n = 50_000
    chat = GlobalChat(inactivity_timeout=10.0, max_clients=n + 1, max_per_ip=n)
    for i in range(n):
        chat.handle_datagram(b"\x01z", (f"127.0.{i % 250}.{i // 250 % 250}", 1000 + i), 0.0)
    assert len(chat.clients) == n
    chat.handle_datagram(b"\x01z", ("127.0.0.1", 1), 5.0)  # stays
    start = time.perf_counter()
    chat.handle_timer(10.0)
    took = time.perf_counter() - start
    assert list(chat.clients) == [("127.0.0.1", 1)]
    assert chat.evictions["inactive"] == n
    assert took < 3.0, f"{n} expiries took {took:.2f} s"


def test_proof_is_reported_and_survives_reseeding() -> None:
    core = RelayCore()
    core.add_member("r", TA, "alice", IP, Framing.PLAIN, True, 0.0)
    core.register(TA, 5001, 0.0)
    assert isinstance(core.events[-1], Bound) and core.events[-1].proven is False
    core.handle_datagram(encode_chat(b"r", TA, b""), (IP, 5001), 1.0)
    assert core.events[-1] == Bound(TA, IP, 5001, proven=True)
    # A restarted worker is re-seeded from control's record: proven stays proven,
    # a registered port that never spoke is on trial again.
    fresh = RelayCore()
    fresh.add_member("r", TA, "alice", IP, Framing.PLAIN, True, 0.0, (IP, 5001), True, True)
    fresh.add_member("r", TB, "bob", IP, Framing.PLAIN, False, 0.0, (IP, 5002), True, False)
    assert not fresh.tokens[TA].trial and fresh.tokens[TB].trial
    assert fresh.unproven == {(IP, 5002): UNPROVEN_MAX_DELIVERIES}
