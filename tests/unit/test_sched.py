"""runtime/sched.py: what the ready line says, and a probe that leaves no trace."""

from __future__ import annotations

import os

from runtime import sched


def test_describe() -> None:
    assert sched.describe(0) == "normal"
    assert sched.describe(7) == "fifo:7"


def test_priority_zero_changes_nothing_and_needs_no_permission() -> None:
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    assert sched.probe(0) is None
    sched.apply(0)
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before


def test_probe_restores_the_callers_scheduling() -> None:
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    answer = sched.probe(1)
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before
    # Either permitted here (root, CAP_SYS_NICE) or refused with the remedy spelled out.
    assert answer is None or "CAP_SYS_NICE" in answer and "LimitRTPRIO=1" in answer


def test_current_reads_the_policy_back() -> None:
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # pytest runs normally
    assert sched.current() == "normal"
    if sched.probe(1) is not None:
        return
    pid = os.fork()
    if pid == 0:  # the child promotes itself and says what it reads back
        sched.apply(1)
        os._exit(0 if sched.current() == "fifo:1" else 1)
    assert os.waitpid(pid, 0)[1] == 0
