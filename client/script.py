"""Script mode (stdin is not a terminal): one input line = one message, one received
message = one flushed stdout line (``name: text`` / ``* notice``), nothing else on stdout.

EOF sends ``/exit`` and exits 0; a ``closed``/``disconnected`` notice exits 3; SIGINT and
SIGTERM leave (``/exit``) and exit 130 / 143. Refusals (a message over the room's limit)
go to stderr and the script goes on. The commands ``/who`` (every room) and ``/verify
NAME`` (encrypted rooms) print their answer as ``* ...`` lines instead of being sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO, Final

from client import render
from client.commands import is_exit_command
from client.link import Link
from client.render import Line, MessageTooLong

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # could not join: refused, unreachable, timeout
EXIT_USAGE: Final = 2
EXIT_ENDED: Final = 3  # the room closed or the server disconnected us
EXIT_INTERRUPTED: Final = 130  # Ctrl-C at a question (interactive)
EXIT_SIGINT: Final = 128 + signal.SIGINT
EXIT_SIGTERM: Final = 128 + signal.SIGTERM
STDIN_CHUNK_BYTES: Final = 65536
SETTLE_S: Final = 15.0
"""At EOF, how long to wait for the server to acknowledge what we sent (``ocm1r``)."""


def new_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed (optional for the client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def read_line_unbuffered(fd: int) -> bytes | None:
    """One line from ``fd`` without reading past its newline (so the rest of stdin is
    left for the message pump); ``None`` at EOF before any byte."""
    data = bytearray()
    while True:
        byte = os.read(fd, 1)
        if not byte:
            return bytes(data) if data else None
        if byte == b"\n":
            return bytes(data.rstrip(b"\r"))
        data += byte


def _pump_stdin(fd: int, post: Callable[[bytes | None], None]) -> None:
    """Thread body: split ``fd`` into lines, post each, then ``None`` at EOF. Raw
    ``os.read`` (not ``sys.stdin``) so no interpreter lock is held while it blocks."""
    pending = b""
    try:
        while True:
            try:
                chunk = os.read(fd, STDIN_CHUNK_BYTES)
            except OSError:
                chunk = b""
            if not chunk:
                if pending:
                    post(pending)
                post(None)
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                post(line.rstrip(b"\r"))
    except RuntimeError:  # the event loop is closed: nobody is listening any more
        return


class LineWriter:
    """Writes script-mode lines as UTF-8 to a binary stream, flushed line by line."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.broken = False

    def __call__(self, line: Line) -> None:
        if self.broken:
            return
        try:
            self._stream.write(line.plain().encode() + b"\n")
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            self.broken = True


def warn(text: str) -> None:
    print(f"ocm-chat: {text}", file=sys.stderr, flush=True)


OpenLink = Callable[[Callable[[Line], None]], Awaitable[Link]]
"""Given the ``on_line`` callback, open and start a ``Link``."""


async def run_script(open_link: OpenLink, stdin_fd: int = 0,
                     stdout: BinaryIO | None = None) -> int:
    """Chat from stdin to stdout until EOF, a signal, or the end of the room.

    ``open_link(on_line)`` is awaited and returns a started ``Link``.
    """
    loop = asyncio.get_running_loop()
    writer = LineWriter(stdout if stdout is not None else sys.stdout.buffer)
    inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
    stop: asyncio.Future[int] = loop.create_future()

    def post(item: bytes | None) -> None:
        loop.call_soon_threadsafe(inbox.put_nowait, item)

    def on_signal(code: int) -> None:
        if not stop.done():
            stop.set_result(code)

    # Handlers first: a signal that arrives once the link is open must still send /exit.
    for signum, exit_code in ((signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)):
        loop.add_signal_handler(signum, on_signal, exit_code)
    try:
        link = await open_link(writer)
        try:
            threading.Thread(target=_pump_stdin, args=(stdin_fd, post), daemon=True,
                             name="ocm-chat-stdin").start()
            code = await _chat(link, inbox, stop, writer)
        finally:
            link.close()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return code


async def _chat(link: Link, inbox: asyncio.Queue[bytes | None], stop: asyncio.Future[int],
                writer: LineWriter) -> int:
    while True:
        getter = asyncio.ensure_future(inbox.get())
        waiters: set[asyncio.Future[Any]] = {getter, link.ended, stop}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
        if link.ended in done:
            notice = link.ended.result()
            warn(render.ended_explanation(notice, _is_host(link)))
            return EXIT_ENDED
        if stop in done:
            link.leave()
            return stop.result()
        raw = getter.result()
        if raw is None or writer.broken:
            await link.settle(SETTLE_S)
            link.leave()
            return EXIT_OK
        text = raw.decode("utf-8", "replace")
        if not text:
            continue
        if is_exit_command(text):
            link.leave()
            return EXIT_OK
        if text.startswith("/") and (lines := await link.command(text)) is not None:
            for line in lines:
                writer(line)
            continue
        try:
            link.send(text)
        except MessageTooLong as exc:
            warn(str(exc))


def _is_host(link: Link) -> bool:
    joined = getattr(link, "joined", None)
    return bool(joined is not None and joined.details.host)
