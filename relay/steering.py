"""Steer each chat datagram to the worker that owns its room (docs/architecture.md, "One
public UDP port: steering").

All workers receive on one public UDP port through a ``SO_REUSEPORT`` group. On its own,
reuseport picks the socket by a hash of the 4-tuple, so a room's datagrams would land on
any worker. Control therefore attaches a classic BPF program to the group
(``SO_ATTACH_REUSEPORT_CBPF``) that returns the index of the socket to deliver to, read
from the datagram itself: the first byte of every token names its worker
(``worker_tag``), and a Stage 2 datagram is ::

    offset 0        1          2            2 + RoomNameSize
           +--------+----------+------------+-----------------+---------+
           | RNSize | TokSize  | RoomName   | Token (tag ...) | Message |
           +--------+----------+------------+-----------------+---------+

so the tag is ``payload[payload[0] + 2]``. The program does no other parsing.

Kernel facts this module relies on (net/core/sock_reuseport.c, Linux >= 4.5; each one
checked by tests/integration/test_steering.py, last on Linux 6.18 x86_64):

* A UDP socket joins the reuseport group when it is bound, and its group index is its
  position in the join (bind) order. Closing a member moves the *last* member into the
  freed slot (``reuseport_detach_sock``), which reorders the group: control therefore
  keeps every socket open for its whole life, even while a worker restarts.
* For a reuseport program the packet data starts at the UDP payload (the kernel pulls
  the UDP header before running it), so absolute offset 0 is RoomNameSize.
* The program's return value is the group index. If it is >= the group size, the
  kernel falls back to the ordinary hash selection (``run_bpf_filter`` returns NULL, then
  ``reuseport_select_sock_by_hash``): a datagram with an unknown tag still reaches some
  worker, which drops or forwards it.
* A classic BPF load past the end of the packet ends the program with return value 0,
  so a datagram too short to hold its tag (empty, 1 byte, RoomNameSize pointing past the
  end) always goes to socket 0, never to a random worker.
* One program serves the whole group; attaching it through any member replaces the
  group's previous program.

Sockets are made here, not in the workers: control creates them in order, attaches the
program, and hands socket i to worker i (control/sockets.py).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import Final

from runtime.sockbuf import SOCKET_BUFFER_BYTES, set_buffers

MAX_WORKERS: Final = 32
"""Workers a tag can name: tags are ``A`` (0x41) .. ``` `` ``` (0x60), all printable."""
TAG_BASE: Final = 0x41
"""``worker_tag(0)``: ASCII ``A``."""

# Linux socket option numbers (include/uapi/asm-generic/socket.h; the same on x86_64 and
# aarch64). Python's socket module does not export all of them.
SO_ATTACH_REUSEPORT_CBPF: Final = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SO_DETACH_REUSEPORT_BPF: Final = getattr(socket, "SO_DETACH_REUSEPORT_BPF", 68)

# Classic BPF opcodes (include/uapi/linux/filter.h, bpf_common.h).
BPF_LD: Final = 0x00
BPF_ALU: Final = 0x04
BPF_RET: Final = 0x06
BPF_MISC: Final = 0x07
BPF_B: Final = 0x10  # byte-sized load
BPF_ABS: Final = 0x20  # A = pkt[k]
BPF_IND: Final = 0x40  # A = pkt[X + k]
BPF_SUB: Final = 0x10
BPF_K: Final = 0x00
BPF_A: Final = 0x10  # BPF_RET|BPF_A: return the accumulator
BPF_TAX: Final = 0x00  # BPF_MISC|BPF_TAX: X = A

SOCK_FILTER: Final = struct.Struct("=HBBI")
"""struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }: 8 bytes, native byte order."""
SOCK_FPROG: Final = struct.Struct("@HP")
"""struct sock_fprog { unsigned short len; struct sock_filter *filter; }: on LP64 the
pointer is aligned to offset 8, 16 bytes in all."""


def worker_tag(index: int) -> bytes:
    """The one-byte token prefix that names worker ``index`` (0 -> ``b"A"``).

    Raises ``ValueError`` unless ``0 <= index < MAX_WORKERS``.
    """
    if not 0 <= index < MAX_WORKERS:
        raise ValueError(f"worker index {index} out of range 0..{MAX_WORKERS - 1}")
    return bytes((TAG_BASE + index,))


def tag_worker(tag: int) -> int | None:
    """The worker a token's first byte names, or ``None`` if it names none."""
    index = tag - TAG_BASE
    return index if 0 <= index < MAX_WORKERS else None


def steering_program(n_workers: int) -> bytes:
    """The classic BPF program, as the bytes of a ``struct sock_filter`` array.

    ::

        ldb  [0]        A = payload[0]            (RoomNameSize)
        tax             X = A
        ldb  [x + 2]    A = payload[X + 2]        (the token's first byte, the tag)
        sub  #0x41      A -= worker_tag(0)
        ret  a          deliver to group index A

    ``n_workers`` (1..MAX_WORKERS) is only checked, not compiled in: an index the group
    does not have (a tag for a worker that does not exist, or a byte below ``A``, which
    wraps around to a huge u32) makes the kernel fall back to hash selection, and a load
    past the end of a short datagram returns 0 (socket 0). Raises ``ValueError``.
    """
    if not 1 <= n_workers <= MAX_WORKERS:
        raise ValueError(f"n_workers {n_workers} out of range 1..{MAX_WORKERS}")
    insns = (
        (BPF_LD | BPF_B | BPF_ABS, 0),
        (BPF_MISC | BPF_TAX, 0),
        (BPF_LD | BPF_B | BPF_IND, 2),
        (BPF_ALU | BPF_SUB | BPF_K, TAG_BASE),
        (BPF_RET | BPF_A, 0),
    )
    return b"".join(SOCK_FILTER.pack(code, 0, 0, k) for code, k in insns)


BPF_JMP: Final = 0x05
BPF_JEQ: Final = 0x10


def cluster_steering_program(n_workers: int, node_tag: int) -> bytes:
    """Cluster mode: tokens carry the issuing node's tag as their second byte. A datagram
    whose token names another node goes to group index ``n_workers`` (the socket control
    keeps to relay it to that node); the others are steered as by ``steering_program``::

        ldb  [0]        A = payload[0]
        tax             X = A
        ldb  [x + 3]    A = the token's second byte (the node tag)
        jeq  #tag, 0, 3 ours: go on; else jump to the last instruction
        ldb  [x + 2]    A = the worker tag
        sub  #0x41
        ret  a          deliver to worker A
        ret  #n         deliver to the relaying socket

    A datagram too short for the node tag returns 0 (socket 0, as in the plain program).
    Raises ``ValueError`` for a bad ``n_workers`` or a tag outside 0x21..0x7E.
    """
    if not 1 <= n_workers < MAX_WORKERS:
        raise ValueError(f"n_workers {n_workers} out of range 1..{MAX_WORKERS - 1}")
    if not 0x21 <= node_tag <= 0x7E:
        raise ValueError(f"node tag {node_tag:#x} is not printable")
    insns = (
        (BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),
        (BPF_MISC | BPF_TAX, 0, 0, 0),
        (BPF_LD | BPF_B | BPF_IND, 0, 0, 3),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 3, node_tag),
        (BPF_LD | BPF_B | BPF_IND, 0, 0, 2),
        (BPF_ALU | BPF_SUB | BPF_K, 0, 0, TAG_BASE),
        (BPF_RET | BPF_A, 0, 0, 0),
        (BPF_RET | BPF_K, 0, 0, n_workers),
    )
    return b"".join(SOCK_FILTER.pack(code, jt, jf, k) for code, jt, jf, k in insns)


def attach_program(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (``struct sock_filter`` bytes) to ``sock``'s reuseport
    group. Raises ``OSError`` (``EINVAL`` if the socket has no reuseport group or the
    program is invalid, ``ENOPROTOOPT`` on kernels without the option)."""
    count, rest = divmod(len(program), SOCK_FILTER.size)
    if rest or not 0 < count <= 4096:  # BPF_MAXINSNS
        raise ValueError("program must be 1..4096 sock_filter entries")
    # The kernel copies the instructions during setsockopt; the ctypes buffer only has to
    # live until the call returns.
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = SOCK_FPROG.pack(count, ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    del insns


def attach_steering(sock: socket.socket, n_workers: int) -> None:
    """Attach ``steering_program(n_workers)`` to the reuseport group of ``sock`` (any
    member; usually socket 0 after all of them are bound).

    Raises ``OSError`` where it is unsupported (the caller then forwards between workers
    or uses a port per shard) and ``ValueError`` for a bad ``n_workers``.
    """
    attach_program(sock, steering_program(n_workers))


def detach_steering(sock: socket.socket) -> None:
    """Remove the group's program: back to hash selection. Raises ``OSError`` (``ENOENT``
    if none is attached)."""
    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)


def create_udp_socket(host: str, port: int, rcvbuf: int = SOCKET_BUFFER_BYTES,
                      sndbuf: int = SOCKET_BUFFER_BYTES) -> socket.socket:
    """One bound, non-blocking IPv4 UDP socket without ``SO_REUSEPORT`` (Stage 1, and one
    port per shard). ``port`` 0 lets the kernel choose. Raises ``OSError`` (e.g.
    ``EADDRINUSE``); the socket is closed on failure."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        set_buffers(sock, rcvbuf, sndbuf)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def create_reuseport_group(host: str, port: int, n: int, rcvbuf: int = SOCKET_BUFFER_BYTES,
                           sndbuf: int = SOCKET_BUFFER_BYTES) -> list[socket.socket]:
    """``n`` non-blocking IPv4 UDP sockets in one ``SO_REUSEPORT`` group on (host, port).

    They are bound in list order, so ``result[i]`` is group index ``i``: the index the
    steering program returns for ``worker_tag(i)``. With ``port`` 0 the first bind picks a
    free port and the others join it. Keep all of them open (see the module docstring:
    closing one reorders the group). The group has no program yet: call
    ``attach_steering``. Raises ``OSError`` (``EADDRINUSE`` if a socket of another user or
    without ``SO_REUSEPORT`` holds the port) and ``ValueError``; nothing stays open on
    failure.
    """
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"group size {n} out of range 1..{MAX_WORKERS}")
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setblocking(False)
            # Must be set before bind: the group is formed at bind time, and only sockets
            # that all set SO_REUSEPORT (same effective UID) may share the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            set_buffers(sock, rcvbuf, sndbuf)
            sock.bind((host, port))
            port = sock.getsockname()[1]  # port 0: the others join the port just picked
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks
