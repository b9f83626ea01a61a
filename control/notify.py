"""systemd's readiness protocol (``sd_notify``), inline: no libsystemd, no dependency.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``: a Unix datagram socket, either a
path (``/run/systemd/notify``) or, with a leading ``@``, a name in the abstract namespace.
A state is newline-separated ``KEY=VALUE`` text in one datagram (sd_notify(3)):
``READY=1`` once every worker is ready, ``STOPPING=1`` when the drain starts,
``STATUS=...`` free text, ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` (``WatchdogSec=``).

Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("ocm.control")


def notify_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The socket address from ``NOTIFY_SOCKET``: a path, an abstract name as bytes
    starting with NUL, or None (unset, or a kind we do not speak, e.g. ``vsock:``)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if address.startswith("@") and len(address) > 1:
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``) to the service manager.

    Returns True if a datagram was sent, False if there is no ``NOTIFY_SOCKET`` or the send
    failed (logged: a missing notification makes systemd time the service out, and the
    log should say why). Never raises.
    """
    address = notify_address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify %r to %r failed: %s", state.split("\n", 1)[0], address, exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when
    systemd's watchdog is off or meant for another process (``WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        owner = int(env.get("WATCHDOG_PID", "0"))
    except ValueError:
        return None
    if usec <= 0 or (owner and owner != (os.getpid() if pid is None else pid)):
        return None
    return usec / 2_000_000
