"""``ocm-loadgen --e2e``: encrypted rooms (docs/e2e.md) under load, with the real engine.

What a loadgen process does for its encrypted rooms:

* **Joins.** Every member has its own identity (``client.e2e.identity.IdentityKeys``);
  user 0 creates its room with ``"e2e": true`` and its public keys, the others join with
  theirs and ``ocm1`` framing, as ``ocm-chat`` does. A join reply that is not ``e2e``
  counts as a framing mismatch (the run is not what was asked for).
* **Room keys.** Each member has a ``client.e2e.room.RoomCrypto`` (Megolm on vodozemac).
  Every room's members live in one loadgen process, so each member's Megolm session is
  delivered inside the process, over a real Olm session started from the verifier's
  signed prekey, to the one member that checks its messages: the next user of the room
  (``verifier_of``). The relay's routing of Olm messages is tested by
  tests/integration/test_e2e_relay.py; under load only chat travels.
* **Pre-built ciphertexts.** Before each run (``prepare``), each member encrypts with its
  own ``RoomCrypto.encrypt`` (one Megolm session for the whole run: the rotation bound of
  a chat client does not apply) every message it may send in that run. The send path then writes
  ``prefix + sealed`` (one concatenation, as cheap as a plain send's formatting), and
  records the scheduled time and lateness of message ``k`` in the sender's log.
* **Accounting.** A chat delivery is ``ulen | username | 01 | 02 | session id | Megolm
  message`` (version 03, then the message index as a protobuf varint). The receiver's
  room and the username give the sender; the session id must be that sender's; the
  message index gives the message's index ``k`` in the sender's run (index - first
  index of the run), whose scheduled time and lateness
  are in the sender's log: the same two latencies and the same loss, duplicate and
  reordering accounting as a plain delivery (loadgen/meter.py). A counter from before the
  run (a late delivery of a capacity search's previous step) counts as warm-up. Every
  delivery is also compared **byte for byte** with what that sender sealed for that
  counter (``e2e_mismatch`` otherwise).
* **Sampled decryption.** The deliveries to a sender's verifier whose index ``k`` is a
  multiple of ``--e2e-verify-every`` are kept (as received, before the comparison) and
  opened after the run, outside the measured window, by the verifier's own
  ``RoomCrypto.receive``: the Megolm signature and MAC must verify, and the text,
  session and index be the ones sealed (``e2e_verified``; ``e2e_verify_failed`` otherwise).
  A mismatch or a failed sample breaks the run (exit 1).

Nothing here is unencrypted-but-authenticated: the delivery is exactly what a real member
sends, and the meter learns the sequence number and send time only from the sender's own
log, through the session id and message index every Megolm message carries in the clear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from client.e2e.identity import IdentityKeys
from client.e2e.room import Decrypted, KeyInstalled, RoomCrypto, Send, room_binding
from loadgen.meter import Meter, Row, username_of
from wire.e2e import (
    MIN_CHAT_OVERHEAD_BYTES,
    SESSION_ID_BYTES,
    E2EDelivery,
    Kind,
    MemberInfo,
    PublicKeys,
    decode_route,
)

MAX_NAME_BYTES: Final = 16
"""Loadgen usernames (``u0``, ``u00``...) are far shorter."""
OVERHEAD_BYTES: Final = 1 + MIN_CHAT_OVERHEAD_BYTES + MAX_NAME_BYTES
"""Message bytes that are not text, at most: kind, version, session id, the Megolm
framing, padding, MAC and signature, the sender's name inside. A Message is then at most
``--size`` bytes (AES-CBC padding makes it up to 16 bytes shorter)."""
MIN_E2E_SIZE: Final = OVERHEAD_BYTES
DEFAULT_VERIFY_EVERY: Final = 10
MAX_VERIFY_EVERY: Final = 1000
"""Samples are opened in order; Megolm ratchets forward cheaply, any gap is fine."""
LEAVE_MESSAGE: Final = bytes((Kind.LEAVE,))
LOADGEN_SERVER: Final = "loadgen"
"""The server identity the in-process room keys are bound to (no server sees them)."""
_SESSION_AT: Final = 2  # in the Message: kind, version, then the session id
_INDEX_AT: Final = _SESSION_AT + SESSION_ID_BYTES + 2  # Megolm version 03, field tag 08
_MIN_CHAT: Final = _INDEX_AT + 1


def text_of(g: int, counter: int, size: int) -> bytes:
    """The text member ``g`` encrypts as message ``counter``: ``size - OVERHEAD_BYTES``."""
    n = size - OVERHEAD_BYTES
    return (b"%d.%d." % (g, counter)).ljust(n, b"x")[:n]


def verifier_of(lm: int, users: int) -> int:
    """The member that checks ``lm``'s messages: the next user of the same room."""
    base = lm - lm % users
    return base + (lm % users + 1) % users


def corrupt(message: bytes) -> bytes:
    """``message`` with one bit of its ciphertext flipped (``--e2e-corrupt-every``): the
    last ciphertext byte, before the MAC (8) and the signature (64)."""
    at = len(message) - 73
    return message[:at] + bytes((message[at] ^ 1,)) + message[at + 1:]


def message_index(data: bytes, at: int) -> int:
    """The protobuf varint at ``data[at:]`` (a Megolm message index)."""
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        at += 1
        shift += 7


class E2EMeter(Meter):
    """The meter of a process whose rooms are encrypted, with every member's keys and
    engine (the module docstring says what is checked)."""

    def __init__(self, room_lo: int, rooms: int, users: int, size: int,
                 verify_every: int = DEFAULT_VERIFY_EVERY, corrupt_every: int = 0) -> None:
        super().__init__(room_lo, rooms, users, framed=True)
        n = self.members
        self.size = size
        self.text_size = size + MAX_NAME_BYTES - len(username_of(0, users))
        """``text_of``'s size: the overhead counts a name of ``MAX_NAME_BYTES``, ours are one
        width per run and shorter, so a Message comes within 20 bytes of ``size`` (padding
        and the index's varint) and never over it."""
        self.verify_every = verify_every
        self.corrupt_every = corrupt_every
        self.identities = [IdentityKeys.generate() for _ in range(n)]
        self.public: list[PublicKeys] = [i.public() for i in self.identities]
        self.crypto: list[RoomCrypto | None] = [None] * n
        self.chain: list[bytes] = [b""] * n
        """Each member's Megolm session id (32 bytes, as in its messages)."""
        self.c0 = [0] * n
        """The message index of each member's first message of this run."""
        self.next_counter = [0] * n
        """The index of each member's next message (its session starts at 0, and only
        ``prepare`` encrypts)."""
        self.sealed: list[list[bytes]] = [[] for _ in range(n)]
        """The Messages each member sealed for this run, in order (message ``k``)."""
        self.msgs = [[] for _ in range(n)] if corrupt_every else self.sealed
        """What each member sends: ``sealed``, or with ``corrupt_every`` a copy in which
        every N-th Message has a flipped bit (deliveries are still compared with
        ``sealed``)."""
        self.nsent = [0] * n
        """Messages sent in this run, warmup included (the next ``k``)."""
        self.base = [0] * n
        """``k`` of each member's first measured message (its sequence number 0)."""
        self.log_ns: list[list[int]] = [[] for _ in range(n)]
        self.log_lag: list[list[int]] = [[] for _ in range(n)]
        self._samples: list[tuple[int, int, int, bytes]] = []

    # --- keys ---------------------------------------------------------------------------
    def start_room(self, room_name: str, r: int) -> None:
        """After the joins: an engine per member of local room ``r``, and each member's
        Megolm session delivered to its verifier over a real Olm session."""
        users = self.users
        names = [username_of(u, users) for u in range(users)]
        lo = r * users
        binding = room_binding(room_name, b"")
        for lm in range(lo, lo + users):
            if self.active[lm]:
                self.crypto[lm] = RoomCrypto(room_name, names[lm - lo], self.identities[lm],
                                             binding)
        for lm in range(lo, lo + users):
            v = verifier_of(lm, users)
            sender, verifier = self.crypto[lm], self.crypto[v]
            if sender is None or verifier is None or v == lm:
                continue
            verifier.start([MemberInfo(names[lm - lo], False, self.public[lm])])
            published = self.identities[v].publish(1)
            assert published.prekeys is not None
            target = MemberInfo(names[v - lo], False, self.public[v],
                                published.prekeys.one_time[0])
            installed = False
            for out in sender.start([target]):
                route = decode_route(out.message) if isinstance(out, Send) else None
                if route is None or not isinstance(out, Send):
                    continue
                delivery = E2EDelivery(names[lm - lo], Kind.ENVELOPE,
                                       out.message[route.body_offset:])
                got = verifier.receive(delivery, 0.0)
                installed |= any(isinstance(g, KeyInstalled) for g in got)
            if not installed:
                raise RuntimeError(f"the room key of {names[lm - lo]} did not reach "
                                   f"{names[v - lo]}")

    # --- before a run -------------------------------------------------------------------
    def prepare(self, per_member: int) -> int:
        """Seal ``per_member`` messages for every active member; return how many."""
        total = 0
        base_g, size, corrupt_every = self._base_g, self.text_size, self.corrupt_every
        for lm, crypto in enumerate(self.crypto):
            if crypto is None:
                self.sealed[lm] = self.msgs[lm] = []
                continue
            counter = self.next_counter[lm]
            msgs = [crypto.encrypt(text_of(base_g + lm, counter + k, size))
                    for k in range(per_member)]
            self.next_counter[lm] = counter + per_member
            if msgs and message_index(msgs[0], _INDEX_AT) != counter:
                raise RuntimeError("the engine's index is not the one the loadgen tracks")
            self.chain[lm] = crypto.session_id
            self.c0[lm] = counter
            self.sealed[lm] = msgs
            if corrupt_every:
                self.msgs[lm] = [corrupt(m) if k % corrupt_every == 0 else m
                                 for k, m in enumerate(msgs)]
            self.log_ns[lm] = [0] * per_member
            self.log_lag[lm] = [0] * per_member
            total += len(msgs)
        return total

    def messages(self, prefix: list[bytes]) -> Callable[[int, bool, int, int], bytes]:
        """The send path's ``message_of`` (loadgen/users.py): member ``lm``'s next sealed
        Message after its datagram ``prefix``; its scheduled time and lateness go to the
        sender's log."""
        msgs, nsent, base, sent = self.msgs, self.nsent, self.base, self.sent
        log_ns, log_lag = self.log_ns, self.log_lag

        def message(lm: int, measured: bool, due: int, lag_us: int) -> bytes:
            k = nsent[lm]  # an IndexError below means prepare() sealed too few
            log_ns[lm][k] = due
            log_lag[lm][k] = lag_us
            nsent[lm] = k + 1
            if measured and not sent[lm]:
                base[lm] = k
            return prefix[lm] + msgs[lm][k]

        return message

    def start_run(self, mstart_ns: int) -> None:
        super().start_run(mstart_ns)
        self.nsent[:] = [0] * self.members
        self.base[:] = [0] * self.members
        self._samples.clear()

    # --- receiving -----------------------------------------------------------------------
    def receive_batch(self, batch: Sequence[tuple[int, bytes, int]], now_ns: int) -> None:
        """``Meter.receive_batch`` for encrypted deliveries (the module docstring): the
        same ``account_rows`` after a different parse."""
        off = self._off
        ulen = self.ulen
        chain_at, counter_at = off + _SESSION_AT, off + _SESSION_AT + SESSION_ID_BYTES
        index_at, header_end = off + _INDEX_AT, off + _MIN_CHAT
        users = self.users
        chain, c0, nsent, sealed, base = self.chain, self.c0, self.nsent, self.sealed, self.base
        log_ns, log_lag = self.log_ns, self.log_lag
        every, samples = self.verify_every, self._samples
        rows: list[Row] = []
        append = rows.append
        misrouted = unparsed = mismatch = warmup = 0
        for rlm, data, rx_ns in batch:
            if data[0] != ulen:
                self._notice(rlm, data)
                continue
            if len(data) < header_end or data[off] != Kind.CHAT:
                unparsed += 1
                continue
            try:
                s = int(data[2:off])
            except ValueError:
                unparsed += 1
                continue
            ru = rlm % users
            if s >= users or s == ru:
                misrouted += 1
                continue
            slm = rlm - ru + s
            if data[chain_at:counter_at] != chain[slm]:
                misrouted += 1  # another room's member of that name, or an old chain
                continue
            k = message_index(data, index_at) - c0[slm]
            if k < 0:
                warmup += 1  # sealed for an earlier run (a capacity search's previous step)
                continue
            if k >= nsent[slm]:
                mismatch += 1  # a counter that sender has not sent
                continue
            if k % every == 0 and ru == (s + 1) % users:
                samples.append((rlm, s, k, data[off:]))
            if data[off:] != sealed[slm][k]:
                mismatch += 1
                continue
            append((rlm, s, k - base[slm], log_ns[slm][k], log_lag[slm][k], rx_ns))
        c = self.c
        c.misrouted += misrouted
        c.unparsed += unparsed
        c.e2e_mismatch += mismatch
        c.warmup += warmup
        self.account_rows(rows, now_ns)

    # --- after a run -----------------------------------------------------------------------
    def verify_samples(self) -> None:
        """Open every kept sample with its verifier's engine (in counter order per chain,
        duplicates once); count ``e2e_verified`` and ``e2e_verify_failed``."""
        users, base_g = self.users, self._base_g
        seen: set[tuple[int, int, int]] = set()
        ok = failed = 0
        for rlm, s, k, message in sorted(self._samples, key=lambda x: x[:3]):
            if (rlm, s, k) in seen:
                continue
            seen.add((rlm, s, k))
            slm = rlm - rlm % users + s
            crypto = self.crypto[rlm]
            name = username_of(s, users)
            counter = self.c0[slm] + k
            outputs = [] if crypto is None else crypto.receive(
                E2EDelivery(name, Kind.CHAT, message[1:]), 0.0)
            good = (len(outputs) == 1 and isinstance(outputs[0], Decrypted)
                    and outputs[0].sender == name and outputs[0].index == counter
                    and outputs[0].session_id == self.chain[slm]
                    and outputs[0].text == text_of(base_g + slm, counter, self.text_size))
            if good:
                ok += 1
            else:
                failed += 1
        self._samples.clear()
        self.c.e2e_verified += ok
        self.c.e2e_verify_failed += failed
