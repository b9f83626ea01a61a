"""Wire codes of TCRP (docs/protocol.md §1) as IntEnums, one comment per member."""

from __future__ import annotations

import enum
from typing import Final


class Operation(enum.IntEnum):
    CREATE = 1  # create a room; the creator becomes its host
    JOIN = 2  # join a live room
    MEMBERS = 3  # list a room's members (docs/e2e.md §2.4); answered by State 1 only


class State(enum.IntEnum):
    REQUEST = 0  # client -> server, the only state a client may send
    RESPONSE = 1  # server -> client, status byte + JSON, exactly one per request
    COMPLETE = 2  # server -> client, the token; follows an OK response


class Status(enum.IntEnum):
    OK = 0  # request accepted; a State 2 frame follows
    ROOM_EXISTS = 1  # create: a live room has that name
    ROOM_NOT_FOUND = 2  # join: no live room has that name
    INVALID_PASSWORD = 3  # join: the password does not match
    INVALID_REQUEST = 4  # malformed header, name, JSON, username
    TOO_LARGE = 5  # payload over --max-payload, or a field over 255 bytes
    USERNAME_TAKEN = 6  # join: a current member of that room has that name
    ROOM_FULL = 7  # the room has --max-members members, host included
    RATE_LIMITED = 8  # too many requests or failed passwords from one IP
    UNAVAILABLE = 9  # no relay worker can take the room, or shutting down
    INTERNAL_ERROR = 255  # anything else; the server logs it and stays up


class Framing(enum.Enum):
    """How the server delivers datagrams to one member (§2.2, §2.3)."""

    PLAIN = "plain"  # UTF-8 text: "user: message", Japanese notices
    OCM1 = "ocm1"  # byte 0 = username length (chat) or 0 (JSON notice)
    OCM1R = "ocm1r"  # ocm1 deliveries numbered in room order, with recovery (wire/reliable.py)

    @property
    def framed(self) -> bool:
        """Deliveries are framed (``ocm1`` or ``ocm1r``), not plain text."""
        return self is not Framing.PLAIN


class NoticeEvent(enum.Enum):
    """The ``event`` of a framed notice (§2.3)."""

    JOINED = "joined"
    LEFT = "left"
    CLOSED = "closed"
    DISCONNECTED = "disconnected"
    ERROR = "error"


class Reason(enum.Enum):
    """Why a member left or was disconnected, or why a room closed (§2.3, §2.4)."""

    EXIT = "exit"  # the member sent /exit
    INACTIVE = "inactive"  # nothing received for --inactivity-timeout seconds
    SEND_FAILURES = "send_failures"  # --max-send-failures consecutive sends failed
    SHUTDOWN = "shutdown"  # on "closed" only: the server is shutting down (SIGTERM)


EVICTION_REASONS: Final = (Reason.EXIT, Reason.INACTIVE, Reason.SEND_FAILURES)
"""The reasons a member leaves a room (the relay counts each); ``SHUTDOWN`` is not one."""
