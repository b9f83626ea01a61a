"""The crypto engine (client/e2e/room.py, identity.py) on vodozemac, without sockets: room
keys over Olm from claimed prekeys, Megolm chat, rotation on every membership and key
change and after its bounds, replays across room incarnations, key swaps, loss.

``Net`` plays the relay in memory: it turns each ``Send`` into the delivery the relay
would make (docs/e2e.md), and can drop or record what passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from client.e2e.identity import (
    IdentityKeys,
    fingerprint,
    safety_number,
    verify,
    verify_prekey,
)
from client.e2e.room import (
    INBOUND_SESSIONS_PER_MEMBER,
    RESEND_S,
    ROTATE_MESSAGES,
    ROTATE_SECONDS,
    Decrypted,
    KeyInstalled,
    MemberAdded,
    MemberRemoved,
    Output,
    Rejected,
    RejectReason,
    RoomCrypto,
    Rotated,
    Send,
    room_binding,
)
from wire.chat import Notice
from wire.codes import NoticeEvent, Reason
from wire.e2e import (
    E2EDelivery,
    Kind,
    MemberInfo,
    PublicKeys,
    SignedPrekey,
    decode_route,
)

SERVER = "127.0.0.1:9000"
BINDING = room_binding("room", b"\x01" * 16)


class Net:
    """Members by name; ``send`` delivers a member's outputs like the relay would."""

    def __init__(self) -> None:
        self.members: dict[str, RoomCrypto] = {}
        self.got: dict[str, list[Output]] = {}
        self.log: list[tuple[str, E2EDelivery]] = []  # (recipient, delivery): a recording
        self.drop: Callable[[str, E2EDelivery], bool] = lambda to, d: False
        self.now = 0.0

    def add(self, crypto: RoomCrypto) -> RoomCrypto:
        self.members[crypto.me] = crypto
        self.got.setdefault(crypto.me, [])
        return crypto

    def send(self, sender: str, outputs: Iterable[Output]) -> None:
        queue = [(sender, list(outputs))]
        while queue:
            who, outs = queue.pop(0)
            self.got[who] += [o for o in outs if not isinstance(o, Send)]
            for out in outs:
                if not isinstance(out, Send):
                    continue
                route = decode_route(out.message)
                assert route is not None
                delivery = E2EDelivery(who, route.kind, out.message[route.body_offset:])
                targets = [route.recipient.decode()] if route.recipient else \
                    [n for n in self.members if n != who]
                for to in targets:
                    self.log.append((to, delivery))
                    if to in self.members and not self.drop(to, delivery):
                        queue.append((to, self.members[to].receive(delivery, self.now)))

    def texts(self, name: str) -> list[tuple[str, bytes]]:
        return [(o.sender, o.text) for o in self.got[name] if isinstance(o, Decrypted)]

    def rejected(self, name: str) -> list[RejectReason]:
        return [o.reason for o in self.got[name] if isinstance(o, Rejected)]

    def say(self, name: str, text: bytes) -> None:
        self.send(name, self.members[name].seal(text, self.now))


def prekey_of(identity: IdentityKeys, fallback: bool = False) -> SignedPrekey:
    published = identity.publish(1)
    assert published.prekeys is not None
    return published.prekeys.fallback if fallback else published.prekeys.one_time[0]


def room(net: Net, names: Iterable[str], binding: bytes = BINDING,
         identities: dict[str, IdentityKeys] | None = None) -> dict[str, IdentityKeys]:
    """Members join one after the other as the server orders it: each newcomer claims a
    prekey of every member before it; the others see its ``joined`` notice."""
    identities = identities if identities is not None else {}
    for name in names:
        identity = identities.setdefault(name, IdentityKeys.generate())
        crypto = RoomCrypto("room", name, identity, binding)
        claimed = [MemberInfo(other, False, identities[other].public(),
                              prekey_of(identities[other])) for other in net.members]
        for other, member in list(net.members.items()):
            net.send(other, member.handle_notice(Notice(NoticeEvent.JOINED, name,
                                                        keys=identity.public())))
        net.add(crypto)
        net.send(name, crypto.start(claimed))
    return identities


def holds(net: Net, who: str, of: str) -> bool:
    session = net.members[of].session_id
    return any(isinstance(o, KeyInstalled) and o.sender == of and o.session_id == session
               for o in net.got[who])


# --- keys, prekeys, fingerprints ---------------------------------------------------------------
def test_identity_keys_prekeys_and_numbers() -> None:
    alice, bob = IdentityKeys.generate(), IdentityKeys.generate()
    published = alice.publish(3)
    assert published.prekeys is not None and len(published.prekeys.one_time) == 3
    assert published == alice.public() and published.identity().prekeys is None
    for prekey in (*published.prekeys.one_time, published.prekeys.fallback):
        assert verify_prekey(alice.public(), prekey)
        assert not verify_prekey(bob.public(), prekey)
    assert published.prekeys.fallback.fallback
    assert verify(alice.public().ed25519, alice.sign(b"x"), b"x")
    assert not verify(alice.public().ed25519, alice.sign(b"x"), b"y")
    assert not verify(b"short", b"sig", b"x")
    assert len(fingerprint(alice.public()).split()) == 8
    number = safety_number("alice", alice.public(), "bob", bob.public())
    assert number == safety_number("bob", bob.public(), "alice", alice.public())
    assert len(number.split()) == 12
    pickled = alice.pickle(b"k" * 32)
    assert IdentityKeys.from_pickle(pickled, b"k" * 32).public() == alice.public()
    with pytest.raises(ValueError):
        IdentityKeys.from_pickle(pickled, b"j" * 32)


def test_fixed_vectors_of_fingerprint_and_safety_number() -> None:
    alice = PublicKeys(
        bytes.fromhex("7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13"),
        bytes.fromhex("a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0"))
    bob = PublicKeys(
        bytes.fromhex("7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14"),
        bytes.fromhex("d759793bbc13a2819a827c76adb6fba8a49aee007f49f2d0992d99b825ad2c48"))
    assert fingerprint(alice) == "2656 e820 c9f5 e211 0aa4 27ba 51bd af0b"
    assert safety_number("alice", alice, "bob", bob) == (
        "16708 69647 74602 01454 45174 43418 77161 62743 69029 79269 22491 33483")


# --- a room ------------------------------------------------------------------------------------
def test_three_members_chat_and_every_join_rotates() -> None:
    net = Net()
    room(net, ["alice", "bob", "carol"])
    for who in net.members:
        for of in net.members:
            if who != of:
                assert holds(net, who, of), (who, of)
    net.say("alice", b"hello")
    net.say("carol", b"hi")
    assert net.texts("bob") == [("alice", b"hello"), ("carol", b"hi")]
    assert net.texts("alice") == [("carol", b"hi")]
    assert not net.rejected("bob")
    # alice rotated for bob's join and for carol's: each a new session for the new set
    rotations = [o for o in net.got["alice"] if isinstance(o, Rotated)]
    assert [set(r.recipients) for r in rotations] == [{"bob"}, {"bob", "carol"}]
    added = [o.user for o in net.got["alice"] if isinstance(o, MemberAdded)]
    assert added == ["bob", "carol"]


def test_a_bad_prekey_starts_no_session() -> None:
    alice, bob = IdentityKeys.generate(), IdentityKeys.generate()
    forged = SignedPrekey(prekey_of(alice).key, bob.sign(b"x" * 10))
    crypto = RoomCrypto("room", "bob", bob, BINDING)
    out = crypto.start([MemberInfo("alice", True, alice.public(), forged)])
    assert Rejected("alice", RejectReason.BAD_PREKEY) in out
    assert not [o for o in out if isinstance(o, Send)]


def test_a_departure_rotates_and_the_departed_reads_nothing_new() -> None:
    net = Net()
    room(net, ["alice", "bob", "carol"])
    carol = net.members.pop("carol")
    for name in ("alice", "bob"):
        net.send(name, net.members[name].handle_notice(
            Notice(NoticeEvent.LEFT, "carol", reason=Reason.EXIT)))
        assert MemberRemoved("carol") in net.got[name]
    net.log.clear()
    net.say("alice", b"after carol")
    assert net.texts("bob")[-1] == ("alice", b"after carol")
    chat = next(d for to, d in net.log if d.kind is Kind.CHAT)
    assert not [o for o in carol.receive(chat, 0.0) if isinstance(o, Decrypted)]


def test_rotation_after_its_message_and_time_bounds() -> None:
    net = Net()
    room(net, ["alice", "bob"])
    alice = net.members["alice"]
    first = alice.session_id
    for i in range(ROTATE_MESSAGES):
        net.say("alice", b"%d" % i)
    assert alice.session_id == first
    net.say("alice", b"one more")
    assert alice.session_id != first
    assert net.texts("bob")[-1] == ("alice", b"one more")
    second = alice.session_id
    deadline = alice.next_deadline()
    assert deadline is not None and deadline <= net.now + ROTATE_SECONDS
    net.now += ROTATE_SECONDS
    net.send("alice", alice.handle_timer(net.now))
    assert alice.session_id != second
    net.say("alice", b"later")
    assert net.texts("bob")[-1] == ("alice", b"later")


# --- replay and binding ------------------------------------------------------------------------
def test_replay_into_a_new_room_incarnation_is_rejected() -> None:
    """The server records alice's room key (sent to bob's fallback key, which opens again)
    and her chats, then replays them into a new room of the same name, announcing alice
    with her real keys: nothing opens, the key is refused for its binding."""
    net = Net()
    ids = {"alice": IdentityKeys.generate(), "bob": IdentityKeys.generate()}
    net.add(RoomCrypto("room", "bob", ids["bob"], BINDING, "sha256:A"))
    alice = net.add(RoomCrypto("room", "alice", ids["alice"], BINDING, "sha256:A"))
    net.send("bob", net.members["bob"].handle_notice(
        Notice(NoticeEvent.JOINED, "alice", keys=ids["alice"].public())))
    net.send("alice", alice.start([MemberInfo("bob", True, ids["bob"].public(),
                                              prekey_of(ids["bob"], fallback=True))]))
    net.say("alice", b"secret plan")
    assert net.texts("bob") == [("alice", b"secret plan")]
    recorded = [d for to, d in net.log if to == "bob"]
    # the same room: every replay is refused
    again = net.members["bob"]
    for delivery in recorded:
        outs = again.receive(delivery, 0.0)
        assert not [o for o in outs if isinstance(o, Decrypted | KeyInstalled)]
    assert any(isinstance(o, Rejected) and o.reason is RejectReason.REPLAY
               for d in recorded for o in again.receive(d, 0.0))
    # a new incarnation (new epoch), bob's same account, alice announced with her keys
    fresh = RoomCrypto("room", "bob", ids["bob"], room_binding("room", b"\x02" * 16))
    fresh.handle_notice(Notice(NoticeEvent.JOINED, "alice", keys=ids["alice"].public()))
    outs = [o for d in recorded for o in fresh.receive(d, 0.0)]
    assert not [o for o in outs if isinstance(o, Decrypted | KeyInstalled)]
    assert Rejected("alice", RejectReason.WRONG_ROOM) in outs
    # another server (another TLS key) with a room of the same name and epoch: the same
    other = RoomCrypto("room", "bob", ids["bob"], BINDING, "sha256:B")
    other.handle_notice(Notice(NoticeEvent.JOINED, "alice", keys=ids["alice"].public()))
    outs = [o for d in recorded for o in other.receive(d, 0.0)]
    assert not [o for o in outs if isinstance(o, Decrypted | KeyInstalled)]
    assert Rejected("alice", RejectReason.WRONG_ROOM) in outs


def test_a_session_accepted_once_is_never_accepted_again() -> None:
    """alice's sessions are remembered for the room's life, also after she leaves and a
    member of that name (same keys: the server re-announces her) comes back."""
    net = Net()
    ids = room(net, ["alice", "bob"])
    net.say("alice", b"one")
    recorded = [d for to, d in net.log if to == "bob"]
    bob = net.members["bob"]
    net.send("bob", bob.handle_notice(Notice(NoticeEvent.LEFT, "alice", reason=Reason.EXIT)))
    net.send("bob", bob.handle_notice(Notice(NoticeEvent.JOINED, "alice",
                                             keys=ids["alice"].public())))
    outs = [o for d in recorded for o in bob.receive(d, 0.0)]
    assert not [o for o in outs if isinstance(o, Decrypted | KeyInstalled)]


def test_forgotten_sessions_stay_refused() -> None:
    net = Net()
    room(net, ["alice", "bob"])
    alice = net.members["alice"]
    net.say("alice", b"first")
    old_chat = [d for to, d in net.log if to == "bob" and d.kind is Kind.CHAT][-1]
    for _ in range(INBOUND_SESSIONS_PER_MEMBER + 1):
        net.send("alice", alice.rotate())
    outs = net.members["bob"].receive(old_chat, 0.0)
    assert outs == [Rejected("alice", RejectReason.REPLAY)]


# --- key changes -------------------------------------------------------------------------------
def test_a_changed_key_is_held_and_never_reads_earlier_messages() -> None:
    net = Net()
    ids = room(net, ["alice", "bob"])
    bob = net.members["bob"]
    swapped = IdentityKeys.generate()
    net.got["bob"].clear()
    out = bob.add_member("alice", swapped.public(), None, 0.0, accepted=False)
    # the old alice leaves the set and bob rotates before anything else
    assert isinstance(out[0], MemberRemoved) and isinstance(out[1], Rotated)
    assert not out[1].recipients and not [o for o in out if isinstance(o, Send)]
    assert "alice" in bob.held and "alice" not in bob.members
    net.send("bob", out)
    # the new key joins as the server would make it (a new alice engine)
    del net.members["alice"]
    new_alice = net.add(RoomCrypto("room", "alice", swapped, BINDING))
    net.got["alice"] = []
    net.send("alice", new_alice.start([MemberInfo("bob", False, ids["bob"].public(),
                                                  prekey_of(ids["bob"]))]))
    net.say("bob", b"while held")
    assert not net.texts("alice")  # no room key went to the held key
    net.send("bob", bob.accept("alice"))
    net.say("bob", b"after accepting")
    assert net.texts("alice") == [("bob", b"after accepting")]


# --- loss ---------------------------------------------------------------------------------------
def test_a_lost_room_key_is_resent_or_asked_for() -> None:
    net = Net()
    ids = {"alice": IdentityKeys.generate(), "bob": IdentityKeys.generate()}
    room(net, ["alice"], identities=ids)
    lost: list[E2EDelivery] = []

    def drop_first(to: str, delivery: E2EDelivery) -> bool:
        if delivery.kind is Kind.ENVELOPE and not lost:
            lost.append(delivery)
            return True
        return False

    net.drop = drop_first
    room(net, ["bob"], identities=ids)  # bob's first Olm message (his room key) is lost
    assert lost and not holds(net, "alice", "bob")
    bob = net.members["bob"]
    deadline = bob.next_deadline()
    assert deadline is not None and deadline <= net.now + RESEND_S
    net.now += RESEND_S
    net.send("bob", bob.handle_timer(net.now))
    assert holds(net, "alice", "bob") and holds(net, "bob", "alice")
    # alice's next room key is lost; her chat makes bob ask for it
    lost.clear()
    net.drop = drop_first
    net.send("alice", net.members["alice"].rotate(net.now))
    net.say("alice", b"after a lost key")
    assert net.texts("bob")[-1] == ("alice", b"after a lost key")


def test_unknown_senders_and_garbage_are_rejected_quietly() -> None:
    net = Net()
    room(net, ["alice", "bob"])
    bob = net.members["bob"]
    assert bob.receive(E2EDelivery("zed", Kind.CHAT, b"\x02" + b"i" * 40), 0.0) == \
        [Rejected("zed", RejectReason.MALFORMED)]
    chat = next(d for to, d in net.log if d.kind is Kind.ENVELOPE)
    assert bob.receive(E2EDelivery("zed", Kind.ENVELOPE, chat.body), 0.0) == \
        [Rejected("zed", RejectReason.UNKNOWN_SENDER)]
    assert bob.receive(E2EDelivery("alice", Kind.KEY_REQUEST, b"x"), 0.0) == \
        [Rejected("alice", RejectReason.MALFORMED)]
    assert bob.receive(E2EDelivery("alice", Kind.ENVELOPE, b"\x02\x01garbage"), 0.0) == \
        [Rejected("alice", RejectReason.MALFORMED)]


# --- SAS ----------------------------------------------------------------------------------------
def test_sas_matches_for_real_keys_and_exposes_a_substituted_key() -> None:
    from client.e2e.sas import SasError, SasFlow, decode_sas

    alice, bob, mallory = (IdentityKeys.generate() for _ in range(3))
    a = SasFlow("alice", alice.public(), "bob", bob.public(), BINDING, starter=True)
    b = SasFlow("bob", bob.public(), "alice", alice.public(), BINDING, starter=False)
    accept, shown_b = b.accept(decode_sas(a.start())[1])
    shown_a = a.accepted(decode_sas(accept)[1])
    assert shown_a == shown_b and len(shown_a.emoji) == 7
    mac_a = a.confirm()
    assert not b.mac_received(decode_sas(mac_a)[1])  # bob has not confirmed yet
    assert b.confirm() and b.verified
    assert a.mac_received(decode_sas(b.confirm())[1])
    # the server showed bob mallory's keys as alice's: the emoji differ, the MAC fails
    a = SasFlow("alice", alice.public(), "bob", bob.public(), BINDING, starter=True)
    b = SasFlow("bob", bob.public(), "alice", mallory.public(), BINDING, starter=False)
    accept, shown_b = b.accept(decode_sas(a.start())[1])
    assert a.accepted(decode_sas(accept)[1]) != shown_b
    b.confirm()
    with pytest.raises(SasError):
        b.mac_received(decode_sas(a.confirm())[1])
    assert not b.verified


def test_a_join_request_with_prekeys_fits_the_default_payload() -> None:
    from wire.codes import Operation
    from wire.limits import DEFAULT_MAX_PAYLOAD_BYTES, TCRP_HEADER_BYTES
    from wire.tcrp import Request, RequestBody, encode_request

    keys = IdentityKeys.generate().publish()
    body = RequestBody("u" * 255, "\x01" * 255, keys=keys, e2e=True)
    frame = encode_request(Request.of(Operation.JOIN, "r" * 255, body))
    assert len(frame) - TCRP_HEADER_BYTES - 255 <= DEFAULT_MAX_PAYLOAD_BYTES


def test_a_replayed_pre_key_message_does_not_replace_the_live_session() -> None:
    """A pre-key message recorded in an earlier incarnation (to bob's previous fallback
    key, which vodozemac still accepts) opens, is refused for its binding, and leaves the
    live Olm session alone: bob's next room key still reaches alice."""
    ids = {"alice": IdentityKeys.generate(), "bob": IdentityKeys.generate()}
    old = Net()
    old.add(RoomCrypto("room", "bob", ids["bob"], BINDING))
    alice_old = old.add(RoomCrypto("room", "alice", ids["alice"], BINDING))
    old.send("bob", old.members["bob"].handle_notice(
        Notice(NoticeEvent.JOINED, "alice", keys=ids["alice"].public())))
    old.send("alice", alice_old.start([MemberInfo("bob", True, ids["bob"].public(),
                                                  prekey_of(ids["bob"], fallback=True))]))
    recorded = [d for to, d in old.log if to == "bob" and d.kind is Kind.ENVELOPE]
    assert recorded
    net = Net()
    room(net, ["bob", "alice"], binding=room_binding("room", b"\x02" * 16),
         identities=ids)
    bob = net.members["bob"]
    outs = [o for d in recorded for o in bob.receive(d, 0.0)]
    assert Rejected("alice", RejectReason.WRONG_ROOM) in outs
    net.send("bob", bob.rotate())
    net.say("bob", b"still private")
    assert net.texts("alice")[-1] == ("bob", b"still private")
