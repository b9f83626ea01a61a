"""The sans-IO crypto engine of one encrypted room, on vodozemac (docs/e2e.md).

Room messages are Megolm: each member has one outbound group session and an inbound
session for every other member's. Megolm session keys travel in Olm sessions, one per
pair of members, which the newcomer starts from a prekey it claimed in its join reply
(the older member answers over the same session). Every room key carries the room's
binding (server, room name, room epoch), and every session id and message index accepted
is remembered per sender for the life of this object, so nothing recorded earlier opens
again.

``RoomCrypto`` takes what the relay and TCRP deliver and returns outputs: ``Send`` (a
Stage 2 Message for the adapter to wrap with room and token), ``Decrypted``, ``Rejected``,
``KeyInstalled``, ``MemberAdded``, ``MemberRemoved``, ``Rotated`` and ``SasMessage``. It
does no I/O; time (``now``) comes in as an argument.

The encryption set (``members``) is the set of members this client encrypts to: a member
is added by a ``joined`` notice, the join reply or the member list, and only when the
caller accepts its key (``accepted``); a held member (its key changed and the user has not
accepted it) gets no room key. Every change of the set rotates the outbound session, and
so do ``ROTATE_MESSAGES`` messages or ``ROTATE_SECONDS`` on one session.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import vodozemac

from client.e2e.identity import IdentityKeys, from_unpadded, verify_prekey
from wire import errors
from wire.chat import Notice
from wire.codes import NoticeEvent
from wire.e2e import (
    SESSION_ID_BYTES,
    Content,
    ContentType,
    E2EDelivery,
    GroupChat,
    Kind,
    MemberInfo,
    OlmEnvelope,
    OlmType,
    PublicKeys,
    RoomKey,
    SignedPrekey,
    decode_content,
    decode_group_chat,
    decode_olm_envelope,
    decode_room_key,
    decode_signed_text,
    encode_content,
    encode_group_chat,
    encode_message,
    encode_olm_envelope,
    encode_room_key,
    encode_signed_text,
)

BINDING_LABEL: Final = b"ocm-e2e v2 room binding"
ROTATE_MESSAGES: Final = 100
"""An outbound session carries at most this many messages, then a new one starts."""
ROTATE_SECONDS: Final = 600.0
"""An outbound session that carried a message is replaced after this many seconds."""
RESEND_S: Final = 2.0
"""A newcomer resends its room key to a member that has not answered, this often..."""
MAX_RESENDS: Final = 30
"""...at most this many times."""
KEY_REQUEST_INTERVAL_S: Final = 1.0
"""At most one key request per (sender, session) and one answer per requester a second."""
INBOUND_SESSIONS_PER_MEMBER: Final = 4
"""Sessions kept per other member (older ones are forgotten; their ids stay refused)."""
REPLAY_WINDOW: Final = 1024
"""Message indices remembered per session; an index this far behind the newest is refused."""
MAX_PENDING_PER_SENDER: Final = 64
"""Messages kept while their session key is missing; the oldest is dropped first."""
MAX_EARLY_ENVELOPES: Final = 16
"""Olm messages from a sender whose keys have not arrived yet."""


def _lp(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def room_binding(room: str, epoch: bytes) -> bytes:
    """``SHA-256(label || room || epoch)`` (each length-prefixed): the one room incarnation
    a room key belongs to. The server's identity is checked beside it (``server_key``)."""
    return hashlib.sha256(BINDING_LABEL + _lp(room.encode()) + _lp(epoch)).digest()


def session_id_bytes(session_id: str) -> bytes:
    return from_unpadded(session_id)


# --- outputs ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """A Message to send in a Stage 2 datagram of this room."""

    message: bytes


@dataclass(frozen=True, slots=True)
class Decrypted:
    """A chat message that opened: from ``sender``'s session, fresh, intact."""

    sender: str
    text: bytes
    session_id: bytes
    index: int


class RejectReason(enum.Enum):
    MALFORMED = "malformed"  # a body that does not parse
    UNKNOWN_SENDER = "unknown_sender"  # no keys for the sender: fetch the member list
    DECRYPT_FAILED = "decrypt_failed"  # did not open (altered, or not for us)
    BEFORE_KEY = "before_key"  # sent before the point the session was shared with us
    REPLAY = "replay"  # a message index or session id accepted before
    WRONG_ROOM = "wrong_room"  # a room key bound to another server, room or incarnation
    FORGED_NAME = "forged_name"  # the name inside is not the sender's
    BAD_PREKEY = "bad_prekey"  # a claimed prekey not signed by its member
    OVERFLOW = "overflow"  # a pending message dropped: too many waiting for a key


@dataclass(frozen=True, slots=True)
class Rejected:
    """A delivery that was refused; nothing in the state changed because of it."""

    sender: str
    reason: RejectReason


@dataclass(frozen=True, slots=True)
class KeyInstalled:
    """We hold ``sender``'s session ``session_id`` from message ``index`` on."""

    sender: str
    session_id: bytes
    index: int


@dataclass(frozen=True, slots=True)
class MemberAdded:
    """``user`` entered the encryption set: from now on it gets our room keys."""

    user: str
    keys: PublicKeys


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    """``user`` left the encryption set (departed, or its key changed)."""

    user: str


@dataclass(frozen=True, slots=True)
class Rotated:
    """A new outbound session, shared with ``recipients`` only."""

    session_id: bytes
    recipients: frozenset[str]


@dataclass(frozen=True, slots=True)
class SasMessage:
    """A verification message from ``sender`` for ``client.e2e.sas``."""

    sender: str
    payload: bytes


Output = (Send | Decrypted | Rejected | KeyInstalled | MemberAdded | MemberRemoved | Rotated
          | SasMessage)


@dataclass(slots=True)
class _Peer:
    keys: PublicKeys
    accepted: bool
    olm: vodozemac.Session | None = None
    initiated: bool = False  # we started ``olm`` from its prekey
    confirmed: bool = False  # something from it opened on ``olm``
    sent_session: bytes = b""  # our outbound session id last sent to it
    last_sent: float = float("-inf")
    resends: int = 0


@dataclass(slots=True)
class _Outbound:
    session: vodozemac.GroupSession
    session_id: bytes
    key0: str  # the session key at index 0 (shared with ``recipients`` only)
    recipients: frozenset[str]
    started: float | None = None  # the time of its first message
    sent: int = 0


@dataclass(slots=True)
class _Seen:
    """Indices accepted on one inbound session: the newest, and those within the window."""

    newest: int = -1
    indices: set[int] = field(default_factory=set)

    def fresh(self, index: int) -> bool:
        return index not in self.indices and index > self.newest - REPLAY_WINDOW

    def add(self, index: int) -> None:
        self.indices.add(index)
        if index > self.newest:
            self.newest = index
            if len(self.indices) > REPLAY_WINDOW:
                self.indices = {i for i in self.indices if i > index - REPLAY_WINDOW}


def _new_outbound(recipients: frozenset[str]) -> _Outbound:
    session = vodozemac.GroupSession()
    return _Outbound(session, session_id_bytes(session.session_id),
                     session.session_key.to_base64(), recipients)


class RoomCrypto:
    """Our Megolm session, every other member's, and the Olm sessions between us.

    ``binding`` is ``room_binding(room, epoch)``, ``server_key`` the server's TLS key as
    verified ("" without TLS). Call ``start(members)`` with the
    join reply's members, ``add_member``/``remove_member`` (or ``handle_notice``) as the
    membership changes, ``seal(text, now)`` to send and ``receive(delivery, now)`` for each
    encrypted delivery; send every ``Send``; call ``handle_timer`` at ``next_deadline``.
    """

    def __init__(self, room: str, me: str, identity: IdentityKeys, binding: bytes,
                 server_key: str = "") -> None:
        self.room = room
        self.me = me
        self.binding = binding
        self.server_key = server_key
        """The server's TLS key as this client verified it ("" without TLS): sent in every
        room key; one naming another key is refused (a replay from another server)."""
        self._identity = identity
        self._peers: dict[str, _Peer] = {}
        self._out = _new_outbound(frozenset())
        self._previous: _Outbound | None = None
        self._inbound: dict[str, dict[bytes, vodozemac.InboundGroupSession]] = {}
        self._seen: dict[tuple[str, bytes], _Seen] = {}
        self._accepted: dict[str, set[bytes]] = {}
        """Every session id accepted per sender name, kept for this object's life."""
        self._pending: dict[str, deque[GroupChat]] = {}
        self._early: deque[tuple[str, bytes]] = deque(maxlen=MAX_EARLY_ENVELOPES)
        self._last_request: dict[tuple[str, bytes], float] = {}
        self._last_answer: dict[str, float] = {}
        self.rotations = 0

    # --- membership -----------------------------------------------------------------------
    @property
    def members(self) -> dict[str, PublicKeys]:
        """The encryption set: the members we encrypt to, with their keys."""
        return {user: peer.keys for user, peer in self._peers.items() if peer.accepted}

    @property
    def held(self) -> dict[str, PublicKeys]:
        """Members whose key we have not accepted: they get no room key."""
        return {user: peer.keys for user, peer in self._peers.items() if not peer.accepted}

    @property
    def session_id(self) -> bytes:
        """Our current outbound session."""
        return self._out.session_id

    def start(self, members: Iterable[MemberInfo], now: float = 0.0) -> list[Output]:
        """After our join: learn the members (all accepted), start an Olm session from each
        claimed prekey and send each our room key. No rotation: our session is new."""
        out: list[Output] = []
        for member in members:
            if member.keys is None or member.user == self.me:
                continue
            peer = self._peers.get(member.user)
            if peer is not None and peer.keys == member.keys:  # known: no second start
                if member.prekey is not None and peer.olm is None:
                    out += self._start_olm(member.user, peer, member.prekey)
                continue
            out += self._add(member.user, member.keys, member.prekey, True, now)
        self._out.recipients = frozenset(self.members)
        for user in self._out.recipients:
            out += self._deliver(user, now)
        return out

    def add_member(self, user: str, keys: PublicKeys, prekey: SignedPrekey | None = None,
                   now: float = 0.0, accepted: bool = True) -> list[Output]:
        """A member we learned of (``joined``, the member list, the join reply).

        Its keys replace those of a member of that name (a key change): the old one leaves
        the set first, so our session rotates before the new key can get anything. An
        ``accepted`` member enters the set (the session rotates again, to include it); a
        held one waits for ``accept``. Olm messages it sent before are handled now."""
        if user == self.me:
            return []
        peer = self._peers.get(user)
        if peer is not None and peer.keys == keys:
            out: list[Output] = []
            if prekey is not None and peer.olm is None:
                out += self._start_olm(user, peer, prekey)
            if accepted and not peer.accepted:
                out += self.accept(user, now)
            return out + self._drain_early(user, now)
        out = self.remove_member(user, now) if peer is not None else []
        out += self._add(user, keys, prekey, accepted, now)
        if accepted:
            out += self.rotate(now)
        return out + self._drain_early(user, now)

    def accept(self, user: str, now: float = 0.0) -> list[Output]:
        """The user accepted ``user``'s (changed) key: it enters the set; we rotate."""
        peer = self._peers.get(user)
        if peer is None or peer.accepted:
            return []
        peer.accepted = True
        return [MemberAdded(user, peer.keys), *self.rotate(now)]

    def remove_member(self, user: str, now: float = 0.0) -> list[Output]:
        """A member left, was evicted, or vanished from the member list: forget its
        sessions (their ids stay refused) and rotate, so it reads nothing from now on."""
        peer = self._peers.pop(user, None)
        if peer is None:
            return []
        for sid in self._inbound.pop(user, {}):
            self._seen.pop((user, sid), None)
        self._pending.pop(user, None)
        self._last_answer.pop(user, None)
        if not peer.accepted:
            return []
        return [MemberRemoved(user), *self.rotate(now)]

    def handle_notice(self, notice: Notice, now: float = 0.0) -> list[Output]:
        """``joined`` with keys adds an accepted member, ``left`` removes one."""
        if notice.event is NoticeEvent.JOINED and notice.keys is not None:
            return self.add_member(notice.user, notice.keys, None, now)
        if notice.event is NoticeEvent.LEFT:
            return self.remove_member(notice.user, now)
        return []

    def rotate(self, now: float = 0.0) -> list[Output]:
        """Start a new outbound session and send it to every member of the set."""
        self._previous = self._out
        self._out = _new_outbound(frozenset(self.members))
        self.rotations += 1
        out: list[Output] = [Rotated(self._out.session_id, self._out.recipients)]
        for user in self._out.recipients:
            out += self._deliver(user, now)
        return out

    def _add(self, user: str, keys: PublicKeys, prekey: SignedPrekey | None, accepted: bool,
             now: float) -> list[Output]:
        peer = self._peers[user] = _Peer(keys.identity(), accepted)
        out: list[Output] = [MemberAdded(user, peer.keys)] if accepted else []
        if prekey is not None:
            out += self._start_olm(user, peer, prekey)
        return out

    def _start_olm(self, user: str, peer: _Peer, prekey: SignedPrekey) -> list[Output]:
        if not verify_prekey(peer.keys, prekey):
            return [Rejected(user, RejectReason.BAD_PREKEY)]
        try:
            peer.olm = self._identity.account.create_outbound_session(
                vodozemac.Curve25519PublicKey.from_bytes(peer.keys.x25519),
                vodozemac.Curve25519PublicKey.from_bytes(prekey.key))
        except ValueError:
            return [Rejected(user, RejectReason.BAD_PREKEY)]
        peer.initiated = True
        return []

    def _drain_early(self, user: str, now: float) -> list[Output]:
        early = [body for sender, body in self._early if sender == user]
        if not early:
            return []
        self._early = deque((item for item in self._early if item[0] != user),
                            maxlen=MAX_EARLY_ENVELOPES)
        out: list[Output] = []
        for body in early:
            out += self._handle_envelope(user, body, now)
        return out

    # --- sending ------------------------------------------------------------------------
    def seal(self, text: bytes, now: float = 0.0) -> list[Output]:
        """Encrypt one chat; rotate first when the session carried ``ROTATE_MESSAGES``
        messages or is ``ROTATE_SECONDS`` old. The chat's ``Send`` comes last."""
        out: list[Output] = []
        started = self._out.started
        if self._out.sent >= ROTATE_MESSAGES or (
                started is not None and now - started >= ROTATE_SECONDS):
            out += self.rotate(now)
        if self._out.started is None:
            self._out.started = now
        out.append(Send(self.encrypt(text)))
        return out

    def encrypt(self, text: bytes) -> bytes:
        """The Message of one chat on the current session, without the rotation policy
        (``ocm-loadgen`` pre-encrypts a run with it)."""
        self._out.sent += 1
        megolm = self._out.session.encrypt(encode_signed_text(self.me, text)).to_bytes()
        return encode_message(Kind.CHAT, encode_group_chat(GroupChat(self._out.session_id,
                                                                     megolm)))

    def send_content(self, user: str, content_type: ContentType, payload: bytes,
                     now: float = 0.0) -> Send | None:
        """One Olm message to ``user`` (``None`` without an Olm session with it)."""
        peer = self._peers.get(user)
        if peer is None or peer.olm is None:
            return None
        plaintext = encode_content(Content(self.binding, content_type, payload))
        olm_type, ciphertext = peer.olm.encrypt(plaintext).to_parts()
        body = encode_olm_envelope(OlmEnvelope(OlmType(olm_type), ciphertext))
        return Send(encode_message(Kind.ENVELOPE, body, user))

    def _deliver(self, user: str, now: float, session: _Outbound | None = None) -> list[Output]:
        """Our room key to ``user`` over Olm, if it is a recipient and we have a session."""
        session = session or self._out
        peer = self._peers.get(user)
        if peer is None or not peer.accepted or user not in session.recipients:
            return []
        key = RoomKey(self.me, user, session.key0, self.server_key)
        send = self.send_content(user, ContentType.ROOM_KEY, encode_room_key(key), now)
        if send is None:
            return []  # no Olm session yet: it will start one from our prekey
        if session is self._out:
            if peer.sent_session != session.session_id:
                peer.resends = 0
            peer.sent_session = session.session_id
        peer.last_sent = now
        return [send]

    # --- receiving ------------------------------------------------------------------------
    def receive(self, delivery: E2EDelivery, now: float) -> list[Output]:
        """Handle one encrypted delivery; ``now`` (seconds, any clock) paces resends."""
        if delivery.kind is Kind.CHAT:
            return self._handle_chat(delivery.sender, delivery.body, now)
        if delivery.kind is Kind.ENVELOPE:
            return self._handle_envelope(delivery.sender, delivery.body, now)
        return [Rejected(delivery.sender, RejectReason.MALFORMED)]

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` has work: a resend, a key request, a rotation by age."""
        times = [t + KEY_REQUEST_INTERVAL_S for (sender, _), t in self._last_request.items()
                 if self._pending.get(sender)]
        times += [peer.last_sent + RESEND_S for peer in self._peers.values()
                  if self._needs_resend(peer)]
        if self._out.started is not None and self._out.sent:
            times.append(self._out.started + ROTATE_SECONDS)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Output]:
        """Resend our room key to members that have not answered (the Olm message or the
        answer was lost), repeat key requests, rotate an old session."""
        out: list[Output] = []
        started = self._out.started
        if started is not None and self._out.sent and now - started >= ROTATE_SECONDS:
            out += self.rotate(now)
        for user, peer in list(self._peers.items()):
            if self._needs_resend(peer) and now - peer.last_sent >= RESEND_S:
                peer.resends += 1
                out += self._deliver(user, now)
        for sender, queue in list(self._pending.items()):
            for sid in {chat.session_id for chat in queue}:
                out += self._key_request(sender, sid, now)
        return out

    @staticmethod
    def _needs_resend(peer: _Peer) -> bool:
        return (peer.initiated and not peer.confirmed and peer.accepted
                and peer.resends < MAX_RESENDS and peer.sent_session != b"")

    def _key_request(self, sender: str, sid: bytes, now: float) -> list[Output]:
        last = self._last_request.get((sender, sid))
        if last is not None and now - last < KEY_REQUEST_INTERVAL_S:
            return []
        send = self.send_content(sender, ContentType.KEY_REQUEST, sid, now)
        if send is None:
            return []
        self._last_request[(sender, sid)] = now
        return [send]

    def _handle_chat(self, sender: str, body: bytes, now: float) -> list[Output]:
        try:
            chat = decode_group_chat(body)
            message = vodozemac.MegolmMessage.from_bytes(chat.megolm)
        except (errors.ProtocolError, ValueError):
            return [Rejected(sender, RejectReason.MALFORMED)]
        if sender not in self._peers:
            return [Rejected(sender, RejectReason.UNKNOWN_SENDER)]
        return self._open(sender, chat, message, now)

    def _open(self, sender: str, chat: GroupChat, message: vodozemac.MegolmMessage,
              now: float) -> list[Output]:
        session = self._inbound.get(sender, {}).get(chat.session_id)
        if session is None:
            if chat.session_id in self._accepted.get(sender, ()):
                return [Rejected(sender, RejectReason.REPLAY)]  # a session forgotten
            return self._wait_for_key(sender, chat, now)
        index = message.message_index()
        seen = self._seen.setdefault((sender, chat.session_id), _Seen())
        if not seen.fresh(index):
            return [Rejected(sender, RejectReason.REPLAY)]
        try:
            plaintext = session.decrypt(message).plaintext
        except ValueError:
            if index < session.first_known_index:
                return [Rejected(sender, RejectReason.BEFORE_KEY)]
            return [Rejected(sender, RejectReason.DECRYPT_FAILED)]
        try:
            name, text = decode_signed_text(plaintext)
        except errors.ProtocolError:
            return [Rejected(sender, RejectReason.MALFORMED)]
        if name != sender:
            return [Rejected(sender, RejectReason.FORGED_NAME)]
        seen.add(index)
        return [Decrypted(sender, text, chat.session_id, index)]

    def _wait_for_key(self, sender: str, chat: GroupChat, now: float) -> list[Output]:
        out: list[Output] = []
        queue = self._pending.setdefault(sender, deque())
        if len(queue) >= MAX_PENDING_PER_SENDER:
            queue.popleft()
            out.append(Rejected(sender, RejectReason.OVERFLOW))
        queue.append(chat)
        return out + self._key_request(sender, chat.session_id, now)

    def _handle_envelope(self, sender: str, body: bytes, now: float) -> list[Output]:
        try:
            envelope = decode_olm_envelope(body)
            message = vodozemac.AnyOlmMessage.from_parts(envelope.olm_type, envelope.ciphertext)
        except (errors.ProtocolError, ValueError):
            return [Rejected(sender, RejectReason.MALFORMED)]
        peer = self._peers.get(sender)
        if peer is None:  # its joined notice may still be on the way, or was lost
            self._early.append((sender, body))
            return [Rejected(sender, RejectReason.UNKNOWN_SENDER)]
        try:
            plaintext, new_session = self._olm_decrypt(peer, envelope.olm_type, message)
            content = decode_content(plaintext)
        except errors.ProtocolError:
            return [Rejected(sender, RejectReason.MALFORMED)]
        except ValueError:
            return [Rejected(sender, RejectReason.DECRYPT_FAILED)]
        if content.binding != self.binding:
            return [Rejected(sender, RejectReason.WRONG_ROOM)]  # a replayed session is not kept
        if new_session is not None:
            peer.olm, peer.initiated, peer.sent_session = new_session, False, b""
        peer.confirmed = True
        out: list[Output] = []
        if content.content_type is ContentType.ROOM_KEY:
            out += self._install(sender, content.payload, now)
        elif content.content_type is ContentType.KEY_REQUEST:
            out += self._answer_request(sender, content.payload, now)
        else:
            out.append(SasMessage(sender, content.payload))
        if peer.accepted and peer.sent_session != self._out.session_id:
            out += self._deliver(sender, now)  # an answer to a newcomer, or a late delivery
        elif (envelope.olm_type is OlmType.PRE_KEY and not peer.initiated
              and now - peer.last_sent >= KEY_REQUEST_INTERVAL_S):
            out += self._deliver(sender, now)  # it resends: our answer may have been lost
        return out

    def _olm_decrypt(self, peer: _Peer, olm_type: OlmType, message: vodozemac.AnyOlmMessage
                     ) -> tuple[bytes, vodozemac.Session | None]:
        """The plaintext, and the new inbound session a pre-key message started (kept by
        the caller only once the plaintext proves to belong to this room)."""
        if olm_type is OlmType.PRE_KEY:
            pre_key = message.to_pre_key()
            if pre_key is None:
                raise ValueError("not a pre-key message")
            if peer.olm is not None and peer.olm.session_matches(pre_key):
                return peer.olm.decrypt(message), None
            session, plaintext = self._identity.account.create_inbound_session(
                vodozemac.Curve25519PublicKey.from_bytes(peer.keys.x25519), pre_key)
            return plaintext, session
        if peer.olm is None:
            raise ValueError("no Olm session")
        return peer.olm.decrypt(message), None

    def _install(self, sender: str, payload: bytes, now: float) -> list[Output]:
        try:
            key = decode_room_key(payload)
            session = vodozemac.InboundGroupSession(vodozemac.SessionKey(key.session_key))
        except (errors.ProtocolError, ValueError):
            return [Rejected(sender, RejectReason.MALFORMED)]
        if key.sender != sender or key.recipient != self.me:
            return [Rejected(sender, RejectReason.FORGED_NAME)]
        if key.server and self.server_key and key.server != self.server_key:
            return [Rejected(sender, RejectReason.WRONG_ROOM)]
        sid = session_id_bytes(session.session_id)
        sessions = self._inbound.setdefault(sender, {})
        if sid in sessions:
            return []  # a resend
        accepted = self._accepted.setdefault(sender, set())
        if sid in accepted:
            return [Rejected(sender, RejectReason.REPLAY)]
        accepted.add(sid)
        sessions[sid] = session
        while len(sessions) > INBOUND_SESSIONS_PER_MEMBER:
            oldest = next(iter(sessions))
            del sessions[oldest]
            self._seen.pop((sender, oldest), None)
        out: list[Output] = [KeyInstalled(sender, sid, session.first_known_index)]
        waiting = self._pending.pop(sender, None)
        for chat in waiting or ():
            try:
                message = vodozemac.MegolmMessage.from_bytes(chat.megolm)
            except ValueError:
                continue
            out += self._open(sender, chat, message, now)
        return out

    def _answer_request(self, sender: str, payload: bytes, now: float) -> list[Output]:
        """Send a session key again to a member it was shared with (its delivery was
        lost); one answer per requester a second."""
        if len(payload) != SESSION_ID_BYTES:
            return [Rejected(sender, RejectReason.MALFORMED)]
        last = self._last_answer.get(sender)
        if last is not None and now - last < KEY_REQUEST_INTERVAL_S:
            return []
        for session in (self._out, self._previous):
            if session is not None and session.session_id == payload:
                self._last_answer[sender] = now
                return self._deliver(sender, now, session)
        return []
