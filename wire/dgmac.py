"""Authenticated chat datagrams (docs/protocol.md §8): the MAC trailer of members that
joined over TLS.

A member that joined over TLS gets a per-member datagram key in its OK details
(``datagram_key``, 32 random bytes as hex). Every datagram it sends then ends in a trailer::

    RoomNameSize | TokenSize | RoomName | Token | Message | Seq (8) | Tag (16)

``Seq`` is an unsigned big-endian counter, 1 for the first datagram, one more for each
datagram after it. ``Tag`` is keyed BLAKE2s (RFC 7693) with a 16-byte output
(``digest_size`` 16 in the parameter block, not a truncated 32-byte digest) under the
member's key, over every byte before it: header, room, token, message and ``Seq``. The key
belongs to one member of one room, so a tag binds the datagram to that room and token; it
is used in the client-to-server direction only (the relay never tags anything with it).

Replay: the relay keeps the highest ``Seq`` it accepted (``top``) and a 64-bit bitmap of
the ``Seq`` values in ``top - 63 .. top`` it accepted (``seen``, bit ``i`` is ``top - i``).
A ``Seq`` above ``top`` moves the window; one inside it is accepted once; one below it is
dropped (``replayed``). The datagrams of one member arrive reordered by at most 63 before
any is lost to this rule.

Placements: a worker that restarts gets its members back from control, but not their
windows. So every placement after the first gets a fresh key: control picks a random
``nonce`` (32 bytes) and the worker uses ``placement_key(key, nonce)`` (keyed BLAKE2s,
32-byte output, personalisation ``ocmplace``) in place of ``key``. Datagrams recorded
under an earlier placement's key then fail the tag (``bad_mac``) instead of finding an
empty window. The worker tells the member the nonce in a *rekey* datagram::

    REKEY_MAGIC ("\x00ocm-rekey", 10 bytes) | Nonce (32) | Tag (16)

``Tag`` is ``tag(placement_key(key, nonce), REKEY_MAGIC + Nonce)``: only the relay (and
the member) can make it, and since a client's datagram never starts with a zero byte
(``RoomNameSize`` ≥ 1), no client datagram's tag is ever a rekey tag. The worker sends it
to the member's bound address when the member is placed, and again (at most once every
``REKEY_RESEND_S``) when a datagram of the member fails the tag. The member switches its
key (``Sealer.rekey``) and keeps counting ``Seq`` from where it was; a replayed older
rekey only makes its next datagrams fail until the current one arrives again.

Pure functions and one small client-side class; no I/O. ``relay/_hot.c`` verifies the
same trailer with OpenSSL's ``EVP_MAC`` ``BLAKE2SMAC``; the tests hold both to hashlib and
to the BLAKE2 reference's keyed test vectors.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from wire import errors

KEY_BYTES: Final = 32
"""A datagram key: BLAKE2s's largest key, 256 bits from a CSPRNG."""
SEQ_BYTES: Final = 8
TAG_BYTES: Final = 16
TRAILER_BYTES: Final = SEQ_BYTES + TAG_BYTES
"""What the trailer adds to every datagram (and takes from ``max_message``)."""
WINDOW: Final = 64
"""Replay window: how far below the highest accepted ``Seq`` a datagram may still come."""
WINDOW_MASK: Final = (1 << WINDOW) - 1
MAX_SEQ: Final = (1 << (8 * SEQ_BYTES)) - 1
NONCE_BYTES: Final = 32
"""A placement nonce (``placement_key``): 256 random bits, one per placement."""
PLACEMENT_PERSON: Final = b"ocmplace"
REKEY_MAGIC: Final = b"\x00ocm-rekey"
REKEY_BYTES: Final = len(REKEY_MAGIC) + NONCE_BYTES + TAG_BYTES
REKEY_RESEND_S: Final = 1.0
"""At most one rekey datagram per member per this many seconds after a failed tag."""
DETAILS_KEY: Final = "datagram_key"
"""The name of the OK details field that carries the key (hex)."""


def tag(key: bytes, data: bytes) -> bytes:
    """The 16-byte tag of ``data`` (everything before the tag) under ``key``."""
    return hashlib.blake2s(data, key=key, digest_size=TAG_BYTES).digest()


def seal(key: bytes, data: bytes, seq: int) -> bytes:
    """``data`` (a whole datagram) with its trailer for counter value ``seq``."""
    body = data + seq.to_bytes(SEQ_BYTES, "big")
    return body + tag(key, body)


def verify(key: bytes, data: bytes) -> int | None:
    """The ``Seq`` of ``data`` if its trailer's tag is right, else None (too short
    included). Constant-time tag comparison."""
    if len(data) < TRAILER_BYTES:
        return None
    cut = len(data) - TAG_BYTES
    if not hmac.compare_digest(tag(key, data[:cut]), data[cut:]):
        return None
    return int.from_bytes(data[cut - SEQ_BYTES:cut], "big")


def advance(top: int, seen: int, seq: int) -> tuple[int, int] | None:
    """The replay window ``(top, seen)`` after accepting ``seq``, or None if ``seq`` was
    accepted before or is below the window. A fresh member has ``(0, 0)``: ``Seq`` 0 is
    never valid."""
    if seq == 0:
        return None
    if seq > top:
        shift = seq - top
        return seq, ((seen << shift) | 1) & WINDOW_MASK if shift < WINDOW else 1
    back = top - seq
    if back >= WINDOW or seen >> back & 1:
        return None
    return top, seen | 1 << back


def placement_key(key: bytes, nonce: bytes) -> bytes:
    """The datagram key of one placement of a member whose key is ``key``."""
    return hashlib.blake2s(nonce, key=key, digest_size=KEY_BYTES,
                           person=PLACEMENT_PERSON).digest()


def encode_rekey(placed: bytes, nonce: bytes) -> bytes:
    """The rekey datagram of a placement: ``nonce`` tagged under ``placed``
    (``placement_key(key, nonce)``)."""
    body = REKEY_MAGIC + nonce
    return body + tag(placed, body)


def is_rekey(data: bytes) -> bool:
    """``data`` has the shape of a rekey datagram (its tag is not checked here)."""
    return len(data) == REKEY_BYTES and data.startswith(REKEY_MAGIC)


def decode_rekey(key: bytes, data: bytes) -> bytes | None:
    """The placement key a rekey datagram announces for the member whose key is ``key``,
    or None if ``data`` is not one or its tag is wrong (constant-time comparison)."""
    if not is_rekey(data):
        return None
    cut = len(data) - TAG_BYTES
    placed = placement_key(key, data[len(REKEY_MAGIC):cut])
    if not hmac.compare_digest(tag(placed, data[:cut]), data[cut:]):
        return None
    return placed


def encode_key(key: bytes) -> str:
    """The key as the details field carries it."""
    return key.hex()


def decode_key(value: object) -> bytes:
    """The key of a ``datagram_key`` field; raise ``BadResponse`` unless it is 64 hex
    digits."""
    if type(value) is not str or len(value) != 2 * KEY_BYTES:
        raise errors.BadResponse(f"{DETAILS_KEY} must be {2 * KEY_BYTES} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise errors.BadResponse(f"{DETAILS_KEY} must be {2 * KEY_BYTES} hex digits") from None


class DatagramKey(bytes):
    """A datagram key where it crosses a pipe (relay/ipc.py ``AddMember``): written as hex,
    since keys are random bytes, not the ASCII text of other ``bytes`` fields."""

    __slots__ = ()

    def to_json(self) -> str:
        return self.hex()

    @classmethod
    def from_json(cls, value: object) -> DatagramKey:
        """Raise ``ValueError`` unless ``value`` is 64 hex digits."""
        if type(value) is not str or len(value) != 2 * KEY_BYTES:
            raise ValueError(f"a datagram key is {2 * KEY_BYTES} hex digits")
        return cls(bytes.fromhex(value))


class Sealer:
    """A client's side of one membership: seals every datagram with the next ``Seq``."""

    __slots__ = ("base", "key", "seq")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a datagram key has {KEY_BYTES} bytes")
        self.base = key
        """The key given in the OK details."""
        self.key = key
        """The key of the current placement (``rekey``)."""
        self.seq = 0
        """The last ``Seq`` used."""

    def rekey(self, data: bytes) -> bool:
        """Take the placement key of the rekey datagram ``data``; False (nothing changes)
        if it is not a valid one. ``Seq`` goes on counting."""
        placed = decode_rekey(self.base, data)
        if placed is None:
            return False
        self.key = placed
        return True

    def seal(self, data: bytes) -> bytes:
        """``data`` with the trailer of the next ``Seq``."""
        self.seq += 1
        return seal(self.key, data, self.seq)
