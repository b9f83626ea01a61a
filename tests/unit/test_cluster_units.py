"""Cluster mode without sockets: the link's messages, framing and MAC, placement, secret,
config."""

from __future__ import annotations

import pytest

from control import clusterlink as link
from control.clusterleases import NodeInfo, pick_node
from control.clusterroute import load_secret
from control.config import Config, ConfigError, load
from wire.codes import Framing, Operation, Status
from wire.e2e import MemberInfo, PublicKeys
from wire.limits import MAX_E2E_MEMBERS
from wire.tcrp import Details, Request, RequestBody

SECRET = b"0123456789abcdef-secret"
NONCE = bytes(range(16))
KEYS = PublicKeys(bytes(range(32)), bytes(range(32, 64)))
REQUEST = link.Forward(Operation.CREATE, "room", RequestBody("alice", None, Framing.OCM1),
                       "127.0.2.1", "B")


def body_of(message: link.Message) -> bytes:
    frame = link.encode(message)
    assert link.frame_length(frame[:4]) == len(frame) - 4
    return frame[4:]


def test_mac_verifies_only_the_same_secret_nonce_and_body() -> None:
    body = body_of(REQUEST)
    mac = link.sign(SECRET, NONCE, body)
    assert len(mac) == link.MAC_BYTES
    assert link.verify(SECRET, NONCE, body, mac)
    assert not link.verify(b"another-secret-0123", NONCE, body, mac)
    assert not link.verify(SECRET, bytes(16), body, mac)  # a replay on a new connection
    assert not link.verify(SECRET, NONCE, body.replace(b"alice", b"mallo"), mac)
    assert SECRET not in body and SECRET not in mac


# The bytes on the link, declared once per message: each vector is what ``encode`` writes
# (after the 4-byte length) and what the decoder reads back into the same value.
VECTORS: list[tuple[link.Message, bytes]] = [
    (link.Hello(NONCE), b'{"nonce":"000102030405060708090a0b0c0d0e0f"}'),
    (REQUEST, b'{"op":1,"room":"room","ip":"127.0.2.1","origin":"B","secure":false,"user":"alice",'
              b'"password":null,"framing":"ocm1","keys":null,"e2e":false,"resume":null}'),
    (link.Forward(Operation.JOIN, "r", RequestBody("bob", "pw", Framing.PLAIN, KEYS, True),
                  "127.0.2.2", "C", secure=True),
     b'{"op":2,"room":"r","ip":"127.0.2.2","origin":"C","secure":true,"user":"bob",'
     b'"password":"pw",'
     b'"framing":"plain","keys":{"x25519":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",'
     b'"ed25519":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="},"e2e":true,'
     b'"resume":null}'),
    (link.RelayRequest(b"AbToken", "127.0.3.1", "A"),
     b'{"kind":"relay","token":"AbToken","ip":"127.0.3.1","origin":"A","proof":null}'),
    (link.RelayRequest(b"AbToken", "127.0.3.1", "A", b"\x01\x07r"),
     b'{"kind":"relay","token":"AbToken","ip":"127.0.3.1","origin":"A","proof":"010772"}'),
    (link.MembersQuery("r", b"AbToken", "127.0.3.1", "A"),
     b'{"kind":"members","room":"r","token":"AbToken","ip":"127.0.3.1","origin":"A"}'),
    (link.Registration(5000), b'{"port":5000}'),
    (link.Refused(Status.ROOM_NOT_FOUND, "no such member"),
     b'{"status":2,"error":"no such member"}'),
    (link.Granted(Details(9001, True, 1000, 30.0, Framing.PLAIN, udp_host="127.0.1.2"),
                  b"AbToken"),
     b'{"status":0,"details":{"udp_port":9001,"host":true,"max_message":1000,'
     b'"inactivity_timeout":30.0,"framing":"plain","udp_host":"127.0.1.2"},'
     b'"token":"AbToken"}'),
    (link.Accepted(), b'{"status":0,"datagram_key":null,"placement":null,"moved":true}'),
    (link.Accepted(bytes(range(32)), b"\xff" * 32, moved=False),
     b'{"status":0,"datagram_key":"' + bytes(range(32)).hex().encode() + b'","placement":"'
     + b"ff" * 32 + b'","moved":false}'),
    (link.MemberList((MemberInfo("alice", True, KEYS), MemberInfo("bob", False, None))),
     b'{"status":0,"members":[{"user":"alice","host":true,"keys":{"x25519":'
     b'"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","ed25519":'
     b'"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}},{"user":"bob","host":false}]}'),
]


def decoded(message: link.Message, body: bytes) -> object:
    if isinstance(message, (link.Forward, link.RelayRequest, link.MembersQuery)):
        return link.decode_request(body)
    if isinstance(message, (link.Granted, link.Accepted, link.MemberList)):
        return link.decode_reply(body, type(message))  # type: ignore[type-var]
    if isinstance(message, link.Refused):
        return link.decode_reply(body, link.Accepted)
    return link.decode(body, type(message))


@pytest.mark.parametrize(("message", "body"), VECTORS, ids=lambda v: type(v).__name__)
def test_link_messages_round_trip_through_their_bytes(message: link.Message,
                                                      body: bytes) -> None:
    assert body_of(message) == body
    assert decoded(message, body) == message


def test_a_forward_carries_the_request_as_one_value() -> None:
    request = Request(Operation.JOIN, "r", b"r", RequestBody("bob", "pw", Framing.OCM1, KEYS))
    forward = link.Forward.of(request, "127.0.2.9", "A")
    assert forward.body is request.body
    assert link.decode_request(body_of(forward)).request() == request  # type: ignore[union-attr]


def test_an_older_nodes_frame_decodes_with_the_defaults() -> None:
    """A forward without ``keys``/``e2e``, a request or reply with keys added later."""
    old = b'{"op":1,"room":"room","user":"alice","password":null,"framing":"ocm1",' \
          b'"ip":"127.0.2.1","origin":"B","later":1}'
    assert link.decode_request(old) == REQUEST
    assert link.decode_reply(b'{"status":0,"extra":[]}', link.Accepted) == link.Accepted()
    relay = b'{"kind":"relay","token":"AbToken","ip":"127.0.3.1","origin":"A"}'
    assert link.decode_request(relay) == link.RelayRequest(b"AbToken", "127.0.3.1", "A")


def test_a_relay_answer_carries_the_datagram_key_masked() -> None:
    """The key crosses the link XORed with a pad of the secret and the owner's nonce
    (``mask_accepted`` is its own inverse); an answer without a key is left as it is."""
    key = bytes(range(32))
    accepted = link.Accepted(key, None)
    masked = link.mask_accepted(b"s" * 16, NONCE, accepted)
    assert masked.datagram_key is not None and masked.datagram_key != key
    assert key.hex().encode() not in body_of(masked)
    assert masked != link.mask_accepted(b"s" * 16, bytes(16), accepted)
    assert link.mask_accepted(b"s" * 16, NONCE, masked) == accepted
    assert link.mask_accepted(b"s" * 16, NONCE, link.Accepted()) == link.Accepted()


@pytest.mark.parametrize("body", [
    b'{not json', b'[1, 2]', b'{"op":1}', b'{"kind":"nope"}',
    b'{"op":1,"room":"r","user":"a","password":5,"framing":"ocm1","ip":"i","origin":"o"}',
    b'{"op":7,"room":"r","user":"a","password":null,"framing":"ocm1","ip":"i","origin":"o"}',
    b'{"op":true,"room":"r","user":"a","framing":"ocm1","ip":"i","origin":"o"}',
    b'{"op":1,"room":"r","user":"a","framing":"x","ip":"i","origin":"o"}',
    b'{"op":1,"room":"r","user":"a","framing":"ocm1","ip":"i","origin":"o","e2e":1}',
    b'{"op":1,"room":"r","user":"a","framing":"ocm1","ip":"i","origin":"o",'
    b'"keys":{"x25519":"AAEC"}}',
    b'{"op":1,"room":"r","user":"a","framing":"ocm1","ip":"i","origin":"o","keys":[]}',
    rb'{"kind":"relay","token":"t\u00e9","ip":"i","origin":"o"}',
    b'{"kind":"members","room":"r","token":"t","ip":"i"}',
])
def test_malformed_requests_are_link_errors(body: bytes) -> None:
    with pytest.raises(link.LinkError):
        link.decode_request(body)


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"status":0}', link.Granted),
    (b'{"status":0,"details":{"udp_port":1},"token":"t"}', link.Granted),
    (b'{"status":0,"members":[{"user":5}]}', link.MemberList),
    (b'{"status":99,"error":"x"}', link.Accepted),
    (b'{"status":"0"}', link.Accepted),
    (b'{"status":0.0,"error":"x"}', link.Accepted),
    (b'{"error":"x"}', link.Accepted),
])
def test_malformed_replies_are_link_errors(body: bytes, expected: type[link.R]) -> None:
    with pytest.raises(link.LinkError):
        link.decode_reply(body, expected)


def test_hello_and_registration_are_checked() -> None:
    for body, cls in ((b'{"nonce":"zz"}', link.Hello), (b'{"nonce":1}', link.Hello),
                      (b'{"port":"5000"}', link.Registration), (b'{}', link.Registration)):
        with pytest.raises(link.LinkError):
            link.decode(body, cls)


def test_frames_are_bounded() -> None:
    with pytest.raises(link.LinkError):
        link.frame_length((link.MAX_LINK_FRAME_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(link.LinkError):
        link.encode(link.Refused(Status.INTERNAL_ERROR, "y" * link.MAX_LINK_FRAME_BYTES))
    members = tuple(MemberInfo(f"u{i:03d}", i == 0, KEYS) for i in range(MAX_E2E_MEMBERS))
    frame = link.encode(link.MemberList(members))  # the largest member list
    assert link.frame_length(frame[:4]) == len(frame) - 4


def test_the_largest_requests_fit_the_limit_read_before_the_mac() -> None:
    """Every field at its largest, every character JSON-escaped: under 8 KiB; the owner
    refuses a longer announced length from the header alone."""
    escaped = "\x01" * 255  # 6 bytes each as JSON
    ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    origin = "n" * 64
    largest = (
        link.Forward(Operation.CREATE, escaped, RequestBody(escaped, escaped, Framing.OCM1,
                                                            KEYS, True), ip, origin),
        link.MembersQuery(escaped, b"t" * 255, ip, origin),
        link.RelayRequest(b"t" * 255, ip, origin),
        link.Registration(65535))
    for message in largest:
        frame = link.encode(message)
        assert link.frame_length(frame[:4], link.MAX_REQUEST_FRAME_BYTES) == len(frame) - 4
    with pytest.raises(link.LinkError):
        link.frame_length((link.MAX_REQUEST_FRAME_BYTES + 1).to_bytes(4, "big"),
                          link.MAX_REQUEST_FRAME_BYTES)


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


def test_a_forward_carries_a_resume_secret() -> None:
    body = RequestBody("bob", None, Framing.OCM1R, resume="s" * 32)
    forward = link.Forward(Operation.JOIN, "r", body, "127.0.2.9", "A")
    assert link.decode_request(body_of(forward)) == forward


def test_a_datagram_key_crosses_the_link_masked() -> None:
    """A forwarded TLS join's datagram key never travels in clear between nodes: the owner
    masks it with a pad from the secret and its fresh nonce, the caller unmasks it."""
    secret, key = b"s" * 32, bytes(range(200, 232))
    granted = link.Granted(Details(9001, False, 1000, 30.0, Framing.OCM1, datagram_key=key),
                           b"AbToken")
    sent = link.mask_granted(secret, NONCE, granted)
    frame = link.encode(sent)
    assert key.hex().encode() not in frame and sent.details.datagram_key != key
    received = link.decode_reply(frame[link.LENGTH.size:], link.Granted)
    assert isinstance(received, link.Granted)
    assert link.mask_granted(secret, NONCE, received) == granted
    other = link.mask_granted(secret, bytes(16), granted).details.datagram_key
    assert other not in (key, sent.details.datagram_key)  # another nonce, another pad
    plain = link.Granted(Details(9001, False, 1000, 30.0, Framing.OCM1), b"AbToken")
    assert link.mask_granted(secret, NONCE, plain) == plain
