"""The encrypted-room TCRP fields (docs/e2e.md §2.1) against the real server, as it is
before the server-side wiring: what it must already refuse, and that old behaviour stays.
"""

from __future__ import annotations

import orjson

from tests.integration.harness import Server
from tests.integration.peer import tcrp_exchange
from wire.codes import Framing, Operation, Status
from wire.e2e import PublicKeys
from wire.tcrp import encode_frame, encode_request

H = "127.0.0.1"
KEYS = PublicKeys(bytes(range(32)), bytes(range(32, 64)))


def test_create_encrypted_room_without_keys_or_framing_is_status_4(
    server: Server, room_name: str
) -> None:
    for request in (
        encode_request(Operation.CREATE, room_name, "alice", framing=Framing.OCM1, e2e=True),
        encode_request(Operation.CREATE, room_name, "alice", keys=KEYS, e2e=True),
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
    request = encode_request(Operation.CREATE, room_name, "alice", framing=Framing.OCM1,
                             keys=KEYS)
    response, complete = tcrp_exchange(H, server.tcp_port, request)
    assert response.status == Status.OK and complete is not None
    assert response.details is not None and not response.details.e2e
    assert response.details.members == ()
