"""Encrypted rooms through the real relay (docs/e2e.md §3, §6): routing by kind, addressed
delivery, opaque payloads, leave, the ``joined`` keys; and the crypto engine end to end —
attacks, rotation on leave and on eviction, a newcomer, and a lossy reordering network.

Members are ``tests/integration/e2e_member.py``: real TCRP and UDP sockets driven by the
sans-IO engine; ``ocm-chat`` processes are in test_e2e_chat.py.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from client.e2e.room import RejectReason
from tests.integration.e2e_member import Member, new_member, pump, settle
from tests.integration.harness import Server, start_server
from tests.integration.peer import join
from wire.chat import Notice, encode_chat, framed_prefix
from wire.codes import Framing, NoticeEvent, Operation, Reason
from wire.e2e import Kind, decode_group_chat, encode_message

H = "127.0.0.1"


def _room(server: Server, room: str, *users: str) -> list[Member]:
    """The first user creates an encrypted room, the others join; every member then
    holds every other member's chain."""
    members = [new_member(H, server.tcp_port, Operation.CREATE, room, users[0])]
    for user in users[1:]:
        members.append(new_member(H, server.tcp_port, Operation.JOIN, room, user))
    want = len(users) - 1
    pump(members, lambda: all(len(m.crypto.members) == want and all(
        m.holds_current_session_of(o) for o in members if o is not m) for m in members),
        what="every current session installed")
    return members


def _close(members: list[Member]) -> None:
    for member in members:
        member.peer.close()


def test_chat_both_ways_and_joined_carries_keys(server: Server, room_name: str) -> None:
    alice, bob = members = _room(server, room_name, "alice", "bob")
    try:
        joined = next(n for n in alice.notices if n.event is NoticeEvent.JOINED)
        assert (joined.user, joined.keys) == ("bob", bob.identity.public())
        details = bob.peer.details  # type: ignore[attr-defined]
        assert details.members[0].keys == alice.identity.public()
        assert details.members[0].prekey is not None  # claimed from alice for bob
        assert len(details.epoch) == 16 and details.epoch == alice.peer.details.epoch  # type: ignore[attr-defined]
        alice.say("hello bob")
        bob.say("hello alice")
        pump(members, lambda: alice.texts() == ["hello alice"] and bob.texts() == ["hello bob"])
        assert not alice.rejected and not bob.rejected
    finally:
        _close(members)


def test_routing_opaque_addressed_and_leave(server: Server, room_name: str) -> None:
    alice, bob, carol = members = _room(server, room_name, "alice", "bob", "carol")
    try:
        settle(members)
        for m in members:
            m.raw.clear()
        # chat: opaque bytes (not UTF-8) to everyone else, framed with the sender's name
        alice.send_message(b"\x01\xff\xfe\x00binary")
        for other in (bob, carol):
            pump([other], lambda o=other: bool(o.raw))  # type: ignore[misc]
            assert other.raw.pop() == framed_prefix("alice") + b"\x01\xff\xfe\x00binary"
        # addressed: to bob only, the recipient field removed
        alice.send_message(encode_message(Kind.KEY_REQUEST, b"\x07" * 9, "bob"))
        pump([bob], lambda: bool(bob.raw))
        assert bob.raw.pop() == framed_prefix("alice") + b"\x03" + b"\x07" * 9
        # dropped: unknown recipient, oneself, unknown kind, the text "/exit", bad leave
        for message in (encode_message(Kind.ENVELOPE, b"x", "nobody"),
                        encode_message(Kind.ENVELOPE, b"x", "alice"),
                        b"\x09abc", b"/exit", b"\x04\x00", b"\x02\x00"):
            alice.send_message(message)
        # the marker: bob gets this chat and nothing of the drops before it
        alice.send_message(b"\x01marker")
        pump([bob], lambda: bool(bob.raw))
        pump([carol], lambda: bool(carol.raw))
        assert bob.raw == [framed_prefix("alice") + b"\x01marker"]
        assert carol.raw == [framed_prefix("alice") + b"\x01marker"]
        # leave (kind 04) is /exit: the others see "left" with reason exit, and rotate
        bob.leave()
        pump([alice, carol], lambda: all(any(n.event is NoticeEvent.LEFT and n.user == "bob"
                                             and n.reason is Reason.EXIT for n in m.notices)
                                         for m in (alice, carol)))
    finally:
        _close(members)


def test_a_plain_join_or_a_reference_client_cannot_enter(server: Server, room_name: str
                                                         ) -> None:
    from tests.integration.peer import JoinRefused

    members = _room(server, room_name, "alice")
    try:
        with pytest.raises(JoinRefused) as refused:
            join(H, server.tcp_port, Operation.JOIN, room_name, "eve", framing=Framing.OCM1)
        assert "needs the member's keys" in refused.value.response.error
    finally:
        _close(members)


def test_attacks_through_the_relay(server: Server, room_name: str) -> None:
    """A replayed datagram, a flipped bit, a message moved to another room, a forged sender
    and a wrong signature are refused by the receiving engine; the good one before and
    after is read."""
    alice, bob, mallory = members = _room(server, room_name, "alice", "bob", "mallory")
    # room 2: the same alice (same identity keys) with another bob
    other = [new_member(H, server.tcp_port, Operation.CREATE, room_name + "-2", "alice",
                        identity=alice.identity),
             new_member(H, server.tcp_port, Operation.JOIN, room_name + "-2", "bob")]
    pump(other, lambda: all(m.installed for m in other), what="room 2 sessions")
    try:
        sealed = alice.say("genuine")
        pump([bob], lambda: bob.texts() == ["genuine"])
        alice.send_message(sealed)  # replay (the relay accepts: the token is valid)
        flipped = bytearray(alice.crypto.encrypt(b"tampered"))
        flipped[40] ^= 0x01
        alice.send_message(bytes(flipped))
        mallory.send_message(sealed)  # forged sender: relayed as mallory's
        bad_sig = bytearray(alice.crypto.encrypt(b"bad signature"))
        bad_sig[-1] ^= 0x80
        alice.send_message(bytes(bad_sig))
        other[0].send_message(sealed)  # alice's message of room 1, sent into room 2
        alice.say("still fine")
        pump([bob, mallory], lambda: bob.texts() == ["genuine", "still fine"], what="bob")
        pump([bob], lambda: len(bob.rejected) >= 3, what="three rejections")
        settle(members + other)
        reasons = [(r.sender, r.reason) for r in bob.rejected]
        assert ("alice", RejectReason.REPLAY) in reasons
        assert reasons.count(("alice", RejectReason.DECRYPT_FAILED)) == 2, reasons
        # alice's session is not mallory's, nor room 2's alice's: nothing opens there
        assert [d.sender for d in bob.decrypted] == ["alice", "alice"]
        assert not other[1].decrypted
    finally:
        _close(members + other)


def test_rotation_on_leave_and_a_newcomer_cannot_read_the_past(server: Server,
                                                               room_name: str) -> None:
    alice, bob, carol = members = _room(server, room_name, "alice", "bob", "carol")
    dave: Member | None = None
    try:
        alice.say("before")
        pump([bob, carol], lambda: bob.texts() == ["before"] and carol.texts() == ["before"])
        old_session = alice.crypto.session_id
        carol_saved = carol.crypto  # the departed member keeps its state
        carol.leave()
        pump([alice, bob], lambda: alice.crypto.session_id != old_session
             and bob.holds_current_session_of(alice),
             what="alice rotated and bob got her new session")
        after = alice.say("after carol")
        pump([bob], lambda: bob.texts()[-1:] == ["after carol"])
        assert decode_group_chat(after[1:]).session_id != old_session
        # carol's saved state cannot open the new chain
        delivery = bob.deliveries()[-1]
        assert delivery.sender == "alice"
        assert not [o for o in carol_saved.receive(delivery, time.monotonic())
                    if type(o).__name__ == "Decrypted"]
        # a newcomer gets alice's chain at its current position only
        dave = new_member(H, server.tcp_port, Operation.JOIN, room_name, "dave")
        pump([alice, bob, dave], lambda: dave.holds_current_session_of(alice)
             and dave.holds_current_session_of(bob), what="dave's sessions")
        alice.say("welcome dave")
        pump([dave, bob], lambda: dave.texts() == ["welcome dave"])
        dave.run(dave.crypto.receive(delivery, time.monotonic()))  # "after carol"
        assert dave.texts() == ["welcome dave"]
    finally:
        _close(members + ([dave] if dave else []))


@pytest.fixture(scope="module")
def quick_server() -> Iterator[Server]:
    """Inactivity timeout 2 s: eviction within a test."""
    with start_server("--inactivity-timeout", "2", workers=1) as srv:
        yield srv
        srv.stop()


def test_rotation_on_eviction(quick_server: Server, room_name: str) -> None:
    alice, bob, carol = members = _room(quick_server, room_name, "alice", "bob", "carol")
    try:
        old = alice.crypto.session_id
        deadline = time.monotonic() + 15
        evicted = False
        while not evicted:  # alice and bob keep alive; carol falls silent
            assert time.monotonic() < deadline, "carol was not evicted"
            for m in (alice, bob):
                m.send_message(b"")
                m.poll(0.2)
            evicted = any(n.event is NoticeEvent.LEFT and n.user == "carol"
                          and n.reason is Reason.INACTIVE for n in alice.notices)
        assert alice.crypto.session_id != old and "carol" not in alice.crypto.members
        alice.say("carol is gone")
        pump([alice, bob], lambda: bob.texts()[-1:] == ["carol is gone"])
    finally:
        _close(members)


class LossyProxy:
    """A UDP proxy between one member and the relay that drops 20 % of the datagrams in
    each direction and holds some back to deliver them out of order (seeded)."""

    def __init__(self, relay: tuple[str, int], seed: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((H, 0))
        self.sock.settimeout(0.05)
        self.addr = self.sock.getsockname()
        self.relay = relay
        self.client: tuple[str, int] | None = None
        self.random = random.Random(seed)
        self.forwarded_to_client: list[bytes] = []
        self.dropped = self.reordered = 0
        self._held: list[tuple[bytes, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                self._flush()
                continue
            if addr == self.relay:
                target = self.client
            else:
                self.client, target = addr, self.relay
            if target is None:
                continue
            roll = self.random.random()
            if roll < 0.2 and data[:1] != b"\x00" and len(data) > 40:  # keep notices, keepalives
                self.dropped += 1
            elif roll < 0.4:
                self.reordered += 1
                self._held.append((data, target))  # overtaken by the next ones
            else:
                self._send(data, target)
                if len(self._held) > 3:
                    self._flush()

    def _send(self, data: bytes, target: tuple[str, int]) -> None:
        if target != self.relay:
            self.forwarded_to_client.append(data)
        self.sock.sendto(data, target)

    def _flush(self) -> None:
        held, self._held = self._held, []
        self.random.shuffle(held)
        for data, target in held:
            self._send(data, target)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_lossy_reordering_network_decrypts_everything_that_arrives(server: Server,
                                                                   room_name: str) -> None:
    alice = new_member(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    proxy = LossyProxy((H, alice.peer.udp_port), seed=7)
    bob = new_member(H, server.tcp_port, Operation.JOIN, room_name, "bob",
                     send_to=proxy.addr, bind="none")
    members = [alice, bob]
    try:
        bob.send_message(b"")  # bob's address is now the proxy's
        pump(members, lambda: "bob" in alice.crypto.members, timeout=30,
             what="bob's joined notice")  # notices pass; envelopes may be lost
        sent = [f"message {i}" for i in range(40)]
        for text in sent:  # at the relay's default chat rate (10/s)
            alice.say(text)
            until = time.monotonic() + 0.1
            while time.monotonic() < until:
                alice.poll(0.01)
                bob.poll(0.01)
        settle(members, quiet=1.5, timeout=30)
        arrived = [d for d in proxy.forwarded_to_client
                   if d[:1] != b"\x00" and d[1 + d[0]] == Kind.CHAT]
        assert proxy.dropped > 0 and proxy.reordered > 0
        assert 0 < len(arrived) < len(sent)
        got = bob.texts()
        assert len(got) == len(arrived), (len(got), len(arrived), bob.rejected)
        assert set(got) <= set(sent) and len(set(got)) == len(got)
        assert not [r for r in bob.rejected if r.reason is not RejectReason.UNKNOWN_SENDER]
    finally:
        proxy.close()
        _close(members)


def test_notice_type_is_framed(server: Server, room_name: str) -> None:
    """Every delivery in an encrypted room is framed: a ``joined`` notice decodes with
    its keys; plain rooms keep their notices unchanged (no keys)."""
    alice, bob = members = _room(server, room_name, "alice", "bob")
    try:
        notice = next(n for n in alice.notices if n.event is NoticeEvent.JOINED)
        assert isinstance(notice, Notice) and notice.keys is not None
        plain_host = join(H, server.tcp_port, Operation.CREATE, room_name + "-p", "alice",
                          framing=Framing.OCM1, keys=alice.identity.publish())
        plain_guest = join(H, server.tcp_port, Operation.JOIN, room_name + "-p", "bob",
                           framing=Framing.OCM1, keys=bob.identity.publish())
        seen = plain_host.recv_framed()
        assert isinstance(seen, Notice) and seen.keys is None
        plain_guest.send("héllo")
        assert plain_host.recv() == framed_prefix("bob") + "héllo".encode()
        plain_guest.sock.sendto(encode_chat(plain_guest.room, plain_guest.token, b"\xff"),
                                (H, plain_guest.udp_port))  # plain rooms still check UTF-8
        plain_guest.send("after")
        assert plain_host.recv() == framed_prefix("bob") + b"after"
        plain_host.close()
        plain_guest.close()
    finally:
        _close(members)
