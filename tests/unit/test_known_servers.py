"""client/known_servers.py: keys pinned on first use in one file shared by every client
of a user (several may run at once), refused when changed, files kept private."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from client.known_servers import (
    FILE_NAME,
    KnownServers,
    ServerKeyChanged,
    canonical_where,
    default_dir,
    key_fingerprint,
    server_identity,
)

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def certificate(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A self-signed DER certificate (a new key unless ``key``)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocm")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


def test_first_use_pins_the_same_key_passes_another_is_refused(tmp_path: Path) -> None:
    pins = KnownServers(tmp_path / "ocm")
    key = ec.generate_private_key(ec.SECP256R1())
    first = pins.check("Chat.Example.", 9443, certificate(key))
    assert first.first_use and first.key.startswith("sha256:")
    # A renewed certificate with the same key matches; the host is compared canonically.
    again = pins.check("chat.example", 9443, certificate(key))
    assert not again.first_use and again.key == first.key
    with pytest.raises(ServerKeyChanged) as changed:
        pins.check("chat.example", 9443, certificate())
    assert changed.value.pinned == first.key and changed.value.where == "chat.example:9443"
    # Another port is another server.
    assert pins.check("chat.example", 9000, certificate()).first_use
    assert stat.S_IMODE((tmp_path / "ocm").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "ocm" / FILE_NAME).stat().st_mode) == 0o600


def test_loose_permissions_are_tightened_and_comments_kept(tmp_path: Path) -> None:
    directory = tmp_path / "ocm"
    directory.mkdir(mode=0o755)
    path = directory / FILE_NAME
    path.write_text("# mine\n")
    os.chmod(directory, 0o755)
    os.chmod(path, 0o644)
    KnownServers(directory).check("h", 1, certificate())
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("# mine\n")


def _pin_many(directory: str, worker: int, count: int) -> None:
    pins = KnownServers(Path(directory))
    for n in range(count):
        pins.check(f"host-{worker}", 1000 + n, certificate())


def test_clients_pinning_at_once_lose_nothing(tmp_path: Path) -> None:
    """Locked read-modify-write: four processes pin 25 servers each into one file."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_pin_many, args=(str(tmp_path), w, 25))
               for w in range(4)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(120)
        assert proc.exitcode == 0
    lines = (tmp_path / FILE_NAME).read_text().splitlines()
    assert len(lines) == 100
    assert {line.split()[0] for line in lines} == {
        f"host-{w}:{1000 + n}" for w in range(4) for n in range(25)}


def test_identity_and_names() -> None:
    der = certificate()
    assert server_identity("h", 1, key_fingerprint(der)) == key_fingerprint(der)
    assert server_identity("H.", 9000, None) == "h:9000"
    assert canonical_where("::1", 9443) == "[::1]:9443"
    assert default_dir({"XDG_CONFIG_HOME": "/x"}) == Path("/x/ocm")
    assert default_dir({"XDG_CONFIG_HOME": "rel", "HOME": "/home/a"}) == Path(
        "/home/a/.config/ocm")
