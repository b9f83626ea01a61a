"""The loss engine's receive path (``ocm-loadgen --loss``): the shared state of the C fast
path (``_reliable.c``) and the Python path, the loss generator both use, and the ctypes
descriptor of a receive batch.

Why: at 500 rooms x 10 users x 2 msg/s a loadgen process receives ~45,000 ``ocm1r``
deliveries a second; feeding each to ``client.reliable.ReliableChat`` in Python costs more
CPU than the machine has. Nearly all of them are the next in-order DATA for a member whose
receiver holds nothing and misses nothing: ``_reliable.c`` counts those straight from the
``recvmmsg`` buffers, exactly as ``ReliableChat`` plus the engine's ``show`` would, and
lists every other datagram, in order, for the member's ``ReliableChat`` (which takes the
receiver's epoch and next number over from C, and hands them back once it is clean).

Both paths draw the receive loss from the same xorshift64* generator (``LossRng``), one
draw per datagram of a member that is not in its outage, in arrival order; with the same
seed and the same datagrams they drop the same ones (a test feeds both the same traffic).

``_reliable.c`` is an optional extension module (``loadgen._reliable``) compiled at install
time by setup.py; without it (or with ``--accounting python``) every datagram takes the
Python path, and the report says which path ran.
"""

from __future__ import annotations

import array
import ctypes
import functools
from types import ModuleType
from typing import Final

import numpy as np
from hdrh.histogram import HdrHistogram

from loadgen.fastpath import Unavailable, buffer_address, load_extension
from loadgen.meter import HDR_LOWEST_US, hdr_index_table
from runtime import mmsg

ST_C: Final = 0
"""The member's receiver is clean and held by C (its epoch and next number in the arrays)."""
ST_PY: Final = 1
"""The member's receiver is held by its Python ``ReliableChat``."""
ST_OUT: Final = 2
"""The member is in its outage: whatever it would receive is dropped."""
DIRECT_US: Final = 1 << 20
"""Latencies below this (µs) are counted per µs in C; longer ones are listed."""
_MASK: Final = (1 << 64) - 1


def seed_state(seed: int) -> int:
    """A non-zero xorshift64* state from any integer (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) or 1


def loss_threshold(loss_pct: float) -> int:
    """A draw's top 53 bits below this: dropped (``loss_pct`` % of the draws)."""
    return min(1 << 53, max(0, int(loss_pct / 100.0 * (1 << 53))))


class LossRng:
    """xorshift64*, as ``_reliable.c`` draws it: ``drop()`` is one draw."""

    __slots__ = ("state", "thresh")

    def __init__(self, state: int, loss_pct: float) -> None:
        self.state = state
        self.thresh = loss_threshold(loss_pct)

    def drop(self) -> bool:
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & _MASK
        x ^= x >> 27
        self.state = x
        return ((x * 0x2545F4914F6CDD1D) & _MASK) >> 11 < self.thresh


class ReceiveState:
    """What both paths share, per member and per (member, sender of its room)."""

    def __init__(self, members: int, users: int) -> None:
        self.state = bytearray([ST_PY]) * members
        self.epoch = array.array("I", bytes(4 * members))
        self.next = array.array("q", bytes(8 * members))
        self.nexp = array.array("q", bytes(8 * members * users))
        """Per pair ``lm * users + s``: the next message number expected from ``s``."""
        self.pdirty = bytearray(members * users)
        """Per pair: numbers ahead of ``nexp`` arrived (the Python path merges them)."""
        self.heard = array.array("q", bytes(8 * members))
        """Per member: when (µs, monotonic) a datagram kept by the loss last reached it."""


class _Batch(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p), ("stride", ctypes.c_int64),
        ("hdrs", ctypes.c_void_p), ("ctrl", ctypes.c_void_p), ("n", ctypes.c_int64),
        ("ip_base", ctypes.c_uint32), ("members", ctypes.c_int64),
        ("hosts_per_block", ctypes.c_int64), ("users", ctypes.c_int64),
        ("base_g", ctypes.c_int64),
        ("state", ctypes.c_void_p), ("epoch", ctypes.c_void_p), ("next", ctypes.c_void_p),
        ("nexp", ctypes.c_void_p), ("pdirty", ctypes.c_void_p),
        ("lat", ctypes.c_void_p), ("direct", ctypes.c_int64),
        ("over", ctypes.c_void_p), ("over_cap", ctypes.c_int64),
        ("rng", ctypes.c_uint64), ("loss_thresh", ctypes.c_uint64),
        ("now_us", ctypes.c_int64), ("counting", ctypes.c_int64),
        ("slow", ctypes.c_void_p), ("slow_lm", ctypes.c_void_p), ("n_slow", ctypes.c_int64),
        ("n_over", ctypes.c_int64), ("delivered", ctypes.c_int64),
        ("dropped_in", ctypes.c_int64), ("outage_dropped", ctypes.c_int64),
        ("stray", ctypes.c_int64), ("heard", ctypes.c_void_p),
    ]


@functools.cache
def extension() -> ModuleType:
    """The compiled ``_reliable.c``; raises ``Unavailable`` (with the reason)."""
    return load_extension("_reliable", ctypes.sizeof(_Batch), "lossyfast.py")




class FastReceive:
    """``_reliable.c`` over one ``RecvBatch(pktinfo=True)`` (no timestamps) and one
    ``ReceiveState``. After each ``recv``: ``receive(n, now_us, counting)`` returns how
    many datagrams were left to Python (``slow[:k]``, their members ``slow_lm[:k]``);
    the batch's counters are in ``batch`` and the long latencies in ``over[:n_over]``."""

    def __init__(self, batch: mmsg.RecvBatch, rs: ReceiveState, proc: int,
                 hosts_per_block: int, first_octet: int, users: int, base_g: int,
                 rng: LossRng) -> None:
        if batch.slot_bytes != mmsg.PKTINFO_SLOT_BYTES:
            raise Unavailable("the C path reads pktinfo-only control slots")
        self._receive = extension().receive
        data, hdrs, ctrl = batch.buffers()
        self.lat = array.array("q", bytes(8 * DIRECT_US))
        self.over = array.array("q", bytes(8 * batch.max_batch))
        self.slow = array.array("i", bytes(4 * batch.max_batch))
        self.slow_lm = array.array("i", bytes(4 * batch.max_batch))
        self._keep = (data, hdrs, ctrl, rs)
        b = self.batch = _Batch()
        b.data, b.stride = buffer_address(data), batch.bufsize
        b.hdrs, b.ctrl = buffer_address(hdrs), buffer_address(ctrl)
        b.ip_base = (127 << 24) | ((first_octet + proc) << 16)
        b.hosts_per_block = hosts_per_block
        b.members, b.users, b.base_g = len(rs.state), users, base_g
        b.state, b.epoch = buffer_address(rs.state), buffer_address(rs.epoch)
        b.next = buffer_address(rs.next)
        b.nexp, b.pdirty = buffer_address(rs.nexp), buffer_address(rs.pdirty)
        b.lat, b.direct = buffer_address(self.lat), DIRECT_US
        b.over, b.over_cap = buffer_address(self.over), batch.max_batch
        b.slow, b.slow_lm = buffer_address(self.slow), buffer_address(self.slow_lm)
        b.rng, b.loss_thresh = rng.state, rng.thresh
        b.heard = buffer_address(rs.heard)

    def receive(self, n: int, now_us: int, counting: bool) -> int:
        b = self.batch
        b.n, b.now_us, b.counting = n, now_us, int(counting)
        slow: int = self._receive(b)
        return slow


def fold_latencies(hist: HdrHistogram, lat: array.array[int]) -> None:
    """Add the per-µs counts ``lat`` (index: µs) into ``hist``, in a few numpy calls."""
    view = np.frombuffer(lat, dtype=np.int64)
    values = np.flatnonzero(view)
    if not values.size:
        return
    counts = view[values]
    table = hdr_index_table(int(values[-1]) + 1)
    target = np.ctypeslib.as_array(hist.counts)
    np.add.at(target, table[values], counts.astype(target.dtype))
    hist.total_count += int(counts.sum())
    hist.min_value = min(hist.min_value, max(int(values[0]), HDR_LOWEST_US))
    hist.max_value = max(hist.max_value, max(int(values[-1]), HDR_LOWEST_US))
