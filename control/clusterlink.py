"""The internal link between cluster nodes: typed messages, framing, authentication (pure).

A node that receives a TCRP request for a room owned by another node forwards it over
TCP to the owner's ``cluster_port``. One request per connection:

    owner  -> caller   Hello           {"nonce": 32 hex chars}, fresh per connection
    caller -> owner    one request     + 32-byte MAC = HMAC-SHA256(secret, LABEL + nonce
                                       + frame body)
    owner  -> caller   its reply, or Refused {"status": int, "error": str}
    caller -> owner    Registration    {"port": int}, after Granted only, optional: the
                                       2-byte UDP registration of docs/protocol.md §1.4

The requests, told apart by ``"kind"``:

    Forward       (no kind)   a create or join (``secure``: the client used TLS); its reply
                              is Granted (details and token; a datagram key in the
                              details is masked, ``mask_granted``)
    RelayRequest  "relay"     accept a member's datagrams from the caller's IP
                              (control/clusterudp.py); its reply is Accepted (a
                              datagram key in it is masked, ``mask_accepted``)
    MembersQuery  "members"   Operation 3 for a room of the callee (docs/e2e.md §2.4);
                              its reply is MemberList

Each message is a frozen dataclass declared once below: its JSON keys, types and
defaults come from the declaration (``field(metadata=...)`` renames a key or inlines a
nested value), and ``encode`` / ``decode_request`` / ``decode_reply`` / ``decode``
follow from it. Every field is sent; a field with a default may be absent from what an
older node sends, unknown keys are ignored, and anything else that does not match the
declaration raises ``LinkError``.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON: at most
``MAX_REQUEST_FRAME_BYTES`` for what an owner reads before the MAC is checked (a request,
and the registration after it), at most ``MAX_LINK_FRAME_BYTES`` for a reply. An owner
serves at most ``MAX_LINK_CONNECTIONS`` link connections at once, ``MAX_LINK_CONNECTIONS_PER_IP``
from one IP. The secret never travels: the MAC covers the owner's nonce
(so a recorded request cannot be replayed) and the whole request (so it cannot be
altered). The link is not encrypted: run it on a private network (docs/operations.md).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, TypeVar, Union, get_args, get_origin, get_type_hints

import orjson

from wire import errors
from wire.codes import Operation, Status
from wire.e2e import MemberInfo, PublicKeys, decode_members, decode_public_keys
from wire.limits import MAX_MEMBERS_RESPONSE_BYTES
from wire.tcrp import Details, Request, RequestBody

LENGTH: Final = struct.Struct("!I")
MAX_LINK_FRAME_BYTES: Final = MAX_MEMBERS_RESPONSE_BYTES + 64 * 1024
"""A reply: it can carry an encrypted room's member list (join details or Operation 3:
at most ``MAX_MEMBERS_RESPONSE_BYTES``, 256 KiB). Only a caller reads one, from the node
it chose to ask."""
MAX_REQUEST_FRAME_BYTES: Final = 8 * 1024
"""A request or a registration, read by the owner before it checks the MAC: a forwarded
request carries at most a 255-byte room, username and password plus two public keys
(under 2 KiB, under 5 KiB were every character JSON-escaped). A larger announced length
closes the connection before any of the body is read."""
MAX_LINK_CONNECTIONS: Final = 1024
"""Link connections an owner serves at once; past it, new ones are closed unanswered."""
MAX_LINK_CONNECTIONS_PER_IP: Final = 128
"""Link connections from one IP at once (a node forwarding a burst of joins holds one per
join in flight, each for at most ``LINK_TIMEOUT_S`` and the registration window)."""
MAC_BYTES: Final = 32
NONCE_BYTES: Final = 16
LABEL: Final = b"ocm-cluster-link-v1\0"
MIN_SECRET_BYTES: Final = 16
LINK_TIMEOUT_S: Final = 5.0
"""A link request's whole exchange, each step of it bounded by this."""


class LinkError(Exception):
    """A frame is malformed, too large, not the message expected, or its MAC does not
    verify."""


def _key(name: str) -> dict[str, str]:
    """Field metadata: send this field under JSON key ``name``."""
    return {"key": name}


HEX: Final = {"hex": True}
"""Field metadata: bytes sent as hex (else bytes are ASCII text, as tokens are)."""


# --- the messages ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hello:
    """The owner's first frame: the nonce the caller's MAC must cover."""

    nonce: bytes = field(metadata=HEX)


@dataclass(frozen=True, slots=True)
class Forward:
    """A TCRP create or join as the receiving node forwards it to the room's owner."""

    KIND: ClassVar[str | None] = None

    operation: Operation = field(metadata=_key("op"))
    room: str
    body: RequestBody = field(metadata={"inline": {"username": "user"}})
    ip: str
    """The client's IP: the owner binds the token to it and applies its limits to it."""
    origin: str
    """The node id of the forwarding node (for logs)."""
    secure: bool = False
    """The client sent the request over TLS: the owner gives the member a datagram key."""

    @classmethod
    def of(cls, request: Request, ip: str, origin: str, secure: bool = False) -> Forward:
        return cls(request.operation, request.room, request.body, ip, origin, secure)

    def request(self) -> Request:
        """The request as the owner serves it."""
        return Request(self.operation, self.room, self.room.encode(), self.body)


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """Accept ``token`` (issued to the client at ``ip``) from the caller's IP from now on:
    the caller relays the member's datagrams (control/clusterudp.py)."""

    KIND: ClassVar[str | None] = "relay"

    token: bytes
    ip: str
    origin: str
    proof: bytes | None = field(default=None, metadata=HEX)
    """A datagram of the member the caller checked under the key of an earlier
    ``Accepted`` with ``moved`` false: for a member with a datagram key, the owner moves
    it to the caller only on a datagram with a right tag and a ``Seq`` its worker has not
    seen."""


@dataclass(frozen=True, slots=True)
class MembersQuery:
    """Operation 3 for a room of the callee, asked with ``token`` from ``ip``."""

    KIND: ClassVar[str | None] = "members"

    room: str
    token: bytes
    ip: str
    origin: str


@dataclass(frozen=True, slots=True)
class Registration:
    """The member's 2-byte UDP port registration, passed on to the owner."""

    port: int


@dataclass(frozen=True, slots=True)
class Refused:
    """The request was refused with a TCRP status (never OK)."""

    status: Status
    error: str


@dataclass(frozen=True, slots=True)
class Granted:
    """A forwarded create or join succeeded: what to answer the client."""

    details: Details
    token: bytes


@dataclass(frozen=True, slots=True)
class Accepted:
    """A relay request succeeded: the owner's worker takes the token from the caller.

    For a member that joined over TLS, ``datagram_key`` is its key (masked,
    ``mask_accepted``) and ``placement`` the nonce of its worker's current placement
    (None for the first; wire/dgmac.py ``placement_key``): the caller checks the member's
    MAC trailer before it relays anything (control/clusterudp.py). Both None for a
    member without a key."""

    datagram_key: bytes | None = field(default=None, metadata=HEX)
    placement: bytes | None = field(default=None, metadata=HEX)
    moved: bool = True
    """False: the member has a datagram key and the request had no good ``proof``; it
    still sends its datagrams from where it did, and the caller must ask again with
    one."""


@dataclass(frozen=True, slots=True)
class MemberList:
    """The answer to a ``MembersQuery``."""

    members: tuple[MemberInfo, ...]


KEY_LABEL: Final = b"ocm-cluster-datagram-key-v1\0"


def _key_pad(secret: bytes, nonce: bytes) -> bytes:
    return hmac.digest(secret, KEY_LABEL + nonce, "sha256")


def _mask(secret: bytes, nonce: bytes, key: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(key, _key_pad(secret, nonce), strict=True))


def mask_granted(secret: bytes, nonce: bytes, granted: Granted) -> Granted:
    """``granted`` with its datagram key (if any) XORed with HMAC-SHA256(secret, KEY_LABEL
    + nonce): the link is not encrypted, and the key must reach the client only inside
    its TLS. The owner's nonce is fresh per connection, and a connection carries one
    reply, so no pad is used twice. Its own inverse: the caller unmasks with the same
    call."""
    key = granted.details.datagram_key
    if key is None:
        return granted
    return dataclasses.replace(granted, details=dataclasses.replace(
        granted.details, datagram_key=_mask(secret, nonce, key)))


def mask_accepted(secret: bytes, nonce: bytes, accepted: Accepted) -> Accepted:
    """``accepted`` with its datagram key (if any) masked as ``mask_granted`` masks a
    grant's; its own inverse too."""
    if accepted.datagram_key is None:
        return accepted
    return dataclasses.replace(accepted,
                               datagram_key=_mask(secret, nonce, accepted.datagram_key))


LinkRequest = Forward | RelayRequest | MembersQuery
Reply = Refused | Granted | Accepted | MemberList
Message = Hello | LinkRequest | Registration | Reply
_REQUESTS: Final[dict[str | None, type[LinkRequest]]] = {
    cls.KIND: cls for cls in (Forward, RelayRequest, MembersQuery)}
M = TypeVar("M", bound=Message)
R = TypeVar("R", Granted, Accepted, MemberList)


# --- the codec, derived from the declarations --------------------------------------------
_Encode = Callable[[Any], Any]
_Decode = Callable[[Any], Any]


def _exact(kind: type, what: str) -> _Decode:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise LinkError(f"must be {what}, got {value!r}")
        return value
    return check


def _ascii(value: Any) -> bytes:
    if type(value) is not str or not value.isascii():
        raise LinkError(f"must be ASCII text, got {value!r}")
    return value.encode("ascii")


def _hex(value: Any) -> bytes:
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise LinkError(f"must be hex, got {value!r}") from None


def _wire_value(decode: Callable[[Any], Any]) -> _Decode:
    """A decoder of wire/ whose errors become ``LinkError``."""
    def run(value: Any) -> Any:
        try:
            return decode(value)
        except (errors.ProtocolError, KeyError, TypeError, ValueError) as exc:
            raise LinkError(str(exc)) from None
    return run


def _details(value: Any) -> Details:
    if not isinstance(value, dict):
        raise LinkError("details must be an object")
    return Details.from_json(value)


_VALUES: Final[Mapping[Any, tuple[_Encode, _Decode]]] = {
    str: (lambda v: v, _exact(str, "a string")),
    int: (lambda v: v, _exact(int, "an integer")),
    bool: (lambda v: v, _exact(bool, "true or false")),
    bytes: (lambda v: v.decode("ascii"), _ascii),
    PublicKeys: (lambda v: v.to_json(), _wire_value(decode_public_keys)),
    Details: (lambda v: v.to_json(), _wire_value(_details)),
    tuple[MemberInfo, ...]: (lambda v: [m.to_json() for m in v], _wire_value(decode_members)),
}


def _enum(kind: type[enum.Enum]) -> tuple[_Encode, _Decode]:
    sample = type(next(iter(kind)).value)

    def decode(value: Any) -> Any:
        if type(value) is not sample:
            raise LinkError(f"must be a {kind.__name__}, got {value!r}")
        try:
            return kind(value)
        except ValueError:
            raise LinkError(f"no {kind.__name__} {value!r}") from None
    return (lambda v: v.value), decode


def _value_codec(hint: Any, meta: Mapping[str, Any]) -> tuple[_Encode, _Decode]:
    if get_origin(hint) is Union or (get_origin(hint) is not None
                                     and type(None) in get_args(hint)):
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        enc, dec = _value_codec(inner, meta)
        return ((lambda v: None if v is None else enc(v)),
                (lambda v: None if v is None else dec(v)))
    if hint is bytes and meta.get("hex"):
        return (lambda v: v.hex()), _hex
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint)
    try:
        return _VALUES[hint]
    except KeyError:
        raise TypeError(f"no link codec for {hint!r}") from None


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    key: str
    encode: _Encode
    decode: _Decode
    default: Any


@dataclass(frozen=True, slots=True)
class _Codec:
    cls: type[Any]
    fields: tuple[_Field, ...]
    inline: tuple[tuple[str, _Codec], ...]

    def write(self, value: Any, out: dict[str, Any]) -> None:
        for f in self.fields:
            out[f.key] = f.encode(getattr(value, f.name))
        for name, codec in self.inline:
            codec.write(getattr(value, name), out)

    def read(self, obj: Mapping[str, Any]) -> Any:
        args: dict[str, Any] = {}
        for f in self.fields:
            if f.key in obj:
                try:
                    args[f.name] = f.decode(obj[f.key])
                except LinkError as exc:
                    raise LinkError(f"{self.cls.__name__}.{f.key}: {exc}") from None
            elif f.default is dataclasses.MISSING:
                raise LinkError(f"{self.cls.__name__} lacks {f.key!r}")
        for name, codec in self.inline:
            args[name] = codec.read(obj)
        return self.cls(**args)


_CODECS: Final[dict[tuple[type[Any], tuple[tuple[str, str], ...]], _Codec]] = {}


def _codec(cls: type[Any], renames: tuple[tuple[str, str], ...] = ()) -> _Codec:
    """The codec of a message (or of a value inlined into one), built once per class."""
    codec = _CODECS.get((cls, renames))
    if codec is None:
        codec = _CODECS[(cls, renames)] = _build(cls, renames)
    return codec


def _build(cls: type[Any], renames: tuple[tuple[str, str], ...]) -> _Codec:
    hints = get_type_hints(cls)
    keys = dict(renames)
    plain: list[_Field] = []
    inline: list[tuple[str, _Codec]] = []
    for f in dataclasses.fields(cls):
        if "inline" in f.metadata:
            inline.append((f.name, _codec(hints[f.name], tuple(f.metadata["inline"].items()))))
            continue
        enc, dec = _value_codec(hints[f.name], f.metadata)
        plain.append(_Field(f.name, f.metadata.get("key", keys.get(f.name, f.name)), enc,
                            dec, f.default))
    return _Codec(cls, tuple(plain), tuple(inline))


def _to_json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kind = getattr(message, "KIND", None)
    if kind is not None:
        out["kind"] = kind
    if isinstance(message, (Granted, Accepted, MemberList)):
        out["status"] = int(Status.OK)
    _codec(type(message)).write(message, out)
    return out


def _object(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise LinkError("frame is not JSON") from None
    if not isinstance(obj, dict):
        raise LinkError("frame is not an object")
    return obj


# --- frames ---------------------------------------------------------------------------------
def encode(message: Message) -> bytes:
    """One frame (length header and body) holding ``message``."""
    body = orjson.dumps(_to_json(message))
    if len(body) > MAX_LINK_FRAME_BYTES:
        raise LinkError(f"frame of {len(body)} bytes")
    return LENGTH.pack(len(body)) + body


def frame_length(header: bytes, limit: int = MAX_LINK_FRAME_BYTES) -> int:
    """The body length announced by a 4-byte header; ``LinkError`` if over ``limit``."""
    (size,) = LENGTH.unpack(header)
    if size > limit:
        raise LinkError(f"frame of {size} bytes announced")
    return int(size)


def decode(body: bytes, cls: type[M]) -> M:
    """A frame body as the message ``cls`` (``Hello`` or ``Registration``)."""
    message: M = _codec(cls).read(_object(body))
    return message


def decode_request(body: bytes) -> LinkRequest:
    """A request frame body as its typed request, told apart by ``"kind"``."""
    obj = _object(body)
    cls = _REQUESTS.get(obj.get("kind"))
    if cls is None:
        raise LinkError(f"unknown request kind {obj.get('kind')!r}")
    request: LinkRequest = _codec(cls).read(obj)
    return request


def decode_reply(body: bytes, expected: type[R]) -> R | Refused:
    """A reply frame body: ``Refused`` for a status other than OK, else ``expected``."""
    obj = _object(body)
    if obj.get("status") != Status.OK or type(obj.get("status")) is not int:
        refused: Refused = _codec(Refused).read(obj)
        if refused.status is Status.OK:
            raise LinkError("status OK must be the integer 0")
        return refused
    reply: R = _codec(expected).read(obj)
    return reply


def sign(secret: bytes, nonce: bytes, body: bytes) -> bytes:
    """The MAC a caller appends to a request frame body."""
    return hmac.new(secret, LABEL + nonce + body, hashlib.sha256).digest()


def verify(secret: bytes, nonce: bytes, body: bytes, mac: bytes) -> bool:
    """Constant-time check of a request's MAC."""
    return hmac.compare_digest(sign(secret, nonce, body), mac)
