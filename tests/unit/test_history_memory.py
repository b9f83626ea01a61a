"""The resend history charges each entry at least what it allocates, so that its byte
limits (per room and ``history_worker_bytes`` per worker) bound memory, not payload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Measured in a process of its own: in the test process coverage's tracer and xdist's
# I/O thread allocate while the entries are made, and tracemalloc would count them.
MEASURE = """
import gc, json, tracemalloc
from relay.history import History, HistoryBudget
from wire.limits import HISTORY_ENTRY_OVERHEAD_BYTES
entries = 256
bodies = [bytes([65 + i % 26]) * 100 for i in range(entries)]
budget = HistoryBudget(max_messages=entries, max_bytes=1 << 30, max_age=1e9,
                       worker_bytes=1 << 30)
history = History(7, budget)
history.next_seq = 100_000  # a room that has run a while: each Seq is its own int
gc.collect()
tracemalloc.start()
before = tracemalloc.take_snapshot()
for i, body in enumerate(bodies):
    history.number(body, 1000.0 + i / 1000)
gc.collect()
after = tracemalloc.take_snapshot()
tracemalloc.stop()
print(json.dumps({
    "entries": len(history.entries),
    "allocated": sum(s.size_diff for s in after.compare_to(before, "filename")),
    "charged": budget.used,
    "kept": history.bytes,
    "sum": sum(len(d) + HISTORY_ENTRY_OVERHEAD_BYTES for _, _, d in history.entries),
}))
"""


def test_an_entry_costs_no_more_than_it_is_charged() -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COV_CORE_", "COVERAGE_"))}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", MEASURE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(done.stdout)
    assert got["entries"] == 256
    assert got["charged"] == got["kept"] == got["sum"]
    assert got["allocated"] <= got["charged"], (got["allocated"] / 256, got["charged"] / 256)
