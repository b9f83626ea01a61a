"""Hypothesis for wire/: round trips, and fuzzing every parser.

Parser contract (h11 ``fuzz/afl-server.py``): any bytes give an event or a value, or
exactly one ``wire.errors.ProtocolError`` subclass; ``IndexError``, ``struct.error``,
``UnicodeDecodeError``, ``KeyError``, ``TypeError`` ... never escape.

Each fuzz test runs 3,000 examples in ``make test``, beside the stdlib engine's 10,000
inputs per parser (tests/fuzz/test_fuzz_main.py). To afford them an example is ONE
hypothesis draw, a byte string that ``Picker`` turns into either raw random bytes or an
"almost valid" input (right shape, each field valid or not, payloads from pools of tricky
JSON, mutated), in the manner of atheris' FuzzedDataProvider. Shrinking still works: fewer
and smaller bytes pick simpler inputs. The incremental reader is fed every input whole and
in random chunks, and both runs must agree exactly.

The file runs with coverage paused (pytest-cov's ``no_cover``): tracing doubles its time,
and the 100 % branch coverage of wire/ is the hex-vector unit tests' job, not luck's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire import errors
from wire.chat import (
    ChatDatagram,
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
    is_exit,
)
from wire.codes import Framing, NoticeEvent, Operation, Reason, Status
from wire.names import REFUSED_CATEGORIES, username_problem
from wire.stage1 import Stage1Datagram, decode_stage1, encode_stage1
from wire.tcrp import (
    MAX_PAYLOAD_SIZE_FIELD,
    NEED_DATA,
    Complete,
    Details,
    FrameReader,
    Header,
    Request,
    RequestBody,
    Response,
    Role,
    decode_header,
    decode_request_payload,
    encode_complete,
    encode_error,
    encode_header,
    encode_legacy_request,
    encode_ok,
    encode_request,
)
from wire.tcrp_client import ClientExchange
from wire.tcrp_client import ConnectionClosed as TcrpClosed

pytestmark = pytest.mark.no_cover

# 3,000 examples per parser here, beside the 10,000 inputs per parser of the stdlib engine in
# tests/fuzz/test_fuzz_main.py (each example costs about 2 ms of hypothesis' own work, each
# engine input about 50 us); `make fuzz` runs the same targets a million times.
FUZZ = settings(
    max_examples=3_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUND_TRIP = settings(max_examples=500, deadline=None)


# --- pools of tricky values ----------------------------------------------------------------------
JSON_VALUES: list[object] = [
    None, True, False, 0, -1, 1, 9001, 2**63 - 1, 2**64 - 1, -(2**63), 1.5, 300.0, -0.0,
    "", "alice", " alice", "alice ", "a\u0000b", "a\u0085", "\u3000", "アリス", "ocm1", "plain",
    "OCM1", "exit", "inactive", "send_failures", "joined", "left", "closed", "disconnected",
    "error", "x" * 255, "x" * 256, "あ" * 85, "あ" * 86, [], [1, "a"], {}, {"a": {"b": []}},
]
RAW_JSONISH: list[bytes] = [
    b"", b"{}", b"[]", b"null", b"1e999", b"-", b"{", b'{"username":', b'"alice"',
    b"[" * 1100 + b"]" * 1100, b'{"username":"\\ud800"}', b'{"username":"\\udc00x"}',
    b'"\xed\xa0\x80"', b"\xef\xbb\xbf{}", b"\xff\xfe", b"\xc3\x28", b"\xe3\x81",
    b'{"username":"a","username":1}', b"99999999999999999999999", b"NaN",
]


def objects(base: dict[str, object], keys: Iterable[str]) -> list[bytes]:
    """``base`` with each key missing or set to each pool value, as JSON bytes."""
    out = [orjson.dumps(base)]
    for key in keys:
        out.append(orjson.dumps({k: v for k, v in base.items() if k != key}))
        out.extend(orjson.dumps({**base, key: value}) for value in JSON_VALUES)
    return out


# Pools are lists of categories, so that a rare category is picked as often as a big one.
Pool = list[list[bytes]]
DETAILS_JSON = {"udp_port": 9001, "host": True, "max_message": 4057,
                "inactivity_timeout": 300.0, "framing": "plain"}
REQUEST_POOL: Pool = [
    objects({"username": "alice", "password": "pw", "framing": "ocm1"},
            ["username", "password", "framing"]),
    RAW_JSONISH,
    [value.encode() for value in JSON_VALUES if isinstance(value, str)],  # legacy payloads
]
RESPONSE_POOL: Pool = [
    [b"\x00" + obj for obj in objects(DETAILS_JSON, DETAILS_JSON)],
    [bytes((code,)) + obj for code in (1, 4, 42, 255) for obj in objects({"error": "why"},
                                                                         ["error"])],
    [bytes((code,)) + raw for code in (0, 5) for raw in RAW_JSONISH],
    [b"A" * 33, b"~" * 22, b"x" * 21, b"x y" * 10, b"\x00", b"\x04"],  # tokens, short ones
]
NOTICE_BASES: list[dict[str, object]] = [
    {"event": "joined", "user": "alice", "text": "t"},
    {"event": "left", "user": "alice", "reason": "exit"},
    {"event": "error", "over": 7},
]
NOTICE_POOL: Pool = [
    [b"\x00" + obj for obj in objects(base, ["event", "user", "reason", "over"])]
    for base in NOTICE_BASES
] + [[b"\x00" + raw for raw in RAW_JSONISH]]
PLAIN_POOL: Pool = [
    [encode_plain_notice(Notice(event, "alice", over=7)) for event in NoticeEvent],
    [b"alice: hi", "bob: alice がチャットルームに参加しました".encode(), b"a: ", b": x",
     b"no separator", b"a:b"],
]
ROOMS = [b"room", "部屋".encode(), b"\xff\xfe", b"\xed\xa0\x80", b"r" * 255, b""]


class Picker:
    """Turns hypothesis' bytes into choices; past their end every choice is 0, and the
    all-zero choices make the simplest well-formed input (so shrinking heads there)."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._at = 0

    def byte(self) -> int:
        at = self._at
        self._at += 1
        return self._seed[at] if at < len(self._seed) else 0

    def take(self, size: int) -> bytes:
        out = self._seed[self._at : self._at + size]
        self._at += size
        return out

    def rest(self) -> bytes:
        return self.take(len(self._seed))

    def pick(self, pool: list[bytes]) -> bytes:
        return pool[(self.byte() << 8 | self.byte()) % len(pool)]

    def mutated(self, pool: Pool) -> bytes:
        value = self.pick(pool[self.byte() % len(pool)])
        mode = self.byte() % 6
        if mode == 1:  # cut short
            return value[: self.byte() * len(value) // 255]
        if mode == 2:  # one byte replaced
            at = (self.byte() << 8 | self.byte()) % (len(value) or 1)
            return value[:at] + bytes((self.byte(),)) + value[at + 1 :]
        if mode == 3:  # raw bytes
            return self.take(self.byte() % 48)
        return value


def near_frames(p: Picker, pool: Pool) -> bytes:
    """One to three TCRP frames whose every field is valid or not, then maybe junk."""
    out = b""
    for _ in range(1 + p.byte() % 3):
        room = p.take(p.byte() % 9) if p.byte() % 4 == 3 else p.pick(ROOMS)
        payload = p.mutated(pool)
        mode = p.byte() % 5
        size = len(payload)
        if mode == 1:
            size = max(0, size + p.byte() % 7 - 3)
        elif mode == 2:
            size = int.from_bytes(p.take(29), "big")
        operation = (1, 2, 1, 2, 0, 3, 255)[p.byte() % 7]
        state = (0, 1, 0, 1, 2, 2, 3)[p.byte() % 7]
        room_size = (len(room), len(room), len(room), 0, 255)[p.byte() % 5]
        out += bytes((room_size, operation, state)) + size.to_bytes(29, "big") + room + payload
    out += p.take(p.byte() % 6)
    return out[: p.byte() * len(out) // 255] if p.byte() % 4 == 3 else out


def chat_like(p: Picker) -> bytes:
    """A Stage 1 / Stage 2 / framed datagram of any size up to 4100 bytes."""
    head = bytes((p.byte() % 12, p.byte() % 40))[: 2 - p.byte() % 3]
    body = p.take(p.byte() % 64)
    tail = [b"", "こんにちは".encode(), b"\xe3\x81", b"/exit", b"  /EXIT\n"][p.byte() % 5]
    data = head + body + tail
    size_mode = p.byte() % 4
    if size_mode == 2:  # somewhere up to the limits
        data += b"m" * ((p.byte() << 8 | p.byte()) % 4101)
    elif size_mode == 3:  # right at them: 4090..4099 bytes
        data += b"m" * max(0, 4090 + p.byte() % 10 - len(data))
    return data


def chunked(data: bytes, seed: bytes) -> Iterator[bytes]:
    """``data`` cut into pieces of 1..48 bytes (one per seed byte), then the rest."""
    start = 0
    for b in seed:
        if start >= len(data):
            return
        size = 1 + b % 48
        yield data[start : start + size]
        start += size
    if start < len(data):
        yield data[start:]


Outcome = tuple[list[object], str | None, int, bytes, bytes]


def run_reader(role: Role, pieces: Iterable[bytes], max_payload: int) -> Outcome:
    """Feed pieces; the server side reads one Request. Only ProtocolError may escape."""
    reader = FrameReader(role, max_payload)
    events: list[object] = []
    error: str | None = None
    done = False
    for piece in pieces:
        reader.receive_data(piece)
        if done:
            continue
        try:
            while (event := reader.next_event()) is not NEED_DATA:
                events.append(event)
                if isinstance(event, Request):
                    done = True
                    break
                assert role is Role.CLIENT and isinstance(event, Response | Complete)
        except errors.RemoteProtocolError as exc:
            error, done = type(exc).__name__, True
    return events, error, reader.operation, reader.room_raw, reader.trailing


def check_reader(role: Role, seed: bytes, pool: Pool) -> None:
    """Raw bytes (1 in 4) or near-valid frames, fed whole and in random chunks."""
    p = Picker(seed)
    max_payload = (4096, 4096, 64, 0)[p.byte() % 4]
    chunks = p.take(p.byte() % 12)
    data = p.rest() if p.byte() % 4 == 3 else near_frames(p, pool)
    whole = run_reader(role, [data], max_payload)
    assert run_reader(role, chunked(data, chunks), max_payload) == whole


def parse(decode: Callable[[bytes], object], data: bytes) -> object:
    """A parser's value, or the RemoteProtocolError it raised; anything else escapes."""
    try:
        return decode(data)
    except errors.RemoteProtocolError as exc:
        return exc


def datagram(seed: bytes, pool: Pool | None = None) -> bytes:
    """Raw bytes (1 in 4), a chat-like datagram, or (with a pool) a mutated pool entry."""
    p = Picker(seed)
    mode = p.byte() % 4
    if mode == 3:
        return p.rest()
    if mode == 2 and pool is not None:
        return p.mutated(pool)
    return chat_like(p)


# One draw per example: hypothesis' own cost is what bounds 10,000 examples.
seeds = st.binary(max_size=400)


# --- fuzz: every parser ----------------------------------------------------------------------
@FUZZ
@given(seeds)
def test_fuzz_frame_reader_server(seed: bytes) -> None:
    check_reader(Role.SERVER, seed, REQUEST_POOL)


@FUZZ
@given(seeds)
def test_fuzz_frame_reader_client(seed: bytes) -> None:
    check_reader(Role.CLIENT, seed, RESPONSE_POOL)


@FUZZ
@given(seeds)
def test_fuzz_decode_request_payload(seed: bytes) -> None:
    p = Picker(seed)
    mode = p.byte() % 4
    if mode == 3:
        data = p.rest()
    elif mode == 2:  # valid UTF-8 text of any shape
        data = p.rest().decode("utf-8", "replace").encode()
    else:
        data = p.mutated(REQUEST_POOL)
    body = parse(decode_request_payload, data)
    if isinstance(body, RequestBody):
        assert 1 <= len(body.username.encode()) <= 255
        assert body.username == body.username.strip()
        assert body.password is None or 1 <= len(body.password.encode()) <= 255


@FUZZ
@given(seeds)
def test_fuzz_decode_chat(seed: bytes) -> None:
    data = datagram(seed)
    value = parse(decode_chat, data)
    if isinstance(value, ChatDatagram):
        assert encode_chat(value.room, value.token, value.message) == data
        is_exit(value.message)


@FUZZ
@given(seeds)
def test_fuzz_decode_framed(seed: bytes) -> None:
    value = parse(decode_framed, datagram(seed, NOTICE_POOL))
    assert isinstance(value, FramedChat | Notice | errors.RemoteProtocolError)


@FUZZ
@given(seeds)
def test_fuzz_decode_plain(seed: bytes) -> None:
    data = datagram(seed, PLAIN_POOL)
    value = parse(decode_plain, data)
    assert isinstance(value, FramedChat | Notice | errors.RemoteProtocolError)
    if isinstance(value, FramedChat):
        assert encode_plain_chat(value.username, value.message.encode()) == data


def run_exchange(pieces: Iterable[bytes], max_payload: int) -> tuple[list[object], str]:
    """Feed a server's answer, then the close; only RemoteProtocolError may escape."""
    exchange = ClientExchange(max_payload)
    exchange.send_request(Request.of(Operation.JOIN, "r", RequestBody("alice")))
    events: list[object] = []
    try:
        for piece in [*pieces, b""]:
            exchange.receive_data(piece)
            while (event := exchange.next_event()) is not NEED_DATA:
                events.append(event)
                if isinstance(event, TcrpClosed):
                    return events, exchange.state.value
    except errors.RemoteProtocolError as exc:
        return events, type(exc).__name__
    raise AssertionError("the close must end the exchange")


@FUZZ
@given(seeds)
def test_fuzz_client_exchange(seed: bytes) -> None:
    p = Picker(seed)
    max_payload = (4096, 4096, 64, 0)[p.byte() % 4]
    chunks = p.take(p.byte() % 12)
    data = p.rest() if p.byte() % 4 == 3 else near_frames(p, RESPONSE_POOL)
    whole = run_exchange([data], max_payload)
    assert run_exchange(chunked(data, chunks), max_payload) == whole


@FUZZ
@given(seeds)
def test_fuzz_decode_stage1(seed: bytes) -> None:
    data = datagram(seed)
    value = parse(decode_stage1, data)
    if isinstance(value, Stage1Datagram):
        assert bytes((len(value.username),)) + value.username + value.message == data


def test_all_zero_choices_are_well_formed() -> None:
    """Shrinking moves towards zero bytes; those pick the first, valid pool entries."""
    p = Picker(b"")
    assert (p.byte(), p.take(3), p.rest()) == (0, b"", b"")
    body = RequestBody("alice", "pw", Framing.OCM1)
    request = Request(Operation.CREATE, "room", b"room", body)
    assert run_reader(Role.SERVER, [near_frames(Picker(b""), REQUEST_POOL)], 4096)[:2] == (
        [request], None)
    ok = Response(1, b"room", Status.OK, Details(9001, True, 4057, 300.0, Framing.PLAIN), "")
    state_1 = b"\0" * 10 + b"\1"  # the eleventh choice is the State
    assert run_reader(Role.CLIENT, [near_frames(Picker(state_1), RESPONSE_POOL)], 4096)[:2] == (
        [ok], None)
    assert decode_framed(Picker(b"").mutated(NOTICE_POOL)) == Notice(NoticeEvent.JOINED, "alice")
    assert datagram(b"\x03raw") == b"raw"
    assert decode_chat(datagram(b"\0\1\1\0\2rt")) == ChatDatagram(b"r", b"t", b"")


# --- round trips ---------------------------------------------------------------------------------
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


usernames = (
    st.text(st.characters(exclude_categories=["Cs", *REFUSED_CATEGORIES]), min_size=1,
            max_size=40)
    .filter(lambda s: username_problem(s) is None)  # strip() and ": " (wire/names.py)
    .filter(lambda s: len(s.encode()) <= 255)
)
rooms = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60).filter(
    lambda s: len(s.encode()) <= 255
)
chunk_seeds = st.binary(max_size=12)
tokens = st.binary(min_size=22, max_size=80).map(lambda b: bytes(0x21 + x % 94 for x in b))


@ROUND_TRIP
@given(
    st.builds(
        Header,
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, MAX_PAYLOAD_SIZE_FIELD),
    )
)
def test_round_trip_header(header: Header) -> None:
    assert decode_header(encode_header(header)) == header


@ROUND_TRIP
@given(
    st.sampled_from([Operation.CREATE, Operation.JOIN]),
    rooms,
    usernames,
    st.none() | text,
    st.none() | st.sampled_from(Framing),
    chunk_seeds,
)
def test_round_trip_request(
    operation: Operation,
    room: str,
    username: str,
    password: str | None,
    framing: Framing | None,
    chunks: bytes,
) -> None:
    data = encode_request(Request.of(
        operation, room, RequestBody(username, password, framing=framing or Framing.PLAIN)))
    body = RequestBody(username, password or None, framing or Framing.PLAIN)
    expected = ([Request(operation, room, room.encode(), body)], None, operation,
                room.encode(), b"")
    assert run_reader(Role.SERVER, [data], 4096) == expected
    assert run_reader(Role.SERVER, chunked(data, chunks), 4096) == expected


def _legacy_username(text: str) -> bool:
    """Taken whole as the username: not a JSON object, and not starting like one."""
    try:
        return not isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return not text.lstrip().startswith("{")


@ROUND_TRIP
@given(st.sampled_from([Operation.CREATE, Operation.JOIN]), rooms,
       usernames.filter(_legacy_username))
def test_round_trip_legacy_request(operation: Operation, room: str, username: str) -> None:
    data = encode_legacy_request(operation, room, username)
    expected = Request(operation, room, room.encode(), RequestBody(username))
    assert run_reader(Role.SERVER, [data], 4096)[:2] == ([expected], None)


details = st.builds(
    Details,
    st.integers(0, 65535),
    st.booleans(),
    st.integers(0, 4096),
    st.floats(0, 1e9, allow_nan=False),
    st.sampled_from(Framing),
)


@ROUND_TRIP
@given(st.integers(0, 255).filter(lambda op: op != Operation.MEMBERS), st.binary(max_size=255),
       details, tokens, chunk_seeds)
def test_round_trip_ok_and_complete(
    operation: int, room: bytes, ok: Details, token: bytes, chunks: bytes
) -> None:
    data = encode_ok(operation, room, ok) + encode_complete(operation, room, token)
    expected = [
        Response(operation, room, Status.OK, ok, ""),
        Complete(operation, room, token),
    ]
    assert run_reader(Role.CLIENT, [data], 4096)[:2] == (expected, None)
    assert run_reader(Role.CLIENT, chunked(data, chunks), 4096)[:2] == (expected, None)


@ROUND_TRIP
@given(
    st.integers(0, 255),
    st.binary(max_size=255),
    st.sampled_from([s for s in Status if s is not Status.OK]),
    text,
)
def test_round_trip_error_response(
    operation: int, room: bytes, status: Status, reason: str
) -> None:
    data = encode_error(operation, room, status, reason)
    expected = [Response(operation, room, status, None, reason)]
    assert run_reader(Role.CLIENT, [data], 4096)[:2] == (expected, None)


@ROUND_TRIP
@given(st.binary(min_size=1, max_size=255), st.binary(min_size=1, max_size=255), text)
def test_round_trip_chat(room: bytes, token: bytes, message: str) -> None:
    data = encode_chat(room, token, message.encode())
    assert decode_chat(data) == ChatDatagram(room, token, message.encode())


@ROUND_TRIP
@given(usernames, text)
def test_round_trip_framed_chat(username: str, message: str) -> None:
    data = encode_framed_chat(username, message.encode())
    assert decode_framed(data) == FramedChat(username, message)
    assert encode_plain_chat(username, message.encode()) == f"{username}: {message}".encode()


notices = st.one_of(
    st.builds(Notice, st.just(NoticeEvent.JOINED), usernames),
    st.builds(Notice, st.just(NoticeEvent.LEFT), usernames, st.none() | st.sampled_from(Reason)),
    st.just(Notice(NoticeEvent.CLOSED)),
    st.builds(
        Notice, st.just(NoticeEvent.DISCONNECTED), reason=st.none() | st.sampled_from(Reason)
    ),
    st.builds(Notice, st.just(NoticeEvent.ERROR), over=st.integers(0, 2**32)),
)


@ROUND_TRIP
@given(notices)
def test_round_trip_framed_notice(notice: Notice) -> None:
    assert decode_framed(encode_framed_notice(notice)) == notice


@ROUND_TRIP
@given(usernames, text)
def test_round_trip_stage1(username: str, message: str) -> None:
    data = encode_stage1(username, message)
    assert decode_stage1(data) == Stage1Datagram(username.encode(), message.encode())
