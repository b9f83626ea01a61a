"""The ``--e2e`` meter without sockets (loadgen/e2eload.py): deliveries are mapped back to
(sender, sequence) by Megolm session id and message index, compared with what was
encrypted, and a sample is opened by the verifier's own engine."""

from __future__ import annotations

from loadgen.e2eload import MIN_E2E_SIZE, E2EMeter, corrupt, text_of, verifier_of
from loadgen.meter import username_of
from wire.e2e import Kind, encode_delivery

MSTART = 1_000_000_000


def meter(verify_every: int = 1) -> E2EMeter:
    m = E2EMeter(0, 2, 3, 180, verify_every)
    for r in range(2):
        m.start_room(f"room-{r}", r)
    assert m.prepare(4) == 2 * 3 * 4
    m.known_bound = [True] * m.members  # as the `joined` notices would have shown
    m.start_run(MSTART)
    return m


def send(m: E2EMeter, lm: int, sched_ns: int) -> bytes:
    """What ``Simulator._send_due`` does for one message; returns its Message."""
    measured = sched_ns >= MSTART
    datagram = m.messages([b"P"] * m.members)(lm, measured, sched_ns, 5)
    if measured:
        m.sent[lm] += 1
    return datagram[1:]


def delivery(sender_lm: int, message: bytes) -> bytes:
    return encode_delivery(username_of(sender_lm % 3, 3).encode(), Kind.CHAT, message[1:])


def test_sizes_and_helpers() -> None:
    m = meter()
    assert all(180 - 20 <= len(msg) <= 180 for msgs in m.sealed for msg in msgs)
    assert len(text_of(7, 3, MIN_E2E_SIZE)) == 0
    assert text_of(7, 3, MIN_E2E_SIZE + 10) == b"7.3.xxxxxx"
    assert [verifier_of(lm, 3) for lm in range(6)] == [1, 2, 0, 4, 5, 3]
    assert corrupt(b"\x01" * 120) != b"\x01" * 120


def test_deliveries_are_accounted_checked_and_sampled() -> None:
    m = meter()
    warm = send(m, 0, MSTART - 10)
    first, second = send(m, 0, MSTART + 10), send(m, 0, MSTART + 20)
    now = MSTART + 2_000_000
    m.receive_batch([(1, delivery(0, warm), now), (1, delivery(0, second), now),
                     (2, delivery(0, first), now), (1, delivery(0, first), now),
                     (1, delivery(0, first), now)], now)
    c = m.c
    assert (c.warmup, c.delivered, c.reordered, c.duplicated) == (1, 3, 1, 1)
    assert c.e2e_mismatch == 0 and c.misrouted == 0
    m.verify_samples()  # member 1 verifies member 0: warm, second, first (once each)
    assert (m.c.e2e_verified, m.c.e2e_verify_failed) == (3, 0)


def test_wrong_bytes_are_caught_and_a_corrupted_sample_is_refused() -> None:
    m = meter()
    message = send(m, 0, MSTART + 10)
    unsent = m.sealed[0][1]  # sealed but never sent in this run
    other_room = send(m, 3, MSTART + 10)  # u0 of room 1
    now = MSTART + 2_000_000
    m.receive_batch([(1, delivery(0, corrupt(message)), now),
                     (1, delivery(0, unsent), now),
                     (1, delivery(3, other_room), now),
                     (0, delivery(0, message), now)], now)
    c = m.c
    assert (c.e2e_mismatch, c.misrouted, c.delivered) == (2, 2, 0)
    m.verify_samples()
    assert (m.c.e2e_verified, m.c.e2e_verify_failed) == (0, 1)
    m.receive_batch([(1, delivery(0, message), now)], now)  # the good copy still opens
    m.verify_samples()
    assert (m.c.delivered, m.c.e2e_verified) == (1, 1)


def test_a_late_delivery_of_an_earlier_run_is_warmup() -> None:
    m = meter()
    old = send(m, 0, MSTART + 10)
    m.prepare(4)  # the next step of a capacity search
    m.start_run(MSTART * 2)
    now = MSTART * 2 + 1000
    m.receive_batch([(1, delivery(0, old), now)], now)
    assert (m.c.warmup, m.c.e2e_mismatch, m.c.delivered) == (1, 0, 0)
