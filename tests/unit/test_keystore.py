"""client/keystore.py (docs/e2e.md §6): identity at mode 0600, pins per (server, user).

Every test works in a temporary XDG_CONFIG_HOME; the real ~/.config is never touched.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import orjson
import pytest

from client.e2e.identity import IdentityKeys, fingerprint
from client.keystore import (
    InsecureKeyFile,
    KeyStore,
    KeyStoreError,
    PinResult,
    PinStatus,
    Trust,
    config_dir,
)
from wire.e2e import PublicKeys


def rng(n: int) -> bytes:
    return hashlib.sha256(b"keystore test").digest()[:n]


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(config_dir({"XDG_CONFIG_HOME": str(tmp_path), "HOME": "/nonexistent"}))


def test_config_dir() -> None:
    assert config_dir({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/home/u"}) == Path("/x/cfg/ocm")
    assert config_dir({"XDG_CONFIG_HOME": "", "HOME": "/home/u"}) == Path("/home/u/.config/ocm")
    assert config_dir({"HOME": "/home/u"}) == Path("/home/u/.config/ocm")
    # a relative XDG_CONFIG_HOME is ignored, as the XDG spec says
    assert config_dir({"XDG_CONFIG_HOME": "rel", "HOME": "/home/u"}) == Path(
        "/home/u/.config/ocm"
    )


def test_identity_is_created_once_with_mode_0600(store: KeyStore, tmp_path: Path) -> None:
    first = store.load_or_create_identity(rng)
    path = tmp_path / "ocm" / "identity.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ocm").stat().st_mode) == 0o700
    again = KeyStore(tmp_path / "ocm").load_or_create_identity(lambda n: b"\x00" * n)
    assert again.public() == first.public()  # loaded, not made anew
    assert first.public() == IdentityKeys.generate(rng).public()
    assert [p.name for p in (tmp_path / "ocm").iterdir()] == ["identity.json"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_insecure_identity_file_is_refused(store: KeyStore, tmp_path: Path, mode: int) -> None:
    store.load_or_create_identity(rng)
    path = tmp_path / "ocm" / "identity.json"
    os.chmod(path, mode)
    with pytest.raises(InsecureKeyFile, match="chmod 600"):
        store.load_or_create_identity(rng)
    os.chmod(path, 0o400)  # stricter than 0600 is fine
    store.load_or_create_identity(rng)


@pytest.mark.parametrize(
    "content",
    [b"", b"[]", b"{}", b'{"version":2}', b'{"version":1}', b'{"version":1,"x25519":"AA==",'
     b'"ed25519":"AA=="}', b'{"version":1,"x25519":5,"ed25519":"AA=="}'],
)
def test_bad_identity_file(store: KeyStore, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "ocm").mkdir(mode=0o700)
    path = tmp_path / "ocm" / "identity.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyStoreError):
        store.load_or_create_identity(rng)


ALICE = PublicKeys(b"\x01" * 32, b"\x02" * 32)
MALLORY = PublicKeys(b"\x03" * 32, b"\x04" * 32)


def test_pin_on_first_sight_then_warn_on_change(store: KeyStore, tmp_path: Path) -> None:
    server = "127.0.0.1:9000"
    assert store.trust(server, "alice") is None
    assert store.check(server, "alice", ALICE) == PinResult(PinStatus.NEW, Trust.UNVERIFIED)
    assert store.check(server, "alice", ALICE) == PinResult(PinStatus.SAME, Trust.UNVERIFIED)
    pins = tmp_path / "ocm" / "pins.json"
    assert stat.S_IMODE(pins.stat().st_mode) == 0o600
    # the key changes: a loud warning, and messages under it are unverified
    changed = store.check(server, "alice", MALLORY)
    assert changed == PinResult(PinStatus.CHANGED, Trust.CHANGED, fingerprint(ALICE))
    # seen again: no second warning, but still not trusted
    assert store.check(server, "alice", MALLORY) == PinResult(PinStatus.SAME, Trust.CHANGED)
    assert KeyStore(tmp_path / "ocm").trust(server, "alice") is Trust.CHANGED  # persisted
    store.verify(server, "alice")
    assert store.check(server, "alice", MALLORY) == PinResult(PinStatus.SAME, Trust.VERIFIED)
    # the old key is now the changed one
    assert store.check(server, "alice", ALICE).status is PinStatus.CHANGED


def test_pins_are_per_server_and_user(store: KeyStore) -> None:
    assert store.check("a:9000", "alice", ALICE).status is PinStatus.NEW
    assert store.check("b:9000", "alice", MALLORY).status is PinStatus.NEW
    assert store.check("a:9000", "bob", MALLORY).status is PinStatus.NEW
    assert store.check("a:9000", "alice", ALICE).status is PinStatus.SAME
    with pytest.raises(KeyError):
        store.verify("a:9000", "carol")


@pytest.mark.parametrize(
    "servers",
    [5, {"a:1": 5}, {"a:1": {"alice": 5}}, {"a:1": {"alice": {"trust": "unverified"}}},
     {"a:1": {"alice": {**ALICE.to_json(), "trust": "maybe"}}}],
)
def test_bad_pin_file(store: KeyStore, tmp_path: Path, servers: object) -> None:
    (tmp_path / "ocm").mkdir(mode=0o700)
    (tmp_path / "ocm" / "pins.json").write_bytes(
        orjson.dumps({"version": 1, "servers": servers})
    )
    with pytest.raises(KeyStoreError):
        store.check("a:1", "alice", ALICE)
