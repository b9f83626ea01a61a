"""Key derivations (scrypt, 16 MiB each) under a budget.

Every password hash (create) and every password check that is not answered from the
room's cache (join) runs here, in a small thread pool off the event loop, under three
bounds (docs/security.md, "Key derivations"):

* a per-IP rate: ``kdf_rate_per_ip`` derivations started per second (token bucket,
  burst = rate, ``Quotas.allow_kdf``); past it RATE_LIMITED at once;
* a per-IP concurrency: ``kdf_concurrency_per_ip`` derivations of one IP running or
  queued for a thread at once; its others wait their turn outside the pool queue, so one
  IP never queues more than that in front of anyone else;
* a bounded pool queue: at most ``threads + kdf_queue`` derivations admitted to the pool;
  a derivation that would have to queue past that fails fast with RATE_LIMITED.

Worst case held: one ``_Turn`` per IP with a derivation admitted or waiting (bounded by
the open connections) and, per waiting derivation, one future (its request is held by
its connection anyway).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from control.quotas import Quotas, retry_seconds
from control.registry import RegistryError
from wire.codes import Status

T = TypeVar("T")

KDF_THREADS = 2
"""scrypt releases the GIL; two threads use the two cores of the reference machine and
hold 32 MiB while both run."""


class _Turn:
    """The derivations of one IP: how many hold a slot, and who waits for one."""

    __slots__ = ("running", "waiters")

    def __init__(self) -> None:
        self.running = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class KeyDerivations:
    """``await run(ip, fn, *args)`` runs ``fn`` in the pool within the budget, or raises
    ``RegistryError(RATE_LIMITED)`` at once. ``shutdown()`` when the service stops."""

    def __init__(self, quotas: Quotas, threads: int = KDF_THREADS) -> None:
        self.quotas = quotas
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ocm-kdf")
        self._turns: dict[str, _Turn] = {}
        self.admitted = 0
        """Derivations handed to the pool (running or in its queue)."""
        self.runs = 0
        self.refused = {"rate": 0, "busy": 0}

    async def run(self, ip: str, fn: Callable[..., T], *args: object) -> T:
        settings = self.quotas.settings
        if not self.quotas.allow_kdf(ip, time.monotonic()):
            self.refused["rate"] += 1
            wait = retry_seconds(self.quotas.kdf_retry_after(ip, time.monotonic()))
            raise RegistryError(Status.RATE_LIMITED, "too many password checks from your "
                                f"address; retry in {wait} s")
        turn = self._turns.get(ip)
        if turn is None:
            turn = self._turns[ip] = _Turn()
        if turn.running >= settings.kdf_concurrency_per_ip:
            await self._wait_turn(ip, turn)  # the slot is handed over: already admitted
        else:
            if self.admitted >= self.threads + settings.kdf_queue:
                self._forget(ip, turn)
                self.refused["busy"] += 1
                raise RegistryError(Status.RATE_LIMITED, "the server is busy checking "
                                    "passwords; try again in a moment")
            turn.running += 1
            self.admitted += 1
        try:
            self.runs += 1
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self._release(ip, turn)

    async def _wait_turn(self, ip: str, turn: _Turn) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        turn.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(ip, turn)  # handed a slot just as we were cancelled
            else:
                turn.waiters.remove(waiter)
                self._forget(ip, turn)
            raise

    def _release(self, ip: str, turn: _Turn) -> None:
        """Hand the slot to the IP's next waiter, or give it back to the pool."""
        while turn.waiters:
            waiter = turn.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        turn.running -= 1
        self.admitted -= 1
        self._forget(ip, turn)

    def _forget(self, ip: str, turn: _Turn) -> None:
        if not turn.running and not turn.waiters and self._turns.get(ip) is turn:
            del self._turns[ip]

    def statistics(self) -> dict[str, int]:
        return {"runs": self.runs, "admitted": self.admitted, "ips": len(self._turns),
                "refused_rate": self.refused["rate"], "refused_busy": self.refused["busy"]}

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
