"""The Stage 1 port's reader: ``GlobalChat`` on the worker's loop, with a fan-out budget.

Stage 1 shares worker 0's event loop with that worker's rooms, and one Stage 1 message
fans out to up to ``max_stage1_clients`` (10,000) addresses. Sent in one go, a few hundred
such messages held the loop for seconds: room chat stalled and the worker missed its pings
and was killed. So this reader sends at most ``STAGE1_MAX_SENDS_PER_S`` Stage 1
datagrams a second (wire/limits.py), and per loop turn at most ``SENDS_PER_TURN`` of them
for at most ``TURN_BUDGET_S``. When the budget is spent in the middle of a fan-out it stops
reading the Stage 1 socket and carries on with the same fan-out on a later turn
(``call_soon``, or ``call_later`` until the per-second bucket has refilled), after the
loop has polled every other socket, served the pipe and run its timers; it reads again
once the fan-out is done. One fan-out is in progress at most, so nothing queues here: a
backlog waits in the socket's kernel buffer, and past that the kernel drops it.

Why a per-second cap and not only a per-turn one: a worker that never sleeps is at the
mercy of the scheduler on a shared machine (a room datagram then waits for the worker's
next time slice, not for the loop), so Stage 1 must leave worker 0 mostly idle.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Final

from relay.core import Addr, GlobalChat
from wire.limits import STAGE1_MAX_SENDS_PER_S

log = logging.getLogger("ocm.relay")

SENDS_PER_TURN: Final = 256
"""Stage 1 datagrams sent per loop turn at most."""
TURN_BUDGET_S: Final = 0.0005
"""...and for at most this long (the clock is read every ``CLOCK_EVERY`` sends): about the
longest Stage 1 can delay a room datagram that is waiting for the loop."""
CLOCK_EVERY: Final = 16
READS_PER_TURN: Final = 512
"""Stage 1 datagrams read per reader callback at most (cheap when dropped or keepalives)."""
RECV_BUFFER_BYTES: Final = 4097
"""One byte over the limit: a longer datagram arrives truncated to 4097 and is dropped."""


class GlobalChatRelay:
    """Reads the Stage 1 socket into ``chat`` and sends its fan-outs, budgeted per turn
    and per second. Call ``start()`` once the loop runs; the reader and any pending
    fan-out die with the loop.
    """

    def __init__(self, sock: socket.socket, chat: GlobalChat, loop: asyncio.AbstractEventLoop,
                 sends_per_s: float = STAGE1_MAX_SENDS_PER_S,
                 sends_per_turn: int = SENDS_PER_TURN, turn_budget_s: float = TURN_BUDGET_S
                 ) -> None:
        self.sock = sock
        self.chat = chat
        self.loop = loop
        self.sends_per_s = sends_per_s
        self.sends_per_turn = sends_per_turn
        self.turn_budget_s = turn_budget_s
        self._allowance = float(sends_per_turn)
        self._stamp = loop.time()
        self._job: tuple[bytes, Addr, list[Addr]] | None = None
        self._next = 0
        self._reading = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self._read(True)

    def _read(self, on: bool) -> None:
        if on != self._reading and self.sock.fileno() >= 0:
            self._reading = on
            if on:
                self.loop.add_reader(self.sock.fileno(), self._on_readable)
            else:
                self.loop.remove_reader(self.sock.fileno())

    def _budget(self, now: float) -> int:
        """Sends allowed now: the per-second bucket, capped at ``sends_per_turn``."""
        allowance = self._allowance + (now - self._stamp) * self.sends_per_s
        self._stamp = now
        self._allowance = min(allowance, float(self.sends_per_turn))
        return int(self._allowance)

    def _on_readable(self) -> None:
        recvfrom = self.sock.recvfrom
        handle = self.chat.handle_datagram
        now = time.monotonic()
        for _ in range(READS_PER_TURN):
            try:
                data, addr = recvfrom(RECV_BUFFER_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:  # not expected on an unconnected socket: log, go on
                log.warning("Stage 1 recvfrom: %s", exc)
                return
            targets = handle(data, addr, now)
            if targets is None:
                continue
            self._job = (data, addr, targets)
            self._next = 0
            if not self._work():
                return

    def _work(self) -> bool:
        """Send what this turn's budget allows of the current fan-out. True if it is done
        and the budget not spent (the reader may go on); else the reader is paused and
        the fan-out resumes on a later turn."""
        now = self.loop.time()
        budget = self._budget(now)
        if budget > 0:
            sent = self._send(budget, time.monotonic() + self.turn_budget_s)
            self._allowance -= sent
            if self._job is None and sent < budget:
                self._read(True)
                return True
        self._read(False)
        if self._job is None:
            self.loop.call_soon(self._resume)
        else:
            # Wait for a whole turn's worth (or what is left of the fan-out), not for one
            # send: waking for a few sends at a time would keep the worker busy.
            _, _, targets = self._job
            chunk = min(self.sends_per_turn, len(targets) - self._next)
            wait = (chunk - self._allowance) / self.sends_per_s
            if wait > 0:
                self.loop.call_later(wait, self._resume)
            else:
                self.loop.call_soon(self._resume)
        return False

    def _resume(self) -> None:
        if self._job is None:
            self._read(True)
        else:
            self._work()

    def _send(self, budget: int, until: float) -> int:
        """Send the current fan-out's next datagrams, at most ``budget`` and not past the
        clock reading ``until``; return how many were sent. The fan-out is done
        (``_job`` None) once its list is exhausted."""
        assert self._job is not None
        data, src, targets = self._job
        i = self._next
        n = len(targets)
        sendto = self.sock.sendto
        chat = self.chat
        failing = chat.failing
        clock = time.monotonic
        sent = 0
        while i < n and sent < budget:
            a = targets[i]
            i += 1
            if a != src:
                try:
                    sendto(data, a)
                except OSError:
                    chat.handle_send_failure(a)
                else:
                    if failing:  # the streak ends at a send that went through
                        chat.handle_send_success(a)
                sent += 1
                if not sent % CLOCK_EVERY and clock() >= until:
                    break
        self._next = i
        if i >= n:
            self._job = None
        return sent
