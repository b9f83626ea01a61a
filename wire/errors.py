"""The error tree of the wire codecs.

``ProtocolError`` is the only exception a codec raises on bad input. A remote peer's
defect raises a ``RemoteProtocolError`` subclass; asking a codec to encode something the
protocol cannot carry raises a ``LocalProtocolError`` subclass. Each subclass's docstring
is its message, ``status`` is the TCRP status code it maps to and ``reason`` is the short
name under which a dropped datagram is counted.
"""

from __future__ import annotations

from typing import ClassVar

from wire.codes import Status


class ProtocolError(Exception):
    """Protocol violation."""

    status: ClassVar[Status] = Status.INVALID_REQUEST
    reason: ClassVar[str] = "malformed"

    def __init__(self, detail: str = "") -> None:
        message = (self.__doc__ or "").strip()
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)
        self.detail = detail


class LocalProtocolError(ProtocolError):
    """We were asked to encode something the protocol cannot carry."""

    status = Status.INTERNAL_ERROR


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""


# --- TCRP requests (server side), in the order docs/protocol.md §1.3 checks them -------------
class EmptyRoomName(RemoteProtocolError):
    """RoomNameSize is 0"""


class UnknownOperation(RemoteProtocolError):
    """Operation must be 1 (create), 2 (join) or 3 (members)"""


class UnexpectedState(RemoteProtocolError):
    """a request must have State 0"""


class PayloadTooLarge(RemoteProtocolError):
    """the payload is over the size limit"""

    status = Status.TOO_LARGE
    reason = "too_large"


class RoomNameNotUtf8(RemoteProtocolError):
    """the room name is not valid UTF-8"""

    reason = "bad_utf8"


class PayloadNotUtf8(RemoteProtocolError):
    """the payload is not valid UTF-8"""

    reason = "bad_utf8"


class MalformedJson(RemoteProtocolError):
    """the payload starts with { but is not a valid JSON object"""


class BadFieldType(RemoteProtocolError):
    """a request field has the wrong JSON type"""


class MissingUsername(RemoteProtocolError):
    """the username is missing or empty"""


class FieldTooLong(RemoteProtocolError):
    """a field is over 255 bytes"""

    status = Status.TOO_LARGE
    reason = "too_large"


class BadUsername(RemoteProtocolError):
    """the username has a refused character or leading/trailing whitespace"""


# --- TCRP responses (client side) ---------------------------------------------------------
class UnexpectedFrame(RemoteProtocolError):
    """the server sent a frame the client did not expect"""

    status = Status.INTERNAL_ERROR


class BadResponse(RemoteProtocolError):
    """the server's response payload is malformed"""

    status = Status.INTERNAL_ERROR


class PrematureClose(RemoteProtocolError):
    """the server closed the connection too early"""

    status = Status.INTERNAL_ERROR


class BadToken(RemoteProtocolError):
    """the token is not 22..255 bytes of printable ASCII without space"""

    status = Status.INTERNAL_ERROR


# --- datagrams (Stage 1, Stage 2, deliveries) --------------------------------------------
class DatagramTooLarge(RemoteProtocolError):
    """the datagram is over its size limit (4096 bytes; 4094 for a delivery)"""

    status = Status.TOO_LARGE
    reason = "too_large"


class TruncatedDatagram(RemoteProtocolError):
    """a length field points past the end of the datagram"""


class EmptyField(RemoteProtocolError):
    """a length-prefixed field of the datagram is empty"""


class MessageNotUtf8(RemoteProtocolError):
    """the text is not valid UTF-8"""

    reason = "bad_utf8"


class BadNotice(RemoteProtocolError):
    """a framed notice is not a JSON object with a known event"""


class BadDelivery(RemoteProtocolError):
    """a plain delivery is neither a notice text nor 'name: message'"""


# --- encrypted rooms (docs/e2e.md) --------------------------------------------------------
class BadKeys(RemoteProtocolError):
    """keys must be an object with base64 32-byte x25519 and ed25519 public keys"""


class E2eNeedsKeys(RemoteProtocolError):
    """an encrypted room needs the member's keys and ocm1 framing"""


class UnknownKind(RemoteProtocolError):
    """unknown kind byte in an encrypted-room message"""

    reason = "bad_kind"


class TrailingBytes(RemoteProtocolError):
    """bytes after the end of a fixed-size field"""


class UnsupportedVersion(RemoteProtocolError):
    """unsupported encrypted-payload version"""


# --- encoding (our own side) --------------------------------------------------------------
class FieldOutOfRange(LocalProtocolError):
    """a value does not fit its wire field"""


class ExchangeMisuse(LocalProtocolError):
    """the TCRP exchange cannot do that in its current state"""


class DeliveryTooLarge(LocalProtocolError):
    """the delivery would be over 4094 bytes"""
