"""``E2ERoomLink`` (client/e2e_link.py) against a UDP socket on 127.0.0.1 that plays the
relay: what the user is shown (fingerprints, the key-change warning, unverified marks,
``/verify``, rejected messages) and what the link sends (envelopes, sealed chat, leave).
The relay itself is tested with real processes in tests/integration/test_e2e_chat.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from client.e2e.identity import IdentityKeys, fingerprint, safety_number
from client.e2e.room import RoomCrypto, Send
from client.e2e_link import UNVERIFIED_MARK, E2ERoomLink, leave_datagram
from client.keystore import KeyStore, Trust
from client.render import Kind as LineKind
from client.render import Line
from client.session import Joined, TcrpTarget
from wire.chat import Notice, encode_chat, encode_framed_notice
from wire.codes import Framing, NoticeEvent
from wire.e2e import E2EDelivery, Kind, MemberInfo, decode_route, encode_delivery
from wire.tcrp import Details, Request, RequestBody

H = "127.0.0.1"
TIMEOUT_S = 10.0
ROOM = "secret"
TOKEN = b"A" + b"t" * 32
ALICE = IdentityKeys.from_private_bytes(b"\x11" * 32, b"\x22" * 32)
BOB = IdentityKeys.from_private_bytes(b"\x33" * 32, b"\x44" * 32)
MALLORY = IdentityKeys.from_private_bytes(b"\x55" * 32, b"\x66" * 32)


class Relay:
    """The test's relay: a UDP socket; ``deliver`` sends to the link, ``take`` reads the
    Message of the link's next datagram (keepalives skipped)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((H, 0))
        self.sock.settimeout(TIMEOUT_S)
        self.peer: tuple[str, int] | None = None

    def take(self) -> bytes:
        while True:
            data, self.peer = self.sock.recvfrom(65536)
            room_end = 2 + data[0]
            token_end = room_end + data[1]
            assert (data[2:room_end], data[room_end:token_end]) == (ROOM.encode(), TOKEN)
            if data[token_end:]:
                return data[token_end:]

    def deliver(self, data: bytes) -> None:
        assert self.peer is not None
        self.sock.sendto(data, self.peer)

    def forward(self, message: bytes, sender: str = "alice") -> None:
        """What the relay does with an addressed or chat Message (docs/e2e.md §3.2)."""
        route = decode_route(message)
        assert route is not None
        self.deliver(encode_delivery(sender.encode(), route.kind, message[route.body_offset:]))


def _joined(relay: Relay, bob_sock: socket.socket) -> Joined:
    details = Details(relay.sock.getsockname()[1], False, 4000, 300.0, Framing.OCM1, e2e=True,
                      members=(MemberInfo("alice", True, ALICE.public()),))
    return Joined(ROOM.encode(), "bob", TOKEN, details, relay.sock.getsockname(), bob_sock,
                  TcrpTarget(H, 9))


def run(tmp_path: Path, scenario: Callable[[E2ERoomLink, Relay, list[Line],
                                            Callable[[str], Awaitable[Line]]], Awaitable[None]],
        pinned: IdentityKeys | None = None) -> None:
    store = KeyStore(tmp_path)
    if pinned is not None:
        store.check(f"{H}:9", "alice", pinned.public())

    async def main() -> None:
        relay = Relay()
        bob_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        bob_sock.bind((H, 0))
        lines: list[Line] = []
        changed = asyncio.Event()

        def on_line(line: Line) -> None:
            lines.append(line)
            changed.set()

        async def expect(text: str) -> Line:
            async def wait() -> Line:
                while True:
                    for line in lines:
                        if text in line.plain():
                            lines.remove(line)
                            return line
                    changed.clear()
                    await changed.wait()
            return await asyncio.wait_for(wait(), TIMEOUT_S)

        link = E2ERoomLink(_joined(relay, bob_sock), on_line, store, BOB, env={})
        await link.open()
        try:
            await scenario(link, relay, lines, expect)
        finally:
            link.close()
            relay.sock.close()

    asyncio.run(main())


def _alice_to_bob(relay: Relay) -> RoomCrypto:
    """Alice's engine, which got bob's envelope and sent hers."""
    alice = RoomCrypto(ROOM, "alice", ALICE, lambda n: b"\x07" * n)
    envelope = relay.take()
    assert envelope[0] == Kind.ENVELOPE
    route = decode_route(envelope)
    assert route is not None
    alice.add_member("bob", BOB.public())  # gives us her envelope (below)
    alice.receive(E2EDelivery("bob", Kind.ENVELOPE, envelope[route.body_offset:]), 0.0)
    (out,) = alice.rotate()  # a fresh envelope to bob at position 0
    assert isinstance(out, Send)
    relay.forward(out.message)
    return alice


def test_fingerprints_chat_attacks_and_leave(tmp_path: Path) -> None:
    async def scenario(link: E2ERoomLink, relay: Relay, lines: list[Line],
                       expect: Callable[[str], Awaitable[Line]]) -> None:
        await expect(f"your key fingerprint (bob): {fingerprint(BOB.public())}")
        await expect(f"alice's key fingerprint: {fingerprint(ALICE.public())}")
        alice = await asyncio.to_thread(_alice_to_bob, relay)
        hello = alice.seal(b"hello bob")
        relay.forward(hello)
        line = await expect("alice: hello bob")
        assert line.kind is LineKind.CHAT
        relay.forward(hello)  # a replay
        assert (await expect("replay")).kind is LineKind.WARNING
        flipped = bytearray(alice.seal(b"second"))
        flipped[20] ^= 1
        relay.forward(bytes(flipped))
        assert (await expect("rejected a message from alice")).kind is LineKind.WARNING
        relay.forward(alice.seal(b"as carol"), sender="carol")  # a forged sender name
        relay.forward(alice.seal(b"third"))
        await expect("alice: third")
        assert not any("as carol" in line.plain() for line in lines)
        # bob's own chat is sealed: alice opens it, the relay never sees the text
        link.send("hi alice")
        message = await asyncio.to_thread(relay.take)
        assert message[0] == Kind.CHAT and b"hi alice" not in message
        # a join announces keys: pinned and shown
        relay.deliver(encode_framed_notice(Notice(NoticeEvent.JOINED, "carol",
                                                  keys=MALLORY.public())))
        await expect(f"carol's key fingerprint: {fingerprint(MALLORY.public())}")
        envelope = await asyncio.to_thread(relay.take)  # bob sends carol his chain
        assert decode_route(envelope) is not None and envelope[:7] == b"\x02\x05carol"
        link.leave()
        assert await asyncio.to_thread(relay.take) == b"\x04"
        assert link.rejected >= 2

    run(tmp_path, scenario)


def test_changed_key_warns_marks_and_verify_clears(tmp_path: Path) -> None:
    async def scenario(link: E2ERoomLink, relay: Relay, lines: list[Line],
                       expect: Callable[[str], Awaitable[Line]]) -> None:
        warning = await expect("WARNING: alice's identity key has CHANGED")
        assert warning.kind is LineKind.WARNING
        assert fingerprint(MALLORY.public()) in warning.text
        assert link.store.trust(f"{H}:9", "alice") is Trust.CHANGED
        alice = await asyncio.to_thread(_alice_to_bob, relay)
        relay.forward(alice.seal(b"trust me"))
        await expect(f"alice: {UNVERIFIED_MARK}trust me")
        answer = await link.command("/verify alice")
        assert answer is not None
        number = safety_number("bob", BOB.public(), "alice", ALICE.public())
        assert f"safety number with alice: {number}" in answer[0].plain()
        assert link.store.trust(f"{H}:9", "alice") is Trust.VERIFIED
        relay.forward(alice.seal(b"verified now"))
        await expect("alice: verified now")
        unknown = await link.command("/verify nobody")
        assert unknown is not None and unknown[0].kind is LineKind.WARNING

    run(tmp_path, scenario, pinned=MALLORY)


def test_create_e2e_on_a_server_without_encrypted_rooms_fails_and_leaves() -> None:
    """A server that ignores "e2e" answers a plain room: the client must not chat in the
    clear; it sends /exit and fails with one line."""
    import threading

    import pytest

    from client.session import JoinFailed, join_room
    from wire.codes import Operation
    from wire.tcrp import encode_complete, encode_ok

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((H, 0))
    udp.settimeout(TIMEOUT_S)
    listener = socket.socket()
    listener.bind((H, 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT_S)
    details = Details(udp.getsockname()[1], True, 4000, 300.0, Framing.OCM1)

    def old_server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT_S)
            conn.recv(65536)
            conn.sendall(encode_ok(1, b"r", details) + encode_complete(1, b"r", TOKEN))
            conn.recv(16)

    thread = threading.Thread(target=old_server, daemon=True)
    thread.start()
    try:
        with pytest.raises(JoinFailed, match="plain room, not an encrypted one"):
            join_room(TcrpTarget(H, listener.getsockname()[1]),
                Request.of(Operation.CREATE, "r",
                    RequestBody("alice", keys=ALICE.public(), e2e=True)))
        data = udp.recv(65536)
        assert data == bytes((1, len(TOKEN))) + b"r" + TOKEN + b"/exit"
    finally:
        thread.join(TIMEOUT_S)
        listener.close()
        udp.close()


def test_leave_datagram_is_kind_04_in_an_encrypted_room_and_exit_in_a_plain_one() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        e2e = Joined(ROOM.encode(), "bob", TOKEN, Details(9, False, 4000, 300.0,
                                                          Framing.OCM1, e2e=True),
                     (H, 9), sock)
        plain = Joined(ROOM.encode(), "bob", TOKEN, Details(9, False, 4000, 300.0,
                                                            Framing.OCM1), (H, 9), sock)
        prefix = encode_chat(ROOM.encode(), TOKEN, b"")
        assert leave_datagram(e2e) == prefix + b"\x04"
        assert leave_datagram(plain) == prefix + b"/exit"
