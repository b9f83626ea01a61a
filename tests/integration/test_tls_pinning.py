"""TLS by default, end to end: ``ocm-control`` makes a self-signed certificate in its
state directory on first start and keeps it; ``ocm-chat`` with no TLS flag at all joins
over TLS, pins the server's key on first use, accepts it again after a restart, and
refuses a server that presents another key at the same address, loudly, before sending
its request; deleting the pin (as the refusal says) accepts the new key."""

from __future__ import annotations

import ipaddress
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from client.known_servers import FILE_NAME, default_dir
from client.session import TcrpTarget, join_room
from tests.integration.harness import start_server
from wire.codes import Operation
from wire.tcrp import Request, RequestBody

x509 = pytest.importorskip("cryptography.x509")

H = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]


def chat(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_self_signed_by_default_pinned_on_first_use_and_a_changed_key_refused(
        tmp_path: Path) -> None:
    first, second = tmp_path / "state-a", tmp_path / "state-b"
    pins = default_dir() / FILE_NAME  # XDG_CONFIG_HOME of this session (conftest)
    with start_server("--state-dir", str(first), workers=1) as srv:
        port = srv.tls_port
        assert port and stat.S_IMODE(first.stat().st_mode) == 0o700
        key = first / "tls-key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        cert = x509.load_pem_x509_certificate((first / "tls-cert.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = {*san.get_values_for_type(x509.DNSName),
                 *map(str, san.get_values_for_type(x509.IPAddress))}
        assert {H, "localhost", socket.gethostname()} <= names
        assert ipaddress.ip_address(H) in san.get_values_for_type(x509.IPAddress)
        done = chat("--tcp-port", str(port), "--create", "pinned", "--user", "alice",
                    stdin="hello\n")
        assert done.returncode == 0, done.stderr
        assert "joined over TLS; first connection to" in done.stderr, done.stderr
        assert stat.S_IMODE(pins.stat().st_mode) == 0o600
        line = next(x for x in pins.read_text().splitlines() if x.startswith(f"{H}:{port} "))
        assert re.fullmatch(rf"{H}:{port} sha256:[A-Za-z0-9+/]{{43}}", line), line
        # The server logs the same key, for comparing out of band.
        logged = srv.wait_log(r"self-signed certificate \S+, key (sha256:\S+) ")[1]
        assert line == f"{H}:{port} {logged}" and logged in done.stderr
        pem = (first / "tls-cert.pem").read_bytes()
    # The same state directory: the same certificate, and the pin still holds.
    with start_server("--state-dir", str(first), "--tls-port", str(port), workers=1) as srv:
        assert (first / "tls-cert.pem").read_bytes() == pem
        done = chat("--tcp-port", str(port), "--create", "again", "--user", "alice")
        assert done.returncode == 0, done.stderr
        assert "as pinned" in done.stderr, done.stderr
    # Another key at the same address: refused before the request is sent.
    with start_server("--state-dir", str(second), "--tls-port", str(port), workers=1) as srv:
        done = chat("--tcp-port", str(port), "--create", "taken", "--user", "mallory",
                    stdin="secret words\n")
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"ocm-chat: WARNING: THE TLS KEY OF THE SERVER AT {H}:{port} "
                                   "HAS CHANGED: "), lines[0]
        assert f"delete the line for {H}:{port} in {pins}" in lines[0], lines[0]
        # Nothing was sent: the room the refused client would have created is free.
        joined = join_room(TcrpTarget(H, srv.tcp_port),
                           Request.of(Operation.CREATE, "taken", RequestBody("bob")))
        joined.udp_sock.close()
        # Accepting a legitimate change, as the refusal says: delete the server's line.
        pins.write_text("".join(f"{x}\n" for x in pins.read_text().splitlines()
                                if not x.startswith(f"{H}:{port} ")))
        done = chat("--tcp-port", str(port), "--create", "accepted", "--user", "alice")
        assert done.returncode == 0 and "first connection to" in done.stderr, done.stderr


def test_no_tls_speaks_plain_tcrp_to_the_plain_port() -> None:
    with start_server(workers=1) as srv:
        done = chat("--no-tls", "--tcp-port", str(srv.tcp_port), "--create", "clear",
                    "--user", "alice")
        assert done.returncode == 0, done.stderr
        assert "joined over plain TCRP (not TLS)" in done.stderr, done.stderr
        refused = chat("--no-tls", "--ca-file", "ca.pem", "--create", "x", "--user", "a")
        assert refused.returncode == 2 and "--ca-file is for TLS" in refused.stderr
