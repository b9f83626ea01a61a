"""The sans-IO crypto engine of one encrypted room (docs/e2e.md §4, §5).

``RoomCrypto`` takes what the relay and TCRP deliver (the members of the join reply,
``joined``/``left`` notices, ``wire.e2e.E2EDelivery``) and returns outputs: ``Send`` (a
Stage 2 Message for the adapter to wrap with room and token), ``Decrypted``, ``Rejected``
and ``KeyInstalled``. It does no I/O; time (``now``) and randomness (``rng``) come in as
arguments, so every property is testable without sockets.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from client.e2e.chains import (
    MAX_SKIP,
    InboundChain,
    OutboundChain,
    Replay,
    TooFarAhead,
)
from client.e2e.identity import IdentityKeys, Rng, verify
from wire import errors
from wire.chat import Notice
from wire.codes import NoticeEvent
from wire.e2e import (
    HPKE_ENC_BYTES,
    E2EDelivery,
    KeyRequest,
    Kind,
    MemberInfo,
    PublicKeys,
    SealedChat,
    SealedEnvelope,
    SenderKeyShare,
    decode_envelope,
    decode_key_request,
    decode_sealed_chat,
    decode_share,
    encode_envelope,
    encode_key_request,
    encode_message,
    encode_sealed_chat,
    encode_share,
)

CHAT_LABEL: Final = b"ocm-e2e v1 chat"
ENVELOPE_LABEL: Final = b"ocm-e2e v1 envelope"
HPKE_SUITE: Final = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
"""RFC 9180 base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305."""
INBOUND_CHAINS_PER_MEMBER: Final = 2
"""A member's current chain and the one before it (for messages in flight at rotation)."""
SEEN_CHAIN_IDS_PER_NAME: Final = 64
"""Chain ids installed per name, kept after the member leaves: an envelope of an old chain
(a replay) is refused. 64 x 4 bytes per name, at most ``MAX_REMEMBERED_NAMES`` names."""
MAX_REMEMBERED_NAMES: Final = 1024
MAX_PENDING_PER_SENDER: Final = 64
"""Signed messages kept while their sender key is missing; the oldest is dropped first."""
MAX_EARLY_ENVELOPES: Final = 16
"""Envelopes from a sender whose ``joined`` notice has not arrived yet."""
KEY_REQUEST_INTERVAL_S: Final = 1.0
"""At most one key request per (sender, chain) and one answer per requester per second."""


def _lp(raw: bytes) -> bytes:
    return bytes((len(raw),)) + raw


def chat_aad(room: str, sender: str, header: bytes) -> bytes:
    """Associated data of a chat message: label, room, sender, kind, version, chain id,
    counter. The signature covers ``chat_aad(...) + ciphertext``."""
    return CHAT_LABEL + _lp(room.encode()) + _lp(sender.encode()) + bytes((Kind.CHAT,)) + header


def envelope_info(room: str, sender: str, recipient: str) -> bytes:
    """HPKE ``info`` of an envelope. The signature covers ``info + recipient's X25519
    public key + enc + ciphertext``."""
    return ENVELOPE_LABEL + _lp(room.encode()) + _lp(sender.encode()) + _lp(recipient.encode())


# --- outputs ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """A Message to send in a Stage 2 datagram of this room."""

    message: bytes


@dataclass(frozen=True, slots=True)
class Decrypted:
    """A chat message that opened: authentic (signed by ``sender``), fresh, intact."""

    sender: str
    text: bytes
    chain_id: int
    counter: int


class RejectReason(enum.Enum):
    MALFORMED = "malformed"  # a body that does not parse
    UNKNOWN_SENDER = "unknown_sender"  # no keys for the sender: fetch the member list
    BAD_SIGNATURE = "bad_signature"  # forged, from another room, or under another name
    DECRYPT_FAILED = "decrypt_failed"  # signed but the AEAD (or HPKE) did not open
    REPLAY = "replay"  # the key of that message was used already or left the window
    STALE_ENVELOPE = "stale_envelope"  # an envelope of a chain this name used before
    NOT_A_MEMBER = "not_a_member"  # a key request from someone who is not a member
    OVERFLOW = "overflow"  # a pending message dropped: too many waiting for a key


@dataclass(frozen=True, slots=True)
class Rejected:
    """A delivery that was refused; nothing in the state changed because of it."""

    sender: str
    reason: RejectReason


@dataclass(frozen=True, slots=True)
class KeyInstalled:
    """We hold ``sender``'s chain ``chain_id`` from position ``counter`` on."""

    sender: str
    chain_id: int
    counter: int


Output = Send | Decrypted | Rejected | KeyInstalled


class RoomCrypto:
    """Our sender chain and every other member's, in one encrypted room.

    ``rng`` is ``secrets.token_bytes`` outside tests (chain ids and chain keys; HPKE draws
    its ephemeral keys from the OS itself). Call ``start(members)`` with the join reply's
    members, ``add_member`` on each
    ``joined`` notice, ``remove_member`` on each ``left`` notice, ``seal(text)`` to send,
    and ``receive(delivery, now)`` for each encrypted delivery; send every ``Send``.
    """

    def __init__(self, room: str, me: str, identity: IdentityKeys, rng: Rng) -> None:
        self.room = room
        self.me = me
        self._identity = identity
        self._my_x25519 = identity.public().x25519
        self._rng = rng
        self._chain = OutboundChain.generate(rng)
        self._members: dict[str, PublicKeys] = {}
        self._inbound: dict[str, list[InboundChain]] = {}
        self._seen: dict[str, deque[int]] = {}
        self._shares: dict[str, SenderKeyShare] = {}
        self._pending: dict[str, deque[SealedChat]] = {}
        self._early: deque[tuple[str, bytes]] = deque(maxlen=MAX_EARLY_ENVELOPES)
        self._last_request: dict[tuple[str, int], float] = {}
        self._last_answer: dict[str, float] = {}

    # --- membership -----------------------------------------------------------------------
    @property
    def members(self) -> dict[str, PublicKeys]:
        """The other members and their keys, as we know them."""
        return dict(self._members)

    @property
    def chain_id(self) -> int:
        return self._chain.chain_id

    def start(self, members: Iterable[MemberInfo], now: float = 0.0) -> list[Output]:
        """After our join: learn the members, send each our chain (at its position)."""
        out: list[Output] = []
        for member in members:
            if member.keys is not None and member.user != self.me:
                out += self.add_member(member.user, member.keys, now)
        return out

    def add_member(self, user: str, keys: PublicKeys, now: float = 0.0) -> list[Output]:
        """A newcomer: send it our chain at its current position, so it cannot read what
        we sent before. Keys of a name we know are replaced (the pin store judges that).
        Envelopes that came from ``user`` before its keys are handled now."""
        if user == self.me:
            return []
        self._members[user] = keys
        out: list[Output] = [self._envelope(user, self._share_for(user))]
        early = [body for sender, body in self._early if sender == user]
        if early:
            self._early = deque(
                (item for item in self._early if item[0] != user), maxlen=MAX_EARLY_ENVELOPES
            )
            for body in early:
                out += self._handle_envelope(user, body, now)
        return out

    def remove_member(self, user: str) -> list[Output]:
        """A member left or was evicted: forget its chains and rotate ours, so that it
        cannot read anything we send from now on."""
        if self._members.pop(user, None) is None:
            return []
        for table in (self._inbound, self._shares, self._pending, self._last_answer):
            table.pop(user, None)
        return self.rotate()

    def handle_notice(self, notice: Notice, now: float = 0.0) -> list[Output]:
        """``joined`` with keys adds a member, ``left`` (any reason: exit, inactivity, send
        failures) removes one and rotates; other notices change nothing here."""
        if notice.event is NoticeEvent.JOINED and notice.keys is not None:
            return self.add_member(notice.user, notice.keys, now)
        if notice.event is NoticeEvent.LEFT:
            return self.remove_member(notice.user)
        return []

    def rotate(self) -> list[Output]:
        """Start a new chain and send it to every current member at position 0."""
        self._chain = OutboundChain.generate(self._rng)
        self._shares.clear()
        return [self._envelope(user, self._share_for(user)) for user in self._members]

    # --- sending ------------------------------------------------------------------------
    def seal(self, text: bytes) -> bytes:
        """The Message of one chat: the next message key of our chain seals ``text``.

        Raises ``ChainExhausted`` after 2**32 messages on one chain: call ``rotate()``,
        send its outputs, and seal again.
        """
        counter, key = self._chain.next_key()
        header = SealedChat(self._chain.chain_id, counter, b"", b"").header()
        aad = chat_aad(self.room, self.me, header)
        ciphertext = ChaCha20Poly1305(key.key).encrypt(key.nonce, text, aad)
        signature = self._identity.sign(aad + ciphertext)
        chat = SealedChat(self._chain.chain_id, counter, ciphertext, signature)
        return encode_message(Kind.CHAT, encode_sealed_chat(chat))

    def _share_for(self, user: str) -> SenderKeyShare:
        share = self._shares.get(user)
        if share is None:
            share = self._shares[user] = self._chain.share()
        return share

    def _envelope(self, user: str, share: SenderKeyShare) -> Output:
        keys = self._members[user]
        info = envelope_info(self.room, self.me, user)
        try:
            public = X25519PublicKey.from_public_bytes(keys.x25519)
            sealed = HPKE_SUITE.encrypt(encode_share(share), public, info)
        except ValueError:  # a low-order point: no envelope can reach that member
            return Rejected(user, RejectReason.MALFORMED)
        signature = self._identity.sign(info + keys.x25519 + sealed)
        envelope = SealedEnvelope(sealed[:HPKE_ENC_BYTES], sealed[HPKE_ENC_BYTES:], signature)
        return Send(encode_message(Kind.ENVELOPE, encode_envelope(envelope), user))

    # --- receiving ------------------------------------------------------------------------
    def receive(self, delivery: E2EDelivery, now: float) -> list[Output]:
        """Handle one encrypted delivery; ``now`` (seconds, any clock) paces key requests."""
        if delivery.kind is Kind.CHAT:
            return self._handle_chat(delivery.sender, delivery.body, now)
        if delivery.kind is Kind.ENVELOPE:
            return self._handle_envelope(delivery.sender, delivery.body, now)
        return self._handle_key_request(delivery.sender, delivery.body, now)

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` has work: a pending message whose key request may be
        repeated. ``None`` when nothing waits for a key."""
        times = [
            self._last_request.get((sender, chat.chain_id), 0.0) + KEY_REQUEST_INTERVAL_S
            for sender, queue in self._pending.items()
            for chat in queue
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Output]:
        """Repeat the key requests of messages still waiting (the request or its answer may
        have been lost), at most once per ``KEY_REQUEST_INTERVAL_S`` per chain."""
        out: list[Output] = []
        for sender, queue in self._pending.items():
            asked: set[int] = set()
            for chat in queue:
                if chat.chain_id in asked:
                    continue
                asked.add(chat.chain_id)
                last = self._last_request.get((sender, chat.chain_id))
                if last is None or now - last >= KEY_REQUEST_INTERVAL_S:
                    out.append(self._key_request(sender, chat, now))
        return out

    def _key_request(self, sender: str, chat: SealedChat, now: float) -> Send:
        if len(self._last_request) >= MAX_REMEMBERED_NAMES:
            self._last_request.clear()
        self._last_request[(sender, chat.chain_id)] = now
        request = encode_key_request(KeyRequest(chat.chain_id, chat.counter))
        return Send(encode_message(Kind.KEY_REQUEST, request, sender))

    def _handle_chat(self, sender: str, body: bytes, now: float) -> list[Output]:
        try:
            chat = decode_sealed_chat(body)
        except errors.ProtocolError:
            return [Rejected(sender, RejectReason.MALFORMED)]
        keys = self._members.get(sender)
        if keys is None:
            return [Rejected(sender, RejectReason.UNKNOWN_SENDER)]
        aad = chat_aad(self.room, sender, chat.header())
        if not verify(keys.ed25519, chat.signature, aad + chat.ciphertext):
            return [Rejected(sender, RejectReason.BAD_SIGNATURE)]
        return self._open(sender, chat, aad, now)

    def _open(self, sender: str, chat: SealedChat, aad: bytes, now: float) -> list[Output]:
        chain = next((c for c in self._inbound.get(sender, ()) if c.chain_id == chat.chain_id),
                     None)
        if chain is None:
            if chat.chain_id in self._seen.get(sender, ()):
                return [Rejected(sender, RejectReason.REPLAY)]
            return self._wait_for_key(sender, chat, now)
        try:
            key = chain.open_key(chat.counter)
        except Replay:
            return [Rejected(sender, RejectReason.REPLAY)]
        except TooFarAhead:
            return self._wait_for_key(sender, chat, now)
        try:
            text = ChaCha20Poly1305(key.key).decrypt(key.nonce, chat.ciphertext, aad)
        except InvalidTag:
            return [Rejected(sender, RejectReason.DECRYPT_FAILED)]
        chain.commit()
        return [Decrypted(sender, text, chat.chain_id, chat.counter)]

    def _wait_for_key(self, sender: str, chat: SealedChat, now: float) -> list[Output]:
        """Keep the (signed) message and ask its sender for the key, at most once a second
        per chain."""
        out: list[Output] = []
        queue = self._pending.setdefault(sender, deque())
        if len(queue) >= MAX_PENDING_PER_SENDER:
            queue.popleft()
            out.append(Rejected(sender, RejectReason.OVERFLOW))
        queue.append(chat)
        last = self._last_request.get((sender, chat.chain_id))
        if last is None or now - last >= KEY_REQUEST_INTERVAL_S:
            out.append(self._key_request(sender, chat, now))
        return out

    def _handle_envelope(self, sender: str, body: bytes, now: float) -> list[Output]:
        try:
            envelope = decode_envelope(body)
        except errors.ProtocolError:
            return [Rejected(sender, RejectReason.MALFORMED)]
        keys = self._members.get(sender)
        if keys is None:  # its joined notice may still be on the way
            self._early.append((sender, body))
            return []
        info = envelope_info(self.room, sender, self.me)
        sealed = envelope.sealed()
        if not verify(keys.ed25519, envelope.signature, info + self._my_x25519 + sealed):
            return [Rejected(sender, RejectReason.BAD_SIGNATURE)]
        try:
            plaintext = HPKE_SUITE.decrypt(sealed, self._identity.x25519, info)
            share = decode_share(plaintext)
        except (errors.ProtocolError, ValueError, InvalidTag):
            return [Rejected(sender, RejectReason.DECRYPT_FAILED)]
        return self._install(sender, share, now)

    def _install(self, sender: str, share: SenderKeyShare, now: float) -> list[Output]:
        chains = self._inbound.setdefault(sender, [])
        current = next((c for c in chains if c.chain_id == share.chain_id), None)
        if current is not None:
            if not current.fast_forward(share):
                return []  # a duplicate (a key request's answer, or a replay)
        elif share.chain_id in self._seen.get(sender, ()):
            return [Rejected(sender, RejectReason.STALE_ENVELOPE)]
        else:
            chains.append(InboundChain(share))
            del chains[:-INBOUND_CHAINS_PER_MEMBER]
            if sender not in self._seen and len(self._seen) >= MAX_REMEMBERED_NAMES:
                del self._seen[next(iter(self._seen))]
            self._seen.setdefault(sender, deque(maxlen=SEEN_CHAIN_IDS_PER_NAME)).append(
                share.chain_id
            )
        out: list[Output] = [KeyInstalled(sender, share.chain_id, share.counter)]
        waiting = self._pending.pop(sender, None)
        for chat in waiting or ():
            out += self._open(sender, chat, chat_aad(self.room, sender, chat.header()), now)
        return out

    def _handle_key_request(self, sender: str, body: bytes, now: float) -> list[Output]:
        try:
            request = decode_key_request(body)
        except errors.ProtocolError:
            return [Rejected(sender, RejectReason.MALFORMED)]
        if sender not in self._members:
            return [Rejected(sender, RejectReason.NOT_A_MEMBER)]
        last = self._last_answer.get(sender)
        if last is not None and now - last < KEY_REQUEST_INTERVAL_S:
            return []
        self._last_answer[sender] = now
        share = self._share_for(sender)
        if request.chain_id == share.chain_id and request.counter > share.counter + MAX_SKIP:
            share = self._chain.share()  # too far behind to skip: our current position
        return [self._envelope(sender, share)]
