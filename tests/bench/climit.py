"""The C limit's tools (tests/bench/perf): building them, running ``crelay`` and ``cload``,
and the CPU of a process tree from ``/proc``.

``build(dest)`` compiles ``crelay`` and ``cload`` with ``cc -O2`` when they are missing or
older than their sources and returns their paths; it raises ``BuildError`` (with the
compiler's output, or "no C compiler") rather than skipping. ``start_crelay`` waits for the
line crelay prints once its socket is bound. ``run_cload`` returns cload's JSON line as a
dict. ``tree_times(pid)`` reads utime and stime (user and system CPU seconds) of a process
and every descendant, by pid.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

SOURCES: Final = Path(__file__).resolve().parent / "perf"
"""crelay.c, cload.c and their headers (tests/bench/perf/README.md)."""
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BUILD_DIR: Final = REPO_ROOT / "build" / "perf"
"""Where ``make bench-percore`` builds them (``make clean`` removes build/)."""
CFLAGS: Final = ("-O2", "-Wall", "-Wextra")
LIBS: Final = {"cload": ("-lcrypto",)}
"""cload seals the datagrams of members with a datagram key (OpenSSL 3's EVP_MAC)."""
TOOLS: Final = {"crelay": ("crelay.c", "common.h"),
                "cload": ("cload.c", "common.h", "meter.h", "recover.h")}
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S: Final = 30.0


class BuildError(RuntimeError):
    """The C tools could not be built (no compiler, or it failed)."""


def build(dest: Path = BUILD_DIR) -> dict[str, Path]:
    """``{"crelay": path, "cload": path}``, compiled into ``dest`` if missing or stale."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, sources in TOOLS.items():
        binary = dest / name
        newest = max((SOURCES / s).stat().st_mtime for s in sources)
        if not binary.exists() or binary.stat().st_mtime < newest:
            if cc is None:
                raise BuildError(f"no C compiler (cc) to build {name} from {SOURCES}: "
                                 "install gcc (apt-get install gcc) or set CC")
            cmd = [cc, *CFLAGS, "-o", str(binary), str(SOURCES / sources[0]), "-lm",
                   *LIBS.get(name, ())]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise BuildError(f"{' '.join(cmd)} failed:\n{done.stderr}")
        out[name] = binary
    return out


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE (inherited by the processes we start) to the hard
    limit if it is below ``needed``; return it. ``OSError`` if even the hard limit is too
    low: cload holds one socket per user, the loadgen's ``--sockets member`` too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise OSError(f"{needed} file descriptors needed but the hard limit is {hard}: "
                      f"raise it (ulimit -Hn {needed}, or LimitNOFILE=) and retry")
    return int(soft)


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


# --- process trees -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Times:
    """User and system CPU seconds of one process (``/proc/PID/stat`` utime, stime)."""

    user: float
    sys: float


def _stat(pid: int) -> tuple[int, Times] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    # fields[1] is ppid; utime and stime are fields 14 and 15 of stat (11, 12 here)
    return int(fields[1]), Times(int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)


def tree_times(pid: int) -> dict[int, Times]:
    """``pid`` and every live descendant, with their CPU times (empty if ``pid`` is gone)."""
    table: dict[int, tuple[int, Times]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            entry = _stat(int(name))
            if entry is not None:
                table[int(name)] = entry
    if pid not in table:
        return {}
    children: dict[int, list[int]] = {}
    for child, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(child)
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        out[p] = table[p][1]
        todo.extend(children.get(p, []))
    return out


def cpu_delta(before: dict[int, Times], after: dict[int, Times],
              only: int | None = None) -> Times:
    """CPU used between two ``tree_times`` samples, by the processes alive at the end
    (one started in between counts from zero), or by ``only``."""
    user = sys = 0.0
    for pid, t in after.items():
        if only is not None and pid != only:
            continue
        t0 = before.get(pid, Times(0.0, 0.0))
        user += t.user - t0.user
        sys += t.sys - t0.sys
    return Times(user, sys)


# --- crelay and cload ----------------------------------------------------------------------
class Crelay:
    """A started ``crelay`` (``cmd`` may start with ``taskset -c N``); ``stop()`` returns
    the JSON counters its worker prints on SIGTERM."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        ready: queue.Queue[bool] = queue.Queue()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("crelay: "):
                    ready.put(True)
            ready.put(False)

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        try:
            ok = ready.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            ok = False
        if not ok:
            self.stop()
            raise RuntimeError(f"{cmd} did not start:\n" + "\n".join(self.lines))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> list[dict[str, Any]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(10)
        return [json.loads(s) for s in self.lines if s.startswith("{")]


def parse_cload(stdout: str) -> dict[str, Any]:
    """cload's report: its last line that is a JSON object. ``ValueError`` if none is."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise ValueError("cload printed no JSON report:\n" + stdout[-2000:])


def run_cload(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    """Run cload (``cmd`` may start with ``taskset``); its report, or ``RuntimeError``."""
    t = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} exited {done.returncode} after "
                           f"{time.monotonic() - t:.1f} s:\n{done.stderr[-2000:]}")
    return parse_cload(done.stdout)
