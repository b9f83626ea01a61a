"""The resend history charges each entry at least what it allocates, so that its byte
limits (per room and ``history_worker_bytes`` per worker) bound memory, not payload."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from relay.history import History, HistoryBudget
from wire.limits import HISTORY_ENTRY_OVERHEAD_BYTES


@pytest.mark.no_cover  # coverage's tracer allocates per line run: tracemalloc would see it
def test_an_entry_costs_no_more_than_it_is_charged() -> None:
    entries = 256
    bodies = [bytes([65 + i % 26]) * 100 for i in range(entries)]
    budget = HistoryBudget(max_messages=entries, max_bytes=1 << 30, max_age=1e9,
                           worker_bytes=1 << 30)
    history = History(7, budget)
    history.next_seq = 100_000  # a room that has run a while: each Seq is its own int
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i, body in enumerate(bodies):
            history.number(body, 1000.0 + i / 1000)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    allocated = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(history.entries) == entries
    assert budget.used == history.bytes == sum(
        len(d) + HISTORY_ENTRY_OVERHEAD_BYTES for _, _, d in history.entries)
    assert allocated <= budget.used, (allocated / entries, budget.used / entries)
