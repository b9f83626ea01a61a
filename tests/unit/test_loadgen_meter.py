"""The loadgen meter's accounting on synthetic deliveries (no sockets, no clocks)."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen.meter import (
    DIRECT_US,
    HDR_LOWEST_US,
    HEADER_BYTES,
    Counts,
    Meter,
    Slo,
    add_counts,
    backlog_growth,
    check_slo,
    decode_payload,
    encode_payload,
    hdr_index_table,
    latency_ms,
    merge_counts,
    merge_histograms,
    new_histogram,
    username_of,
)
from wire.chat import (
    Notice,
    encode_framed_chat,
    encode_framed_notice,
    encode_plain_chat,
    encode_plain_notice,
)
from wire.codes import NoticeEvent

MS = 1_000_000
MSTART = 1_000 * MS  # measured window starts at t = 1 s (ns)


def plain(users: int, g: int, seq: int, sched_ns: int, size: int = 60, lag_us: int = 0
          ) -> bytes:
    """What a plain member receives when global member ``g`` sent message ``seq``."""
    return encode_plain_chat(username_of(g % users, users),
                             encode_payload(g, seq, sched_ns, size, lag_us))


def framed(users: int, g: int, seq: int, sched_ns: int, size: int = 60) -> bytes:
    return encode_framed_chat(username_of(g % users, users), encode_payload(g, seq, sched_ns,
                                                                            size))


def unstamped(batch: list[tuple[int, bytes]]) -> list[tuple[int, bytes, int]]:
    """Deliveries without a kernel receive timestamp (the read time stands in)."""
    return [(lm, data, 0) for lm, data in batch]


def bound_meter(room_lo: int = 3, rooms: int = 2, users: int = 3,
                framed_: bool = False) -> Meter:
    """A meter whose members are all known bound (as after the setup phase)."""
    meter = Meter(room_lo, rooms, users, framed=framed_)
    meter.known_bound = [True] * meter.members
    meter.start_run(MSTART)
    return meter


# --- payload ------------------------------------------------------------------------------
def test_payload_round_trip_and_size() -> None:
    data = encode_payload(1234, 56, 987654321012345, 100, lag_us=42)
    assert len(data) == 100
    assert data[:HEADER_BYTES] == (b"00001234" + b"0000000056" + b"00000987654321012345"
                                   + b"000042")
    assert decode_payload(data) == (1234, 56, 987654321012345, 42)
    assert decode_payload(encode_payload(1, 2, 3, 60, lag_us=5_000_000))[3] == 999_999
    assert len(encode_payload(0, 0, 0, HEADER_BYTES)) == HEADER_BYTES
    with pytest.raises(ValueError):
        decode_payload(b"short")


def test_usernames_are_short_and_fixed_width() -> None:
    assert [username_of(u, 10) for u in (0, 9)] == ["u0", "u9"]
    assert [username_of(u, 11) for u in (0, 10)] == ["u00", "u10"]
    assert username_of(0, 1) == "u0"
    assert {len(username_of(u, 1000)) for u in range(1000)} == {4}


# --- binding (setup) --------------------------------------------------------------------------
def test_joined_notices_mark_members_bound() -> None:
    meter = Meter(0, 2, 3)
    assert meter.bound_missing() == 6
    # room 0: host (lm 0) bound first, gets joined for u1 and u2 -> everyone known
    notes = [(0, encode_plain_notice(Notice(NoticeEvent.JOINED, "u1"))),
             (0, encode_plain_notice(Notice(NoticeEvent.JOINED, "u2")))]
    meter.receive_batch(unstamped(notes), 0)
    assert meter.known_bound[:3] == [True, True, True]
    assert meter.bound_missing() == 3
    # room 1: u1 bound before the host; the host's notice reaches u1 -> u1 (received) and
    # u0 (named) known, u2 not yet
    meter.receive_batch(unstamped([(4, encode_plain_notice(Notice(NoticeEvent.JOINED, "u0")))]), 0)
    assert meter.known_bound[3:] == [True, True, False]
    assert meter.bound_missing() == 1
    assert meter.notice_events == {"joined": 3}


def test_framed_notices_and_alone_rooms() -> None:
    meter = Meter(0, 2, 2, framed=True)
    meter.active = [True, True, True, False]  # room 1 has one active member
    meter.receive_batch(unstamped([(1, encode_framed_notice(Notice(NoticeEvent.JOINED, "u0")))]), 0)
    assert meter.bound_missing() == 0
    meter.start_run(MSTART)
    assert list(meter.counted) == [1, 1, 1, 0]


def test_other_notices_are_counted_by_event() -> None:
    meter = bound_meter()
    meter.receive_batch(unstamped([
        (0, encode_plain_notice(Notice(NoticeEvent.LEFT, "u1"))),
        (0, encode_plain_notice(Notice(NoticeEvent.CLOSED))),
        (0, encode_plain_notice(Notice(NoticeEvent.ERROR, over=3))),
        (0, b"something else"),
    ]), MSTART)
    assert meter.notice_events == {"left": 1, "closed": 1, "error": 1}
    assert meter.c.notices == 3
    assert meter.c.unparsed == 1


# --- a run --------------------------------------------------------------------------------
def test_every_delivery_is_accounted_for() -> None:
    users = 3
    meter = bound_meter(room_lo=3, rooms=2, users=users)  # rooms 3, 4: g = 9..14
    # member lm 0 (g 9, room 3) sent 4 messages, lm 4 (g 13, room 4) sent 1
    meter.sent[0] = 4
    meter.sent[4] = 1
    t = MSTART + 10 * MS
    batch = [
        (1, plain(users, 9, 0, t)),  # delivered
        (1, plain(users, 9, 1, t)),  # delivered
        (1, plain(users, 9, 1, t)),  # duplicated
        (1, plain(users, 9, 3, t)),  # delivered, 2 missing
        (1, plain(users, 9, 2, t)),  # delivered late: reordered
        (1, plain(users, 9, 2, t)),  # now a duplicate
        (2, plain(users, 9, 0, t)),  # delivered to lm 2
        (1, plain(users, 13, 0, t)),  # room 4's message in room 3: misrouted
        (0, plain(users, 9, 0, t)),  # the sender's own message: misrouted
        (1, plain(users, 99, 0, t)),  # a room of another process: misrouted
        (3, plain(users, 13, 0, MSTART - 1)),  # scheduled before the window: warmup
        (5, plain(users, 13, 0, t)),  # delivered (room 4)
        (5, b"u1: not-a-number" + b"z" * 40),  # unparsed
    ]
    meter.receive_batch(unstamped(batch), t + 2 * MS)
    c = meter.counts()
    assert c.sent == 5
    assert c.expected == 4 * 2 + 1 * 2
    assert c.delivered == 6
    assert c.duplicated == 2
    assert c.reordered == 1
    assert c.misrouted == 3
    assert c.warmup == 1
    assert c.unparsed == 1
    assert c.lost == 10 - 6
    assert c.loss_pct == pytest.approx(40.0)
    assert c.delivered + c.lost == c.expected


def test_unbound_receivers_are_not_expected() -> None:
    users = 3
    meter = Meter(0, 1, users)
    meter.known_bound = [True, True, False]
    meter.start_run(MSTART)
    meter.sent[0] = 2
    assert meter.expected() == 2 * 1  # only lm 1 counts
    meter.receive_batch(unstamped([(2, plain(users, 0, 0, MSTART))]), MSTART)
    assert meter.c.extra == 1 and meter.c.delivered == 0


def test_framed_deliveries_parse_like_plain_ones() -> None:
    users = 12  # two-digit usernames
    meter = bound_meter(room_lo=0, rooms=1, users=users, framed_=True)
    meter.sent[11] = 1
    meter.receive_batch(unstamped([(lm, framed(users, 11, 0, MSTART)) for lm in range(11)]), MSTART)
    c = meter.counts()
    assert c.delivered == c.expected == 11
    assert c.misrouted == c.unparsed == 0


def test_latency_percentiles_from_the_scheduled_time() -> None:
    users = 2
    meter = bound_meter(room_lo=0, rooms=1, users=users)
    meter.sent[0] = 1000
    # message seq k is received k µs after its schedule: latencies 0..999 µs
    for seq in range(1000):
        sched = MSTART + seq * MS
        meter.receive_batch(unstamped([(1, plain(users, 0, seq, sched))]), sched + seq * 1000)
    interval = meter.take_interval()
    assert interval.get_total_count() == 1000
    lat = latency_ms(meter.histogram)
    assert lat["p50"] == pytest.approx(0.5, abs=0.002)
    assert lat["p99"] == pytest.approx(0.99, abs=0.002)
    assert lat["max"] == pytest.approx(0.999, abs=0.002)
    # the next interval starts empty; the cumulative histogram keeps everything
    assert meter.take_interval().get_total_count() == 0
    assert meter.histogram.get_total_count() == 1000


def test_latencies_beyond_the_direct_array_are_kept() -> None:
    users = 2
    meter = bound_meter(room_lo=0, rooms=1, users=users)
    meter.sent[0] = 1
    meter.receive_batch(unstamped([(1, plain(users, 0, 0, MSTART))]),
                        MSTART + (DIRECT_US + 5000) * 1000)
    meter.take_interval()
    assert latency_ms(meter.histogram)["max"] == pytest.approx((DIRECT_US + 5000) / 1000,
                                                               rel=0.001)


def test_start_run_resets_everything() -> None:
    users = 2
    meter = bound_meter(room_lo=0, rooms=1, users=users)
    meter.sent[0] = 1
    meter.receive_batch(unstamped([(1, plain(users, 0, 0, MSTART))]), MSTART)
    meter.take_interval()
    meter.start_run(MSTART * 2)
    assert meter.counts() == Counts()
    assert meter.histogram.get_total_count() == 0
    meter.sent[0] = 1  # sequence numbers restart at 0 in a new run
    meter.receive_batch(unstamped([(1, plain(users, 0, 0, MSTART * 2))]), MSTART * 2)
    assert meter.counts().delivered == 1


def test_relay_latency_runs_from_the_real_send_to_the_kernel_timestamp() -> None:
    """End-to-end: schedule -> read. Relay: schedule + lag (the real send) -> the kernel's
    receive timestamp. Without a timestamp the read time stands in, and is counted."""
    users = 2
    meter = bound_meter(room_lo=0, rooms=1, users=users)
    meter.sent[0] = 3
    sched = MSTART + 5 * MS
    meter.receive_batch([
        # sent 2 ms late, queued 2.3 ms after schedule, read at 4 ms: relay 0.3 ms
        (1, plain(users, 0, 0, sched, lag_us=2000), sched + 2300 * 1000),
        # sent on time, queued at 0.1 ms, read at 4 ms: relay 0.1 ms
        (1, plain(users, 0, 1, sched), sched + 100 * 1000),
        # no timestamp: relay = read time - real send = 4 ms - 1 ms
        (1, plain(users, 0, 2, sched, lag_us=1000), 0),
    ], sched + 4 * MS)
    meter.take_interval()
    assert meter.c.delivered == 3 and meter.c.rx_unstamped == 1
    e2e = latency_ms(meter.histogram)
    relay = latency_ms(meter.relay_histogram)
    assert e2e["p50"] == e2e["max"] == pytest.approx(4.0, rel=0.001)
    assert meter.relay_histogram.get_total_count() == 3
    assert relay["p50"] == pytest.approx(0.3, rel=0.01)
    assert relay["max"] == pytest.approx(3.0, rel=0.001)
    assert meter.relay_histogram.get_value_at_percentile(1) == pytest.approx(100, rel=0.01)


# --- merging across processes ----------------------------------------------------------------
def test_merge_counts_and_histograms_across_processes() -> None:
    users = 2
    blobs, parts = [], []
    for room_lo, latency_us in ((0, 100), (1, 300)):
        meter = bound_meter(room_lo=room_lo, rooms=1, users=users)
        g = room_lo * users
        meter.sent[0] = 10
        for seq in range(10):
            meter.receive_batch(unstamped([(1, plain(users, g, seq, MSTART))]),
                                MSTART + latency_us * 1000)
        meter.take_interval()
        blobs.append(meter.histogram.encode())
        parts.append(meter.counts())
    parts[1].max_send_lag_ns = 7
    total = merge_counts(parts)
    assert (total.sent, total.expected, total.delivered, total.lost) == (20, 20, 20, 0)
    assert total.max_send_lag_ns == 7
    hist = merge_histograms(blobs)
    assert hist.get_total_count() == 20
    lat = latency_ms(hist)
    assert lat["p50"] == pytest.approx(0.1, rel=0.01)
    assert lat["max"] == pytest.approx(0.3, rel=0.01)
    assert Counts.from_json(total.to_json()) == total


def test_empty_histogram_has_no_percentiles() -> None:
    assert set(latency_ms(merge_histograms([])).values()) == {None}


# --- SLOs -------------------------------------------------------------------------------------
def test_slo_evaluation() -> None:
    good = Counts(sent=10, expected=1000, delivered=1000)
    lossy = Counts(sent=10, expected=1000, delivered=990)  # 1 %
    fast = {"p99": 0.8}
    slow = {"p99": 3.0}
    slo = Slo(p99_ms=2.0, loss_pct=0.5)
    assert check_slo(slo, good, fast) == []
    assert check_slo(slo, good, slow) == ["p99 latency 3.000 ms > 2 ms"]
    assert check_slo(slo, lossy, fast) == ["loss 1.0000 % > 0.5 %"]
    assert len(check_slo(slo, lossy, slow)) == 2
    assert check_slo(slo, good, {"p99": None}) == ["p99 latency: nothing was delivered"]
    assert check_slo(Slo(), lossy, slow) == []
    assert not Slo().enabled
    misrouted = Counts(sent=1, expected=1, delivered=1, misrouted=2)
    assert check_slo(Slo(loss_pct=1.0), misrouted, fast) == ["2 misrouted deliveries"]


def test_growing_latency_is_not_sustained() -> None:
    assert backlog_growth([1.0, 1.2, 0.9, 1.1, 1.0, 1.3]) is None  # steady
    assert backlog_growth([30.0, 80.0, 50.0, 40.0, 60.0, 20.0]) is None  # noisy, no trend
    assert backlog_growth([5.0, 5.0]) is None  # too short to say
    assert backlog_growth([None, 1.0, 2.0, 3.0]) is None
    growth = backlog_growth([20.0, 60.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1200.0, 1300.0])
    assert growth == (60.0, 1200.0)
    slo = Slo(None, 0.1)
    broken = check_slo(slo, Counts(), {"p99": 5.0}, growth)
    assert broken == ["not sustained: median latency grew from 60.0 ms to 1200.0 ms "
                      "through the window (queues building)"]
    assert check_slo(slo, Counts(), {"p99": 5.0}, None) == []
    assert check_slo(Slo(), Counts(), {"p99": 5.0}, growth) == []  # no SLO asked for


def test_vectorised_fold_matches_hdrh_value_by_value() -> None:
    reference = new_histogram()
    table = hdr_index_table(DIRECT_US)
    assert all(table[v] == reference._counts_index_for(max(v, HDR_LOWEST_US))
               for v in range(DIRECT_US))
    values = np.array([0, 1, 2, 999, 1000, 1023, 1024, 4097, 65_537, DIRECT_US - 1])
    counts = np.arange(1, len(values) + 1, dtype=np.int64)
    folded = new_histogram()
    add_counts(folded, values, counts)
    for v, c in zip(values.tolist(), counts.tolist(), strict=True):
        reference.record_value(max(v, HDR_LOWEST_US), c)
    assert folded.encode() == reference.encode()
    assert (folded.get_total_count(), folded.get_min_value(), folded.get_max_value()) == (
        reference.get_total_count(), reference.get_min_value(), reference.get_max_value())
