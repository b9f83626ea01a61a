"""The loadgen's meter: chat payload format, per-process accounting, merging, SLOs.

Pure (no sockets, no clocks): times are arguments in ns of ``CLOCK_MONOTONIC``, which is
system-wide, so a timestamp written by one loadgen process is comparable in another.

Chat text (``encode_payload``) is a fixed-width ASCII header then padding:
``GGGGGGGG SSSSSSSSSS TTTTTTTTTTTTTTTTTTTT LLLLLL`` (no spaces): the sender's global member
index (room × users + user), its per-run sequence number, the SCHEDULED send time in ns
and how late the send really was, in µs (capped at 999,999).

Two latencies are recorded per delivery:

* **end-to-end** (``latency_ms``, the SLO figure): from the scheduled send time to the
  moment the loadgen read the delivery (wrk2's correction for coordinated omission: a
  sender that stalls cannot hide the queueing it caused). On a machine whose cores the
  loadgen shares with the server it also contains the loadgen's own waits for a CPU, on
  the sending and on the receiving side.
* **relay** (``relay_latency_ms``): from the moment the sender handed the datagram to the
  kernel (scheduled time + lateness) to the moment the kernel queued the delivery on the
  receiving socket (``SO_TIMESTAMPNS``). That is the server's part alone: loopback in,
  the worker's queue and work, loopback out, including the worker's own waits for a CPU.
  Without a kernel timestamp the read time stands in (``rx_unstamped`` counts them).

Per process, ``Meter`` owns a disjoint slice of rooms and, for every (receiver, sender)
pair, the next sequence number it expects; a gap is remembered as a set of missing numbers,
so every delivery is exactly one of: delivered (first time), duplicated, misrouted
(another room's message, or the receiver's own), warmup (scheduled before the measured
window: warmup or an earlier run) or extra (to a receiver that was not known to be bound,
so not expected). ``expected = Σ sent × other bound members``; ``lost = expected -
delivered``. Latencies go to a preallocated array of per-µs counts (one list increment per
delivery) and are folded into an HDR histogram once per tick.

Call order: ``note_datagram``/``receive_batch`` during setup (notices bind members), then
``start_run``, ``receive_batch`` and ``sent[...] += 1`` while running, ``take_interval`` per
tick, ``counts()`` and ``histogram`` at the end.
"""

from __future__ import annotations

import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, NamedTuple, Protocol

import numpy as np
from hdrh.histogram import HdrHistogram

from wire import errors
from wire.chat import Notice, decode_delivery
from wire.codes import Framing
from wire.limits import PLAIN_SEPARATOR

# --- the chat payload -------------------------------------------------------------------
SENDER_DIGITS: Final = 8
SEQ_DIGITS: Final = 10
TIME_DIGITS: Final = 20
LAG_DIGITS: Final = 6
HEADER_BYTES: Final = SENDER_DIGITS + SEQ_DIGITS + TIME_DIGITS + LAG_DIGITS
"""44: the smallest ``--size``."""
HEADER_FMT: Final = b"%08d%010d%020d%06d"
MAX_LAG_US: Final = 10 ** LAG_DIGITS - 1
_SEQ_AT: Final = SENDER_DIGITS
_TIME_AT: Final = SENDER_DIGITS + SEQ_DIGITS
_LAG_AT: Final = _TIME_AT + TIME_DIGITS
PAD_BYTE: Final = b"x"

# --- latency recording --------------------------------------------------------------------
LATENCY_UNIT_NS: Final = 1_000
"""Latencies are recorded in µs."""
DIRECT_US: Final = 1 << 17
"""Latencies below 131 ms are counted in a preallocated array; longer ones are kept as a
list and folded into the histogram at the next tick (rare unless overloaded)."""
HDR_LOWEST_US: Final = 1
HDR_HIGHEST_US: Final = 3_600_000_000
"""One hour: larger latencies are clamped (they only occur when something is broken)."""
HDR_DIGITS: Final = 3


def new_histogram() -> HdrHistogram:
    """An empty latency histogram (µs, 1 µs .. 1 h, 3 significant digits)."""
    return HdrHistogram(HDR_LOWEST_US, HDR_HIGHEST_US, HDR_DIGITS)


def encode_payload(sender: int, seq: int, sched_ns: int, size: int, lag_us: int = 0) -> bytes:
    """The chat text: the fixed-width header padded with ``x`` to ``size`` bytes."""
    head = HEADER_FMT % (sender, seq, sched_ns, min(lag_us, MAX_LAG_US))
    return head + PAD_BYTE * (size - HEADER_BYTES)


def decode_payload(message: bytes) -> tuple[int, int, int, int]:
    """(sender, seq, sched_ns, lag_us) of a chat text; raise ``ValueError`` if it is not
    ours."""
    if len(message) < HEADER_BYTES:
        raise ValueError("short payload")
    return (int(message[:_SEQ_AT]), int(message[_SEQ_AT:_TIME_AT]),
            int(message[_TIME_AT:_LAG_AT]), int(message[_LAG_AT:HEADER_BYTES]))


def username_of(user: int, users: int) -> str:
    """Short fixed-width usernames (``u0``..``u9``, ``u00``..``u99``, ...): one width per run,
    so the message starts at a constant offset in every delivery."""
    return "u" + str(user).zfill(len(str(max(users - 1, 0))))


# --- per-run figures ------------------------------------------------------------------------
@dataclass
class Counts:
    """Every counter of one run (one process, or merged). All are datagram counts."""

    sent: int = 0  # measured chat datagrams handed to the kernel
    expected: int = 0  # sent × other members with bound addresses
    delivered: int = 0  # first arrivals of expected deliveries
    duplicated: int = 0  # repeated arrivals of a (receiver, sender, seq)
    misrouted: int = 0  # from another room, or the receiver's own message
    reordered: int = 0  # delivered after a later message of the same sender
    warmup: int = 0  # scheduled before the measured window (warmup, earlier run): not counted
    extra: int = 0  # chat to a member not known to be bound (not expected)
    unparsed: int = 0  # deliveries that are neither our chat nor a notice we know
    notices: int = 0  # server notices (joined, left, closed, ...)
    send_errors: int = 0  # sends the kernel refused (buffer full, ICMP error)
    recv_errors: int = 0  # receive errors (ICMP errors queued on the socket)
    keepalives: int = 0  # empty keepalive datagrams sent during the run
    late_sends: int = 0  # measured sends more than 1 ms after their scheduled time
    max_send_lag_ns: int = 0  # worst lateness of a measured send against its schedule
    rx_unstamped: int = 0  # deliveries without a kernel receive timestamp (read time used)
    e2e_mismatch: int = 0  # --e2e: not byte for byte what its sender sealed for that counter
    e2e_verified: int = 0  # --e2e: sampled deliveries the real engine opened, text as sealed
    e2e_verify_failed: int = 0  # --e2e: sampled deliveries the engine refused or misread

    @property
    def lost(self) -> int:
        return max(self.expected - self.delivered, 0)

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.expected if self.expected else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["lost"] = self.lost
        out["loss_pct"] = self.loss_pct
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Counts:
        return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj})


def merge_counts(parts: Iterable[Counts]) -> Counts:
    """Sum the counters of several processes (max for the worst send lag)."""
    total = Counts()
    for part in parts:
        for f in fields(Counts):
            if f.name == "max_send_lag_ns":
                total.max_send_lag_ns = max(total.max_send_lag_ns, part.max_send_lag_ns)
            else:
                setattr(total, f.name, getattr(total, f.name) + getattr(part, f.name))
    return total


def merge_histograms(encoded: Iterable[bytes]) -> HdrHistogram:
    """Decode the HDR histograms sent by each process and add them up."""
    total = new_histogram()
    for blob in encoded:
        if blob:
            total.add(HdrHistogram.decode(blob))
    return total


PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)


def latency_ms(hist: HdrHistogram, mean: bool = True) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max (and mean) in ms; ``None`` for each when nothing was recorded.

    The mean walks every recorded value in Python: too slow for every tick."""
    keys = [f"p{p:g}" for p in PERCENTILES] + ["max"] + (["mean"] if mean else [])
    if hist.get_total_count() == 0:
        return dict.fromkeys(keys)
    by_pct = hist.get_percentile_to_value_dict(list(PERCENTILES))
    values = [by_pct[p] for p in PERCENTILES] + [hist.get_max_value()]
    if mean:
        values.append(hist.get_mean_value())
    return {k: v / 1000.0 for k, v in zip(keys, values, strict=True)}


# --- SLOs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slo:
    """Service-level objectives; ``None`` means "not checked"."""

    p99_ms: float | None = None
    loss_pct: float | None = None

    @property
    def enabled(self) -> bool:
        return self.p99_ms is not None or self.loss_pct is not None


GROWTH_FACTOR: Final = 2.0
GROWTH_MIN_MS: Final = 20.0


def backlog_growth(p50s_ms: Sequence[float | None]) -> tuple[float, float] | None:
    """(first, last): the median of the per-tick p50 latencies over the first and over the
    last third of a measured window, if the last is more than ``GROWTH_FACTOR`` times the
    first plus ``GROWTH_MIN_MS``: the latency kept rising, so queues were building and the
    rate was not sustained (only deep buffers kept it lossless for a few seconds).
    ``None`` if it did not grow, or with fewer than three ticks."""
    values = [v for v in p50s_ms if v is not None]
    third = len(values) // 3
    if third == 0:
        return None
    first = sorted(values[:third])[(third - 1) // 2]
    last = sorted(values[-third:])[(third - 1) // 2]
    return (first, last) if last > GROWTH_FACTOR * first + GROWTH_MIN_MS else None


def check_slo(slo: Slo, counts: Counts, latency: dict[str, float | None],
              growth: tuple[float, float] | None = None) -> list[str]:
    """The SLOs broken by a run, as sentences (empty: every SLO held).

    A run that delivered nothing breaks a p99 SLO (no evidence that it held). A latency
    that kept growing through the window (``backlog_growth``) breaks any SLO: the rate
    was not sustained, whatever the loss and p99 of a short window say."""
    breaches = []
    if slo.p99_ms is not None:
        p99 = latency.get("p99")
        if p99 is None:
            breaches.append("p99 latency: nothing was delivered")
        elif p99 > slo.p99_ms:
            breaches.append(f"p99 latency {p99:.3f} ms > {slo.p99_ms:g} ms")
    if slo.loss_pct is not None and counts.loss_pct > slo.loss_pct:
        breaches.append(f"loss {counts.loss_pct:.4f} % > {slo.loss_pct:g} %")
    if counts.e2e_mismatch or counts.e2e_verify_failed:  # whatever the SLOs: wrong bytes
        breaches.append(f"encrypted deliveries failed the check: {counts.e2e_mismatch} "
                        f"not as sealed, {counts.e2e_verify_failed} of "
                        f"{counts.e2e_verify_failed + counts.e2e_verified} samples refused "
                        "by the engine")
    if slo.enabled and counts.misrouted:
        breaches.append(f"{counts.misrouted} misrouted deliveries")
    if slo.enabled and growth is not None:
        breaches.append(f"not sustained: median latency grew from {growth[0]:.1f} ms to "
                        f"{growth[1]:.1f} ms through the window (queues building)")
    return breaches


# --- the per-process meter ------------------------------------------------------------------
Row = tuple[int, int, int, int, int, int]
"""A parsed chat delivery: (receiver, sender's user index in the room, sequence number,
scheduled send ns, send lateness µs, kernel receive ns or 0)."""


class FastState(NamedTuple):
    """What ``Meter.receive_batch`` reads and updates, for the C accounting."""

    base_g: int
    chk_at: int
    chk: bytearray
    off: int
    counted: bytearray
    nexp: array.array[int]
    lat: array.array[int]
    rlat: array.array[int]


class Accelerator(Protocol):
    """What the meter asks of an attached C accounting (``loadgen.fastpath.FastAccount``,
    which imports this module, not the other way round)."""

    def bind(self) -> None:
        """Point the C side at the meter's current arrays (its ``fast_state``)."""

    def reset_dirty(self) -> None:
        """Forget which rows the last batch left to Python (they are accounted now)."""


class Meter:
    """Accounting for ``rooms`` consecutive rooms of ``users`` members, starting at global
    room ``room_lo``. A member's local index is ``(room - room_lo) * users + user``.

    ``active[lm]`` marks members whose join succeeded (only they send and count).
    ``framed`` selects how deliveries are parsed (``ocm1`` or plain text).
    """

    def __init__(self, room_lo: int, rooms: int, users: int, framed: bool = False) -> None:
        self.room_lo = room_lo
        self.rooms = rooms
        self.users = users
        n = rooms * users
        self.members = n
        self.active = [True] * n
        self.known_bound = [False] * n
        self.counted = bytearray(n)
        """1 for the members expected to receive in this run (fixed by ``start_run``)."""
        self.sent = [0] * n
        self._base_g = room_lo * users
        self.fast: Accelerator | None = None
        """The C accounting of a shared socket (loadgen/fastpath.py), if one is attached."""
        self.set_framing(framed)
        self._nexp = array.array("q", bytes(8 * n * users))
        self._missing: dict[int, set[int]] = {}
        self._lat = _Latencies()
        self.histogram = new_histogram()
        self._rlat = _Latencies()
        self.relay_histogram = new_histogram()
        self.notice_events: dict[str, int] = {}
        self.c = Counts()
        self.mstart_ns = 0

    def set_framing(self, framed: bool) -> None:
        ulen = len(username_of(0, self.users))
        self.framed = framed
        self.ulen = ulen
        if framed:  # UsernameLen | Username | Message
            self._chk = (0, 1, bytes((ulen,)))
            self._off = 1 + ulen
        else:  # "username: message"
            self._chk = (ulen, ulen + len(PLAIN_SEPARATOR), PLAIN_SEPARATOR)
            self._off = ulen + len(PLAIN_SEPARATOR)
        if self.fast is not None:
            self.fast.bind()

    def fast_state(self) -> FastState:
        """The arrays and parameters the C accounting reads and updates in place."""
        c0, _c1, chk = self._chk
        return FastState(self._base_g, c0, bytearray(chk), self._off, self.counted,
                         self._nexp, self._lat.counts, self._rlat.counts)

    # --- setup: who is bound ----------------------------------------------------------------
    def bound_missing(self) -> int:
        """Active members not yet known to be bound (a room with one active member needs
        nobody: no one can be told about it, and nothing is expected for it)."""
        users, active, known = self.users, self.active, self.known_bound
        missing = 0
        for r in range(self.rooms):
            lo = r * users
            members = [lm for lm in range(lo, lo + users) if active[lm]]
            if len(members) > 1:
                missing += sum(1 for lm in members if not known[lm])
        return missing

    def _mark_bound(self, lm: int) -> None:
        self.known_bound[lm] = True

    def _notice(self, rlm: int, data: bytes) -> None:
        """A delivery that is not our chat: a notice (or garbage)."""
        self.known_bound[rlm] = True  # it received something, so its address is bound
        event, user = "", ""
        try:
            notice = decode_delivery(data, Framing.OCM1 if self.framed else Framing.PLAIN)
        except errors.ProtocolError:
            notice = None
        if isinstance(notice, Notice):
            event, user = notice.event.value, notice.user
        if not event:
            self.c.unparsed += 1
            return
        self.c.notices += 1
        self.notice_events[event] = self.notice_events.get(event, 0) + 1
        if event == "joined" and len(user) == self.ulen and user[1:].isdigit():
            u = int(user[1:])
            if u < self.users:
                self._mark_bound(rlm - rlm % self.users + u)

    # --- a run --------------------------------------------------------------------------------
    def start_run(self, mstart_ns: int) -> None:
        """Reset the counters for a run whose measured window starts at ``mstart_ns``;
        freeze which members are expected to receive (those known to be bound)."""
        users = self.users
        self.mstart_ns = mstart_ns
        self.c = Counts()
        self.notice_events = {}
        n = self.members
        self.sent[:] = [0] * n
        self._nexp = array.array("q", bytes(8 * n * users))
        self._missing.clear()
        self._lat.clear()
        self.histogram = new_histogram()
        self._rlat.clear()
        self.relay_histogram = new_histogram()
        for r in range(self.rooms):
            lo = r * users
            members = [lm for lm in range(lo, lo + users) if self.active[lm]]
            alone = len(members) == 1
            for lm in range(lo, lo + users):
                self.counted[lm] = self.active[lm] and (alone or self.known_bound[lm])
        if self.fast is not None:
            self.fast.bind()

    def receive_batch(self, batch: Sequence[tuple[int, bytes, int]], now_ns: int) -> None:
        """Account for deliveries ``(receiver local index, datagram, kernel receive time)``
        read by ``now_ns`` (receive time 0: none, ``now_ns`` stands in).

        The hot path of the loadgen: slicing and ``int()`` only, no regex, no decode. The
        parsed rows go to ``account_rows``, which the ``--e2e`` meter shares."""
        c0, c1, chk = self._chk
        off = self._off
        seq_at, t_at, lag_at, end = (off + _SEQ_AT, off + _TIME_AT, off + _LAG_AT,
                                     off + HEADER_BYTES)
        users, base_g = self.users, self._base_g
        rows: list[Row] = []
        append = rows.append
        misrouted = unparsed = 0
        for rlm, data, rx_ns in batch:
            if data[c0:c1] != chk:
                self._notice(rlm, data)
                continue
            try:
                g = int(data[off:seq_at])
                seq = int(data[seq_at:t_at])
                ns = int(data[t_at:lag_at])
                lag_us = int(data[lag_at:end])
            except ValueError:
                unparsed += 1
                continue
            s = g - base_g - rlm + rlm % users  # the sender's index in the receiver's room
            if s < 0 or s >= users or rlm % users == s:
                misrouted += 1
                continue
            append((rlm, s, seq, ns, lag_us, rx_ns))
        c = self.c
        c.misrouted += misrouted
        c.unparsed += unparsed
        self.account_rows(rows, now_ns)
        if self.fast is not None and batch:  # the rows it left to us are accounted now
            self.fast.reset_dirty()

    def account_rows(self, rows: list[Row], now_ns: int) -> None:
        """Account for parsed chat deliveries ``(receiver, sender's user index, sequence
        number, scheduled ns, send lateness µs, kernel receive ns or 0)``: warm-up, extra,
        loss, duplicates, reordering and both latencies."""
        users = self.users
        mstart = self.mstart_ns
        counted, nexp, missing = self.counted, self._nexp, self._missing
        lat_counts, overflow = self._lat.counts, self._lat.overflow
        rlat_counts, roverflow = self._rlat.counts, self._rlat.overflow
        delivered = dup = warmup = extra = reordered = unstamped = 0
        for rlm, s, seq, ns, lag_us, rx_ns in rows:
            if ns < mstart:
                warmup += 1
                continue
            if not counted[rlm]:
                extra += 1
                continue
            k = rlm * users + s
            e = nexp[k]
            if seq == e:
                nexp[k] = e + 1
            elif seq > e:
                gap = missing.get(k)
                if gap is None:
                    missing[k] = set(range(e, seq))
                else:
                    gap.update(range(e, seq))
                nexp[k] = seq + 1
            else:
                gap = missing.get(k)
                if gap is None or seq not in gap:
                    dup += 1
                    continue
                gap.discard(seq)
                reordered += 1
            delivered += 1
            lat = (now_ns - ns) // LATENCY_UNIT_NS
            if 0 <= lat < DIRECT_US:
                lat_counts[lat] += 1
            else:
                overflow.append(lat)
            if not rx_ns:
                rx_ns = now_ns
                unstamped += 1
            lat = (rx_ns - ns) // LATENCY_UNIT_NS - lag_us
            if 0 <= lat < DIRECT_US:
                rlat_counts[lat] += 1
            else:
                roverflow.append(lat)
        c = self.c
        c.delivered += delivered
        c.duplicated += dup
        c.warmup += warmup
        c.extra += extra
        c.reordered += reordered
        c.rx_unstamped += unstamped

    def take_interval(self) -> HdrHistogram:
        """Fold the end-to-end latencies recorded since the last call into a new histogram
        (returned) and into the run's cumulative ``histogram``; fold the relay latencies
        into ``relay_histogram``."""
        interval = self._lat.fold()
        self.histogram.add(interval)
        self.relay_histogram.add(self._rlat.fold())
        return interval

    def expected(self) -> int:
        """Σ over senders of sent × the other members of its room that are counted."""
        users, counted, sent = self.users, self.counted, self.sent
        total = 0
        for r in range(self.rooms):
            lo = r * users
            bound = sum(1 for lm in range(lo, lo + users) if counted[lm])
            for lm in range(lo, lo + users):
                if sent[lm]:
                    total += sent[lm] * (bound - 1 if counted[lm] else bound)
        return total

    def counts(self) -> Counts:
        """The run's counters with ``sent`` and ``expected`` filled in."""
        self.c.sent = sum(self.sent)
        self.c.expected = self.expected()
        return self.c


class _Latencies:
    """Latencies in µs as they are recorded on the hot path: a preallocated per-µs count
    array (one increment per delivery, inlined by ``Meter.receive_batch``) and a list for
    the rare ones beyond ``DIRECT_US``."""

    __slots__ = ("counts", "view", "overflow")

    def __init__(self) -> None:
        self.counts = array.array("q", bytes(8 * DIRECT_US))
        self.view = np.frombuffer(self.counts, dtype=np.int64)
        self.overflow: list[int] = []

    def clear(self) -> None:
        self.view[:] = 0
        self.overflow.clear()

    def fold(self) -> HdrHistogram:
        """A histogram of everything recorded since the last fold; starts over empty.

        Vectorised (``add_counts``): folding bin by bin with ``record_value`` stalled the
        loadgen's loop long enough to show in its latency tail."""
        hist = new_histogram()
        view = self.view
        nonzero = np.flatnonzero(view)
        if nonzero.size:
            add_counts(hist, nonzero, view[nonzero])
            view[nonzero] = 0
        for value in self.overflow:
            hist.record_value(min(max(value, HDR_LOWEST_US), HDR_HIGHEST_US))
        self.overflow.clear()
        return hist


def hdr_index_table(n: int) -> np.ndarray:
    """The HDR counts index of each value ``0..n-1`` (0 counted as ``HDR_LOWEST_US``) in a
    ``new_histogram()``: what ``HdrHistogram._counts_index_for`` computes value by value
    (bucket = bit length - unit magnitude - sub-bucket half-count magnitude - 1; sub-bucket
    = value >> (bucket + unit magnitude)). A test checks every entry against hdrh."""
    h = new_histogram()
    values = np.maximum(np.arange(n, dtype=np.int64), HDR_LOWEST_US)
    bits = np.frexp((values | h.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    bucket = bits - h.unit_magnitude - (h.sub_bucket_half_count_magnitude + 1)
    sub_bucket = values >> (bucket + h.unit_magnitude)
    index: np.ndarray = ((bucket + 1) << h.sub_bucket_half_count_magnitude) + sub_bucket \
        - h.sub_bucket_half_count
    return index


_HDR_INDEX: Final = hdr_index_table(DIRECT_US)


def add_counts(hist: HdrHistogram, values: np.ndarray, counts: np.ndarray) -> None:
    """``hist.record_value(v, c)`` for each ``v`` (ascending, < ``DIRECT_US``) and ``c``,
    in a few numpy calls."""
    target = np.ctypeslib.as_array(hist.counts)
    np.add.at(target, _HDR_INDEX[values], counts.astype(target.dtype))
    hist.total_count += int(counts.sum())
    hist.min_value = min(hist.min_value, max(int(values[0]), HDR_LOWEST_US))
    hist.max_value = max(hist.max_value, max(int(values[-1]), HDR_LOWEST_US))


def room_slices(rooms: int, procs: int) -> list[tuple[int, int]]:
    """``(first room, count)`` of each of ``procs`` loadgen processes: the rooms split as
    evenly as can be, in order."""
    bounds = [rooms * i // procs for i in range(procs + 1)]
    return [(lo, hi - lo) for lo, hi in zip(bounds, bounds[1:], strict=False)]
