"""A member's identity on vodozemac: its Olm account, prekeys, fingerprints and safety
numbers (docs/e2e.md).

The account holds two long-term key pairs: Curve25519 (the Olm identity key, ``x25519``
on the wire) and Ed25519 (it signs the prekeys). ``publish`` makes the one-time keys and
the fallback key a join hands out; they exist only in this process's memory (the key
store saves the account before any is made), so recorded traffic stays closed to
whoever later reads the files on disk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Final

import vodozemac

from wire.e2e import (
    KEY_BYTES,
    SIGNATURE_BYTES,
    Prekeys,
    PublicKeys,
    SignedPrekey,
    prekey_signed_bytes,
)

FINGERPRINT_LABEL: Final = b"ocm-e2e v1 fingerprint"
SAFETY_LABEL: Final = b"ocm-e2e v1 safety number"
FINGERPRINT_BYTES: Final = 16
"""A fingerprint shows 16 bytes of SHA-256 as 8 groups of 4 hex digits (128 bits)."""
PUBLISHED_ONE_TIME_KEYS: Final = 8
"""One-time keys a join publishes (the server accepts up to ``MAX_ONE_TIME_KEYS``): with
the fallback key about 1.6 KB of JSON, so the request stays within the 4096-byte payload
even with the longest escaped name and password."""
SAFETY_DIGITS_PER_MEMBER: Final = 30
"""Each member contributes 30 decimal digits (6 chunks of 5 bytes, each mod 100000)."""


def from_unpadded(text: str) -> bytes:
    """vodozemac's base64 (no padding) to bytes."""
    return base64.b64decode(text + "=" * (-len(text) % 4))


def to_unpadded(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


class IdentityKeys:
    """One member's vodozemac ``Account``. ``generate()`` or ``from_pickle``."""

    def __init__(self, account: vodozemac.Account) -> None:
        self.account = account

    @classmethod
    def generate(cls) -> IdentityKeys:
        """Fresh identity keys (vodozemac draws them from the OS)."""
        return cls(vodozemac.Account())

    @classmethod
    def from_pickle(cls, pickle: str, key: bytes) -> IdentityKeys:
        """Raise ``ValueError`` when ``key`` does not open ``pickle``."""
        return cls(vodozemac.Account.from_pickle(pickle, key))

    def pickle(self, key: bytes) -> str:
        """The account encrypted with ``key`` (32 bytes)."""
        return self.account.pickle(key)

    def public(self) -> PublicKeys:
        """The identity keys shown to others and pinned."""
        return PublicKeys(from_unpadded(self.account.curve25519_key.to_base64()),
                          from_unpadded(self.account.ed25519_key.to_base64()))

    def publish(self, count: int = PUBLISHED_ONE_TIME_KEYS) -> PublicKeys:
        """The public keys with ``count`` fresh one-time keys and a fresh fallback key,
        signed: what a create or join request carries. Older prekeys of this process stay
        usable (vodozemac keeps up to 50 one-time keys and the previous fallback key)."""
        account = self.account
        account.generate_one_time_keys(count)
        # vodozemac 0.10's type stubs lack the fallback-key API the module has
        account.generate_fallback_key()  # type: ignore[attr-defined]
        fallbacks: dict[str, vodozemac.Curve25519PublicKey] = \
            account.fallback_key  # type: ignore[attr-defined]
        one_time = tuple(self._signed(key, False) for key in account.one_time_keys.values())
        fallback = tuple(self._signed(key, True) for key in fallbacks.values())
        account.mark_keys_as_published()
        public = self.public()
        return PublicKeys(public.x25519, public.ed25519, Prekeys(one_time[:count], fallback[0]))

    def _signed(self, key: vodozemac.Curve25519PublicKey, fallback: bool) -> SignedPrekey:
        raw = key.to_bytes()
        return SignedPrekey(raw, self.sign(prekey_signed_bytes(raw, fallback)), fallback)

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature."""
        return from_unpadded(self.account.sign(data).to_base64())


def verify(ed25519: bytes, signature: bytes, data: bytes) -> bool:
    """True if ``signature`` is ``ed25519``'s over ``data``; never raises."""
    if len(ed25519) != KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        key = vodozemac.Ed25519PublicKey.from_base64(to_unpadded(ed25519))
        key.verify_signature(data, vodozemac.Ed25519Signature.from_base64(
            to_unpadded(signature)))
    except (ValueError, binascii.Error):
        return False
    return True


def verify_prekey(keys: PublicKeys, prekey: SignedPrekey) -> bool:
    """The prekey was signed by the owner of ``keys``."""
    return verify(keys.ed25519, prekey.signature, prekey.signed_bytes())


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
