"""Servers' TLS keys pinned on first use, like SSH's known_hosts.

A client that connects over TLS without a CA file (``--ca-file``) cannot verify the
server's certificate against anyone: ``ocm-control`` makes a self-signed one by default.
So the first connection to ``host:port`` records the SHA-256 of the certificate's public
key (its SubjectPublicKeyInfo, so a renewed certificate with the same key still matches),
and every later connection must present the same key, or is refused before a byte of TCRP
is sent (``ServerKeyChanged``, worded by ``client.joinflow``).

The file is ``$XDG_CONFIG_HOME/ocm/known_servers`` (``~/.config/ocm/known_servers``): one
``host:port sha256:BASE64`` line per server, ``#`` comments kept. To accept a legitimate
change (the server made a new key), delete that server's line; the next connection pins
the new key. Reading and writing happen under an exclusive ``flock`` on a lock file
beside it, and the file is replaced atomically (0600, directory 0700), so clients running
at once on one machine never lose each other's pins.

``server_identity`` is the name others key on for a server (e.g. member-key pins): the
pinned key when TLS was used, else the canonical ``host:port``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "known_servers"
LOCK_NAME = ".known_servers.lock"
PREFIX = "sha256:"


class KnownServersError(Exception):
    """The file cannot be read or written; the message names it."""


class ServerKeyChanged(Exception):
    """The server presented a key other than the one pinned for it."""

    def __init__(self, where: str, pinned: str, presented: str, path: Path) -> None:
        super().__init__(f"{where}: pinned {pinned}, presented {presented}")
        self.where = where
        self.pinned = pinned
        self.presented = presented
        self.path = path


def default_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/ocm``, or ``$HOME/.config/ocm`` (an unset, empty or relative
    XDG_CONFIG_HOME is ignored, as the XDG Base Directory spec says)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    if not base or not os.path.isabs(base):
        base = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "ocm"


def key_fingerprint(der: bytes) -> str:
    """``sha256:BASE64`` of the public key (SubjectPublicKeyInfo) in the DER certificate;
    raise ``ValueError`` if it does not parse."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode().rstrip("=")


def canonical_where(host: str, port: int) -> str:
    """``host:port`` with the host in lower case, without a trailing dot, IPv6 in
    brackets: the key of a server in the file."""
    host = host.strip().rstrip(".").lower()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def server_identity(host: str, port: int, key: str | None) -> str:
    """What identifies the server to others: its pinned (or verified) TLS key
    fingerprint, else the canonical ``host:port`` (no TLS: nothing better is known)."""
    return key if key is not None else canonical_where(host, port)


@dataclass(frozen=True, slots=True)
class Pinned:
    """The outcome of a check that passed: the key, and whether it was pinned just now
    (first use) rather than found."""

    key: str
    first_use: bool


class KnownServers:
    """The pins in ``directory / FILE_NAME``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / FILE_NAME

    def check(self, host: str, port: int, der: bytes) -> Pinned:
        """Pin the key of ``der`` for ``host:port`` on first use, or check it against the
        pin; raise ``ServerKeyChanged`` on a different key, ``KnownServersError`` when
        the file cannot be used (a key that cannot be checked is never accepted)."""
        where = canonical_where(host, port)
        try:
            presented = key_fingerprint(der)
        except ValueError as exc:
            raise KnownServersError(f"the certificate of {where} does not parse: {exc}"
                                    ) from None
        with self._locked():
            lines = self._read()
            pinned = _lookup(lines, where)
            if pinned is None:
                self._write([*lines, f"{where} {presented}"])
                return Pinned(presented, True)
        if pinned != presented:
            raise ServerKeyChanged(where, pinned, presented, self.path)
        return Pinned(presented, False)

    def lookup(self, host: str, port: int) -> str | None:
        """The key pinned for ``host:port``, if any."""
        with self._locked():
            return _lookup(self._read(), canonical_where(host, port))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _tighten(self.directory, 0o700)
            fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KnownServersError(f"cannot use {self.directory}: "
                                    f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> list[str]:
        try:
            _tighten(self.path, 0o600)
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise KnownServersError(f"cannot read {self.path}: {exc}") from None

    def _write(self, lines: list[str]) -> None:
        try:
            fd, temporary = tempfile.mkstemp(prefix=".known_servers.", dir=self.directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write("".join(f"{line}\n" for line in lines))
                os.replace(temporary, self.path)  # mkstemp made it 0600
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise KnownServersError(f"cannot write {self.path}: {exc.strerror or exc}"
                                    ) from None


def _lookup(lines: list[str], where: str) -> str | None:
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[0] == where:
            return fields[1]
    return None


def _tighten(path: Path, mode: int) -> None:
    """Take group and other permissions off ``path`` when it has more than ``mode``."""
    current = path.stat().st_mode & 0o777
    if current & ~mode:
        os.chmod(path, current & mode)
