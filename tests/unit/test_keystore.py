"""client/keystore.py: identities per (server identity, username), pickled encrypted with a
key from the keyring, a passphrase or a key file; pins; modes tightened; concurrent
clients on one directory.

Every test works in a temporary XDG_CONFIG_HOME; the real ~/.config is never touched, and
the OS keyring is not used (``use_keyring=False``) except where a test fakes one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from client import keystore
from client.e2e.identity import IdentityKeys, fingerprint
from client.keystore import (
    KeyStore,
    KeyStoreError,
    PinResult,
    PinStatus,
    Trust,
    config_dir,
    server_identity,
)
from wire.e2e import PublicKeys

SERVER = "127.0.0.1:9000"


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(config_dir({"XDG_CONFIG_HOME": str(tmp_path), "HOME": "/nonexistent"}),
                    use_keyring=False)


def test_config_dir() -> None:
    assert config_dir({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/home/u"}) == Path("/x/cfg/ocm")
    assert config_dir({"XDG_CONFIG_HOME": "", "HOME": "/home/u"}) == Path("/home/u/.config/ocm")
    assert config_dir({"XDG_CONFIG_HOME": "rel", "HOME": "/home/u"}) == \
        Path("/home/u/.config/ocm")


def test_server_identity_is_canonical() -> None:
    assert server_identity("LocalHost.", 9000) == "localhost:9000"
    assert server_identity("127.000.0.1".replace("000", "0"), 9000) == "127.0.0.1:9000"
    assert server_identity("[::1]", 9443) == server_identity("0:0::1", 9443) == "[::1]:9443"


def test_identity_per_server_and_user(store: KeyStore) -> None:
    alice = store.load_or_create_identity(SERVER, "alice")
    bob = store.load_or_create_identity(SERVER, "bob")
    elsewhere = store.load_or_create_identity("example.org:9000", "alice")
    prints = {fingerprint(i.public()) for i in (alice, bob, elsewhere)}
    assert len(prints) == 3
    again = store.load_or_create_identity(SERVER, "alice")
    assert again.public() == alice.public()


def test_an_identity_under_the_address_is_adopted_under_the_tls_key(
        store: KeyStore, tmp_path: Path) -> None:
    """An identity made under ``host:port`` (before the server's TLS key was known) is
    adopted the first time the server is reached by its key, and kept for the address
    too; bob, with no identity there, gets a new one; a key with its own identity keeps
    it."""
    tls_key = "sha256:" + "A" * 43
    earlier = store.load_or_create_identity(SERVER, "alice")
    adopted = store.load_or_create_identity(tls_key, "alice", former=SERVER)
    assert adopted.public() == earlier.public()
    saved = json.loads(store.identity_path(tls_key, "alice").read_text())
    assert saved["server"] == tls_key and saved["adopted_from"] == SERVER
    assert store.load_or_create_identity(SERVER, "alice").public() == earlier.public()
    bob = store.load_or_create_identity(tls_key, "bob", former=SERVER)
    assert bob.public() != earlier.public()
    other = store.load_or_create_identity("sha256:" + "B" * 43, "carol")
    carol = store.load_or_create_identity("sha256:" + "B" * 43, "carol", former="x:1")
    assert carol.public() == other.public()
    # A file that does not open (saved with a passphrase not given now) is not adopted.
    phrase = tmp_path / "phrase"
    phrase.write_text("correct horse\n")
    KeyStore(store.directory, phrase, use_keyring=False).load_or_create_identity(SERVER, "dave")
    with pytest.raises(KeyStoreError, match="passphrase"):
        store.load_or_create_identity(tls_key, "dave", former=SERVER)
    assert not store.identity_path(tls_key, "dave").exists()


def test_files_hold_no_key_in_clear_and_modes_are_tight(store: KeyStore) -> None:
    identity = store.load_or_create_identity(SERVER, "alice")
    directory = store.directory
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    saved = json.loads(store.identity_path(SERVER, "alice").read_text())
    assert saved["key_source"] == "file" and saved["user"] == "alice"
    # the pickle opens with the key file only
    key = (directory / keystore.KEY_FILE).read_bytes()
    assert IdentityKeys.from_pickle(saved["pickle"], key).public() == identity.public()
    with pytest.raises(ValueError):
        IdentityKeys.from_pickle(saved["pickle"], bytes(32))


def test_looser_modes_are_tightened(store: KeyStore) -> None:
    store.load_or_create_identity(SERVER, "alice")
    path = store.identity_path(SERVER, "alice")
    os.chmod(path, 0o644)
    os.chmod(store.directory, 0o755)
    os.chmod(store.directory / keystore.KEY_FILE, 0o640)
    store.load_or_create_identity(SERVER, "alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.directory / keystore.KEY_FILE).stat().st_mode) == 0o600


def test_passphrase_key(tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse\n")
    store = KeyStore(tmp_path / "ocm", secret, use_keyring=False)
    identity = store.load_or_create_identity(SERVER, "alice")
    saved = json.loads(store.identity_path(SERVER, "alice").read_text())
    assert saved["key_source"] == "passphrase"
    assert not (tmp_path / "ocm" / keystore.KEY_FILE).exists()
    assert store.load_or_create_identity(SERVER, "alice").public() == identity.public()
    with pytest.raises(KeyStoreError, match="--key-passphrase-file"):
        KeyStore(tmp_path / "ocm", use_keyring=False).load_or_create_identity(SERVER, "alice")
    secret.write_text("wrong horse\n")
    with pytest.raises(KeyStoreError, match="does not open it"):
        store.load_or_create_identity(SERVER, "alice")


def test_keyring_key_when_one_is_usable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    monkeypatch.setattr(keystore, "_keyring_key", lambda: b"K" * 32)
    store = KeyStore(tmp_path / "ocm")
    identity = store.load_or_create_identity(SERVER, "alice")
    saved = json.loads(store.identity_path(SERVER, "alice").read_text())
    assert saved["key_source"] == "keyring"
    assert IdentityKeys.from_pickle(saved["pickle"], b"K" * 32).public() == identity.public()
    monkeypatch.setattr(keystore, "_keyring_key", lambda: None)
    with pytest.raises(KeyStoreError, match="keyring"):
        store.load_or_create_identity(SERVER, "alice")


def test_not_our_file(store: KeyStore) -> None:
    store.load_or_create_identity(SERVER, "alice")
    store.identity_path(SERVER, "alice").write_text('{"version": 2}')
    with pytest.raises(KeyStoreError, match="not an identity file"):
        store.load_or_create_identity(SERVER, "alice")
    store.identity_path(SERVER, "alice").write_text("nonsense")
    with pytest.raises(KeyStoreError):
        store.load_or_create_identity(SERVER, "alice")


def test_pins(store: KeyStore) -> None:
    keys = PublicKeys(b"\x01" * 32, b"\x02" * 32)
    other = PublicKeys(b"\x03" * 32, b"\x02" * 32)
    assert store.check(SERVER, "bob", keys) == PinResult(PinStatus.NEW, Trust.UNVERIFIED)
    assert store.check(SERVER, "bob", keys) == PinResult(PinStatus.SAME, Trust.UNVERIFIED)
    assert store.check("other:1", "bob", other).status is PinStatus.NEW  # per server
    store.verify(SERVER, "bob")
    assert store.trust(SERVER, "bob") is Trust.VERIFIED
    changed = store.check(SERVER, "bob", other)
    assert changed == PinResult(PinStatus.CHANGED, Trust.CHANGED, fingerprint(keys))
    assert store.check(SERVER, "bob", other) == PinResult(PinStatus.SAME, Trust.CHANGED)
    assert store.trust(SERVER, "nobody") is None
    with pytest.raises(KeyError):
        store.verify(SERVER, "nobody")


def test_rooms_seen_encrypted(store: KeyStore) -> None:
    assert not store.seen_encrypted(SERVER, "r")
    store.mark_encrypted(SERVER, "r")
    store.mark_encrypted(SERVER, "r")
    assert store.seen_encrypted(SERVER, "r")
    assert not store.seen_encrypted("other:1", "r")


def _hammer(directory: str, user: str, rounds: int) -> list[str]:
    store = KeyStore(Path(directory), use_keyring=False)
    prints = []
    for i in range(rounds):
        prints.append(fingerprint(store.load_or_create_identity(SERVER, user).public()))
        store.check(SERVER, f"{user}-peer{i}", PublicKeys(bytes([i % 5]) * 32, b"\x09" * 32))
    return prints


def test_two_processes_on_one_directory(tmp_path: Path) -> None:
    """The pin-file race of two clients on one config directory: no crash, no lost or
    half-written file, and each user keeps its own identity."""
    directory = str(tmp_path / "ocm")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        alice, bob = pool.starmap(_hammer, [(directory, "alice", 60), (directory, "bob", 60)])
    assert len(set(alice)) == 1 and len(set(bob)) == 1 and alice[0] != bob[0]
    pins = json.loads((tmp_path / "ocm" / "pins.json").read_text())
    assert set(pins["servers"][SERVER]) == {f"{u}-peer{i}" for u in ("alice", "bob")
                                            for i in range(60)}  # no update lost
    assert not [p for p in (tmp_path / "ocm").iterdir() if p.name.endswith(".tmp")]


def test_a_room_seen_encrypted_must_stay_so_on_join_only(store: KeyStore) -> None:
    from client.e2e_link import must_be_encrypted
    from wire.codes import Operation

    join, create = Operation.JOIN, Operation.CREATE
    assert not must_be_encrypted(store, "127.0.0.1", 9000, "r", False, join)
    store.mark_encrypted(server_identity("127.0.0.1", 9000), "r")
    assert must_be_encrypted(store, "127.0.0.1", 9000, "r", False, join)
    assert not must_be_encrypted(store, "127.0.0.1", 9000, "r", False, join, allow_plain=True)
    assert not must_be_encrypted(store, "127.0.0.1", 9000, "r", False, create)  # your choice
    assert must_be_encrypted(store, "127.0.0.1", 9000, "r", True, create)
    assert not must_be_encrypted(store, "127.0.0.1", 9001, "r", False, join)  # another server


def test_a_typed_passphrase_opens_what_a_passphrase_file_locked(store: KeyStore,
                                                                tmp_path: Path) -> None:
    """What ocm-gui's dialog relies on: a locked identity says it needs a passphrase
    (``PassphraseNeeded``), a wrong one says so (``WrongPassphrase``), the right one typed
    (not in a file) opens it."""
    phrase = tmp_path / "phrase"
    phrase.write_text("correct horse\n")
    made = KeyStore(store.directory, phrase, use_keyring=False).load_or_create_identity(
        SERVER, "alice")
    with pytest.raises(keystore.PassphraseNeeded) as needed:
        store.load_or_create_identity(SERVER, "alice")
    assert not isinstance(needed.value, keystore.WrongPassphrase)
    for wrong in (b"wrong horse", b""):
        typed = KeyStore(store.directory, use_keyring=False, passphrase=wrong)
        with pytest.raises(keystore.WrongPassphrase):
            typed.load_or_create_identity(SERVER, "alice")
    typed = KeyStore(store.directory, use_keyring=False, passphrase=b"correct horse")
    assert typed.load_or_create_identity(SERVER, "alice").public() == made.public()


def test_protect_locks_key_file_identities_with_a_passphrase(store: KeyStore) -> None:
    """``ocm-gui``'s Protect keys action: identities under the key file are locked with a
    passphrase and the key file goes, so the directory alone opens nothing; a new identity
    then needs the passphrase too; a second protect must use the same passphrase."""
    made = {user: store.load_or_create_identity(SERVER, user) for user in ("alice", "bob")}
    assert (store.directory / keystore.KEY_FILE).exists()
    assert store.sources()[keystore.KeySource.FILE] == 2
    with pytest.raises(KeyStoreError, match="empty"):
        store.protect(b"")
    assert store.protect(b"correct horse") == 2
    assert not (store.directory / keystore.KEY_FILE).exists()
    assert store.sources() == {keystore.KeySource.KEYRING: 0,
                               keystore.KeySource.PASSPHRASE: 2, keystore.KeySource.FILE: 0}
    fresh = KeyStore(store.directory, use_keyring=False)
    with pytest.raises(keystore.PassphraseNeeded):
        fresh.load_or_create_identity(SERVER, "alice")
    with pytest.raises(keystore.PassphraseNeeded, match="make a new one"):
        fresh.load_or_create_identity(SERVER, "carol")  # not silently under a new key file
    typed = KeyStore(store.directory, use_keyring=False, passphrase=b"correct horse")
    for user, identity in made.items():
        assert typed.load_or_create_identity(SERVER, user).public() == identity.public()
    typed.load_or_create_identity(SERVER, "carol")
    assert typed.sources()[keystore.KeySource.PASSPHRASE] == 3
    with pytest.raises(keystore.WrongPassphrase):
        KeyStore(store.directory, use_keyring=False).protect(b"wrong horse")
    assert KeyStore(store.directory, use_keyring=False).protect(b"correct horse") == 0
