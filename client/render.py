"""What ``ocm-chat`` shows: deliveries -> display lines (pure; no I/O, no clock).

A delivery (framed ``ocm1`` or plain text, docs/protocol.md §2.2/§2.3, or a Stage 1 datagram)
becomes a ``Line``; ``Line.plain()`` is the deterministic script-mode text
(``name: text`` / ``* notice``) and ``format_ansi`` the interactive one (HH:MM timestamp,
a stable colour per user, notices in their own style). Every piece of received text goes
through ``sanitize`` first, so a peer cannot move the cursor, retitle the terminal or
reorder text with escape sequences or bidi controls.
"""

from __future__ import annotations

import enum
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Final

from client.refusals import PASSWORD_NEEDED, refusal_parts
from wire import chat, errors
from wire.chat import FramedChat, Notice
from wire.codes import Framing, NoticeEvent, Reason, Status
from wire.limits import MAX_ROOM_NAME_BYTES, MAX_USERNAME_BYTES
from wire.names import REFUSED_CATEGORIES, username_problem
from wire.stage1 import decode_stage1

# --- sanitising -------------------------------------------------------------------------------
_BIDI_CONTROLS: Final = (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
"""Embedding/override/isolate controls: they can visually reorder the rest of a line
("Trojan Source", CVE-2021-42574), so they are shown, not obeyed."""

_SANITIZE_TABLE: Final[dict[int, str]] = {
    **{code: f"\\x{code:02x}" for code in range(0x00, 0x20)},  # C0, ESC included
    **{code: f"\\x{code:02x}" for code in range(0x7F, 0xA0)},  # DEL and C1 (CSI = 0x9b)
    **{code: f"\\u{code:04x}" for code in _BIDI_CONTROLS},
    0x2028: "\\u2028",  # LINE SEPARATOR: some terminals break the line
    0x2029: "\\u2029",  # PARAGRAPH SEPARATOR
}


def sanitize(text: str) -> str:
    """``text`` with every C0/C1 control, DEL, bidi control and line/paragraph separator
    replaced by a visible escape (ESC -> ``\\x1b``), so received text can never drive the
    terminal."""
    return text.translate(_SANITIZE_TABLE)


def _escape_hidden(ch: str) -> str:
    """``ch``, or its escape if a username may not contain it (wire/names.py)."""
    if unicodedata.category(ch) not in REFUSED_CATEGORIES:
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def sanitize_name(name: str) -> str:
    """A user name as shown: like ``sanitize``, and every other invisible format
    character (zero-width space/joiner, BOM, soft hyphen, direction marks...) escaped
    too, so that ``al\\u200bice`` can never pass for ``alice``."""
    if name.isprintable():  # the common case: none of those characters
        return name
    return "".join(map(_escape_hidden, name))


# --- colours ----------------------------------------------------------------------------------
USER_COLOURS: Final = (25, 28, 31, 33, 37, 64, 70, 94, 97, 126, 130, 133, 136, 166, 169, 172)
"""xterm-256 mid-tone colours, readable on dark and light backgrounds alike."""


def user_colour(name: str) -> int:
    """The xterm-256 colour of ``name``: the same in every run and on every machine
    (CRC-32 of the UTF-8 name; Python's ``hash`` is salted per process)."""
    return USER_COLOURS[zlib.crc32(name.encode("utf-8", "replace")) % len(USER_COLOURS)]


# --- lines ------------------------------------------------------------------------------------
class Kind(enum.Enum):
    CHAT = "chat"  # someone else's message
    OWN = "own"  # a message we sent (interactive mode echoes it in our colour)
    NOTICE = "notice"  # a server notice or a status line of ours
    WARNING = "warning"  # something went wrong: refused, not delivered, disconnected


@dataclass(frozen=True, slots=True)
class Line:
    """One display line. ``user``/``text`` are already sanitised."""

    kind: Kind
    text: str
    user: str = ""

    def plain(self) -> str:
        """The script-mode line: ``name: text`` for chat, ``* text`` otherwise."""
        if self.kind in (Kind.CHAT, Kind.OWN):
            return f"{self.user}: {self.text}"
        return f"* {self.text}"


def chat_line(user: str, text: str, own: bool = False) -> Line:
    return Line(Kind.OWN if own else Kind.CHAT, sanitize(text), sanitize_name(user))


def notice_line(text: str) -> Line:
    return Line(Kind.NOTICE, text)


def warning_line(text: str) -> Line:
    return Line(Kind.WARNING, text)


_LEFT_TEXTS: Final = {
    None: "{user} left the room",
    Reason.SHUTDOWN: "{user} left the room",
    Reason.EXIT: "{user} left the room",
    Reason.INACTIVE: "{user} was removed for inactivity",
    Reason.SEND_FAILURES: "{user} was removed: messages to them kept failing",
}
_DISCONNECTED_TEXTS: Final = {
    None: "you were disconnected by the server",
    Reason.SHUTDOWN: "you were disconnected: the server is shutting down",
    Reason.EXIT: "you were disconnected by the server",
    Reason.INACTIVE: "you were disconnected: nothing was sent for too long",
    Reason.SEND_FAILURES: "you were disconnected: messages to you kept failing",
}


def notice_text(notice: Notice) -> str:
    """An English sentence for ``notice`` (the user name sanitised)."""
    user = sanitize_name(notice.user)
    event = notice.event
    if event is NoticeEvent.JOINED:
        return f"{user} joined the room"
    if event is NoticeEvent.LEFT:
        return _LEFT_TEXTS[notice.reason].format(user=user)
    if event is NoticeEvent.CLOSED:
        if notice.reason is Reason.SHUTDOWN:
            return "the server is shutting down"
        return "the room was closed"
    if event is NoticeEvent.DISCONNECTED:
        return _DISCONNECTED_TEXTS[notice.reason]
    return f"your last message was not delivered: it is {notice.over} bytes over the limit"


def member_label(user: str, host: bool, me: bool) -> str:
    """``alice (host, you)``: a member as ``/who`` lists it."""
    marks = [mark for mark, on in (("host", host), ("you", me)) if on]
    name = sanitize_name(user)
    return f"{name} ({', '.join(marks)})" if marks else name


def is_final(notice: Notice) -> bool:
    """``closed`` and ``disconnected`` mean our token is gone (§2.3): the chat is over."""
    return notice.event in (NoticeEvent.CLOSED, NoticeEvent.DISCONNECTED)


def delivery_line(item: FramedChat | Notice) -> Line:
    """The display line of a decoded delivery."""
    if isinstance(item, FramedChat):
        return chat_line(item.username, item.message)
    text = notice_text(item)
    if is_final(item) or item.event is NoticeEvent.ERROR:
        return warning_line(text)
    return notice_line(text)


def ended_explanation(notice: Notice, host: bool) -> str:
    """Why the chat is over, said once the final notice has been shown."""
    if notice.event is NoticeEvent.CLOSED:
        if notice.reason is Reason.SHUTDOWN:
            return "the server is shutting down, so the room is gone"
        return "the host left, so the room is gone"
    if notice.reason is Reason.INACTIVE:
        why = "the server heard nothing from this client for too long"
    elif notice.reason is Reason.SEND_FAILURES:
        why = "the server could not deliver messages to this client"
    else:
        why = "the server removed this client"
    return why + ("; as host, your leaving closed the room" if host else "")


# --- decoding deliveries ----------------------------------------------------------------------
def decode_delivery(data: bytes, framing: Framing) -> FramedChat | Notice | None:
    """A room delivery in the framing the server granted (``wire.chat.decode_delivery``);
    ``None`` if malformed (a bad delivery is dropped, never raised into the event loop)."""
    try:
        return chat.decode_delivery(data, framing)
    except errors.ProtocolError:
        return None


def decode_global(data: bytes) -> FramedChat | None:
    """A Stage 1 relay (§3) as chat, or ``None`` if malformed or a keepalive."""
    try:
        datagram = decode_stage1(data)
    except errors.ProtocolError:
        return None
    if not datagram.message:
        return None
    return FramedChat(datagram.username.decode(), datagram.message.decode())


# --- ANSI -------------------------------------------------------------------------------------
RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_NOTICE_STYLE: Final = "\x1b[36m"  # cyan
_WARNING_STYLE: Final = "\x1b[1;31m"  # bold red


def format_ansi(line: Line, clock: str | None = None, colour: bool = True) -> str:
    """The interactive rendering of ``line``: ``HH:MM name: text`` with the name in its
    colour, notices as ``* text`` in cyan, warnings in red. ``colour=False`` (NO_COLOR)
    gives the same text without any escape sequence."""
    stamp = ""
    if clock is not None:
        stamp = f"{_DIM}{clock}{RESET} " if colour else f"{clock} "
    if line.kind in (Kind.CHAT, Kind.OWN):
        if not colour:
            return f"{stamp}{line.user}: {line.text}"
        weight = "1;" if line.kind is Kind.OWN else ""
        name = f"\x1b[{weight}38;5;{user_colour(line.user)}m{line.user}{RESET}"
        return f"{stamp}{name}: {line.text}"
    if not colour:
        return f"{stamp}* {line.text}"
    style = _WARNING_STYLE if line.kind is Kind.WARNING else _NOTICE_STYLE
    return f"{stamp}{style}* {line.text}{RESET}"


# --- refusals and validation ------------------------------------------------------------------
ROOM_SCOPE: Final = "in this room"
GLOBAL_SCOPE: Final = "in global chat"


def too_long_text(size: int, limit: int, scope: str = ROOM_SCOPE) -> str:
    """Why a message was not sent: over ``limit`` bytes ``scope`` (a room: it would not be
    relayed to everyone, §1.3; Stage 1: the datagram would be over 4096 bytes, §3)."""
    return (
        f"not sent: the message is {size} bytes, the limit {scope} is {limit} bytes "
        f"({size - limit} too many)"
    )


class MessageTooLong(Exception):
    """The message would not be relayed to everyone (over ``max_message``, §1.3); the
    client refuses it locally and sends nothing. ``str()`` shows the limit."""

    def __init__(self, size: int, limit: int, scope: str = ROOM_SCOPE) -> None:
        super().__init__(too_long_text(size, limit, scope))
        self.size = size
        self.limit = limit


def check_length(text: str, limit: int, scope: str = ROOM_SCOPE) -> bytes:
    """``text`` as UTF-8, or raise ``MessageTooLong`` if it is over ``limit`` bytes."""
    raw = text.encode("utf-8", "replace")
    if len(raw) > limit:
        raise MessageTooLong(len(raw), limit, scope)
    return raw


def check_username(name: str) -> str | None:
    """Why the server would refuse ``name`` (§1.2), or ``None`` if it is acceptable."""
    if not name:
        return "the username must not be empty"
    if len(name.encode()) > MAX_USERNAME_BYTES:
        return f"the username is longer than {MAX_USERNAME_BYTES} bytes"
    problem = username_problem(name)
    if problem is not None:
        return f"the username {problem} (shown as {sanitize_name(name)!r})"
    return None


def check_room(room: str) -> str | None:
    """Why ``room`` cannot be sent as a room name, or ``None``."""
    if not room:
        return "the room name must not be empty"
    if len(room.encode()) > MAX_ROOM_NAME_BYTES:
        return f"the room name is longer than {MAX_ROOM_NAME_BYTES} bytes"
    return None


def password_needed_text(room: str) -> str:
    """What the interactive client says before asking for a room's password."""
    return PASSWORD_NEEDED.what.format(room=repr(sanitize(room)))


def refusal_text(status: Status | int, server_error: str, room: str, user: str,
                 sent_password: bool = True, todo: str | None = None) -> str:
    """One line saying why the server refused to let us in (``client.refusals``), with
    its own words when they add something, and what to do (``todo`` replaces the table's).
    ``sent_password=False``: an INVALID_PASSWORD means the room wants one."""
    _, what, table_todo = refusal_parts(status, sanitize(server_error.strip()),
                                        sanitize(room), sanitize_name(user), sent_password)
    todo = table_todo if todo is None else todo
    return f"{what}: {todo}" if todo else what
