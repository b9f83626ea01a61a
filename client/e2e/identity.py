"""Identity keys, signatures, fingerprints and safety numbers (docs/e2e.md §4.1, §6).

A member's identity is two key pairs: X25519 (envelopes are sealed to it with HPKE) and
Ed25519 (it signs every chat message and envelope). ``cryptography`` does every primitive;
randomness is an injected ``Rng`` so that tests can fix the keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from wire.e2e import KEY_BYTES, PublicKeys

Rng = Callable[[int], bytes]
"""``rng(n)`` returns n bytes from a CSPRNG (``secrets.token_bytes`` outside tests)."""

FINGERPRINT_LABEL: Final = b"ocm-e2e v1 fingerprint"
SAFETY_LABEL: Final = b"ocm-e2e v1 safety number"
FINGERPRINT_BYTES: Final = 16
"""A fingerprint shows 16 bytes of SHA-256 as 8 groups of 4 hex digits (128 bits)."""
SAFETY_DIGITS_PER_MEMBER: Final = 30
"""Each member contributes 30 decimal digits (6 chunks of 5 bytes, each mod 100000)."""

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NO_ENC = serialization.NoEncryption()


@dataclass(frozen=True, slots=True)
class IdentityKeys:
    """A member's two private keys. Make one with ``generate`` or ``from_private_bytes``."""

    x25519: X25519PrivateKey
    ed25519: Ed25519PrivateKey

    @classmethod
    def generate(cls, rng: Rng) -> IdentityKeys:
        """Fresh keys from ``rng`` (32 bytes each)."""
        return cls.from_private_bytes(rng(KEY_BYTES), rng(KEY_BYTES))

    @classmethod
    def from_private_bytes(cls, x25519: bytes, ed25519: bytes) -> IdentityKeys:
        """Raise ``ValueError`` unless both are 32 bytes."""
        if len(x25519) != KEY_BYTES or len(ed25519) != KEY_BYTES:
            raise ValueError("private keys are 32 bytes each")
        return cls(
            X25519PrivateKey.from_private_bytes(x25519),
            Ed25519PrivateKey.from_private_bytes(ed25519),
        )

    def private_bytes(self) -> tuple[bytes, bytes]:
        """``(x25519, ed25519)`` raw private keys, for the key store only."""
        return (
            self.x25519.private_bytes(_RAW, _RAW_PRIV, _NO_ENC),
            self.ed25519.private_bytes(_RAW, _RAW_PRIV, _NO_ENC),
        )

    def public(self) -> PublicKeys:
        """The public keys sent in TCRP requests and shown to others."""
        return PublicKeys(
            self.x25519.public_key().public_bytes(_RAW, _RAW_PUB),
            self.ed25519.public_key().public_bytes(_RAW, _RAW_PUB),
        )

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature (deterministic, RFC 8032)."""
        return self.ed25519.sign(data)


def verify(ed25519: bytes, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is ``ed25519``'s over ``data``; never raises."""
    try:
        Ed25519PublicKey.from_public_bytes(ed25519).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def fingerprint(keys: PublicKeys) -> str:
    """``SHA-256(label || ed25519 || x25519)``, first 16 bytes as ``"a1b2 c3d4 ..."``."""
    digest = hashlib.sha256(FINGERPRINT_LABEL + keys.ed25519 + keys.x25519).digest()
    text = digest[:FINGERPRINT_BYTES].hex()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def _member_digits(user: str, keys: PublicKeys) -> str:
    raw = user.encode()
    digest = hashlib.sha256(
        SAFETY_LABEL + bytes((len(raw),)) + raw + keys.ed25519 + keys.x25519
    ).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def safety_number(user_a: str, keys_a: PublicKeys, user_b: str, keys_b: PublicKeys) -> str:
    """The 60-digit number two members compare out of band, as 12 groups of 5 digits.

    Each member's 30 digits come from ``SHA-256(label || len(user) || user || ed25519 ||
    x25519)``; the two halves are sorted, so both members compute the same number.
    """
    halves = sorted((_member_digits(user_a, keys_a), _member_digits(user_b, keys_b)))
    digits = "".join(halves)
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))
