"""Encrypted rooms with real ``ocm-chat`` processes in script mode (docs/e2e.md §7): chat
both ways, fingerprints, ``/who`` and ``/verify``, key files, the warning on a changed
key, and a wire tap (AF_PACKET on ``lo``) that sees no text, password or private key.

Each client keeps its keys in its own ``$XDG_CONFIG_HOME`` under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.e2e.identity import fingerprint
from client.keystore import KeyStore, server_identity
from tests.integration.harness import Server
from tests.integration.test_client_script import Client, spawn

H = "127.0.0.1"
FP = r"[0-9a-f]{4}(?: [0-9a-f]{4}){7}"
SAFETY = r"\d{5}(?: \d{5}){11}"


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Spawned clients, killed at the end if a test left any running."""
    started: list[Client] = []
    yield started
    for client in started:
        client.kill()


def _env(tmp_path: Path, who: str) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / who)}


def _encrypted_room(clients: list[Client], server: Server, room: str, tmp_path: Path,
                    *extra: str) -> tuple[Client, Client, str, str]:
    """alice creates an encrypted room, bob joins; both fingerprints as shown."""
    alice = spawn(clients, server, "--create", room, "--user", "alice", "--e2e", *extra,
                  env=_env(tmp_path, "alice"))
    alice.expect_err(r"alice is host of encrypted room .*\(end-to-end encrypted · (no )?TLS\)")
    fp_alice = alice.expect(rf"is end-to-end encrypted; your key fingerprint \(alice\): {FP}$")
    fp_alice = fp_alice.rsplit(": ", 1)[1]
    bob = spawn(clients, server, "--join", room, "--user", "bob", *extra,
                env=_env(tmp_path, "bob"))
    bob.expect_err(r"bob is in encrypted room")
    bob.expect(r"is end-to-end encrypted")
    bob.expect(rf"^\* alice is now in the encryption set, key fingerprint {fp_alice} "
               r"\(unverified\)$")
    alice.expect(r"^\* bob joined the room$")
    fp_bob = alice.expect(rf"^\* bob is now in the encryption set, key fingerprint {FP} "
                          r"\(unverified\)$").split("fingerprint ", 1)[1][:39]
    return alice, bob, fp_alice, fp_bob


def test_encrypted_chat_who_verify_and_key_files(server: Server, room_name: str,
                                                 clients: list[Client], tmp_path: Path) -> None:
    alice, bob, fp_alice, fp_bob = _encrypted_room(clients, server, room_name, tmp_path)
    bob.send("hello alice")
    alice.expect(r"^bob: hello alice$")
    alice.send("hi bob, ça va? 🙂")
    bob.expect(r"^alice: hi bob, ça va\? 🙂$")
    bob.send("/who")
    bob.expect(r"^\* 2 in the encryption set \(end-to-end encrypted\):$")
    bob.expect(rf"^\*   bob \(you\): {fp_bob}$")
    bob.expect(rf"^\*   alice \(host\): {fp_alice} · unverified$")
    bob.send("/verify alice")
    number_bob = bob.expect(rf"^\* safety number with alice: {SAFETY}$").rsplit(": ", 1)[1]
    bob.expect(r"only if it matches, type: /verify alice confirm$")
    alice.send("/verify bob")
    number_alice = alice.expect(rf"^\* safety number with bob: {SAFETY}$").rsplit(": ", 1)[1]
    assert number_alice == number_bob
    bob.send("/who")  # /verify alone marks nothing
    bob.expect(rf"^\*   alice \(host\): {fp_alice} · unverified$")
    bob.send("/verify alice confirm")
    bob.expect(r"^\* alice is now marked verified$")
    bob.send("/who")
    bob.expect(rf"^\*   alice \(host\): {fp_alice} · verified$")
    # the key files: 0600 in a 0700 directory, the pin marked verified
    for who in ("alice", "bob"):
        directory = tmp_path / who / "ocm"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    pins = json.loads((tmp_path / "bob" / "ocm" / "pins.json").read_text())
    (server_key, users), = pins["servers"].items()  # under the server's TLS key
    assert server_key.startswith("sha256:") and users["alice"]["trust"] == "verified"
    bob.close_stdin()  # EOF: bob leaves with kind 04
    assert bob.wait() == 0
    alice.expect(r"^\* bob left the room$")
    alice.close_stdin()
    assert alice.wait() == 0


def test_who_in_a_plain_room(server: Server, room_name: str, clients: list[Client],
                             tmp_path: Path) -> None:
    alice = spawn(clients, server, "--create", room_name, "--user", "alice",
                  env=_env(tmp_path, "alice"))
    alice.expect_err(r"is host of room")
    bob = spawn(clients, server, "--join", room_name, "--user", "bob", env=_env(tmp_path, "bob"))
    bob.expect_err(r"is in room")
    alice.expect(r"^\* bob joined the room$")
    bob.send("/who")
    bob.expect(r"^\* 2 in the room: alice \(host\), bob \(you\)$")
    bob.close_stdin()
    assert bob.wait() == 0


def test_changed_key_is_warned_and_marked_until_verified(server: Server, room_name: str,
                                                         clients: list[Client],
                                                         tmp_path: Path) -> None:
    alice, bob, _, fp_bob = _encrypted_room(clients, server, room_name, tmp_path)
    bob.close_stdin()
    assert bob.wait() == 0
    alice.expect(r"^\* bob left the room$")
    # "bob" again, from another device (another key)
    impostor = spawn(clients, server, "--join", room_name, "--user", "bob",
                     env=_env(tmp_path, "bob-2"))
    impostor.expect(r"alice is now in the encryption set")
    warning = alice.expect(r"WARNING: bob's identity key has CHANGED")
    assert fp_bob in warning and "/verify bob" in warning
    impostor.send("it is really me")
    alice.expect(r"^bob: \[unverified key\] it is really me$")
    alice.send("/verify bob")
    alice.expect(rf"^\* safety number with bob: {SAFETY}$")
    alice.send("/verify bob confirm")
    alice.expect(r"^\* bob is now in the encryption set")
    impostor.send("verified now")
    alice.expect(r"^bob: verified now$")
    impostor.close_stdin()
    assert impostor.wait() == 0


# --- the wire tap -----------------------------------------------------------------------------
ETH_P_ALL = 0x0003


class Tap:
    """Every TCP and UDP payload on ``lo`` to or from ``ports`` (AF_PACKET, root only)."""

    def __init__(self, ports: set[int]) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.ports = ports
        self.tcp: list[bytes] = []
        self.udp: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(65536)
            except TimeoutError:
                continue
            self._parse(frame)

    def _parse(self, frame: bytes) -> None:
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            return
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        proto, segment = ip[9], ip[ihl:total]
        if len(segment) < 8:
            return
        src, dst = struct.unpack("!HH", segment[:4])
        if src not in self.ports and dst not in self.ports:
            return
        if proto == 17:
            self.udp.append(segment[8:])
        elif proto == 6:
            payload = segment[(segment[12] >> 4) * 4:]
            if payload:
                self.tcp.append(payload)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_wire_tap_sees_no_text_password_or_private_key(
        server: Server, room_name: str, clients: list[Client], tmp_path: Path) -> None:
    """With default settings only (no TLS flag on the server or the clients): TLS with a
    self-signed certificate, its key pinned on first use."""
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        probe.close()
    except PermissionError:
        pytest.skip("capturing on lo needs root (CAP_NET_RAW)")
    port = server.tls_port
    assert port, "the server serves TLS by default"
    password = "correct horse battery staple 4711"
    (tmp_path / "pw").write_text(password + "\n")
    tap = Tap({port, server.tcp_port, *server.udp_ports})
    texts = ["the eagle lands at dawn 7319", "bring the blue folder 2468"]
    try:
        alice, bob, _, _ = _encrypted_room(clients, server, room_name, tmp_path,
                                           "--password-file", str(tmp_path / "pw"))
        bob.send(texts[0])
        alice.expect(rf"^bob: {texts[0]}$")
        alice.send(texts[1])
        bob.expect(rf"^alice: {texts[1]}$")
        bob.send("/who")
        bob.expect(r"^\* 2 in the encryption set")
        bob.close_stdin()
        assert bob.wait() == 0
        alice.expect(r"bob left the room")
        alice.close_stdin()
        assert alice.wait() == 0
    finally:
        tap.stop()
    secrets: list[bytes] = [t.encode() for t in texts] + [password.encode()]
    for who in ("alice", "bob"):  # the pickle key and the encrypted accounts
        directory = tmp_path / who / "ocm"
        raws = [(directory / "pickle.key").read_bytes()]
        raws += [json.loads(p.read_text())["pickle"].encode()
                 for p in directory.glob("identity-*.json")]
        secrets += [raw[i:i + 16] for raw in raws for i in range(0, len(raw) - 15, 16)]
    # the tap saw the session: the TLS records, the room's datagrams, the sealed chats
    assert tap.tcp and tap.udp
    room = room_name.encode()
    assert any(room in payload for payload in tap.udp)
    sealed = [p for p in tap.udp if len(p) > 2 + len(room) and p[2:2 + len(room)] == room
              and len(p) > 2 + p[0] + p[1] and p[2 + p[0] + p[1]] == 0x01]
    assert len(sealed) >= 2
    for payload in tap.tcp + tap.udp:
        for secret in secrets:
            assert secret not in payload, (secret, payload[:80])
    # over TLS not even the room name or a username is in the clear on TCP
    assert not any(room in payload or b"alice" in payload for payload in tap.tcp)
    assert not re.search(rb"\{\"username\"", b"".join(tap.tcp))
    assert os.geteuid() == 0


def test_interactive_client_shows_encryption_who_and_verify(
        server: Server, room_name: str, tmp_path: Path) -> None:
    """The terminal UI: the encrypted intro with our fingerprint, /help, /who with
    fingerprints, and /verify of an unknown name."""
    from tests.integration.test_client_tty import spawn_tty, wait_exit

    ttys: list[object] = []
    try:
        alice = spawn_tty(ttys, server, "--create", room_name, "--user", "alice", "--e2e",
                          env={**_env(tmp_path, "alice"), "NO_COLOR": "1"})
        alice.expect("Password for the new room")
        alice.sendline("")
        alice.expect(rf"is end-to-end encrypted; your key fingerprint \(alice\): ({FP})")
        fingerprint = alice.match.group(1)
        alice.expect("you are in room")
        alice.sendline("/help")
        alice.expect(r"/verify NAME")
        alice.sendline("/who")
        alice.expect(r"1 in the encryption set \(end-to-end encrypted\):")
        alice.expect(rf"alice \(host, you\): {fingerprint}")
        alice.sendline("/verify mallory")
        alice.expect(r"/verify NAME: no member named 'mallory' with keys")
        alice.sendline("/exit")
        alice.expect(r"Leave\? \[y/N\]")
        alice.sendline("y")
        alice.expect("the room is closed")
        assert wait_exit(alice) == 0
    finally:
        for child in ttys:
            child.close(force=True)  # type: ignore[attr-defined]


# --- attacks, as the review showed them --------------------------------------------------
def test_recorded_traffic_and_every_file_on_disk_decrypt_nothing(
        server: Server, room_name: str, clients: list[Client], tmp_path: Path) -> None:
    """Default settings (no TLS): a tap records the whole session; afterwards every file
    the clients left on disk (accounts and the key that opens them) is read. No recorded
    Olm message opens with those accounts, so no room key and no chat can be recovered:
    one-time and fallback keys lived in memory only."""
    import vodozemac

    from wire.dgmac import TRAILER_BYTES
    from wire.e2e import OlmType, decode_olm_envelope

    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        probe.close()
    except PermissionError:
        pytest.skip("capturing on lo needs root (CAP_NET_RAW)")
    tap = Tap({server.tcp_port, *server.udp_ports})
    try:
        alice, bob, _, _ = _encrypted_room(clients, server, room_name, tmp_path)
        bob.send("the eagle lands at dawn 7319")
        alice.expect(r"^bob: the eagle lands")
        alice.send("bring the blue folder 2468")
        bob.expect(r"^alice: bring the blue folder")
        for client in (bob, alice):
            client.close_stdin()
            assert client.wait() == 0
    finally:
        tap.stop()
    room = room_name.encode()
    prekey_messages = []
    for payload in tap.udp:  # client -> relay: sizes, room, token, then the Message
        if len(payload) < 3 or payload[2:2 + payload[0]] != room:
            continue
        # joined over TLS (the default): the datagram ends with its MAC trailer
        message = payload[2 + payload[0] + payload[1]:-TRAILER_BYTES]
        if message[:1] == b"\x02":
            envelope = decode_olm_envelope(message[2 + message[1]:])
            if envelope.olm_type is OlmType.PRE_KEY:
                prekey_messages.append(envelope.ciphertext)
    assert len(prekey_messages) >= 2  # both directions' first room keys were recorded
    for payload in tap.tcp + tap.udp:
        assert b"eagle" not in payload and b"blue folder" not in payload
    accounts = []
    for who in ("alice", "bob"):
        directory = tmp_path / who / "ocm"
        key = (directory / "pickle.key").read_bytes()
        for path in directory.glob("identity-*.json"):
            accounts.append(vodozemac.Account.from_pickle(json.loads(path.read_text())["pickle"],
                                                          key))
    assert len(accounts) == 2
    opened = 0
    for ciphertext in prekey_messages:
        pre_key = vodozemac.AnyOlmMessage.from_parts(0, ciphertext).to_pre_key()
        assert pre_key is not None
        for account in accounts:
            for sender in accounts:
                try:
                    account.create_inbound_session(sender.curve25519_key, pre_key)
                    opened += 1
                except ValueError:
                    pass
    assert opened == 0


def _seen_encrypted_then_made_plain(server: Server, room_name: str, clients: list[Client],
                                    tmp_path: Path) -> None:
    """Alice and bob chat in an encrypted room and leave; the name is free again and
    mallory creates a plain room of that name."""
    alice, bob, _, _ = _encrypted_room(clients, server, room_name, tmp_path)
    for client in (bob, alice):
        client.close_stdin()
        assert client.wait() == 0
    mallory = spawn(clients, server, "--create", room_name, "--user", "mallory",
                    env=_env(tmp_path, "mallory"))
    mallory.expect_err(r"is host of room")


def test_join_e2e_refuses_a_plain_room_and_a_room_seen_encrypted_stays_so(
        server: Server, room_name: str, clients: list[Client], tmp_path: Path) -> None:
    """Downgrade: ``--join --e2e`` of a plain room exits 1 with one line; a client that
    once saw the room encrypted refuses a plain room of that name later, unless
    ``--allow-plain``."""
    _seen_encrypted_then_made_plain(server, room_name, clients, tmp_path)
    carol = spawn(clients, server, "--join", room_name, "--user", "carol", "--e2e",
                  env=_env(tmp_path, "carol"))
    assert carol.wait() == 1
    refusal = [line for line in carol.err_seen if "not end-to-end encrypted" in line]
    assert len(refusal) == 1 and len(carol.err_seen) == 1, carol.err_seen
    bob = spawn(clients, server, "--join", room_name, "--user", "bob",
                env=_env(tmp_path, "bob"))  # no flag: bob saw this room encrypted
    assert bob.wait() == 1
    assert any("not end-to-end encrypted" in line for line in bob.err_seen)
    assert not any("mallory" in line for line in bob.out_seen)
    bob = spawn(clients, server, "--join", room_name, "--user", "bob", "--allow-plain",
                env=_env(tmp_path, "bob"))
    bob.expect_err(r"bob is in room .*NOT encrypted")
    bob.close_stdin()
    assert bob.wait() == 0


def test_a_room_seen_encrypted_stays_so_under_another_name_of_the_server(
        server: Server, room_name: str, clients: list[Client], tmp_path: Path) -> None:
    """Downgrade through an alias: bob saw the room encrypted on the server reached as
    127.0.0.1; mallory then makes a plain room of that name. Reached as ``localhost`` (the
    same server: the same TLS key), bob's join without a flag must still refuse it."""
    _seen_encrypted_then_made_plain(server, room_name, clients, tmp_path)
    bob = spawn(clients, server, "--server", "localhost", "--join", room_name, "--user", "bob",
                env=_env(tmp_path, "bob"))
    assert bob.wait() == 1
    assert any("not end-to-end encrypted" in line for line in bob.err_seen), bob.err_seen
    assert not any("mallory" in line for line in bob.out_seen)


def test_two_clients_sharing_one_config_directory(server: Server, room_name: str,
                                                  clients: list[Client],
                                                  tmp_path: Path) -> None:
    """The README on one machine: alice and bob in two terminals, one ~/.config/ocm. They
    chat, and each has its own identity (different fingerprints)."""
    shared = tmp_path / "shared"
    alice = spawn(clients, server, "--create", room_name, "--user", "alice", "--e2e",
                  env={"XDG_CONFIG_HOME": str(shared)})
    fp_alice = alice.expect(rf"your key fingerprint \(alice\): {FP}$").rsplit(": ", 1)[1]
    bob = spawn(clients, server, "--join", room_name, "--user", "bob", "--e2e",
                env={"XDG_CONFIG_HOME": str(shared)})  # as the README prints it
    fp_bob = bob.expect(rf"your key fingerprint \(bob\): {FP}$").rsplit(": ", 1)[1]
    assert fp_alice != fp_bob
    bob.expect(rf"alice is now in the encryption set, key fingerprint {fp_alice}")
    alice.expect(rf"bob is now in the encryption set, key fingerprint {fp_bob}")
    bob.send("hello from the same machine")
    alice.expect(r"^bob: hello from the same machine$")
    alice.send("hi")
    bob.expect(r"^alice: hi$")
    for client in (bob, alice):
        client.close_stdin()
        assert client.wait() == 0
    assert not any("Traceback" in line for c in (alice, bob) for line in c.err_seen)


def test_one_identity_per_tls_server_whatever_name_reaches_it(server: Server, room_name: str,
                                                               clients: list[Client],
                                                               tmp_path: Path) -> None:
    """Over TLS the identity is keyed by the server's TLS key: alice reaching one server as
    127.0.0.1 and then as localhost is one identity (one fingerprint, one file, under the
    key), and the identity she had under ``host:port`` before is adopted, not stranded."""
    env = _env(tmp_path, "alice")
    store = KeyStore(Path(env["XDG_CONFIG_HOME"]) / "ocm", use_keyring=False)
    earlier = store.load_or_create_identity(server_identity(H, server.tls_port), "alice")
    shown = []
    for name, room in ((H, room_name), ("localhost", f"{room_name}-b")):
        alice = spawn(clients, server, "--server", name, "--create", room, "--user", "alice",
                      "--e2e", env=env)
        shown.append(alice.expect(rf"your key fingerprint \(alice\): {FP}$").rsplit(": ", 1)[1])
        alice.close_stdin()
        assert alice.wait() == 0
    assert shown == [fingerprint(earlier.public())] * 2
    pins = (Path(env["XDG_CONFIG_HOME"]) / "ocm" / "known_servers").read_text().split()
    tls_key = pins[pins.index(f"{H}:{server.tls_port}") + 1]
    assert store.identity_path(tls_key, "alice").exists()
    assert not store.identity_path(server_identity("localhost", server.tls_port),
                                   "alice").exists()


def test_interactive_verification_with_emoji(server: Server, room_name: str,
                                             clients: list[Client], tmp_path: Path) -> None:
    """SAS through the relay: both sides show the same emoji and numbers, and only after
    both confirm is the other marked verified."""
    alice, bob, _, _ = _encrypted_room(clients, server, room_name, tmp_path)
    bob.send("hello")  # the Olm sessions answer both ways before the verification
    alice.expect(r"^bob: hello$")
    alice.send("/verify bob sas")
    alice.expect(r"verification with bob started")
    bob.expect(r"alice asks to verify your keys")
    emoji_bob = bob.expect(r"^\*   \S")
    numbers_bob = bob.expect(r"or the numbers \d+ \d+ \d+$")
    alice.expect(r"bob accepted")
    assert alice.expect(r"^\*   \S") == emoji_bob
    assert alice.expect(r"or the numbers") == numbers_bob
    alice.send("/who")
    alice.expect(r"bob: .* · unverified$")  # nothing marked before both confirm
    alice.send("/verify bob sas match")
    alice.expect(r"waiting for bob to confirm too")
    bob.expect(r"alice confirmed")
    bob.send("/verify alice sas match")
    bob.expect(r"^\* alice is now marked verified$")
    alice.expect(r"^\* bob is now marked verified$")
    for client in (bob, alice):
        client.close_stdin()
        assert client.wait() == 0
