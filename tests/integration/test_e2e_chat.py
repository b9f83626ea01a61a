"""Encrypted rooms with real ``ocm-chat`` processes in script mode (docs/e2e.md §7): chat
both ways, fingerprints, ``/who`` and ``/verify``, key files, the warning on a changed
key, and a wire tap (AF_PACKET on ``lo``) that sees no text, password or private key.

Each client keeps its keys in its own ``$XDG_CONFIG_HOME`` under ``tmp_path``.
"""

from __future__ import annotations

import base64
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
    alice.expect_err(r"alice is host of encrypted room")
    fp_alice = alice.expect(rf"is end-to-end encrypted; your key fingerprint \(alice\): {FP}$")
    fp_alice = fp_alice.rsplit(": ", 1)[1]
    bob = spawn(clients, server, "--join", room, "--user", "bob", *extra,
                env=_env(tmp_path, "bob"))
    bob.expect_err(r"bob is in encrypted room")
    bob.expect(r"is end-to-end encrypted")
    bob.expect(rf"^\* alice's key fingerprint: {fp_alice}$")
    alice.expect(r"^\* bob joined the room$")
    fp_bob = alice.expect(rf"^\* bob's key fingerprint: {FP}$").rsplit(": ", 1)[1]
    return alice, bob, fp_alice, fp_bob


def test_encrypted_chat_who_verify_and_key_files(server: Server, room_name: str,
                                                 clients: list[Client], tmp_path: Path) -> None:
    alice, bob, fp_alice, fp_bob = _encrypted_room(clients, server, room_name, tmp_path)
    bob.send("hello alice")
    alice.expect(r"^bob: hello alice$")
    alice.send("hi bob, ça va? 🙂")
    bob.expect(r"^alice: hi bob, ça va\? 🙂$")
    bob.send("/who")
    bob.expect(r"^\* 2 in the room \(end-to-end encrypted\):$")
    bob.expect(rf"^\*   alice \(host\): {fp_alice} · unverified$")
    bob.expect(rf"^\*   bob \(you\): {fp_bob}$")
    bob.send("/verify alice")
    number_bob = bob.expect(rf"^\* safety number with alice: {SAFETY}$").rsplit(": ", 1)[1]
    alice.send("/verify bob")
    number_alice = alice.expect(rf"^\* safety number with bob: {SAFETY}$").rsplit(": ", 1)[1]
    assert number_alice == number_bob
    bob.send("/who")
    bob.expect(rf"^\*   alice \(host\): {fp_alice} · verified$")
    # the key files: private key 0600 in a 0700 directory, the pin marked verified
    for who in ("alice", "bob"):
        directory = tmp_path / who / "ocm"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE((directory / "identity.json").stat().st_mode) == 0o600
    pins = json.loads((tmp_path / "bob" / "ocm" / "pins.json").read_text())
    assert pins["servers"][f"{H}:{server.tls_port}"]["alice"]["trust"] == "verified"
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
    impostor.expect(r"alice's key fingerprint")
    warning = alice.expect(r"WARNING: bob's identity key has CHANGED")
    assert fp_bob in warning and "/verify bob" in warning
    impostor.send("it is really me")
    alice.expect(r"^bob: \[unverified key\] it is really me$")
    alice.send("/verify bob")
    alice.expect(rf"^\* safety number with bob: {SAFETY}$")
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
        bob.expect(r"^\* 2 in the room")
        bob.close_stdin()
        assert bob.wait() == 0
        alice.expect(r"bob left the room")
        alice.close_stdin()
        assert alice.wait() == 0
    finally:
        tap.stop()
    secrets: list[bytes] = [t.encode() for t in texts] + [password.encode()]
    for who in ("alice", "bob"):
        identity = json.loads((tmp_path / who / "ocm" / "identity.json").read_text())
        for name in ("x25519", "ed25519"):
            raw = base64.b64decode(identity[name])
            secrets += [raw, identity[name].encode(), raw[:16], raw[16:]]
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
        alice.expect(r"1 in the room \(end-to-end encrypted\):")
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
