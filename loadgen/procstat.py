"""The CPU and run-queue wait of processes, from ``/proc`` (Linux).

``tree_usage(pid)`` sums them over a process and all its descendants (e.g. ocm-control and
its relay workers, for ``--server-pid``); ``runqueue_wait_seconds()`` is a loadgen process's
own wait for a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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
