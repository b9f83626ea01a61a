"""control/tls.py: the self-signed certificate kept in the state directory (made once,
private, reused) and the handshake slots."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from control import tls
from control.tls import HandshakeSlots

x509 = pytest.importorskip("cryptography.x509")


def test_made_once_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state" / "ocm"
    cert, key = tls.ensure_self_signed(state, "192.0.2.7")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"192.0.2.7", "127.0.0.1"} <= {str(a) for a in san.get_values_for_type(
        x509.IPAddress)}
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    tls.server_context(cert, key)  # the pair loads
    pem = Path(cert).read_bytes()
    os.chmod(state, 0o755)
    os.chmod(key, 0o644)
    assert tls.ensure_self_signed(state, "192.0.2.7") == (cert, key)
    assert Path(cert).read_bytes() == pem
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_an_unusable_state_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(tls.TlsSetupError, match=str(blocker / "ocm")):
        tls.ensure_self_signed(blocker / "ocm", "0.0.0.0")


def test_handshake_slots_cap_in_all_and_per_ip() -> None:
    slots = HandshakeSlots()
    assert all(slots.take("a", 3, 2) for _ in range(2))
    assert not slots.take("a", 3, 2)
    assert slots.take("b", 3, 2)
    assert not slots.take("c", 3, 2)
    slots.give("a")
    assert slots.take("c", 3, 2)
    assert slots.refused == 2 and slots.total == 3
    for ip in ("a", "b", "c"):
        slots.give(ip)
    assert slots.total == 0 and slots.by_ip == {}
