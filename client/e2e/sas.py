"""Interactive verification with vodozemac's SAS (short authentication strings), sans-IO.

Two members who hold an Olm session exchange ephemeral Curve25519 keys over it
(``START``, ``ACCEPT``), and each derives the same seven emoji and three 4-digit numbers
from the shared secret, bound to the room binding and to both members' names, SAS keys
and identity keys. The users compare them out of band (in person, by phone); a
man in the middle would see different ones. Each side that confirms sends a ``MAC`` of
its own identity keys under the SAS secret; a side that confirmed and gets a valid MAC
of the keys it holds for the other knows they are the other's real keys.

``SasFlow`` holds one verification with one member; ``RoomCrypto.send_content`` carries
its payloads (``ContentType.SAS``) and ``SasMessage`` brings the other side's back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import vodozemac

from client.e2e.identity import from_unpadded, to_unpadded
from wire.e2e import KEY_BYTES, PublicKeys

SAS_INFO: Final = "OCM_SAS_V1"
MAC_INFO: Final = "OCM_SAS_MAC_V1"

EMOJI: Final = (
    ("🐶", "Dog"), ("🐱", "Cat"), ("🦁", "Lion"), ("🐎", "Horse"), ("🦄", "Unicorn"),
    ("🐷", "Pig"), ("🐘", "Elephant"), ("🐰", "Rabbit"), ("🐼", "Panda"), ("🐓", "Rooster"),
    ("🐧", "Penguin"), ("🐢", "Turtle"), ("🐟", "Fish"), ("🐙", "Octopus"),
    ("🦋", "Butterfly"), ("🌷", "Flower"), ("🌳", "Tree"), ("🌵", "Cactus"),
    ("🍄", "Mushroom"), ("🌏", "Globe"), ("🌙", "Moon"), ("☁️", "Cloud"), ("🔥", "Fire"),
    ("🍌", "Banana"), ("🍎", "Apple"), ("🍓", "Strawberry"), ("🌽", "Corn"), ("🍕", "Pizza"),
    ("🎂", "Cake"), ("❤️", "Heart"), ("😀", "Smiley"), ("🤖", "Robot"), ("🎩", "Hat"),
    ("👓", "Glasses"), ("🔧", "Spanner"), ("🎅", "Santa"), ("👍", "Thumbs Up"),
    ("☂️", "Umbrella"), ("⌛", "Hourglass"), ("⏰", "Clock"), ("🎁", "Gift"),
    ("💡", "Light Bulb"), ("📕", "Book"), ("✏️", "Pencil"), ("📎", "Paperclip"),
    ("✂️", "Scissors"), ("🔒", "Lock"), ("🔑", "Key"), ("🔨", "Hammer"), ("☎️", "Telephone"),
    ("🏁", "Flag"), ("🚂", "Train"), ("🚲", "Bicycle"), ("✈️", "Aeroplane"), ("🚀", "Rocket"),
    ("🏆", "Trophy"), ("⚽", "Ball"), ("🎸", "Guitar"), ("🎺", "Trumpet"), ("🔔", "Bell"),
    ("⚓", "Anchor"), ("🎧", "Headphones"), ("📁", "Folder"), ("📌", "Pin"),
)
"""The 64 SAS emoji of the Matrix specification, in its order (index = 6 bits)."""


class SasKind(enum.IntEnum):
    START = 1  # the starter's SAS public key
    ACCEPT = 2  # the acceptor's SAS public key
    MAC = 3  # a MAC of the sender's identity keys (base64 text)
    CANCEL = 4  # either side stops


class SasError(Exception):
    """A SAS payload out of place or malformed."""


@dataclass(frozen=True, slots=True)
class SasShow:
    """What both users compare: seven emoji (symbol, name) and three numbers."""

    emoji: tuple[tuple[str, str], ...]
    decimals: tuple[int, int, int]

    def text(self) -> str:
        return "  ".join(f"{symbol} {name}" for symbol, name in self.emoji)


def encode_sas(kind: SasKind, data: bytes = b"") -> bytes:
    return bytes((kind,)) + data


def decode_sas(payload: bytes) -> tuple[SasKind, bytes]:
    if not payload or payload[0] not in (1, 2, 3, 4):
        raise SasError("not a SAS message")
    return SasKind(payload[0]), payload[1:]


def _key_text(keys: PublicKeys) -> str:
    return f"{to_unpadded(keys.ed25519)}|{to_unpadded(keys.x25519)}"


class SasFlow:
    """One verification between ``me`` and ``peer`` in a room with ``binding``."""

    def __init__(self, me: str, my_keys: PublicKeys, peer: str, peer_keys: PublicKeys,
                 binding: bytes, starter: bool) -> None:
        self.me, self.my_keys, self.peer, self.peer_keys = me, my_keys, peer, peer_keys
        self.binding = binding
        self.starter = starter
        self._sas = vodozemac.Sas()
        self._public = from_unpadded(self._sas.public_key.to_base64())
        self._established: vodozemac.EstablishedSas | None = None
        self._their_public = b""
        self.confirmed = False
        self.their_mac: str | None = None
        self.verified = False
        self.cancelled = False

    def start(self) -> bytes:
        """The ``START`` payload (the starter's first message)."""
        return encode_sas(SasKind.START, self._public)

    def accept(self, start: bytes) -> tuple[bytes, SasShow]:
        """As the acceptor, on ``START``: the ``ACCEPT`` payload and what to compare."""
        show = self._establish(start)
        return encode_sas(SasKind.ACCEPT, self._public), show

    def accepted(self, accept: bytes) -> SasShow:
        """As the starter, on ``ACCEPT``: what to compare."""
        return self._establish(accept)

    def _establish(self, their_public: bytes) -> SasShow:
        if self._established is not None or len(their_public) != KEY_BYTES:
            raise SasError("a SAS key out of place")
        try:
            self._established = self._sas.diffie_hellman(
                vodozemac.Curve25519PublicKey.from_bytes(their_public))
        except ValueError as exc:
            raise SasError(f"bad SAS key: {exc}") from None
        self._their_public = their_public
        sas_bytes = self._established.bytes(self._info())
        emoji = tuple(EMOJI[i % 64] for i in bytes(sas_bytes.emoji_indices))
        return SasShow(emoji, sas_bytes.decimals)

    def _info(self) -> str:
        mine = (self.me, self._public, self.my_keys)
        theirs = (self.peer, self._their_public, self.peer_keys)
        first, second = (mine, theirs) if self.starter else (theirs, mine)
        parts = [SAS_INFO, self.binding.hex()]
        for name, sas_key, keys in (first, second):
            parts += [name, to_unpadded(sas_key), _key_text(keys)]
        return "|".join(parts)

    def confirm(self) -> bytes:
        """The user saw the same emoji: the ``MAC`` payload of our identity keys."""
        if self._established is None:
            raise SasError("nothing to confirm yet")
        self.confirmed = True
        mac = self._established.calculate_mac(
            _key_text(self.my_keys), f"{MAC_INFO}|{self.binding.hex()}|{self.me}|{self.peer}")
        self._check()
        return encode_sas(SasKind.MAC, mac.encode())

    def mac_received(self, data: bytes) -> bool:
        """The other side's ``MAC``; True once verified (both confirmed, MAC valid)."""
        if self._established is None:
            raise SasError("a MAC before the keys")
        self.their_mac = data.decode("ascii", "replace")
        return self._check()

    def _check(self) -> bool:
        if self._established is None or not self.confirmed or self.their_mac is None:
            return self.verified
        try:
            self._established.verify_mac(
                _key_text(self.peer_keys),
                f"{MAC_INFO}|{self.binding.hex()}|{self.peer}|{self.me}", self.their_mac)
        except ValueError:
            self.cancelled = True
            raise SasError(f"{self.peer}'s keys do not match what the server showed") from None
        self.verified = True
        return True
