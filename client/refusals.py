"""Why the server refused a join, in one table that the terminal and the GUI both word from.

Each status has what happened (naming the room and the user where that helps), what to
do about it, and which part of the request it concerns (the GUI shows the text next to
that field). ``refusal_line`` is the terminal's one line, ``refusal_sentences`` the GUI's
sentences; both add the server's own words only where they can say something ours do not (a room
that closed, how many members a full room has, why the server is unavailable), and only
when they do.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from wire.codes import Status


class Field(enum.Enum):
    """The part of the request a refusal (or a local problem) concerns."""

    SERVER = "server"
    NAME = "name"
    ROOM = "room"
    PASSWORD = "password"
    FORM = "form"  # concerns no single field (the GUI shows it under the Connect button)


@dataclass(frozen=True, slots=True)
class Refusal:
    what: str
    """What happened; ``{room}`` and ``{user}`` are filled in quoted."""
    todo: str = ""
    """What the user can do about it, if anything."""
    field: Field = Field.FORM
    server_words: bool = True
    """Whether the server's own words may add something (they only restate some)."""


REFUSALS: Final[dict[Status, Refusal]] = {
    Status.ROOM_EXISTS: Refusal("a room named {room} already exists",
                                "join it, or pick another name", Field.ROOM, False),
    Status.ROOM_NOT_FOUND: Refusal("there is no room named {room}",
                                   "check the name, or create it", Field.ROOM),
    Status.INVALID_PASSWORD: Refusal("wrong password for room {room}", "", Field.PASSWORD,
                                       False),
    Status.INVALID_REQUEST: Refusal("the server refused the request as invalid"),
    Status.TOO_LARGE: Refusal("the request is too large",
                              "names and passwords are 255 bytes at most"),
    Status.USERNAME_TAKEN: Refusal("someone in {room} is already called {user}",
                                   "pick another name", Field.NAME, False),
    Status.ROOM_FULL: Refusal("room {room} is full", "", Field.ROOM),
    Status.RATE_LIMITED: Refusal("too many attempts from this address",
                                 "wait a little and try again", Field.SERVER),
    Status.UNAVAILABLE: Refusal("the server cannot take rooms right now",
                                "try again later", Field.SERVER),
    Status.INTERNAL_ERROR: Refusal("the server hit an internal error", "try again"),
}

PASSWORD_NEEDED: Final = Refusal("room {room} is protected by a password", "enter it",
                                 Field.PASSWORD, False)
"""INVALID_PASSWORD when no password was sent: the room wants one (not a failure)."""

_FILLER: Final = frozenset({"a", "an", "the", "is", "are", "in", "of", "this", "that", "room",
                            "named", "no", "not"})


def refusal_for(status: Status | int, sent_password: bool = True) -> Refusal:
    """The table's entry for ``status`` (an unknown status: the server's words, via
    ``refusal_line``/``refusal_sentences``)."""
    if status == Status.INVALID_PASSWORD and not sent_password:
        return PASSWORD_NEEDED
    known = REFUSALS.get(status) if isinstance(status, Status) else None
    return known or Refusal("the server refused the request ({status})")


def status_name(status: Status | int) -> str:
    return status.name if isinstance(status, Status) else f"status {status}"


def refusal_parts(status: Status | int, server_error: str, room: str, user: str,
                  sent_password: bool = True) -> tuple[Refusal, str, str]:
    """(entry, what happened with the server's words if they add any, what to do).
    ``room``, ``user`` and ``server_error`` must already be safe to show."""
    entry = refusal_for(status, sent_password)
    what = entry.what.format(room=repr(room), user=repr(user), status=status_name(status))
    if server_error and entry.server_words and _adds_something(server_error, what):
        what = f"{what} ({server_error})"
    return entry, what, entry.todo


def _adds_something(words: str, ours: str) -> bool:
    """Whether the server's ``words`` say more than ``ours`` (beyond filler words)."""
    theirs = set(_words(words)) - _FILLER
    return not theirs <= set(_words(ours))


def _words(text: str) -> list[str]:
    return [w.strip("'") for w in re.findall(r"[\w']+", text.lower())]
