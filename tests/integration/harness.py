"""Start a real ``ocm-control`` (with its spawned workers) for integration tests.

``start_server(...)`` runs ``python -m control`` on 127.0.0.1 with ports chosen by the
kernel (port 0) and waits for its READY log line, parsing the ports from it; no sleeps.
Use it as a context manager; ``stop()`` sends SIGTERM and returns the exit code.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

READY_RE = re.compile(
    r"ready tcp=(?P<host>[^:\s]+):(?P<tcp>\d+) udp=(?P<udp>[\d,]+) stage1=(?P<stage1>\d+) "
    r"workers=(?P<workers>\d+) steering=(?P<steering>\S+)"
)
START_TIMEOUT_S = 60.0


@dataclass
class Server:
    proc: subprocess.Popen[str]
    host: str
    tcp_port: int
    udp_port: int
    udp_ports: list[int]
    stage1_port: int
    workers: int
    steering: str
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=5000))
    _reader: threading.Thread | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until a log line matches ``pattern`` (regex); return the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._reader_alive():
                    raise TimeoutError(f"no log line matching {pattern!r}:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server and wait for it; SIGKILL (and fail) if it does not exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("ocm-control did not exit after signal\n" + self.log_text())
        if self._reader is not None:
            self._reader.join(10)
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(*args: str, workers: int = 2, env: dict[str, str] | None = None,
                 timeout: float = START_TIMEOUT_S) -> Server:
    """Start ``ocm-control`` on 127.0.0.1 with kernel-chosen ports and wait until ready.

    Extra ``args`` are passed as flags (e.g. ``"--inactivity-timeout", "2"``).
    """
    cmd = [
        sys.executable, "-m", "control",
        "--host", "127.0.0.1", "--tcp-port", "0", "--udp-port", "0", "--stage1-port", "0",
        "--workers", str(workers), "--log-level", "info", *args,
    ]
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, start_new_session=True)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    match = None
    while match is None:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            proc.kill()
            raise TimeoutError("ocm-control not ready:\n" + "".join(seen))
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            raise RuntimeError(f"ocm-control exited {proc.returncode}:\n" + "".join(seen))
        seen.append(line)
        match = READY_RE.search(line)
    sel.close()
    udp_ports = [int(p) for p in match["udp"].split(",")]
    server = Server(proc, match["host"], int(match["tcp"]), udp_ports[0], udp_ports,
                    int(match["stage1"]), int(match["workers"]), match["steering"])
    server.lines.extend(s.rstrip("\n") for s in seen)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with server._cond:
                server.lines.append(line.rstrip("\n"))
                server._cond.notify_all()
        with server._cond:
            server._cond.notify_all()

    server._reader = threading.Thread(target=pump, daemon=True)
    server._reader.start()
    return server
