"""The loadgen's receive accounting in C (``_account.c``), for shared sockets.

Why: at the headline load each loadgen process accounts for ~45,000 deliveries a second,
on the same cores as the server it measures. In Python that is most of the loadgen's
CPU, and the CPU the loadgen takes is CPU the server waits for. ``_account.c`` does the
common case (the next expected delivery of a (receiver, sender) pair, with its two
latencies) straight from ``RecvBatch``'s buffers and leaves everything else to
``Meter.receive_batch``, so the two paths count exactly the same (a test feeds both the
same traffic). docs/performance.md has the loadgen's CPU with it.

One difference in what is measured: a delivery accounted in C takes its read time (the
end of its end-to-end latency) right after its own ``recvmmsg`` call; the Python path
takes one read time per poll, after every batch of that poll was read. That is at most
the time to read the socket empty, microseconds to tens of microseconds.

``_account.c`` is an optional extension module (``loadgen._account``), compiled at install
time by setup.py. Where it was not built (no C compiler or Python headers at install time,
or ``OCM_PURE_PYTHON=1``) the loadgen keeps the Python path and says so (``--accounting
auto``), or refuses to run (``--accounting c``).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Final

from runtime import mmsg

if TYPE_CHECKING:
    from loadgen.meter import Meter

MODES: Final = ("auto", "c", "python")
"""``--accounting``: ``c`` (the extension, or refuse), ``python``, ``auto`` (C if built)."""
SLOT_BYTES: Final = mmsg.PKTINFO_SLOT_BYTES + mmsg.TIMESTAMP_SLOT_BYTES
"""The C code reads control slots of a timestamp then a pktinfo message (64 bytes)."""

class _Batch(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p), ("stride", ctypes.c_int64),
        ("hdrs", ctypes.c_void_p), ("ctrl", ctypes.c_void_p), ("n", ctypes.c_int64),
        ("ip_base", ctypes.c_uint32), ("members", ctypes.c_int64),
        ("hosts_per_block", ctypes.c_int64),
        ("chk_at", ctypes.c_int64), ("chk_len", ctypes.c_int64), ("chk", ctypes.c_void_p),
        ("off", ctypes.c_int64), ("users", ctypes.c_int64), ("base_g", ctypes.c_int64),
        ("mstart", ctypes.c_int64),
        ("counted", ctypes.c_void_p), ("nexp", ctypes.c_void_p), ("dirty", ctypes.c_void_p),
        ("lat", ctypes.c_void_p), ("rlat", ctypes.c_void_p), ("direct", ctypes.c_int64),
        ("now_ns", ctypes.c_int64), ("rt_offset_ns", ctypes.c_int64),
        ("slow", ctypes.c_void_p), ("n_slow", ctypes.c_int64), ("delivered", ctypes.c_int64),
    ]


class Unavailable(Exception):
    """The C accounting cannot be used here; the message says why."""


def load_extension(name: str, descriptor_bytes: int, built_by: str) -> ModuleType:
    """The compiled extension ``loadgen.<name>`` whose ``BATCH_BYTES`` must be
    ``descriptor_bytes`` (what ``built_by`` builds); raises ``Unavailable`` with the reason
    if it cannot be used here."""
    if not mmsg.available():
        raise Unavailable("recvmmsg is unavailable here")
    try:
        module = importlib.import_module(f"loadgen.{name}")
    except ImportError as exc:
        raise Unavailable(f"the C extension loadgen.{name} was not built when ocm was "
                          "installed (no C compiler or Python headers then); reinstall with "
                          "them to use it") from exc
    if module.BATCH_BYTES != descriptor_bytes:
        raise Unavailable(f"loadgen.{name} expects a {module.BATCH_BYTES}-byte batch "
                          f"descriptor, {built_by} builds {descriptor_bytes} bytes: the "
                          "extension is stale, reinstall ocm")
    return module


@functools.cache
def extension() -> ModuleType:
    """The compiled ``_account.c``; raises ``Unavailable`` (with the reason) if it cannot be
    used here."""
    return load_extension("_account", ctypes.sizeof(_Batch), "fastpath.py")


def buffer_address(buffer: object) -> int:
    """Address of a writable buffer (bytearray, array.array, ctypes array)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))  # type: ignore[arg-type]


class FastAccount:
    """C accounting of one ``RecvBatch`` (pktinfo + timestamps) into one ``Meter``.

    ``account(n, now_ns, rt_offset_ns)`` after each ``recv``: returns how many datagrams
    were left to Python; their indexes are ``slow[:count]``. The meter calls ``bind`` when
    its run state changes and ``reset_dirty`` once it has accounted the rows left to it.
    """

    def __init__(self, batch: mmsg.RecvBatch, meter: Meter, proc: int, hosts_per_block: int,
                 first_octet: int) -> None:
        if batch.slot_bytes != SLOT_BYTES:
            raise Unavailable("the C accounting needs receive timestamps "
                              "(not --no-rx-timestamps)")
        self._account = extension().account
        data, hdrs, ctrl = batch.buffers()
        self._keep = (data, hdrs, ctrl)
        self.slow = (ctypes.c_int32 * batch.max_batch)()
        """Indexes of the datagrams the last ``account`` left to Python: ``slow[:count]``."""
        b = self._b = _Batch()
        b.data, b.stride = buffer_address(data), batch.bufsize
        b.hdrs, b.ctrl = buffer_address(hdrs), buffer_address(ctrl)
        b.ip_base = (127 << 24) | ((first_octet + proc) << 16)
        b.hosts_per_block = hosts_per_block
        b.slow = ctypes.addressof(self.slow)
        self.meter = meter
        self.accounted = 0
        """Deliveries accounted in C so far."""
        self._dirty = bytearray(0)
        self.bind()

    def bind(self) -> None:
        """Point the C side at the meter's current arrays and parameters."""
        m, b = self.meter, self._b
        state = m.fast_state()
        self._state = state  # keeps the buffers alive while C holds their addresses
        b.members, b.users, b.base_g, b.mstart = m.members, m.users, state.base_g, m.mstart_ns
        b.chk_at, b.off = state.chk_at, state.off
        b.chk_len = len(state.chk)
        b.chk = buffer_address(state.chk)
        b.counted, b.nexp = buffer_address(state.counted), buffer_address(state.nexp)
        b.lat, b.rlat = buffer_address(state.lat), buffer_address(state.rlat)
        b.direct = len(state.lat)
        if len(self._dirty) != len(state.nexp):
            self._dirty = bytearray(len(state.nexp))
        b.dirty = buffer_address(self._dirty)

    def account(self, n: int, now_ns: int, rt_offset_ns: int) -> int:
        b = self._b
        b.n, b.now_ns, b.rt_offset_ns = n, now_ns, rt_offset_ns
        delivered = self._account(b)
        self.accounted += delivered
        self.meter.c.delivered += delivered
        return int(b.n_slow)

    def reset_dirty(self) -> None:
        ctypes.memset(buffer_address(self._dirty), 0, len(self._dirty))


def resolve(mode: str) -> str | None:
    """``None`` if ``--accounting mode`` can be honoured here (``python`` always can);
    otherwise why not."""
    if mode not in MODES:
        return f"--accounting must be one of {', '.join(MODES)}"
    if mode == "python":
        return None
    try:
        extension()
    except Unavailable as exc:
        return str(exc)
    return None


def choose(mode: str) -> tuple[str, str | None]:
    """The accounting a shared socket gets for ``--accounting mode``: (``"c"`` or
    ``"python"``, a note when ``auto`` fell back to Python). Raises ``Unavailable`` for
    ``c`` where the extension cannot be used."""
    if mode == "python":
        return "python", None
    why_not = resolve(mode)
    if why_not is None:
        return "c", None
    if mode == "c":
        raise Unavailable(why_not)
    return "python", f"deliveries accounted in Python (slower): {why_not}"
