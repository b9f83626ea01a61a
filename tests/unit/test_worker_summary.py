"""The one line a stopping worker's counters are logged as (control/supervisor.py), and
the parser the stress tools read it back with."""

from __future__ import annotations

from control.supervisor import summarize_counters
from tests.stress.tools import final_counters

STATS = {
    "t": "stats", "worker": 0, "pid": 4242, "forwarded": 0, "sendmmsg": True,
    "stage1": {"clients": 2, "received": 5, "relayed": 3,
               "drops": {"too_large": 0, "malformed": 1}, "evictions": {"inactive": 0}},
    "rooms": 3, "members": 7, "received": 100, "relayed": 600, "send_failures": 0,
    "drops": {"too_large": 0, "rate_limited": 4, "wrong_ip": 0},
    "evictions": {"exit": 0, "inactive": 2},
}


def test_one_line_of_key_values_without_zero_table_entries() -> None:
    assert summarize_counters(STATS) == (
        "forwarded=0 sendmmsg=True stage1.clients=2 stage1.received=5 stage1.relayed=3 "
        "stage1.drops.malformed=1 rooms=3 members=7 received=100 relayed=600 "
        "send_failures=0 drops.rate_limited=4 evictions.inactive=2")
    assert summarize_counters({"t": "stats", "drops": {"x": 0}}) == "none"


def test_the_stress_tools_read_it_back() -> None:
    log = ("2026-12-02T03:33:13Z INFO control ocm.control: worker 1 exited (exit code 0); "
           f"last counters {summarize_counters(STATS)}\n"
           "2026-12-02T03:33:13Z INFO control ocm.control: worker 0 exited (killed by "
           "SIGTERM); last counters none\n")
    got = final_counters(log)
    assert got[1]["drops"] == {"rate_limited": 4}
    assert got[1]["stage1"]["drops"] == {"malformed": 1}
    assert got[1]["sendmmsg"] is True and got[1]["members"] == 7
    assert got[0] == {}
