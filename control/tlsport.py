"""The TLS port: accept plain TCP, admit, then start TLS on the accepted connection.

A listener with ``ssl=`` would run the protocol's ``connection_made`` (the per-IP cap and
the request deadline) only after the handshake, so a client that never sends a
ClientHello would hold a descriptor and a TLS state for the whole handshake timeout,
uncapped. Here every connection is admitted at accept, before any TLS state exists:

1. the per-IP connection cap (``max_conns_per_ip``, shared with the plain port) and the
   ``tcp_timeout`` deadline start at accept;
2. a handshake slot is taken (``max_tls_handshakes`` in all, ``max_tls_handshakes_per_ip``);
   past either cap the connection is closed at once;
3. TLS runs with ``tls_handshake_timeout`` (and never past the request deadline); then
   ``TcrpConnection`` serves it, already counted, with what is left of the deadline.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from typing import Final

from control.server import ControlApp, TcrpConnection

log = logging.getLogger("ocm.control")

BACKLOG: Final = 4096
ACCEPT_ERROR_PAUSE_S: Final = 0.1
"""After EMFILE and the like, wait this long before accepting again (as asyncio does)."""
_ACCEPT_ERRORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                                   errno.ECONNABORTED})
"""Expected under load: a warning; anything else is an error. Either way accepting goes on."""


def listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``host``:``port`` (its first address); raise
    ``OSError`` when it cannot be bound."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class TlsPort:
    """Serves TCRP over TLS on ``sock`` once ``start`` is called, until ``close``."""

    def __init__(self, app: ControlApp, context: ssl.SSLContext, sock: socket.socket) -> None:
        self.app = app
        self.context = context
        self.sock = sock
        self._accepting: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._accepting = asyncio.ensure_future(self._accept_loop())

    def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._pending):
            task.cancel()
        self.sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRORS:
                    log.error("TLS port: accept failed: %s", exc)
                else:
                    log.warning("TLS port: cannot accept a connection: %s", exc.strerror)
                await asyncio.sleep(ACCEPT_ERROR_PAUSE_S)
                continue
            self._admit(conn, str(peer[0]) if peer else "")

    def _admit(self, conn: socket.socket, ip: str) -> None:
        app, cfg = self.app, self.app.cfg
        if not app.quotas.open_connection(ip):
            conn.close()
            return
        if not app.handshakes.take(ip, cfg.max_tls_handshakes, cfg.max_tls_handshakes_per_ip):
            log.debug("TLS handshakes over the cap; closing a connection from %s", ip)
            app.quotas.close_connection(ip)
            conn.close()
            return
        deadline = asyncio.get_running_loop().time() + cfg.tcp_timeout
        task = asyncio.ensure_future(self._secure(conn, ip, deadline))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _secure(self, conn: socket.socket, ip: str, deadline: float) -> None:
        """Run the handshake, then hand the connection to a ``TcrpConnection``; on any
        failure give back what it held. The loop owns ``conn`` from here: it closes it
        when the handshake fails, times out or is cancelled."""
        app, cfg = self.app, self.app.cfg
        loop = asyncio.get_running_loop()
        protocol = TcrpConnection(app, admitted=True, deadline=deadline)
        try:
            timeout = min(cfg.tls_handshake_timeout, max(0.0, deadline - loop.time()))
            await asyncio.wait_for(loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self.context,
                ssl_handshake_timeout=cfg.tls_handshake_timeout), timeout)
        except (OSError, TimeoutError) as exc:
            log.debug("TLS handshake with %s failed: %r", ip, exc)
        finally:
            app.handshakes.give(ip)
            # Once the protocol has the connection (connection_made), its connection_lost
            # gives the count back; before that, nothing will: give it back here.
            if protocol not in app.connections and protocol.counted:
                protocol.counted = False
                app.quotas.close_connection(ip)
