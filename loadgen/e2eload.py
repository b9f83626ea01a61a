"""``ocm-loadgen --e2e``: encrypted rooms (docs/e2e.md) under load, with the real engine.

What a loadgen process does for its encrypted rooms:

* **Joins.** Every member has its own identity (``client.e2e.identity.IdentityKeys``);
  user 0 creates its room with ``"e2e": true`` and its public keys, the others join with
  theirs and ``ocm1`` framing, as ``ocm-chat`` does. A join reply that is not ``e2e``
  counts as a framing mismatch (the run is not what was asked for).
* **Sender keys.** Each member has a ``client.e2e.room.RoomCrypto``. Every room's members
  live in one loadgen process, so each member's chain is delivered, with the real envelope
  (HPKE + Ed25519), inside the process, to the one member that checks its messages: the
  next user of the room (``verifier_of``). The relay's routing of envelopes is tested by
  tests/integration/test_e2e_relay.py; under load only chat travels.
* **Pre-built ciphertexts.** Before each run (``prepare``), each member seals with its own
  ``RoomCrypto.seal`` every message it may send in that run. The send path then writes
  ``prefix + sealed`` (one concatenation, as cheap as a plain send's formatting), and
  records the scheduled time and lateness of message ``k`` in the sender's log.
* **Accounting.** A chat delivery is ``ulen | username | 01 | 01 | chain id | counter |
  ciphertext | signature``. The receiver's room and the username give the sender; the
  chain id must be that sender's; the counter gives the message's index ``k`` in the
  sender's run (counter - first counter of the run), whose scheduled time and lateness
  are in the sender's log: the same two latencies and the same loss, duplicate and
  reordering accounting as a plain delivery (loadgen/meter.py). A counter from before the
  run (a late delivery of a capacity search's previous step) counts as warm-up. Every
  delivery is also compared **byte for byte** with what that sender sealed for that
  counter (``e2e_mismatch`` otherwise).
* **Sampled decryption.** The deliveries to a sender's verifier whose index ``k`` is a
  multiple of ``--e2e-verify-every`` are kept (as received, before the comparison) and
  opened after the run, outside the measured window, by the verifier's own
  ``RoomCrypto.receive``: the signature must verify, the AEAD open, and the text, chain
  and counter be the ones sealed (``e2e_verified``; ``e2e_verify_failed`` otherwise).
  A mismatch or a failed sample breaks the run (exit 1).

Nothing here is unencrypted-but-authenticated: the delivery is exactly what a real member
sends, and the meter learns the sequence number and send time only from the sender's own
log, through the chain id and counter every sealed message carries in the clear
(docs/e2e.md §4.3).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Final

from client.e2e.identity import IdentityKeys
from client.e2e.room import Decrypted, KeyInstalled, RoomCrypto, Send
from loadgen.meter import Meter, Row, username_of
from wire.e2e import (
    CHAIN_ID_BYTES,
    COUNTER_BYTES,
    MIN_SEALED_CHAT_BYTES,
    E2EDelivery,
    Kind,
    PublicKeys,
    decode_route,
)

MIN_E2E_SIZE: Final = 1 + MIN_SEALED_CHAT_BYTES
"""90: the kind byte and a sealed chat with empty text; ``--size`` is the whole Message."""
OVERHEAD_BYTES: Final = MIN_E2E_SIZE
"""Message bytes that are not text: kind 1, version 1, chain id 4, counter 4, tag 16,
signature 64."""
DEFAULT_VERIFY_EVERY: Final = 10
MAX_VERIFY_EVERY: Final = 1000
"""At most ``client.e2e.chains.MAX_SKIP`` positions between two samples of one chain."""
LEAVE_MESSAGE: Final = bytes((Kind.LEAVE,))
_CHAIN_AT: Final = 2  # in the Message: kind, version, then the chain id
_COUNTER_AT: Final = _CHAIN_AT + CHAIN_ID_BYTES
_HEADER_END: Final = _COUNTER_AT + COUNTER_BYTES


def text_of(g: int, counter: int, size: int) -> bytes:
    """The text member ``g`` seals as message ``counter``: ``size - 90`` bytes."""
    n = size - OVERHEAD_BYTES
    return (b"%d.%d." % (g, counter)).ljust(n, b"x")[:n]


def verifier_of(lm: int, users: int) -> int:
    """The member that checks ``lm``'s messages: the next user of the same room."""
    base = lm - lm % users
    return base + (lm % users + 1) % users


def corrupt(message: bytes) -> bytes:
    """``message`` with one bit of its ciphertext (or tag) flipped (``--e2e-corrupt-every``)."""
    return message[:_HEADER_END] + bytes((message[_HEADER_END] ^ 1,)) + \
        message[_HEADER_END + 1:]


class E2EMeter(Meter):
    """The meter of a process whose rooms are encrypted, with every member's keys and
    engine (the module docstring says what is checked)."""

    def __init__(self, room_lo: int, rooms: int, users: int, size: int,
                 verify_every: int = DEFAULT_VERIFY_EVERY, corrupt_every: int = 0) -> None:
        super().__init__(room_lo, rooms, users, framed=True)
        n = self.members
        self.size = size
        self.verify_every = verify_every
        self.corrupt_every = corrupt_every
        self.identities = [IdentityKeys.generate(secrets.token_bytes) for _ in range(n)]
        self.public: list[PublicKeys] = [i.public() for i in self.identities]
        self.crypto: list[RoomCrypto | None] = [None] * n
        self.chain: list[bytes] = [b""] * n
        """Each member's current chain id (4 bytes, as in its sealed messages)."""
        self.c0 = [0] * n
        """The counter of each member's first message of this run."""
        self.next_counter = [0] * n
        """The counter of each member's next seal (its chain starts at 0, and only
        ``prepare`` seals)."""
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
        """After the joins: an engine per member of local room ``r`` and each chain
        delivered (a real envelope, opened by the recipient) to its verifier."""
        users = self.users
        names = [username_of(u, users) for u in range(users)]
        lo = r * users
        for lm in range(lo, lo + users):
            if self.active[lm]:
                self.crypto[lm] = RoomCrypto(room_name, names[lm - lo], self.identities[lm],
                                             secrets.token_bytes)
        for lm in range(lo, lo + users):
            v = verifier_of(lm, users)
            sender, verifier = self.crypto[lm], self.crypto[v]
            if sender is None or verifier is None or v == lm:
                continue
            verifier.add_member(names[lm - lo], self.public[lm])  # its envelope: unused
            for out in sender.add_member(names[v - lo], self.public[v]):
                route = decode_route(out.message) if isinstance(out, Send) else None
                if route is None or not isinstance(out, Send):
                    raise RuntimeError(f"no envelope for {names[v - lo]}: {out}")
                delivery = E2EDelivery(names[lm - lo], Kind.ENVELOPE,
                                       out.message[route.body_offset:])
                for got in verifier.receive(delivery, 0.0):
                    if not isinstance(got, KeyInstalled):
                        raise RuntimeError(f"envelope of {names[lm - lo]} refused: {got}")

    # --- before a run -------------------------------------------------------------------
    def prepare(self, per_member: int) -> int:
        """Seal ``per_member`` messages for every active member; return how many."""
        total = 0
        base_g, size, corrupt_every = self._base_g, self.size, self.corrupt_every
        for lm, crypto in enumerate(self.crypto):
            if crypto is None:
                self.sealed[lm] = self.msgs[lm] = []
                continue
            counter = self.next_counter[lm]
            msgs = [crypto.seal(text_of(base_g + lm, counter + k, size))
                    for k in range(per_member)]
            self.next_counter[lm] = counter + per_member
            first = msgs[0] if msgs else bytes(_HEADER_END)
            if int.from_bytes(first[_COUNTER_AT:_HEADER_END], "big") != counter and msgs:
                raise RuntimeError("the engine's counter is not the one the loadgen tracks")
            self.chain[lm] = first[_CHAIN_AT:_COUNTER_AT]
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
        chain_at, counter_at, header_end = off + _CHAIN_AT, off + _COUNTER_AT, off + _HEADER_END
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
            k = int.from_bytes(data[counter_at:header_end], "big") - c0[slm]
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
                    and outputs[0].sender == name and outputs[0].counter == counter
                    and outputs[0].chain_id == int.from_bytes(self.chain[slm], "big")
                    and outputs[0].text == text_of(base_g + slm, counter, self.size))
            if good:
                ok += 1
            else:
                failed += 1
        self._samples.clear()
        self.c.e2e_verified += ok
        self.c.e2e_verify_failed += failed
