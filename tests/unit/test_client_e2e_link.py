"""``E2ERoomLink`` (client/e2e_link.py) against a UDP socket on 127.0.0.1 that plays the
relay and a TCP socket that plays the TCRP server's member list: what the user is shown
(the encryption set, the key-change warning, unverified marks, ``/verify`` and its
confirmation, rejected messages) and what the link sends (Olm messages, Megolm chat,
leave). The relay itself is tested with real processes in
tests/integration/test_e2e_chat.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from client import e2e_link
from client.e2e.identity import IdentityKeys, fingerprint, safety_number
from client.e2e.room import Decrypted, RoomCrypto, Send, room_binding
from client.e2e_link import E2ERoomLink, leave_datagram
from client.keystore import KeyStore, Trust, server_identity
from client.render import Kind as LineKind
from client.render import Line
from client.session import Joined, TcrpTarget
from wire.chat import Notice, encode_chat, encode_framed_notice
from wire.codes import Framing, NoticeEvent
from wire.e2e import E2EDelivery, Kind, MemberInfo, PublicKeys, decode_route, encode_delivery
from wire.tcrp import Details, Request, RequestBody, encode_members_ok

H = "127.0.0.1"
TIMEOUT_S = 10.0
ROOM = "secret"
TOKEN = b"A" + b"t" * 32
EPOCH = b"E" * 16
BOB = IdentityKeys.generate()
MALLORY = IdentityKeys.generate()


class Relay:
    """The test's relay: a UDP socket; ``deliver`` sends to the link, ``take`` reads the
    Message of the link's next datagram (keepalives skipped)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((H, 0))
        self.sock.settimeout(TIMEOUT_S)
        self.peer: tuple[str, int] | None = None

    def take(self, timeout: float = TIMEOUT_S) -> bytes:
        self.sock.settimeout(timeout)
        while True:
            data, self.peer = self.sock.recvfrom(65536)
            room_end = 2 + data[0]
            token_end = room_end + data[1]
            assert (data[2:room_end], data[room_end:token_end]) == (ROOM.encode(), TOKEN)
            if data[token_end:]:
                return data[token_end:]

    def nothing_for(self, seconds: float) -> list[bytes]:
        """Every Message the link sends within ``seconds``."""
        got = []
        try:
            while True:
                got.append(self.take(seconds))
        except TimeoutError:
            return got

    def deliver(self, data: bytes) -> None:
        assert self.peer is not None
        self.sock.sendto(data, self.peer)

    def forward(self, message: bytes, sender: str = "alice") -> None:
        """What the relay does with an addressed or chat Message."""
        route = decode_route(message)
        assert route is not None
        self.deliver(encode_delivery(sender.encode(), route.kind, message[route.body_offset:]))


class MemberList:
    """The TCRP server's Operation 3, answering ``members`` to every request."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind((H, 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.members: tuple[MemberInfo, ...] = ()
        self.asked = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(TIMEOUT_S)
                conn.recv(65536)
                conn.sendall(encode_members_ok(ROOM.encode(), self.members))
                self.asked.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        self.listener.close()


class Alice:
    """Alice's identity, engine and prekey: the room's host that bob joins."""

    def __init__(self, tcrp_port: int) -> None:
        self.identity = IdentityKeys.generate()
        published = self.identity.publish(1)
        assert published.prekeys is not None
        self.prekey = published.prekeys.one_time[0]
        self.binding = room_binding(ROOM, EPOCH)
        self.crypto = RoomCrypto(ROOM, "alice", self.identity, self.binding)

    def public(self) -> PublicKeys:
        return self.identity.public()

    def meet_bob(self, relay: Relay) -> None:
        """Take bob's Olm message (his room key), answer with alice's."""
        self.crypto.add_member("bob", BOB.public())
        self.receive(relay, relay.take())

    def receive(self, relay: Relay, message: bytes, sender: str = "bob") -> list[object]:
        route = decode_route(message)
        assert route is not None and route.kind is Kind.ENVELOPE, message[:8]
        outputs = self.crypto.receive(E2EDelivery(sender, Kind.ENVELOPE,
                                                  message[route.body_offset:]), 0.0)
        for out in outputs:
            if isinstance(out, Send):
                relay.forward(out.message)
        return list(outputs)

    def chat(self, text: bytes) -> bytes:
        return self.crypto.encrypt(text)


Scenario = Callable[[E2ERoomLink, Relay, Alice, list[Line], Callable[[str], Awaitable[Line]]],
                    Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario, pinned: IdentityKeys | None = None,
        members: MemberList | None = None) -> None:
    store = KeyStore(tmp_path)
    tcrp_port = members.port if members is not None else 9
    alice = Alice(tcrp_port)
    if pinned is not None:
        store.check(server_identity(H, tcrp_port), "alice", pinned.public())

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

        details = Details(relay.sock.getsockname()[1], False, 4000, 300.0, Framing.OCM1,
                          e2e=True, members=(MemberInfo("alice", True, alice.public(),
                                                        alice.prekey),), epoch=EPOCH)
        joined = Joined(ROOM.encode(), "bob", TOKEN, details, relay.sock.getsockname(),
                        bob_sock, TcrpTarget(H, tcrp_port))
        link = E2ERoomLink(joined, on_line, store, BOB, env={})
        await link.open()
        try:
            await scenario(link, relay, alice, lines, expect)
        finally:
            link.close()
            relay.sock.close()

    asyncio.run(main())


def test_encryption_set_chat_attacks_and_leave(tmp_path: Path) -> None:
    async def scenario(link: E2ERoomLink, relay: Relay, alice: Alice, lines: list[Line],
                       expect: Callable[[str], Awaitable[Line]]) -> None:
        await expect(f"your key fingerprint (bob): {fingerprint(BOB.public())}")
        await expect(f"alice is now in the encryption set, key fingerprint "
                     f"{fingerprint(alice.public())}")
        await asyncio.to_thread(alice.meet_bob, relay)
        hello = alice.chat(b"hello bob")
        relay.forward(hello)
        line = await expect("alice: hello bob")
        assert line.kind is LineKind.CHAT
        relay.forward(hello)  # a replay
        assert (await expect("replay")).kind is LineKind.WARNING
        flipped = bytearray(alice.chat(b"second"))
        flipped[40] ^= 1
        relay.forward(bytes(flipped))
        assert (await expect("rejected a message from alice")).kind is LineKind.WARNING
        relay.forward(alice.chat(b"as carol"), sender="carol")  # a forged sender name
        relay.forward(alice.chat(b"third"))
        await expect("alice: third")
        assert not any("as carol" in line.plain() for line in lines)
        # bob's own chat is encrypted: alice opens it, the relay never sees the text
        link.send("hi alice")
        message = await asyncio.to_thread(relay.take)
        assert message[0] == Kind.CHAT and b"hi alice" not in message
        got = alice.crypto.receive(E2EDelivery("bob", Kind.CHAT, message[1:]), 0.0)
        assert [o.text for o in got if isinstance(o, Decrypted)] == [b"hi alice"]
        # a join is announced with its key, and enters the set: bob's session rotates
        before = link.crypto.session_id
        relay.deliver(encode_framed_notice(Notice(NoticeEvent.JOINED, "carol",
                                                  keys=MALLORY.public())))
        await expect(f"carol is now in the encryption set, key fingerprint "
                     f"{fingerprint(MALLORY.public())}")
        assert link.crypto.session_id != before
        rotated = await asyncio.to_thread(relay.take)  # the new session, to alice
        assert rotated[:7] == b"\x02\x05alice"
        link.leave()
        assert await asyncio.to_thread(relay.take) == b"\x04"
        assert link.rejected >= 2

    run(tmp_path, scenario)


def test_changed_key_gets_nothing_until_confirmed_and_reads_nothing_earlier(
        tmp_path: Path) -> None:
    """A key swap: the new key is warned, held out of the encryption set (no room key),
    ``/verify`` only shows the number; after ``/verify alice confirm`` the new key gets a
    new session and cannot read what bob sent before."""
    async def scenario(link: E2ERoomLink, relay: Relay, alice: Alice, lines: list[Line],
                       expect: Callable[[str], Awaitable[Line]]) -> None:
        warning = await expect("WARNING: alice's identity key has CHANGED")
        assert warning.kind is LineKind.WARNING
        assert fingerprint(MALLORY.public()) in warning.text
        server = link.server_key
        assert link.store.trust(server, "alice") is Trust.CHANGED
        assert "alice" not in link.crypto.members and "alice" in link.crypto.held
        link.send("before the check")
        sent = await asyncio.to_thread(relay.nothing_for, 0.5)
        assert [m[0] for m in sent] == [Kind.CHAT]  # no room key went to alice
        early = sent[0]
        answer = await link.command("/verify alice")
        assert answer is not None
        number = safety_number("bob", BOB.public(), "alice", alice.public())
        assert f"safety number with alice: {number}" in answer[0].plain()
        assert "/verify alice confirm" in answer[1].plain()
        assert link.store.trust(server, "alice") is Trust.CHANGED  # asked, not marked
        assert "alice" not in link.crypto.members
        answer = await link.command("/verify alice confirm")
        assert answer is not None and "verified" in answer[-1].plain()
        assert link.store.trust(server, "alice") is Trust.VERIFIED
        await expect("alice is now in the encryption set")
        key = await asyncio.to_thread(relay.take)  # now bob's room key goes to alice
        alice.crypto.add_member("bob", BOB.public())
        await asyncio.to_thread(alice.receive, relay, key)
        got = alice.crypto.receive(E2EDelivery("bob", Kind.CHAT, early[1:]), 0.0)
        assert not [o for o in got if isinstance(o, Decrypted)]  # the past stays closed
        link.send("after the check")
        message = await asyncio.to_thread(relay.take)
        got = alice.crypto.receive(E2EDelivery("bob", Kind.CHAT, message[1:]), 0.0)
        assert [o.text for o in got if isinstance(o, Decrypted)] == [b"after the check"]
        relay.forward(alice.chat(b"verified now"))
        await expect("alice: verified now")
        unknown = await link.command("/verify nobody")
        assert unknown is not None and unknown[0].kind is LineKind.WARNING

    run(tmp_path, scenario, pinned=MALLORY)


def test_ghost_is_announced_and_who_shows_the_encryption_set(tmp_path: Path) -> None:
    """A member only the server's list knows (no joined notice): announced like a join
    with its fingerprint, shown by /who; one the list lacks is flagged."""
    async def scenario(link: E2ERoomLink, relay: Relay, alice: Alice, lines: list[Line],
                       expect: Callable[[str], Awaitable[Line]]) -> None:
        ghost = IdentityKeys.generate().public()
        server_list = (MemberInfo("alice", True, alice.public()),
                       MemberInfo("bob", False, BOB.public()),
                       MemberInfo("ghost", False, ghost))
        who = link.who_lines(server_list)
        await expect(f"ghost is now in the encryption set, key fingerprint "
                     f"{fingerprint(ghost)}")
        text = "\n".join(line.plain() for line in who)
        assert "3 in the encryption set" in text
        assert f"ghost: {fingerprint(ghost)}" in text
        assert "ghost" in link.crypto.members
        # the server drops alice from its list: she leaves the set, flagged until then
        link.crypto.members.pop("ghost")
        who = link.who_lines(server_list[1:])
        await expect("alice left the encryption set")
        assert "alice" not in link.crypto.members

    run(tmp_path, scenario)


def test_a_lost_left_notice_still_rotates_within_the_poll(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The ``left`` notice never comes: the member list fetched on the timer removes
    alice and bob's session rotates; a new "alice" with another key gets nothing."""
    monkeypatch.setattr(e2e_link, "MEMBERS_POLL_S", 0.2)
    members = MemberList()

    async def scenario(link: E2ERoomLink, relay: Relay, alice: Alice, lines: list[Line],
                       expect: Callable[[str], Awaitable[Line]]) -> None:
        members.members = (MemberInfo("alice", True, alice.public()),
                           MemberInfo("bob", False, BOB.public()))
        await asyncio.to_thread(relay.take)  # bob's room key to alice: the relay knows him
        await asyncio.to_thread(members.asked.wait, TIMEOUT_S)
        assert "alice" in link.crypto.members
        before = link.crypto.session_id
        members.members = (MemberInfo("bob", False, BOB.public()),)
        await expect("alice left the encryption set")
        assert link.crypto.session_id != before and "alice" not in link.crypto.members
        # the name is taken again by another key: warned and held, no room key
        relay.deliver(encode_framed_notice(Notice(NoticeEvent.JOINED, "alice",
                                                  keys=MALLORY.public())))
        await expect("WARNING: alice's identity key has CHANGED")
        assert "alice" in link.crypto.held

    try:
        run(tmp_path, scenario, members=members)
    finally:
        members.close()


def test_create_e2e_on_a_server_without_encrypted_rooms_fails_and_leaves() -> None:
    """A server that ignores "e2e" answers a plain room: the client must not chat in the
    clear; it sends /exit and fails with one line."""
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
        with pytest.raises(JoinFailed, match="is not end-to-end encrypted; refused"):
            join_room(TcrpTarget(H, listener.getsockname()[1]),
                      Request.of(Operation.CREATE, "r",
                                 RequestBody("alice", keys=BOB.public(), e2e=True)))
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
