"""Real-time scheduling of the relay workers (``--realtime-priority N``).

Why: on a machine whose cores the relay shares with other busy processes, a worker woken
by a datagram waits for a CPU behind them, for up to an ordinary process's time slice,
and that wait is most of the relay's tail latency. Under ``SCHED_FIFO`` a woken worker
preempts any ordinary process at once (docs/performance.md has the figures).

What it costs: the CPU a worker takes is taken from the ordinary processes sharing its
core. A worker only runs while it has datagrams or commands to handle, and the kernel's
real-time throttling (``kernel.sched_rt_runtime_us``) and
its fair-class server keep ordinary processes (control included) running even if a worker
were to spin. Control itself stays ``SCHED_OTHER``: only the hot path is promoted.

Permission: root, ``CAP_SYS_NICE`` or ``RLIMIT_RTPRIO`` >= N (systemd: ``LimitRTPRIO=N``
and ``RestrictRealtime=no``, which deploy/ocm.service sets to ``yes``). Control checks it
before starting any worker (``probe``) and refuses to start without it, instead of
running with a scheduling the operator did not ask for.
"""

from __future__ import annotations

import os
from typing import Final

MAX_PRIORITY: Final = 99
"""Linux's SCHED_FIFO range is 1..99."""


def describe(priority: int) -> str:
    """How the workers are scheduled, for the ready line: ``fifo:N`` or ``normal``."""
    return f"fifo:{priority}" if priority > 0 else "normal"


def current() -> str:
    """How the calling process is scheduled, in ``describe``'s words."""
    if os.sched_getscheduler(0) == os.SCHED_FIFO:
        return describe(os.sched_getparam(0).sched_priority)
    return "normal"


def apply(priority: int) -> None:
    """Run the calling process under ``SCHED_FIFO`` at ``priority`` (1..99); 0 does
    nothing. Raises ``OSError`` (EPERM) when not permitted."""
    if priority > 0:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))


def probe(priority: int, who: str = "the relay workers",
          off: str = "realtime_priority = 0") -> str | None:
    """``None`` if a process started by this one may call ``apply(priority)``; otherwise
    why not, as a sentence for the operator (``who`` would be promoted; ``off`` is the
    setting that turns it off). The check promotes the calling process for an instant
    and puts its scheduling back."""
    if priority <= 0:
        return None
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        apply(priority)
    except OSError as exc:
        return (f"SCHED_FIFO priority {priority} for {who} is not permitted "
                f"({exc.strerror}): run as root, grant CAP_SYS_NICE, or raise RLIMIT_RTPRIO "
                f"to {priority} (systemd: LimitRTPRIO={priority} and RestrictRealtime=no); "
                f"or set {off}")
    os.sched_setscheduler(0, policy, param)
    return None
