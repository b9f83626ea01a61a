"""TCRP, the chat-room protocol over TCP (docs/protocol.md §1): frames, payloads, a reader.

Frame: ``RoomNameSize(1) Operation(1) State(1) OperationPayloadSize(29) RoomName Payload``.

Server side: feed bytes to ``FrameReader(max_payload, role=SERVER)`` and call
``next_event()`` until it returns a ``Request`` (or raises a ``RemoteProtocolError`` whose
``status`` is the code to answer). Client side: ``wire.tcrp_client.ClientExchange``, which
encodes the request and reads ``Response`` and ``Complete`` with ``FrameReader(role=CLIENT)``.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass
from typing import Any, Final

import orjson

from wire import dgmac, errors, names
from wire.codes import Framing, Operation, State, Status
from wire.e2e import MEMBERS_OPERATION, MemberInfo, PublicKeys, decode_members, decode_public_keys
from wire.limits import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_PASSWORD_BYTES,
    MAX_ROOM_NAME_BYTES,
    MAX_USERNAME_BYTES,
    REGISTRATION_BYTES,
    TCRP_HEADER_BYTES,
    TCRP_PAYLOAD_SIZE_BYTES,
    TOKEN_MAX_BYTES,
    TOKEN_MIN_BYTES,
)

MAX_PAYLOAD_SIZE_FIELD: Final = (1 << (8 * TCRP_PAYLOAD_SIZE_BYTES)) - 1


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""``next_event()`` returns this when it needs more bytes (h11's sentinel)."""


@dataclass(frozen=True, slots=True)
class Header:
    """The 32-byte TCRP header, raw: ``operation`` and ``state`` may be unknown values."""

    room_name_size: int
    operation: int
    state: int
    payload_size: int


def encode_header(header: Header) -> bytes:
    """Encode a header; raise ``FieldOutOfRange`` if a field does not fit."""
    if not 0 <= header.room_name_size <= MAX_ROOM_NAME_BYTES:
        raise errors.FieldOutOfRange(f"RoomNameSize {header.room_name_size}")
    if not (0 <= header.operation <= 255 and 0 <= header.state <= 255):
        raise errors.FieldOutOfRange("Operation and State are one byte each")
    if not 0 <= header.payload_size <= MAX_PAYLOAD_SIZE_FIELD:
        raise errors.FieldOutOfRange(f"OperationPayloadSize {header.payload_size}")
    return bytes(
        (header.room_name_size, header.operation, header.state)
    ) + header.payload_size.to_bytes(TCRP_PAYLOAD_SIZE_BYTES, "big")


def decode_header(data: bytes) -> Header:
    """Decode the first 32 bytes of ``data``; raise ``TruncatedDatagram`` if shorter."""
    if len(data) < TCRP_HEADER_BYTES:
        raise errors.TruncatedDatagram(f"TCRP header needs 32 bytes, got {len(data)}")
    return Header(
        data[0], data[1], data[2], int.from_bytes(data[3:TCRP_HEADER_BYTES], "big")
    )


def encode_frame(operation: int, state: int, room: bytes, payload: bytes) -> bytes:
    """One whole frame. ``room`` is echoed raw (it may be empty in an error answer)."""
    header = Header(len(room), operation, state, len(payload))
    return encode_header(header) + room + payload


# --- requests ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RequestBody:
    """What a request payload asks for (§1.2)."""

    username: str
    password: str | None = None
    framing: Framing = Framing.PLAIN
    keys: PublicKeys | None = None  # docs/e2e.md §2.1: the member's public keys
    e2e: bool = False  # create: make the room encrypted (ignored on join)
    resume: str | None = None  # join, ocm1r: the resume secret of a membership to move


def encode_request(request: Request) -> bytes:
    """A State 0 request with a JSON payload (what ``ocm-chat`` and ``ocm-loadgen`` send).

    ``password``, ``keys`` and ``e2e`` are sent only when set, ``framing`` only when it
    is not the default ``plain`` (docs/e2e.md §2.1); ``decode_request_payload`` reads the
    payload back into the same ``RequestBody``."""
    room_raw = request.room_raw
    if not 1 <= len(room_raw) <= MAX_ROOM_NAME_BYTES:
        raise errors.FieldOutOfRange(f"room name must be 1..255 bytes, got {len(room_raw)}")
    body = request.body
    obj: dict[str, Any] = {"username": body.username}
    if body.password is not None:
        obj["password"] = body.password
    if body.framing is not Framing.PLAIN:
        obj["framing"] = body.framing.value
    if body.keys is not None:
        obj["keys"] = body.keys.to_json()
    if body.e2e:
        obj["e2e"] = True
    if body.resume is not None:
        obj["resume"] = body.resume
    return encode_frame(request.operation, State.REQUEST, room_raw, orjson.dumps(obj))


def encode_legacy_request(operation: Operation, room: str | bytes, username: str) -> bytes:
    """A request whose payload is the bare username, as the curriculum's reference client sends."""
    room_raw = room.encode() if isinstance(room, str) else room
    return encode_frame(operation, State.REQUEST, room_raw, username.encode())


def check_request_header(header: Header, max_payload: int) -> None:
    """Raise the first header error in field order (§1.3), or return."""
    if header.room_name_size == 0:
        raise errors.EmptyRoomName()
    if header.operation not in _OPERATIONS:
        raise errors.UnknownOperation(str(header.operation))
    if header.state != State.REQUEST:
        raise errors.UnexpectedState(str(header.state))
    if header.payload_size > max_payload:
        raise errors.PayloadTooLarge(f"{header.payload_size} > {max_payload} bytes")


_OPERATIONS: Final = frozenset(int(op) for op in Operation)


_FRAMINGS: Final = {Framing.OCM1.value: Framing.OCM1, Framing.OCM1R.value: Framing.OCM1R}
"""The ``framing`` values that select framed delivery, exactly (docs/protocol.md)."""


def decode_request_payload(payload: bytes) -> RequestBody:
    """Parse a request payload (§1.2) or raise the first error in the order of §1.3.

    A JSON object gives username, password and framing; any other payload (another JSON
    value, or not JSON) is taken whole as the username, for compatibility, except one
    whose first non-whitespace character is ``{``: that is ``MalformedJson`` (it may
    carry a password that must not become a visible name). Usernames follow
    ``wire.names``.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.PayloadNotUtf8(str(exc.reason)) from None
    try:
        parsed = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        if text.lstrip().startswith("{"):
            raise errors.MalformedJson() from None
        parsed = None
    password: object = None
    framing_raw: object = None
    keys: PublicKeys | None = None
    e2e: object = None
    resume: object = None
    username: object
    if isinstance(parsed, dict):
        username = parsed.get("username")
        password = parsed.get("password")
        framing_raw = parsed.get("framing")
        if username is not None and not isinstance(username, str):
            raise errors.BadFieldType("username must be a string")
        if password is not None and not isinstance(password, str):
            raise errors.BadFieldType("password must be a string or null")
        if framing_raw is not None and not isinstance(framing_raw, str):
            raise errors.BadFieldType("framing must be a string or null")
        e2e = parsed.get("e2e")
        if e2e is not None and type(e2e) is not bool:
            raise errors.BadFieldType("e2e must be a boolean or null")
        if parsed.get("keys") is not None:
            keys = decode_public_keys(parsed["keys"])
        resume = parsed.get("resume")
        if resume is not None and not isinstance(resume, str):
            raise errors.BadFieldType("resume must be a string or null")
    else:
        username = text
    if not username:
        raise errors.MissingUsername()
    assert isinstance(username, str)
    if len(username.encode()) > MAX_USERNAME_BYTES:
        raise errors.FieldTooLong("username")
    if password is not None and len(password.encode()) > MAX_PASSWORD_BYTES:  # type: ignore[attr-defined]
        raise errors.FieldTooLong("password")
    names.check_username(username)
    framing = _FRAMINGS.get(framing_raw, Framing.PLAIN) if isinstance(framing_raw, str) \
        else Framing.PLAIN
    if isinstance(resume, str) and len(resume.encode()) > MAX_PASSWORD_BYTES:
        raise errors.FieldTooLong("resume")
    return RequestBody(
        username, password or None, framing, keys, e2e is True,  # type: ignore[arg-type]
        resume or None,  # type: ignore[arg-type]
    )


def check_e2e_request(operation: int, body: RequestBody) -> None:
    """Raise ``E2eNeedsKeys`` for a create with ``"e2e": true`` but no keys or plain framing
    (docs/e2e.md §2.1: ``ocm1`` or ``ocm1r``). Checked after the username; a join is
    checked against the room."""
    if operation == Operation.CREATE and body.e2e:
        if body.keys is None or body.framing is Framing.PLAIN:  # ocm1 or ocm1r
            raise errors.E2eNeedsKeys()


@dataclass(frozen=True, slots=True)
class Request:
    """A State 0 create or join request: what a client sends (``encode_request``), what the
    server reads (``FrameReader``), what a cluster node forwards to the room's owner."""

    operation: Operation
    room: str
    room_raw: bytes
    body: RequestBody

    @classmethod
    def of(cls, operation: Operation, room: str | bytes, body: RequestBody) -> Request:
        """A client's request for ``room``: a name, or its raw bytes as sent."""
        if isinstance(room, str):
            return cls(operation, room, room.encode(), body)
        return cls(operation, room.decode("utf-8", "replace"), room, body)


@dataclass(frozen=True, slots=True)
class MembersRequest:
    """A whole, valid Operation 3 request (server side, docs/e2e.md §2.4)."""

    room: str
    room_raw: bytes
    token: bytes


ROOM_EPOCH_BYTES: Final = 16
"""The random incarnation of an encrypted room (``Details.epoch``)."""


# --- responses -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Details:
    """The JSON object of an OK response (§1.3)."""

    udp_port: int
    host: bool
    max_message: int
    inactivity_timeout: float
    framing: Framing
    e2e: bool = False  # docs/e2e.md §2.2: sent only in an encrypted room
    members: tuple[MemberInfo, ...] = ()  # the other members with their keys, if e2e
    udp_host: str | None = None
    """Cluster mode: the IP of the node that owns the room, to which the client should send
    its datagrams (``udp_port`` is that node's). Absent on a single node: send to the
    address the TCRP connection went to."""
    resume: str | None = None
    """``ocm1r``: the secret that moves this membership to a new address (a join with
    ``"resume"``); each answer carries a new one."""
    resumed: bool = False
    """The answer to a resume: the same membership, a new token."""
    datagram_key: bytes | None = None
    """Our extension (docs/protocol.md §8): the member's datagram MAC key, sent only to a
    member that joined over TLS. With it, every datagram the member sends must carry the
    trailer of ``wire.dgmac``; ``max_message`` already leaves room for it."""
    epoch: bytes = b""
    """An encrypted room's incarnation: ``ROOM_EPOCH_BYTES`` random bytes drawn when the
    room is created (docs/e2e.md); every room key is bound to it. Empty in a plain room."""

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "udp_port": self.udp_port,
            "host": self.host,
            "max_message": self.max_message,
            "inactivity_timeout": self.inactivity_timeout,
            "framing": self.framing.value,
        }
        if self.e2e:
            obj["e2e"] = True
            obj["members"] = [member.to_json() for member in self.members]
            if self.epoch:
                obj["epoch"] = base64.b64encode(self.epoch).decode()
        if self.udp_host is not None:
            obj["udp_host"] = self.udp_host
        if self.resume is not None:
            obj["resume"] = self.resume
        if self.resumed:
            obj["resumed"] = True
        if self.datagram_key is not None:
            obj[dgmac.DETAILS_KEY] = dgmac.encode_key(self.datagram_key)
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Details:
        """Raise ``BadResponse`` unless ``obj`` has every key with its type."""
        try:
            udp_port, host = obj["udp_port"], obj["host"]
            max_message, timeout = obj["max_message"], obj["inactivity_timeout"]
            framing = Framing(obj["framing"])
        except (KeyError, ValueError) as exc:
            raise errors.BadResponse(f"details: {exc!r}") from None
        udp_host = obj.get("udp_host")
        resume, resumed = obj.get("resume"), obj.get("resumed", False)
        if not (resume is None or type(resume) is str) or type(resumed) is not bool:
            raise errors.BadResponse("resume must be a string, resumed a boolean")
        if not (
            type(udp_port) is int
            and type(host) is bool
            and type(max_message) is int
            and type(timeout) in (int, float)
            and (udp_host is None or type(udp_host) is str)
        ):
            raise errors.BadResponse("details have wrong types")
        e2e = obj.get("e2e", False)
        if type(e2e) is not bool:
            raise errors.BadResponse("e2e must be a boolean")
        members = decode_members(obj.get("members")) if e2e else ()
        epoch = b""
        if e2e and obj.get("epoch") is not None:
            try:
                epoch = base64.b64decode(str(obj["epoch"]).encode("ascii"), validate=True)
            except (UnicodeEncodeError, binascii.Error):
                raise errors.BadResponse("epoch is not base64") from None
            if len(epoch) != ROOM_EPOCH_BYTES:
                raise errors.BadResponse(f"epoch must be {ROOM_EPOCH_BYTES} bytes")
        raw_key = obj.get(dgmac.DETAILS_KEY)
        key = None if raw_key is None else dgmac.decode_key(raw_key)
        return cls(udp_port, host, max_message, float(timeout), framing, e2e, members,
                   udp_host, resume, resumed, key, epoch)


def encode_ok(operation: int, room: bytes, details: Details) -> bytes:
    """State 1, status 0, details JSON."""
    payload = bytes((Status.OK,)) + orjson.dumps(details.to_json())
    return encode_frame(operation, State.RESPONSE, room, payload)


def encode_error(operation: int, room: bytes, status: Status, reason: str) -> bytes:
    """State 1 with an error status and ``{"error": reason}``."""
    payload = bytes((status,)) + orjson.dumps({"error": reason})
    return encode_frame(operation, State.RESPONSE, room, payload)


def encode_complete(operation: int, room: bytes, token: bytes) -> bytes:
    """State 2 carrying the token; raise ``BadToken`` if the token breaks §1.4."""
    check_token(token)
    return encode_frame(operation, State.COMPLETE, room, token)


def check_token(token: bytes) -> None:
    """Raise ``BadToken`` unless ``token`` is 22..255 bytes of 0x21..0x7E."""
    if not TOKEN_MIN_BYTES <= len(token) <= TOKEN_MAX_BYTES:
        raise errors.BadToken(f"{len(token)} bytes")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise errors.BadToken("non-printable byte")


@dataclass(frozen=True, slots=True)
class Response:
    """State 1 as a client sees it. ``details`` is set on OK, ``error`` otherwise."""

    operation: int
    room_raw: bytes
    status: Status | int
    details: Details | None
    error: str
    members: tuple[MemberInfo, ...] = ()  # an OK answer to Operation 3 (docs/e2e.md §2.4)


@dataclass(frozen=True, slots=True)
class Complete:
    """State 2 as a client sees it."""

    operation: int
    room_raw: bytes
    token: bytes


def decode_response(operation: int, room: bytes, payload: bytes) -> Response:
    """Decode a State 1 payload. Unknown status codes are kept as ints. An OK answer to
    Operation 3 carries ``members`` instead of ``details``."""
    if not payload:
        raise errors.BadResponse("empty response payload")
    code = payload[0]
    status: Status | int = Status(code) if code in _STATUSES else code
    body: object = {}
    if len(payload) > 1:
        try:
            body = orjson.loads(payload[1:])
        except orjson.JSONDecodeError:
            raise errors.BadResponse("response JSON") from None
    if not isinstance(body, dict):
        raise errors.BadResponse("response JSON is not an object")
    if status == Status.OK and operation == MEMBERS_OPERATION:
        return Response(operation, room, status, None, "", decode_members(body.get("members")))
    if status == Status.OK:
        return Response(operation, room, status, Details.from_json(body), "")
    reason = body.get("error")
    return Response(operation, room, status, None, reason if isinstance(reason, str) else "")


_STATUSES: Final = frozenset(int(s) for s in Status)


def encode_registration(port: int) -> bytes:
    """The 2 bytes a client may send after State 2: its UDP port (§1.4)."""
    if not 1 <= port <= 65535:
        raise errors.FieldOutOfRange(f"UDP port {port}")
    return port.to_bytes(REGISTRATION_BYTES, "big")


# --- the incremental reader ----------------------------------------------------------------
class Role(enum.Enum):
    SERVER = "server"  # reads State 0 requests
    CLIENT = "client"  # reads State 1 and State 2 frames


class FrameReader:
    """Incremental TCRP reader (h11-style ``receive_data`` / ``next_event``).

    The header and room name are read first; on the server side the header is checked
    before a single payload byte is buffered (§1.1), so a connection holds at most
    32 + 255 + ``max_payload`` bytes. After a server-side ``Request``, ``trailing`` holds
    any bytes that followed it (e.g. an early 2-byte UDP port registration).

    On a defect ``next_event`` raises one ``RemoteProtocolError``; afterwards
    ``operation`` and ``room_raw`` hold what the server must echo.
    """

    def __init__(self, role: Role, max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        self._role = role
        self._max_payload = max_payload
        self._buf = bytearray()
        self._header: Header | None = None
        self.operation = 0
        self.room_raw = b""

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the peer; then call ``next_event()``."""
        self._buf += data

    @property
    def trailing(self) -> bytes:
        """Bytes received after the last complete frame."""
        return bytes(self._buf)

    def next_event(self) -> Request | MembersRequest | Response | Complete | _NeedData:
        """Return the next whole frame's event, ``NEED_DATA``, or raise a ProtocolError."""
        buf = self._buf
        header = self._header
        if header is None:
            if len(buf) < TCRP_HEADER_BYTES:
                return NEED_DATA
            header = decode_header(bytes(buf[:TCRP_HEADER_BYTES]))
            self.operation = header.operation
            self._header = header
        name_end = TCRP_HEADER_BYTES + header.room_name_size
        if len(buf) < name_end:
            return NEED_DATA
        self.room_raw = bytes(buf[TCRP_HEADER_BYTES:name_end])
        if self._role is Role.SERVER:
            check_request_header(header, self._max_payload)
        elif header.payload_size > self._max_payload:
            raise errors.PayloadTooLarge(f"{header.payload_size} > {self._max_payload}")
        end = name_end + header.payload_size
        if len(buf) < end:
            return NEED_DATA
        payload = bytes(buf[name_end:end])
        del buf[:end]
        self._header = None
        return self._decode(header, payload)

    def _decode(
        self, header: Header, payload: bytes
    ) -> Request | MembersRequest | Response | Complete:
        room_raw = self.room_raw
        if self._role is Role.SERVER:
            try:
                room = room_raw.decode("utf-8")
            except UnicodeDecodeError:
                raise errors.RoomNameNotUtf8() from None
            if header.operation == Operation.MEMBERS:
                return MembersRequest(room, room_raw, decode_members_request(payload))
            body = decode_request_payload(payload)
            check_e2e_request(header.operation, body)
            return Request(Operation(header.operation), room, room_raw, body)
        if header.state == State.RESPONSE:
            return decode_response(header.operation, room_raw, payload)
        if header.state == State.COMPLETE:
            check_token(payload)
            return Complete(header.operation, room_raw, payload)
        raise errors.UnexpectedFrame(f"State {header.state}")


# --- the member list, Operation 3 (docs/e2e.md §2.4) ------------------------------------------
def encode_members_request(room: str | bytes, token: bytes) -> bytes:
    """Operation 3, State 0, payload ``{"token": token}``; raise ``BadToken``."""
    check_token(token)
    room_raw = room.encode() if isinstance(room, str) else room
    if not 1 <= len(room_raw) <= MAX_ROOM_NAME_BYTES:
        raise errors.FieldOutOfRange(f"room name must be 1..255 bytes, got {len(room_raw)}")
    payload = orjson.dumps({"token": token.decode("ascii")})
    return encode_frame(MEMBERS_OPERATION, State.REQUEST, room_raw, payload)


def decode_members_request(payload: bytes) -> bytes:
    """The token of an Operation 3 payload, or raise ``PayloadNotUtf8`` / ``BadFieldType``
    (not a JSON object with a string ``token``) / ``BadToken`` (status 4 on the server)."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise errors.BadFieldType("the payload must be a JSON object") from None
    token = parsed.get("token") if isinstance(parsed, dict) else None
    if not isinstance(token, str):
        raise errors.BadFieldType("token must be a string")
    raw = token.encode()
    try:
        check_token(raw)
    except errors.BadToken as exc:
        raise errors.BadFieldType(f"token: {exc.detail}") from None
    return raw


def encode_members_ok(room: bytes, members: tuple[MemberInfo, ...]) -> bytes:
    """State 1, status 0, ``{"members": [...]}``; no State 2 follows."""
    body = {"members": [member.to_json() for member in members]}
    payload = bytes((Status.OK,)) + orjson.dumps(body)
    return encode_frame(MEMBERS_OPERATION, State.RESPONSE, room, payload)
