"""Start a real ``ocm-control`` (with its spawned workers) for integration tests.

``start_server(...)`` runs ``python -m control`` on 127.0.0.1 with ports chosen by the
kernel (port 0) and waits for its READY log line, parsing the ports from it; no sleeps.
Use it as a context manager; ``stop()`` sends SIGTERM and returns the exit code.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import resource
import signal
import socket
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
TLS_RE = re.compile(r"ready tcp=.* tls=(?:disabled|[^:\s]+:(?P<tls>\d+))")
START_TIMEOUT_S = 60.0
_STARTED: list[subprocess.Popen[str]] = []


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it (a graceful drain) if the test process dies,
    even by SIGKILL, when atexit cannot run (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


@atexit.register
def _kill_leftovers() -> None:
    """Safety net: a test that failed before ``stop()`` must not leave a server (and its
    workers, in the same session/process group) running after pytest exits."""
    for proc in _STARTED:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


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
    tls_port: int = 0
    """The TLS port from the ready line (0: ``tls=disabled``)."""
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
                    raise TimeoutError(f"no log line matching {pattern!r}:\n"
                                       + "\n".join(self.lines))
                self._cond.wait(min(left, 0.5))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0,
             allow_tracebacks: bool = False) -> int:
        """Signal the server and wait for it; SIGKILL (and fail) if it does not exit.

        Fails if any process logged a traceback (an exception reached the event loop's
        handler or a worker crashed unexpectedly), unless ``allow_tracebacks``.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError("ocm-control did not exit after signal\n"
                                     + self.log_text()) from None
        if self._reader is not None:
            self._reader.join(10)
        if not allow_tracebacks and "Traceback" in self.log_text():
            raise AssertionError("a server process logged a traceback:\n" + self.log_text())
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_server(*args: str, workers: int = 2, stage1: bool = False,
                 env: dict[str, str | None] | None = None,
                 timeout: float = START_TIMEOUT_S, nofile: int | None = None) -> Server:
    """Start ``ocm-control`` on 127.0.0.1 with kernel-chosen ports (the TLS port too) and
    wait until ready.

    Extra ``args`` are passed as flags (e.g. ``"--inactivity-timeout", "2"``); ``env`` adds
    variables to the session's environment, or unsets those given as ``None``. Stage 1 is
    off unless ``stage1`` (its port 0 means "disabled", so a free port is picked).
    ``nofile``: the server's descriptor limit (RLIMIT_NOFILE), for exhaustion tests.
    """
    stage1_port = free_udp_port() if stage1 else 0
    cmd = [
        sys.executable, "-m", "control",
        "--host", "127.0.0.1", "--tcp-port", "0", "--udp-port", "0",
        "--stage1-port", str(stage1_port), "--tls-port", "0",
        "--workers", str(workers),
        "--log-level", os.environ.get("OCM_TEST_LOG_LEVEL", "info"), *args,
    ]
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    for key, value in (env or {}).items():  # None unsets a variable of the session
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    def prepare() -> None:
        _die_with_parent()
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, start_new_session=True, preexec_fn=prepare)
    _STARTED.append(proc)
    lines: deque[str] = deque(maxlen=5000)
    cond = threading.Condition()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with cond:
                lines.append(line.rstrip("\n"))
                cond.notify_all()
        with cond:
            cond.notify_all()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    match = None
    with cond:
        while match is None:
            match = next((m for m in map(READY_RE.search, lines) if m), None)
            if match is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0 or (proc.poll() is not None and not reader.is_alive()):
                proc.kill()
                raise TimeoutError(f"ocm-control not ready (exit {proc.poll()}):\n"
                                   + "\n".join(lines))
            cond.wait(min(left, 0.5))
    udp_ports = [int(p) for p in match["udp"].split(",")]
    tls = TLS_RE.search(match.string)
    server = Server(proc, match["host"], int(match["tcp"]), udp_ports[0], udp_ports,
                    int(match["stage1"]), int(match["workers"]), match["steering"],
                    int(tls["tls"] or 0) if tls else 0, lines=lines, _reader=reader,
                    _cond=cond)
    return server
