"""Identities and pinned keys on disk (docs/e2e.md, "Keys at rest").

Everything lives in ``$XDG_CONFIG_HOME/ocm/`` (``~/.config/ocm/`` when the variable is
unset or empty), a directory kept at mode 0700 (tightened when found looser):

- ``identity-<hash>.json``, mode 0600, one per (server identity, username): that user's
  vodozemac account (its identity keys; no one-time key or session is ever saved),
  pickled and encrypted with the *pickle key*. So alice and bob on one machine have
  different keys. The server identity is its TLS key when the join used TLS, else its
  canonical ``host:port``; an identity made under the ``host:port`` is adopted the first
  time that server is reached over TLS.
- the pickle key comes from the OS keyring (the ``keyring`` package) where a usable one
  exists; else from a passphrase file (``--key-passphrase-file``, stretched with scrypt
  and a salt kept in ``pickle.salt``); else from ``pickle.key``, 32 random bytes made on
  first use, mode 0600. Each identity file records which source opened it.
- ``pins.json``, mode 0600: the keys of every (server identity, username) seen, pinned
  on first sight, with their trust (``unverified``, ``verified``, ``changed``), and the
  rooms seen encrypted on each server (a plain answer for them is refused later).

Every read-modify-write holds an exclusive ``flock`` on ``.lock``; files are written to a
unique temporary name (0600 from creation) and renamed, so two clients on one directory
neither race nor see half a file.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import ipaddress
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from client.e2e.identity import IdentityKeys, fingerprint
from wire import errors
from wire.e2e import PublicKeys, decode_public_keys

STORE_VERSION: Final = 1
IDENTITY_VERSION: Final = 2
PINS_FILE: Final = "pins.json"
KEY_FILE: Final = "pickle.key"
SALT_FILE: Final = "pickle.salt"
LOCK_FILE: Final = ".lock"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600
KEYRING_SERVICE: Final = "ocm"
KEYRING_ENTRY: Final = "account pickle key"
SCRYPT_N: Final = 1 << 15
"""scrypt cost for a passphrase (N=2^15, r=8, p=1: 32 MiB, ~0.1 s)."""


class KeyStoreError(Exception):
    """A key-store file is unreadable or malformed; ``str()`` says which and why."""


class PassphraseNeeded(KeyStoreError):
    """The identity was saved with a passphrase and none was given (``ocm-gui`` asks)."""


class WrongPassphrase(PassphraseNeeded):
    """The passphrase given does not open the identity."""


class Trust(enum.Enum):
    UNVERIFIED = "unverified"  # pinned on first sight, never compared out of band
    VERIFIED = "verified"  # /verify confirmed: the safety number was compared
    CHANGED = "changed"  # differs from the key pinned before; not accepted yet


class PinStatus(enum.Enum):
    NEW = "new"  # first sight: pinned now
    SAME = "same"  # the pinned key
    CHANGED = "changed"  # another key than the pinned one: warn loudly


class KeySource(enum.Enum):
    KEYRING = "keyring"
    PASSPHRASE = "passphrase"
    FILE = "file"


@dataclass(frozen=True, slots=True)
class PinResult:
    """What ``check`` found, the trust now recorded, and the old key's fingerprint."""

    status: PinStatus
    trust: Trust
    previous: str | None = None


def config_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/ocm``, or ``$HOME/.config/ocm`` (XDG Base Directory spec: an
    unset, empty or relative XDG_CONFIG_HOME is ignored)."""
    base = env.get("XDG_CONFIG_HOME", "")
    if not base or not os.path.isabs(base):
        base = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "ocm"


def server_identity(host: str, port: int) -> str:
    """The canonical ``host:port`` of a server (lower case, no trailing dot, an IP address
    in its normal form, IPv6 in brackets): pins and identities are kept under it."""
    name = host.strip().strip("[]").rstrip(".").lower()
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(name)
        name = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return f"{name}:{port}"


def _keyring_key() -> bytes | None:
    """The pickle key from a usable OS keyring (made there on first use), or ``None``."""
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 0) <= 0:
            return None
        value = keyring.get_password(KEYRING_SERVICE, KEYRING_ENTRY)
        if value is None:
            value = secrets.token_hex(32)
            keyring.set_password(KEYRING_SERVICE, KEYRING_ENTRY, value)
        return bytes.fromhex(value)
    except Exception:  # no package, no backend, a locked or broken keyring: not usable
        return None


class KeyStore:
    """The identities and the pins of one config directory."""

    def __init__(self, directory: Path, passphrase_file: Path | None = None,
                 use_keyring: bool = True, passphrase: bytes | None = None) -> None:
        self.directory = directory
        self.passphrase_file = passphrase_file
        self.use_keyring = use_keyring
        self.passphrase = passphrase
        """A passphrase typed by the user (``ocm-gui``'s dialog), in place of a file."""

    # --- identity -------------------------------------------------------------------------
    def identity_path(self, server: str, user: str) -> Path:
        digest = hashlib.sha256(f"{server}\0{user}".encode()).hexdigest()[:20]
        return self.directory / f"identity-{digest}.json"

    def load_or_create_identity(self, server: str, user: str,
                                former: str | None = None) -> IdentityKeys:
        """The identity of ``user`` on ``server``, made and saved on first use (before any
        one-time key exists). ``former``: another name of the same server (its
        ``host:port`` when ``server`` is its TLS key) whose identity, if ``user`` has one
        there and none under ``server`` yet, is adopted and saved under ``server`` too, so
        an identity made before the server's key was known is not lost. Raise
        ``KeyStoreError`` if the file is not ours or its pickle key does not open it."""
        path = self.identity_path(server, user)
        with self._locked():
            if not path.exists() and former is not None and former != server:
                old = self.identity_path(former, user)
                if old.exists():
                    self._tighten(old, FILE_MODE)
                    obj = self._read(old, IDENTITY_VERSION)
                    self._open_identity(old, obj)  # adopt only a file that opens
                    self._write(path.name, {**obj, "server": server, "adopted_from": former})
            if not path.exists():
                identity = IdentityKeys.generate()
                source, key = self._pickle_key(None)
                self._write(path.name, {"version": IDENTITY_VERSION, "server": server,
                                        "user": user, "key_source": source.value,
                                        "pickle": identity.pickle(key)})
                return identity
            self._tighten(path, FILE_MODE)
            return self._open_identity(path, self._read(path, IDENTITY_VERSION))

    def sources(self) -> dict[KeySource, int]:
        """How many identities each key source locks (``ocm-gui``'s Protect keys action)."""
        counts = dict.fromkeys(KeySource, 0)
        for path in sorted(self.directory.glob("identity-*.json")):
            with contextlib.suppress(KeyStoreError, ValueError):
                counts[KeySource(self._read(path, IDENTITY_VERSION).get("key_source"))] += 1
        return counts

    def protect(self, passphrase: bytes) -> int:
        """Lock every identity kept under the key file with a key stretched from
        ``passphrase`` instead, and delete the key file: a copy of this directory alone
        then opens nothing. Identities under the OS keyring stay there; ones already under
        a passphrase must open with this one (else ``WrongPassphrase``, and nothing is
        changed). From now on new identities of this store need the passphrase too. Returns
        how many identities were locked anew. ``KeyStoreError`` for an empty passphrase or
        an identity file that does not open."""
        if not passphrase:
            raise KeyStoreError("the passphrase is empty")
        locked = KeyStore(self.directory, use_keyring=self.use_keyring, passphrase=passphrase)
        with self._locked():
            moved = locked._relock()
        self.passphrase, self.passphrase_file = passphrase, None
        return moved

    def _relock(self) -> int:
        """``protect``'s work, by a store with the passphrase, under the directory's lock."""
        locked_key = self._passphrase_key()
        relock = []
        for path in sorted(self.directory.glob("identity-*.json")):
            obj = self._read(path, IDENTITY_VERSION)
            if obj.get("key_source") == KeySource.KEYRING.value:
                continue
            identity = self._open_identity(path, obj)  # a wrong passphrase raises here
            if obj.get("key_source") == KeySource.FILE.value:
                relock.append((path, obj, identity))
        for path, obj, identity in relock:  # every one opened: now rewrite them
            self._write(path.name, {**obj, "key_source": KeySource.PASSPHRASE.value,
                                    "pickle": identity.pickle(locked_key)})
        with contextlib.suppress(FileNotFoundError):
            (self.directory / KEY_FILE).unlink()
        return len(relock)

    def _open_identity(self, path: Path, obj: dict[str, Any]) -> IdentityKeys:
        try:
            source = KeySource(obj.get("key_source"))
            pickle = obj["pickle"]
            if not isinstance(pickle, str):
                raise TypeError("pickle is not a string")
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStoreError(f"{path}: not an identity file ({exc})") from None
        _, key = self._pickle_key(source)
        try:
            return IdentityKeys.from_pickle(pickle, key)
        except ValueError:
            error = WrongPassphrase if source is KeySource.PASSPHRASE else KeyStoreError
            raise error(f"{path}: the {source.value} key does not open it "
                        "(wrong passphrase, or another keyring?)") from None

    def _pickle_key(self, source: KeySource | None) -> tuple[KeySource, bytes]:
        """The key of ``source``, or of the first available source for a new file."""
        if source in (None, KeySource.KEYRING) and self.use_keyring:
            key = _keyring_key()
            if key is not None:
                return KeySource.KEYRING, key
            if source is KeySource.KEYRING:
                raise KeyStoreError("the identity was saved with the OS keyring, which is "
                                    "not available now")
        if source in (None, KeySource.PASSPHRASE) and (
                self.passphrase is not None or self.passphrase_file is not None):
            return KeySource.PASSPHRASE, self._passphrase_key()
        if source is KeySource.PASSPHRASE:
            raise PassphraseNeeded("the identity was saved with a passphrase: give "
                                   "--key-passphrase-file")
        if source is None and not (self.directory / KEY_FILE).exists() and \
                (self.directory / SALT_FILE).exists():
            raise PassphraseNeeded("this device's identities are locked with a passphrase: "
                                   "give --key-passphrase-file to make a new one")
        return KeySource.FILE, self._file_key()

    def _passphrase_key(self) -> bytes:
        if self.passphrase is not None:
            passphrase = self.passphrase
            if not passphrase:
                raise WrongPassphrase("the passphrase is empty")
        else:
            assert self.passphrase_file is not None
            try:
                passphrase = self.passphrase_file.read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                raise KeyStoreError(f"{self.passphrase_file}: {exc.strerror or exc}") from None
            if not passphrase:
                raise KeyStoreError(f"{self.passphrase_file}: the passphrase is empty")
        salt = self._secret_file(SALT_FILE, 16)
        return hashlib.scrypt(passphrase, salt=salt, n=SCRYPT_N, r=8, p=1, dklen=32,
                              maxmem=64 * 1024 * 1024)

    def _file_key(self) -> bytes:
        return self._secret_file(KEY_FILE, 32)

    def _secret_file(self, name: str, size: int) -> bytes:
        path = self.directory / name
        if not path.exists():
            self._write_bytes(name, secrets.token_bytes(size))
        self._tighten(path, FILE_MODE)
        raw = path.read_bytes()
        if len(raw) != size:
            raise KeyStoreError(f"{path}: expected {size} bytes, found {len(raw)}")
        return raw

    # --- pins -----------------------------------------------------------------------------
    def check(self, server: str, user: str, keys: PublicKeys) -> PinResult:
        """Compare ``keys`` with the pin of (server, user); pin them on first sight.

        A changed key replaces the pin with trust ``changed`` (so the warning is not
        repeated for every message), until ``verify`` is called.
        """
        keys = keys.identity()
        with self._locked():
            store = self._pins()
            users = store["servers"].setdefault(server, {})
            entry = users.get(user)
            if entry is None:
                users[user] = self._entry(keys, Trust.UNVERIFIED)
                self._write(PINS_FILE, store)
                return PinResult(PinStatus.NEW, Trust.UNVERIFIED)
            pinned, trust = self._parse_entry(entry)
            if pinned == keys:
                return PinResult(PinStatus.SAME, trust)
            users[user] = self._entry(keys, Trust.CHANGED)
            self._write(PINS_FILE, store)
            return PinResult(PinStatus.CHANGED, Trust.CHANGED, fingerprint(pinned))

    def verify(self, server: str, user: str) -> None:
        """Mark the pinned key of (server, user) verified; ``KeyError`` if none is pinned."""
        with self._locked():
            store = self._pins()
            entry = store["servers"][server][user]
            keys, _ = self._parse_entry(entry)
            store["servers"][server][user] = self._entry(keys, Trust.VERIFIED)
            self._write(PINS_FILE, store)

    def trust(self, server: str, user: str) -> Trust | None:
        """The recorded trust of (server, user), ``None`` if nothing is pinned."""
        with self._locked():
            entry = self._pins()["servers"].get(server, {}).get(user)
        return None if entry is None else self._parse_entry(entry)[1]

    def seen_encrypted(self, server: str, room: str) -> bool:
        """This device once joined ``room`` on ``server`` as an encrypted room."""
        with self._locked():
            return room in self._pins()["encrypted"].get(server, [])

    def mark_encrypted(self, server: str, room: str) -> None:
        with self._locked():
            store = self._pins()
            rooms = store["encrypted"].setdefault(server, [])
            if room not in rooms:
                rooms.append(room)
                self._write(PINS_FILE, store)

    @staticmethod
    def _entry(keys: PublicKeys, trust: Trust) -> dict[str, Any]:
        return {**keys.identity().to_json(), "trust": trust.value}

    def _parse_entry(self, entry: object) -> tuple[PublicKeys, Trust]:
        if not isinstance(entry, dict):
            raise KeyStoreError(f"{self.directory / PINS_FILE}: a pin is not an object")
        try:
            return decode_public_keys(entry), Trust(entry.get("trust"))
        except (ValueError, errors.ProtocolError) as exc:
            raise KeyStoreError(f"{self.directory / PINS_FILE}: bad pin ({exc})") from None

    def _pins(self) -> dict[str, Any]:
        path = self.directory / PINS_FILE
        if not path.exists():
            return {"version": STORE_VERSION, "servers": {}, "encrypted": {}}
        self._tighten(path, FILE_MODE)
        obj = self._read(path, STORE_VERSION)
        servers, encrypted = obj.get("servers"), obj.setdefault("encrypted", {})
        if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in
                                                     servers.values()) \
                or not isinstance(encrypted, dict):
            raise KeyStoreError(f"{path}: not a pin file")
        return obj

    # --- files ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the directory, for one read-modify-write."""
        self._ensure_dir()
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._tighten(self.directory, DIR_MODE)

    @staticmethod
    def _tighten(path: Path, mode: int) -> None:
        """Remove group and other permission bits found on ``path``."""
        with contextlib.suppress(FileNotFoundError):
            current = stat.S_IMODE(path.stat().st_mode)
            if current & 0o077:
                os.chmod(path, current & ~0o077 & 0o7777 | (mode & 0o700))

    def _read(self, path: Path, version: int) -> dict[str, Any]:
        try:
            obj = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise KeyStoreError(f"{path}: {exc}") from None
        if not isinstance(obj, dict) or obj.get("version") != version:
            raise KeyStoreError(f"{path}: not a version {version} file of ocm")
        return obj

    def _write(self, name: str, obj: dict[str, Any]) -> None:
        self._write_bytes(name, orjson.dumps(obj, option=orjson.OPT_INDENT_2))

    def _write_bytes(self, name: str, data: bytes) -> None:
        """Write atomically: a unique temporary file (0600 from creation), then rename."""
        self._ensure_dir()
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.directory / name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
