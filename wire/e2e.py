"""Encrypted rooms on the wire (docs/e2e.md): the opaque Message of a Stage 2 datagram,
its deliveries, the bodies inside them, and the public-key JSON of TCRP.

Client -> relay, inside the Stage 2 Message field (docs/e2e.md §3):

    empty                                    keepalive (never relayed)
    01 | SealedChat                          broadcast to every other member
    02 | RecipientLen | Recipient | Envelope addressed to one member
    03 | RecipientLen | Recipient | KeyRequest addressed to one member
    04                                       leave (the encrypted room's ``/exit``)

Relay -> client (``ocm1`` framing only): ``SenderLen | Sender | Kind | Body``, where Body is
what followed the kind byte (chat) or the recipient field (envelope, key request). Byte 0
= 0 is a framed notice, decoded by ``wire.chat.decode_framed``.

The relay reads only the kind byte and the recipient (``decode_route``); everything after
is opaque to it. The bodies (``SealedChat``, ``SealedEnvelope``, ``KeyRequest``,
``SenderKeyShare``) are parsed by clients only. No cryptography here: ``client/e2e``
seals and opens them. Every ``decode_*`` raises only ``ProtocolError`` subclasses.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass
from typing import Any, Final

from wire import errors
from wire.limits import MAX_DATAGRAM_BYTES, MAX_DELIVERY_BYTES

E2E_VERSION: Final = 1
"""The version byte at the start of every body; other values are ``UnsupportedVersion``."""
KEY_BYTES: Final = 32
"""X25519 and Ed25519 public keys, chain keys: 32 bytes each."""
SIGNATURE_BYTES: Final = 64
"""An Ed25519 signature."""
AEAD_TAG_BYTES: Final = 16
"""The Poly1305 tag at the end of every AEAD ciphertext."""
HPKE_ENC_BYTES: Final = 32
"""HPKE's encapsulated key for DHKEM(X25519): the ephemeral public key."""
CHAIN_ID_BYTES: Final = 4
COUNTER_BYTES: Final = 4
MAX_COUNTER: Final = (1 << (8 * COUNTER_BYTES)) - 1
"""A sender chain carries at most 2**32 messages; the sender starts a new chain before."""
SHARE_BYTES: Final = CHAIN_ID_BYTES + COUNTER_BYTES + KEY_BYTES
"""The plaintext of an envelope: ChainId(4) Counter(4) ChainKey(32) = 40 bytes."""
CHAT_HEADER_BYTES: Final = 1 + CHAIN_ID_BYTES + COUNTER_BYTES
"""Version(1) ChainId(4) Counter(4) at the start of a SealedChat."""
MIN_SEALED_CHAT_BYTES: Final = CHAT_HEADER_BYTES + AEAD_TAG_BYTES + SIGNATURE_BYTES
"""An empty plaintext still costs 9 + 16 + 64 = 89 bytes."""
ENVELOPE_BYTES: Final = 1 + HPKE_ENC_BYTES + SHARE_BYTES + AEAD_TAG_BYTES + SIGNATURE_BYTES
"""Version(1) Enc(32) Ciphertext(40 + 16) Signature(64) = 153 bytes, always."""
KEY_REQUEST_BYTES: Final = 1 + CHAIN_ID_BYTES + COUNTER_BYTES
"""Version(1) ChainId(4) Counter(4) = 9 bytes, always."""
MEMBERS_OPERATION: Final = 3
"""TCRP Operation 3, "members" (docs/e2e.md §2.4): not yet accepted by the server."""


class Kind(enum.IntEnum):
    """The first byte of a non-empty Message in an encrypted room (docs/e2e.md §3)."""

    CHAT = 1  # SealedChat, relayed to every other member with a bound address
    ENVELOPE = 2  # SealedEnvelope, relayed to the one member named
    KEY_REQUEST = 3  # KeyRequest, relayed to the one member named
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


def max_chat_body(room_len: int, token_len: int, username_len: int) -> int:
    """The longest SealedChat a member can send that reaches everyone (docs/e2e.md §3.3):
    the datagram holds 2 + room + token + 1 + body <= 4096 and the delivery
    1 + username + 1 + body <= 4094."""
    return min(
        MAX_DATAGRAM_BYTES - 3 - room_len - token_len,
        MAX_DELIVERY_BYTES - 2 - username_len,
    )


# --- bodies (clients only) ------------------------------------------------------------------
def _check_version(body: bytes) -> None:
    if not body:
        raise errors.TruncatedDatagram("empty body")
    if body[0] != E2E_VERSION:
        raise errors.UnsupportedVersion(str(body[0]))


@dataclass(frozen=True, slots=True)
class SealedChat:
    """``Version ChainId Counter Ciphertext Signature`` (docs/e2e.md §4.3)."""

    chain_id: int
    counter: int
    ciphertext: bytes
    signature: bytes

    def header(self) -> bytes:
        """The 9 header bytes, part of the associated data and of what is signed."""
        return _chat_header(self.chain_id, self.counter)


def _chat_header(chain_id: int, counter: int) -> bytes:
    if not (0 <= chain_id <= MAX_COUNTER and 0 <= counter <= MAX_COUNTER):
        raise errors.FieldOutOfRange("chain id and counter are 4 bytes each")
    return bytes((E2E_VERSION,)) + chain_id.to_bytes(4, "big") + counter.to_bytes(4, "big")


def encode_sealed_chat(chat: SealedChat) -> bytes:
    """Raise ``FieldOutOfRange`` on a short ciphertext or a signature not 64 bytes."""
    if len(chat.ciphertext) < AEAD_TAG_BYTES or len(chat.signature) != SIGNATURE_BYTES:
        raise errors.FieldOutOfRange("ciphertext needs its tag, signature is 64 bytes")
    return chat.header() + chat.ciphertext + chat.signature


def decode_sealed_chat(body: bytes) -> SealedChat:
    """Raise ``TruncatedDatagram`` under 89 bytes, ``UnsupportedVersion``."""
    _check_version(body)
    if len(body) < MIN_SEALED_CHAT_BYTES:
        raise errors.TruncatedDatagram(f"sealed chat of {len(body)} bytes")
    return SealedChat(
        int.from_bytes(body[1:5], "big"),
        int.from_bytes(body[5:9], "big"),
        body[CHAT_HEADER_BYTES:-SIGNATURE_BYTES],
        body[-SIGNATURE_BYTES:],
    )


@dataclass(frozen=True, slots=True)
class SealedEnvelope:
    """``Version Enc Ciphertext Signature``: a SenderKeyShare sealed with HPKE to the
    recipient's X25519 key and signed by the sender (docs/e2e.md §4.4)."""

    enc: bytes
    ciphertext: bytes
    signature: bytes

    def sealed(self) -> bytes:
        """HPKE's single-shot output, ``enc || ciphertext``."""
        return self.enc + self.ciphertext


def encode_envelope(envelope: SealedEnvelope) -> bytes:
    """Raise ``FieldOutOfRange`` unless the parts have their fixed sizes."""
    data = bytes((E2E_VERSION,)) + envelope.enc + envelope.ciphertext + envelope.signature
    if (
        len(envelope.enc) != HPKE_ENC_BYTES
        or len(envelope.signature) != SIGNATURE_BYTES
        or len(data) != ENVELOPE_BYTES
    ):
        raise errors.FieldOutOfRange("an envelope is 1 + 32 + 56 + 64 bytes")
    return data


def decode_envelope(body: bytes) -> SealedEnvelope:
    """Raise ``UnsupportedVersion``, ``TruncatedDatagram`` / ``TrailingBytes`` unless the
    body is exactly 153 bytes."""
    _check_version(body)
    _check_exact(body, ENVELOPE_BYTES, "envelope")
    ct_end = 1 + HPKE_ENC_BYTES + SHARE_BYTES + AEAD_TAG_BYTES
    return SealedEnvelope(body[1 : 1 + HPKE_ENC_BYTES], body[1 + HPKE_ENC_BYTES : ct_end],
                          body[ct_end:])


def _check_exact(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise errors.TruncatedDatagram(f"{what} of {len(body)} bytes, needs {size}")
    if len(body) > size:
        raise errors.TrailingBytes(f"{what} of {len(body)} bytes, needs {size}")


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """"Send me your sender key": the chain id and counter of the first message that the
    requester could not open (docs/e2e.md §4.6)."""

    chain_id: int
    counter: int


def encode_key_request(request: KeyRequest) -> bytes:
    """Raise ``FieldOutOfRange`` if a field does not fit 4 bytes."""
    return _chat_header(request.chain_id, request.counter)


def decode_key_request(body: bytes) -> KeyRequest:
    """Raise ``UnsupportedVersion``, ``TruncatedDatagram`` / ``TrailingBytes`` unless 9 bytes."""
    _check_version(body)
    _check_exact(body, KEY_REQUEST_BYTES, "key request")
    return KeyRequest(int.from_bytes(body[1:5], "big"), int.from_bytes(body[5:9], "big"))


@dataclass(frozen=True, slots=True)
class SenderKeyShare:
    """The plaintext of an envelope: a sender chain at one position."""

    chain_id: int
    counter: int
    chain_key: bytes


def encode_share(share: SenderKeyShare) -> bytes:
    """``ChainId Counter ChainKey`` (40 bytes); raise ``FieldOutOfRange``."""
    if len(share.chain_key) != KEY_BYTES:
        raise errors.FieldOutOfRange("a chain key is 32 bytes")
    return _chat_header(share.chain_id, share.counter)[1:] + share.chain_key


def decode_share(data: bytes) -> SenderKeyShare:
    """Raise ``TruncatedDatagram`` / ``TrailingBytes`` unless 40 bytes."""
    _check_exact(data, SHARE_BYTES, "sender key share")
    return SenderKeyShare(
        int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big"), data[8:]
    )


# --- public keys and members in TCRP JSON ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class PublicKeys:
    """A member's identity: X25519 (envelopes are sealed to it), Ed25519 (signatures)."""

    x25519: bytes
    ed25519: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "x25519": base64.b64encode(self.x25519).decode(),
            "ed25519": base64.b64encode(self.ed25519).decode(),
        }


def _key_from_json(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise errors.BadKeys(f"{name} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise errors.BadKeys(f"{name} is not base64") from None
    if len(raw) != KEY_BYTES:
        raise errors.BadKeys(f"{name} must be {KEY_BYTES} bytes, got {len(raw)}")
    return raw


def decode_public_keys(obj: object) -> PublicKeys:
    """``{"x25519": b64, "ed25519": b64}`` (standard base64 with padding, 32 bytes each;
    other keys ignored) or raise ``BadKeys`` (status 4)."""
    if not isinstance(obj, dict):
        raise errors.BadKeys("keys must be an object")
    return PublicKeys(
        _key_from_json(obj.get("x25519"), "x25519"), _key_from_json(obj.get("ed25519"), "ed25519")
    )


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One entry of ``members``: name, host flag, public keys (``None`` in a plain room)."""

    user: str
    host: bool
    keys: PublicKeys | None = None

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"user": self.user, "host": self.host}
        if self.keys is not None:
            obj["keys"] = self.keys.to_json()
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
        try:
            parsed = None if keys is None else decode_public_keys(keys)
        except errors.BadKeys as exc:
            raise errors.BadResponse(f"member keys: {exc.detail}") from None
        out.append(MemberInfo(user, host, parsed))
    return tuple(out)
