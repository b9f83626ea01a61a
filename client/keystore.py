"""Identity keys and pinned keys on disk (docs/e2e.md §6).

Everything lives in ``$XDG_CONFIG_HOME/ocm/`` (``~/.config/ocm/`` when the variable is
unset or empty), a directory created with mode 0700:

- ``identity.json``, mode 0600: this device's private keys. A file readable by group or
  others is refused (``InsecureKeyFile``), as ssh refuses such a private key.
- ``pins.json``, mode 0600: the keys of every (server, username) seen, pinned on first
  sight, with their trust: ``unverified`` (first sight), ``verified`` (``/verify`` done)
  or ``changed`` (the key differs from the one pinned before and is not verified yet).

Both files are JSON written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from client.e2e.identity import IdentityKeys, Rng, fingerprint
from wire import errors
from wire.e2e import PublicKeys, decode_public_keys

STORE_VERSION: Final = 1
IDENTITY_FILE: Final = "identity.json"
PINS_FILE: Final = "pins.json"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


class KeyStoreError(Exception):
    """A key-store file is unreadable or malformed; ``str()`` says which and why."""


class InsecureKeyFile(KeyStoreError):
    """The private key file is readable or writable by group or others."""


class Trust(enum.Enum):
    UNVERIFIED = "unverified"  # pinned on first sight, never compared out of band
    VERIFIED = "verified"  # /verify: the safety number was compared
    CHANGED = "changed"  # differs from the key pinned before; messages are marked


class PinStatus(enum.Enum):
    NEW = "new"  # first sight: pinned now
    SAME = "same"  # the pinned key
    CHANGED = "changed"  # another key than the pinned one: warn loudly


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


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class KeyStore:
    """The identity and the pins of one device. ``KeyStore(config_dir(os.environ))``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    # --- identity -------------------------------------------------------------------------
    def load_or_create_identity(self, rng: Rng) -> IdentityKeys:
        """This device's keys, made with ``rng`` and saved (0600) on first use.

        Raise ``InsecureKeyFile`` if the file has any group/other permission bit,
        ``KeyStoreError`` if it is not a key file of ours.
        """
        path = self.directory / IDENTITY_FILE
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            identity = IdentityKeys.generate(rng)
            x25519, ed25519 = identity.private_bytes()
            self._write(IDENTITY_FILE, {"version": STORE_VERSION, "x25519": _b64(x25519),
                                        "ed25519": _b64(ed25519)})
            return identity
        if stat.S_IMODE(mode) & 0o077:
            raise InsecureKeyFile(f"{path} has mode {stat.S_IMODE(mode):04o}; chmod 600 it")
        obj = self._read(path)
        try:
            x25519 = base64.b64decode(obj["x25519"], validate=True)
            ed25519 = base64.b64decode(obj["ed25519"], validate=True)
            return IdentityKeys.from_private_bytes(x25519, ed25519)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise KeyStoreError(f"{path}: not an identity key file ({exc})") from None

    # --- pins -----------------------------------------------------------------------------
    def check(self, server: str, user: str, keys: PublicKeys) -> PinResult:
        """Compare ``keys`` with the pin of (server, user); pin them on first sight.

        A changed key replaces the pin with trust ``changed`` (so the warning is not
        repeated for every message), until ``verify`` is called.
        """
        pins = self._pins()
        users = pins.setdefault(server, {})
        entry = users.get(user)
        if entry is None:
            users[user] = self._entry(keys, Trust.UNVERIFIED)
            self._write(PINS_FILE, {"version": STORE_VERSION, "servers": pins})
            return PinResult(PinStatus.NEW, Trust.UNVERIFIED)
        pinned, trust = self._parse_entry(entry)
        if pinned == keys:
            return PinResult(PinStatus.SAME, trust)
        users[user] = self._entry(keys, Trust.CHANGED)
        self._write(PINS_FILE, {"version": STORE_VERSION, "servers": pins})
        return PinResult(PinStatus.CHANGED, Trust.CHANGED, fingerprint(pinned))

    def verify(self, server: str, user: str) -> None:
        """Mark the pinned key of (server, user) verified; ``KeyError`` if none is pinned."""
        pins = self._pins()
        entry = pins[server][user]
        keys, _ = self._parse_entry(entry)
        pins[server][user] = self._entry(keys, Trust.VERIFIED)
        self._write(PINS_FILE, {"version": STORE_VERSION, "servers": pins})

    def trust(self, server: str, user: str) -> Trust | None:
        """The recorded trust of (server, user), ``None`` if nothing is pinned."""
        entry = self._pins().get(server, {}).get(user)
        return None if entry is None else self._parse_entry(entry)[1]

    @staticmethod
    def _entry(keys: PublicKeys, trust: Trust) -> dict[str, Any]:
        return {**keys.to_json(), "trust": trust.value}

    def _parse_entry(self, entry: object) -> tuple[PublicKeys, Trust]:
        if not isinstance(entry, dict):
            raise KeyStoreError(f"{self.directory / PINS_FILE}: a pin is not an object")
        try:
            return decode_public_keys(entry), Trust(entry.get("trust"))
        except (ValueError, errors.ProtocolError) as exc:
            raise KeyStoreError(f"{self.directory / PINS_FILE}: bad pin ({exc})") from None

    def _pins(self) -> dict[str, dict[str, Any]]:
        path = self.directory / PINS_FILE
        if not path.exists():
            return {}
        servers = self._read(path).get("servers")
        if not isinstance(servers, dict) or not all(isinstance(v, dict) for v in
                                                     servers.values()):
            raise KeyStoreError(f"{path}: not a pin file")
        return servers

    # --- files ----------------------------------------------------------------------------
    def _read(self, path: Path) -> dict[str, Any]:
        try:
            obj = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise KeyStoreError(f"{path}: {exc}") from None
        if not isinstance(obj, dict) or obj.get("version") != STORE_VERSION:
            raise KeyStoreError(f"{path}: not a version {STORE_VERSION} file of ocm")
        return obj

    def _write(self, name: str, obj: dict[str, Any]) -> None:
        """Write atomically with mode 0600 (set at creation, never widened)."""
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        tmp = self.directory / f".{name}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.directory / name)
