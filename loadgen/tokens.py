"""The members file of ``ocm-loadgen --tokens-out`` (read by cload's ``--tokens FILE``,
tests/bench/perf/cload.c).

One member a line, six tab-separated fields: ``room slot room_name token udp_host
udp_port``, and a seventh, ``datagram_key`` (64 hex digits), for a member that joined over
TLS: cload then seals its datagrams (docs/protocol.md §8), from ``Seq`` 2^32 (the
loadgen used a few when it joined the member). ``room`` and
``slot`` are 0-based indexes (slot 0 is the room's host). cload reads each line with
``sscanf("%d\\t%d\\t%299s\\t%299s\\t%63s\\t%d\\t%64s")``: every text field
must be printable ASCII without whitespace and at most 299 bytes (the host at most 63).
OCM tokens are 22..255 bytes of 0x21..0x7E (wire/limits.py), so they always fit; the
check is here so that a server that breaks the rule gives a clear error, not a file that
cload silently misreads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_FIELD_BYTES: Final = 299
"""cload's ``%299s`` for the room name and the token."""
MAX_HOST_BYTES: Final = 63
"""cload's ``%63s`` for the UDP host."""


@dataclass(frozen=True, slots=True, order=True)
class MemberToken:
    """One joined member, as a line of the file."""

    room: int
    slot: int
    room_name: bytes
    token: bytes
    udp_host: str
    udp_port: int
    datagram_key: bytes | None = None


class UnprintableField(ValueError):
    """A room name, token or host that cload's ``%s`` would split or truncate."""


def _text(value: bytes, what: str, limit: int) -> str:
    if not value or len(value) > limit or any(b < 0x21 or b > 0x7E for b in value):
        raise UnprintableField(
            f"{what} {value!r} cannot be written for cload: it must be 1..{limit} bytes of "
            "printable ASCII without whitespace")
    return value.decode("ascii")


def encode_line(member: MemberToken) -> str:
    """One line of the file (with its newline); raises ``UnprintableField``."""
    fields: tuple[str, ...] = (
        str(member.room), str(member.slot),
        _text(member.room_name, "room name", MAX_FIELD_BYTES),
        _text(member.token, "token", MAX_FIELD_BYTES),
        _text(member.udp_host.encode(), "UDP host", MAX_HOST_BYTES),
        str(member.udp_port))
    if member.datagram_key is not None:
        fields += (member.datagram_key.hex(),)
    return "\t".join(fields) + "\n"


def encode_file(members: list[MemberToken]) -> str:
    """Every member, sorted by room and slot; raises ``UnprintableField``."""
    return "".join(encode_line(m) for m in sorted(members))


def decode_file(text: str) -> list[MemberToken]:
    """The members of a file written by ``encode_file`` (for tests and harnesses)."""
    out = []
    for line in text.splitlines():
        room, slot, name, token, host, port, *key = line.split("\t")
        out.append(MemberToken(int(room), int(slot), name.encode(), token.encode(), host,
                               int(port), bytes.fromhex(key[0]) if key else None))
    return out
