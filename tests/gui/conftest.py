"""Fixtures for the desktop client's tests: offscreen Qt, one qasync loop, a real server.

Qt runs headless (``QT_QPA_PLATFORM=offscreen``, set before Qt is imported). If Qt cannot
load, collection stops with the loader's message and the Debian packages that provide
what offscreen Qt needs (``make`` installs them when it runs as root): never a skip.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

QT_SYSTEM_PACKAGES = ("libegl1 libgl1 libx11-6 libxkbcommon0 libfontconfig1 libfreetype6 "
                      "libglib2.0-0 libdbus-1-3 fonts-dejavu-core")
try:
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication
except ImportError as exc:  # a missing system library: say which, never skip
    raise RuntimeError(
        f"Qt cannot load here: {exc}. `python -m client.gui.syslibs` names the Debian "
        f"packages Qt's plugins lack (make installs them as root); usually: apt-get "
        f"install {QT_SYSTEM_PACKAGES}") from exc

import qasync  # noqa: E402

from client.gui.app import MainWindow  # noqa: E402
from tests.integration.harness import Server, start_server  # noqa: E402

T = TypeVar("T")
WAIT_S = 20.0


@pytest.fixture(scope="session")
def loop(qapp: QApplication) -> Iterator[qasync.QEventLoop]:
    """One asyncio loop on Qt's event loop for the whole session."""
    qapp.setQuitOnLastWindowClosed(False)  # tests close windows inside a running loop
    event_loop = qasync.QEventLoop(qapp)
    asyncio.set_event_loop(event_loop)
    yield event_loop
    event_loop.run_until_complete(event_loop.shutdown_default_executor())
    event_loop.close()
    asyncio.set_event_loop(None)


def run(loop: qasync.QEventLoop, coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run one test scenario on the Qt-integrated loop, with an overall timeout."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


async def until(condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Let the loop (and Qt) run until ``condition()`` is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """A blocking call (an ``ocm-chat`` peer's expect) without freezing the Qt loop."""
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with start_server(workers=1) as srv:
        yield srv


@pytest.fixture
def settings(tmp_path: Path) -> QSettings:
    return QSettings(str(tmp_path / "ocm-gui.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qapp: QApplication, loop: qasync.QEventLoop, settings: QSettings
           ) -> Iterator[MainWindow]:
    win = MainWindow(settings, join_timeout=10.0)
    win.show()
    yield win
    win.quit_now()
    win.deleteLater()
    qapp.processEvents()
