"""Cluster mode without sockets: the link's framing and MAC, placement, secret, config."""

from __future__ import annotations

from dataclasses import replace

import pytest

from control import clusterlink as link
from control.cluster import NodeInfo, load_secret, pick_node
from control.config import Config, ConfigError, load
from wire.e2e import PublicKeys
from wire.limits import MAX_E2E_MEMBERS

SECRET = b"0123456789abcdef-secret"
NONCE = bytes(range(16))
REQUEST = link.ForwardedRequest(1, "room", "alice", None, "ocm1", "127.0.2.1", "B")


def test_mac_verifies_only_the_same_secret_nonce_and_body() -> None:
    body = link.encode_frame(REQUEST.to_json())[link.LENGTH.size:]
    mac = link.sign(SECRET, NONCE, body)
    assert len(mac) == link.MAC_BYTES
    assert link.verify(SECRET, NONCE, body, mac)
    assert not link.verify(b"another-secret-0123", NONCE, body, mac)
    assert not link.verify(SECRET, bytes(16), body, mac)  # a replay on a new connection
    assert not link.verify(SECRET, NONCE, body.replace(b"alice", b"mallo"), mac)
    assert SECRET not in body and SECRET not in mac


def test_frames_round_trip_and_are_bounded() -> None:
    frame = link.encode_frame({"port": 5000})
    assert link.frame_length(frame[:4]) == len(frame) - 4
    assert link.decode_body(frame[4:]) == {"port": 5000}
    with pytest.raises(link.LinkError):
        link.frame_length((link.MAX_LINK_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(link.LinkError):
        link.encode_frame({"x": "y" * link.MAX_LINK_FRAME_BYTES})
    with pytest.raises(link.LinkError):
        link.decode_body(b"{not json")


def test_forwarded_request_round_trip_and_types() -> None:
    assert link.ForwardedRequest.from_json(REQUEST.to_json()) == REQUEST
    with pytest.raises(link.LinkError):
        link.ForwardedRequest.from_json({"op": 1})
    with pytest.raises(link.LinkError):
        link.ForwardedRequest.from_json({**REQUEST.to_json(), "password": 5})
    with pytest.raises(link.LinkError):
        link.ForwardedRequest.from_json([1, 2])


def test_forwarded_request_carries_keys_and_e2e() -> None:
    """docs/e2e.md §2.1 across nodes: the owner sees the member's keys and the create's
    ``e2e`` flag; a frame of an older node (neither key) still decodes."""
    keys = PublicKeys(bytes(range(32)), bytes(range(32, 64)))
    e2e = replace(REQUEST, keys=keys, e2e=True)
    obj = e2e.to_json()
    assert obj["keys"] == keys.to_json() and obj["e2e"] is True
    assert link.ForwardedRequest.from_json(obj) == e2e
    assert "keys" not in REQUEST.to_json() and "e2e" not in REQUEST.to_json()
    for bad in ({**obj, "e2e": 1}, {**obj, "keys": {"x25519": "AAEC"}}, {**obj, "keys": []}):
        with pytest.raises(link.LinkError):
            link.ForwardedRequest.from_json(bad)
    members = [{"user": f"u{i:03d}", "host": i == 0, "keys": keys.to_json()}
               for i in range(MAX_E2E_MEMBERS)]
    frame = link.encode_frame({"status": 0, "members": members})  # the largest member list
    assert link.frame_length(frame[:4]) == len(frame) - 4


def node(node_id: str, members: int, rooms: int = 0) -> NodeInfo:
    return NodeInfo(node_id, "127.0.1.1", 9000, 9001, 9003, rooms, members)


def test_placement_is_least_loaded_then_fewest_rooms_then_lowest_id() -> None:
    assert pick_node([]) is None
    assert pick_node([node("a", 5), node("b", 2), node("c", 9)]).id == "b"  # type: ignore[union-attr]
    assert pick_node([node("b", 2, 3), node("a", 2, 3), node("c", 2, 1)]).id == "c"  # type: ignore[union-attr]
    assert pick_node([node("b", 0), node("a", 0)]).id == "a"  # type: ignore[union-attr]
    assert NodeInfo.from_json(node("x", 1, 2).to_json()) == node("x", 1, 2)


def test_secret_from_env_or_file_and_at_least_16_bytes(tmp_path: object) -> None:
    cfg = Config(cluster="redis://127.0.0.1:6379/0", node_id="a", host="127.0.1.1")
    assert load_secret(cfg, {"OCM_CLUSTER_SECRET": "s" * 16}) == b"s" * 16
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        load_secret(cfg, {"OCM_CLUSTER_SECRET": "short"})
    with pytest.raises(ConfigError, match="OCM_CLUSTER_SECRET"):
        load_secret(cfg, {})
    path = f"{tmp_path}/secret"
    with open(path, "w") as fh:
        fh.write("f" * 32 + "\n")
    assert load_secret(Config(cluster_secret_file=path), {}) == b"f" * 32
    with pytest.raises(ConfigError, match="missing"):
        load_secret(Config(cluster_secret_file=f"{tmp_path}/missing"), {})


def test_cluster_settings_from_flags_and_env() -> None:
    cfg, _ = load(["--cluster", "redis://127.0.0.1:6379/2", "--node-id", "n1",
                   "--advertise", "10.0.0.5"], environ={"OCM_CLUSTER_LEASE": "3"})
    assert (cfg.cluster, cfg.node_id, cfg.advertise, cfg.cluster_lease) == (
        "redis://127.0.0.1:6379/2", "n1", "10.0.0.5", 3.0)
    assert Config().cluster == ""  # off by default: one node
    with pytest.raises(ConfigError, match="node_id"):
        load(["--cluster", "redis://127.0.0.1:6379/0", "--advertise", "10.0.0.5"], {})
    with pytest.raises(ConfigError, match="advertise"):
        load(["--cluster", "redis://127.0.0.1:6379/0", "--node-id", "n1"], {})
    with pytest.raises(ConfigError, match="redis://"):
        load(["--cluster", "http://x", "--node-id", "n1", "--host", "127.0.0.1"], {})
    with pytest.raises(ConfigError, match="cluster_lease"):
        load(["--cluster-lease", "0"], {})


def test_forwarded_request_carries_a_resume_secret() -> None:
    resumed = replace(REQUEST, framing="ocm1r", resume="s" * 32)
    assert link.ForwardedRequest.from_json(resumed.to_json()) == resumed
    assert "resume" not in REQUEST.to_json()
    with pytest.raises(link.LinkError):
        link.ForwardedRequest.from_json({**REQUEST.to_json(), "resume": 5})
