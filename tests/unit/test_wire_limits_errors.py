"""wire/errors.py, wire/limits.py and wire/codes.py against docs/protocol.md §1.3 and §6."""

from __future__ import annotations

import pytest

from wire import errors, limits
from wire.codes import EVICTION_REASONS, Framing, NoticeEvent, Operation, Reason, State, Status


def all_subclasses(cls: type[errors.ProtocolError]) -> set[type[errors.ProtocolError]]:
    found: set[type[errors.ProtocolError]] = set()
    for sub in cls.__subclasses__():
        found.add(sub)
        found |= all_subclasses(sub)
    return found


# class -> (status it maps to, reason it is counted under)
STATUS_OF: dict[type[errors.ProtocolError], tuple[Status, str]] = {
    errors.LocalProtocolError: (Status.INTERNAL_ERROR, "malformed"),
    errors.RemoteProtocolError: (Status.INVALID_REQUEST, "malformed"),
    errors.EmptyRoomName: (Status.INVALID_REQUEST, "malformed"),
    errors.UnknownOperation: (Status.INVALID_REQUEST, "malformed"),
    errors.UnexpectedState: (Status.INVALID_REQUEST, "malformed"),
    errors.PayloadTooLarge: (Status.TOO_LARGE, "too_large"),
    errors.RoomNameNotUtf8: (Status.INVALID_REQUEST, "bad_utf8"),
    errors.PayloadNotUtf8: (Status.INVALID_REQUEST, "bad_utf8"),
    errors.BadFieldType: (Status.INVALID_REQUEST, "malformed"),
    errors.MissingUsername: (Status.INVALID_REQUEST, "malformed"),
    errors.FieldTooLong: (Status.TOO_LARGE, "too_large"),
    errors.BadUsername: (Status.INVALID_REQUEST, "malformed"),
    errors.MalformedJson: (Status.INVALID_REQUEST, "malformed"),
    errors.PrematureClose: (Status.INTERNAL_ERROR, "malformed"),
    errors.ExchangeMisuse: (Status.INTERNAL_ERROR, "malformed"),
    errors.UnexpectedFrame: (Status.INTERNAL_ERROR, "malformed"),
    errors.BadResponse: (Status.INTERNAL_ERROR, "malformed"),
    errors.BadToken: (Status.INTERNAL_ERROR, "malformed"),
    errors.DatagramTooLarge: (Status.TOO_LARGE, "too_large"),
    errors.TruncatedDatagram: (Status.INVALID_REQUEST, "malformed"),
    errors.EmptyField: (Status.INVALID_REQUEST, "malformed"),
    errors.MessageNotUtf8: (Status.INVALID_REQUEST, "bad_utf8"),
    errors.BadNotice: (Status.INVALID_REQUEST, "malformed"),
    errors.BadDelivery: (Status.INVALID_REQUEST, "malformed"),
    errors.FieldOutOfRange: (Status.INTERNAL_ERROR, "malformed"),
    errors.DeliveryTooLarge: (Status.INTERNAL_ERROR, "malformed"),
    errors.BadKeys: (Status.INVALID_REQUEST, "malformed"),
    errors.E2eNeedsKeys: (Status.INVALID_REQUEST, "malformed"),
    errors.UnknownKind: (Status.INVALID_REQUEST, "bad_kind"),
    errors.TrailingBytes: (Status.INVALID_REQUEST, "malformed"),
    errors.UnsupportedVersion: (Status.INVALID_REQUEST, "malformed"),
}

LOCAL = {errors.LocalProtocolError, errors.FieldOutOfRange, errors.DeliveryTooLarge,
         errors.ExchangeMisuse}


def class_name(cls: type) -> str:
    return cls.__name__


ERROR_CLASSES = sorted(STATUS_OF, key=class_name)


def test_every_error_class_is_in_the_table() -> None:
    assert all_subclasses(errors.ProtocolError) == set(STATUS_OF)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=class_name)
def test_error_status_and_reason(cls: type[errors.ProtocolError]) -> None:
    status, reason = STATUS_OF[cls]
    assert cls.status is status
    assert cls.reason == reason
    assert cls().status is status  # the instance sees the class's code
    assert issubclass(cls, errors.LocalProtocolError) == (cls in LOCAL)
    if cls not in LOCAL:
        assert issubclass(cls, errors.RemoteProtocolError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=class_name)
def test_error_message_is_the_docstring(cls: type[errors.ProtocolError]) -> None:
    doc = (cls.__doc__ or "").strip()
    assert doc and "\n" not in doc
    assert str(cls()) == doc
    exc = cls("detail")
    assert str(exc) == f"{doc}: detail"
    assert exc.detail == "detail"
    assert cls().detail == ""


def test_base_error() -> None:
    assert errors.ProtocolError.status is Status.INVALID_REQUEST
    assert str(errors.ProtocolError()) == "Protocol violation."
    assert str(errors.EmptyRoomName()) == "RoomNameSize is 0"


def test_codes_match_the_spec() -> None:
    assert {op.name: op.value for op in Operation} == {"CREATE": 1, "JOIN": 2, "MEMBERS": 3}
    assert {s.name: s.value for s in State} == {"REQUEST": 0, "RESPONSE": 1, "COMPLETE": 2}
    assert {s.name: s.value for s in Status} == {
        "OK": 0,
        "ROOM_EXISTS": 1,
        "ROOM_NOT_FOUND": 2,
        "INVALID_PASSWORD": 3,
        "INVALID_REQUEST": 4,
        "TOO_LARGE": 5,
        "USERNAME_TAKEN": 6,
        "ROOM_FULL": 7,
        "RATE_LIMITED": 8,
        "UNAVAILABLE": 9,
        "INTERNAL_ERROR": 255,
    }
    assert [f.value for f in Framing] == ["plain", "ocm1", "ocm1r"]  # ocm1r: our extension
    assert [e.value for e in NoticeEvent] == ["joined", "left", "closed", "disconnected", "error"]
    assert [r.value for r in Reason] == ["exit", "inactive", "send_failures", "shutdown"]
    assert [r.value for r in EVICTION_REASONS] == ["exit", "inactive", "send_failures"]


def test_limits() -> None:
    assert limits.TCRP_HEADER_BYTES == 32
    assert limits.TCRP_PAYLOAD_SIZE_BYTES == 29
    assert limits.MAX_ROOM_NAME_BYTES == limits.MAX_USERNAME_BYTES == 255
    assert limits.MAX_PASSWORD_BYTES == 255
    assert limits.DEFAULT_MAX_PAYLOAD_BYTES == 4096
    assert limits.MAX_TCRP_REQUEST_BYTES == 32 + 255 + 4096 == 4383
    assert (limits.TOKEN_MIN_BYTES, limits.TOKEN_MAX_BYTES) == (22, 255)
    assert limits.REGISTRATION_BYTES == 2
    assert limits.REGISTRATION_WINDOW_S == 2.0
    assert limits.MAX_DATAGRAM_BYTES == 4096
    assert limits.MAX_DELIVERY_BYTES == 4094
    assert limits.CHAT_HEADER_BYTES == 2
    assert limits.PLAIN_SEPARATOR == b": "
    assert limits.EXIT_COMMAND == "/exit"
    assert limits.EXIT_MATCH_MAX_BYTES == 64
    assert limits.DEFAULT_INACTIVITY_TIMEOUT_S == 300.0
    assert limits.DEFAULT_TCP_TIMEOUT_S == 10.0
    assert limits.DEFAULT_MAX_MEMBERS == 1000
    assert limits.DEFAULT_MAX_SEND_FAILURES == 3


@pytest.mark.parametrize(
    ("room_len", "token_len", "username_len", "expected"),
    [
        (4, 33, 5, 4057),  # the datagram bound wins: 4096 - 2 - 4 - 33
        (255, 255, 1, 3584),  # 4096 - 2 - 255 - 255
        (1, 22, 255, 3837),  # the delivery bound wins: 4094 - 2 - 255
        (1, 1, 1, 4091),
        (10, 22, 30, 4062),  # a tie: 4096 - 2 - 32 == 4094 - 2 - 30
    ],
)
def test_max_message_bytes(room_len: int, token_len: int, username_len: int, expected: int) -> None:
    """§1.3: ``min(4096 - 2 - len(room) - len(token), 4094 - 2 - len(username))``."""
    assert limits.max_message_bytes(room_len, token_len, username_len) == expected


@pytest.mark.parametrize(
    ("room_len", "token_len", "username_len", "expected"),
    [
        (4, 33, 5, 4052),  # the datagram bound, less the SEND header: 4096 - 2 - 4 - 33 - 5
        (1, 22, 255, 3829),  # the delivery bound, DATA header and length: 4094 - 9 - 1 - 255
    ],
)
def test_max_message_bytes_of_an_ocm1r_member(room_len: int, token_len: int, username_len: int,
                                              expected: int) -> None:
    assert limits.max_message_bytes(room_len, token_len, username_len, reliable=True) == expected
