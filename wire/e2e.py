"""Encrypted rooms on the wire (docs/e2e.md): the opaque Message of a Stage 2 datagram,
its deliveries, the bodies inside them, and the public-key JSON of TCRP.

Client -> relay, inside the Stage 2 Message field (docs/e2e.md §3):

    empty                                    keepalive (never relayed)
    01 | GroupChat                           broadcast to every other member
    02 | RecipientLen | Recipient | OlmEnvelope   addressed to one member
    03 | RecipientLen | Recipient | ...      addressed to one member (unused by our clients)
    04                                       leave (the encrypted room's ``/exit``)

Relay -> client (``ocm1`` framing only): ``SenderLen | Sender | Kind | Body``, where Body is
what followed the kind byte (chat) or the recipient field (envelope, key request). Byte 0
= 0 is a framed notice, decoded by ``wire.chat.decode_framed``.

The relay reads only the kind byte and the recipient (``decode_route``); everything after
is opaque to it. The bodies (``GroupChat``: a Megolm message; ``OlmEnvelope``: an Olm
message whose plaintext is a ``Content``) are parsed by clients only. No cryptography here:
``client/e2e`` (on vodozemac) seals and opens them. Every ``decode_*`` raises only
``ProtocolError`` subclasses.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field
from typing import Any, Final

from wire import errors
from wire.limits import MAX_DATAGRAM_BYTES, MAX_DELIVERY_BYTES

E2E_VERSION: Final = 2
"""The version byte at the start of every body; other values are ``UnsupportedVersion``.
Version 1 bodies are no longer understood."""
KEY_BYTES: Final = 32
"""Curve25519 and Ed25519 public keys: 32 bytes each."""
SIGNATURE_BYTES: Final = 64
"""An Ed25519 signature."""
SESSION_ID_BYTES: Final = 32
"""A Megolm session id: the session's Ed25519 public key."""
BINDING_BYTES: Final = 32
"""The room binding at the start of every Olm plaintext (SHA-256)."""
MEGOLM_OVERHEAD_BYTES: Final = 98
"""A Megolm message's bytes beyond its plaintext, at most: version, index and length
fields (1 + 6 + 3), AES-CBC padding (up to 16), MAC (8), signature (64)."""
MIN_CHAT_OVERHEAD_BYTES: Final = 1 + SESSION_ID_BYTES + MEGOLM_OVERHEAD_BYTES + 1
"""Chat body bytes that are not text, at most, plus the sender name inside (1 + name)."""
MAX_ONE_TIME_KEYS: Final = 16
"""One-time keys a member publishes with its join (each claimed by one newcomer)."""
PREKEY_LABEL: Final = b"ocm-e2e v2 prekey"
"""Signed with the prekey: label || fallback flag (1 byte) || key."""
MEMBERS_OPERATION: Final = 3
"""TCRP Operation 3, "members" (docs/e2e.md §2.4); ``wire.codes.Operation.MEMBERS``."""


class Kind(enum.IntEnum):
    """The first byte of a non-empty Message in an encrypted room (docs/e2e.md §3)."""

    CHAT = 1  # GroupChat (Megolm), relayed to every other member with a bound address
    ENVELOPE = 2  # OlmEnvelope, relayed to the one member named
    KEY_REQUEST = 3  # addressed like ENVELOPE; the relay routes it, our clients send none
    LEAVE = 4  # exactly one byte: leave the room, as /exit does in a plain room


ADDRESSED_KINDS: Final = frozenset({Kind.ENVELOPE, Kind.KEY_REQUEST})
_KINDS: Final = frozenset(int(k) for k in Kind)


# --- client -> relay ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Route:
    """What the relay reads from a Message: its kind, the recipient of an addressed kind
    (raw UTF-8 bytes, compared to member names as bytes), and where the body starts."""

    kind: Kind
    recipient: bytes
    body_offset: int


KEEPALIVE: Final = None
"""``decode_route`` returns this for the empty Message."""


def decode_route(message: bytes) -> Route | None:
    """Read the routing of an encrypted-room Message, or ``None`` for a keepalive.

    Raises ``DatagramTooLarge`` (over 4096 - 4 bytes: no datagram can carry it),
    ``UnknownKind``, ``TrailingBytes`` (LEAVE with a body), ``EmptyField`` (recipient
    length 0), ``TruncatedDatagram`` (recipient past the end).
    """
    size = len(message)
    if size > MAX_DATAGRAM_BYTES - 4:
        raise errors.DatagramTooLarge(f"{size} bytes")
    if size == 0:
        return KEEPALIVE
    kind = message[0]
    if kind not in _KINDS:
        raise errors.UnknownKind(str(kind))
    if kind == Kind.LEAVE:
        if size != 1:
            raise errors.TrailingBytes("leave has no body")
        return Route(Kind.LEAVE, b"", 1)
    if kind == Kind.CHAT:
        return Route(Kind.CHAT, b"", 1)
    if size < 2 or message[1] == 0:
        raise errors.EmptyField("recipient")
    end = 2 + message[1]
    if end > size:
        raise errors.TruncatedDatagram(f"recipient needs {end} bytes, have {size}")
    return Route(Kind(kind), message[2:end], end)


def encode_message(kind: Kind, body: bytes = b"", recipient: str = "") -> bytes:
    """The Message for ``kind``; an addressed kind needs ``recipient`` (1..255 bytes).

    Raises ``FieldOutOfRange`` for a missing or superfluous recipient or a LEAVE body.
    """
    raw = recipient.encode()
    if kind in ADDRESSED_KINDS:
        if not 1 <= len(raw) <= 255:
            raise errors.FieldOutOfRange("recipient must be 1..255 bytes")
        return bytes((kind, len(raw))) + raw + body
    if raw:
        raise errors.FieldOutOfRange(f"{kind.name} has no recipient")
    if kind is Kind.LEAVE and body:
        raise errors.FieldOutOfRange("LEAVE has no body")
    return bytes((kind,)) + body


# --- relay -> client ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class E2EDelivery:
    """An encrypted-room delivery: sender (set by the relay from the token), kind, body."""

    sender: str
    kind: Kind
    body: bytes


def encode_delivery(sender: bytes, kind: Kind, body: bytes) -> bytes:
    """``SenderLen Sender Kind Body``; raise ``FieldOutOfRange`` for LEAVE or a sender not
    1..255 bytes, ``DeliveryTooLarge`` over 4094 bytes."""
    if not 1 <= len(sender) <= 255:
        raise errors.FieldOutOfRange("sender must be 1..255 bytes")
    if kind is Kind.LEAVE:
        raise errors.FieldOutOfRange("LEAVE is never delivered")
    data = bytes((len(sender),)) + sender + bytes((kind,)) + body
    if len(data) > MAX_DELIVERY_BYTES:
        raise errors.DeliveryTooLarge(f"{len(data) - MAX_DELIVERY_BYTES} bytes over")
    return data


def decode_delivery(data: bytes) -> E2EDelivery:
    """Decode a non-notice delivery of an encrypted room (byte 0 != 0; notices go to
    ``wire.chat.decode_framed``). Raises ``TruncatedDatagram``, ``DatagramTooLarge``,
    ``EmptyField`` (byte 0 = 0), ``MessageNotUtf8`` (sender), ``UnknownKind``."""
    size = len(data)
    if size > MAX_DELIVERY_BYTES:
        raise errors.DatagramTooLarge(f"delivery of {size} bytes")
    if size == 0:
        raise errors.TruncatedDatagram("empty delivery")
    if data[0] == 0:
        raise errors.EmptyField("a notice is not an encrypted delivery")
    kind_at = 1 + data[0]
    if kind_at >= size:
        raise errors.TruncatedDatagram("sender or kind past the end")
    try:
        sender = data[1:kind_at].decode()
    except UnicodeDecodeError:
        raise errors.MessageNotUtf8("sender") from None
    kind = data[kind_at]
    if kind not in _KINDS or kind == Kind.LEAVE:
        raise errors.UnknownKind(str(kind))
    return E2EDelivery(sender, Kind(kind), data[kind_at + 1 :])


def max_chat_body(room_len: int, token_len: int, username_len: int,
                  reliable: bool = False) -> int:
    """The longest chat body a member can send that reaches everyone (docs/e2e.md §3.3):
    the datagram holds 2 + room + token + 1 + body <= 4096 and the delivery
    1 + username + 1 + body <= 4094; an ``ocm1r`` member's datagram carries the 5-byte
    SEND header too, and the delivery the 9-byte DATA header (wire/reliable.py)."""
    extra_up, extra_down = (5, 9) if reliable else (0, 0)
    return min(
        MAX_DATAGRAM_BYTES - 3 - room_len - token_len - extra_up,
        MAX_DELIVERY_BYTES - 2 - username_len - extra_down,
    )


# --- bodies (clients only) ------------------------------------------------------------------
def _check_version(body: bytes) -> None:
    if not body:
        raise errors.TruncatedDatagram("empty body")
    if body[0] != E2E_VERSION:
        raise errors.UnsupportedVersion(str(body[0]))


@dataclass(frozen=True, slots=True)
class GroupChat:
    """A chat body: ``Version(1) SessionId(32) MegolmMessage``. The session id names the
    sender's Megolm session (its Ed25519 key); the Megolm message is vodozemac's bytes."""

    session_id: bytes
    megolm: bytes


def encode_group_chat(chat: GroupChat) -> bytes:
    """Raise ``FieldOutOfRange`` for a session id that is not 32 bytes or an empty message."""
    if len(chat.session_id) != SESSION_ID_BYTES or not chat.megolm:
        raise errors.FieldOutOfRange("a chat needs a 32-byte session id and a message")
    return bytes((E2E_VERSION,)) + chat.session_id + chat.megolm


def decode_group_chat(body: bytes) -> GroupChat:
    """Raise ``UnsupportedVersion`` or ``TruncatedDatagram``."""
    _check_version(body)
    if len(body) <= 1 + SESSION_ID_BYTES:
        raise errors.TruncatedDatagram("chat shorter than its header")
    return GroupChat(body[1 : 1 + SESSION_ID_BYTES], body[1 + SESSION_ID_BYTES :])


class OlmType(enum.IntEnum):
    """vodozemac's Olm message types."""

    PRE_KEY = 0
    NORMAL = 1


@dataclass(frozen=True, slots=True)
class OlmEnvelope:
    """An addressed body: ``Version(1) OlmType(1) Ciphertext``: one Olm message of the
    pairwise session between sender and recipient."""

    olm_type: OlmType
    ciphertext: bytes


def encode_olm_envelope(envelope: OlmEnvelope) -> bytes:
    if not envelope.ciphertext:
        raise errors.FieldOutOfRange("an Olm message is never empty")
    return bytes((E2E_VERSION, envelope.olm_type)) + envelope.ciphertext


def decode_olm_envelope(body: bytes) -> OlmEnvelope:
    """Raise ``UnsupportedVersion``, ``TruncatedDatagram`` or ``UnknownKind``."""
    _check_version(body)
    if len(body) < 3:
        raise errors.TruncatedDatagram("envelope shorter than its header")
    if body[1] not in (OlmType.PRE_KEY, OlmType.NORMAL):
        raise errors.UnknownKind(f"Olm type {body[1]}")
    return OlmEnvelope(OlmType(body[1]), body[2:])


class ContentType(enum.IntEnum):
    """What an Olm plaintext carries (docs/e2e.md)."""

    ROOM_KEY = 1  # RoomKey: the sender's Megolm session, from the index it is shared at
    KEY_REQUEST = 2  # a session id (32 bytes) whose key the sender asks for again
    SAS = 3  # one message of an interactive verification (client.e2e.sas)


@dataclass(frozen=True, slots=True)
class Content:
    """An Olm plaintext: ``Binding(32) Type(1) Payload``. ``binding`` ties it to one
    server, room name and room incarnation (``client.e2e.room.room_binding``)."""

    binding: bytes
    content_type: ContentType
    payload: bytes


def encode_content(content: Content) -> bytes:
    if len(content.binding) != BINDING_BYTES:
        raise errors.FieldOutOfRange("binding must be 32 bytes")
    return content.binding + bytes((content.content_type,)) + content.payload


def decode_content(data: bytes) -> Content:
    """Raise ``TruncatedDatagram`` or ``UnknownKind``."""
    if len(data) < BINDING_BYTES + 1:
        raise errors.TruncatedDatagram("Olm plaintext shorter than its header")
    kind = data[BINDING_BYTES]
    if kind not in _CONTENT_TYPES:
        raise errors.UnknownKind(f"content type {kind}")
    return Content(data[:BINDING_BYTES], ContentType(kind), data[BINDING_BYTES + 1 :])


_CONTENT_TYPES: Final = frozenset(int(t) for t in ContentType)


@dataclass(frozen=True, slots=True)
class RoomKey:
    """``SenderLen Sender RecipientLen Recipient ServerLen(2) Server SessionKey``: the
    sender's Megolm session key (vodozemac's base64 text) for this one recipient, and the
    server's TLS key as the sender verified it (empty without TLS)."""

    sender: str
    recipient: str
    session_key: str
    server: str = ""


def _lp(raw: bytes) -> bytes:
    if not 1 <= len(raw) <= 255:
        raise errors.FieldOutOfRange("a name must be 1..255 bytes")
    return bytes((len(raw),)) + raw


def _read_lp(data: bytes, at: int) -> tuple[str, int]:
    if at >= len(data) or data[at] == 0 or at + 1 + data[at] > len(data):
        raise errors.TruncatedDatagram("name past the end")
    end = at + 1 + data[at]
    try:
        return data[at + 1 : end].decode(), end
    except UnicodeDecodeError:
        raise errors.MessageNotUtf8("name") from None


def encode_room_key(key: RoomKey) -> bytes:
    server = key.server.encode()
    return (_lp(key.sender.encode()) + _lp(key.recipient.encode())
            + len(server).to_bytes(2, "big") + server + key.session_key.encode())


def decode_room_key(payload: bytes) -> RoomKey:
    sender, at = _read_lp(payload, 0)
    recipient, at = _read_lp(payload, at)
    if at + 2 > len(payload):
        raise errors.TruncatedDatagram("server past the end")
    end = at + 2 + int.from_bytes(payload[at:at + 2], "big")
    if end > len(payload):
        raise errors.TruncatedDatagram("server past the end")
    try:
        server = payload[at + 2:end].decode()
        session_key = payload[end:].decode("ascii")
    except UnicodeDecodeError:
        raise errors.MessageNotUtf8("server or session key") from None
    if not session_key:
        raise errors.TruncatedDatagram("no session key")
    return RoomKey(sender, recipient, session_key, server)


def encode_signed_text(sender: str, text: bytes) -> bytes:
    """A Megolm plaintext: ``SenderLen Sender Text``; the sender's name inside the
    ciphertext, so a delivery relabelled by the relay does not open as someone else's."""
    return _lp(sender.encode()) + text


def decode_signed_text(data: bytes) -> tuple[str, bytes]:
    sender, at = _read_lp(data, 0)
    return sender, data[at:]


# --- public keys and members in TCRP JSON ---------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _bytes_from_json(value: object, name: str, size: int) -> bytes:
    if not isinstance(value, str):
        raise errors.BadKeys(f"{name} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise errors.BadKeys(f"{name} is not base64") from None
    if len(raw) != size:
        raise errors.BadKeys(f"{name} must be {size} bytes, got {len(raw)}")
    return raw


def _key_from_json(value: object, name: str) -> bytes:
    return _bytes_from_json(value, name, KEY_BYTES)


@dataclass(frozen=True, slots=True)
class SignedPrekey:
    """A Curve25519 key an Olm session can start from, signed by its owner's Ed25519 key
    over ``PREKEY_LABEL || fallback || key``. A one-time key is handed to one claimer;
    the fallback key to every claimer once the one-time keys are gone."""

    key: bytes
    signature: bytes
    fallback: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"key": _b64(self.key), "sig": _b64(self.signature), "fallback": self.fallback}

    def signed_bytes(self) -> bytes:
        return prekey_signed_bytes(self.key, self.fallback)


def prekey_signed_bytes(key: bytes, fallback: bool) -> bytes:
    return PREKEY_LABEL + (b"\x01" if fallback else b"\x00") + key


def decode_signed_prekey(obj: object) -> SignedPrekey:
    if not isinstance(obj, dict):
        raise errors.BadKeys("a prekey must be an object")
    fallback = obj.get("fallback", False)
    if type(fallback) is not bool:
        raise errors.BadKeys("fallback must be a boolean")
    return SignedPrekey(_key_from_json(obj.get("key"), "prekey"),
                        _bytes_from_json(obj.get("sig"), "sig", SIGNATURE_BYTES), fallback)


@dataclass(frozen=True, slots=True)
class Prekeys:
    """What a member publishes with its join: up to ``MAX_ONE_TIME_KEYS`` one-time keys and
    one fallback key, each signed."""

    one_time: tuple[SignedPrekey, ...]
    fallback: SignedPrekey

    def to_json(self) -> dict[str, Any]:
        return {"one_time": [k.to_json() for k in self.one_time],
                "fallback": self.fallback.to_json()}


def decode_prekeys(obj: object) -> Prekeys:
    """``{"one_time": [prekey...], "fallback": prekey}`` or raise ``BadKeys``."""
    if not isinstance(obj, dict):
        raise errors.BadKeys("prekeys must be an object")
    one_time = obj.get("one_time")
    if not isinstance(one_time, list) or len(one_time) > MAX_ONE_TIME_KEYS:
        raise errors.BadKeys(f"one_time must be an array of at most {MAX_ONE_TIME_KEYS}")
    keys = tuple(decode_signed_prekey(item) for item in one_time)
    fallback = decode_signed_prekey(obj.get("fallback"))
    if any(k.fallback for k in keys) or not fallback.fallback:
        raise errors.BadKeys("the fallback flag is set on the fallback key only")
    return Prekeys(keys, fallback)


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """A member's identity: Curve25519 (``x25519``: its Olm identity key) and Ed25519 (its
    signing key). ``prekeys`` travel only in a join or create request (never compared,
    never in notices or member lists: ``identity()`` drops them)."""

    x25519: bytes
    ed25519: bytes
    prekeys: Prekeys | None = field(default=None, compare=False)

    def identity(self) -> PublicKeys:
        return self if self.prekeys is None else PublicKeys(self.x25519, self.ed25519)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"x25519": _b64(self.x25519), "ed25519": _b64(self.ed25519)}
        if self.prekeys is not None:
            obj["prekeys"] = self.prekeys.to_json()
        return obj


def decode_public_keys(obj: object) -> PublicKeys:
    """``{"x25519": b64, "ed25519": b64, "prekeys"?: {...}}`` (standard base64 with
    padding, 32 bytes each; other keys ignored) or raise ``BadKeys`` (status 4)."""
    if not isinstance(obj, dict):
        raise errors.BadKeys("keys must be an object")
    prekeys = obj.get("prekeys")
    return PublicKeys(
        _key_from_json(obj.get("x25519"), "x25519"), _key_from_json(obj.get("ed25519"), "ed25519"),
        None if prekeys is None else decode_prekeys(prekeys),
    )


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One entry of ``members``: name, host flag, public keys (``None`` in a plain room),
    and in a join reply the prekey claimed from that member for the newcomer."""

    user: str
    host: bool
    keys: PublicKeys | None = None
    prekey: SignedPrekey | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"user": self.user, "host": self.host}
        if self.keys is not None:
            obj["keys"] = self.keys.identity().to_json()
        if self.prekey is not None:
            obj["prekey"] = self.prekey.to_json()
        return obj


def decode_members(value: object) -> tuple[MemberInfo, ...]:
    """The ``members`` array of a response's details, or raise ``BadResponse``."""
    if not isinstance(value, list):
        raise errors.BadResponse("members must be an array")
    out: list[MemberInfo] = []
    for item in value:
        if not isinstance(item, dict):
            raise errors.BadResponse("a member must be an object")
        user, host, keys = item.get("user"), item.get("host"), item.get("keys")
        if not isinstance(user, str) or not user or type(host) is not bool:
            raise errors.BadResponse("a member needs a user string and a host bool")
        prekey = item.get("prekey")
        try:
            parsed = None if keys is None else decode_public_keys(keys).identity()
            claimed = None if prekey is None else decode_signed_prekey(prekey)
        except errors.BadKeys as exc:
            raise errors.BadResponse(f"member keys: {exc.detail}") from None
        out.append(MemberInfo(user, host, parsed, claimed))
    return tuple(out)
