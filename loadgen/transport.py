"""How a loadgen process puts its simulated members on the wire.

Every member needs an address of its own: the server tells members apart by (IP, port)
and binds each token to an IP. Two ways to give them one:

``MemberSockets`` (``--sockets member``)
    One UDP socket per member, all on the loadgen's own IP, each with its own port. Works
    against any server, remote ones included. Every delivery is one ``recv`` call on a
    different socket, and one ``sendmmsg`` of the server to a room's nine members wakes
    nine sockets' wait queues.

``SharedSocket`` (``--sockets shared``, loopback servers only)
    Member ``i`` is the address ``(127.A.B.C, P)``: a distinct loopback IP per member
    (``member_ip``), one shared port ``P``. One socket bound to ``0.0.0.0:P`` with
    ``IP_PKTINFO`` receives for all of them: ``recvmmsg`` takes up to ``RECV_BATCH``
    deliveries per call and each one's destination IP says which member it was for.
    ``SO_TIMESTAMPNS`` adds when the kernel queued each one (the relay latency's end).
    Sending sets the member's IP as the source with an ``IP_PKTINFO`` control message;
    TCRP joins bind their TCP socket to the same IP, so the token is bound to it.
    Loopback routes all of 127.0.0.0/8 to the local host, so no setup is needed, and
    nothing is ever sent off the machine: the only destination is the server.
    ``account_with(meter)`` has the common deliveries accounted in C right in the receive
    buffers (loadgen/fastpath.py): no Python object is made for them.

The load generator must disturb a benchmark whose load shares the server's cores as
little as it can; ``docs/performance.md`` has the two modes side by side.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Callable
from typing import Final, Protocol

from loadgen.fastpath import FastAccount
from loadgen.meter import Meter
from runtime import mmsg
from runtime.sockbuf import set_buffers
from wire.limits import MAX_DATAGRAM_BYTES

Sender = Callable[[bytes], object]
Append = Callable[[tuple[int, bytes, int]], None]
"""Takes (member, datagram, CLOCK_MONOTONIC ns the kernel queued it, or 0 if unknown)."""

RECV_BYTES: Final = MAX_DATAGRAM_BYTES
"""Largest delivery is 4094 bytes (docs/protocol.md §2.2); any datagram fits."""
RECV_BATCH: Final = 256
"""Datagrams per ``recvmmsg`` call of the shared socket."""
SHARED_BUFFER_BYTES: Final = 32 * 1024 * 1024
"""Receive buffer of the shared socket: ~30,000 deliveries of 100 bytes (the kernel
charges ~1 KiB each), a third of a second of the headline load for one process, so a
descheduled loadgen does not drop what the server delivered."""
FIRST_OCTET_BASE: Final = 100
"""Shared mode: process ``k`` uses 127.(100 + k).x.y."""
HOSTS_PER_BLOCK: Final = 250
"""Shared mode: last octets 1..250 (never .0 or .255) per third octet."""
MAX_SHARED_MEMBERS: Final = 256 * HOSTS_PER_BLOCK
MAX_SHARED_PROCS: Final = 256 - FIRST_OCTET_BASE
MODES: Final = ("auto", "member", "shared")
_NO_ADDR: Final = bytes(4)
_TIMESPEC: Final = struct.Struct("=qq")
_ANCILLARY_BYTES: Final = 64


def realtime_offset_ns() -> int:
    """``CLOCK_REALTIME - CLOCK_MONOTONIC`` now: kernel receive timestamps are realtime,
    the loadgen's clock is monotonic. Taken per receive call, so a clock step between
    calls costs one batch, not the run."""
    return time.time_ns() - time.monotonic_ns()


def member_ip(proc: int, lm: int) -> str:
    """The loopback IP of member ``lm`` of loadgen process ``proc`` in shared mode."""
    if not 0 <= proc < MAX_SHARED_PROCS or not 0 <= lm < MAX_SHARED_MEMBERS:
        raise ValueError(f"no shared-mode address for process {proc}, member {lm}")
    block, host = divmod(lm, HOSTS_PER_BLOCK)
    return f"127.{FIRST_OCTET_BASE + proc}.{block}.{host + 1}"


def resolve_mode(mode: str, server: str) -> str:
    """``member`` or ``shared`` for ``--sockets mode`` against ``server``. ``auto`` is
    ``shared`` when the server is a loopback address and batched receive is available.
    Raises ``ValueError`` with a message for the user if ``shared`` cannot work."""
    if mode not in MODES:
        raise ValueError(f"--sockets must be one of {', '.join(MODES)}")
    if mode == "member":
        return mode
    try:
        addr = ipaddress.ip_address(socket.gethostbyname(server))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resolve --server {server!r}: {exc}") from exc
    usable = addr.is_loopback and mmsg.available()
    if mode == "shared" and not usable:
        why = "the server is not on a loopback address" if not addr.is_loopback \
            else "recvmmsg is unavailable here"
        raise ValueError(f"--sockets shared: {why}; use --sockets member")
    return "shared" if usable else "member"


class Transport(Protocol):
    mode: str
    senders: list[Sender]
    stray: int
    """Deliveries to an address that is no member's (only a shared socket can see any)."""
    rcvbuf: int | None
    """The receive buffer the kernel granted a shared socket (None: one per member)."""

    def join_ip(self, lm: int) -> str | None: ...
    def attach(self, lm: int, server: tuple[str, int]) -> None: ...
    def fds(self) -> list[tuple[int, int]]: ...
    def receive(self, owner: int, append: Append) -> int: ...
    def close(self) -> None: ...


def _stamp(sock: socket.socket) -> None:
    """Ask for kernel receive timestamps (``SO_TIMESTAMPNS``); without them the meter
    uses the read time and counts ``rx_unstamped``."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, mmsg.SO_TIMESTAMPNS, 1)
    except OSError:
        pass


def _not_attached(_data: bytes) -> object:
    raise OSError("member has not joined")


SHARED_OWNER: Final = -4
"""``fds()`` owner of the shared socket (member owners are their index, >= 0)."""


class MemberSockets:
    """One connected UDP socket per member (see the module docstring)."""

    mode = "member"
    stray = 0
    rcvbuf: int | None = None

    def __init__(self, n: int, local_ip: str, timestamps: bool = True) -> None:
        self.socks: list[socket.socket] = []
        try:
            for _ in range(n):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.socks.append(sock)
                sock.bind((local_ip, 0))
                sock.setblocking(False)
                if timestamps:
                    _stamp(sock)
        except BaseException:
            self.close()
            raise
        self.senders: list[Sender] = [_not_attached] * n
        self._recv = [s.recvmsg for s in self.socks]

    def join_ip(self, lm: int) -> str | None:
        return None  # the kernel's choice: the IP the UDP sockets are bound to

    def attach(self, lm: int, server: tuple[str, int]) -> None:
        sock = self.socks[lm]
        sock.connect(server)
        self.senders[lm] = sock.send

    def fds(self) -> list[tuple[int, int]]:
        return [(s.fileno(), lm) for lm, s in enumerate(self.socks)]

    def receive(self, owner: int, append: Append) -> int:
        """One datagram for member ``owner``; returns receive errors (0 or 1)."""
        try:
            data, ancillary, _flags, _addr = self._recv[owner](RECV_BYTES, _ANCILLARY_BYTES)
        except BlockingIOError:
            return 0
        except OSError:
            return 1
        queued = 0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == mmsg.SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack_from(value)
                queued = sec * 1_000_000_000 + nsec - realtime_offset_ns()
        append((owner, data, queued))
        return 0

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


class SharedSocket:
    """One wildcard socket for every member, told apart by destination IP (see the module
    docstring). ``stray`` counts datagrams for an address that is not a member's."""

    mode = "shared"

    def __init__(self, n: int, proc: int, timestamps: bool = True) -> None:
        if n > MAX_SHARED_MEMBERS:
            raise ValueError(f"{n} members in one process; shared mode allows "
                             f"{MAX_SHARED_MEMBERS} (add --procs)")
        self.ips = [member_ip(proc, lm) for lm in range(n)]
        self._by_dest = {socket.inet_aton(ip): lm for lm, ip in enumerate(self.ips)}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            set_buffers(self.sock, SHARED_BUFFER_BYTES, SHARED_BUFFER_BYTES)
            self.sock.bind(("0.0.0.0", 0))
            self.sock.setsockopt(socket.IPPROTO_IP, mmsg.IP_PKTINFO, 1)
            if timestamps:
                _stamp(self.sock)
            self._batch = mmsg.RecvBatch(max_batch=RECV_BATCH, pktinfo=True,
                                         timestamps=timestamps)
        except BaseException:
            self.sock.close()
            raise
        self.rcvbuf: int | None = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.senders: list[Sender] = [_not_attached] * n
        self.stray = 0
        self.proc = proc
        self.fast: FastAccount | None = None

    def join_ip(self, lm: int) -> str | None:
        return self.ips[lm]

    def attach(self, lm: int, server: tuple[str, int]) -> None:
        info = struct.pack("=I4s4s", 0, socket.inet_aton(self.ips[lm]), _NO_ADDR)
        ancillary = [(socket.IPPROTO_IP, mmsg.IP_PKTINFO, info)]
        sendmsg = self.sock.sendmsg

        def send(data: bytes) -> object:
            return sendmsg((data,), ancillary, 0, server)

        self.senders[lm] = send

    def fds(self) -> list[tuple[int, int]]:
        return [(self.sock.fileno(), SHARED_OWNER)]

    def account_with(self, meter: Meter) -> None:
        """Account deliveries in C straight from the receive buffers (loadgen/fastpath.py);
        ``receive`` then appends only what the C code leaves to ``meter.receive_batch``.
        Raises ``fastpath.Unavailable``."""
        self.fast = meter.fast = FastAccount(self._batch, meter, self.proc, HOSTS_PER_BLOCK,
                                             FIRST_OCTET_BASE)

    def receive(self, owner: int, append: Append) -> int:
        """Everything queued, in ``recvmmsg`` batches; returns receive errors."""
        batch, fd, fast = self._batch, self.sock.fileno(), self.fast
        offset = realtime_offset_ns()
        while True:
            try:
                got = batch.recv(fd)
            except OSError:
                return 1
            if fast is None:
                self._sort(batch.datagrams_to(), offset, append)
            elif got:
                left = fast.account(got, time.monotonic_ns(), offset)
                if left:
                    rows = batch.datagrams_to()
                    self._sort([rows[i] for i in fast.slow[:left]], offset, append)
            if got < RECV_BATCH:
                return 0

    def _sort(self, rows: list[tuple[bytes, bytes, int]], offset: int, append: Append) -> None:
        """Hand each datagram to ``append`` as its member's, or count it as stray."""
        by_dest = self._by_dest
        for data, dest, queued in rows:
            lm = by_dest.get(dest)
            if lm is None:
                self.stray += 1
            else:
                append((lm, data, queued - offset if queued else 0))

    def close(self) -> None:
        self.sock.close()
