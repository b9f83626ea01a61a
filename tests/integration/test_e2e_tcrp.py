"""The encrypted-room TCRP fields (docs/e2e.md §2.1, §2.2) and Operation 3 (§2.4) against
the real server: the join rules and their order, the member lists, and that old behaviour
stays.
"""

from __future__ import annotations

import orjson

from tests.integration.harness import Server
from tests.integration.peer import tcrp_exchange
from wire.codes import Framing, Operation, Status
from wire.e2e import MemberInfo, PublicKeys
from wire.tcrp import (
    Request,
    RequestBody,
    Response,
    encode_frame,
    encode_members_request,
    encode_request,
)

H = "127.0.0.1"
KEYS = PublicKeys(bytes(range(32)), bytes(range(32, 64)))
BOB_KEYS = PublicKeys(bytes(range(64, 96)), bytes(range(96, 128)))
NEEDS_KEYS = "an encrypted room needs the member's keys and ocm1 framing"


def _request(server: Server, request: bytes, bind_ip: str = H) -> tuple[Response, bytes | None]:
    response, complete = tcrp_exchange(H, server.tcp_port, request, bind_ip=bind_ip)
    return response, None if complete is None else complete.token


def _create_encrypted(server: Server, room: str, password: str | None = None) -> bytes:
    response, token = _request(server, encode_request(
        Request.of(Operation.CREATE, room,
            RequestBody("alice", password, framing=Framing.OCM1, keys=KEYS, e2e=True))))
    assert response.status == Status.OK and token is not None, response.error
    assert response.details is not None and response.details.e2e
    assert response.details.members == ()
    return token


def test_join_rules_of_an_encrypted_room(server: Server, room_name: str) -> None:
    _create_encrypted(server, room_name, "pw")

    def join(user: str, password: str | None = "pw", framing: Framing = Framing.OCM1,
             keys: PublicKeys | None = BOB_KEYS) -> Response:
        return _request(server, encode_request(
            Request.of(Operation.JOIN, room_name,
                RequestBody(user, password, framing=framing, keys=keys))))[0]

    # a wrong password never learns the room is encrypted (3 before 4)
    assert join("bob", "wrong", keys=None).status == Status.INVALID_PASSWORD
    for refused in (join("bob", keys=None), join("bob", framing=Framing.PLAIN),
                    join("alice", keys=None)):  # 4 before USERNAME_TAKEN
        assert (refused.status, refused.error) == (Status.INVALID_REQUEST, NEEDS_KEYS)
    assert join("alice").status == Status.USERNAME_TAKEN
    ok = join("bob")
    assert ok.status == Status.OK and ok.details is not None and ok.details.e2e
    assert ok.details.members == (MemberInfo("alice", True, KEYS),)
    carol = join("carol", keys=KEYS)
    assert carol.details is not None
    assert carol.details.members == (MemberInfo("alice", True, KEYS),
                                     MemberInfo("bob", False, BOB_KEYS))


def test_members_operation(server: Server, room_name: str) -> None:
    alice = _create_encrypted(server, room_name)
    # the curriculum's reference client (a bare-username payload) is told why
    legacy = _request(server, encode_frame(Operation.JOIN, 0, room_name.encode(), b"carol"))[0]
    assert (legacy.status, legacy.error) == (Status.INVALID_REQUEST, NEEDS_KEYS)
    response, bob = _request(server, encode_request(
        Request.of(Operation.JOIN, room_name,
            RequestBody("bob", framing=Framing.OCM1, keys=BOB_KEYS))))
    assert bob is not None
    everyone = (MemberInfo("alice", True, KEYS), MemberInfo("bob", False, BOB_KEYS))
    for token in (alice, bob):
        answer, complete = _request(server, encode_members_request(room_name, token))
        assert (answer.status, answer.members, answer.details, complete) == (
            Status.OK, everyone, None, None)
    not_member = (Status.INVALID_REQUEST, "not a member of this room")
    answer = _request(server, encode_members_request(room_name, b"x" * 33))[0]
    assert (answer.status, answer.error) == not_member
    answer = _request(server, encode_members_request(room_name, bob), bind_ip="127.0.0.2")[0]
    assert (answer.status, answer.error) == not_member  # the token's IP only
    answer = _request(server, encode_members_request(room_name + "-none", bob))[0]
    assert answer.status == Status.ROOM_NOT_FOUND
    bad = _request(server, encode_frame(Operation.MEMBERS, 0, room_name.encode(), b"{}"))[0]
    assert bad.status == Status.INVALID_REQUEST


def test_members_of_a_plain_room_have_no_keys(server: Server, room_name: str) -> None:
    response, alice = _request(server, encode_request(
        Request.of(Operation.CREATE, room_name,
            RequestBody("alice", framing=Framing.OCM1, keys=KEYS))))
    assert alice is not None
    _request(server, encode_request(Request.of(Operation.JOIN, room_name, RequestBody("bob"))))
    answer = _request(server, encode_members_request(room_name, alice))[0]
    assert answer.members == (MemberInfo("alice", True), MemberInfo("bob", False))


def test_create_encrypted_room_without_keys_or_framing_is_status_4(
    server: Server, room_name: str
) -> None:
    for request in (
        encode_request(
            Request.of(Operation.CREATE, room_name,
                RequestBody("alice", framing=Framing.OCM1, e2e=True))),
        encode_request(
            Request.of(Operation.CREATE, room_name, RequestBody("alice", keys=KEYS, e2e=True))),
    ):
        response, complete = tcrp_exchange(H, server.tcp_port, request)
        assert (response.status, complete) == (Status.INVALID_REQUEST, None)
        assert "encrypted room" in response.error


def test_bad_keys_are_status_4(server: Server, room_name: str) -> None:
    for keys in ({"x25519": "AAEC", "ed25519": "AAEC"}, [], "k", {"x25519": 1}):
        payload = orjson.dumps({"username": "alice", "keys": keys})
        response, complete = tcrp_exchange(
            H, server.tcp_port, encode_frame(Operation.CREATE, 0, room_name.encode(), payload)
        )
        assert (response.status, complete) == (Status.INVALID_REQUEST, None), keys
        assert "keys" in response.error


def test_keys_in_a_plain_room_change_nothing(server: Server, room_name: str) -> None:
    request = encode_request(
        Request.of(Operation.CREATE, room_name,
            RequestBody("alice", framing=Framing.OCM1, keys=KEYS)))
    response, complete = tcrp_exchange(H, server.tcp_port, request)
    assert response.status == Status.OK and complete is not None
    assert response.details is not None and not response.details.e2e
    assert response.details.members == ()
