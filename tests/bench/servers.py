"""Servers under test for ``make bench`` and the tests, started as subprocesses.

``start(cmd)`` runs a server that prints ``ready tcp=HOST:PORT udp=PORT stage1=PORT
workers=N steering=MODE`` (ocm-control and the baseline both do) and waits for that line,
without sleeping; ``Running.stop()`` sends SIGTERM. The CPU a server uses is measured by
the loadgen itself (``--server-pid``, loadgen/procstat.py).
"""

from __future__ import annotations

import functools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

READY_RE: Final = re.compile(
    r"ready tcp=(?P<host>[^:\s]+):(?P<tcp>\d+) udp=(?P<udp>[\d,]+) stage1=(?P<stage1>\d+) "
    r"workers=(?P<workers>\d+) steering=(?P<steering>\S+)"
)


def control_command(workers: int, host: str = "127.0.0.1") -> list[str]:
    """``ocm-control`` on kernel-chosen ports, Stage 1, TLS and the admin HTTP server
    off."""
    cmd = [sys.executable, "-m", "control", "--host", host, "--tcp-port", "0", "--udp-port",
           "0", "--stage1-port", "0", "--workers", str(workers), "--log-level", "info"]
    if _control_has_flag("--admin-port"):
        cmd += ["--admin-port=-1"]
    if _control_has_flag("--no-tls"):  # plain TCRP is what is measured; never port 9443
        cmd += ["--no-tls"]
    return cmd


@functools.cache
def _control_has_flag(flag: str) -> bool:
    try:
        out = subprocess.run([sys.executable, "-m", "control", "--help"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return flag in out


REPO_ROOT: Final = Path(__file__).resolve().parents[2]
"""The checkout: on ``PYTHONPATH`` of every started server, so that ``-m tests...`` works
from any working directory (the benchmark harness is not installed)."""


def baseline_command(host: str = "127.0.0.1") -> list[str]:
    """The deliberately simple baseline relay (tests/bench/baselines/simple_relay.py)."""
    return [sys.executable, "-m", "tests.bench.baselines.simple_relay", "--host", host,
            "--tcp-port", "0", "--udp-port", "0"]


@dataclass
class Running:
    """A started server: its process, the ports from its READY line, its output."""

    proc: subprocess.Popen[str]
    host: str
    tcp_port: int
    udp_port: int
    workers: int
    steering: str
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=2000))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc)
        return self.proc.returncode

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the server and every process it started (it leads its own session, so its
    process group holds exactly what it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait(10)


def start(cmd: list[str], timeout: float = 60.0, extra_env: dict[str, str] | None = None,
          repo_on_path: bool = True) -> Running:
    """Start ``cmd`` and wait for its READY line (stdout or stderr); raise ``RuntimeError``
    if it exits first and ``TimeoutError`` if it is not ready in ``timeout`` seconds.

    ``extra_env`` is added to the environment. ``repo_on_path=False`` leaves this checkout
    off ``PYTHONPATH``: for a server installed from another checkout (its own venv), which
    would otherwise import this one's packages."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    if repo_on_path:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    assert proc.stdout is not None
    # A reader thread, not select() on the buffered pipe: select cannot see lines that
    # already sit in the TextIOWrapper's buffer, and would wait for the timeout.
    lines: queue.Queue[str | None] = queue.Queue()

    def first_lines() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            lines.put(text)
            if READY_RE.search(text):
                return
        lines.put(None)

    reader = threading.Thread(target=first_lines, daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            _kill_group(proc)
            raise TimeoutError(f"{cmd[2:4]} not ready:\n" + "".join(seen)) from None
        if line is None:
            proc.wait(10)
            raise RuntimeError(f"{cmd} exited {proc.returncode}:\n" + "".join(seen))
        seen.append(line)
        match = READY_RE.search(line)
        if match:
            break
    reader.join()
    running = Running(proc, match["host"], int(match["tcp"]), int(match["udp"].split(",")[0]),
                      int(match["workers"]), match["steering"])
    running.lines.extend(s.rstrip("\n") for s in seen)

    def pump() -> None:  # keep reading so that the server never blocks on a full pipe
        assert proc.stdout is not None
        for text in proc.stdout:
            running.lines.append(text.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return running


WORKER_STARTED_RE: Final = re.compile(r"worker (?P<index>\d+) started \(pid (?P<pid>\d+)")


def worker_pids(output: str) -> dict[int, int]:
    """ocm-control's relay workers by index, from its ``worker N started (pid P, ...)``
    log lines (the last start of each index wins: a respawn replaces it)."""
    return {int(m["index"]): int(m["pid"]) for m in WORKER_STARTED_RE.finditer(output)}
