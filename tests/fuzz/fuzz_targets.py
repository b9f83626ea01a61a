"""The fuzz targets of ``make fuzz`` (tests/fuzz/fuzz_main.py) and their seed corpora.

Each target takes one byte string, drives one codec or sans-IO core with it, checks the
contract and invariants below, and returns a short *outcome* string (the event or error
it ended in) that the stdlib engine uses as cheap feedback: an input with a new outcome
joins the corpus. A ``wire.errors.ProtocolError`` is a valid answer to bad input and is
caught here; any other exception (``IndexError``, ``UnicodeDecodeError``, a failed
``assert``...) escapes and is a crash.

Targets and what they check besides "no other exception":

* ``tcrp_server`` / ``tcrp_client``: ``FrameReader`` of each role, fed whole and in
  chunks, must end in the same events and error; decoded values re-encode to themselves.
* ``tcrp_exchange``: the client's ``ClientExchange`` fed a server's answer whole and in
  chunks, then the close: both runs agree, events come in protocol order, and a defect
  is one ``RemoteProtocolError`` that leaves the exchange ``FAILED``.
* ``chat``, ``stage1``, ``framed``, ``plain``, ``request_payload``: decode, then
  re-encode and compare (bytes, or the decoded value for JSON).
* ``session``: the server's TCRP state machine; whole and chunked runs agree, its answers
  parse as valid State 1 / State 2 frames echoing the request, no exception at all
  escapes it (it turns every defect into an event), and once the request is read it
  holds at most 3 bytes of whatever follows.
* ``relay``: ``RelayCore.handle_datagram`` with two rooms and five members, a sequence
  of datagrams from members, their IP on other ports and strangers, timers and send
  failures. A datagram that is not authenticated (independent oracle: ``decode_chat``,
  then token, room and source IP) must change nothing and produce no output at all (no
  reply to strangers); drops are counted under the reason ``decode_chat`` implies; every
  delivery fits 4094 bytes and goes to a bound member; the address lists match the
  members after every step.
* ``stage1_core``: ``GlobalChat`` never relays a malformed datagram, never back to its
  sender, and keeps its table within ``max_clients``.
* ``e2e_route`` / ``e2e_delivery``: the encrypted-room readers (wire/e2e.py); routes and
  deliveries re-encode to themselves, and every body codec raises only ProtocolError.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Final

import orjson

from control.session import (
    ConnectionClosed,
    Registration,
    RequestRejected,
    Session,
)
from relay.core import GlobalChat, RelayCore
from wire import errors
from wire.chat import (
    FramedChat,
    Notice,
    decode_chat,
    decode_framed,
    decode_plain,
    encode_chat,
    encode_framed_chat,
    encode_framed_notice,
    encode_plain_chat,
    encode_plain_notice,
)
from wire.codes import Framing, NoticeEvent, Operation, Reason, Status
from wire.e2e import (
    Kind,
    decode_content,
    decode_delivery,
    decode_group_chat,
    decode_members,
    decode_olm_envelope,
    decode_public_keys,
    decode_room_key,
    decode_route,
    encode_delivery,
    encode_message,
)
from wire.limits import MAX_DATAGRAM_BYTES, MAX_DELIVERY_BYTES, REGISTRATION_BYTES
from wire.stage1 import decode_stage1, encode_stage1
from wire.tcrp import (
    NEED_DATA,
    Complete,
    Details,
    FrameReader,
    Request,
    RequestBody,
    Response,
    Role,
    decode_members_request,
    decode_request_payload,
    encode_complete,
    encode_error,
    encode_frame,
    encode_legacy_request,
    encode_ok,
    encode_request,
)
from wire.tcrp_client import ClientExchange, ExchangeState
from wire.tcrp_client import ConnectionClosed as TcrpClosed

Target = Callable[[bytes], str]
MAX_PAYLOADS: Final = (4096, 4096, 4096, 64, 1, 0)
DETAILS = Details(udp_port=9001, host=False, max_message=4000, inactivity_timeout=300.0,
                  framing=Framing.PLAIN)
TOKEN = b"A" + b"t" * 32


def _chunks(data: bytes, seed: int) -> Iterator[bytes]:
    """``data`` in pieces of 1..16 bytes, sizes from a tiny LCG seeded by ``seed``."""
    at = 0
    state = seed or 1
    while at < len(data):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        size = 1 + (state >> 16) % 16
        yield data[at : at + size]
        at += size


def _split(data: bytes) -> tuple[int, int, bytes]:
    """Two control bytes (0 past the end) and the rest."""
    return (data[0] if data else 0), (data[1] if len(data) > 1 else 0), data[2:]


# --- TCRP readers ---------------------------------------------------------------------------------
def _read_all(role: Role, pieces: Iterator[bytes] | list[bytes], max_payload: int
              ) -> tuple[list[object], str, bytes]:
    reader = FrameReader(role, max_payload)
    events: list[object] = []
    error = ""
    for piece in pieces:
        reader.receive_data(piece)
        if error or (events and role is Role.SERVER):
            continue
        try:
            while (event := reader.next_event()) is not NEED_DATA:
                events.append(event)
                if role is Role.SERVER:
                    break
        except errors.ProtocolError as exc:
            error = type(exc).__name__
    return events, error, reader.room_raw


def _check_request(event: Request) -> None:
    body = event.body
    obj: dict[str, object] = {"username": body.username, "password": body.password,
                              "framing": body.framing.value}
    again = decode_request_payload(orjson.dumps(obj))
    assert again == body, (again, body)
    frame = encode_request(
        Request.of(event.operation, event.room_raw,
            RequestBody(body.username, body.password, framing=body.framing)))
    reader = FrameReader(Role.SERVER)
    reader.receive_data(frame)
    assert reader.next_event() == event


def _check_response(event: Response | Complete) -> None:
    if isinstance(event, Complete):
        frame = encode_complete(event.operation, event.room_raw, event.token)
    elif event.status == Status.OK:
        assert event.details is not None
        frame = encode_ok(event.operation, event.room_raw, event.details)
    elif isinstance(event.status, Status):
        frame = encode_error(event.operation, event.room_raw, event.status, event.error)
    else:
        return
    reader = FrameReader(Role.CLIENT)
    reader.receive_data(frame)
    assert reader.next_event() == event


def tcrp_reader(role: Role) -> Target:
    def target(data: bytes) -> str:
        c0, c1, data = _split(data)
        max_payload = MAX_PAYLOADS[c0 % len(MAX_PAYLOADS)]
        whole = _read_all(role, [data], max_payload)
        chunked = _read_all(role, _chunks(data, c1), max_payload)
        assert whole == chunked, (whole, chunked)
        events, error, _ = whole
        for event in events:
            if isinstance(event, Request):
                _check_request(event)
            else:
                assert isinstance(event, Response | Complete)
                _check_response(event)
        kinds = "+".join(type(e).__name__ for e in events[:3])
        return f"{kinds}|{error}"

    return target


def _exchange(pieces: Iterator[bytes] | list[bytes], register: bool) -> tuple[list[object], str]:
    """Drive a ClientExchange as the clients do: request, every piece, then the close."""
    exchange = ClientExchange()
    exchange.send_request(Request.of(Operation.CREATE, "room", RequestBody("alice")))
    events: list[object] = []
    try:
        for piece in [*pieces, b""]:
            exchange.receive_data(piece)
            while (event := exchange.next_event()) is not NEED_DATA:
                events.append(event)
                if isinstance(event, TcrpClosed):
                    return events, exchange.state.value
                if isinstance(event, Complete) and register:
                    assert exchange.send_registration(5000) == b"\x13\x88"
    except errors.RemoteProtocolError as exc:
        assert exchange.state is ExchangeState.FAILED
        return events, type(exc).__name__
    raise AssertionError("the close must end the exchange")


def tcrp_exchange(data: bytes) -> str:
    """The client's state machine: whole and chunked agree; only RemoteProtocolError."""
    c0, c1, data = _split(data)
    whole = _exchange([data], bool(c0 & 1))
    assert whole == _exchange(_chunks(data, c1), bool(c0 & 1))
    events, end = whole
    kinds = [type(e).__name__ for e in events]
    assert kinds in ([], ["Response"], ["Response", "ConnectionClosed"], ["Response", "Complete"],
                     ["Response", "Complete", "ConnectionClosed"]), kinds
    return "+".join(kinds) + "|" + end


# --- datagram codecs ------------------------------------------------------------------------------
def chat(data: bytes) -> str:
    try:
        d = decode_chat(data)
    except errors.ProtocolError as exc:
        return type(exc).__name__
    assert encode_chat(d.room, d.token, d.message) == data
    return "ok"


def stage1(data: bytes) -> str:
    try:
        d = decode_stage1(data)
    except errors.ProtocolError as exc:
        return type(exc).__name__
    assert encode_stage1(d.username.decode(), d.message.decode()) == data
    return "keepalive" if not d.message else "ok"


def plain(data: bytes) -> str:
    try:
        value = decode_plain(data)
    except errors.ProtocolError as exc:
        return type(exc).__name__
    if isinstance(value, FramedChat):
        assert encode_plain_chat(value.username, value.message.encode()) == data
        return "chat"
    assert isinstance(value, Notice)
    assert encode_plain_notice(value) == data or value.event is NoticeEvent.ERROR
    return f"notice-{value.event.value}"


def framed(data: bytes) -> str:
    try:
        value = decode_framed(data)
    except errors.ProtocolError as exc:
        return type(exc).__name__
    if isinstance(value, FramedChat):
        assert encode_framed_chat(value.username, value.message.encode()) == data
        return "chat"
    assert isinstance(value, Notice)
    try:
        again = decode_framed(encode_framed_notice(value))
    except errors.LocalProtocolError:  # e.g. a user name too long to deliver
        return "notice-too-large"
    assert isinstance(again, Notice) and again.event is value.event
    assert again.reason == value.reason
    return f"notice-{value.event.value}"


def request_payload(data: bytes) -> str:
    try:
        body = decode_request_payload(data)
    except errors.ProtocolError as exc:
        return type(exc).__name__
    assert isinstance(body, RequestBody) and body.username
    obj = {"username": body.username, "password": body.password,
           "framing": body.framing.value, "e2e": body.e2e,
           "keys": None if body.keys is None else body.keys.to_json()}
    assert decode_request_payload(orjson.dumps(obj)) == body
    return f"ok-{body.framing.value}-{body.password is not None}"


# --- encrypted rooms (docs/e2e.md) ----------------------------------------------------------------
def e2e_route(data: bytes) -> str:
    """The relay's reader: a route re-encodes to the Message it came from."""
    try:
        route = decode_route(data)
    except errors.ProtocolError as exc:
        return type(exc).__name__
    if route is None:
        return "keepalive"
    try:
        recipient = route.recipient.decode()
    except UnicodeDecodeError:  # the relay compares names as bytes; no str to re-encode
        return f"route-{route.kind.name}-raw"
    assert encode_message(route.kind, data[route.body_offset :], recipient) == data
    return f"route-{route.kind.name}"


def e2e_delivery(data: bytes) -> str:
    """Deliveries re-encode to themselves; every body codec only raises ProtocolError."""
    try:
        value = decode_delivery(data)
    except errors.ProtocolError as exc:
        return type(exc).__name__
    assert encode_delivery(value.sender.encode(), value.kind, value.body) == data
    outcome = [f"delivery-{value.kind.name}"]
    for decode in (decode_group_chat, decode_olm_envelope, decode_content, decode_room_key):
        try:
            decode(value.body)
            outcome.append(decode.__name__)
        except errors.ProtocolError:
            pass
    return "+".join(outcome)


def e2e_keys(data: bytes) -> str:
    """The JSON readers of public keys and member lists (a request's ``keys``, an answer's
    ``members``): any JSON value, or text, gives a value or only RemoteProtocolError."""
    try:
        obj: object = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = data.decode("utf-8", "replace")
    outcome = []
    for decode in (decode_public_keys, decode_members):
        try:
            decode(obj)
            outcome.append(decode.__name__)
        except errors.RemoteProtocolError as exc:
            outcome.append(type(exc).__name__)
    return "+".join(outcome)


def members_request(data: bytes) -> str:
    """The members request's payload: a token, or only ProtocolError."""
    try:
        token = decode_members_request(data)
    except errors.ProtocolError as exc:
        return type(exc).__name__
    assert isinstance(token, bytes)
    return "token"


# --- the server's TCRP session --------------------------------------------------------------------
def _run_session(pieces: Iterator[bytes] | list[bytes], max_payload: int, decision: int
                 ) -> list[object]:
    """Drive a Session as control's adapter does; return what happened, wire bytes
    included. Nothing may raise."""
    session = Session(max_payload)
    log: list[object] = []

    def pump() -> None:
        while True:
            event = session.next_event()
            if event is NEED_DATA:
                return
            log.append(event)
            if isinstance(event, Request):
                if decision % 3:
                    out = session.send_ok(DETAILS, TOKEN)
                else:
                    status = (Status.ROOM_EXISTS, Status.RATE_LIMITED, Status.INTERNAL_ERROR
                              )[decision % 9 // 3]
                    out = session.send_error(status, "no")
                log.append(out)
                _check_answer(out, event.operation, event.room_raw, ok=bool(decision % 3))
            elif isinstance(event, RequestRejected):
                out = session.send_error(event.status, event.reason)
                log.append(out)
                _check_answer(out, session.operation, session.room_raw, ok=False,
                              status=event.status)
                return
            elif isinstance(event, Registration | ConnectionClosed):
                return

    for piece in pieces:
        session.receive_data(piece)
        pump()
        if any(isinstance(e, Request) for e in log):
            # Bounded memory while the request is handled (a password check, a worker
            # restart): nothing after it is kept but the 3 bytes that tell a 2-byte
            # registration from "more" (white box, on purpose).
            assert len(session._after) <= REGISTRATION_BYTES + 1
            assert session._reader.trailing == b""
    session.receive_data(b"")
    pump()
    log.append(session.timeout())
    log.append(session.state)
    return log


def _check_answer(out: bytes, operation: int, room: bytes, ok: bool,
                  status: Status | None = None) -> None:
    reader = FrameReader(Role.CLIENT)
    reader.receive_data(out)
    first = reader.next_event()
    assert isinstance(first, Response), first
    assert first.operation == operation and first.room_raw == room
    if ok:
        assert first.status == Status.OK and first.details == DETAILS
        second = reader.next_event()
        assert isinstance(second, Complete) and second.token == TOKEN
    else:
        assert first.status != Status.OK and first.error
        if status is not None:
            assert first.status == status
    assert reader.next_event() is NEED_DATA and reader.trailing == b""


def session(data: bytes) -> str:
    """Whole and chunked runs agree, except that a 2-byte registration followed by more
    bytes may register when the 2 bytes arrive alone (the server registers "at once",
    docs/protocol.md §1.4: it cannot wait to see whether more follow)."""
    c0, c1, data = _split(data)
    max_payload = MAX_PAYLOADS[c0 % len(MAX_PAYLOADS)]
    whole = _run_session([data], max_payload, c1)
    chunked = _run_session(_chunks(data, c0 * 256 + c1), max_payload, c1)
    reader = FrameReader(Role.SERVER, max_payload)
    reader.receive_data(data)
    try:
        after = reader.trailing if isinstance(reader.next_event(), Request) else b""
    except errors.ProtocolError:
        after = b""
    exact = (int.from_bytes(after, "big") or None) if len(after) == 2 else None
    early = int.from_bytes(after[:2], "big") or None if len(after) >= 2 else None
    for event in whole:
        if isinstance(event, Registration):
            assert event.port == exact, (event, after)
    for event in chunked:
        if isinstance(event, Registration):
            assert event.port in (exact, early), (event, after)
    same = [e for e in whole if not isinstance(e, Registration)]
    assert same == [e for e in chunked if not isinstance(e, Registration)], (whole, chunked)
    return "+".join(type(e).__name__ for e in whole if not isinstance(e, bytes))


# --- the relay core -------------------------------------------------------------------------------
ROOM_A, ROOM_B = "lobby", "den"
MEMBERS: Final = (
    # room, token, username, ip, framing, host, bound address
    (ROOM_A, b"A" + b"a" * 32, "ann", "10.0.0.1", Framing.PLAIN, True, ("10.0.0.1", 1001)),
    (ROOM_A, b"A" + b"b" * 32, "ben", "10.0.0.2", Framing.OCM1, False, ("10.0.0.2", 1002)),
    (ROOM_A, b"A" + b"c" * 32, "cat", "10.0.0.3", Framing.PLAIN, False, None),
    (ROOM_B, b"A" + b"d" * 32, "dan", "10.0.0.1", Framing.OCM1, True, ("10.0.0.1", 2001)),
    (ROOM_B, b"A" + b"e" * 32, "eve" * 40, "10.0.0.5", Framing.PLAIN, False,
     ("10.0.0.5", 1005)),
)
SOURCES: Final = (("10.0.0.1", 1001), ("10.0.0.2", 1002), ("10.0.0.3", 1003),
                  ("10.0.0.1", 2001), ("10.0.0.5", 1005), ("10.0.0.1", 9999),
                  ("10.0.0.9", 1001), ("192.0.2.1", 53))


def new_core() -> RelayCore:
    core = RelayCore(inactivity_timeout=30.0, max_send_failures=2, chat_rate=50.0,
                     chat_burst=5)
    for room, token, user, ip, framing, host, addr in MEMBERS:
        assert core.add_member(room, token, user, ip, framing, host, 0.0, addr, True)
    core.events.clear()
    core.outbox.clear()
    return core


def _authenticated(core: RelayCore, data: bytes, addr: tuple[str, int]) -> tuple[bool, str]:
    """(accepted, the drop reason if not) by the reference decoder, not the hot path."""
    try:
        d = decode_chat(data)
    except errors.DatagramTooLarge:
        return False, "too_large"
    except (errors.TruncatedDatagram, errors.EmptyField):
        return False, "malformed"
    except errors.MessageNotUtf8:
        return False, "bad_utf8|unknown_token|wrong_ip|wrong_room"
    member = core.tokens.get(d.token)
    if member is None:
        return False, "unknown_token"
    if member.ip != addr[0]:
        return False, "wrong_ip"
    if member.room.name_raw != d.room:
        return False, "wrong_room"
    return True, ""


def _check_core(core: RelayCore) -> None:
    bound = {}
    for name, room in core.rooms.items():
        assert room.name == name and room.host is not None
        assert core.tokens[room.host.token] is room.host
        for token, m in room.members.items():
            assert core.tokens[token] is m and m.room is room
            if m.addr is not None:
                bound[m.addr] = True
        assert sorted(room.plain_addrs) == sorted(
            m.addr for m in room.members.values() if m.addr and not m.framed)
        assert sorted(room.framed_addrs) == sorted(
            m.addr for m in room.members.values() if m.addr and m.framed)
    assert len(core.tokens) == sum(len(r.members) for r in core.rooms.values())
    assert set(core.by_addr) == set(bound)
    assert all(not core.tokens[token].announced for token in core.join_keys)


def _records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``op(1) length(2) bytes`` records, at most 16."""
    at = 0
    for _ in range(16):
        if at >= len(data):
            return
        op = data[at]
        size = int.from_bytes(data[at + 1 : at + 3], "big")
        yield op, data[at + 3 : at + 3 + size]
        at += 3 + size


def record(op: int, data: bytes) -> bytes:
    return bytes((op,)) + len(data).to_bytes(2, "big") + data


def relay(data: bytes) -> str:
    """Records: ``op`` picks the source address (bits 0-2), the action (bits 3-4: a
    datagram, or timers / a send failure) and how far the clock moves (bits 5-7)."""
    core = new_core()
    now = 0.0
    outcome = []
    for op, payload in _records(data):
        addr = SOURCES[op % len(SOURCES)]
        action = op >> 3 & 3
        now += (op >> 5) * 0.05
        if action == 3:
            if op & 0x80:
                now += 31.0 * (op & 0x40 > 0)
                core.handle_timer(now)
            else:
                core.handle_send_failure(addr, now)
            outcome.append("t")
        else:
            outcome.append(_relay_one(core, payload, addr, now))
        for delivery, _ in core.outbox:
            assert len(delivery) <= MAX_DELIVERY_BYTES
        core.outbox.clear()
        core.events.clear()
        _check_core(core)
    return ",".join(sorted(set(outcome)))


def _relay_one(core: RelayCore, data: bytes, addr: tuple[str, int], now: float) -> str:
    accepted, reason = _authenticated(core, data, addr)
    before = dict(core.drops)
    members = {t: (m.addr, m.last_seen) for t, m in core.tokens.items()}
    destinations = {m.addr for m in core.tokens.values() if m.addr is not None} | {addr}
    out = core.handle_datagram(data, addr, now)
    grew = [k for k, v in core.drops.items() if v != before[k]]
    if not accepted:
        assert out is None and not core.outbox and not core.events, "answered a stranger"
        assert {t: (m.addr, m.last_seen) for t, m in core.tokens.items()} == members
        assert len(grew) == 1 and grew[0] in reason.split("|"), (grew, reason)
        return grew[0]
    assert grew in ([], ["rate_limited"]), grew
    for _, dest in core.outbox:
        assert dest in destinations, dest
    if out is None:
        return "rate_limited" if grew else "no-fanout"
    plain, plain_addrs, framed_msg, framed_addrs, sender, room = out
    assert sender == addr and room.members[decode_chat(data).token].addr == addr
    for payload in (plain, framed_msg):
        assert payload is None or len(payload) <= MAX_DELIVERY_BYTES
    assert plain_addrs is room.plain_addrs and framed_addrs is room.framed_addrs
    return "fanout"


# --- Stage 1 --------------------------------------------------------------------------------------
def stage1_core(data: bytes) -> str:
    chat_ = GlobalChat(inactivity_timeout=10.0, max_send_failures=2, max_clients=3)
    outcome = []
    now = 0.0
    for op, payload in _records(data):
        addr = SOURCES[op % len(SOURCES)]
        now += (op >> 4) * 0.5
        if op & 8:
            chat_.handle_timer(now)
            chat_.handle_send_failure(addr)
            outcome.append("t")
            continue
        try:
            valid = decode_stage1(payload)
        except errors.ProtocolError:
            valid = None
        targets = chat_.handle_datagram(payload, addr, now)
        if valid is None:
            assert targets is None
        elif targets is not None:
            assert valid.message and addr in targets  # the caller skips the sender
        assert len(chat_.clients) <= 3 and len(chat_.addrs) == len(chat_.clients)
        outcome.append("r" if targets else "-")
    return "".join(sorted(set(outcome)))


TARGETS: Final[dict[str, Target]] = {
    "tcrp_server": tcrp_reader(Role.SERVER),
    "tcrp_client": tcrp_reader(Role.CLIENT),
    "chat": chat,
    "framed": framed,
    "plain": plain,
    "tcrp_exchange": tcrp_exchange,
    "stage1": stage1,
    "request_payload": request_payload,
    "session": session,
    "relay": relay,
    "stage1_core": stage1_core,
    "e2e_route": e2e_route,
    "e2e_delivery": e2e_delivery,
    "e2e_keys": e2e_keys,
    "members_request": members_request,
}


# --- seed corpora ---------------------------------------------------------------------------------
def _requests() -> list[bytes]:
    out = [
        encode_request(Request.of(Operation.CREATE, "room", RequestBody("alice"))),
        encode_request(
            Request.of(Operation.JOIN, "部屋", RequestBody("bob", "pw", framing=Framing.OCM1))),
        encode_request(Request.of(Operation.JOIN, b"r" * 255, RequestBody("u" * 255, "p" * 255))),
        encode_legacy_request(Operation.CREATE, "room", "taro"),
        encode_frame(1, 0, b"r", b'{"username": "a", "password": null, "framing": "ocm1"}'),
        encode_frame(2, 0, b"r", b'{"username": " a"}'),
        encode_frame(1, 0, b"\xff", b"bob"),
        encode_frame(1, 1, b"r", b"bob"),
        encode_frame(3, 0, b"r", b"bob"),
        bytes([1, 1, 0]) + (10**9).to_bytes(29, "big") + b"r",
    ]
    return out + [frame + b"\x23\x29" for frame in out[:3]]


def _responses() -> list[bytes]:
    return [
        encode_ok(1, b"room", DETAILS) + encode_complete(1, b"room", TOKEN),
        encode_error(2, b"r", Status.ROOM_FULL, "full"),
        encode_error(2, b"r", Status.INTERNAL_ERROR, ""),
        encode_frame(2, 1, b"r", b"\x2a{}"),
        encode_frame(2, 2, b"r", b"~" * 22),
    ]


def _datagrams() -> list[bytes]:
    out = []
    for room, token, *_ in MEMBERS:
        for message in (b"", b"hi", b"/exit", b" /EXIT\n", "こんにちは".encode(), b"m" * 4000):
            data = bytes((len(room), len(token))) + room.encode() + token + message
            out.append(data[:MAX_DATAGRAM_BYTES + 1])
    return out


_KEYS: Final = (b'{"x25519": "' + base64.b64encode(bytes(range(32))) + b'", "ed25519": "'
                + base64.b64encode(bytes(range(32, 64))) + b'"}')
_MEMBER: Final = b'{"user": "ann", "host": true, "keys": ' + _KEYS + b"}"


def seeds(name: str) -> list[bytes]:
    """A small corpus of valid (and nearly valid) inputs for each target."""
    if name == "tcrp_server":
        return [b"\x00\x05" + r for r in _requests()]
    if name == "tcrp_client":
        return [b"\x00\x05" + r for r in _responses()]
    if name == "session":
        return [bytes((0, d)) + r for r in _requests() for d in (1, 3)]
    if name == "chat":
        return _datagrams() + [b"\x01\x01rt", b"\x00\x00"]
    if name == "stage1":
        return [encode_stage1("ann", "hello"), encode_stage1("a" * 255, ""), b"\x00x"]
    if name == "plain":
        return [encode_plain_chat("ann", b"hi"), encode_plain_notice(
            Notice(NoticeEvent.LEFT, "ann", Reason.INACTIVE)),
            encode_plain_notice(Notice(NoticeEvent.ERROR, over=7)),
            encode_plain_notice(Notice(NoticeEvent.CLOSED)), b"no separator"]
    if name == "tcrp_exchange":
        return [b"\x00\x05" + r for r in _responses()] + [
            b"\x01\x05" + encode_ok(1, b"room", DETAILS) + encode_complete(1, b"room", TOKEN)]
    if name == "framed":
        return [encode_framed_chat("ann", b"hi"), encode_framed_notice(
            Notice(NoticeEvent.LEFT, "ann", Reason.INACTIVE)),
            encode_framed_notice(Notice(NoticeEvent.ERROR, over=7)),
            encode_plain_notice(Notice(NoticeEvent.CLOSED))]
    if name == "request_payload":
        return [b'{"username": "a", "password": "p", "framing": "ocm1"}', b"taro", b"{}",
                b'{"username": 1}', b'"quoted"',
                b'{"username": "a", "e2e": true, "keys": ' + _KEYS + b'}']
    if name == "e2e_keys":
        return [_KEYS, b"[]", b"[" + _MEMBER + b"]", b"[" + _MEMBER + b"," + _MEMBER + b"]",
                b'{"x25519": 1}', b"null"]
    if name == "members_request":
        return [b'{"token": "' + b"T" * 22 + b'"}', b"{}", b'{"token": 5}', b"x"]
    if name == "relay":  # each member's datagrams from its own address (6 per member)
        records = [record(i // 6, data) for i, data in enumerate(_datagrams())]
        return [b"".join(records[i : i + 4]) for i in range(0, len(records), 2)] + [
            record(5, _datagrams()[0]) + record(0x98, b"") + record(0xd8, b"")]
    if name == "stage1_core":
        return [record(0, encode_stage1("ann", "")) + record(1, encode_stage1("ben", "hi"))
                + record(2, b"\x00") + record(0x18, b"") + record(4, encode_stage1("c", "x"))]
    if name == "e2e_route":
        return [b"", b"\x04", encode_message(Kind.CHAT, b"\x01" * 89),
                encode_message(Kind.ENVELOPE, b"\x01" * 153, "bob"),
                encode_message(Kind.KEY_REQUEST, b"\x01" * 9, "アリス")]
    if name == "e2e_delivery":
        return [encode_delivery(b"ann", Kind.CHAT, b"\x01" + b"c" * 88),
                encode_delivery(b"ann", Kind.ENVELOPE, b"\x01" + b"e" * 152),
                encode_delivery(b"ann", Kind.KEY_REQUEST, b"\x01" * 9)]
    raise KeyError(name)
