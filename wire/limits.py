"""Every bound of the wire protocol, with its unit (docs/protocol.md), and every default of
the service that more than one package needs.

Worst-case memory notes name what a hostile peer can make us hold with each bound.

Why the defaults live here too: the ports, the chat rate and the hot-loop modes are read by
control (its settings), the relay (its core and workers), the clients (their flags and the
GUI's form), the loadgen and the tests. wire/ is the one package every other one may import
(the layering test allows nothing else), it is sans-IO, and this module already holds the
service defaults the protocol's bounds imply; a separate module would make two homes for
"what is the default". A value used by one package only stays in that package.
"""

from __future__ import annotations

from typing import Final

# --- TCRP (docs/protocol.md §1) --------------------------------------------------------------
TCRP_HEADER_BYTES: Final = 32
"""Fixed TCRP header: RoomNameSize(1) Operation(1) State(1) OperationPayloadSize(29)."""
TCRP_PAYLOAD_SIZE_BYTES: Final = 29
"""Width of the big-endian OperationPayloadSize field."""
MAX_ROOM_NAME_BYTES: Final = 255
"""RoomNameSize is one byte; 0 is invalid."""
MAX_USERNAME_BYTES: Final = 255
"""A username longer than this is status 5 (it must fit a one-byte length, §2.3)."""
MAX_PASSWORD_BYTES: Final = 255
"""A password longer than this is status 5 ("a field over 255 bytes")."""
DEFAULT_MAX_PAYLOAD_BYTES: Final = 4096
"""Default ``--max-payload``; a declared payload above the limit is refused before any
payload byte is read, so one connection buffers at most 32 + 255 + limit bytes."""
MAX_TCRP_REQUEST_BYTES: Final = TCRP_HEADER_BYTES + MAX_ROOM_NAME_BYTES + DEFAULT_MAX_PAYLOAD_BYTES
"""Largest request buffered with the default limit (4,383 bytes per connection)."""
TOKEN_MIN_BYTES: Final = 22
TOKEN_MAX_BYTES: Final = 255
"""Tokens are 22..255 bytes of printable ASCII without space (0x21-0x7E), §1.4."""
REGISTRATION_BYTES: Final = 2
"""After State 2 the client may send its UDP port as exactly 2 bytes (§1.4)."""
REGISTRATION_WINDOW_S: Final = 2.0
"""How long the server keeps the connection open for the 2-byte registration."""

UNPROVEN_MAX_DELIVERIES: Final = 32
"""Datagrams (each <= 4,094 bytes) the relay sends to an address bound only by the 2-byte
registration, before a datagram from that address proves it; shared by every member bound
to the address. Then it gets nothing but its members' ``closed``/``disconnected`` notices
until proven. Worst case towards a port that never spoke: 32 x 4,094 B = 128 KiB per
registering join (docs/protocol.md §4 (j)); one int per such address in the worker."""

# --- UDP (docs/protocol.md §2, §3) -------------------------------------------------------------
MAX_DATAGRAM_BYTES: Final = 4096
"""Longest client -> server datagram (Stage 1 and Stage 2); longer ones are dropped."""
MAX_DELIVERY_BYTES: Final = 4094
"""Longest server -> client datagram (plain or framed)."""
CHAT_HEADER_BYTES: Final = 2
"""RoomNameSize(1) TokenSize(1) before the room name of a Stage 2 datagram."""
PLAIN_SEPARATOR: Final = b": "
"""Plain delivery is ``username: message``."""
EXIT_COMMAND: Final = "/exit"
"""Compared after ``str.strip()``, case-insensitively (§2.1)."""
EXIT_MATCH_MAX_BYTES: Final = 64
"""A message longer than this cannot be ``/exit`` plus whitespace we care to strip; saves
decoding and stripping large chat on the hot path. (Whitespace-padded /exit longer than
64 bytes is treated as chat; documented in docs/protocol.md.)"""

STAGE1_MAX_CLIENTS: Final = 10_000
"""Default ``max_stage1_clients``: Stage 1 addresses remembered in all (~300 B each in the
worker: 3 MB when full). A new address past it is dropped until one expires."""
STAGE1_MAX_CLIENTS_PER_IP: Final = 64
"""Stage 1 addresses remembered per source IP: what one host (or one forged source IP)
can add to every message's fan-out. Reaching the whole table takes 157 source IPs."""
STAGE1_CHAT_RATE: Final = 2.0
"""Stage 1 chat messages per second per address (token bucket); excess dropped and counted
(``rate_limited``). Keepalives are not counted."""
STAGE1_CHAT_BURST: Final = 5
"""Stage 1 bucket size: chat messages an address may send at once."""
STAGE1_MAX_SENDS_PER_S: Final = 10_000
"""Stage 1 datagrams the worker sends per second at most, all fan-outs together (token
bucket, at most 256 per loop turn): what Stage 1 may take of the loop that also serves
worker 0's rooms. A backlog waits in the Stage 1 socket's kernel buffer (then the kernel
drops it); nothing queues in the worker but the one fan-out in progress."""

# --- Defaults of the service (the config may override) ------------------------------------
DEFAULT_TCP_PORT: Final = 9000
"""Plain TCRP (TCP): ``ocm-control --tcp-port``, the clients' and the loadgen's default."""
DEFAULT_TLS_PORT: Final = 9443
"""TCRP over TLS (TCP): ``ocm-control --tls-port``; the clients' default with ``--tls``."""
DEFAULT_UDP_PORT: Final = 9001
"""The room-chat port (UDP) shared by the relay workers."""
DEFAULT_STAGE1_PORT: Final = 9002
"""The Stage 1 global-chat port (UDP)."""
DEFAULT_ADMIN_PORT: Final = 9100
"""The admin HTTP server (/metrics, /healthz, /readyz)."""
DEFAULT_CLUSTER_PORT: Final = 9003
"""The internal TCP link between the nodes of a cluster."""
DEFAULT_CHAT_RATE: Final = 10.0
"""Chat messages per second per member (token bucket); excess is dropped and counted
(``rate_limited``)."""
DEFAULT_CHAT_BURST: Final = 20
"""Chat messages a member may send at once (the bucket size of the chat rate)."""
HOT_PATH_MODES: Final = ("auto", "compiled", "python")
"""The relay workers' hot loop (``relay_hot_path``, relay/hot.py): auto = compiled if it
was built at install, else pure Python."""
DEFAULT_INACTIVITY_TIMEOUT_S: Final = 300.0
DEFAULT_TCP_TIMEOUT_S: Final = 10.0
DEFAULT_MAX_MEMBERS: Final = 1000
"""Members per room, host included. Worst case per room in a worker: ~1 KiB per member."""
DEFAULT_MAX_SEND_FAILURES: Final = 3


def max_message_bytes(room_len: int, token_len: int, username_len: int,
                      reliable: bool = False) -> int:
    """The longest message a member can send that is relayed to everyone (§1.3); an
    ``ocm1r`` member's message also carries a 5-byte SEND header, and is delivered
    to the other ``ocm1r`` members behind a 9-byte DATA header (wire/reliable.py)."""
    if reliable:
        return min(
            MAX_DATAGRAM_BYTES - CHAT_HEADER_BYTES - room_len - token_len - 5,
            MAX_DELIVERY_BYTES - 9 - 1 - username_len,
        )
    return min(
        MAX_DATAGRAM_BYTES - CHAT_HEADER_BYTES - room_len - token_len,
        MAX_DELIVERY_BYTES - len(PLAIN_SEPARATOR) - username_len,
    )

# --- Encrypted rooms (docs/e2e.md) --------------------------------------------------------
MAX_E2E_MEMBERS: Final = 256
"""Members of an encrypted room, host included: the server answers ROOM_FULL (7) beyond
``min(--max-members, 256)``. A departure costs every remaining member one 153-byte
envelope per other member (255 * 255 envelopes room-wide at this bound)."""
MAX_MEMBERS_ENTRY_BYTES: Final = 834
"""Largest ``members`` entry in JSON: a 255-byte username of quotes (each escaped to 2
bytes), the host flag, both keys in base64, and in a join reply the claimed prekey."""
MAX_MEMBERS_RESPONSE_BYTES: Final = 256 * 1024
"""The State 1 payload a client accepts for a join reply or a member list (Operation 3):
256 entries of at most 834 bytes plus the other details fit in 214 KiB."""
ADDRESSED_BURST: Final = MAX_E2E_MEMBERS
"""Addressed datagrams (envelopes and key requests, docs/e2e.md §3.2) a member of an
encrypted room may send at once: a rotation of the largest room (255 envelopes, §6.1) plus
one. A token bucket of its own, apart from chat's; excess dropped and counted
(``rate_limited``)."""
ADDRESSED_RATE: Final = 16.0
"""Addressed datagrams per second per member (the bucket's refill): key requests and their
answers are at most one a second per (sender, chain) and per requester (docs/e2e.md
§4.6), so a slow refill is enough. Worst case one member makes the relay send:
``ADDRESSED_BURST + ADDRESSED_RATE * t`` deliveries of at most 4,094 bytes in ``t``
seconds (288 in 2 s), each to one member of its room; one 2-float entry per member that
sent one, in the worker."""

# --- Reliable framed delivery (docs/protocol.md, our extension) ---------------------------
HISTORY_MAX_MESSAGES: Final = 256
"""Default numbered deliveries a room keeps for resends (``history_max_messages``)."""
HISTORY_MAX_BYTES: Final = 256 * 1024
"""Default bytes a room's history holds (``history_max_bytes``), each entry charged its
datagram plus ``HISTORY_ENTRY_OVERHEAD_BYTES``."""
HISTORY_MAX_AGE_S: Final = 60.0
"""Default seconds a delivery stays in the history (``history_max_age``)."""
HISTORY_ENTRY_OVERHEAD_BYTES: Final = 168
"""What one history entry costs beyond its datagram (tuple, float, Seq int, bytes header,
deque slot; tests/unit/test_history_memory.py holds it to what is allocated), charged
against the byte limits so that they bound memory, not payload."""
HISTORY_WORKER_MAX_BYTES: Final = 64 * 1024 * 1024
"""Default bytes all the histories of one worker hold together (``history_worker_bytes``).
Worst case: a room holds ``min(HISTORY_MAX_BYTES, 256 x (4,094 + 120))`` = 256 KiB, and a
worker ``min(rooms x 256 KiB, 64 MiB)``: past the worker's budget a new delivery is sent
but not kept (a NACK for it is answered as lost)."""
NACK_MAX_RANGES: Final = 16
"""Ranges in one NACK (a NACK is at most 5 + 16 x 6 = 101 bytes)."""
NACK_MAX_RANGE_COUNT: Final = 256
"""Sequence numbers in one NACK range."""
NACK_MAX_RESENDS: Final = 64
"""Deliveries (resent or answered as lost) one NACK may cause; the rest are ignored."""
NACK_RATE: Final = 10.0
"""NACKs per second per member (token bucket); excess dropped (``rate_limited``). With
``NACK_MAX_RESENDS`` a member may pull at most 640 x 4,094 B = 2.6 MB/s to its own proven
address."""
NACK_BURST: Final = 10
ACK_HOLD_S: Final = 0.1
"""How long the relay holds the acknowledgement of a ``06`` SEND for a DATA to the sender
to carry it; past it (checked every ``ACK_HOLD_TICK_S``) it goes alone, as an ACK."""
ACK_HOLD_TICK_S: Final = 0.05
"""How often a worker sends the held acknowledgements that are due: one goes alone at most
``ACK_HOLD_S + ACK_HOLD_TICK_S`` after its SEND."""
RESUME_SECRET_BYTES: Final = 24
"""Random bytes of a resume secret (32 base64url characters in the TCRP answer)."""
