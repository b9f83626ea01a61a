"""One TCRP connection as a sans-IO state machine (h11-style), server side.

Feed bytes with ``receive_data`` (``b""`` means the peer closed), pull events with
``next_event``, answer with ``send_ok`` / ``send_error`` which return the bytes to write.
States and their transitions are one table; a transition not in it raises
``LocalProtocolError`` (h11 ``_state.py``, "Rule 1").

    AWAIT_REQUEST --request--> HANDLING --ok--> AWAIT_REGISTRATION --port/close--> CLOSED
          |                       |
          +---defect/close--------+--error / members answer (Operation 3)---------> CLOSED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from wire import errors
from wire.codes import Status
from wire.e2e import MemberInfo
from wire.limits import REGISTRATION_BYTES
from wire.tcrp import (
    NEED_DATA,
    Details,
    FrameReader,
    MembersRequest,
    Request,
    Role,
    _NeedData,
    encode_complete,
    encode_error,
    encode_members_ok,
    encode_ok,
)


class SessionState(enum.Enum):
    AWAIT_REQUEST = "await_request"  # reading the header, room name and payload
    HANDLING = "handling"  # the request is with the registry / worker
    AWAIT_REGISTRATION = "await_registration"  # State 2 sent; maybe a 2-byte UDP port
    CLOSED = "closed"  # nothing more to read or send


_TRANSITIONS: Final = {
    (SessionState.AWAIT_REQUEST, "request"): SessionState.HANDLING,
    (SessionState.AWAIT_REQUEST, "reject"): SessionState.CLOSED,
    (SessionState.AWAIT_REQUEST, "close"): SessionState.CLOSED,
    (SessionState.HANDLING, "ok"): SessionState.AWAIT_REGISTRATION,
    (SessionState.HANDLING, "error"): SessionState.CLOSED,
    (SessionState.HANDLING, "members"): SessionState.CLOSED,  # State 1 only, no State 2
    (SessionState.HANDLING, "close"): SessionState.HANDLING,  # still answer; write fails
    (SessionState.AWAIT_REGISTRATION, "registration"): SessionState.CLOSED,
    (SessionState.AWAIT_REGISTRATION, "close"): SessionState.CLOSED,
}


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """The request broke the protocol: answer ``status`` with ``reason`` and close."""

    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class Registration:
    """The client's UDP port after State 2, or None if it sent nothing usable."""

    port: int | None


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed before its request was whole (no answer is due)."""


Event = Request | MembersRequest | RequestRejected | Registration | ConnectionClosed | _NeedData
_AFTER_KEEP: Final = REGISTRATION_BYTES + 1
"""Bytes kept after a request: enough to tell "exactly 2" from "more than 2" (§1.4)."""


class Session:
    def __init__(self, max_payload: int) -> None:
        self.state = SessionState.AWAIT_REQUEST
        self._reader = FrameReader(Role.SERVER, max_payload)
        self._after = bytearray()
        self._eof = False
        self.operation = 0
        self.room_raw = b""

    def _transition(self, event: str) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise errors.LocalProtocolError(f"{event!r} in state {self.state.value}") from None

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` when it closed. Then call ``next_event()``."""
        if not data:
            self._eof = True
        elif self.state is SessionState.AWAIT_REQUEST:
            self._reader.receive_data(data)
        elif len(self._after) <= REGISTRATION_BYTES:  # more is "more than 2": stop storing
            self._after += data[: _AFTER_KEEP - len(self._after)]

    def next_event(self) -> Event:
        state = self.state
        if state is SessionState.AWAIT_REQUEST:
            return self._next_request()
        if state is SessionState.AWAIT_REGISTRATION:
            return self._next_registration()
        return NEED_DATA

    def _next_request(self) -> Event:
        reader = self._reader
        try:
            event = reader.next_event()
        except errors.ProtocolError as exc:
            self.operation, self.room_raw = reader.operation, reader.room_raw
            self._transition("reject")
            return RequestRejected(exc.status, str(exc))
        self.operation, self.room_raw = reader.operation, reader.room_raw
        if isinstance(event, MembersRequest):
            self._transition("request")
            self._reader = FrameReader(Role.SERVER, 0)
            return event
        if isinstance(event, Request):
            self._transition("request")
            self._after += reader.trailing[:_AFTER_KEEP]
            # Drop the reader's copy of whatever followed the request: a client must not
            # make us hold a whole read chunk per connection while its
            # request waits for a password check or a restarting worker.
            self._reader = FrameReader(Role.SERVER, 0)
            return event
        if self._eof:
            self._transition("close")
            return ConnectionClosed()
        return NEED_DATA

    def _next_registration(self) -> Event:
        after = self._after
        if len(after) > REGISTRATION_BYTES or (self._eof and len(after) != REGISTRATION_BYTES):
            self._transition("registration")
            return Registration(None)
        if len(after) == REGISTRATION_BYTES:
            self._transition("registration")
            port = int.from_bytes(after, "big")
            return Registration(port or None)
        return NEED_DATA

    def timeout(self) -> Registration | None:
        """The registration window passed: close without registering."""
        if self.state is SessionState.AWAIT_REGISTRATION:
            self._transition("registration")
            return Registration(None)
        return None

    def send_ok(self, details: Details, token: bytes) -> bytes:
        """State 1 (OK, details) and State 2 (token), as one write."""
        self._transition("ok")
        return (encode_ok(self.operation, self.room_raw, details)
                + encode_complete(self.operation, self.room_raw, token))

    def send_members(self, members: tuple[MemberInfo, ...]) -> bytes:
        """The OK answer to Operation 3 (docs/e2e.md §2.4); the connection closes after it."""
        self._transition("members")
        return encode_members_ok(self.room_raw, members)

    def send_error(self, status: Status, reason: str) -> bytes:
        """State 1 with an error; the connection closes after it."""
        if self.state is SessionState.HANDLING:
            self._transition("error")
        return encode_error(self.operation, self.room_raw, status, reason)
