"""asyncio on Qt's event loop, via qasync.

One thread runs both: ``qasync.QEventLoop`` is an asyncio loop whose timers and socket
readiness are Qt timers and ``QSocketNotifier``s, so the UDP link (``client.link``), the
join and every timeout are ordinary asyncio code, and widgets are touched only from that
one thread. Why qasync rather than PySide6's QtAsyncio: qasync's loop is asyncio's own
selector loop with Qt doing the waiting, so what the client library uses
(``create_datagram_endpoint`` on an adopted socket for the UDP link, ``sock_connect`` and
a stream, TLS or not, for the join) behaves exactly as under ``ocm-chat``; QtAsyncio is a
separate loop implementation, and it is not part of the PySide6-Essentials wheel this
extra installs.

``Tasks`` keeps a strong reference to every task the UI starts (asyncio keeps only weak
ones), reports a task's exception instead of losing it, and cancels them all on close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import qasync
from PySide6.QtWidgets import QApplication

log = logging.getLogger("ocm.gui")
T = TypeVar("T")


def new_event_loop(app: QApplication) -> qasync.QEventLoop:
    """The asyncio loop that runs on ``app``'s Qt event loop; make it the current one."""
    loop: qasync.QEventLoop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    return loop


class Tasks:
    """The UI's background tasks (joins, waits for the end of a chat)."""

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_error = on_error

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` on the running loop; an exception goes to ``on_error``."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task failed", exc_info=exc)
            if self._on_error is not None:
                self._on_error(exc)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def __len__(self) -> int:
        return len(self._tasks)
