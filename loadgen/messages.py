"""What the loadgen's parent and its processes tell each other over their pipes, and what
the parent merges the answers into.

Every message is one frozen dataclass, sent as it is (``multiprocessing.Connection``
pickles it: both ends are this package, so no codec is written by hand and nothing is
spelled twice). The parent (runner.py) sends a ``Command``; a process (users.py) answers
each with one message: ``Ready`` once started, ``SetupPart`` after ``Setup``,
``Prepared`` after ``Prepare``, ``RunPart`` after ``Run``, ``Exits`` after ``SendExits``,
or ``ChildError`` (its traceback) when it fails; meanwhile it sends progress:
``JoinProgress`` while joining, a ``Tick`` every tick of a run. ``Abort`` ends a run
early, ``Quit`` the process. The parent merges the parts into ``SetupFigures`` and
``RunFigures``; ``to_json`` gives the shape of the JSON report (docs: ``ocm-loadgen
--json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from loadgen.meter import Counts
from loadgen.tokens import MemberToken

Percentiles = dict[str, float | None]
"""Latency in ms by name: ``p50``, ``p90``, ``p99``, ``p99.9``, ``max`` (and ``mean``)."""


# --- to a loadgen process ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Setup:
    """Join every member and bind its address: answered by ``SetupPart``."""


@dataclass(frozen=True, slots=True)
class Prepare:
    """``--e2e``: seal ``per_member`` messages per member for the next run: ``Prepared``."""

    per_member: int


@dataclass(frozen=True, slots=True)
class Run:
    """One paced run (users.py ``Simulator.run`` takes these as its arguments): ``RunPart``."""

    rate: float
    t0_ns: int
    mstart_ns: int
    end_ns: int
    drain_ns: int
    tick_ns: int
    pacing_ns: int

    def arguments(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class SendExits:
    """Send ``/exit`` (or the encrypted leave) for the guests, or the hosts: ``Exits``."""

    hosts: bool


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop the run in progress now (its ``RunPart`` says aborted)."""


@dataclass(frozen=True, slots=True)
class Quit:
    """Close every socket and exit."""


Command = Setup | Prepare | Run | SendExits | Abort | Quit


# --- from a loadgen process ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ready:
    index: int
    members: int
    pid: int
    timerfd: bool
    """False: pacing falls back to 1 ms resolution."""
    sockets: str
    rcvbuf: int | None
    accounting: str
    """``c`` or ``python``: who accounts shared-socket deliveries."""
    sched: str
    """The process's scheduling policy (runtime/sched.py ``current``)."""


@dataclass(frozen=True, slots=True)
class JoinProgress:
    index: int
    done: int
    failed: int


@dataclass(frozen=True, slots=True)
class SetupPart:
    index: int
    joins_ok: int
    joins_failed: int
    failures: dict[str, int]
    """Failed joins by outcome: a status name, ``timeout``, ``os:<errno>``, ``protocol:..``."""
    t_start_ns: int
    t_end_ns: int
    join_latencies_ms: list[float]
    bind_wait_s: float
    bound_missing: int
    framing: str
    framing_mismatch: int
    max_message: int
    inactivity_timeout_s: float
    notices: dict[str, int]
    tokens: list[MemberToken] = field(default_factory=list)
    """Every joined member's token and chat address, with ``Plan.collect_tokens`` only."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """``--e2e``: the messages of the next run are sealed (loadgen/e2eload.py)."""

    index: int
    messages: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Tick:
    index: int
    j: int
    """Tick number: tick j covers [mstart + (j-1)·tick, mstart + j·tick)."""
    sent: int
    delivered: int
    hist: bytes
    """The tick's latencies, an encoded HDR histogram."""
    cpu_pct: float
    wait_pct: float
    sending: bool


@dataclass(frozen=True, slots=True)
class RunPart:
    index: int
    counts: Counts
    hist: bytes
    relay_hist: bytes
    cpu_pct: float
    cpu_pct_max_tick: float
    wait_pct: float
    notices: dict[str, int]
    aborted: bool
    timerfd: bool


@dataclass(frozen=True, slots=True)
class Exits:
    index: int
    exits: int
    hosts: bool


@dataclass(frozen=True, slots=True)
class ChildError:
    index: int
    traceback: str


# --- merged by the parent ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SetupFigures:
    """The joins of every process."""

    joins_ok: int
    joins_failed: int
    failures: dict[str, int]
    join_seconds: float
    joins_per_s: float
    join_latency_ms: Percentiles
    """``p50``, ``p99`` and ``max`` of the successful joins."""
    bind_wait_s: float
    bound_missing: int
    framing: str
    """``plain``, ``ocm1``, or ``mixed`` when processes disagree."""
    framing_mismatch: int
    max_message: int
    inactivity_timeout_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One tick of a run, merged over the processes."""

    t_s: float
    """Seconds since the measured window started (negative: warmup)."""
    sent: int
    delivered: int
    in_per_s: float
    out_per_s: float
    latency_ms: Percentiles
    loadgen_cpu_pct: list[float]
    loadgen_wait_pct: list[float]
    sending: bool
    server_cpu_pct: float | None = None
    """With ``--server-pid``: the server's CPU over the tick."""
    server_wait_pct: float | None = None


@dataclass(frozen=True, slots=True)
class SloVerdict:
    p99_ms: float | None
    loss_pct: float | None
    breaches: list[str]
    """The SLOs broken, as sentences."""
    held: bool


@dataclass(slots=True)
class RunFigures:
    """One run at one rate, merged over the processes (mutable: the CLI adds warnings
    and marks retries)."""

    rate_per_user: float
    target_in_per_s: float
    target_out_per_s: float
    duration_s: float
    warmup_s: float
    counts: Counts
    in_per_s: float
    out_per_s: float
    latency_ms: Percentiles
    relay_latency_ms: Percentiles
    backlog_growth_ms: tuple[float, float] | None
    slo: SloVerdict
    loadgen_cpu_pct: list[float]
    parent_cpu_pct: float
    server_cpu_pct: float | None
    server_wait_pct: float | None
    loadgen_wait_pct: list[float]
    loadgen_saturated: bool
    warnings: list[str]
    notices: dict[str, int]
    aborted: bool
    timeline: list[TimelinePoint]
    hdr_histogram: str
    """The run's latencies, an encoded HDR histogram (ASCII)."""
    retry: bool = False
    """A capacity step run again because the loadgen waited for a CPU (``--retries``)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = self.counts.to_json()
        return out


@dataclass(frozen=True, slots=True)
class CapacityFigures:
    """The outcome of ``--find-capacity``: the highest per-user rate that held."""

    rate_per_user: float | None
    """``None``: no rate held."""
    in_per_s: float | None
    out_per_s: float | None
    slo_p99_ms: float | None
    slo_loss_pct: float | None
    limited_by_loadgen: bool
    """The search stopped on a break while the loadgen was saturated: a lower bound."""
    steps: list[tuple[float, bool, bool]]
    """(rate per user, held, loadgen saturated) of each step, in order."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = [{"rate_per_user": rate, "held": held, "loadgen_saturated": sat}
                        for rate, held, sat in self.steps]
        return out
