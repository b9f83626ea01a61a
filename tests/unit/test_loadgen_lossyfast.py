"""The loss engine's receive path (loadgen/lossy.py, lossyfast.py, _reliable.c): crafted
``ocm1r`` deliveries sent over real loopback sockets to the engine's shared socket, read
by the C fast path or by the pure-Python path. No server: what a relay would send is made
here, so each edge case is exact."""

from __future__ import annotations

import random
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from loadgen import lossy, lossyfast
from loadgen.fastpath import Unavailable
from loadgen.transport import SharedSocket
from wire import reliable

EPOCH = 0x1234ABCD
USERS = 4


def _has_c() -> bool:
    try:
        lossyfast.extension()
    except Unavailable:
        return False
    return True


needs_c = pytest.mark.skipif(not _has_c(), reason="loadgen._reliable was not built")


class Engine:
    """A loss engine's receiving side (no joins): members of ``rooms`` rooms, the shared
    socket, and a plain socket that plays the relay."""

    def __init__(self, accounting: str, rooms: int = 1, loss_pct: float = 0.0,
                 seed: int = 7) -> None:
        opts = lossy.LossOptions("127.0.0.1", 1, rooms, USERS, 1.0, 1.0, 1.0, loss_pct,
                                 seed=seed, accounting=accounting, proc=0)
        self.run = lossy._Run(opts)
        lossy._add_members(self.run)
        self.shared = SharedSocket(len(self.run.members), 0, timestamps=False)
        self.batch = lossy._attach(self.run, self.shared)
        self.run.measuring = True
        self.port = self.shared.sock.getsockname()[1]
        self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.relay.bind(("127.0.0.1", 0))
        self.sent = 0

    def send(self, lm: int, data: bytes) -> None:
        self.relay.sendto(data, (self.shared.ips[lm], self.port))
        self.sent += 1

    def send_to(self, ip: str, data: bytes) -> None:
        self.relay.sendto(data, (ip, self.port))
        self.sent += 1

    def settle(self) -> None:
        """Read until every datagram sent has been read (each wait bounded)."""
        fd = self.shared.sock.fileno()
        while self.run.received < self.sent:
            ready, _, _ = select.select([fd], [], [], 5.0)
            assert ready, f"read {self.run.received} of {self.sent} datagrams"
            lossy._on_readable(self.run, self.batch, fd)

    def close(self) -> None:
        self.relay.close()
        self.shared.close()

    def counts(self) -> dict[str, object]:
        run = self.run
        return {
            "delivered": run.delivered, "duplicates": run.duplicates,
            "out_of_order": run.out_of_order, "gaps": run.gaps,
            "dropped_in": run.dropped_in, "outage_dropped": run.outage_dropped,
            "stray": run.stray, "latencies": run.hist_total().get_total_count(),
            "next": [m.chat.receiver.next if m.chat is not None and not m.handed
                     else run.rs.next[m.lm] for m in run.members],
            "nexp": list(run.rs.nexp),
        }


@contextmanager
def engine(accounting: str, **kwargs: float) -> Iterator[Engine]:
    e = Engine(accounting, **kwargs)  # type: ignore[arg-type]
    try:
        yield e
    finally:
        e.close()


def chat_body(sender: int, number: int, text: str | None = None) -> bytes:
    """The ``ocm1`` chat delivery of the engine's traffic (sender index, number, time)."""
    name = f"u{sender % USERS}".encode()
    message = (text if text is not None else f"{sender} {number} 1.000000").encode()
    return bytes([len(name)]) + name + message


def data(seq: int, sender: int, number: int, epoch: int = EPOCH) -> bytes:
    return reliable.encode_data(epoch, seq, chat_body(sender, number))


def sync(lm: int, e: Engine, start: int, latest: int | None = None) -> None:
    """The relay's answer to a keepalive: member ``lm`` starts at ``start``."""
    e.send(lm, reliable.encode_sync(EPOCH, start, start - 1 if latest is None else latest))


def clean_member(e: Engine, lm: int = 0, start: int = 1) -> None:
    sync(lm, e, start)
    e.settle()


# --- the C function's cases --------------------------------------------------------------
@needs_c
def test_in_order_data_of_a_clean_member_is_counted_in_c() -> None:
    with engine("c") as e:
        clean_member(e)
        assert e.run.members[0].handed and e.run.rs.state[0] == lossyfast.ST_C
        for seq in range(1, 6):
            e.send(0, data(seq, 1, seq - 1))
        e.settle()
        assert e.run.fast_delivered == e.run.delivered == 5
        assert e.run.rs.next[0] == 6 and e.run.rs.nexp[0 * USERS + 1] == 5
        assert e.run.rs.state[0] == lossyfast.ST_C


@needs_c
def test_a_gap_goes_to_python_which_holds_it_and_hands_back_once_filled() -> None:
    with engine("c") as e:
        clean_member(e)
        e.send(0, data(1, 1, 0))
        e.send(0, data(3, 1, 2))  # seq 2 missing
        e.settle()
        member = e.run.members[0]
        assert e.run.fast_delivered == 1 and e.run.delivered == 1
        assert e.run.rs.state[0] == lossyfast.ST_PY and not member.handed
        assert member.chat is not None and 3 in member.chat.receiver.held
        assert 2 in member.chat.receiver.missing
        e.send(0, data(4, 1, 3))  # the member is Python's: not counted in C
        e.send(0, data(2, 1, 1))  # the resend fills the hole
        e.settle()
        assert e.run.fast_delivered == 1 and e.run.delivered == 4
        assert e.run.duplicates == e.run.out_of_order == 0
        assert member.handed and e.run.rs.state[0] == lossyfast.ST_C
        assert e.run.rs.next[0] == 5
        e.send(0, data(5, 1, 4))
        e.settle()
        assert e.run.fast_delivered == 2 and e.run.delivered == 5


@needs_c
def test_a_member_left_to_python_gets_nothing_in_c() -> None:
    with engine("c") as e:
        e.send(0, data(1, 1, 0))  # no Sync yet: held by Python
        e.settle()
        assert e.run.rs.state[0] == lossyfast.ST_PY and e.run.delivered == 0
        sync(0, e, 1)
        e.send(0, data(2, 1, 1))  # read with the Sync or after it: Python's either way
        e.settle()
        assert e.run.delivered == 2 and e.run.fast_delivered == 0
        e.send(0, data(3, 1, 2))  # clean again: C's
        e.settle()
        assert e.run.delivered == 3 and e.run.fast_delivered == 1


@needs_c
def test_another_epoch_goes_to_python_and_is_not_shown() -> None:
    with engine("c") as e:
        clean_member(e)
        e.send(0, data(1, 1, 0, epoch=EPOCH + 1))
        e.settle()
        assert e.run.delivered == 0 and e.run.fast_delivered == 0
        e.send(0, data(1, 1, 0))
        e.settle()
        assert e.run.delivered == 1


@needs_c
@pytest.mark.parametrize(("datagram", "shown"), [
    (reliable.encode_data(EPOCH, 1, b""), 0),  # no ocm1 delivery
    (bytes.fromhex("01") + EPOCH.to_bytes(4, "big"), 0),  # truncated header
    (reliable.encode_data(EPOCH, 1, chat_body(1, 0, "1 0")), 0),  # no time
    (reliable.encode_data(EPOCH, 1, chat_body(1, 0, "x 0 1.000000")), 0),
    (reliable.encode_data(EPOCH, 1, chat_body(1, 0, "1 0 1.000000 extra")), 0),
    (reliable.encode_data(EPOCH, 1, b"\x09u1"), 0),  # username past the end
    (reliable.encode_data(EPOCH, 1, b'\x00{"event":"joined","username":"u1"}'), 0),
    (reliable.encode_data(EPOCH, 1, chat_body(9, 0)), 0),  # a sender of another room
    (reliable.encode_data(EPOCH, 1, chat_body(0, 0)), 0),  # our own
    (reliable.encode_data(EPOCH, 1, b"\x02\xc3\xa9" + b"1 0 1.000000"), 1),  # a UTF-8 name
    (reliable.encode_data(EPOCH, 1, chat_body(1, 0, "1 0 1.00")), 1),  # a short fraction
])
def test_data_c_does_not_read_goes_to_python(datagram: bytes, shown: int) -> None:
    """Malformed, foreign or unusual DATA: never counted in C; Python shows what the
    engine's ``show`` accepts."""
    with engine("c") as e:
        clean_member(e)
        e.send(0, datagram)
        e.settle()
        assert e.run.fast_delivered == 0 and e.run.delivered == shown
        assert e.run.duplicates == 0


@needs_c
def test_the_same_message_twice_is_a_duplicate_seen_by_python() -> None:
    """A relay that numbered one message twice: C leaves the second copy (its message
    number is not the next expected) and Python counts the duplicate; a resent Seq is
    dropped by the receiver (shown once)."""
    with engine("c") as e:
        clean_member(e)
        e.send(0, data(1, 1, 0))
        e.send(0, data(2, 1, 0))  # the same message, another Seq
        e.send(0, data(2, 1, 0))  # and that Seq again
        e.settle()
        assert e.run.delivered == 1 and e.run.duplicates == 1
        assert e.run.fast_delivered == 1


@needs_c
def test_a_skipped_message_number_marks_the_pair_for_python() -> None:
    with engine("c") as e:
        clean_member(e)
        e.send(0, data(1, 1, 1))  # message 0 of sender 1 never came
        e.send(0, data(2, 1, 2))
        e.send(0, data(3, 1, 0))  # late: out of order
        e.settle()
        assert e.run.delivered == 3 and e.run.out_of_order == 1
        assert e.run.fast_delivered == 0
        assert e.run.rs.pdirty[0 * USERS + 1] == 0 and e.run.rs.nexp[0 * USERS + 1] == 3


@needs_c
def test_outage_strays_and_loss_are_decided_in_c() -> None:
    with engine("c", loss_pct=100.0) as e:
        e.run.rs.state[1] = lossyfast.ST_OUT
        e.send(0, data(1, 1, 0))
        e.send(1, data(1, 2, 0))
        e.send_to("127.100.0.200", data(1, 1, 0))  # no member has that address
        e.settle()
        assert (e.run.dropped_in, e.run.outage_dropped, e.run.stray) == (1, 1, 1)


def test_the_loss_generators_of_c_and_python_agree() -> None:
    rng = lossyfast.LossRng(lossyfast.seed_state(3), 30.0)
    drops = sum(rng.drop() for _ in range(10_000))
    assert 2_700 < drops < 3_300
    assert lossyfast.seed_state(0) != 0 and lossyfast.loss_threshold(100.0) == 1 << 53


# --- parity --------------------------------------------------------------------------------
def _traffic(rooms: int, messages: int, seed: int) -> list[tuple[int, bytes]]:
    """What a relay would send ``rooms`` rooms of ``USERS``: a Sync each, then each room's
    messages numbered in order to every member but the sender (which gets an ACK), with
    DATA lost and resent later, duplicated, reordered (ACKs in order: without a relay to
    answer NACKs a lost one would leave its number awaited), a notice, interleaved."""
    rnd = random.Random(seed)
    out: list[tuple[int, bytes]] = []
    for room in range(rooms):
        base = room * USERS
        per: dict[int, list[bytes]] = {lm: [] for lm in range(base, base + USERS)}
        numbers = [0] * USERS
        for lm in per:
            per[lm].append(reliable.encode_sync(EPOCH, 1, 0))
        for seq in range(1, messages + 1):
            s = rnd.randrange(USERS)
            for lm in per:
                if lm == base + s:
                    per[lm].append(reliable.encode_ack(EPOCH, numbers[s] + 1, seq))
                else:
                    per[lm].append(data(seq, base + s, numbers[s]))
            numbers[s] += 1
        for lm, items in per.items():
            shuffled: list[bytes] = []
            late: list[bytes] = []
            for item in items:
                roll = 1.0 if item[0] == reliable.Down.ACK else rnd.random()
                if roll < 0.05:
                    late.append(item)  # "lost", resent a little later
                elif roll < 0.08:
                    shuffled += [item, item]  # a duplicate
                else:
                    shuffled.append(item)
                if late and rnd.random() < 0.3:
                    shuffled.append(late.pop(0))
            shuffled += late
            shuffled.insert(len(shuffled) // 2, b'\x00{"event":"error","reason":"x"}')
            out += [(lm, item) for item in shuffled]
    # interleave the members' streams, each in its own order
    streams = {lm: [d for m, d in out if m == lm] for lm in {m for m, _ in out}}
    mixed: list[tuple[int, bytes]] = []
    while streams:
        lm = rnd.choice(sorted(streams))
        mixed.append((lm, streams[lm].pop(0)))
        if not streams[lm]:
            del streams[lm]
    return mixed


def _feed(accounting: str, traffic: list[tuple[int, bytes]], loss_pct: float,
          rooms: int) -> dict[str, object]:
    with engine(accounting, rooms=rooms, loss_pct=loss_pct) as e:
        assert e.run.path == ("c" if accounting == "c" else "python")
        for lm, item in traffic:  # the messages the ACKs acknowledge were sent
            if item[0] == reliable.Down.ACK:
                chat_ = e.run.members[lm].chat
                assert chat_ is not None
                chat_.send(b"x", 0.0)
        for i, (lm, item) in enumerate(traffic):
            e.send(lm, item)
            if i % 200 == 199:  # a socket buffer's worth at a time
                e.settle()
        e.settle()
        counts = e.counts()
        counts["fast"] = e.run.fast_delivered
        return counts


@needs_c
@pytest.mark.parametrize("loss_pct", [0.0, 10.0])
def test_c_and_python_count_the_same_traffic_alike(loss_pct: float) -> None:
    traffic = _traffic(rooms=3, messages=120, seed=11)
    c = _feed("c", traffic, loss_pct, 3)
    py = _feed("python", traffic, loss_pct, 3)
    assert c.pop("fast") > 0 and py.pop("fast") == 0  # type: ignore[operator]
    assert c == py
    if loss_pct == 0:
        assert c["delivered"] == 3 * 120 * (USERS - 1) and c["duplicates"] == 0


def test_loss_needs_a_loopback_server() -> None:
    assert lossy.cannot_run("127.0.0.1", "auto") is None
    why = lossy.cannot_run("192.0.2.1", "auto")  # resolved locally, nothing is sent
    assert why is not None and "loopback" in why


@needs_c
def test_send_batch_sends_each_datagram_from_its_members_address() -> None:
    shared = SharedSocket(3, 0, timestamps=False)
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        relay.bind(("127.0.0.1", 0))
        relay.settimeout(5.0)
        port = relay.getsockname()[1]
        here = socket.inet_aton("127.0.0.1")
        items = [(f"m{lm}".encode(), socket.inet_aton(shared.ips[lm]), here, port)
                 for lm in (2, 0, 1)]
        send_batch = lossyfast.extension().send_batch
        assert send_batch(shared.sock.fileno(), items) == 0
        got = [relay.recvfrom(100) for _ in items]
        own_port = shared.sock.getsockname()[1]
        assert got == [(b"m2", (shared.ips[2], own_port)), (b"m0", (shared.ips[0], own_port)),
                       (b"m1", (shared.ips[1], own_port))]
        with pytest.raises(ValueError):
            send_batch(shared.sock.fileno(), [(b"x", b"\x7f\x00", here, port)])
    finally:
        relay.close()
        shared.close()


def test_a_chats_deadline_is_the_earliest_timer_of_either_side() -> None:
    """The engine asks ``ReliableChat.next_deadline`` after each Python-path datagram."""
    from client.reliable import ReliableChat

    chat_ = ReliableChat()
    chat_.handle_delivery(data(3, 1, 0), 1.0)  # before the Sync: a Sync retry
    assert chat_.next_deadline() == chat_.receiver.next_deadline() is not None
    chat_.handle_delivery(reliable.encode_sync(EPOCH, 1, 0), 1.01)  # holes 1 and 2
    assert chat_.next_deadline() == chat_.receiver.next_deadline() is not None
    chat_.send(b"x", 1.02)  # a resend timer
    assert chat_.next_deadline() == min(chat_.receiver.next_deadline() or 9e9,
                                        chat_.sender.next_deadline() or 9e9)
    chat_.handle_delivery(data(1, 1, 0), 1.03)
    chat_.handle_delivery(data(2, 1, 1), 1.03)
    chat_.handle_delivery(reliable.encode_ack(EPOCH, 1, 4), 1.04)
    assert chat_.next_deadline() is None
