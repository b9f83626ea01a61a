"""sd_notify against real Unix datagram sockets (a path and the abstract namespace), and
the server telling a fake service manager READY=1 (after every worker is ready),
WATCHDOG=1 and STOPPING=1."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.notify import notify
from tests.integration.harness import start_server


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A Unix datagram socket in the abstract namespace, as ``@name``."""
    name = f"ocm-test-{os.getpid()}-{secrets.token_hex(4)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(30)
    yield sock, "@" + name
    sock.close()


def test_notify_to_a_path(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        assert notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": path}) is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_to_the_abstract_namespace(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    assert notify("STOPPING=1", {"NOTIFY_SOCKET": address}) is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_to_nobody_fails_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    with caplog.at_level(logging.WARNING, logger="ocm.control"):
        assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    assert "sd_notify 'READY=1'" in caplog.text


def test_server_notifies_ready_watchdog_and_stopping(listener: tuple[socket.socket, str]
                                                     ) -> None:
    sock, address = listener
    srv = start_server(workers=2, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    try:
        states = []
        while not any(s.startswith(b"READY=1") for s in states):
            states.append(sock.recv(4096))
        ready = next(s for s in states if s.startswith(b"READY=1")).decode()
        assert ready.startswith(f"READY=1\nSTATUS=ready tcp=127.0.0.1:{srv.tcp_port} ")
        # READY=1 is sent right after the ready line, so every worker has started.
        text = srv.log_text()
        ready_at = text.index("ready tcp=")
        assert text.index("worker 0 started") < ready_at
        assert text.index("worker 1 started") < ready_at
        assert sock.recv(4096) == b"WATCHDOG=1"  # every WATCHDOG_USEC / 2
        srv.send_signal(signal.SIGTERM)
        while (state := sock.recv(4096)) == b"WATCHDOG=1":
            pass
        assert state == b"STOPPING=1\nSTATUS=draining"
    finally:
        code = srv.stop()
    assert code == 0
