"""The internal link between cluster nodes: framing and authentication (pure, no I/O).

A node that receives a TCRP request for a room owned by another node forwards it over
TCP to the owner's ``cluster_port``. One request per connection:

    owner  -> caller   frame {"nonce": 32 hex chars}            fresh per connection
    caller -> owner    frame {request...}  + 32-byte MAC         MAC = HMAC-SHA256(secret,
                                                                 LABEL + nonce + frame)
    owner  -> caller   frame {"status": int, "error"?, "details"?, "token"?}
    caller -> owner    frame {"port": int}                      optional, the 2-byte UDP
                                                                 registration of §1.4

A forwarded request carries the member's public keys and the create's ``e2e`` flag
(docs/e2e.md §2.1), so the owner applies the encrypted-room rules itself. Two other
requests use the same handshake: ``{"kind": "relay", ...}`` (control/clusterudp.py) and
``{"kind": "members", "room", "token", "ip", "origin"}``, Operation 3 for a room owned
by the callee (docs/e2e.md §2.4), answered ``{"status": 0, "members": [...]}``.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON, at most
``MAX_LINK_FRAME_BYTES``. The secret never travels: the MAC covers the owner's nonce
(so a recorded request cannot be replayed) and the whole request (so it cannot be
altered). The link is not encrypted: run it on a private network (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from wire import errors
from wire.e2e import PublicKeys, decode_public_keys
from wire.limits import MAX_MEMBERS_RESPONSE_BYTES

LENGTH: Final = struct.Struct("!I")
MAX_LINK_FRAME_BYTES: Final = MAX_MEMBERS_RESPONSE_BYTES + 64 * 1024
"""A forwarded request carries at most a 255-byte room, username and password plus two
public keys; a reply can carry an encrypted room's member list (join details or
Operation 3: at most ``MAX_MEMBERS_RESPONSE_BYTES``, 256 KiB). 320 KiB bounds what a
caller can make a node buffer per link connection (one at a time per connection, each
within ``LINK_TIMEOUT_S``)."""
MAC_BYTES: Final = 32
NONCE_BYTES: Final = 16
LABEL: Final = b"ocm-cluster-link-v1\0"
MIN_SECRET_BYTES: Final = 16


class LinkError(Exception):
    """A frame is malformed, too large, or its MAC does not verify."""


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A TCRP request as the receiving node forwards it to the owner."""

    operation: int
    room: str
    username: str
    password: str | None
    framing: str
    ip: str
    """The client's IP: the owner binds the token to it and applies its limits to it."""
    origin: str
    """The node id of the forwarding node (for logs)."""
    keys: PublicKeys | None = None
    """The member's public keys (docs/e2e.md §2.1); absent from an older node's frame."""
    e2e: bool = False
    """Create an encrypted room; absent from an older node's frame."""
    resume: str | None = None
    """``ocm1r``: the resume secret of a membership to move (the owner checks it)."""

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"op": self.operation, "room": self.room,
                               "user": self.username, "password": self.password,
                               "framing": self.framing, "ip": self.ip,
                               "origin": self.origin}
        if self.keys is not None:
            obj["keys"] = self.keys.to_json()
        if self.e2e:
            obj["e2e"] = True
        if self.resume is not None:
            obj["resume"] = self.resume
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> ForwardedRequest:
        """Raise ``LinkError`` unless ``obj`` is a well-typed forwarded request."""
        try:
            request = cls(obj["op"], obj["room"], obj["user"], obj["password"],
                          obj["framing"], obj["ip"], obj["origin"])
        except (KeyError, TypeError):
            raise LinkError("forwarded request lacks a key") from None
        if not (type(request.operation) is int and isinstance(request.room, str)
                and isinstance(request.username, str) and isinstance(request.framing, str)
                and isinstance(request.ip, str) and isinstance(request.origin, str)
                and (request.password is None or isinstance(request.password, str))):
            raise LinkError("forwarded request has a wrong type")
        keys, e2e, resume = obj.get("keys"), obj.get("e2e", False), obj.get("resume")
        if type(e2e) is not bool or not (resume is None or isinstance(resume, str)):
            raise LinkError("forwarded request has a wrong type")
        if resume is not None:
            request = replace(request, resume=resume)
        if keys is not None:
            try:
                parsed = decode_public_keys(keys)
            except errors.BadKeys:
                raise LinkError("forwarded request has bad keys") from None
            request = replace(request, keys=parsed)
        return replace(request, e2e=e2e) if e2e else request


def encode_frame(obj: Any) -> bytes:
    body = orjson.dumps(obj)
    if len(body) > MAX_LINK_FRAME_BYTES:
        raise LinkError(f"frame of {len(body)} bytes")
    return LENGTH.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length announced by a 4-byte header; ``LinkError`` if over the limit."""
    (size,) = LENGTH.unpack(header)
    if size > MAX_LINK_FRAME_BYTES:
        raise LinkError(f"frame of {size} bytes announced")
    return int(size)


def decode_body(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise LinkError("frame is not JSON") from None


def sign(secret: bytes, nonce: bytes, body: bytes) -> bytes:
    """The MAC a caller appends to a request frame body."""
    return hmac.new(secret, LABEL + nonce + body, hashlib.sha256).digest()


def verify(secret: bytes, nonce: bytes, body: bytes, mac: bytes) -> bool:
    """Constant-time check of a request's MAC."""
    return hmac.compare_digest(sign(secret, nonce, body), mac)
