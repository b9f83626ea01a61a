"""``--find-capacity``: which per-user rate to try next, as a pure function of the history.

Grow geometrically from the start rate (× ``factor``) while every SLO holds; after the
first break, bisect between the highest rate that held and the lowest that broke above it
until they are within ``precision`` (relative) of each other. If the start rate itself
breaks, step down (÷ ``factor``, at most ``MAX_DOWN_STEPS`` times) until a rate holds, then
bisect the same way. Stop after ``max_steps`` runs, or when the loadgen itself was
saturated at a step that broke (the break would be the loadgen's, not the server's). The
answer is the highest rate that held.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_FACTOR: Final = 1.5
DEFAULT_PRECISION: Final = 0.05
DEFAULT_MAX_STEPS: Final = 12
MAX_DOWN_STEPS: Final = 4
"""Below ``start / factor ** 4`` the search gives up: the profile is far too heavy."""


@dataclass(frozen=True)
class Step:
    """One run of the search: per-user rate (msg/s), whether every SLO held, and whether
    the loadgen itself was saturated (then a break proves nothing about the server)."""

    rate: float
    held: bool
    loadgen_saturated: bool = False


def next_rate(
    steps: Sequence[Step],
    start: float,
    factor: float = DEFAULT_FACTOR,
    precision: float = DEFAULT_PRECISION,
    max_steps: int = DEFAULT_MAX_STEPS,
) -> float | None:
    """The next per-user rate to run, or ``None`` when the search is over."""
    if factor <= 1.0 or start <= 0:
        raise ValueError("factor must be > 1 and start > 0")
    if not steps:
        return start
    if len(steps) >= max_steps:
        return None
    last = steps[-1]
    if not last.held and last.loadgen_saturated:
        return None
    held = [s.rate for s in steps if s.held]
    if not held:
        lower = min(s.rate for s in steps) / factor
        return lower if lower >= start / factor**MAX_DOWN_STEPS * (1 - 1e-9) else None
    best = max(held)
    broke_above = [s.rate for s in steps if not s.held and s.rate > best]
    if not broke_above:
        return best * factor
    low_break = min(broke_above)
    if (low_break - best) / best <= precision:
        return None
    return (best + low_break) / 2


def capacity(steps: Sequence[Step]) -> float | None:
    """The highest per-user rate that held, or ``None`` if none did."""
    held = [s.rate for s in steps if s.held]
    return max(held) if held else None


def limited_by_loadgen(steps: Sequence[Step]) -> bool:
    """True if the search ended on a break while the loadgen itself was saturated."""
    return bool(steps) and not steps[-1].held and steps[-1].loadgen_saturated
