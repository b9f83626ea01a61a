"""The desktop client's state, without Qt: what the widgets show, as plain typed values.

- ``ConnectRequest``: everything the connect screen gathered (one frozen value).
- ``refusal``: which connect-screen field (``client.refusals.Field``) an error belongs to, and the
  plain-words text shown next to it.
- ``Entry`` / ``Scrollback``: every line since joining, with its receive time.
- ``Unread``: the count shown in the window title.
- ``byte_count``: the input's size against the room's ``max_message``.
- ``Member`` / ``member_rows``: the member list, from the server's (TCRP Operation 3),
  with the host marked and, in an encrypted room, each key's fingerprint and trust.
- ``sender_rgb``: the colour of a sender, the same as ``ocm-chat``'s xterm colour.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from client import render
from client.e2e.identity import fingerprint
from client.keystore import Trust
from client.refusals import Field, refusal_parts
from client.render import Kind, Line
from wire import limits
from wire.codes import Operation, Status
from wire.e2e import MemberInfo

# --- connect screen ---------------------------------------------------------------------------
DEFAULT_SERVER: Final = "127.0.0.1"
DEFAULT_TCP_PORT: Final = limits.DEFAULT_TCP_PORT
DEFAULT_TLS_PORT: Final = limits.DEFAULT_TLS_PORT
"""The server's default port for TCRP over TLS (``ocm-control --tls-port``)."""
MAX_RECENT: Final = 10
"""Recent servers, names and rooms remembered (each list, in QSettings)."""


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What the user asked for on the connect screen."""

    host: str
    port: int
    operation: Operation
    room: str
    username: str
    password: str | None = None  # None or "": no password
    tls: bool = False  # TCRP inside TLS, the server's certificate verified
    encrypted: bool = False  # create an end-to-end encrypted room (docs/e2e.md)
    ca_file: str | None = None  # with tls: trust this CA (PEM) instead of the system's

    def again(self, room_gone: bool) -> ConnectRequest:
        """The request that gets back in after the chat ended: create the room anew if it
        is gone (closed, or we hosted it), else join it again."""
        operation = Operation.CREATE if room_gone else Operation.JOIN
        return ConnectRequest(self.host, self.port, operation, self.room, self.username,
                              self.password, self.tls, self.encrypted, self.ca_file)


def refusal(status: Status | int, sent_password: bool, server_error: str = "", *,
            room: str, user: str) -> tuple[Field, str]:
    """Where and in what words to show a refusal from the server: the terminal's words
    (``client.refusals``) as sentences."""
    entry, what, todo = refusal_parts(status, render.sanitize(server_error.strip()),
                                      render.sanitize(room), render.sanitize_name(user),
                                      sent_password)
    return entry.field, _sentence(what) + (f" {_sentence(todo)}" if todo else "")


def unreachable_text(detail: str, tls: bool = False, reached: bool = False) -> str:
    """The server field's error when the TCRP exchange failed (``JoinFailed``);
    ``reached``: the server answered, but not as asked (``NoEncryptedRooms``)."""
    if reached:
        return f"{detail[:1].upper()}{detail[1:]}."
    if tls:  # the detail names the cause and what to do (``client.joinflow``)
        return f"No secure connection: {detail}."
    return f"Server unreachable: {detail}"


def validate(host: str, username: str, room: str, password: str) -> dict[Field, str]:
    """Problems the server would refuse anyway, found before connecting (field -> text)."""
    problems: dict[Field, str] = {}
    if not host.strip():
        problems[Field.SERVER] = "Enter the server's name or address."
    if problem := render.check_username(username):
        problems[Field.NAME] = _sentence(problem)
    if problem := render.check_room(room):
        problems[Field.ROOM] = _sentence(problem)
    if len(password.encode()) > 255:
        problems[Field.PASSWORD] = "The password is longer than 255 bytes."
    return problems


def _sentence(text: str) -> str:
    """``text`` as a sentence: capital first letter, one full stop."""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def remember(recent: list[str], value: str) -> list[str]:
    """``recent`` with ``value`` moved to the front, at most ``MAX_RECENT`` long."""
    if not value:
        return recent[:MAX_RECENT]
    return [value, *(item for item in recent if item != value)][:MAX_RECENT]


# --- the room ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Entry:
    """One scrollback line: a ``render.Line`` (already sanitised) and when it arrived."""

    line: Line
    clock: str  # local HH:MM
    day: str = ""  # local date, ISO (YYYY-MM-DD); "" for "today"

    @property
    def is_chat(self) -> bool:
        return self.line.kind in (Kind.CHAT, Kind.OWN)

    def transcript(self, text: str | None = None) -> str:
        """The line as a transcript (Save transcript…) and the tests read it; ``text``
        instead of the line's own (a part of it, when copying a selection)."""
        line = self.line
        text = line.text if text is None else text
        if line.kind is Kind.OWN:
            return f"{self.clock}  {line.user} (you): {text}"
        if line.kind is Kind.CHAT:
            return f"{self.clock}  {line.user}: {text}"
        if line.kind is Kind.WARNING:
            return f"{self.clock}  ⚠ {text}"
        return f"{self.clock}  — {text}"


GROUP_GAP_MINUTES: Final = 5
"""A message more than this many minutes after the previous one of the same sender
starts a new group (name and avatar shown again)."""


def _minutes(clock: str) -> int:
    hours, _, minutes = clock.partition(":")
    return int(hours) * 60 + int(minutes) if hours.isdigit() and minutes.isdigit() else 0


def starts_group(previous: Entry | None, entry: Entry) -> bool:
    """Whether ``entry`` (a chat line) shows its sender's name and avatar: the first
    message, another sender, after a notice, on another day, or after a pause."""
    if previous is None or not previous.is_chat or not entry.is_chat:
        return True
    if previous.line.user != entry.line.user or previous.line.kind is not entry.line.kind:
        return True
    if previous.day != entry.day:
        return True
    return abs(_minutes(entry.clock) - _minutes(previous.clock)) > GROUP_GAP_MINUTES


_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
                    "Sunday")
_MONTHS: Final = ("January", "February", "March", "April", "May", "June", "July", "August",
                  "September", "October", "November", "December")


def day_label(day: str, today: str) -> str:
    """A day separator: ``Today``, ``Yesterday`` or ``Monday 7 December 2026``."""
    try:
        date = datetime.date.fromisoformat(day)
        now = datetime.date.fromisoformat(today)
    except ValueError:
        return day
    if date == now:
        return "Today"
    if date == now - datetime.timedelta(days=1):
        return "Yesterday"
    return f"{_WEEKDAYS[date.weekday()]} {date.day} {_MONTHS[date.month - 1]} {date.year}"


def initials(name: str) -> str:
    """What an avatar shows: the first letter of the first two words, upper case."""
    words = [word for word in name.replace("_", " ").replace("-", " ").split() if word]
    if not words:
        return "?"
    letters = words[0][0] + (words[1][0] if len(words) > 1 else "")
    return letters.upper()


_LINK = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'\\]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""


def find_links(text: str) -> list[tuple[int, int, str]]:
    """Web links in ``text``: ``(start, end, url)``, trailing punctuation left out,
    ``www.`` links given ``https://``. Only http(s): nothing else is ever opened."""
    links = []
    for match in _LINK.finditer(text):
        start, end = match.span()
        while end > start and text[end - 1] in _TRAILING:
            if text[end - 1] == ")" and text[start:end].count("(") >= text[start:end].count(")"):
                break
            end -= 1
        url = text[start:end]
        if url.lower().startswith("www."):
            url = "https://" + url
        links.append((start, end, url))
    return links


def shown_text(text: str) -> str:
    """A message as the window shows it: the newline escape (``\\x0a``) of a
    multi-line message as a line break; every other escape stays visible."""
    return text.replace("\\x0a", "\n")


Position = tuple[int, int]
"""A place in the conversation: (entry index, code point offset in its ``shown_text``)."""


def selection_text(entries: Sequence[Entry], anchor: Position, focus: Position) -> str:
    """What copying the selection from ``anchor`` to ``focus`` (either order) gives as
    plain text: inside one message the characters selected; across several, one line per
    entry as in a transcript (time, sender), the first and last cut where the selection
    begins and ends."""
    start, end = min(anchor, focus), max(anchor, focus)
    if start[0] == end[0]:
        return shown_text(entries[start[0]].line.text)[start[1]:end[1]]
    lines = []
    for index in range(start[0], end[0] + 1):
        entry = entries[index]
        text = shown_text(entry.line.text)
        low = start[1] if index == start[0] else 0
        high = end[1] if index == end[0] else len(text)
        if low < high or index not in (start[0], end[0]):
            lines.append(entry.transcript(text[low:high]))
    return "\n".join(lines)


@dataclass(slots=True)
class Scrollback:
    """Every line since joining, oldest first. Unbounded on purpose (the room window
    promises every message since joining): 10,000 lines of 4 KiB chat are ~40 MiB."""

    entries: list[Entry] = field(default_factory=list)

    def append(self, entry: Entry) -> int:
        """Add ``entry``; return its index."""
        self.entries.append(entry)
        return len(self.entries) - 1

    def __len__(self) -> int:
        return len(self.entries)


@dataclass(slots=True)
class Unread:
    """Chat lines that arrived while the window was not focused or scrolled up."""

    count: int = 0

    def arrived(self, entry: Entry, seen: bool) -> bool:
        """Count ``entry`` unless ``seen``; return whether it was counted."""
        if seen or entry.line.kind is not Kind.CHAT:
            return False
        self.count += 1
        return True

    def clear(self) -> None:
        self.count = 0


def security_text(encrypted: bool, tls: bool) -> str:
    """The room header's note: end-to-end encrypted or not, joined over TLS or not."""
    return (("end-to-end encrypted" if encrypted else "not encrypted")
            + (" · TLS" if tls else " · no TLS"))


SEND_STATE_MARKS: Final = {"pending": "🕓", "failed": "⚠ not delivered",
                            "refused": "⚠ refused"}
"""Beside our message's time, by ``client.link.SendState`` value (delivered: nothing)."""


def resumed_text(lost: int) -> str:
    """The banner after a resume: everything came back, or how much did not."""
    if lost <= 0:
        return "Reconnected: everything recovered"
    return f"Reconnected: {lost} message{'s' if lost != 1 else ''} could not be recovered"


def window_title(room: str | None, unread: int) -> str:
    """``(3) room — OCM``: the unread count first, so it shows in a narrow task bar."""
    base = "OCM" if room is None else f"{render.sanitize(room)} — OCM"
    return f"({unread}) {base}" if unread else base


@dataclass(frozen=True, slots=True)
class ByteCount:
    used: int
    limit: int

    @property
    def over(self) -> bool:
        return self.used > self.limit

    def label(self) -> str:
        return f"{self.used} / {self.limit} bytes"


def byte_count(text: str, limit: int) -> ByteCount:
    """How much of the room's message limit ``text`` uses (UTF-8 bytes, as sent)."""
    return ByteCount(len(text.encode("utf-8", "replace")), limit)


@dataclass(frozen=True, slots=True)
class Member:
    """A member-list row: the name, the host mark, and in an encrypted room the key's
    fingerprint and what we know of it (``trust``; ``None`` for our own key)."""

    name: str
    host: bool = False
    me: bool = False
    fingerprint: str | None = None  # encrypted rooms: the member's key fingerprint
    trust: Trust | None = None

    @property
    def verified(self) -> bool:
        return self.trust is Trust.VERIFIED

    def label(self) -> str:
        """``alice (host, you)``, as ``/who`` says it."""
        return render.member_label(self.name, self.host, self.me)

    def row_text(self) -> str:
        """The member list's one row: ``alice (you) ★ 🔒 ✔`` (host, has a key, verified
        or ⚠ key changed)."""
        badges = [" (you)" if self.me else ""]
        if self.host:
            badges.append(" ★")
        if self.fingerprint is not None:
            badges.append(" 🔒")
        if self.trust is Trust.VERIFIED:
            badges.append(" ✔")
        elif self.trust is Trust.CHANGED:
            badges.append(" ⚠")
        return render.sanitize_name(self.name) + "".join(badges)

    def details(self) -> str:
        """The side panel and tooltip: role, and in an encrypted room the fingerprint
        (two lines of four groups) and what we know of the key."""
        role = ", ".join(part for part in ("host" if self.host else "",
                                           "you" if self.me else "") if part)
        text = render.sanitize_name(self.name) + (f" ({role})" if role else "")
        if self.fingerprint is not None:
            text += f"\nkey fingerprint:\n{group_lines(self.fingerprint)}\n{self.trust_text()}"
        return text

    def trust_text(self) -> str:
        """How the row names the key's state."""
        if self.me:
            return "your key"
        return {Trust.VERIFIED: "✔ verified", Trust.CHANGED: "⚠ key changed",
                Trust.UNVERIFIED: "unverified", None: ""}[self.trust]


GROUPS_PER_LINE: Final = 4
"""Digit groups per line: a fingerprint's 8 groups of 4 hex digits on two lines (it fits
a narrow member list), a safety number's 12 groups of 5 digits on three."""


def group_lines(groups: str, per_line: int = GROUPS_PER_LINE) -> str:
    """``groups`` (separated by spaces) on lines of ``per_line``, for reading aloud."""
    parts = groups.split()
    return "\n".join(" ".join(parts[i:i + per_line]) for i in range(0, len(parts), per_line))


def member_rows(members: tuple[MemberInfo, ...], me: str,
                trust: Callable[[str], Trust] | None) -> list[Member]:
    """The rows for ``members`` (the server's order: the host first). ``trust``: the
    encrypted room's ``E2ERoomLink.trust_of``; ``None`` in a plain room."""
    rows = []
    for member in members:
        mine = member.user == me
        fp = fingerprint(member.keys) if member.keys is not None and trust is not None \
            else None
        rows.append(Member(member.user, member.host, mine, fp,
                           None if mine or fp is None or trust is None
                           else trust(member.user)))
    return rows


TLS_AVAILABLE: Final = True
"""TCRP over TLS: the connect screen's toggle (the server must serve it: --tls-cert)."""


# --- colours ----------------------------------------------------------------------------------
_CUBE_LEVELS: Final = (0, 95, 135, 175, 215, 255)


def xterm_rgb(index: int) -> tuple[int, int, int]:
    """The RGB of an xterm-256 colour in the 6x6x6 cube (16..231) or the grey ramp."""
    if index >= 232:
        grey = 8 + 10 * (index - 232)
        return grey, grey, grey
    index -= 16
    return (_CUBE_LEVELS[index // 36], _CUBE_LEVELS[(index // 6) % 6], _CUBE_LEVELS[index % 6])


DARK_LIFT: Final = 0.45
"""On a dark background, sender colours move this far towards white: the xterm mid-tones
(dark blue, purple) are too dim on near-black otherwise."""


def sender_rgb(name: str, dark: bool = False) -> tuple[int, int, int]:
    """The colour of ``name``: the one ``ocm-chat`` uses, so both clients agree; lifted
    towards white on a dark background (``dark``)."""
    red, green, blue = xterm_rgb(render.user_colour(name))
    if not dark:
        return red, green, blue
    return (round(red + (255 - red) * DARK_LIFT), round(green + (255 - green) * DARK_LIFT),
            round(blue + (255 - blue) * DARK_LIFT))


def is_dark(rgb: tuple[int, int, int]) -> bool:
    """Whether a background colour is dark (relative luminance below one half)."""
    red, green, blue = rgb
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue < 128
