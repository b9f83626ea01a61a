"""The loadgen's typed results: ticks merged across processes, and the JSON report's shape."""

from __future__ import annotations

import orjson

from loadgen.messages import CapacityFigures, RunFigures, SloVerdict, Tick, TimelinePoint
from loadgen.meter import Counts, new_histogram
from loadgen.runner import _Timeline


def tick(index: int, j: int, sent: int, delivered: int, latency_us: int) -> Tick:
    hist = new_histogram()
    hist.record_value(latency_us)
    return Tick(index, j, sent, delivered, hist.encode(), 40.0 + index, 1.0, True)


def test_a_tick_is_merged_once_every_process_reported_it() -> None:
    timeline = _Timeline(procs=2, tick_s=0.5)
    assert timeline.add(tick(1, 1, 100, 900, 2000)) is None
    point = timeline.add(tick(0, 1, 50, 450, 1000))
    assert point is not None
    assert (point.t_s, point.sent, point.delivered) == (0.5, 150, 1350)
    assert (point.in_per_s, point.out_per_s) == (300.0, 2700.0)
    assert point.loadgen_cpu_pct == [40.0, 41.0]  # by process index
    assert point.latency_ms["max"] is not None and point.latency_ms["max"] >= 1.99
    timeline.keep(point)
    warmup = timeline.add(tick(0, 0, 0, 0, 1))
    assert warmup is None
    warmup = timeline.add(tick(1, 0, 0, 0, 1))
    assert warmup is not None
    timeline.keep(warmup)  # t = 0: not part of the measured window
    assert timeline.points() == [point]


def test_run_figures_serialise_to_the_report_shape() -> None:
    counts = Counts(sent=10, expected=90, delivered=89)
    point = TimelinePoint(0.5, 10, 89, 20.0, 178.0, {"p50": 0.1}, [40.0], [1.0], False)
    run = RunFigures(
        rate_per_user=2.0, target_in_per_s=20.0, target_out_per_s=180.0, duration_s=0.5,
        warmup_s=0.0, counts=counts, in_per_s=20.0, out_per_s=178.0,
        latency_ms={"p99": 1.5}, relay_latency_ms={"p99": 0.5}, backlog_growth_ms=None,
        slo=SloVerdict(2.0, None, [], True), loadgen_cpu_pct=[40.0], parent_cpu_pct=1.0,
        server_cpu_pct=None, server_wait_pct=None, loadgen_wait_pct=[1.0],
        loadgen_saturated=False, warnings=[], notices={}, aborted=False, timeline=[point],
        hdr_histogram="HISTFAKE")
    doc = orjson.loads(orjson.dumps(run.to_json()))
    assert doc["counts"]["lost"] == 1 and doc["counts"]["delivered"] == 89
    assert doc["slo"] == {"p99_ms": 2.0, "loss_pct": None, "breaches": [], "held": True}
    assert doc["timeline"][0]["t_s"] == 0.5 and doc["timeline"][0]["server_cpu_pct"] is None
    assert doc["retry"] is False
    cap = CapacityFigures(3.0, 30.0, 270.0, 5.0, 0.1, False, [(2.0, True, False)])
    assert cap.to_json()["steps"] == [{"rate_per_user": 2.0, "held": True,
                                       "loadgen_saturated": False}]
