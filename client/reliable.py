"""The client side of reliable framed delivery (``ocm1r``, wire/reliable.py): sans-IO.

``Receiver`` puts a room's numbered deliveries back in room order: it holds what comes
early, asks the relay for what is missing (NACK, after a short reordering delay, then
with exponential backoff) and, for what the relay no longer has or never answers, emits
one ``Gap`` ("N messages could not be recovered") in the hole's place. It never emits a
sequence number twice.

``Sender`` gives each message an id and keeps it pending until the relay acknowledges it,
resending on a timer (backoff); after ``SEND_FAIL_AFTER_S`` it is ``Failed`` and may be
retried (same id: the relay drops a copy it has relayed already). After ``HOLD_CALM_S``
without a sign of loss it lets the relay hold its acknowledgements for the next DATA to
carry (``06`` SENDs): one datagram fewer per message for the relay to send.

Both are driven as aioquic's connection is: ``handle_*(…, now)`` in, events out, and
``next_deadline()`` / ``handle_timer(now)``. ``ReliableChat`` joins them for a link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from wire import errors, reliable
from wire.limits import ACK_HOLD_S, ACK_HOLD_TICK_S, NACK_MAX_RANGE_COUNT, NACK_MAX_RANGES

REORDER_DELAY_S: Final = 0.03
"""How long a hole may be reordering before it is NACKed."""
SYNC_RETRY_S: Final = 0.3
"""Before the relay has said where we start: how often to ask (a keepalive)."""
NACK_BACKOFF_S: Final = (0.1, 0.2, 0.4, 0.8, 1.0)
"""Waits between NACKs of one hole (the last repeats)."""
NACK_MIN_INTERVAL_S: Final = 0.1
"""At most one NACK this often (the relay's NACK_RATE): holes due meanwhile wait and go
together in the next one."""
NACK_MAX_TRIES: Final = 12
"""NACKs of one hole before it is given up as lost (~10 s: covers a short outage)."""
MAX_HELD: Final = 2048
"""Sequence numbers held or awaited past the next one in order; past it the oldest
hole is given up (a bound, not a case expected in practice)."""
RTO_INITIAL_S: Final = 0.2
"""The first retransmission timeout, before a round trip was measured."""
RTO_MIN_S, RTO_MAX_S = 0.05, 2.0
"""The timeout is 4 smoothed round trips within these bounds, doubled per go-back."""
SEND_FAIL_AFTER_S: Final = 15.0
"""A message unacknowledged this long after its first copy is ``Failed`` (and with it
every later one: the relay takes them in order)."""
SEND_WINDOW: Final = 16
"""Our messages in flight at once."""
GO_BACK_MIN_S: Final = 0.03
"""The window goes again at most this often on the relay's hint."""
HOLD_CALM_S: Final = 10.0
"""Messages go as ``06`` SENDs (the relay may hold their acknowledgement for a DATA to
carry) once a round trip was measured, no loss was seen for this long (a go-back, the
relay's hint, a NACK of ours) and the room is busy (``CARRIER_RATE``). Loss makes the next
copies ``01`` SENDs again, whose loss is found one timeout later, not ``ACK_WAIT_S``
later."""
CARRIER_RATE: Final = 10.0
"""Room numbers a second (the receiver's next one, between two sends at least a second
apart) from which a held acknowledgement is likely to find a DATA to ride on within
``ACK_HOLD_S``: below it (a quiet room, where it would go alone after the hold and only
make the message look pending longer) SENDs are ``01``."""
ACK_WAIT_S: Final = ACK_HOLD_S + ACK_HOLD_TICK_S + 0.05
"""Added to the retransmission timeout while a ``06`` copy is in flight: the longest the
relay holds its acknowledgement, and a margin."""


# --- events ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Delivered:
    """A room delivery, in room order: ``body`` is an ``ocm1`` delivery (chat or notice)."""

    seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """``count`` deliveries of the room, before the next one, could not be recovered."""

    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Acked:
    """Our message ``msg_id`` reached the relay as the room's ``seq``."""

    msg_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The relay refused our message ``msg_id`` (an ``error`` notice says why)."""

    msg_id: int


@dataclass(frozen=True, slots=True)
class Failed:
    """Our message ``msg_id`` was never acknowledged; ``Sender.retry`` sends it again."""

    msg_id: int


@dataclass(frozen=True, slots=True)
class Unnumbered:
    """A notice outside the room order (``error``, ``closed``, ``disconnected``)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Addressed:
    """Encrypted rooms: an envelope or key request for us alone, outside the room order
    (``body``: ``UsernameLen Username Kind Body``)."""

    body: bytes


Event = Delivered | Gap | Acked | Refused | Failed | Unnumbered | Addressed


# --- receiver --------------------------------------------------------------------------------
class Receiver:
    """Room order for one membership (one epoch). Nothing is emitted before the relay
    has said where this member starts (``Sync``, the answer to a keepalive): until then
    deliveries are held, and ``handle_timer`` asks for a keepalive now and then."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.next: int | None = None
        """The next sequence number to emit (None until the first ``Sync``)."""
        self.held: dict[int, bytes] = {}
        """Arrived early (or before the start was known), by number."""
        self.own: set[int] = set()
        """Numbers of our own messages (acknowledged): nothing to show, nothing awaited."""
        self.lost: set[int] = set()
        """Numbers the relay said it cannot resend (emitted as part of a ``Gap``)."""
        self.missing: dict[int, tuple[float, int]] = {}
        """Awaited numbers: when to NACK next, and NACKs sent so far."""
        self.due_floor = float("inf")
        """At most the earliest NACK time in ``missing`` (exact after ``handle_timer``; a
        hole filled since may leave it early: a timer that finds nothing due is harmless).
        Kept so that a datagram costs no scan of the holes."""
        self.awaited_to = 0
        """Every number from ``next`` up to this one (excluded) is held, missing, lost or
        our own: ``_await_before`` starts here, not at ``next``."""
        self.last_nack = float("-inf")
        self.sync_due: float | None = None
        """Before the start is known: when to ask for a ``Sync`` (a keepalive) again."""
        self.emitted = 0
        self.recovered = 0
        """Numbers that arrived after they were NACKed."""

    def handle_data(self, epoch: int, seq: int, body: bytes, now: float) -> list[Event]:
        if not self._epoch_ok(epoch) or seq == 0:
            return []
        if self.next is None:
            self.held[seq] = body
            self._want_sync(now)
            return []
        if seq < self.next or seq in self.held or seq in self.own:
            return []  # a duplicate
        if self.missing.pop(seq, None) is not None:
            self.recovered += 1
        self.lost.discard(seq)
        self.held[seq] = body
        self._await_before(seq, now)
        return self._drain()

    def handle_own(self, epoch: int, seq: int, now: float) -> list[Event]:
        """Our own message is ``seq``: nothing to show (the UI shows it already)."""
        if not self._epoch_ok(epoch) or seq == 0:
            return []
        if self.next is not None and seq < self.next:
            return []  # passed already (its DATA was resent to us before the ACK came)
        self.own.add(seq)
        self.missing.pop(seq, None)
        if self.next is None:
            self._want_sync(now)
            return []
        if seq >= self.next:
            self._await_before(seq, now)
        return self._drain()

    def handle_sync(self, epoch: int, start: int, latest: int, now: float) -> list[Event]:
        """The answer to a keepalive: our first number, and the room's latest one (a
        hole up to it is a lost last message)."""
        if not self._epoch_ok(epoch):
            return []
        if self.next is None:
            self.next = start
            self.sync_due = None
            for seq in [s for s in self.held if s < start]:
                del self.held[seq]
            top = max([latest, *self.held, *self.own])
            self._await_before(top + 1, now)
        elif latest >= self.next:
            self._await_before(latest + 1, now)
        return self._drain()

    def handle_lost(self, epoch: int, first: int, count: int, now: float) -> list[Event]:
        if not self._epoch_ok(epoch) or self.next is None:
            return []
        for seq in range(max(first, self.next), first + count):
            if seq not in self.held and seq not in self.own:
                self.missing.pop(seq, None)
                self.lost.add(seq)
        return self._drain()

    def next_deadline(self) -> float | None:
        due = self.due_floor if self.missing else None
        if self.sync_due is not None and (due is None or self.sync_due < due):
            return self.sync_due
        return due

    def handle_timer(self, now: float) -> tuple[list[tuple[int, int]], list[Event], bool]:
        """The ranges to NACK now, the events of holes given up, and whether to send a
        keepalive (to learn our start)."""
        want_sync = self.sync_due is not None and self.sync_due <= now
        if want_sync:
            self.sync_due = now + SYNC_RETRY_S
        due = sorted(seq for seq, (when, _) in self.missing.items() if when <= now)
        later = self.last_nack + NACK_MIN_INTERVAL_S
        if due and now < later:  # wait, then all together
            for seq in due:
                self.missing[seq] = (later, self.missing[seq][1])
            self.due_floor = min(when for when, _ in self.missing.values())
            return [], [], want_sync
        if due:
            self.last_nack = now
        give_up = []
        for seq in due:
            _, tries = self.missing[seq]
            if tries >= NACK_MAX_TRIES:
                give_up.append(seq)
                continue
            wait = NACK_BACKOFF_S[min(tries, len(NACK_BACKOFF_S) - 1)]
            self.missing[seq] = (now + wait, tries + 1)
        for seq in give_up:
            del self.missing[seq]
            self.lost.add(seq)
        self.due_floor = min((when for when, _ in self.missing.values()), default=float("inf"))
        ranges = _ranges([s for s in due if s in self.missing])
        return ranges, self._drain() if give_up else [], want_sync

    def renack(self, now: float) -> None:
        """After a resume: NACK every hole at once (the relay may have it again)."""
        for seq, (_, tries) in list(self.missing.items()):
            self.missing[seq] = (now, min(tries, NACK_MAX_TRIES - 3))
        self.due_floor = now
        if self.next is None:
            self.sync_due = now

    # -- internals --
    def _epoch_ok(self, epoch: int) -> bool:
        if self.epoch is None:
            self.epoch = epoch
        return epoch == self.epoch

    def _want_sync(self, now: float) -> None:
        if self.sync_due is None:
            self.sync_due = now + REORDER_DELAY_S

    def _await_before(self, seq: int, now: float) -> None:
        """Every number from ``next`` to ``seq - 1`` not held is awaited."""
        assert self.next is not None
        start = max(self.next, seq - MAX_HELD)
        if start > self.next:  # too far ahead: what lies before is given up
            for s in range(self.next, start):
                if s not in self.held and s not in self.own:
                    self.missing.pop(s, None)
                    self.lost.add(s)
        due = now + REORDER_DELAY_S
        for s in range(max(start, self.awaited_to), seq):
            if s not in self.held and s not in self.missing and s not in self.lost \
                    and s not in self.own:
                self.missing[s] = (due, 0)
                if due < self.due_floor:
                    self.due_floor = due
        if seq > self.awaited_to:
            self.awaited_to = seq

    def _drain(self) -> list[Event]:
        assert self.next is not None
        out: list[Event] = []
        held, own, lost = self.held, self.own, self.lost
        while True:
            seq = self.next
            if seq in held:
                out.append(Delivered(seq, held.pop(seq)))
                self.emitted += 1
                self.next = seq + 1
            elif seq in own:
                own.discard(seq)
                self.next = seq + 1
            elif seq in lost:
                first = seq
                while seq in lost:
                    lost.discard(seq)
                    seq += 1
                out.append(Gap(first, seq - first))
                self.next = seq
            else:
                return out


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted numbers as at most ``NACK_MAX_RANGES`` ``(first, count)`` ranges."""
    out: list[tuple[int, int]] = []
    for seq in seqs:
        if out and out[-1][0] + out[-1][1] == seq and out[-1][1] < NACK_MAX_RANGE_COUNT:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        elif len(out) < NACK_MAX_RANGES:
            out.append((seq, 1))
        else:
            break
    return out


# --- sender ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Pending:
    msg_id: int
    text: bytes
    first: float | None = None
    """When its first copy went out (None: waiting for room in the window)."""
    failed: bool = False
    resent: bool = False
    """A second copy went out: its acknowledgement does not measure the round trip."""
    held: bool = False
    """Its last copy went as a ``06`` SEND (the relay may hold the acknowledgement)."""


class Sender:
    """Our messages until the relay has them: go-back-N. The relay takes ids in order
    (so that our messages keep their order in the room), so an acknowledgement of ``X``
    acknowledges every id before it, and after a loss the whole window goes again: when
    the oldest is unacknowledged for a retransmission timeout (with backoff), or at once
    (at most every ``GO_BACK_MIN_S``) when the relay re-acknowledges an old id because it
    dropped a later one. At most ``SEND_WINDOW`` messages are in flight."""

    def __init__(self) -> None:
        self.last_id = 0
        self.pending: dict[int, Pending] = {}
        """Unacknowledged messages by id, in id order (failed ones included)."""
        self.due: float | None = None
        """When the window goes again (None: nothing in flight)."""
        self.tries = 0
        """Go-backs since the oldest message was last acknowledged (the backoff)."""
        self.last_go_back = float("-inf")
        self.srtt: float | None = None
        """Smoothed round trip from first copy to acknowledgement (Karn: first copies)."""
        self.copies = 0
        """Datagrams sent, first copies included."""
        self.last_loss = float("-inf")
        """When loss was last seen (``saw_loss``): ``06`` SENDs wait ``HOLD_CALM_S``."""
        self.carriers = False
        """The room is busy enough for a held acknowledgement to ride on a DATA
        (``ReliableChat`` sets it: ``CARRIER_RATE``)."""

    def send(self, text: bytes, now: float) -> tuple[int, bytes | None]:
        """A new message: its id, and the Message to send now (None: the window is
        full or a failed message is ahead; it goes when there is room)."""
        self.last_id += 1
        msg_id = self.last_id
        item = self.pending[msg_id] = Pending(msg_id, text)
        window = self._window()
        if item not in window:
            return msg_id, None
        copy = self._copy(item, now)
        if self.due is None:
            self.due = now + self.rto() + (ACK_WAIT_S if item.held else 0.0)
        return msg_id, copy

    def saw_loss(self, now: float) -> None:
        """A sign of loss (ours or the receiver's): ``01`` SENDs for ``HOLD_CALM_S``."""
        self.last_loss = now

    def waiting(self, now: float) -> float:
        """How long the oldest message in flight has waited for its acknowledgement (0:
        none in flight; a failed one is not)."""
        for item in self.pending.values():
            if item.failed or item.first is None:
                break
            return now - item.first
        return 0.0

    def rto(self) -> float:
        """The retransmission timeout now (backoff included)."""
        base = RTO_INITIAL_S if self.srtt is None else min(RTO_MAX_S,
                                                           max(RTO_MIN_S, 4 * self.srtt))
        return min(RTO_MAX_S, base * float(2 ** min(self.tries, 6)))

    def handle_ack(self, msg_id: int, seq: int, now: float) -> list[Event]:
        """An acknowledgement of ``msg_id`` and so of every id before it."""
        done = [i for i in self.pending if i <= msg_id]
        if not done:  # an old id again: the relay dropped what followed, go back now
            if self.pending and now - self.last_go_back >= GO_BACK_MIN_S \
                    and not next(iter(self.pending.values())).failed:
                self.due = now
                self.last_loss = now
            return []
        events: list[Event] = []
        last = self.pending[done[-1]]
        if last.msg_id == msg_id and not last.resent and not last.held \
                and last.first is not None:
            sample = now - last.first
            self.srtt = sample if self.srtt is None else 0.875 * self.srtt + 0.125 * sample
        for i in done:
            item = self.pending.pop(i)
            if i == msg_id and not seq:
                events.append(Refused(i))
            else:
                events.append(Acked(i, seq if i == msg_id else 0))
        self.tries = 0
        window = self._window()
        self.due = None if not window else now + self.rto() + (
            ACK_WAIT_S if any(item.held for item in window) else 0.0)
        for item in window:  # room in the window: first copies of the waiting ones
            if item.first is None:
                self.due = now
        return events

    def retry(self, now: float) -> list[int]:
        """Send the failed messages again (their ids keep their places)."""
        ids = [p.msg_id for p in self.pending.values() if p.failed]
        for item in self.pending.values():
            item.failed = False
            item.first = None
        if ids:
            self.tries = 0
            self.due = now
        return ids

    def next_deadline(self) -> float | None:
        return self.due

    def handle_timer(self, now: float) -> tuple[list[bytes], list[Event]]:
        """Copies to send now (the window), and the messages that failed."""
        if self.due is None or self.due > now:
            return [], []
        window = self._window()
        if not window:
            self.due = None
            return [], []
        oldest = window[0]
        if oldest.first is not None and now - oldest.first >= SEND_FAIL_AFTER_S:
            self.due = None
            events: list[Event] = []
            for item in self.pending.values():  # in order: none can pass the oldest
                item.failed = True
                events.append(Failed(item.msg_id))
            return [], events
        if any(item.first is not None for item in window):
            self.tries += 1
            self.last_go_back = self.last_loss = now
        copies = [self._copy(item, now) for item in window]
        self.due = now + self.rto() + (ACK_WAIT_S if any(item.held for item in window)
                                       else 0.0)
        return copies, []

    def rearm(self, now: float) -> None:
        """After a resume: send the window again at once."""
        if self._window():
            self.tries = 0
            self.due = now

    def _window(self) -> list[Pending]:
        out: list[Pending] = []
        for item in self.pending.values():
            if item.failed or len(out) >= SEND_WINDOW:
                break
            out.append(item)
        return out

    def _copy(self, item: Pending, now: float) -> bytes:
        if item.first is None:
            item.first = now
        else:
            item.resent = True
        self.copies += 1
        item.held = self.carriers and self.srtt is not None \
            and now - self.last_loss >= HOLD_CALM_S
        return reliable.encode_send(item.msg_id, item.text, item.held)


# --- both, for one membership -----------------------------------------------------------------
class ReliableChat:
    """One ``ocm1r`` membership: feed it every delivery and every timer; send what it
    returns (Messages, to wrap in Stage 2 datagrams)."""

    def __init__(self, nack_kind: reliable.Up = reliable.Up.NACK) -> None:
        self.receiver = Receiver()
        self.sender = Sender()
        self.malformed = 0
        self.nack_kind = nack_kind
        """``Up.E2E_NACK`` in an encrypted room (where ``02`` is an envelope)."""
        self._rate_from = float("-inf")
        self._rate_next: int | None = None
        """The receiver's next number at ``_rate_from``: a send a second or more later
        sets ``sender.carriers`` from how far the room got meanwhile."""

    def handle_delivery(self, data: bytes, now: float) -> list[Event]:
        try:
            item = reliable.decode_delivery(data)
        except errors.ProtocolError:
            self.malformed += 1
            return []
        rx = self.receiver
        if isinstance(item, reliable.Data):
            return rx.handle_data(item.epoch, item.seq, item.body, now)
        if isinstance(item, reliable.Sync):
            return rx.handle_sync(item.epoch, item.start, item.latest, now)
        if isinstance(item, reliable.Carried):  # the ACK first, then the DATA it rode on
            return self._ack(item.ack, now) + rx.handle_data(item.data.epoch, item.data.seq,
                                                             item.data.body, now)
        if isinstance(item, reliable.Ack):
            return self._ack(item, now)
        if isinstance(item, reliable.Lost):
            return rx.handle_lost(item.epoch, item.first, item.count, now)
        if isinstance(item, reliable.Direct):
            return [Addressed(item.body)]
        return [Unnumbered(item.body)]

    def _ack(self, ack: reliable.Ack, now: float) -> list[Event]:
        events = self.sender.handle_ack(ack.msg_id, ack.seq, now)
        return events + self.receiver.handle_own(ack.epoch, ack.seq, now) if events else events

    def send(self, text: bytes, now: float) -> tuple[int, bytes | None]:
        elapsed = now - self._rate_from
        if elapsed >= 1.0:  # how busy the room was since the window began
            got, began = self.receiver.next, self._rate_next
            self.sender.carriers = got is not None and began is not None \
                and got - began >= CARRIER_RATE * elapsed
            self._rate_from, self._rate_next = now, got
        return self.sender.send(text, now)

    def next_deadline(self) -> float | None:
        """The earliest timer of either side (no list: the loadgen asks after each
        datagram of its Python path)."""
        rx, tx = self.receiver.next_deadline(), self.sender.next_deadline()
        if rx is None or (tx is not None and tx < rx):
            return tx
        return rx

    def handle_timer(self, now: float) -> tuple[list[bytes], list[Event]]:
        """Messages to send now (NACK, copies of pending messages) and events."""
        ranges, events, want_sync = self.receiver.handle_timer(now)
        out: list[bytes] = [b""] if want_sync else []
        if ranges and self.receiver.epoch is not None:
            out.append(reliable.encode_nack(self.receiver.epoch, ranges, self.nack_kind))
            self.sender.saw_loss(now)
        copies, failed = self.sender.handle_timer(now)
        return out + copies, events + failed

    def resumed(self, now: float) -> None:
        """The link moved (a resume): NACK holes and resend pending messages now."""
        self.receiver.renack(now)
        self.sender.saw_loss(now)
        self.sender.rearm(now)
