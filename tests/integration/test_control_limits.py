"""Budgets of the control process under attack, on real processes: the per-IP room quota
under concurrent creates, the admin server's connection cap against idle connections, and
the key-derivation (scrypt) budget against password-join floods. docs/security.md maps
each threat to these tests."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

from tests.integration.harness import start_server
from tests.integration.test_ops_support import admin_address, http_get
from tests.stress.tools import status_of
from wire.codes import Operation, Status
from wire.tcrp import encode_request

H = "127.0.0.1"


def request_status(port: int, op: Operation, room: str, user: str,
                   password: str | None = None, bind_ip: str = H) -> int:
    return status_of(H, port, encode_request(op, room, user, password), bind_ip)


def test_room_quota_holds_under_concurrent_creates() -> None:
    with start_server("--max-rooms-per-ip", "20", workers=2) as srv:
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(
                lambda i: request_status(srv.tcp_port, Operation.CREATE, f"q-{i}", "host"),
                range(100)))
        assert statuses.count(Status.OK) == 20, statuses
        assert statuses.count(Status.RATE_LIMITED) == 80, statuses
        # Another IP is not affected.
        assert request_status(srv.tcp_port, Operation.CREATE, "q-other", "host",
                              bind_ip="127.0.0.2") == Status.OK


def test_idle_admin_connections_never_lock_out_the_probes() -> None:
    with start_server("--admin-port", "0", workers=1) as srv:
        addr = admin_address(srv)
        idle = []
        try:
            for _ in range(100):  # far past the cap of 32
                sock = socket.create_connection(addr, timeout=10)
                idle.append(sock)
            for path in ("/healthz", "/readyz", "/healthz"):
                started = time.monotonic()
                status, _, body = http_get(addr, path, timeout=10)
                assert status == 200, body
                assert time.monotonic() - started < 4.0  # served, not after the timeout
            # A client that sent half a request head is not kept past the 5 s deadline.
            slow = socket.create_connection(addr, timeout=10)
            slow.sendall(b"GET /metrics HTTP/1.1\r\n")
            started = time.monotonic()
            slow.settimeout(15)
            try:
                data = slow.recv(1024)
            except ConnectionResetError:
                data = b""
            assert data == b"" and time.monotonic() - started < 10
            slow.close()
        finally:
            for sock in idle:
                sock.close()
