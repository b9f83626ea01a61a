"""Stage 2 chat datagrams and server -> client deliveries (docs/protocol.md §2).

Client -> server: ``RoomNameSize(1) TokenSize(1) RoomName Token Message``, <= 4096 bytes.
Server -> client: plain text (``user: message`` and Japanese notices, §2.2) or ``ocm1``
framing (``UsernameLen Username Message`` for chat, ``0`` + JSON for notices, §2.3),
<= 4094 bytes either way.

Clients read both with ``decode_delivery(data, framing)``.

The relay's hot path parses inline with the same rules (``RelayCore.handle_datagram`` in
relay/core.py, and the compiled loop in relay/_hot.c); these functions are the reference the
tests hold it to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from wire import errors
from wire.codes import Framing, NoticeEvent, Reason
from wire.e2e import PublicKeys, decode_public_keys
from wire.limits import (
    CHAT_HEADER_BYTES,
    EXIT_COMMAND,
    EXIT_MATCH_MAX_BYTES,
    MAX_DATAGRAM_BYTES,
    MAX_DELIVERY_BYTES,
    PLAIN_SEPARATOR,
)


@dataclass(frozen=True, slots=True)
class ChatDatagram:
    """A parsed client -> server datagram; ``room`` and ``token`` are raw bytes."""

    room: bytes
    token: bytes
    message: bytes


def encode_chat(room: bytes, token: bytes, message: bytes) -> bytes:
    """Build a client datagram; raise ``FieldOutOfRange`` if it cannot be sent."""
    if not (1 <= len(room) <= 255 and 1 <= len(token) <= 255):
        raise errors.FieldOutOfRange("room and token must be 1..255 bytes")
    data = bytes((len(room), len(token))) + room + token + message
    if len(data) > MAX_DATAGRAM_BYTES:
        raise errors.FieldOutOfRange(f"datagram of {len(data)} bytes > {MAX_DATAGRAM_BYTES}")
    return data


def decode_chat(data: bytes) -> ChatDatagram:
    """Parse a client datagram or raise exactly one ``RemoteProtocolError`` subclass.

    Checks, in order: size (<= 4096), both length bytes present and non-zero, fields
    inside the datagram, message valid UTF-8.
    """
    size = len(data)
    if size > MAX_DATAGRAM_BYTES:
        raise errors.DatagramTooLarge(f"{size} bytes")
    if size < CHAT_HEADER_BYTES:
        raise errors.TruncatedDatagram(f"{size} bytes")
    room_len, token_len = data[0], data[1]
    if room_len == 0 or token_len == 0:
        raise errors.EmptyField("room name and token must be non-empty")
    room_end = CHAT_HEADER_BYTES + room_len
    token_end = room_end + token_len
    if token_end > size:
        raise errors.TruncatedDatagram(f"fields need {token_end} bytes, have {size}")
    message = data[token_end:]
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.MessageNotUtf8() from None
    return ChatDatagram(data[CHAT_HEADER_BYTES:room_end], data[room_end:token_end], message)


def is_exit(message: bytes) -> bool:
    """True if ``message`` is ``/exit`` after ``str.strip()``, case-insensitively (§2.1).

    Messages over EXIT_MATCH_MAX_BYTES are never /exit (see wire/limits.py).
    """
    if len(message) > EXIT_MATCH_MAX_BYTES:
        return False
    return message.decode("utf-8", "replace").strip().lower() == EXIT_COMMAND


# --- deliveries: chat -----------------------------------------------------------------------
def plain_prefix(username: str) -> bytes:
    """The bytes before every plain chat message of ``username``."""
    return username.encode() + PLAIN_SEPARATOR


def framed_prefix(username: str) -> bytes:
    """The bytes before every framed chat message of ``username``."""
    raw = username.encode()
    if not 1 <= len(raw) <= 255:
        raise errors.FieldOutOfRange("username must be 1..255 bytes")
    return bytes((len(raw),)) + raw


def encode_plain_chat(username: str, message: bytes) -> bytes:
    """``username: message``; raise ``DeliveryTooLarge`` over 4094 bytes."""
    return _bounded(plain_prefix(username) + message)


def encode_framed_chat(username: str, message: bytes) -> bytes:
    """``UsernameLen Username Message``; raise ``DeliveryTooLarge`` over 4094 bytes."""
    return _bounded(framed_prefix(username) + message)


def _bounded(data: bytes) -> bytes:
    if len(data) > MAX_DELIVERY_BYTES:
        raise errors.DeliveryTooLarge(f"{len(data) - MAX_DELIVERY_BYTES} bytes over")
    return data


# --- deliveries: notices --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Notice:
    """A server notice. ``user`` for joined/left, ``reason`` for left/disconnected,
    ``over`` (bytes over the limit) for error; ``keys`` for joined in an encrypted room
    (docs/e2e.md §2.3)."""

    event: NoticeEvent
    user: str = ""
    reason: Reason | None = None
    over: int = 0
    keys: PublicKeys | None = None


PLAIN_TEXTS: Final = {
    "joined": "{user} がチャットルームに参加しました",
    "left": "{user} がチャットルームから退出しました",
    "closed": "チャットルームが閉じられました",
    "disconnected_inactive": "しばらく発言しなかったので、チャットルームから退出させました",
    "disconnected": "チャットルームから切断されました",
    "error": "メッセージが長すぎます（{over} バイト超過）",
}
"""The exact notice texts of §2.2 (those the curriculum's reference client reacts to)."""

ENGLISH_TEXTS: Final = {
    "joined": "{user} joined the room",
    "left": "{user} left the room",
    "left_exit": "{user} left the room",
    "left_inactive": "{user} was removed for inactivity",
    "left_send_failures": "{user} was removed: messages to them kept failing",
    "closed": "the room was closed",
    "closed_shutdown": "the server is shutting down",
    "disconnected": "you were disconnected",
    "disconnected_inactive": "you were disconnected for inactivity",
    "disconnected_send_failures": "you were disconnected: messages to you kept failing",
    "error": "message too long ({over} bytes over the limit)",
}
"""The ``text`` of framed notices (§2.3). ``left``, ``closed`` and ``disconnected``
without a reason that has its own entry fall back to the generic text, as PLAIN_TEXTS
does (so a plain ``closed`` stays byte-exact whatever its reason)."""


def _text_key(notice: Notice, table: dict[str, str]) -> str:
    key = notice.event.value
    if notice.reason is not None and f"{key}_{notice.reason.value}" in table:
        key = f"{key}_{notice.reason.value}"
    return key


def encode_plain_notice(notice: Notice) -> bytes:
    """The Japanese text of §2.2 for ``notice``."""
    template = PLAIN_TEXTS[_text_key(notice, PLAIN_TEXTS)]
    return _bounded(template.format(user=notice.user, over=notice.over).encode())


def encode_framed_notice(notice: Notice) -> bytes:
    """``0`` + the JSON object of §2.3 (``over`` is an extension carried by ``error``)."""
    obj: dict[str, Any] = {"event": notice.event.value}
    if notice.event in (NoticeEvent.JOINED, NoticeEvent.LEFT):
        obj["user"] = notice.user
    if notice.reason is not None:
        obj["reason"] = notice.reason.value
    if notice.event is NoticeEvent.ERROR:
        obj["over"] = notice.over
    if notice.keys is not None and notice.event is NoticeEvent.JOINED:
        obj["keys"] = notice.keys.to_json()
    template = ENGLISH_TEXTS[_text_key(notice, ENGLISH_TEXTS)]
    obj["text"] = template.format(user=notice.user, over=notice.over)
    return _bounded(b"\x00" + orjson.dumps(obj))


@dataclass(frozen=True, slots=True)
class FramedChat:
    """A framed chat delivery as a client sees it."""

    username: str
    message: str


_REASONS: Final = {reason.value: reason for reason in Reason}


def decode_framed(data: bytes) -> FramedChat | Notice:
    """Decode an ``ocm1`` delivery or raise one ``RemoteProtocolError`` subclass.

    A ``reason`` this version does not know is read as no reason (a newer server may add
    reasons; the event still tells what happened)."""
    if not data:
        raise errors.TruncatedDatagram("empty delivery")
    if len(data) > MAX_DELIVERY_BYTES:
        raise errors.DatagramTooLarge(f"delivery of {len(data)} bytes")
    first = data[0]
    if first:
        if 1 + first > len(data):
            raise errors.TruncatedDatagram("username past the end")
        try:
            return FramedChat(data[1 : 1 + first].decode(), data[1 + first :].decode())
        except UnicodeDecodeError:
            raise errors.MessageNotUtf8() from None
    try:
        obj = orjson.loads(data[1:])
    except orjson.JSONDecodeError:
        raise errors.BadNotice("not JSON") from None
    if not isinstance(obj, dict):
        raise errors.BadNotice("not an object")
    try:
        event = NoticeEvent(obj.get("event"))
    except ValueError:
        raise errors.BadNotice(f"event {obj.get('event')!r}") from None
    raw_reason = obj.get("reason")
    if raw_reason is not None and not isinstance(raw_reason, str):
        raise errors.BadNotice("reason must be a string")
    reason = _REASONS.get(raw_reason) if raw_reason is not None else None
    user, over = obj.get("user", ""), obj.get("over", 0)
    if not isinstance(user, str) or type(over) is not int:
        raise errors.BadNotice("user must be a string and over an int")
    keys = None
    if obj.get("keys") is not None:
        try:
            keys = decode_public_keys(obj["keys"])
        except errors.BadKeys as exc:
            raise errors.BadNotice(f"keys: {exc.detail}") from None
    return Notice(event, user, reason, over, keys)


# --- plain deliveries as a client sees them (§2.2) ------------------------------------------
def _plain_pattern(key: str, group: str) -> re.Pattern[str]:
    head, _, tail = PLAIN_TEXTS[key].partition("{" + group + "}")
    return re.compile(re.escape(head) + r"(?P<value>.+?)" + re.escape(tail), re.DOTALL)


_PLAIN_USER_NOTICES: Final = (
    (_plain_pattern("joined", "user"), NoticeEvent.JOINED),
    (_plain_pattern("left", "user"), NoticeEvent.LEFT),
)
_PLAIN_ERROR: Final = _plain_pattern("error", "over")
_PLAIN_FIXED: Final = {
    PLAIN_TEXTS["closed"]: Notice(NoticeEvent.CLOSED),
    PLAIN_TEXTS["disconnected_inactive"]: Notice(NoticeEvent.DISCONNECTED, reason=Reason.INACTIVE),
    PLAIN_TEXTS["disconnected"]: Notice(NoticeEvent.DISCONNECTED),
}
_SEPARATOR: Final = PLAIN_SEPARATOR.decode()


def decode_plain(data: bytes) -> FramedChat | Notice:
    """Read a plain delivery (§2.2): one of the exact notice texts, else ``user: message``
    split at the first ``": "``. Raise ``TruncatedDatagram`` (empty),
    ``DatagramTooLarge`` (over 4094 bytes), ``MessageNotUtf8`` or ``BadDelivery``
    (neither a notice nor chat).

    Plain notices can be forged by a message; framed ones cannot, which is why our client
    asks for ``ocm1``. Because usernames never contain ``": "`` (docs/protocol.md §1.2), a
    joined/left text whose name part holds one is read as the chat it is.
    """
    if not data:
        raise errors.TruncatedDatagram("empty delivery")
    if len(data) > MAX_DELIVERY_BYTES:
        raise errors.DatagramTooLarge(f"delivery of {len(data)} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.MessageNotUtf8() from None
    fixed = _PLAIN_FIXED.get(text)
    if fixed is not None:
        return fixed
    for pattern, event in _PLAIN_USER_NOTICES:
        match = pattern.fullmatch(text)
        if match and _SEPARATOR not in match["value"]:
            return Notice(event, user=match["value"])
    match = _PLAIN_ERROR.fullmatch(text)
    if match and match["value"].isdigit():
        return Notice(NoticeEvent.ERROR, over=int(match["value"]))
    user, sep, message = text.partition(_SEPARATOR)
    if not sep or not user:
        raise errors.BadDelivery(text[:40])
    return FramedChat(user, message)


def decode_delivery(data: bytes, framing: Framing) -> FramedChat | Notice:
    """A room delivery in the framing the server granted (``decode_plain`` or
    ``decode_framed``); raise one ``RemoteProtocolError`` subclass if it is malformed."""
    if framing is Framing.PLAIN:
        return decode_plain(data)
    return decode_framed(data)
