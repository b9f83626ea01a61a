"""The capacity search's stepping logic (a pure function of the runs so far)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loadgen.capacity import Step, capacity, limited_by_loadgen, next_rate
from loadgen.pacing import Schedule


def search(start: float, holds: Callable[[float], bool], **kw: float) -> list[Step]:
    steps: list[Step] = []
    rate = next_rate(steps, start, **kw)  # type: ignore[arg-type]
    while rate is not None:
        steps.append(Step(rate, holds(rate)))
        rate = next_rate(steps, start, **kw)  # type: ignore[arg-type]
    return steps


def test_first_step_is_the_start_rate() -> None:
    assert next_rate([], 2.0) == 2.0


def test_grows_geometrically_while_held() -> None:
    steps = [Step(2.0, True)]
    assert next_rate(steps, 2.0, factor=2.0) == 4.0
    steps.append(Step(4.0, True))
    assert next_rate(steps, 2.0, factor=2.0) == 8.0


def test_bisects_after_the_first_break() -> None:
    steps = [Step(2.0, True), Step(4.0, True), Step(8.0, False)]
    assert next_rate(steps, 2.0, factor=2.0) == 6.0
    steps.append(Step(6.0, False))
    assert next_rate(steps, 2.0, factor=2.0) == 5.0
    steps.append(Step(5.0, True))
    assert next_rate(steps, 2.0, factor=2.0) == 5.5


def test_search_converges_to_the_true_capacity() -> None:
    steps = search(2.0, lambda r: r <= 13.7, factor=1.5, precision=0.02, max_steps=50)
    best = capacity(steps)
    assert best is not None
    assert 13.7 / 1.02 <= best <= 13.7
    assert all(s.held == (s.rate <= 13.7) for s in steps)


def test_steps_down_when_the_start_rate_breaks_then_gives_up() -> None:
    steps = search(2.0, lambda r: False, factor=2.0)
    assert [s.rate for s in steps] == [2.0, 1.0, 0.5, 0.25, 0.125]
    assert capacity(steps) is None


def test_finds_a_capacity_below_the_start_rate() -> None:
    steps = search(2.0, lambda r: r <= 0.7, factor=2.0, precision=0.05, max_steps=50)
    assert [s.rate for s in steps[:3]] == [2.0, 1.0, 0.5]
    best = capacity(steps)
    assert best is not None and 0.7 / 1.05 <= best <= 0.7


def test_stops_after_max_steps() -> None:
    steps = search(1.0, lambda r: True, factor=2.0, max_steps=5)
    assert [s.rate for s in steps] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert capacity(steps) == 16.0


def test_stops_on_a_break_while_the_loadgen_was_saturated() -> None:
    steps = [Step(2.0, True), Step(3.0, False, loadgen_saturated=True)]
    assert next_rate(steps, 2.0) is None
    assert limited_by_loadgen(steps)
    assert not limited_by_loadgen([Step(2.0, True, loadgen_saturated=True)])


def test_noisy_break_below_a_held_rate_is_ignored() -> None:
    steps = [Step(2.0, True), Step(3.0, False), Step(2.5, True), Step(2.2, False)]
    assert next_rate(steps, 2.0) == pytest.approx(2.75)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        next_rate([], 2.0, factor=1.0)
    with pytest.raises(ValueError):
        next_rate([], 0.0)


def test_schedule_spreads_members_evenly() -> None:
    # 4 members at 10 msg/s each: one message every 25 ms, members in turn
    sched = Schedule([7, 8, 9, 10], 10.0, t0_ns=1_000, end_ns=1_000 + 200_000_000)
    due = []
    while not sched.done:
        due.append((sched.next_ns, sched.order[sched.k % 4]))
        sched.advance()
    assert len(due) == 8
    assert due[0] == (1_000, 7) and due[1] == (1_000 + 25_000_000, 8)
    assert [m for _, m in due] == [7, 8, 9, 10] * 2
    assert sched.tick_ns == 25_000_000
    assert Schedule([1], 1e6, 0, 1).tick_ns == 100_000  # never faster than 100 µs
