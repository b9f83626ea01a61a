"""relay/ipc.py: every pipe message survives encode -> decode; anything else is refused."""

from __future__ import annotations

import dataclasses
import struct
import typing

import orjson
import pytest

from relay import ipc
from relay.ipc import (
    Ack,
    AddMember,
    Bound,
    Bye,
    Closed,
    CloseRoom,
    Configure,
    Counters,
    FrameDecoder,
    IpcError,
    Left,
    Message,
    Ping,
    Pong,
    Rebind,
    Register,
    Shutdown,
    Start,
    Stats,
    WorkerSettings,
)
from wire.codes import Framing, Reason

TOKEN = b"B" + b"x" * 32
SETTINGS = WorkerSettings(inactivity_timeout=300.0, max_send_failures=3, chat_rate=2.5,
                          chat_burst=20, max_stage1_clients=10_000, log_level="debug",
                          log_format="json", realtime_priority=0, sendmmsg=False)
STATS = Stats(worker=1, pid=4242, sendmmsg=True, forwarded=7, rooms=2, members=5,
              send_failures=3, chat=Counters(10, 9, {"malformed": 1}, {"inactive": 2}),
              stage1_clients=4, stage1=Counters(6, 5, {"too_large": 1}, {}))

EXAMPLES: list[Message] = [
    AddMember(1, "room", TOKEN, "alice", "127.0.0.1", Framing.PLAIN, True),
    AddMember(2, "部屋", TOKEN, "ボブ", "127.0.0.2", Framing.OCM1, False,
              ("127.0.0.2", 4000), True),
    Register(TOKEN, 65535),
    Start(),
    Ping(3),
    Configure(SETTINGS),
    Shutdown(),
    CloseRoom("lobby", "moved"),
    Rebind(7, b"Atoken", "127.0.1.2"),
    Ack(1, True),
    Ack(2, False),
    Pong(3),
    Bye(),
    Bound(TOKEN, "127.0.0.1", 5000),
    *(Left(TOKEN, reason) for reason in Reason),
    Closed("room", "exit"),
    Closed("room", "shutdown"),
    STATS,
]


def test_every_message_type_has_an_example() -> None:
    kinds = set(typing.get_args(ipc.Command)) | set(typing.get_args(ipc.Event))
    assert {type(m) for m in EXAMPLES} == kinds


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    frame = ipc.encode(message)
    assert struct.unpack("!i", frame[:4])[0] == len(frame) - 4
    assert FrameDecoder().feed(frame) == [message]


def test_frames_split_anywhere_and_batched() -> None:
    stream = b"".join(map(ipc.encode, EXAMPLES))
    for step in (1, 3, 7, 64, len(stream)):
        decoder = FrameDecoder()
        got: list[Message] = []
        for pos in range(0, len(stream), step):
            got += decoder.feed(stream[pos : pos + step])
        assert got == EXAMPLES


def test_stats_plain_form() -> None:
    body = orjson.loads(ipc.encode(STATS)[4:])
    assert body["chat"] == {"received": 10, "relayed": 9, "drops": {"malformed": 1},
                            "evictions": {"inactive": 2}}
    plain = STATS.as_dict()
    assert plain["received"] == 10 and plain["drops"] == {"malformed": 1}
    assert plain["stage1"] == {"clients": 4, "received": 6, "relayed": 5,
                               "drops": {"too_large": 1}, "evictions": {}}
    assert {"worker", "pid", "sendmmsg", "hot_path", "forwarded", "rooms", "members",
            "send_failures"} <= plain.keys()


def test_the_body_is_the_declaration() -> None:
    """One key per field, named as the field, plus the tag: nothing is spelled twice."""
    for message in EXAMPLES:
        body = orjson.loads(ipc.encode(message)[4:])
        assert body.keys() - {"t"} == {f.name for f in dataclasses.fields(message)}


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Ping(1).id = 2  # type: ignore[misc]


def frame(body: object) -> bytes:
    raw = orjson.dumps(body)
    return struct.pack("!i", len(raw)) + raw


STATS_BODY = orjson.loads(ipc.encode(STATS)[4:])


def member(**change: object) -> dict[str, object]:
    body: dict[str, object] = {"t": "member", "id": 1, "room": "r", "token": "Axx",
                               "user": "u", "ip": "127.0.0.1", "framing": "plain",
                               "host": True, "addr": None, "announced": False}
    body.update(change)
    return body


@pytest.mark.parametrize(("data", "why"), [
    (struct.pack("!i", -1), "frame length -1"),
    (struct.pack("!i", ipc.MAX_FRAME_BYTES + 1), "frame length"),
    (struct.pack("!i", 3) + b"{x}", "expected a string key"),
    (frame([1, 2]), "object with a string 't'"),
    (frame({"t": 5}), "object with a string 't'"),
    (frame({"t": "reboot"}), "unknown message 'reboot'"),
    (frame({"t": "ping"}), "ping: id must be an integer, got None"),
    (frame({"t": "ping", "id": True}), "ping: id must be an integer"),
    (frame({"t": "ping", "id": 1.5}), "ping: id must be an integer"),
    (frame({"t": "ack", "id": 1, "ok": 1}), "ack: ok must be true or false"),
    (frame({"t": "bound", "token": "Axx", "ip": 7, "port": 1}), "bound: ip must be a string"),
    (frame({"t": "register", "token": "トークン", "port": 1}), "register: token must be ASCII"),
    (frame({"t": "left", "token": "Axx", "reason": "bored"}), "unknown reason 'bored'"),
    (frame(member(framing="ocm9")), "unknown framing 'ocm9'"),
    (frame(member(addr=["127.0.0.1"])), r"addr must be \[ip, port\] or null"),
    (frame(member(addr=["127.0.0.1", True])), r"addr must be \[ip, port\] or null"),
    (frame(member(addr="127.0.0.1:5")), r"addr must be \[ip, port\] or null"),
    (frame({"t": "config", "settings": {"inactivity_timeout": "soon"}}),
     "config.settings: inactivity_timeout must be a number"),
    (frame({"t": "config"}), "config: settings must be an object"),
    (frame({**STATS_BODY, "chat": {**STATS_BODY["chat"], "drops": {"x": "many"}}}),
     "stats.chat: drops must map names to integers"),
    (frame({**STATS_BODY, "drops": {}}), r"stats: unexpected field\(s\) drops"),
    (frame({**STATS_BODY, "chat": {**STATS_BODY["chat"], "more": 1}}),
     r"stats.chat: unexpected field\(s\) more"),
    (frame({k: v for k, v in STATS_BODY.items() if k != "pid"}),
     "stats: pid must be an integer, got None .the field is missing"),
    (frame({"t": "closed", "room": "r"}), "closed: reason must be a string"),
    (frame({"t": "bye", "id": 1}), r"bye: unexpected field\(s\) id"),
    (frame({"t": "ack", "id": 1, "ok": True, "extra": None}),
     r"ack: unexpected field\(s\) extra"),
    (frame(member(e2e=False, proven=False, keys={"x25519": "AA=="})), "member: keys: "),
    (frame(member(e2e=False, proven=False, keys=None, id="1")), "member: id must be an integer"),
    (frame(member(e2e=1, proven=False, keys=None)), "member: e2e must be true or false"),
    (frame({**orjson.loads(ipc.encode(STATS)[4:]), "stage1": None}),
     "stats: stage1 must be an object"),
])
def test_malformed_frames_raise(data: bytes, why: str) -> None:
    with pytest.raises(IpcError, match=why):
        FrameDecoder().feed(data)


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = ipc.encode(Ping(9))
    decoder = FrameDecoder()
    assert decoder.feed(data[:2]) == []
    assert decoder.feed(data[2:-1]) == []
    assert decoder.feed(data[-1:]) == [Ping(9)]
    assert decoder.feed(b"") == []
