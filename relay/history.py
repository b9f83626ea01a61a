"""A room's numbered deliveries for reliable members (wire/reliable.py): sans-IO, bounded.

The owning worker numbers every room-ordered delivery of a room that has (or had) a
reliable member: ``Seq`` 1, 2, ... within the room's ``epoch``. ``History`` keeps the
last ones, ready to resend as they were sent, within three limits (count, bytes, age)
and within a budget shared by every room of the worker (``HistoryBudget``): whatever
falls out is answered as lost. Every operation is O(1) amortised, a NACK O(range).
"""

from __future__ import annotations

from collections import deque
from typing import Final

from wire.limits import (
    HISTORY_ENTRY_OVERHEAD_BYTES,
    HISTORY_MAX_AGE_S,
    HISTORY_MAX_BYTES,
    HISTORY_MAX_MESSAGES,
    HISTORY_WORKER_MAX_BYTES,
)
from wire.reliable import DATA_HEADER, MAX_SEQ, Down, encode_lost

_pack_data: Final = DATA_HEADER.pack
_DATA: Final = int(Down.DATA)

Entry = tuple[int, float, bytes]
"""A kept delivery: ``(seq, when, datagram)`` (``b""``: a ``Seq`` used up without one)."""


class HistoryBudget:
    """The limits of a worker's histories, and the bytes they hold together."""

    __slots__ = ("max_messages", "max_bytes", "max_age", "worker_bytes", "used")

    def __init__(self, max_messages: int = HISTORY_MAX_MESSAGES,
                 max_bytes: int = HISTORY_MAX_BYTES, max_age: float = HISTORY_MAX_AGE_S,
                 worker_bytes: int = HISTORY_WORKER_MAX_BYTES) -> None:
        if max_messages < 0 or max_bytes < 0 or max_age < 0 or worker_bytes < 0:
            raise ValueError("history limits must be >= 0")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.worker_bytes = worker_bytes
        self.used = 0
        """Bytes charged by every live history of the worker."""


class History:
    """One room incarnation's numbered deliveries: ``epoch``, the next ``Seq`` and the
    kept entries ``(seq, when, datagram)``, oldest first, with no gaps in ``seq`` (a
    delivery that could not be kept ends the history before it: older ones go too).

    An empty history holds no deque: ``entries`` is ``()`` until something is kept, and
    again once nothing is (cleared, or every entry aged out). A deque with its first block
    is about 650 B, more than an idle member costs; a room keeping nothing holds none."""

    __slots__ = ("epoch", "next_seq", "entries", "bytes", "budget", "now")

    def __init__(self, epoch: int, budget: HistoryBudget, now: float = 0.0) -> None:
        self.epoch = epoch
        self.next_seq = 1
        self.entries: deque[Entry] | tuple[()] = ()
        self.bytes = 0
        self.budget = budget
        self.now = now
        """The latest time it was given (notices numbered without a clock use it; the
        worker's timer gives it one every second)."""

    def number(self, body: bytes, now: float) -> bytes:
        """Give ``body`` (an ``ocm1`` delivery) the next ``Seq``; keep it if the limits
        allow; return the datagram to send (``01 | Epoch | Seq | body``)."""
        self.now = now
        seq = self.next_seq
        if seq >= MAX_SEQ:  # never in practice: stop numbering rather than wrap
            return _pack_data(_DATA, self.epoch, seq) + body
        self.next_seq = seq + 1
        datagram = _pack_data(_DATA, self.epoch, seq) + body
        self.keep(seq, datagram, now)
        return datagram

    def skip(self, now: float) -> int:
        """Use up a ``Seq`` without a delivery (a message too long for this format): a
        NACK for it is answered as lost."""
        seq = self.next_seq
        if seq < MAX_SEQ:
            self.next_seq = seq + 1
            self.keep(seq, b"", now)
        return seq

    def keep(self, seq: int, datagram: bytes, now: float) -> None:
        budget = self.budget
        cost = len(datagram) + HISTORY_ENTRY_OVERHEAD_BYTES
        if budget.max_messages == 0 or cost > budget.max_bytes:
            self.clear()
            return
        entries = self.entries
        while entries and (len(entries) >= budget.max_messages
                           or self.bytes + cost > budget.max_bytes):
            self._pop()
        while entries and budget.used + cost > budget.worker_bytes:
            self._pop()
        if budget.used + cost > budget.worker_bytes:  # other rooms hold the budget
            self.clear()
            return
        if not isinstance(entries, deque):
            entries = self.entries = deque()
        entries.append((seq, now, datagram))
        self.bytes += cost
        budget.used += cost

    def expire(self, now: float) -> None:
        """Drop the entries older than ``max_age``."""
        self.now = now
        limit = now - self.budget.max_age
        entries = self.entries
        while entries and entries[0][1] <= limit:
            self._pop()
        if not entries:
            self.entries = ()  # an idle room gives its deque back

    def resend(self, first: int, count: int, now: float, out: list[bytes]) -> None:
        """Append to ``out`` the datagrams answering a NACK of ``first .. first+count-1``:
        each kept one as it was sent, the rest in ``LOST`` ranges. Numbers not given yet
        are ignored."""
        self.expire(now)
        last = min(first + count, self.next_seq)  # exclusive
        if first >= last:
            return
        entries = self.entries
        oldest = entries[0][0] if entries else self.next_seq
        if first < oldest:
            gone = min(last, oldest)
            out.append(encode_lost(self.epoch, first, gone - first))
            first = gone
        for seq in range(first, last):
            datagram = entries[seq - oldest][2]
            out.append(datagram or encode_lost(self.epoch, seq, 1))

    def clear(self) -> None:
        """Drop every entry (the room closed, or it can keep nothing)."""
        self.budget.used -= self.bytes
        self.bytes = 0
        self.entries = ()

    def _pop(self) -> None:
        entries = self.entries
        assert isinstance(entries, deque), "popped only while not empty"
        _, _, datagram = entries.popleft()
        cost = len(datagram) + HISTORY_ENTRY_OVERHEAD_BYTES
        self.bytes -= cost
        self.budget.used -= cost
