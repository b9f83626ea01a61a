"""Helpers for the operations tests (test_ops_*.py); this module holds no tests.

* ``admin_address(server)``: the admin HTTP address from the ``admin http=`` log line;
* ``http_get``: one HTTP request with a timeout (``http.client``);
* ``scrape``: ``/metrics`` parsed with prometheus_client's own parser;
* ``wait_until``: poll a condition with a deadline — only for state that is reported
  periodically (worker counters arrive once a second), never instead of an event;
* ``LinePipe``: the lines of a child process's output, waited on without sleeping;
* ``start_control``: ``python -m control`` with exactly the given flags.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Server

T = TypeVar("T")
ADMIN_RE = r"admin http=(?P<host>[\d.]+):(?P<port>\d+)"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def admin_address(server: Server, timeout: float = 30.0) -> tuple[str, int]:
    match = server.wait_log(ADMIN_RE, timeout=timeout)
    return match["host"], int(match["port"])


def http_get(addr: tuple[str, int], path: str, method: str = "GET",
             timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def scrape(addr: tuple[str, int]) -> Samples:
    """Every sample of ``/metrics``: (sample name, labels) -> value."""
    status, headers, body = http_get(addr, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def wait_until(probe: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    waker = threading.Event()
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        waker.wait(interval)


class LinePipe:
    """Collect a child's output lines on a thread; ``wait(regex)`` blocks on a condition
    variable until a line matches (or the child's output ends, or the timeout)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: deque[str] = deque(maxlen=10000)
        self.cond = threading.Condition()
        self.done = False
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def text(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def wait(self, pattern: str, timeout: float = 30.0, start: int = 0) -> re.Match[str]:
        """The first line from index ``start`` on that matches ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in list(self.lines)[start:]:
                    found = rx.search(line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or self.done:
                    raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(
                        self.lines))
                self.cond.wait(min(left, 1.0))


@contextlib.contextmanager
def start_control(*args: str, env: dict[str, str] | None = None,
                  timeout: float = 30.0) -> Iterator[tuple[subprocess.Popen[str], LinePipe]]:
    """Run ``python -m control`` with exactly ``args`` (no harness defaults); yield the
    process and its output; on exit SIGTERM it and require exit code 0."""
    proc = subprocess.Popen([sys.executable, "-m", "control", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
    out = LinePipe(proc)
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError("ocm-control did not stop:\n" + out.text()) from None
        out.thread.join(10)
    assert code == 0, out.text()
    assert "Traceback" not in out.text(), out.text()
