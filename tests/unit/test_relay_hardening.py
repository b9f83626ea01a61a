"""The relay core's hardening without sockets: departed members freed at once,
registered-but-unproven addresses on a delivery budget, Stage 1 rate and address limits."""

from __future__ import annotations

import gc

from relay.core import DEADLINE_COMPACT_SLACK, Member, RelayCore
from wire.chat import encode_chat
from wire.codes import Framing

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
