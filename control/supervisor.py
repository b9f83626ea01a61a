"""Relay worker supervision (gunicorn's arbiter, asyncio-shaped).

The supervisor owns the worker table and a pipe per worker; it never touches relay
datagrams. Each worker is a ``spawn`` process (never fork a process with an event loop)
given its UDP socket(s) as arguments. Liveness: a ping every ``ping_interval`` answered
from the worker's event loop; no pong for ``ping_timeout`` -> SIGKILL (workers ignore
SIGTERM, see relay/worker.py) and replace. A replacement is re-seeded with every member
of its rooms (from the registry) and only then starts reading UDP and counts as ready.

Liveness is judged only on time control itself ran: when the heartbeat wakes up late
(control was stopped, swapped out or starved), the pongs already waiting in the pipes have
not been read yet, so every worker gets a fresh ping and a full ``ping_timeout`` to answer.

A respawn that fails (``EMFILE`` in ``Pipe()`` when connections hold every descriptor) is
retried with backoff until it succeeds or control stops, and every failure is logged. A
``DescriptorReserve`` keeps a few descriptors open on ``/dev/null`` and hands them back
just before a spawn, so that a respawn normally succeeds even then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, cast

from relay import ipc, worker
from relay.ipc import AddMember, Ping, Rebind
from relay.worker import WORKER_BOOT_ERROR
from runtime import logs

log = logging.getLogger("ocm.control")

RESTART_BACKOFF_S = (0.05, 2.0)
"""Jittered exponential backoff between restarts of one worker (min, max)."""
RESPAWN_RETRY_S = (0.1, 5.0)
"""Jittered exponential backoff between attempts of a respawn that failed (min, max)."""
CALL_TIMEOUT_S = 10.0
STREAK_RESET_S = 60.0
"""A worker ready this long before it dies starts a new crash streak (no backoff)."""


class WorkerBootError(Exception):
    """A worker exited with WORKER_BOOT_ERROR: restarting would only crash-loop."""


class DescriptorReserve:
    """``size`` descriptors held open on ``/dev/null`` (close-on-exec) for the next spawn.

    ``release()`` closes them just before a spawn opens its pipes; ``fill()`` takes them
    back afterwards, as far as the descriptor limit allows (the heartbeat tops it up).
    Both are synchronous, so no accepted connection can take the freed descriptors
    between ``release()`` and the spawn on a single-threaded event loop.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.fds: list[int] = []

    def fill(self) -> None:
        while len(self.fds) < self.size:
            try:
                self.fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _backoff(attempt: int, bounds: tuple[float, float]) -> float:
    """Jittered exponential delay for the ``attempt``-th retry (1-based)."""
    low, high = bounds
    return float(min(high, low * 2.0 ** min(attempt - 1, 10)) * random.uniform(0.5, 1.0))


class WorkerHandle:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: Any = None
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.Event()
        self.pending: dict[int, asyncio.Future[ipc.Ack | ipc.Pong]] = {}
        self.last_pong = time.monotonic()
        self.restarts = 0
        """Every restart ever (a metric: never reset)."""
        self.streak = 0
        """Consecutive crashes without STREAK_RESET_S of health between: drives backoff."""
        self.ready_since = 0.0
        self.stats: ipc.Stats | None = None
        """The latest counters of the current (or last) process."""
        self.exited: asyncio.Event = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class _Pipe(asyncio.Protocol):
    def __init__(self, supervisor: Supervisor, handle: WorkerHandle) -> None:
        self.supervisor = supervisor
        self.handle = handle
        self.decoder = ipc.FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handle.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ipc.IpcError as exc:
            log.error("worker %d: corrupt pipe (%s); replacing it", self.handle.index, exc)
            self.supervisor.kill(self.handle.index)
            return
        for message in messages:
            self.supervisor.on_message(self.handle, message)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handle.transport is not None and self.handle.transport.is_closing():
            self.handle.transport = None


class Supervisor:
    def __init__(self, count: int, settings: ipc.WorkerSettings, udp: list[socket.socket],
                 stage1: socket.socket | None, inboxes: list[socket.socket],
                 outboxes: list[socket.socket], seed: Callable[[int], Iterable[AddMember]],
                 on_event: Callable[[int, ipc.Bound | ipc.Left | ipc.Closed], None],
                 ping_interval: float, ping_timeout: float, fd_reserve: int = 0) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.settings = settings
        """Given to every worker spawned from now on (SIGHUP replaces it)."""
        self.udp = udp
        self.stage1 = stage1
        self.inboxes = inboxes
        self.outboxes = outboxes
        self.seed = seed
        self.on_event = on_event
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.handles = [WorkerHandle(i) for i in range(count)]
        self.stopping = False
        self.failed: asyncio.Future[None] | None = None
        self._ids = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reserve = DescriptorReserve(fd_reserve)
        self.reserve.fill()
        self.stalls = 0
        """Heartbeats that found control itself had not run for a while (a metric)."""

    # --- starting -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until each is seeded and answering pings."""
        self.failed = asyncio.get_running_loop().create_future()
        await asyncio.gather(*(self._spawn(h) for h in self.handles))
        self._spawn_task(self._heartbeat())

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, handle: WorkerHandle) -> None:
        loop = asyncio.get_running_loop()
        i = handle.index
        process, sock = self._start_process(i)
        try:
            await loop.create_unix_connection(lambda: _Pipe(self, handle), sock=sock)
        except BaseException:
            sock.close()
            _reap(process)
            raise
        handle.process = process
        handle.exited = asyncio.Event()
        handle.last_pong = time.monotonic()
        loop.add_reader(process.sentinel, self._on_exit, handle, process)
        # Re-seed before UDP is read: the commands are applied in order by the worker.
        seeded = 0
        for command in self.seed(i):
            self._write(handle, replace(command, id=self._next_id()))
            seeded += 1
        self._write(handle, ipc.Start())
        try:
            await self._call(handle, Ping(0), wait_ready=False, timeout=30.0)
        except (TimeoutError, ConnectionError):
            if process.is_alive():
                log.error("worker %d (pid %d) did not answer at start; killing it", i,
                          process.pid)
                self.kill(i)
            return
        handle.ready.set()
        handle.ready_since = time.monotonic()
        log.info("worker %d started (pid %d, %d members seeded)", i, process.pid, seeded)

    def _start_process(self, i: int) -> tuple[Any, socket.socket]:
        """Start worker ``i``; return it and control's end of its pipe. Synchronous (see
        ``DescriptorReserve``). Raises ``OSError`` (``EMFILE``) with nothing left open."""
        self.reserve.release()
        try:
            parent_conn, child_conn = self.ctx.Pipe(duplex=True)
            try:
                process = self.ctx.Process(
                    target=worker.main, name=f"ocm-relay-{i}", daemon=False,
                    args=(i, self.settings, self.udp[i], self.stage1 if i == 0 else None,
                          child_conn, self.inboxes[i] if self.inboxes else None,
                          self.outboxes or None))
                process.start()
            except BaseException:
                parent_conn.close()
                raise
            finally:
                child_conn.close()
            try:
                sock = socket.socket(fileno=os.dup(parent_conn.fileno()))
            except BaseException:
                _reap(process)
                raise
            finally:
                parent_conn.close()
        finally:
            self.reserve.fill()
        return process, sock

    def _on_exit(self, handle: WorkerHandle, process: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.sentinel)
        process.join(1.0)  # the sentinel closes a moment before the child is reapable
        code = process.exitcode
        handle.ready.clear()
        handle.exited.set()
        if handle.transport is not None:
            handle.transport.close()
            handle.transport = None
        for future in handle.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"worker {handle.index} exited"))
        handle.pending.clear()
        if self.stopping:
            log.info("worker %d exited (%s); last counters %s", handle.index,
                     describe_exit(code),
                     summarize_counters(handle.stats.as_dict() if handle.stats else {}))
            return
        log.error("worker %d (pid %d) died: %s", handle.index, process.pid, describe_exit(code))
        if code == WORKER_BOOT_ERROR:
            if self.failed is not None and not self.failed.done():
                self.failed.set_exception(WorkerBootError(
                    f"worker {handle.index} could not boot; not restarting"))
            return
        handle.restarts += 1
        if time.monotonic() - handle.ready_since > STREAK_RESET_S:
            handle.streak = 0  # healthy for a while: this crash starts a new streak
        handle.streak += 1
        low, high = RESTART_BACKOFF_S
        delay = min(high, low * 2 ** min(handle.streak - 1, 6)) * random.uniform(0.5, 1.0)
        if handle.streak == 1:
            delay = 0.0  # the first restart of a streak is immediate: rooms are waiting
        loop.call_later(delay, lambda: self._spawn_task(self._respawn(handle)))

    async def _respawn(self, handle: WorkerHandle) -> None:
        """Start a replacement; retry with backoff for as long as starting it fails."""
        attempt = 0
        while not self.stopping:
            try:
                await self._spawn(handle)
            except Exception as exc:  # OSError above all: EMFILE, ENOMEM, EAGAIN
                attempt += 1
                delay = _backoff(attempt, RESPAWN_RETRY_S)
                # Every failure is logged (no repeat suppression): the worker is down.
                log.error("worker %d could not be respawned (attempt %d): %s; retrying in "
                          "%.2fs", handle.index, attempt, exc, delay,
                          extra={logs.ALWAYS: True})
                await asyncio.sleep(delay)
                continue
            if handle.ready.is_set():
                log.warning("worker %d replaced (restart #%d%s)", handle.index,
                            handle.restarts,
                            f", after {attempt} failed attempts" if attempt else "")
            return

    async def _heartbeat(self) -> None:
        # A tick this much later than planned means control itself did not run (SIGSTOP,
        # swapped out, starved). Any gap that could make a healthy worker look silent for
        # ping_timeout (late > ping_timeout - ping_interval) is well above this bound.
        stall_bound = (self.ping_timeout - self.ping_interval) / 2
        last = time.monotonic()
        while not self.stopping:
            await asyncio.sleep(self.ping_interval)
            now = time.monotonic()
            late = now - last - self.ping_interval
            last = now
            self.reserve.fill()
            stalled = late > stall_bound
            if stalled:
                # The pongs of the pings sent before the stall may be waiting unread in
                # the pipes (timers run before I/O): judge liveness only from the pings
                # sent now, that is, give every worker a full ping_timeout from here.
                self.stalls += 1
                log.warning("control did not run for %.1fs; judging worker liveness from "
                            "pings sent from now on", late + self.ping_interval)
            for handle in self.handles:
                if not handle.ready.is_set() or handle.process is None:
                    continue
                if stalled:
                    handle.last_pong = now
                elif now - handle.last_pong > self.ping_timeout:
                    log.error("worker %d (pid %d) missed pings for %.1fs; killing it",
                              handle.index, handle.pid, now - handle.last_pong)
                    self.kill(handle.index)
                    continue
                self._write(handle, Ping(self._next_id()))

    # --- talking to workers ---------------------------------------------------------------
    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _write(self, handle: WorkerHandle, message: ipc.Command) -> None:
        if handle.transport is not None and not handle.transport.is_closing():
            handle.transport.write(ipc.encode(message))

    def send(self, index: int, message: ipc.Command) -> None:
        """Fire and forget (e.g. ``register``); dropped if the worker is restarting —
        re-seeding then carries the registry's state instead."""
        handle = self.handles[index]
        if handle.ready.is_set():
            self._write(handle, message)

    async def call(self, index: int, message: AddMember | Ping | Rebind) -> ipc.Ack | ipc.Pong:
        """Send a command and await its answer (waiting for a restarting worker). The
        command's ``id`` is replaced by a fresh one."""
        return await self._call(self.handles[index], message, wait_ready=True,
                                timeout=CALL_TIMEOUT_S)

    async def _call(self, handle: WorkerHandle, message: AddMember | Ping | Rebind,
                    wait_ready: bool,
                    timeout: float) -> ipc.Ack | ipc.Pong:
        if wait_ready:
            await asyncio.wait_for(handle.ready.wait(), timeout)
        command_id = self._next_id()
        future: asyncio.Future[ipc.Ack | ipc.Pong] = asyncio.get_running_loop().create_future()
        handle.pending[command_id] = future
        self._write(handle, replace(message, id=command_id))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            handle.pending.pop(command_id, None)

    def available(self) -> list[int]:
        return [h.index for h in self.handles if h.ready.is_set()]

    def on_message(self, handle: WorkerHandle, message: ipc.Message) -> None:
        if isinstance(message, ipc.Ack | ipc.Pong):
            handle.last_pong = time.monotonic()
            future = handle.pending.get(message.id)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, ipc.Stats):
            handle.stats = message
        elif isinstance(message, ipc.Bound | ipc.Left | ipc.Closed):
            self.on_event(handle.index, message)
        elif not isinstance(message, ipc.Bye):
            log.warning("worker %d sent a command %r; ignored", handle.index, message)

    def broadcast(self, message: ipc.Command) -> None:
        for handle in self.handles:
            self._write(handle, message)

    def kill(self, index: int) -> None:
        """SIGKILL a worker (it is unresponsive or corrupt); ``_on_exit`` replaces it."""
        handle = self.handles[index]
        handle.ready.clear()
        if handle.process is not None and handle.process.is_alive():
            try:
                os.kill(handle.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # --- stopping -----------------------------------------------------------------------
    async def shutdown(self, timeout: float) -> None:
        """Workers tell every member ``closed`` and exit; SIGKILL after ``timeout``."""
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()
        self.broadcast(ipc.Shutdown())
        waits = [h.exited.wait() for h in self.handles if h.process is not None
                 and h.process.exitcode is None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except TimeoutError:
            log.warning("workers did not stop within %.1fs; killing them", timeout)
            self.kill_all()

    def kill_all(self) -> None:
        self.stopping = True
        for handle in self.handles:
            self.kill(handle.index)


def _reap(process: Any) -> None:
    """SIGKILL and reap a worker that was started but cannot be used."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.join(5.0)


def describe_exit(code: int | None) -> str:
    """How a process died, in words (gunicorn ``reap_workers``)."""
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        hint = ": likely the OOM killer or an operator" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    if code == WORKER_BOOT_ERROR:
        return f"exit code {code} (boot error)"
    return f"exit code {code}"


_NOT_COUNTERS = ("t", "worker", "pid")


def summarize_counters(stats: dict[str, Any]) -> str:
    """A worker's last statistics snapshot as one ``key=value`` line: nested tables get
    dotted keys (``stage1.received``), and counters inside them that are 0 are left out
    (``drops.rate_limited=3`` appears only when something was dropped)."""
    parts: list[str] = []

    def walk(prefix: str, table: dict[str, Any]) -> None:
        for key, value in table.items():
            if not prefix and key in _NOT_COUNTERS:
                continue
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(f"{name}.", value)
            elif not (prefix and isinstance(value, int) and value == 0):
                parts.append(f"{name}={value}")

    walk("", stats)
    return " ".join(parts) or "none"
