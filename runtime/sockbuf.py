"""UDP socket buffer sizing, shared by the relay's sockets and the load generator's.

The default buffers (about 212 KiB) drop bursts; the relay asks for
``SOCKET_BUFFER_BYTES`` on every UDP socket and socketpair it creates, and the load
generator asks for more on its shared sockets. ``set_buffers`` tries the ``*FORCE``
options first (they ignore ``net.core.rmem_max``/``wmem_max`` but need
``CAP_NET_ADMIN``); ``granted`` reads back what the kernel gave (docs/operations.md,
Tuning).
"""

from __future__ import annotations

import socket
from typing import Final

SOCKET_BUFFER_BYTES: Final = 8 * 1024 * 1024
"""SO_RCVBUF/SO_SNDBUF asked for on the relay's UDP sockets and forwarding socketpairs."""

# Linux socket option numbers (include/uapi/asm-generic/socket.h; the same on x86_64 and
# aarch64). Python's socket module does not export all of them.
SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)


def set_buffers(sock: socket.socket, rcvbuf: int = SOCKET_BUFFER_BYTES,
                sndbuf: int = SOCKET_BUFFER_BYTES) -> None:
    """Ask for large socket buffers.

    The plain ``SO_RCVBUF``/``SO_SNDBUF`` are capped by ``net.core.rmem_max`` /
    ``wmem_max`` (often 208 KiB or 4 MiB); the ``*FORCE`` variants ignore the cap but need
    ``CAP_NET_ADMIN`` (we usually run as root), so they are tried first. Either way the
    kernel doubles the value for its bookkeeping, so ``getsockopt`` reports about twice
    what was asked (``granted`` halves it back).
    """
    for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
                               (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:  # EPERM without CAP_NET_ADMIN
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def granted(sock: socket.socket, option: int) -> int:
    """The usable size of ``sock``'s ``SO_RCVBUF`` or ``SO_SNDBUF`` (Linux reports twice
    the value it was given)."""
    return int(sock.getsockopt(socket.SOL_SOCKET, option)) // 2
