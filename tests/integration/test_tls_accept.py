"""The TLS port's accept path on a real ``ocm-control``: the per-IP connection cap and the
deadline hold from accept (before any handshake), handshakes in progress are capped in all
and per IP and have their own timeout, and a flood of half-handshakes leaves plain and TLS
joins answering. The flooding connections send nothing at all (not even a ClientHello)."""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

from client.session import TcrpTarget, client_tls_context, join_room
from tests.integration.harness import Server, start_server
from tests.stress.tools import admin_address, scrape
from wire.codes import Operation
from wire.tcrp import Request, RequestBody

H = "127.0.0.1"
WAIT_S = 20.0


def idle(port: int, source: str = H) -> socket.socket:
    """A TCP connection to ``port`` that never sends a byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(WAIT_S)
    sock.connect((H, port))
    sock.setblocking(False)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) ``sock``; it never sends TCRP bytes first."""
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def wait_closed(socks: list[socket.socket], count: int, timeout: float = WAIT_S
                ) -> list[socket.socket]:
    """Wait until ``count`` of ``socks`` are closed by the server; return those."""
    closed: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    while len(closed) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(closed)} of {len(socks)} connections were closed"
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [],
                                       min(left, 1.0))
        closed += [s for s in readable if closed_by_server(s)]
    return closed


def tls_join(srv: Server, state: Path, room: str, user: str,
             operation: Operation = Operation.CREATE) -> None:
    """A TLS join that verifies the server's self-signed certificate from ``state``."""
    context = client_tls_context(str(state / "tls-cert.pem"))
    joined = join_room(TcrpTarget(H, srv.tls_port, context, 10.0),
                       Request.of(operation, room, RequestBody(user)))
    joined.udp_sock.close()


def plain_join(srv: Server, room: str, user: str) -> None:
    joined = join_room(TcrpTarget(H, srv.tcp_port, None, 10.0),
                       Request.of(Operation.CREATE, room, RequestBody(user)))
    joined.udp_sock.close()


def test_idle_tls_connections_meet_the_per_ip_cap_at_accept(tmp_path: Path) -> None:
    with start_server("--max-conns-per-ip", "8", "--max-tls-handshakes-per-ip", "64",
                      "--tls-handshake-timeout", "120", "--tcp-timeout", "120",
                      "--state-dir", str(tmp_path), workers=1) as srv:
        socks = [idle(srv.tls_port, "127.0.0.3") for _ in range(13)]
        try:
            closed = wait_closed(socks, 5)
            held = [s for s in socks if s not in closed]
            assert len(held) == 8 and not any(map(closed_by_server, held))
            # Another IP is not affected by this one's cap.
            tls_join(srv, tmp_path, "other-ip", "alice")
        finally:
            for sock in socks:
                sock.close()


def test_handshakes_in_progress_are_capped_per_ip(tmp_path: Path) -> None:
    with start_server("--max-tls-handshakes-per-ip", "4", "--tls-handshake-timeout", "120",
                      "--tcp-timeout", "120", "--state-dir", str(tmp_path), "--admin-port", "0",
                      workers=1) as srv:
        socks = [idle(srv.tls_port, "127.0.0.2") for _ in range(9)]
        try:
            closed = wait_closed(socks, 5)
            assert not any(map(closed_by_server, (s for s in socks if s not in closed)))
            admin = admin_address(srv.log_text())
            assert admin is not None
            metrics = scrape(admin)
            assert metrics["ocm_tls_handshakes"] == 4
            assert metrics["ocm_tls_handshakes_refused_total"] == 5
            tls_join(srv, tmp_path, "beside", "alice")  # from 127.0.0.1
        finally:
            for sock in socks:
                sock.close()


def test_a_handshake_has_its_own_short_timeout(tmp_path: Path) -> None:
    with start_server("--tls-handshake-timeout", "0.5", "--tcp-timeout", "120",
                      "--state-dir", str(tmp_path), workers=1) as srv:
        sock = idle(srv.tls_port)
        try:
            wait_closed([sock], 1)
        finally:
            sock.close()
        # The slot it held is free again: the same IP still joins over TLS.
        tls_join(srv, tmp_path, "after", "alice")


def test_joins_answer_during_a_flood_of_half_handshakes(tmp_path: Path) -> None:
    # 300 descriptors for control: without caps at accept, the flood below (six IPs) holds
    # them all until the handshake deadline and neither port can accept a join. With them,
    # each flooding IP holds 4 handshakes, 24 in all, under the total of 32.
    with start_server("--max-tls-handshakes", "32", "--max-tls-handshakes-per-ip", "4",
                      "--tls-handshake-timeout", "120",
                      "--tcp-timeout", "120", "--fd-reserve", "8", "--state-dir",
                      str(tmp_path), workers=1, nofile=300) as srv:
        flood: list[socket.socket] = []
        stop = threading.Event()
        opened = threading.Event()

        def run() -> None:
            for n in range(600):
                if stop.is_set():
                    return
                try:
                    flood.append(idle(srv.tls_port, f"127.0.1.{n % 6 + 1}"))
                except OSError:
                    pass
                if n == 400:
                    opened.set()
            opened.set()

        flooder = threading.Thread(target=run, daemon=True)
        flooder.start()
        try:
            assert opened.wait(60), "the flood did not start"
            plain_join(srv, "plain-during", "alice")
            tls_join(srv, tmp_path, "tls-during", "bob")
        finally:
            stop.set()
            flooder.join(60)
            for sock in flood:
                sock.close()
