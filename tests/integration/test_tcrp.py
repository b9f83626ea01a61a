"""docs/protocol.md §1 against the real server: every status row, framing details, limits."""

from __future__ import annotations

import socket

import orjson
import pytest

from tests.integration.harness import Server, start_server
from tests.integration.peer import JoinRefused, join, tcrp_exchange
from wire.codes import Framing, Operation, Status
from wire.limits import max_message_bytes
from wire.tcrp import Request, RequestBody, encode_frame, encode_legacy_request, encode_request

H = "127.0.0.1"


def status_of(server: Server, request: bytes) -> tuple[int, bytes]:
    """(status, raw State 1 frame header+name) for a request expected to fail."""
    response, complete = tcrp_exchange(H, server.tcp_port, request)
    assert complete is None
    return response.status, response.room_raw


def test_create_then_join_ok_with_details_and_token(server: Server, room_name: str) -> None:
    host = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob", framing=Framing.OCM1)
    for peer, is_host, framing in ((host, True, "plain"), (bob, False, "ocm1")):
        d = peer.details
        assert d.host is is_host and d.framing.value == framing  # type: ignore[attr-defined]
        assert d.udp_port == server.udp_port  # type: ignore[attr-defined]
        assert d.inactivity_timeout == 300.0  # type: ignore[attr-defined]
        assert d.max_message == max_message_bytes(  # type: ignore[attr-defined]
            len(room_name.encode()), len(peer.token), len(peer.user))
        assert 22 <= len(peer.token) <= 255
        assert all(0x21 <= b <= 0x7E for b in peer.token)
    assert host.token != bob.token


def test_state1_and_state2_echo_operation_and_room(server: Server, room_name: str) -> None:
    raw = room_name.encode()
    response, complete = tcrp_exchange(H, server.tcp_port,
                                       encode_request(
                                           Request.of(Operation.CREATE, raw, RequestBody("alice"))))
    assert response.operation == Operation.CREATE and response.room_raw == raw
    assert complete is not None and complete.operation == 1 and complete.room_raw == raw


def test_legacy_payload_is_the_username(server: Server, room_name: str) -> None:
    # The curriculum's reference client sends the bare username as the payload.
    response, complete = tcrp_exchange(
        H, server.tcp_port, encode_legacy_request(Operation.CREATE, room_name, '"quoted"'))
    assert response.status == Status.OK and complete is not None
    with pytest.raises(JoinRefused) as exc:  # the name is taken, quotes included
        join(H, server.tcp_port, Operation.JOIN, room_name, '"quoted"')
    assert exc.value.status == Status.USERNAME_TAKEN
    assert join(H, server.tcp_port, Operation.JOIN, room_name, "quoted").details.host is False


def test_room_exists_and_not_found(server: Server, room_name: str) -> None:
    join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    with pytest.raises(JoinRefused) as exc:
        join(H, server.tcp_port, Operation.CREATE, room_name, "bob")
    assert exc.value.status == Status.ROOM_EXISTS
    with pytest.raises(JoinRefused) as exc:
        join(H, server.tcp_port, Operation.JOIN, room_name + "-nope", "bob")
    assert exc.value.status == Status.ROOM_NOT_FOUND
    assert exc.value.response.error  # a human-readable reason


def test_password_protected_room(server: Server, room_name: str) -> None:
    join(H, server.tcp_port, Operation.CREATE, room_name, "alice", password="s3cret")
    for wrong in (None, "", "S3cret"):
        with pytest.raises(JoinRefused) as exc:
            join(H, server.tcp_port, Operation.JOIN, room_name, "bob", password=wrong)
        assert exc.value.status == Status.INVALID_PASSWORD
    assert join(H, server.tcp_port, Operation.JOIN, room_name, "bob", password="s3cret")


def test_password_ignored_by_open_room(server: Server, room_name: str) -> None:
    join(H, server.tcp_port, Operation.CREATE, room_name, "alice", password="")
    assert join(H, server.tcp_port, Operation.JOIN, room_name, "bob", password="whatever")


def test_username_taken_then_free_after_exit(server: Server, room_name: str) -> None:
    host = join(H, server.tcp_port, Operation.CREATE, room_name, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    assert host.recv_text().startswith("bob ")  # bob is bound: joined notice
    with pytest.raises(JoinRefused) as exc:
        join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    assert exc.value.status == Status.USERNAME_TAKEN
    bob.send("/exit")
    assert host.recv_text() == "bob がチャットルームから退出しました"
    assert join(H, server.tcp_port, Operation.JOIN, room_name, "bob")


def _header(size: int, op: int, state: int, payload_size: int) -> bytes:
    return bytes([size, op, state]) + payload_size.to_bytes(29, "big")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (_header(0, 1, 0, 2) + b"{}", Status.INVALID_REQUEST),  # RoomNameSize 0
        (_header(1, 4, 0, 5) + b"rbob", Status.INVALID_REQUEST),  # unknown operation
        (_header(1, 1, 1, 3) + b"rbob", Status.INVALID_REQUEST),  # State 1 from a client
        (_header(1, 9, 9, 10**9) + b"r", Status.INVALID_REQUEST),  # op before size
        (_header(1, 1, 0, 4097) + b"r", Status.TOO_LARGE),  # refused without the payload
        (encode_frame(1, 0, b"\xff", b"bob"), Status.INVALID_REQUEST),  # room not UTF-8
        (encode_frame(1, 0, b"r", b"\xffbob"), Status.INVALID_REQUEST),  # payload not UTF-8
        (encode_frame(1, 0, b"r", b""), Status.INVALID_REQUEST),  # empty username
        (encode_frame(1, 0, b"r", b'{"password": "x"}'), Status.INVALID_REQUEST),
        (encode_frame(1, 0, b"r", b'{"username": 5}'), Status.INVALID_REQUEST),
        (encode_frame(1, 0, b"r", b'{"username": "a", "password": 1}'),
         Status.INVALID_REQUEST),
        (encode_frame(1, 0, b"r", b'{"username": "a", "framing": []}'),
         Status.INVALID_REQUEST),
        (encode_frame(1, 0, b"r", b'{"username": " a"}'), Status.INVALID_REQUEST),
        (encode_frame(1, 0, b"r", b'{"username": "a\\u0007b"}'), Status.INVALID_REQUEST),
        (encode_frame(1, 0, b"r", b'{"username": "a\\u0085"}'), Status.INVALID_REQUEST),
        (encode_frame(1, 0, b"r", orjson.dumps({"username": "u" * 256})), Status.TOO_LARGE),
        (encode_frame(1, 0, b"r", orjson.dumps({"username": " " + "u" * 256})),
         Status.TOO_LARGE),  # sizes (5) before username characters (4)
        (encode_frame(1, 0, b"r", orjson.dumps({"username": "a", "password": "p" * 256})),
         Status.TOO_LARGE),
    ],
)
def test_invalid_requests(server: Server, request_bytes: bytes, status: Status) -> None:
    got, room = status_of(server, request_bytes)
    assert got == status
    assert room == request_bytes[32 : 32 + request_bytes[0]]


def test_request_in_many_segments(server: Server, room_name: str) -> None:
    request = encode_request(Request.of(Operation.CREATE, room_name, RequestBody("alice")))
    with socket.create_connection((H, server.tcp_port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(request)):
            sock.sendall(request[i : i + 1])
        data = b""
        while len(data) < 33:
            data += sock.recv(4096)
    assert data[2] == 1 and data[32 + len(room_name.encode())] == Status.OK


def test_room_full_and_incomplete_request_timeout() -> None:
    with start_server("--max-members", "2", "--tcp-timeout", "1", workers=1) as srv:
        join(H, srv.tcp_port, Operation.CREATE, "full", "alice")
        join(H, srv.tcp_port, Operation.JOIN, "full", "bob")
        with pytest.raises(JoinRefused) as exc:
            join(H, srv.tcp_port, Operation.JOIN, "full", "carol")
        assert exc.value.status == Status.ROOM_FULL
        with socket.create_connection((H, srv.tcp_port), timeout=10) as sock:
            sock.sendall(encode_request(
                Request.of(Operation.JOIN, "full", RequestBody("dave")))[:20])
            sock.settimeout(10)
            try:
                assert sock.recv(100) == b""  # closed by the server, nothing answered
            except ConnectionResetError:
                pass


def test_max_payload_flag() -> None:
    with start_server("--max-payload", "64", workers=1) as srv:
        small = encode_request(Request.of(Operation.CREATE, "r", RequestBody("a" * 30)))
        big = encode_request(Request.of(Operation.CREATE, "r2", RequestBody("a" * 60)))
        assert tcrp_exchange(H, srv.tcp_port, small)[0].status == Status.OK
        assert tcrp_exchange(H, srv.tcp_port, big)[0].status == Status.TOO_LARGE


def test_malformed_json_object_is_status_4_not_a_username(server: Server, room_name: str
                                                         ) -> None:
    """A payload that starts like a JSON object but is not one may carry a password: the
    server refuses it (status 4) instead of opening a room named after it (§1.2)."""
    payload = b'{"username":"alice","password":"hunter2",}'
    status, _ = status_of(server, encode_frame(Operation.CREATE, 0, room_name.encode(),
                                               payload))
    assert status == Status.INVALID_REQUEST
    with pytest.raises(JoinRefused) as exc:  # and no room was opened
        join(H, server.tcp_port, Operation.JOIN, room_name, "bob")
    assert exc.value.status == Status.ROOM_NOT_FOUND


@pytest.mark.parametrize("username", ["\u202eecila", "al\u200bice", "a\u2028b", "bob: hi"])
def test_username_policy_is_status_4(server: Server, room_name: str, username: str) -> None:
    with pytest.raises(JoinRefused) as exc:
        join(H, server.tcp_port, Operation.CREATE, room_name, username)
    assert exc.value.status == Status.INVALID_REQUEST


def test_usernames_are_unique_up_to_nfc(server: Server, room_name: str) -> None:
    join(H, server.tcp_port, Operation.CREATE, room_name, "\u00e9")
    with pytest.raises(JoinRefused) as exc:
        join(H, server.tcp_port, Operation.JOIN, room_name, "e\u0301")
    assert exc.value.status == Status.USERNAME_TAKEN
