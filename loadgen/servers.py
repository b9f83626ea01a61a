"""Servers under test, started as subprocesses, and the CPU they use.

``start(cmd)`` runs a server that prints ``ready tcp=HOST:PORT udp=PORT stage1=PORT
workers=N steering=MODE`` (ocm-control and the baseline both do) and waits for that line,
without sleeping; ``Running.stop()`` sends SIGTERM. ``tree_cpu_seconds(pid)`` sums the CPU
time of a process and all its descendants from ``/proc`` (Linux), e.g. ocm-control and its
relay workers.
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
CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def control_command(workers: int, host: str = "127.0.0.1") -> list[str]:
    """``ocm-control`` on kernel-chosen ports, Stage 1 and the admin HTTP server off."""
    cmd = [sys.executable, "-m", "control", "--host", host, "--tcp-port", "0", "--udp-port",
           "0", "--stage1-port", "0", "--workers", str(workers), "--log-level", "info"]
    if _control_has_flag("--admin-port"):
        cmd += ["--admin-port=-1"]
    return cmd


@functools.cache
def _control_has_flag(flag: str) -> bool:
    try:
        out = subprocess.run([sys.executable, "-m", "control", "--help"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return flag in out


def baseline_command(host: str = "127.0.0.1") -> list[str]:
    """The deliberately simple baseline relay (loadgen/baselines/simple_relay.py)."""
    return [sys.executable, "-m", "loadgen.baselines.simple_relay", "--host", host,
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


def start(cmd: list[str], timeout: float = 60.0) -> Running:
    """Start ``cmd`` and wait for its READY line (stdout or stderr); raise ``RuntimeError``
    if it exits first and ``TimeoutError`` if it is not ready in ``timeout`` seconds."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
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


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, user + system CPU seconds including reaped children)."""
    stats: dict[int, tuple[int, float]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return stats
    for name in entries:
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2:].split()
        # fields[1] is ppid; utime, stime, cutime, cstime are fields 14..17 of stat
        stats[int(name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / CLK_TCK)
    return stats


def tree_usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, run-queue wait seconds) of ``pid`` and every descendant, or ``None``.

    CPU includes exited children (through ``cutime``/``cstime``). The wait is the time the
    processes' threads were runnable but not running (``/proc/*/task/*/schedstat``): when it
    is high, the machine has more runnable work than cores.
    """
    stats = _proc_table()
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for child, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(child)
    cpu = wait = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        cpu += stats[p][1]
        wait += runqueue_wait_seconds(p)
        todo.extend(children.get(p, []))
    return cpu, wait


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and every descendant (``None`` if unavailable)."""
    usage = tree_usage(pid)
    return None if usage is None else usage[0]


def runqueue_wait_seconds(pid: int | str = "self") -> float:
    """Seconds the threads of ``pid`` spent runnable but waiting for a CPU (0 if unknown)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9
