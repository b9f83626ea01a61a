"""The client side of one TCRP exchange, sans-IO (docs/protocol.md §1; h11's ``Connection``).

One ``ClientExchange`` per TCP connection. Call ``send_request(request)`` (a
``wire.tcrp.Request``; or ``send_raw_request(frame)``) and write the bytes it returns;
feed everything read from the socket to ``receive_data`` (``b""`` when the server
closed, or reset, the connection); call ``next_event()`` until it returns
``NEED_DATA``. The events, in order:

- ``Response`` (State 1): on OK a ``Complete`` follows; on an error status the server
  closes, so a ``ConnectionClosed`` follows.
- ``Complete`` (State 2, the token): now ``send_registration(udp_port)`` may give the 2
  registration bytes (§1.4); the server then closes (``ConnectionClosed``).

The state lives in ``ExchangeState`` and one transition table: a remote step the table
lacks raises a ``RemoteProtocolError`` (``UnexpectedFrame``, ``PrematureClose``), a local
one an ``ExchangeMisuse``. After an error is raised the exchange is ``FAILED`` and every
further call raises ``ExchangeMisuse``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from wire import errors
from wire.codes import Status
from wire.limits import DEFAULT_MAX_PAYLOAD_BYTES, TCRP_HEADER_BYTES
from wire.tcrp import (
    NEED_DATA,
    Complete,
    FrameReader,
    Request,
    Response,
    Role,
    _NeedData,
    encode_registration,
    encode_request,
)


class ExchangeState(enum.Enum):
    SEND_REQUEST = "send_request"  # nothing sent yet
    AWAIT_RESPONSE = "await_response"  # request sent; State 1 next
    AWAIT_COMPLETE = "await_complete"  # OK received; State 2 (the token) next
    JOINED = "joined"  # token received; the registration may be sent
    REGISTERED = "registered"  # registration sent; the server closes next
    REFUSED = "refused"  # an error status received; the server closes next
    CLOSED = "closed"  # the server closed where the protocol lets it (final)
    FAILED = "failed"  # a ProtocolError was raised (final)


class _Step(enum.Enum):
    REQUEST = "request"  # local: the request was sent
    OK = "ok"  # remote: State 1 with status OK
    REFUSAL = "refusal"  # remote: State 1 with an error status
    COMPLETE = "complete"  # remote: State 2
    REGISTER = "register"  # local: the registration bytes were sent
    CLOSE = "close"  # remote: end of stream


_S = ExchangeState
_TRANSITIONS: Final[dict[tuple[ExchangeState, _Step], ExchangeState]] = {
    (_S.SEND_REQUEST, _Step.REQUEST): _S.AWAIT_RESPONSE,
    (_S.AWAIT_RESPONSE, _Step.OK): _S.AWAIT_COMPLETE,
    (_S.AWAIT_RESPONSE, _Step.REFUSAL): _S.REFUSED,
    (_S.AWAIT_COMPLETE, _Step.COMPLETE): _S.JOINED,
    (_S.JOINED, _Step.REGISTER): _S.REGISTERED,
    (_S.JOINED, _Step.CLOSE): _S.CLOSED,
    (_S.REGISTERED, _Step.CLOSE): _S.CLOSED,
    (_S.REFUSED, _Step.CLOSE): _S.CLOSED,
}
"""Every allowed step; anything else is a protocol error (h11 ``_state.py``)."""

_READING: Final = frozenset({_S.AWAIT_RESPONSE, _S.AWAIT_COMPLETE})
"""States in which the server owes us a frame."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The server closed the connection where the protocol allows it: after an error
    response, or after the token (with or without the registration)."""


class ClientExchange:
    """One TCRP request and its answer, client side; see the module docstring."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self._reader = FrameReader(Role.CLIENT, max_payload)
        self._state = ExchangeState.SEND_REQUEST
        self._echo: tuple[int, bytes] | None = None
        self._eof = False
        self.response: Response | None = None
        """The State 1 answer, once received."""
        self.complete: Complete | None = None
        """The State 2 frame (the token), once received."""

    @property
    def state(self) -> ExchangeState:
        return self._state

    # --- what we send ------------------------------------------------------------------
    def send_request(self, request: Request) -> bytes:
        """The bytes of ``request`` as JSON (§1.2, with ``keys``/``e2e`` of docs/e2e.md
        §2.1); raise ``FieldOutOfRange`` if the room name does not fit, ``ExchangeMisuse``
        if a request was already sent."""
        self._check_local(_Step.REQUEST)
        return self.send_raw_request(encode_request(request))

    def send_raw_request(self, frame: bytes) -> bytes:
        """Send ``frame`` as the request, whatever it holds (legacy payloads, tests of
        malformed requests); it is returned unchanged. When it has a whole header and
        room name, an OK answer must echo its Operation and room name (§1.1)."""
        self._step(_Step.REQUEST)
        size = TCRP_HEADER_BYTES + frame[0] if frame else 0
        if frame and len(frame) >= size:
            self._echo = (frame[1], frame[TCRP_HEADER_BYTES:size])
        return frame

    def send_registration(self, port: int) -> bytes:
        """The 2 bytes that register ``port`` as our UDP port (§1.4), after ``Complete``;
        raise ``FieldOutOfRange`` for a port outside 1..65535."""
        self._check_local(_Step.REGISTER)
        data = encode_registration(port)
        self._step(_Step.REGISTER)
        return data

    # --- what we receive ---------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Bytes read from the server; ``b""`` means it closed (a reset counts as a close,
        §1.1). Then call ``next_event()``."""
        if self._eof or self._state is ExchangeState.FAILED:
            raise errors.ExchangeMisuse("data after the end of the stream")
        if data:
            self._reader.receive_data(data)
        else:
            self._eof = True

    def next_event(self) -> Response | Complete | ConnectionClosed | _NeedData:
        """The next event (see the module docstring) or ``NEED_DATA``; raise one
        ``RemoteProtocolError`` subclass if the server broke the protocol."""
        state = self._state
        if state is ExchangeState.CLOSED:
            return ConnectionClosed()
        if state in (ExchangeState.SEND_REQUEST, ExchangeState.FAILED):
            raise errors.ExchangeMisuse(f"no events in state {state.value}")
        try:
            return self._next_event(state)
        except errors.ProtocolError:
            self._state = ExchangeState.FAILED
            raise

    def _next_event(
        self, state: ExchangeState
    ) -> Response | Complete | ConnectionClosed | _NeedData:
        if state not in _READING:
            if self._reader.trailing:
                raise errors.UnexpectedFrame(f"bytes after the answer ({state.value})")
            if not self._eof:
                return NEED_DATA
            self._step(_Step.CLOSE)
            return ConnectionClosed()
        event = self._reader.next_event()
        if event is NEED_DATA:
            if self._eof:
                what = "the response" if state is ExchangeState.AWAIT_RESPONSE else "the token"
                raise errors.PrematureClose(f"before {what}")
            return NEED_DATA
        if isinstance(event, Response):
            if event.status == Status.OK:
                self._check_echo(event.operation, event.room_raw)
                self._step(_Step.OK)
            else:
                self._step(_Step.REFUSAL)
            self.response = event
            return event
        assert isinstance(event, Complete)  # a client-side reader yields nothing else
        self._check_echo(event.operation, event.room_raw)
        self._step(_Step.COMPLETE)
        self.complete = event
        return event

    # --- the state machine ------------------------------------------------------------------
    def _check_echo(self, operation: int, room_raw: bytes) -> None:
        if self._echo is not None and self._echo != (operation, room_raw):
            raise errors.UnexpectedFrame("the answer does not echo our Operation and room")

    def _check_local(self, step: _Step) -> None:
        if (self._state, step) not in _TRANSITIONS:
            raise errors.ExchangeMisuse(f"cannot {step.value} in state {self._state.value}")

    def _step(self, step: _Step) -> None:
        new = _TRANSITIONS.get((self._state, step))
        if new is None:
            if step in (_Step.REQUEST, _Step.REGISTER):
                raise errors.ExchangeMisuse(
                    f"cannot {step.value} in state {self._state.value}")
            what = "a token before the response" if step is _Step.COMPLETE else "a second response"
            raise errors.UnexpectedFrame(what)
        self._state = new


__all__ = [
    "NEED_DATA",
    "ClientExchange",
    "Complete",
    "ConnectionClosed",
    "ExchangeState",
    "Response",
]
