"""Schedule-based pacing: when each chat message is due, and a precise wake-up for it.

The schedule of one process is fixed before the run: its ``n`` members send in turn, one
message every ``1e9 / (n × rate)`` ns starting at ``t0``, so each member sends every
``1 / rate`` s with its own phase. A message is due at its scheduled time whether or not
the previous one went out on time (wrk2): a late sender catches up by sending everything
that is due at once, and the lateness shows up in the latency.

Python's ``epoll.poll`` and libuv timers have 1 ms resolution, which would add up to 1 ms
of pacing jitter to every latency. ``TimerFd`` arms a Linux ``timerfd`` (through ``ctypes``;
``os.timerfd_*`` only arrives in Python 3.13) as a periodic timer on ``CLOCK_MONOTONIC``:
one system call per run, and the poll wakes within microseconds of each tick.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

CLOCK_MONOTONIC: Final = 1
TFD_NONBLOCK: Final = os.O_NONBLOCK
TFD_CLOEXEC: Final = os.O_CLOEXEC
TFD_TIMER_ABSTIME: Final = 1
MIN_TICK_NS: Final = 100_000
"""By default the timer never ticks more often than every 100 µs: above 10,000 sends/s per
process the sends are batched per tick, which bounds the pacing lag to 100 µs
(``--pacing-us``). Each tick costs a timer interrupt."""
NS: Final = 1_000_000_000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timespec(ns: int) -> _Timespec:
    return _Timespec(ns // NS, ns % NS)


class TimerFd:
    """A periodic ``CLOCK_MONOTONIC`` timerfd. ``fileno()`` goes into the poll set; call
    ``ack()`` when it is readable. Raise ``OSError`` if the platform has no timerfd."""

    def __init__(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._settime = libc.timerfd_settime
            create = libc.timerfd_create
        except (OSError, AttributeError) as exc:
            raise OSError("timerfd is not available") from exc
        fd = create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._fd = fd

    def fileno(self) -> int:
        return int(self._fd)

    def arm(self, first_ns: int, interval_ns: int) -> None:
        """Tick at ``first_ns`` (absolute monotonic time) and every ``interval_ns`` after."""
        spec = _Itimerspec(_timespec(interval_ns), _timespec(max(first_ns, 1)))
        if self._settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def disarm(self) -> None:
        spec = _Itimerspec(_timespec(0), _timespec(0))
        self._settime(self._fd, 0, ctypes.byref(spec), None)

    def ack(self) -> None:
        """Consume the expiration count so that the fd stops being readable."""
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Schedule:
    """The send schedule of one process: member ``order[k % n]`` sends message ``k`` at
    ``t0_ns + k × period``, for every ``k`` whose time is before ``end_ns``."""

    def __init__(self, order: list[int], rate_per_member: float, t0_ns: int,
                 end_ns: int, min_tick_ns: int = MIN_TICK_NS) -> None:
        self.order = order
        self.min_tick_ns = min_tick_ns
        self.t0_ns = t0_ns
        self.end_ns = end_ns
        total = rate_per_member * len(order)
        self.period_ns = NS / total if total > 0 else float("inf")
        self.k = 0
        self.next_ns = t0_ns if order and total > 0 else end_ns

    @property
    def tick_ns(self) -> int:
        """How often the timer should tick for this schedule."""
        if self.period_ns == float("inf"):
            return NS
        return max(int(self.period_ns), self.min_tick_ns)

    @property
    def done(self) -> bool:
        return self.next_ns >= self.end_ns

    def advance(self) -> None:
        """Move to the next message (call after sending the one due at ``next_ns``)."""
        self.k += 1
        self.next_ns = self.t0_ns + int(self.k * self.period_ns)
