"""Batched UDP I/O for the relay hot path: ``recvmmsg``/``sendmmsg`` through ``ctypes``.

Each Python-level ``recvfrom``/``sendto`` adds a syscall entry plus object allocations
on top of the kernel's own cost per datagram (docs/performance.md has the figures), so:

* ``SendBatch`` is built once per room membership (list of member addresses) and sends
  one payload to all of them, or to all but the sender, with one ``sendmmsg`` call;
* ``RecvBatch`` receives up to ``max_batch`` datagrams with one ``recvmmsg`` call into
  preallocated buffers.

IPv4 UDP sockets only, Linux on LP64 (x86_64, aarch64). Check ``available()`` first and
fall back to ``recvfrom``/``sendto`` where it is False (other OS, libc without the calls,
a seccomp filter that refuses them). Every ctypes buffer the kernel is given a pointer to
is owned by the batch object for its whole life, so a bad argument raises instead of
making the kernel write into freed memory. Neither class is thread-safe.

Struct layouts (kernel ABI, include/linux/socket.h; glibc and musl pass them unchanged),
offsets for LP64::

    struct iovec    { void *iov_base @0; size_t iov_len @8; }                     16 bytes
    struct msghdr   { void *msg_name @0; socklen_t msg_namelen @8; (pad 4)
                      struct iovec *msg_iov @16; size_t msg_iovlen @24;
                      void *msg_control @32; size_t msg_controllen @40;
                      int msg_flags @48; (pad 4) }                                 56 bytes
    struct mmsghdr  { struct msghdr msg_hdr @0; unsigned int msg_len @56; (pad 4) } 64 bytes
    struct sockaddr_in { u16 sin_family @0 (host order); u16 sin_port @2 (network order);
                         u32 sin_addr @4 (network order); u8 sin_zero[8] @8 }      16 bytes
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Final

from wire.limits import MAX_DATAGRAM_BYTES

Addr = tuple[str, int]
_CFunc = Callable[..., int]  # a configured libc function (argtypes/restype set)

MSG_DONTWAIT: Final = getattr(socket, "MSG_DONTWAIT", 0x40)
MSG_TRUNC: Final = getattr(socket, "MSG_TRUNC", 0x20)
ADDR_CACHE_ENTRIES: Final = 65536
"""Bound of ``RecvBatch``'s address cache, keyed by the raw sin_family + sin_port +
sin_addr (8 bytes); cleared when full. Worst case (a flood from distinct sources) ~300
bytes per entry (key, tuple, str, int, dict slot): ~20 MiB."""
IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)  # Python < 3.12 lacks the name
SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)
PKTINFO_SLOT_BYTES: Final = 32
"""Control bytes per datagram with ``pktinfo``: CMSG_SPACE(sizeof(struct in_pktinfo)) on
LP64 = cmsghdr (16: cmsg_len @0, cmsg_level @8, cmsg_type @12) + in_pktinfo (12:
ipi_ifindex @16, ipi_spec_dst @20, ipi_addr @24) padded to 32."""
TIMESTAMP_SLOT_BYTES: Final = 32
"""With ``timestamps`` as well: CMSG_SPACE(sizeof(struct timespec)) = cmsghdr (16) +
tv_sec @16, tv_nsec @24. udp_recvmsg puts it first (sock_recv_cmsgs runs before
ip_cmsg_recv), so a datagram's control bytes are [SCM_TIMESTAMPNS][IP_PKTINFO]."""
# One datagram's worth, for struct.iter_unpack: an mmsghdr's msg_controllen (size_t @40)
# and msg_len (u32 @56); a control slot's cmsg_level, cmsg_type, ipi_addr; or, with
# timestamps, cmsg_level, cmsg_type, tv_sec, tv_nsec, then the pktinfo cmsg.
_HEAD: Final = struct.Struct("=40xQ8xI4x")
_PKTINFO: Final = struct.Struct("=8xii8x4s4x")
_TIMESPEC_PKTINFO: Final = struct.Struct("=8xiiqq8xii8x4s4x")
NAME_SLOT_BYTES: Final = 128
"""Receive address slot: sizeof(struct sockaddr_storage). The kernel writes back the true
address length into msg_namelen and uses it as the buffer size on the next call; it never
exceeds 128, so no slot can overflow whatever socket the fd turns out to be."""

# Errors that concern the socket or the call, not one recipient: raised as OSError.
# (EPERM is not among them: netfilter answers EPERM for one destination it rejects.)
_FATAL_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EFAULT, errno.ENOSYS,
                                  errno.EDESTADDRREQ, errno.ENOTCONN})
# The local queue is full (non-blocking socket): the rest of the batch cannot go either.
_FULL_ERRNOS: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _PayloadIovec(ctypes.Structure):
    # iov_base as c_char_p: assigning a bytes object stores a pointer to the object's own
    # buffer (no copy) and ctypes keeps a reference to it in the struct's _objects.
    _fields_ = [("iov_base", ctypes.c_char_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


MMSGHDR_BYTES: Final = ctypes.sizeof(Mmsghdr)
_LP64: Final = (ctypes.sizeof(ctypes.c_void_p) == 8 and MMSGHDR_BYTES == 64
                and ctypes.sizeof(Msghdr) == 56 and Mmsghdr.msg_len.offset == 56
                and Msghdr.msg_iov.offset == 16 and Msghdr.msg_flags.offset == 48)

SOCKADDR_IN_BYTES: Final = 16
_FAMILY: Final = struct.pack("=H", socket.AF_INET)  # sin_family is in host byte order
_PORT: Final = struct.Struct("!H")
_SIN_ZERO: Final = bytes(8)


def _load_libc() -> tuple[_CFunc, _CFunc] | None:
    if not sys.platform.startswith("linux") or not _LP64:
        return None
    for name in (None, ctypes.util.find_library("c")):
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            send, recv = libc.sendmmsg, libc.recvmmsg
        except (OSError, AttributeError):
            continue
        # int sendmmsg(int fd, struct mmsghdr *vec, unsigned vlen, int flags)
        send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        send.restype = ctypes.c_int
        # int recvmmsg(int fd, struct mmsghdr *vec, unsigned vlen, int flags,
        #              struct timespec *timeout)
        recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                         ctypes.c_void_p]
        recv.restype = ctypes.c_int
        return send, recv
    return None


_LIBC: Final = _load_libc()
_available: bool | None = None


def available() -> bool:
    """Whether batched I/O works here: Linux, LP64, libc has both calls, and the kernel
    (or a seccomp filter) does not refuse them. Probed once with a throwaway socket."""
    global _available
    if _available is None:
        _available = _LIBC is not None and _probe()
    return _available


def _probe() -> bool:
    assert _LIBC is not None
    sendmmsg, recvmmsg = _LIBC
    hdr = Mmsghdr()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # Nothing queued: a working recvmmsg says EAGAIN; a zero-length sendmmsg says 0.
        got = recvmmsg(sock.fileno(), ctypes.addressof(hdr), 1, MSG_DONTWAIT, None)
        err = ctypes.get_errno()
        sent = sendmmsg(sock.fileno(), ctypes.addressof(hdr), 0, MSG_DONTWAIT)
    return got == -1 and err in (errno.EAGAIN, errno.EWOULDBLOCK) and sent == 0


def _require() -> tuple[_CFunc, _CFunc]:
    if not available() or _LIBC is None:
        raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg unavailable (see runtime.mmsg.available)")
    return _LIBC


def _oserror(err: int) -> OSError:
    return OSError(err, os.strerror(err))


def encode_sockaddr_in(addr: Addr) -> bytes:
    """The 16-byte ``struct sockaddr_in`` for (dotted IPv4, port). Raises ``OSError`` for
    a malformed address and ``ValueError`` for a port outside 0..65535."""
    ip, port = addr
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    return _FAMILY + _PORT.pack(port) + socket.inet_pton(socket.AF_INET, ip) + _SIN_ZERO


class SendBatch:
    """One payload to a fixed list of IPv4 addresses with one ``sendmmsg`` call.

    Build one per room (rebuild when its membership changes: O(n), done in C apart from
    one ``inet_pton`` per member). Memory: 2 x 64 + 16 = 144 bytes per member.

    Layout: ``_names`` holds one ``sockaddr_in`` per member; ``_hdrs`` holds the mmsghdr
    array *twice* back to back ``[m0 .. m(n-1), m0 .. m(n-1)]``, every entry pointing at
    the same single iovec. "Everyone but member k" is then the contiguous slice that
    starts at entry k+1 and is n-1 long, so it needs no per-sender array either.

    Failure protocol (both send methods): the return value is a tuple of the indexes (into
    ``addresses``) that did not get the payload, ``()`` when all did; ``last_errnos`` holds
    the errno of each, in the same order. Per-message errors never raise:

    * an error at message i (other than ``EINVAL``, never asynchronous) is retried once at
      i: with ``IP_RECVERR`` set, a pending ICMP error of an *earlier* send is reported by
      whichever send comes next, and that message is not sent; it is not this recipient's
      fault (the error queue names the real culprit). A second failure counts against
      recipient i (e.g. ``EINVAL`` for port 0, ``ENETUNREACH``, ``EPERM`` from netfilter);
    * ``EAGAIN``/``ENOBUFS`` (local queue full) fails i and every later recipient of the
      call at once without further syscalls: the caller should count these as local
      congestion rather than a member's fault;
    * errors about the socket itself (``EBADF``, ``ENOTSOCK``, ``EFAULT``, ...) raise
      ``OSError``; some recipients may already have been sent to.
    """

    __slots__ = ("addresses", "last_errnos", "_n", "_names", "_iov", "_words", "_hdrs",
                 "_base", "_sendmmsg")

    def __init__(self, addresses: Sequence[Addr]) -> None:
        """Raises ``OSError`` if batched I/O is unavailable or an IP is malformed,
        ``ValueError`` for a port outside 0..65535."""
        self._sendmmsg = _require()[0]
        self.addresses: tuple[Addr, ...] = tuple(addresses)
        """Recipient index -> address, as given."""
        self.last_errnos: tuple[int, ...] = ()
        """Errno of each failed index returned by the last send call."""
        n = self._n = len(self.addresses)
        names = b"".join(map(encode_sockaddr_in, self.addresses))
        self._names = ctypes.create_string_buffer(names, max(len(names), 1))
        self._iov = _PayloadIovec()
        # Fill the header array in C: a template entry repeated 2n times, then the msg_name
        # column (first pointer of each 64-byte entry) patched with strided assignment.
        template = Mmsghdr()
        template.msg_hdr.msg_namelen = SOCKADDR_IN_BYTES
        template.msg_hdr.msg_iov = ctypes.addressof(self._iov)
        template.msg_hdr.msg_iovlen = 1
        words = array("Q", bytes(template)) * max(2 * n, 1)
        stride = MMSGHDR_BYTES // 8
        name_base = ctypes.addressof(self._names)
        names_col = array("Q", range(name_base, name_base + SOCKADDR_IN_BYTES * n,
                                     SOCKADDR_IN_BYTES))
        words[0:2 * n * stride:stride] = names_col * 2
        self._words = words  # owns the memory; the ctypes view below keeps it exported
        self._hdrs = (Mmsghdr * max(2 * n, 1)).from_buffer(words)
        self._base = ctypes.addressof(self._hdrs)

    def __len__(self) -> int:
        return self._n

    def send_all(self, fd: int, payload: bytes) -> tuple[int, ...]:
        """Send ``payload`` to every address; returns the failed indexes (class doc)."""
        return self._send(fd, payload, 0, self._n)

    def send_except(self, fd: int, payload: bytes, k: int) -> tuple[int, ...]:
        """Send ``payload`` to every address but ``addresses[k]`` (the sender); returns the
        failed indexes (class doc). Raises ``IndexError`` unless 0 <= k < len(self)."""
        n = self._n
        if not 0 <= k < n:
            raise IndexError(f"sender index {k} out of range for {n} recipients")
        return self._send(fd, payload, k + 1, n - 1)

    def _send(self, fd: int, payload: bytes, start: int, count: int) -> tuple[int, ...]:
        if count <= 0:
            self.last_errnos = ()
            return ()
        iov = self._iov
        iov.iov_len = len(payload)
        iov.iov_base = payload  # bytes only (TypeError otherwise); no copy, kept alive
        sent = self._sendmmsg(fd, self._base + start * MMSGHDR_BYTES, count, MSG_DONTWAIT)
        if sent == count:
            if self.last_errnos:
                self.last_errnos = ()
            return ()
        return self._send_rest(fd, start, count, sent)

    def _send_rest(self, fd: int, start: int, count: int, sent: int) -> tuple[int, ...]:
        """Slow path: the kernel stopped early. A short count means message ``pos`` failed
        (sendmmsg drops the error when it already sent some) or vlen hit UIO_MAXIOV (1024);
        calling again from ``pos`` tells which."""
        n = self._n
        pos, end = start, start + count
        retried = -1
        failed: list[int] = []
        errnos: list[int] = []
        while True:
            if sent > 0:
                pos += sent
            else:
                err = ctypes.get_errno()
                if err in _FATAL_ERRNOS:
                    self.last_errnos = ()
                    raise _oserror(err)
                if err in _FULL_ERRNOS:
                    failed.extend(i % n for i in range(pos, end))
                    errnos.extend([err] * (end - pos))
                    break
                if retried != pos and err != errno.EINVAL:
                    retried = pos  # maybe an earlier send's pending error: try once more
                else:
                    failed.append(pos % n)
                    errnos.append(err)
                    pos += 1
            if pos >= end:
                break
            sent = self._sendmmsg(fd, self._base + pos * MMSGHDR_BYTES, end - pos,
                                  MSG_DONTWAIT)
        self.last_errnos = tuple(errnos)
        return tuple(failed)


class RecvBatch:
    """Up to ``max_batch`` datagrams per ``recvmmsg`` call, into preallocated buffers.

    Call ``recv(fd)``; then ``datagrams()`` (or ``datagram(i)``/``address(i)``) for the
    ones it got, before the next ``recv`` overwrites them. Every buffer is ``bufsize``
    (default 4097) bytes: a datagram longer than ``MAX_DATAGRAM_BYTES`` arrives cut to
    4097 bytes with MSG_TRUNC set, so a size check ``len(data) > 4096`` drops it, and
    ``truncated(i)`` says so explicitly.

    With ``pktinfo=True`` it also asks for each datagram's destination address (the
    socket needs ``IP_PKTINFO`` set): ``datagrams_to()`` gives it. That lets one socket
    bound to a wildcard address stand in for many addresses, as the load generator does.
    With ``timestamps=True`` as well (the socket needs ``SO_TIMESTAMPNS``) it also gives
    the time the kernel queued each datagram on the socket.

    Memory: max_batch x (bufsize + 16 + 64 + 128 [+ 32]) bytes (~277 KiB for 64 x 4097),
    plus the address cache (``ADDR_CACHE_ENTRIES``).
    """

    __slots__ = ("max_batch", "bufsize", "count", "_buf", "_view", "_cbuf", "_names",
                 "_iovs", "_hdrs", "_base", "_cache", "_cache_max",
                 "_lens", "_keys", "_recvmmsg", "_ctrl", "_slot", "_dests")

    def __init__(self, max_batch: int = 64, bufsize: int = MAX_DATAGRAM_BYTES + 1,
                 addr_cache_entries: int = ADDR_CACHE_ENTRIES, pktinfo: bool = False,
                 timestamps: bool = False) -> None:
        """Raises ``OSError`` if batched I/O is unavailable, ``ValueError`` for sizes
        outside 1..1024 datagrams (UIO_MAXIOV) and 1..65536 bytes, or for ``timestamps``
        without ``pktinfo``."""
        if timestamps and not pktinfo:
            raise ValueError("timestamps=True needs pktinfo=True")
        self._recvmmsg = _require()[1]
        if not 1 <= max_batch <= 1024 or not 1 <= bufsize <= 65536:
            raise ValueError("max_batch must be 1..1024 and bufsize 1..65536")
        self.max_batch = max_batch
        self.bufsize = bufsize
        self.count = 0
        """Datagrams received by the last ``recv``."""
        self._buf = bytearray(max_batch * bufsize)  # datagram i at offset i * bufsize
        self._view = memoryview(self._buf)
        self._cbuf = (ctypes.c_char * len(self._buf)).from_buffer(self._buf)
        self._names = (ctypes.c_char * (max_batch * NAME_SLOT_BYTES))()
        self._iovs = (Iovec * max_batch)()
        self._hdrs = (Mmsghdr * max_batch)()
        data_base = ctypes.addressof(self._cbuf)
        name_base = ctypes.addressof(self._names)
        for i in range(max_batch):
            self._iovs[i].iov_base = data_base + i * bufsize
            self._iovs[i].iov_len = bufsize
            hdr = self._hdrs[i].msg_hdr
            hdr.msg_name = name_base + i * NAME_SLOT_BYTES
            hdr.msg_namelen = NAME_SLOT_BYTES
            hdr.msg_iov = ctypes.addressof(self._iovs[i])
            hdr.msg_iovlen = 1
        self._ctrl: ctypes.Array[ctypes.c_char] | None = None
        self._slot = PKTINFO_SLOT_BYTES + (TIMESTAMP_SLOT_BYTES if timestamps else 0)
        if pktinfo:
            self._ctrl = (ctypes.c_char * (max_batch * self._slot))()
            ctrl_base = ctypes.addressof(self._ctrl)
            for i in range(max_batch):
                hdr = self._hdrs[i].msg_hdr
                hdr.msg_control = ctrl_base + i * self._slot
                hdr.msg_controllen = self._slot
        self._base = ctypes.addressof(self._hdrs)
        self._cache: dict[bytes, Addr] = {}
        self._cache_max = addr_cache_entries
        # Per batch size k, one Struct that unpacks all k lengths (msg_len of each 64-byte
        # mmsghdr) / all k address keys (first 8 bytes of each name slot) in one C call.
        # Compiled on first use of each k.
        self._lens: list[struct.Struct | None] = [None] * (max_batch + 1)
        self._dests: list[tuple[struct.Struct, struct.Struct] | None] = [None] * (max_batch + 1)
        self._keys: list[struct.Struct | None] = [None] * (max_batch + 1)

    def recv(self, fd: int) -> int:
        """Receive up to ``max_batch`` datagrams without blocking; returns how many (0 if
        none is waiting). Raises ``OSError`` for any other error, e.g. ``ECONNREFUSED``:
        with ``IP_RECVERR`` a pending ICMP error is reported here first (drain the error
        queue, then call again)."""
        got: int = self._recvmmsg(fd, self._base, self.max_batch, MSG_DONTWAIT, None)
        if got < 0:
            self.count = 0
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                return 0
            raise _oserror(err)
        self.count = got
        return got

    def datagrams(self) -> list[tuple[bytes, Addr]]:
        """(datagram, (ip, port)) for each datagram of the last ``recv``, in order."""
        n = self.count
        if n == 0:
            return []
        view = self._view
        cache = self._cache
        size = self.bufsize
        out = []
        off = 0
        lens, keys = self._lens[n], self._keys[n]
        if lens is None or keys is None:
            lens, keys = self._compile(n)
        for length, key in zip(lens.unpack_from(self._hdrs), keys.unpack_from(self._names),
                               strict=True):
            addr = cache.get(key)
            if addr is None:
                addr = self._decode(key)
            out.append((view[off:off + length].tobytes(), addr))
            off += size
        return out

    def datagrams_to(self) -> list[tuple[bytes, bytes, int]]:
        """(datagram, destination, queued_ns) for each datagram of the last ``recv``, in
        order. ``destination`` is the 4 raw bytes of the IPv4 address it was sent to
        (``ipi_addr``), ``queued_ns`` the ``CLOCK_REALTIME`` ns at which the kernel queued
        it (``timestamps=True``); ``b""`` and 0 where the kernel gave none. Needs
        ``pktinfo=True`` (``ValueError``)."""
        if self._ctrl is None:
            raise ValueError("datagrams_to() needs RecvBatch(pktinfo=True)")
        n = self.count
        if n == 0:
            return []
        slot = self._slot
        compiled = self._dests[n]
        if compiled is None:
            compiled = self._compile_dests(n)
        heads = compiled[0].unpack_from(self._hdrs)
        fields = compiled[1].unpack_from(self._ctrl)
        stamped = slot != PKTINFO_SLOT_BYTES
        per = 7 if stamped else 3
        lengths = heads[1::2]
        # one check for the whole batch: every datagram carries the cmsgs asked for
        clean = (set(heads[0::2]) == {slot}
                 and set(fields[per - 3::per]) == {socket.IPPROTO_IP}
                 and set(fields[per - 2::per]) == {IP_PKTINFO})
        if stamped:
            clean = (clean and set(fields[0::per]) == {socket.SOL_SOCKET}
                     and set(fields[1::per]) == {SO_TIMESTAMPNS})
            queued = [sec * 1_000_000_000 + nsec
                      for sec, nsec in zip(fields[2::per], fields[3::per], strict=True)]
        else:
            queued = [0] * n
        dests = list(fields[per - 1::per])
        reset = False
        if not clean:  # the slow way: look at each datagram's control bytes
            reset = self._sort_out(heads, fields, per, dests, queued)
        view, size = self._view, self.bufsize
        out: list[tuple[bytes, bytes, int]] = []
        append = out.append
        off = 0
        for length, dest, when in zip(lengths, dests, queued, strict=True):
            append((view[off:off + length].tobytes(), dest, when))
            off += size
        if reset:  # the kernel wrote back a shorter msg_controllen: restore every slot
            for i in range(n):
                self._hdrs[i].msg_hdr.msg_controllen = slot
        return out

    @property
    def slot_bytes(self) -> int:
        """Control bytes per datagram: 0 (no ``pktinfo``), ``PKTINFO_SLOT_BYTES``, or that
        plus ``TIMESTAMP_SLOT_BYTES`` (timestamp message first)."""
        return 0 if self._ctrl is None else self._slot

    def buffers(self) -> tuple[bytearray, ctypes.Array[Mmsghdr], ctypes.Array[ctypes.c_char]]:
        """The buffers ``recv`` fills, for code that reads them in place (the loadgen's C
        accounting): datagram ``i`` at ``i * bufsize`` of the first; the ``mmsghdr``
        array (``msg_len`` of each); the control slots, ``slot_bytes`` each (``ValueError``
        without ``pktinfo``). Valid until the next ``recv``."""
        if self._ctrl is None:
            raise ValueError("buffers() needs RecvBatch(pktinfo=True)")
        return self._buf, self._hdrs, self._ctrl

    def datagram(self, i: int) -> bytes:
        """Datagram ``i`` of the last ``recv`` (``IndexError`` past ``count``)."""
        self._check(i)
        off = i * self.bufsize
        return self._view[off:off + self._hdrs[i].msg_len].tobytes()

    def address(self, i: int) -> Addr:
        """(ip, port) that datagram ``i`` came from (``IndexError`` past ``count``)."""
        self._check(i)
        off = i * NAME_SLOT_BYTES
        key = self._names.raw[off:off + 8]
        return self._cache.get(key) or self._decode(key)

    def truncated(self, i: int) -> bool:
        """Whether datagram ``i`` was longer than ``bufsize`` (MSG_TRUNC)."""
        self._check(i)
        return bool(self._hdrs[i].msg_hdr.msg_flags & MSG_TRUNC)

    def _check(self, i: int) -> None:
        if not 0 <= i < self.count:
            raise IndexError(f"datagram {i} out of range for {self.count}")

    def _compile(self, n: int) -> tuple[struct.Struct, struct.Struct]:
        tail = MMSGHDR_BYTES - Mmsghdr.msg_len.offset - 4
        lens = self._lens[n] = struct.Struct("=" + f"{Mmsghdr.msg_len.offset}xI{tail}x" * n)
        keys = self._keys[n] = struct.Struct(f"8s{NAME_SLOT_BYTES - 8}x" * n)
        return lens, keys

    def _compile_dests(self, n: int) -> tuple[struct.Struct, struct.Struct]:
        one = _PKTINFO if self._slot == PKTINFO_SLOT_BYTES else _TIMESPEC_PKTINFO
        compiled = self._dests[n] = (struct.Struct("=" + _HEAD.format[1:] * n),
                                     struct.Struct("=" + one.format[1:] * n))
        return compiled

    def _sort_out(self, heads: tuple[int, ...], fields: tuple[object, ...], per: int,
                  dests: list[object], queued: list[int]) -> bool:
        """Blank the destination / time of each datagram whose control bytes are not
        what was asked for (``b""`` / 0); returns whether any slot came back short."""
        short = False
        for i in range(len(dests)):
            at = i * per
            if heads[2 * i] != self._slot:  # not the cmsgs asked for: trust neither
                dests[i], queued[i], short = b"", 0, True
                continue
            if fields[at + per - 3] != socket.IPPROTO_IP or fields[at + per - 2] != IP_PKTINFO:
                dests[i] = b""
            if per == 7 and (fields[at] != socket.SOL_SOCKET
                             or fields[at + 1] != SO_TIMESTAMPNS):
                queued[i] = 0
        return short

    def _decode(self, key: bytes) -> Addr:
        """sin_family (2) + sin_port (2, network order) + sin_addr (4) -> a cached
        (str, int) tuple. Raises ``OSError`` (EAFNOSUPPORT) for a non-IPv4 socket."""
        if key[:2] != _FAMILY:
            raise _oserror(errno.EAFNOSUPPORT)
        if len(self._cache) >= self._cache_max:
            self._cache.clear()
        addr = self._cache[key] = (socket.inet_ntoa(key[4:]), _PORT.unpack_from(key, 2)[0])
        return addr
