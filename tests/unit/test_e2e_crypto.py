"""The encrypted-room crypto engine (client/e2e, docs/e2e.md §4, §5), without sockets.

Hex vectors (fixed keys, the same as in docs/e2e.md §7), every attack of the threat model,
a lossy and reordering network (seeded), rotation on departure shown with the departed
member's own saved state, and a newcomer that cannot read the past.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Iterable

import pytest

from client.e2e.chains import (
    MAX_SKIP,
    MAX_SKIPPED_KEYS,
    ChainExhausted,
    InboundChain,
    OutboundChain,
    Replay,
    TooFarAhead,
    step,
)
from client.e2e.identity import IdentityKeys, fingerprint, safety_number, verify
from client.e2e.room import (
    KEY_REQUEST_INTERVAL_S,
    MAX_PENDING_PER_SENDER,
    Decrypted,
    KeyInstalled,
    Output,
    Rejected,
    RejectReason,
    RoomCrypto,
    Send,
)
from wire.chat import Notice
from wire.codes import NoticeEvent, Reason
from wire.e2e import (
    E2EDelivery,
    Kind,
    MemberInfo,
    SealedChat,
    SenderKeyShare,
    decode_delivery,
    decode_route,
    decode_sealed_chat,
    encode_delivery,
    encode_message,
    encode_sealed_chat,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


CK0 = bytes(range(32))
ALICE = IdentityKeys.from_private_bytes(b"\x11" * 32, b"\x22" * 32)
BOB = IdentityKeys.from_private_bytes(b"\x33" * 32, b"\x44" * 32)


def fixed_rng(*values: bytes):  # type: ignore[no-untyped-def]
    queue = list(values)
    return lambda n: queue.pop(0)


def seeded_rng(seed: str):  # type: ignore[no-untyped-def]
    state = [0]

    def rng(n: int) -> bytes:
        state[0] += 1
        return hashlib.sha256(f"{seed}/{state[0]}".encode()).digest()[:n]

    return rng


# --- hex vectors (docs/e2e.md §7) ------------------------------------------------------------
def test_chain_step_vector() -> None:
    next_key, message_key = step(CK0)
    assert next_key == h("e4db1e99f8160649f070b6091ad022ccd1ec7aeca471beb765fdbf700217918a")
    assert message_key.key == h(
        "9d39c580d835984c3e89273c383c023d6d58cf8f3dc2338c1ac2132095f360ac"
    )
    assert message_key.nonce == h("22210cac1f0feb7a514aa24a")


def test_identity_vectors() -> None:
    a, b = ALICE.public(), BOB.public()
    assert a.x25519 == h("7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13")
    assert a.ed25519 == h("a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0")
    assert b.x25519 == h("7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14")
    assert b.ed25519 == h("d759793bbc13a2819a827c76adb6fba8a49aee007f49f2d0992d99b825ad2c48")
    assert fingerprint(a) == "2656 e820 c9f5 e211 0aa4 27ba 51bd af0b"
    number = "16708 69647 74602 01454 45174 43418 77161 62743 69029 79269 22491 33483"
    assert safety_number("alice", a, "bob", b) == number
    assert safety_number("bob", b, "alice", a) == number  # both sides see the same
    assert safety_number("alice", a, "bob", a) != number
    assert IdentityKeys.from_private_bytes(*ALICE.private_bytes()).public() == a
    with pytest.raises(ValueError):
        IdentityKeys.from_private_bytes(b"\x11" * 31, b"\x22" * 32)


ENVELOPE_VECTOR = h(
    "0203626f6201384e8998631942b6265702bd41d60079d1008477f4f47abf1e842c4802f23f0ee57767cbf25b"
    "2bbe3ce6da05ba65b66192fcef729f27cc88c80b284614b5c581192d35f31fdb35c98bad0cc5d79b907cf449"
    "96ddf1eea796de3b9933dbd60996b305068389248229d804127079f58356c4a4f83f919eb5397bfd2f81c3b7"
    "e91d672485be80153056eefe086ff942214025e8758b908c3604"
)
CHAT_VECTOR = h(
    "01010a0b0c0d0000000090623f7763a30a67a67c883fc048e48c862a8d450ece2b766d8f153ed404d2d1f252"
    "9ce20206704bb7faf66c7832518f4f5c1118238ec18cb31c0cb7466d2936901ce91d3790d02a3599b1091c75"
    "0a60bc8fbbd40e"
)


def test_seal_vector() -> None:
    """Alice's chain 0a0b0c0d with chain key 00..1f seals "hello" in room "room"."""
    alice = RoomCrypto("room", "alice", ALICE, fixed_rng(h("0a0b0c0d"), CK0))
    assert alice.seal(b"hello") == CHAT_VECTOR


def test_open_vectors() -> None:
    """Bob opens the envelope vector (HPKE output is random, so only its opening is a
    vector), then the chat vector."""
    bob = RoomCrypto("room", "bob", BOB, seeded_rng("bob"))
    bob.start([MemberInfo("alice", True, ALICE.public())])
    route = decode_route(ENVELOPE_VECTOR)
    assert route is not None and route.recipient == b"bob"
    out = bob.receive(E2EDelivery("alice", Kind.ENVELOPE, ENVELOPE_VECTOR[5:]), 0.0)
    assert out == [KeyInstalled("alice", 0x0A0B0C0D, 0)]
    out = bob.receive(E2EDelivery("alice", Kind.CHAT, CHAT_VECTOR[1:]), 0.0)
    assert out == [Decrypted("alice", b"hello", 0x0A0B0C0D, 0)]


# --- a tiny in-memory relay ------------------------------------------------------------------
class Net:
    """Routes ``Send`` outputs as the relay would (docs/e2e.md §3.2), through the real
    codecs; ``drop`` and ``shuffle`` model loss and reordering."""

    def __init__(self, rng: random.Random | None = None, loss: float = 0.0) -> None:
        self.members: dict[str, RoomCrypto] = {}
        self.queue: list[tuple[str, bytes]] = []  # (recipient, delivery bytes)
        self.results: dict[str, list[Output]] = {}
        self.rng = rng
        self.loss = loss
        self.sent_chats: list[tuple[str, bytes]] = []  # (recipient, delivery) of chats
        self.key_requests = 0

    def join(self, name: str, identity: IdentityKeys) -> RoomCrypto:
        engine = RoomCrypto("room", name, identity, seeded_rng(name))
        self.results[name] = []
        others = dict(self.members)
        self.members[name] = engine
        infos = [MemberInfo(n, False, e._identity.public()) for n, e in others.items()]
        self.post(name, engine.start(infos))
        for other_name, other in others.items():
            self.post(other_name, other.add_member(name, identity.public()))
        return engine

    def leave(self, name: str, reason: Reason = Reason.EXIT) -> RoomCrypto:
        gone = self.members.pop(name)
        for other_name, other in self.members.items():
            self.post(other_name, other.handle_notice(Notice(NoticeEvent.LEFT, name, reason)))
        return gone

    def post(self, sender: str, outputs: Iterable[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                self.route(sender, output.message)
            else:
                self.results[sender].append(output)

    def route(self, sender: str, message: bytes) -> None:
        route = decode_route(message)
        assert route is not None and route.kind is not Kind.LEAVE
        body = message[route.body_offset :]
        self.key_requests += route.kind is Kind.KEY_REQUEST
        if route.kind is Kind.CHAT:
            targets = [n for n in self.members if n != sender]
        else:
            targets = [route.recipient.decode()] if route.recipient.decode() in self.members \
                else []
        for target in targets:
            data = encode_delivery(sender.encode(), route.kind, body)
            if route.kind is Kind.CHAT:
                self.sent_chats.append((target, data))
            self.queue.append((target, data))

    def say(self, name: str, text: bytes) -> bytes:
        message = self.members[name].seal(text)
        self.route(name, message)
        return message

    def run(self, now: float = 0.0) -> None:
        """Deliver everything queued (and what that causes), with loss and reordering."""
        while self.queue:
            batch, self.queue = self.queue, []
            if self.rng is not None:
                self.rng.shuffle(batch)
            for target, data in batch:
                if self.rng is not None and self.rng.random() < self.loss:
                    continue
                if target in self.members:
                    self.deliver(target, data, now)

    def deliver(self, target: str, data: bytes, now: float) -> None:
        delivery = decode_delivery(data)
        self.post(target, self.members[target].receive(delivery, now))

    def texts(self, name: str) -> list[bytes]:
        return [o.text for o in self.results[name] if isinstance(o, Decrypted)]

    def rejected(self, name: str) -> list[RejectReason]:
        return [o.reason for o in self.results[name] if isinstance(o, Rejected)]


def three() -> tuple[Net, RoomCrypto, RoomCrypto, RoomCrypto]:
    net = Net()
    alice = net.join("alice", ALICE)
    bob = net.join("bob", BOB)
    carol = net.join("carol", IdentityKeys.generate(seeded_rng("carol-id")))
    net.run()
    return net, alice, bob, carol


def test_three_members_talk() -> None:
    net, *_ = three()
    net.say("alice", b"hi all")
    net.say("bob", b"hi alice")
    net.say("carol", "こんにちは".encode())
    net.run()
    assert net.texts("alice") == [b"hi alice", "こんにちは".encode()]
    assert net.texts("bob") == [b"hi all", "こんにちは".encode()]
    assert net.texts("carol") == [b"hi all", b"hi alice"]
    assert net.rejected("alice") == net.rejected("bob") == net.rejected("carol") == []


# --- attacks: each one rejected, nothing changes -------------------------------------------
def chat_body(message: bytes) -> bytes:
    return message[1:]


def test_flipped_bit_anywhere_is_rejected() -> None:
    net, alice, bob, _ = three()
    body = chat_body(alice.seal(b"secret"))
    for at in range(len(body)):
        for bit in (0x01, 0x80):
            bad = bytearray(body)
            bad[at] ^= bit
            out = bob.receive(E2EDelivery("alice", Kind.CHAT, bytes(bad)), 0.0)
            assert len(out) in (1, 2), at
            # the header's counter/chain id, ciphertext and signature are all signed; a
            # changed version byte does not parse
            assert isinstance(out[0], Rejected), at
            assert out[0].reason in (RejectReason.BAD_SIGNATURE, RejectReason.MALFORMED), at
    # and the genuine message still opens afterwards
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, body), 0.0)[0] == Decrypted(
        "alice", b"secret", alice.chain_id, 0
    )


def test_replay_is_rejected() -> None:
    net, alice, bob, _ = three()
    body = chat_body(alice.seal(b"pay bob 5"))
    assert isinstance(bob.receive(E2EDelivery("alice", Kind.CHAT, body), 0.0)[0], Decrypted)
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, body), 0.0) == [
        Rejected("alice", RejectReason.REPLAY)
    ]
    # a skipped key is also used only once
    first, second = chat_body(alice.seal(b"1")), chat_body(alice.seal(b"2"))
    assert isinstance(bob.receive(E2EDelivery("alice", Kind.CHAT, second), 0.0)[0], Decrypted)
    assert isinstance(bob.receive(E2EDelivery("alice", Kind.CHAT, first), 0.0)[0], Decrypted)
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, first), 0.0) == [
        Rejected("alice", RejectReason.REPLAY)
    ]


def test_wrong_signature_is_rejected() -> None:
    """Mallory (a member) seals with her own key but claims to be alice: the relay sets the
    sender from the token, so only the server can do this; the signature still fails."""
    net, alice, bob, carol = three()
    chat = decode_sealed_chat(chat_body(carol.seal(b"from alice, honest")))
    resigned = SealedChat(chat.chain_id, chat.counter, chat.ciphertext, CHAT_SIGNED_BY_BOB)
    out = bob.receive(E2EDelivery("carol", Kind.CHAT, encode_sealed_chat(resigned)), 0.0)
    assert out == [Rejected("carol", RejectReason.BAD_SIGNATURE)]


CHAT_SIGNED_BY_BOB = BOB.sign(b"something else entirely")


def test_forged_sender_name_is_rejected() -> None:
    """The server relabels carol's message as alice's: alice's key does not verify it."""
    net, alice, bob, carol = three()
    body = chat_body(carol.seal(b"I am alice"))
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, body), 0.0) == [
        Rejected("alice", RejectReason.BAD_SIGNATURE)
    ]
    assert net.texts("bob") == []


def test_message_from_another_room_is_rejected() -> None:
    """The same people, the same keys, another room: the room is in the signed AAD."""
    other_alice = RoomCrypto("other", "alice", ALICE, seeded_rng("alice"))
    net, alice, bob, _ = three()
    # make the other room's chain identical to this one's, so only the room differs
    other_alice._chain = OutboundChain(alice.chain_id, alice._chain.share().chain_key)
    body = chat_body(other_alice.seal(b"meant for room 'other'"))
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, body), 0.0) == [
        Rejected("alice", RejectReason.BAD_SIGNATURE)
    ]
    # the very same plaintext sealed in this room opens
    body = chat_body(alice.seal(b"meant for room 'other'"))
    assert isinstance(bob.receive(E2EDelivery("alice", Kind.CHAT, body), 0.0)[0], Decrypted)


def test_signed_garbage_ciphertext_is_rejected() -> None:
    """A malicious member signs a ciphertext that was not sealed with its message key."""
    net, alice, bob, _ = three()
    chat = decode_sealed_chat(chat_body(alice.seal(b"x")))
    garbage = b"\x00" * len(chat.ciphertext)
    from client.e2e.room import chat_aad

    signature = ALICE.sign(chat_aad("room", "alice", chat.header()) + garbage)
    forged = encode_sealed_chat(SealedChat(chat.chain_id, chat.counter, garbage, signature))
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, forged), 0.0) == [
        Rejected("alice", RejectReason.DECRYPT_FAILED)
    ]
    # the failure changed nothing: the genuine message with that counter still opens
    genuine = encode_sealed_chat(chat)
    assert isinstance(bob.receive(E2EDelivery("alice", Kind.CHAT, genuine), 0.0)[0], Decrypted)


def test_forged_and_foreign_envelopes_are_rejected() -> None:
    net, alice, bob, carol = three()
    alice.rotate()
    out = alice.add_member("bob", BOB.public())
    assert isinstance(out[0], Send)
    route = decode_route(out[0].message)
    assert route is not None
    body = out[0].message[route.body_offset :]
    # relabelled as carol's: carol's key does not verify it
    assert bob.receive(E2EDelivery("carol", Kind.ENVELOPE, body), 0.0) == [
        Rejected("carol", RejectReason.BAD_SIGNATURE)
    ]
    # delivered to carol instead of bob: bound to the recipient, so it fails for carol
    assert carol.receive(E2EDelivery("alice", Kind.ENVELOPE, body), 0.0) == [
        Rejected("alice", RejectReason.BAD_SIGNATURE)
    ]
    flipped = bytearray(body)
    flipped[40] ^= 1
    assert bob.receive(E2EDelivery("alice", Kind.ENVELOPE, bytes(flipped)), 0.0) == [
        Rejected("alice", RejectReason.BAD_SIGNATURE)
    ]
    for bad in (b"", body[:-1], b"\x02" + body[1:]):
        assert bob.receive(E2EDelivery("alice", Kind.ENVELOPE, bad), 0.0) == [
            Rejected("alice", RejectReason.MALFORMED)
        ]
    assert isinstance(bob.receive(E2EDelivery("alice", Kind.ENVELOPE, body), 0.0)[0],
                      KeyInstalled)


def test_malformed_and_unknown() -> None:
    net, alice, bob, _ = three()
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, b"\x01short"), 0.0) == [
        Rejected("alice", RejectReason.MALFORMED)
    ]
    assert bob.receive(E2EDelivery("alice", Kind.KEY_REQUEST, b"\x01"), 0.0) == [
        Rejected("alice", RejectReason.MALFORMED)
    ]
    body = chat_body(alice.seal(b"x"))
    assert bob.receive(E2EDelivery("zed", Kind.CHAT, body), 0.0) == [
        Rejected("zed", RejectReason.UNKNOWN_SENDER)
    ]


# --- loss, order, key requests -------------------------------------------------------------
@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])  # each loses some envelopes
def test_lossy_reordering_network_decrypts_all_that_arrives(seed: int) -> None:
    """20 % of every datagram (chat, envelope, key request) is lost, and each batch is
    shuffled. Every chat that arrives is eventually decrypted: messages that come before
    their sender key wait, and key requests (repeated by the timer) fetch the key."""
    rng = random.Random(seed)
    net = Net(rng, loss=0.2)
    names = ["alice", "bob", "carol", "dave"]
    for name in names:
        net.join(name, IdentityKeys.generate(seeded_rng(f"{name}-id")))
        net.run()
    arrived: dict[str, set[bytes]] = {name: set() for name in names}
    now = 0.0
    for i in range(300):
        sender = rng.choice(names)
        text = f"{sender} #{i}".encode()
        net.say(sender, text)
        # deliver one step, recording which chats arrive
        batch, net.queue = net.queue, []
        rng.shuffle(batch)
        for target, data in batch:
            if rng.random() < net.loss:
                continue
            delivery = decode_delivery(data)
            if delivery.kind is Kind.CHAT:
                arrived[target].add(decode_sealed_chat(delivery.body).ciphertext)
            net.deliver(target, data, now)
        net.run(now)
        now += 0.1
    # the timer repeats lost key requests until everything waiting has its key
    for _ in range(200):
        now += KEY_REQUEST_INTERVAL_S
        for name, engine in net.members.items():
            net.post(name, engine.handle_timer(now))
        net.run(now)
        if all(engine.next_deadline() is None for engine in net.members.values()):
            break
    assert net.key_requests > 0  # lost envelopes were fetched again
    for name in names:
        assert net.rejected(name) == [], name
        decrypted = [o for o in net.results[name] if isinstance(o, Decrypted)]
        assert len(decrypted) == len(arrived[name]), name
        assert len({o.text for o in decrypted}) == len(decrypted)
        assert net.members[name].next_deadline() is None


def test_message_before_its_key_waits_and_a_key_request_fetches_it() -> None:
    net = Net()
    alice = net.join("alice", ALICE)
    net.run()
    bob = RoomCrypto("room", "bob", BOB, seeded_rng("bob"))
    net.members["bob"] = bob
    net.results["bob"] = []
    bob.start([MemberInfo("alice", True, ALICE.public())])  # bob's envelope to alice: lost
    alice.add_member("bob", BOB.public())  # alice's envelope to bob: lost
    body = chat_body(alice.seal(b"early"))
    out = bob.receive(E2EDelivery("alice", Kind.CHAT, body), 10.0)
    assert len(out) == 1 and isinstance(out[0], Send)
    assert decode_route(out[0].message).kind is Kind.KEY_REQUEST  # type: ignore[union-attr]
    assert bob.next_deadline() == 10.0 + KEY_REQUEST_INTERVAL_S
    assert bob.handle_timer(10.5) == []  # paced: not yet
    net.post("bob", out)
    net.run(10.0)
    assert net.texts("bob") == [b"early"]
    assert bob.next_deadline() is None
    # answers are paced too: a second request within the interval gets nothing
    request = encode_message(Kind.KEY_REQUEST, h("01") + alice.chain_id.to_bytes(4, "big")
                             + bytes(4), "alice")
    assert alice.receive(E2EDelivery("bob", Kind.KEY_REQUEST, request[7:]), 10.5) == []


def test_too_far_ahead_asks_for_a_newer_share() -> None:
    """More than MAX_SKIP messages lost in a row: the receiver does not step that far
    (a member could make it spend 2**32 HKDF steps); it asks, and resumes at the sender's
    current position. The message that was too far ahead is lost (docs/e2e.md §5.1)."""
    net, alice, bob, _ = three()
    for _ in range(MAX_SKIP + 5):
        alice.seal(b"lost")
    body = chat_body(alice.seal(b"far ahead"))
    out = bob.receive(E2EDelivery("alice", Kind.CHAT, body), 0.0)
    assert [type(o) for o in out] == [Send]
    net.post("bob", out)
    net.run(0.0)
    assert net.texts("bob") == []
    assert net.rejected("bob") == [RejectReason.REPLAY]
    assert bob._inbound["alice"][0].next_counter == MAX_SKIP + 6
    net.say("alice", b"caught up")
    net.run(0.0)
    assert net.texts("bob") == [b"caught up"]


def test_key_request_from_a_non_member_is_refused() -> None:
    net, alice, bob, carol = three()
    net.leave("carol")
    net.run()
    body = h("01") + alice.chain_id.to_bytes(4, "big") + bytes(4)
    assert alice.receive(E2EDelivery("carol", Kind.KEY_REQUEST, body), 0.0) == [
        Rejected("carol", RejectReason.NOT_A_MEMBER)
    ]


def test_pending_is_bounded() -> None:
    net, alice, bob, _ = three()
    alice.rotate()  # the new chain's envelopes are never delivered
    outs = [bob.receive(E2EDelivery("alice", Kind.CHAT, chat_body(alice.seal(b"m"))), 0.0)
            for _ in range(MAX_PENDING_PER_SENDER + 1)]
    assert Rejected("alice", RejectReason.OVERFLOW) in outs[-1]
    assert len(bob._pending["alice"]) == MAX_PENDING_PER_SENDER


def test_envelope_before_joined_notice_waits() -> None:
    net, alice, bob, _ = three()
    dave_id = IdentityKeys.generate(seeded_rng("dave-id"))
    dave = RoomCrypto("room", "dave", dave_id, seeded_rng("dave"))
    outs = dave.start([MemberInfo("bob", False, BOB.public())])
    assert isinstance(outs[0], Send)
    route = decode_route(outs[0].message)
    assert route is not None
    body = outs[0].message[route.body_offset :]
    assert bob.receive(E2EDelivery("dave", Kind.ENVELOPE, body), 0.0) == []
    out = bob.add_member("dave", dave_id.public())
    assert isinstance(out[0], Send) and out[1] == KeyInstalled("dave", dave.chain_id, 0)


# --- the skipped-key window ------------------------------------------------------------------
def test_inbound_chain_window() -> None:
    sender = OutboundChain(7, CK0)
    keys = [sender.next_key()[1] for _ in range(MAX_SKIPPED_KEYS + 3)]
    chain = InboundChain(SenderKeyShare(7, 0, CK0))
    last = MAX_SKIPPED_KEYS + 2
    assert chain.open_key(10) == keys[10]
    chain.commit()
    assert chain.open_key(last) == keys[last]
    chain.commit()
    assert chain.skipped_count == MAX_SKIPPED_KEYS  # the oldest 2 were dropped
    with pytest.raises(Replay):
        chain.open_key(0)
    assert chain.open_key(2) == keys[2]
    chain.commit()
    with pytest.raises(Replay):
        chain.open_key(2)
    with pytest.raises(TooFarAhead):
        chain.open_key(last + 1 + MAX_SKIP + 1)
    assert chain.open_key(last + 1 + MAX_SKIP) is not None  # the bound is inclusive
    # without commit() nothing changed
    assert chain.next_counter == last + 1
    assert not chain.fast_forward(SenderKeyShare(7, 1, CK0))  # never rewinds
    assert not chain.fast_forward(SenderKeyShare(8, 99, CK0))  # another chain
    with pytest.raises(AssertionError):
        InboundChain(SenderKeyShare(7, 0, CK0)).commit()


def test_replayed_envelope_never_rewinds_a_chain() -> None:
    net, alice, bob, _ = three()
    alice.rotate()
    envelope = next(o for o in alice.add_member("bob", BOB.public()) if isinstance(o, Send))
    route = decode_route(envelope.message)
    assert route is not None
    env_body = envelope.message[route.body_offset :]
    assert isinstance(bob.receive(E2EDelivery("alice", Kind.ENVELOPE, env_body), 0.0)[0],
                      KeyInstalled)
    first = chat_body(alice.seal(b"once"))
    assert isinstance(bob.receive(E2EDelivery("alice", Kind.CHAT, first), 0.0)[0], Decrypted)
    assert bob.receive(E2EDelivery("alice", Kind.ENVELOPE, env_body), 0.0) == []
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, first), 0.0) == [
        Rejected("alice", RejectReason.REPLAY)
    ]
    # after the next rotation the old chain's envelope is stale
    alice.rotate()
    for _ in range(2):  # bob keeps 2 chains of alice; push the old one out
        alice.rotate()
        net.post("alice", alice.rotate())
        net.run()
    assert bob.receive(E2EDelivery("alice", Kind.ENVELOPE, env_body), 0.0) == [
        Rejected("alice", RejectReason.STALE_ENVELOPE)
    ]


# --- rotation and newcomers, shown with saved key state ---------------------------------------
@pytest.mark.parametrize("reason", [Reason.EXIT, Reason.INACTIVE, Reason.SEND_FAILURES])
def test_departed_member_cannot_read_later_messages(reason: Reason) -> None:
    """Carol leaves (or is evicted); alice and bob rotate. Carol's engine is her saved key
    state: it holds the old chains of both, and opens nothing sent afterwards."""
    net, alice, bob, carol = three()
    net.say("alice", b"before")
    net.run()
    assert net.texts("carol") == [b"before"]
    old_alice_chain, old_bob_chain = alice.chain_id, bob.chain_id
    saved = net.leave("carol", reason)
    net.run()
    assert alice.chain_id != old_alice_chain and bob.chain_id != old_bob_chain
    # every remaining member sent its new chain only to the remaining members
    installed = [o for o in net.results["bob"] if isinstance(o, KeyInstalled)]
    assert installed[-1] == KeyInstalled("alice", alice.chain_id, 0)
    after_a = chat_body(net.say("alice", b"after carol left"))
    after_b = chat_body(net.say("bob", b"bob too"))
    net.run()
    assert net.texts("bob")[-1] == b"after carol left"
    assert net.texts("alice")[-1] == b"bob too"
    for sender, body in (("alice", after_a), ("bob", after_b)):
        out = saved.receive(E2EDelivery(sender, Kind.CHAT, body), 100.0)
        assert not any(isinstance(o, Decrypted) for o in out)
        # carol asks for the key; the sender refuses her
        request = next(o for o in out if isinstance(o, Send))
        route = decode_route(request.message)
        assert route is not None and route.kind is Kind.KEY_REQUEST
        answer = net.members[sender].receive(
            E2EDelivery("carol", Kind.KEY_REQUEST, request.message[route.body_offset :]), 100.0
        )
        assert answer == [Rejected("carol", RejectReason.NOT_A_MEMBER)]
    # and her saved chain keys of the old chains derive nothing of the new ones
    for chains in saved._inbound.values():
        assert {c.chain_id for c in chains}.isdisjoint({alice.chain_id, bob.chain_id})


def test_newcomer_cannot_read_the_past() -> None:
    net, alice, bob, _ = three()
    past = [chat_body(net.say("alice", f"past {i}".encode())) for i in range(5)]
    net.run()
    dave = net.join("dave", IdentityKeys.generate(seeded_rng("dave-id")))
    net.run()
    # dave holds alice's chain at its current position, 5
    chain = dave._inbound["alice"][0]
    assert (chain.chain_id, chain.next_counter, chain.skipped_count) == (alice.chain_id, 5, 0)
    for body in past:
        assert dave.receive(E2EDelivery("alice", Kind.CHAT, body), 0.0) == [
            Rejected("alice", RejectReason.REPLAY)
        ]
    net.say("alice", b"welcome dave")
    net.run()
    assert net.texts("dave") == [b"welcome dave"]


def test_seal_signature_covers_the_aad() -> None:
    net, alice, bob, _ = three()
    chat = decode_sealed_chat(chat_body(alice.seal(b"x")))
    from client.e2e.room import chat_aad

    aad = chat_aad("room", "alice", chat.header())
    assert verify(ALICE.public().ed25519, chat.signature, aad + chat.ciphertext)
    assert not verify(ALICE.public().ed25519, chat.signature, aad + chat.ciphertext + b"x")
    assert not verify(b"\x00" * 31, chat.signature, aad)


def test_docs_print_the_tested_vectors() -> None:
    """docs/e2e.md §8 shows the same hex as CHAT_VECTOR and ENVELOPE_VECTOR."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "e2e.md").read_text()
    section = doc[doc.index("## 8. Test vectors") : doc.index("## 9. Threat model")]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)

    def hex_of(block: str) -> bytes | None:
        lines = block.strip().splitlines()
        try:
            return h("".join(re.split(r"\s{2,}", line)[0].replace(" ", "") for line in lines))
        except ValueError:  # not a hex block
            return None

    assert CHAT_VECTOR in [hex_of(b) for b in blocks]
    assert ENVELOPE_VECTOR in [hex_of(b) for b in blocks]
    assert "e4db1e99f8160649f070b6091ad022ccd1ec7aeca471beb765fdbf700217918a" in section


def test_signed_envelope_that_does_not_open_is_rejected() -> None:
    """Alice signs an envelope whose HPKE part is garbage, or was sealed under another
    context (another room in ``info``): bob refuses both and installs nothing."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    from client.e2e.room import HPKE_SUITE, envelope_info
    from wire.e2e import SealedEnvelope, encode_envelope

    net, alice, bob, _ = three()
    info = envelope_info("room", "alice", "bob")
    bob_x = BOB.public().x25519
    other_room = HPKE_SUITE.encrypt(b"s" * 40, X25519PublicKey.from_public_bytes(bob_x),
                                    envelope_info("other", "alice", "bob"))
    for sealed in (b"\x00" * 88, other_room):
        signature = ALICE.sign(info + bob_x + sealed)
        body = encode_envelope(SealedEnvelope(sealed[:32], sealed[32:], signature))
        assert bob.receive(E2EDelivery("alice", Kind.ENVELOPE, body), 0.0) == [
            Rejected("alice", RejectReason.DECRYPT_FAILED)
        ]
    assert [c.chain_id for c in bob._inbound["alice"]] == [alice.chain_id]


def test_member_with_a_low_order_key_gets_no_envelope() -> None:
    alice = RoomCrypto("room", "alice", ALICE, seeded_rng("alice"))
    broken = MemberInfo("broken", False, ALICE.public().__class__(bytes(32), b"\x01" * 32))
    out = alice.start([broken, MemberInfo("bob", False, BOB.public())])
    assert out[0] == Rejected("broken", RejectReason.MALFORMED)
    assert isinstance(out[1], Send)


def test_membership_calls() -> None:
    alice = RoomCrypto("room", "alice", ALICE, seeded_rng("alice"))
    out = alice.start([MemberInfo("alice", True, ALICE.public()), MemberInfo("plain", False),
                       MemberInfo("bob", False, BOB.public())])
    assert len(out) == 1 and alice.members == {"bob": BOB.public()}
    assert alice.add_member("alice", ALICE.public()) == []
    assert alice.remove_member("nobody") == []
    chain = alice.chain_id
    joined = alice.handle_notice(Notice(NoticeEvent.JOINED, "carol", keys=ALICE.public()))
    assert len(joined) == 1 and "carol" in alice.members and alice.chain_id == chain
    assert alice.handle_notice(Notice(NoticeEvent.JOINED, "dave")) == []  # no keys: plain
    assert alice.handle_notice(Notice(NoticeEvent.CLOSED)) == []
    left = alice.handle_notice(Notice(NoticeEvent.LEFT, "carol", Reason.EXIT))
    assert len(left) == 1 and alice.chain_id != chain  # rotated, sent to bob only
    alice._chain.counter = 1 << 32  # 2**32 messages sent on this chain
    with pytest.raises(ChainExhausted):
        alice.seal(b"one too many")
    assert len(alice.rotate()) == 1 and alice.seal(b"fresh chain")


def test_timer_repeats_key_requests_once_per_chain() -> None:
    net, alice, bob, _ = three()
    alice.rotate()  # bob never gets the new chain
    for _ in range(3):
        bob.receive(E2EDelivery("alice", Kind.CHAT, chat_body(alice.seal(b"m"))), 0.0)
    assert bob.handle_timer(0.5) == []
    repeated = bob.handle_timer(1.0)
    assert len(repeated) == 1 and isinstance(repeated[0], Send)  # one per chain, not per message
    assert bob.next_deadline() == 2.0


def test_message_of_a_dropped_chain_is_a_replay() -> None:
    net, alice, bob, _ = three()
    old = chat_body(alice.seal(b"old chain"))
    for _ in range(2):  # two rotations: bob keeps the newest two chains of alice
        net.post("alice", alice.rotate())
        net.run()
    assert bob.receive(E2EDelivery("alice", Kind.CHAT, old), 0.0) == [
        Rejected("alice", RejectReason.REPLAY)
    ]


def test_remembered_state_is_bounded() -> None:
    from client.e2e.room import MAX_REMEMBERED_NAMES

    net, alice, bob, _ = three()
    bob._seen = {f"n{i}": deque([i]) for i in range(MAX_REMEMBERED_NAMES)}
    bob._last_request = {(f"n{i}", i): 0.0 for i in range(MAX_REMEMBERED_NAMES)}
    net.post("alice", alice.rotate())  # alice is not among the n* names: one is forgotten
    net.run()
    assert len(bob._seen) == MAX_REMEMBERED_NAMES and "n0" not in bob._seen
    alice.rotate()
    bob.receive(E2EDelivery("alice", Kind.CHAT, chat_body(alice.seal(b"m"))), 0.0)
    assert len(bob._last_request) == 1  # the table was cleared before growing past its bound


def test_longest_names_work() -> None:
    """255-byte room and usernames: HPKE ``info`` is then 787 bytes, the AAD 527."""
    room, a_name, b_name = "部" * 85, "a" * 255, "b" * 255
    alice = RoomCrypto(room, a_name, ALICE, seeded_rng("alice"))
    bob = RoomCrypto(room, b_name, BOB, seeded_rng("bob"))
    bob.start([MemberInfo(a_name, True, ALICE.public())])
    envelope = alice.add_member(b_name, BOB.public())[0]
    assert isinstance(envelope, Send)
    route = decode_route(envelope.message)
    assert route is not None
    assert isinstance(bob.receive(E2EDelivery(a_name, Kind.ENVELOPE,
                                              envelope.message[route.body_offset :]), 0.0)[0],
                      KeyInstalled)
    out = bob.receive(E2EDelivery(a_name, Kind.CHAT, chat_body(alice.seal(b"long"))), 0.0)
    assert out == [Decrypted(a_name, b"long", alice.chain_id, 0)]
