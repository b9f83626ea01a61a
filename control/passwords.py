"""Room passwords: scrypt (memory-hard, stdlib), verified in constant time.

Hashing is slow on purpose and takes 16 MiB (n=2**14, r=8, p=1, the interactive-login
parameters of RFC 7914 §2), so control runs it in a thread pool, never on the event loop
(hashlib releases the GIL during scrypt). Passwords are never logged.

``password_mac`` is the cheap check of a password already verified once: HMAC-SHA256
under a key drawn when the process starts and never stored. It is a fast verifier, so
whoever can read control's memory can brute-force it quickly — but such a reader also
sees every password as it arrives, and rooms, hashes and the key die with the process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

SCRYPT_N: Final = 1 << 14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_MAXMEM_BYTES: Final = 64 * 1024 * 1024
SALT_BYTES: Final = 16
DIGEST_BYTES: Final = 32


@dataclass(frozen=True, slots=True)
class PasswordHash:
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:  # never print the digest by accident
        return "PasswordHash(<hidden>)"


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=SCRYPT_MAXMEM_BYTES, dklen=DIGEST_BYTES)


_MAC_KEY: Final = secrets.token_bytes(32)


def password_mac(password: str, salt: bytes) -> bytes:
    """HMAC-SHA256 of ``salt + password`` under the process key (microseconds)."""
    return hmac.new(_MAC_KEY, salt + password.encode(), hashlib.sha256).digest()


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two digests."""
    return hmac.compare_digest(a, b)


def hash_password(password: str) -> PasswordHash:
    """A fresh salted hash (blocking: call from a thread)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return PasswordHash(salt, _scrypt(password, salt))


def verify_password(password: str, stored: PasswordHash) -> bool:
    """Constant-time comparison (blocking: call from a thread)."""
    return hmac.compare_digest(_scrypt(password, stored.salt), stored.digest)
