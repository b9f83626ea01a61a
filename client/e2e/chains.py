"""Sender chains: the symmetric ratchet of Signal's Sender Keys and Matrix's Megolm
(docs/e2e.md §4.2).

Every step runs HKDF-SHA256 over the 32-byte chain key ``CK_i`` and splits 76 output
bytes into ``CK_{i+1}`` (32), the message key (32) and the nonce (12) of message ``i``.
HKDF is one-way, so message keys are never reused and old keys cannot be derived from a
newer chain key. A receiver keeps at most ``MAX_SKIPPED_KEYS`` keys of messages it has not
seen yet (lost or late) per chain, and refuses to step more than ``MAX_SKIP`` ahead at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from wire.e2e import KEY_BYTES, MAX_COUNTER, SenderKeyShare

STEP_LABEL: Final = b"ocm-e2e v1 chain step"
"""HKDF ``info`` of every chain step (salt: none, i.e. 32 zero bytes)."""
NONCE_BYTES: Final = 12
STEP_BYTES: Final = KEY_BYTES + KEY_BYTES + NONCE_BYTES
MAX_SKIP: Final = 1000
"""A message more than this many positions ahead of the receiver's chain is not opened
(it costs one HKDF per position): the receiver asks the sender for a newer share."""
MAX_SKIPPED_KEYS: Final = 1000
"""Keys of messages not yet received, kept per inbound chain; the oldest is dropped first.
A member keeps at most 2 chains per other member (memory: docs/e2e.md §11)."""


@dataclass(frozen=True, slots=True)
class MessageKey:
    """The AEAD key and nonce of one message."""

    key: bytes
    nonce: bytes


def step(chain_key: bytes) -> tuple[bytes, MessageKey]:
    """``(next chain key, message key)`` for the message at this position."""
    out = HKDF(hashes.SHA256(), STEP_BYTES, None, STEP_LABEL).derive(chain_key)
    return out[:KEY_BYTES], MessageKey(out[KEY_BYTES : 2 * KEY_BYTES], out[2 * KEY_BYTES :])


class ChainExhausted(Exception):
    """The chain has sent 2**32 messages; start a new one."""


class OutboundChain:
    """Our own sender chain in one room. ``next_key()`` per message sealed."""

    __slots__ = ("chain_id", "counter", "_chain_key")

    def __init__(self, chain_id: int, chain_key: bytes) -> None:
        self.chain_id = chain_id
        self.counter = 0
        self._chain_key = chain_key

    @classmethod
    def generate(cls, rng: Callable[[int], bytes]) -> OutboundChain:
        return cls(int.from_bytes(rng(4), "big"), rng(KEY_BYTES))

    def share(self) -> SenderKeyShare:
        """The chain at its current position: what a newcomer receives."""
        return SenderKeyShare(self.chain_id, self.counter, self._chain_key)

    def next_key(self) -> tuple[int, MessageKey]:
        """The counter and key of the next message; the chain key moves on (and the old
        one is forgotten). Raise ``ChainExhausted`` past 2**32 - 1."""
        if self.counter > MAX_COUNTER:
            raise ChainExhausted()
        counter = self.counter
        self._chain_key, key = step(self._chain_key)
        self.counter += 1
        return counter, key


class Replay(Exception):
    """The message's key was used already, or is older than the window."""


class TooFarAhead(Exception):
    """The message is more than MAX_SKIP positions ahead."""


class InboundChain:
    """Another member's chain as we hold it: a position, its chain key, and the keys of
    skipped messages (bounded). ``open_key(counter)`` then ``commit()`` once the message
    decrypted, so that a message that fails changes nothing."""

    __slots__ = ("chain_id", "next_counter", "_chain_key", "_skipped", "_pending")

    def __init__(self, share: SenderKeyShare) -> None:
        self.chain_id = share.chain_id
        self.next_counter = share.counter
        self._chain_key = share.chain_key
        self._skipped: OrderedDict[int, MessageKey] = OrderedDict()
        # (next counter, chain key, skipped keys to store, used skipped counter or -1)
        self._pending: tuple[int, bytes, list[tuple[int, MessageKey]], int] | None = None

    @property
    def skipped_count(self) -> int:
        return len(self._skipped)

    def fast_forward(self, share: SenderKeyShare) -> bool:
        """Jump to a newer position of the same chain (a key request's answer when we
        fell more than MAX_SKIP behind): the messages in between are lost to us. A share
        at or behind our position changes nothing (a replayed envelope never rewinds a
        chain). Return True if the position moved."""
        if share.chain_id != self.chain_id or share.counter <= self.next_counter:
            return False
        self._chain_key = share.chain_key
        self.next_counter = share.counter
        return True

    def open_key(self, counter: int) -> MessageKey:
        """The key of message ``counter``; call ``commit()`` if it opened the message.

        Raise ``Replay`` (already used, or dropped from the window) or ``TooFarAhead``.
        """
        self._pending = None
        if counter < self.next_counter:
            key = self._skipped.get(counter)
            if key is None:
                raise Replay(f"message {counter} of chain {self.chain_id:08x}")
            self._pending = (self.next_counter, self._chain_key, [], counter)
            return key
        if counter - self.next_counter > MAX_SKIP:
            raise TooFarAhead(f"{counter - self.next_counter} ahead")
        chain_key = self._chain_key
        skipped: list[tuple[int, MessageKey]] = []
        for position in range(self.next_counter, counter):
            chain_key, key = step(chain_key)
            skipped.append((position, key))
        chain_key, key = step(chain_key)
        self._pending = (counter + 1, chain_key, skipped, -1)
        return key

    def commit(self) -> None:
        """Keep what ``open_key`` computed: the used key is gone, skipped ones are stored."""
        assert self._pending is not None, "commit() without open_key()"
        self.next_counter, self._chain_key, skipped, used = self._pending
        self._pending = None
        if used >= 0:
            del self._skipped[used]
            return
        for position, key in skipped:
            self._skipped[position] = key
        while len(self._skipped) > MAX_SKIPPED_KEYS:
            self._skipped.popitem(last=False)
