"""TLS for TCRP (stdlib ``ssl``): the server context, the self-signed certificate that
``ocm-control`` makes on first start when none is configured, and the bounds on handshakes.

The TLS listener (``tls_port``, default ``wire.limits.DEFAULT_TLS_PORT``) speaks exactly
the TCRP of the plain port inside TLS: same frames, same one request per connection, same
2-byte registration after State 2. It accepts plain TCP first, so the per-IP connection
cap and the ``tcp_timeout`` deadline apply from accept, as on the plain port; then TLS
starts on the accepted connection, which must finish its handshake within
``tls_handshake_timeout`` and fit under ``max_tls_handshakes`` (all IPs) and
``max_tls_handshakes_per_ip``. Chat datagrams (UDP) are not protected by it:
docs/security.md.
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path

CERT_NAME = "tls-cert.pem"
KEY_NAME = "tls-key.pem"
LOCK_NAME = ".tls.lock"
SELF_SIGNED_DAYS = 3650
"""Validity of the self-signed certificate: clients pin its key, not its dates."""


class TlsSetupError(Exception):
    """The certificate or key cannot be loaded or made; the message names the files."""


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later, the stdlib's secure defaults) with the
    certificate chain of ``cert_file`` and the key of ``key_file``; raise
    ``TlsSetupError`` when either cannot be read or they do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise TlsSetupError(f"cannot load the TLS certificate: {exc.filename}: "
                            f"{exc.strerror}") from None
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsSetupError(f"cannot load the TLS certificate {cert_file} with the key "
                            f"{key_file}: {exc}") from None
    return context


def key_fingerprint(cert_file: str) -> str:
    """``sha256:BASE64`` of the public key (SubjectPublicKeyInfo) of the PEM certificate in
    ``cert_file``: what clients pin and show, for comparing out of band; raise
    ``TlsSetupError`` when it cannot be read."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        with open(cert_file, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError) as exc:
        raise TlsSetupError(f"cannot read the TLS certificate {cert_file}: {exc}") from None
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + base64.b64encode(hashlib.sha256(spki).digest()).decode().rstrip("=")


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/ocm``, else ``~/.local/state/ocm`` (the XDG base directory rule:
    a relative ``XDG_STATE_HOME`` is ignored)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME", "")
    if base and os.path.isabs(base):
        return Path(base) / "ocm"
    return Path.home() / ".local" / "state" / "ocm"


def self_signed_names(host: str) -> list[str]:
    """The names the self-signed certificate holds: the bound host (unless a wildcard),
    127.0.0.1, localhost and this machine's host name, each once."""
    names = [] if host in ("0.0.0.0", "::", "") else [host]
    names += ["127.0.0.1", "localhost", socket.gethostname()]
    return list(dict.fromkeys(n for n in names if n))


def ensure_self_signed(state_dir: Path, host: str) -> tuple[str, str]:
    """(certificate, key) files in ``state_dir``: the ones made on an earlier start, or a
    new ECDSA P-256 key and a self-signed certificate for ``self_signed_names(host)``.
    The directory is made 0700 and the key 0600 (tightened when found looser); raise
    ``TlsSetupError`` naming the path when either cannot be made."""
    cert_path, key_path = state_dir / CERT_NAME, state_dir / KEY_NAME
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
        # Servers starting at once on one state directory make one pair, not a mix.
        lock = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cert_path.exists() and key_path.exists():
                os.chmod(key_path, 0o600)
                return str(cert_path), str(key_path)
            cert_pem, key_pem = _make_self_signed(self_signed_names(host))
            _write_private(key_path, key_pem)
            _write_private(cert_path, cert_pem, mode=0o644)
        finally:
            os.close(lock)
    except OSError as exc:
        raise TlsSetupError(f"cannot keep the self-signed TLS certificate in {state_dir}: "
                            f"{exc.strerror or exc} (set state_dir, or give tls_cert and "
                            "tls_key)") from None
    return str(cert_path), str(key_path)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a new file created with ``mode`` (never readable
    by others in between), then rename it into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _make_self_signed(names: list[str]) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class HandshakeSlots:
    """TLS handshakes in progress, in all and per client IP: ``take`` before starting one
    (False: over a cap, close the connection), ``give`` when it ends either way."""

    def __init__(self) -> None:
        self.total = 0
        self.by_ip: dict[str, int] = {}
        self.refused = 0

    def take(self, ip: str, max_total: int, max_per_ip: int) -> bool:
        held = self.by_ip.get(ip, 0)
        if self.total >= max_total or held >= max_per_ip:
            self.refused += 1
            return False
        self.total += 1
        self.by_ip[ip] = held + 1
        return True

    def give(self, ip: str) -> None:
        self.total -= 1
        held = self.by_ip[ip] - 1
        if held:
            self.by_ip[ip] = held
        else:
            del self.by_ip[ip]
