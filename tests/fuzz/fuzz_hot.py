"""Differential fuzz target: the compiled hot loop (relay/_hot.c) against the Python path.

    python -m tests.fuzz.fuzz_hot [--steps 2000] [--seed 1] [--sanitize] [--hot-dir DIR]

Both loops (tests/unit/test_relay_hot.py's ``Pair``: two workers, real UDP sockets on
127.0.0.1, one pinned clock) get the same random and mutated traffic, one datagram or a
batch of up to 24 read at once, and after every step must have sent the same deliveries,
in the same order, to the same clients, and be in the same state: counters, drop and
eviction reasons, failure streaks, rooms, every member's address, buckets and last-seen
time, and the events for control. The traffic: members of both delivery formats in plain
rooms and framed members of an encrypted room, binding, chat, keepalives, ``/exit`` in
its spellings, invalid UTF-8, over-long messages, encrypted kinds (chat, envelopes, key
requests, leave, bad kinds), wrong token, room or IP, addresses shared by several members,
registered addresses on trial, members bound where every send fails (so evictions, of
hosts too, which close rooms mid-batch), control's ``close_room``, timers, and bit flips,
truncations and splices of all of these. A closed room is opened again with new members.
Rooms "q" and "s" (encrypted) become numbered when an ``ocm1r`` member joins: its members'
SENDs mostly carry the next id (numbered and acknowledged by either loop; in "s" mostly a
chat Message, sometimes another kind; half of them ``06`` SENDs, whose ACK is held for the
sender's next DATA to carry, or sent alone by the timer), sometimes a copy or a gap, and its
NACKs name the room's epoch or another; the histories (small: 24 entries, 6,000 bytes a
room, 9,000 for both numbered rooms, so that every limit is met) and ``Reliable`` states
(held ACKs included) are compared too.

``--sanitize`` builds relay/_hot.c with AddressSanitizer and UndefinedBehaviorSanitizer
into a temporary directory (``$CC``, gcc or cc, and the Python headers) and runs the
steps in a child process that loads it (``LD_PRELOAD`` of the compiler's libasan,
``PYTHONMALLOC=malloc`` so that Python objects are ASan allocations too); any sanitizer
report aborts the child. ``make fuzz-hot`` is the long run (``FUZZ_HOT_STEPS``), and
tests/fuzz/test_fuzz_hot.py a short one inside ``make test``. Exit 0 when every step
agreed, 1 on the first difference (with the seed and step to replay), the child's code
on a sanitizer abort.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]
SANITIZE_FLAGS: Final = ("-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                         "-fno-omit-frame-pointer", "-g", "-O1", "-ffp-contract=off")
PROGRESS_EVERY: Final = 5000
BATCH_MAX: Final = 24
"""Datagrams queued before one read (the worker's socket buffer holds them all)."""


def compiler() -> str | None:
    """The C compiler the sanitized build uses (``$CC``, else gcc or cc), or None."""
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return name
    return None


def build_sanitized(dest: Path) -> Path:
    """Compile relay/_hot.c with ASan and UBSan as ``dest/relay/_hot<suffix>``; return
    the directory to put first on ``relay.__path__``."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler ($CC, gcc or cc) to build the sanitized extension")
    package = dest / "relay"
    package.mkdir(parents=True, exist_ok=True)
    target = package / ("_hot" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    subprocess.run([cc, *SANITIZE_FLAGS, "-shared", "-fPIC",
                    f"-I{sysconfig.get_paths()['include']}", str(ROOT / "relay" / "_hot.c"),
                    "-o", str(target), "-lcrypto"], check=True)
    return package


def sanitizer_env(cc: str) -> dict[str, str]:
    """The child's environment: the compiler's libasan first, Python on malloc, abort
    on the first report (leak checking off: the interpreter keeps memory at exit)."""
    libasan = subprocess.run([cc, "-print-file-name=libasan.so"], check=True,
                             capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan):
        raise RuntimeError(f"{cc} does not know where libasan.so is (got {libasan!r})")
    env = dict(os.environ)
    env.update(LD_PRELOAD=libasan, PYTHONMALLOC="malloc",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    return env


# --- the traffic -----------------------------------------------------------------------------
CLIENTS: Final = ("c0", "c1", "c2", "c3", "c4", "c5")
EPOCH: Final = 0x1234ABCD
"""The epoch both cores draw for a numbered room."""
PLAIN_PIECES: Final = (b"hi", b"/exit", b" /EXIT\n", b"\xff", "ü".encode(), b" ", b"/",
                       b"x" * 300, b"", b"\xed\xa0\x80", "こんにちは".encode(), b"\x00")


class Fuzz:
    """One run: a ``Pair`` and the members it knows, driven by one seeded RNG."""

    def __init__(self, seed: int) -> None:
        from tests.unit.test_relay_hot import Pair

        self.rng = random.Random(seed)
        self.pair = Pair()
        for w in self.pair.workers:  # numbered rooms (ocm1r): one epoch on both sides
            w.core.new_epoch = lambda: EPOCH
            budget = w.core.history_budget  # small: every limit of History.keep is met
            budget.max_messages, budget.max_bytes, budget.worker_bytes = 24, 6000, 9000
        for name in CLIENTS:
            self.pair.client(name)
        self.pair.client("far", "127.0.0.2")
        self.serial = 0
        self.rooms: dict[bytes, bool] = {b"p": False, b"q": False, b"s": True}
        """Room name -> encrypted."""
        self.corpus: list[bytes] = []
        self.keys: dict[bytes, bytes] = {}
        """Members with a datagram key (joined over TLS): token -> key."""
        self.seqs: dict[bytes, int] = {}
        """The highest trailer ``Seq`` sent for each of them."""

    # a member: (room, token, username, the client at its address or None)
    def members(self) -> list[tuple[bytes, bytes, str, str | None]]:
        core = self.pair.workers[0].core
        at = {sock.getsockname(): name for name, sock in self.pair.clients.items()}
        return [(m.room.name_raw, t, m.username, at.get(m.addr) if m.addr else None)
                for t, m in core.tokens.items()]

    def add(self, room: bytes, host: bool) -> None:
        from wire.codes import Framing
        from wire.e2e import PublicKeys

        rng = self.rng
        self.serial += 1
        token = b"F%05d" % self.serial + bytes([rng.randrange(97, 123)]) * 16
        e2e = self.rooms[room]
        framing = Framing.OCM1 if e2e or rng.random() < 0.5 else Framing.PLAIN
        if room != b"p" and rng.random() < 0.4:  # "q" and "s" (encrypted) become numbered
            framing = Framing.OCM1R
        user = rng.choice(("ann", "bo", "cy", "di", "ed", "fay")) + str(self.serial % 7)
        addr = None
        where = rng.random()
        if where < 0.06:
            addr = ("127.0.0.1", 0)  # every send fails: EINVAL
        elif where < 0.2:
            addr = self.pair.client(rng.choice(CLIENTS)).getsockname()
        proven = addr is not None and rng.random() < 0.7
        keys = PublicKeys(bytes(32), bytes(32)) if e2e else None
        mac_key = bytes([self.serial % 256]) * 32 if rng.random() < 0.4 else None
        results = []
        for w in self.pair.workers:
            results.append(w.core.add_member(room.decode(), token, user, "127.0.0.1", framing,
                                             host, self.pair.now, addr, proven, proven,
                                             e2e=e2e, keys=keys, mac_key=mac_key))
            w._flush()
        assert results[0] == results[1]
        if results[0] and mac_key is not None:
            self.keys[token] = mac_key
            self.seqs[token] = 0
        self.pair.check()
        if results[0] and addr is None and rng.random() < 0.1:
            self.pair.register(token, rng.choice(CLIENTS))  # on trial until it speaks

    def message(self, room: bytes, token: bytes) -> bytes:
        from wire.e2e import Kind, encode_message
        from wire.reliable import Up, encode_nack, encode_send

        rng = self.rng
        member = self.pair.workers[0].core.tokens.get(token)
        rel = member.rel if member is not None else None

        def next_id() -> int:  # mostly the next id: what C takes
            assert rel is not None
            return int(rel.top) + rng.choice((1, 1, 1, 1, 1, 0, 2))

        def nack(kind: Up) -> bytes:
            first = rng.randint(1, 40)
            return encode_nack(rng.choice((EPOCH, EPOCH ^ 1)), [(first, rng.randint(1, 5))],
                               kind)

        if not self.rooms[room]:
            text = b"".join(rng.choice(PLAIN_PIECES) for _ in range(rng.randint(0, 4)))
            pick = rng.random()
            if rel is not None and pick < 0.4:  # half of them 06: the ACK is held
                return encode_send(next_id(), text, rng.random() < 0.5)
            if pick < 0.15:  # an ocm1r SEND (plain text to a member that is not ocm1r)
                return encode_send(rng.randint(1, 8), text)
            if pick < 0.2:
                return nack(Up.NACK)
            return text
        names = [u for r, _, u, _ in self.members() if r == room] + ["nobody"]
        pick = rng.random()
        if rel is not None and pick < 0.35:  # mostly a chat Message
            inner = encode_message(Kind.CHAT, rng.randbytes(rng.randint(1, 200))) \
                if rng.random() < 0.85 else encode_message(Kind.ENVELOPE, b"e", "nobody")
            return encode_send(next_id(), inner, rng.random() < 0.5)
        if rel is not None and pick < 0.45:
            return nack(Up.E2E_NACK)
        kind = rng.random()
        if kind < 0.5:
            return encode_message(Kind.CHAT, rng.randbytes(rng.randint(1, 200)))
        if kind < 0.75:
            return encode_message(Kind.ENVELOPE, rng.randbytes(rng.randint(0, 150)),
                                  rng.choice(names))
        if kind < 0.85:
            return encode_message(Kind.KEY_REQUEST, rng.randbytes(9), rng.choice(names))
        if kind < 0.9:
            return encode_message(Kind.LEAVE)
        return rng.choice((b"", b"\x09bad", b"\x02", b"\x02\x00", b"\x02\x09ab", b"\x01",
                           b"\x04x", rng.randbytes(rng.randint(1, 20))))

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.3 and buf:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            elif op < 0.5 and buf:
                del buf[rng.randrange(len(buf)):]
            elif op < 0.7 and self.corpus:
                other = rng.choice(self.corpus)
                cut = rng.randrange(len(other) + 1)
                buf[rng.randrange(len(buf) + 1):] = other[cut:]
            elif op < 0.85:
                buf[rng.randrange(len(buf) + 1):0] = rng.randbytes(rng.randint(1, 8))
            elif buf:
                buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x2F))
        return bytes(buf[:5000])

    def datagram(self) -> tuple[str, bytes]:
        rng = self.rng
        members = self.members()
        client = rng.choice(CLIENTS) if rng.random() < 0.93 else "far"
        if not members or rng.random() < 0.04:
            data = rng.randbytes(rng.randint(0, 40))
        else:
            room, token, _, bound = rng.choice(members)
            if bound is not None and rng.random() < 0.85:
                client = bound  # from its own address: what the compiled loop relays
            if rng.random() < 0.05:
                room = rng.choice(list(self.rooms))
            if rng.random() < 0.03:
                token = token[:-1] + b"?"
            message = self.message(room, token) if rng.random() > 0.1 else b""
            data = bytes((len(room), len(token))) + room + token + message
            if token in self.keys and rng.random() < 0.9:
                data = self.seal(token, data)
        if rng.random() < 0.12:
            data = self.mutate(data)
        if len(self.corpus) < 512:
            self.corpus.append(data)
        elif rng.random() < 0.05:
            self.corpus[rng.randrange(512)] = data
        return client, data

    def seal(self, token: bytes, data: bytes) -> bytes:
        """``data`` with the member's MAC trailer: mostly the next ``Seq``, sometimes a jump,
        a late one, a replay or a wrong key (wire/dgmac.py)."""
        from wire import dgmac

        rng = self.rng
        seq = max(0, self.seqs[token] + rng.choice((1, 1, 1, 1, 2, 70, 0, -1, -3, -80)))
        self.seqs[token] = max(self.seqs[token], seq)
        key = self.keys[token] if rng.random() > 0.05 else bytes(32)
        return dgmac.seal(key, data, seq)

    def step(self) -> None:
        rng = self.rng
        pair = self.pair
        live = {m.room.name_raw for m in pair.workers[0].core.tokens.values()}
        for room in self.rooms:
            if room.decode() not in pair.workers[0].core.rooms:
                self.add(room, host=True)
        roll = rng.random()
        if roll < 0.08 or len(self.members()) < 6:
            self.add(rng.choice(list(self.rooms)), host=False)
        elif roll < 0.5:
            pair.send(*self.datagram())
        elif roll < 0.9:
            pair.send_many([self.datagram() for _ in range(rng.randint(2, BATCH_MAX))])
        elif roll < 0.93:
            for w in pair.workers:
                w.core.handle_timer(pair.now)
                w.core.release_held(pair.now)  # the worker's tick: held ACKs go alone
                w._flush()
            pair.check()
        elif roll < 0.94 and live:
            name = rng.choice(sorted(live)).decode()
            for w in pair.workers:
                w.core.close_room(name, "fuzz")
                w._flush()
            pair.check()
        pair.now += rng.choice((0.0, 0.0, 0.001, 0.05, 0.3, 2.0, 40.0))

    def close(self) -> None:
        self.pair.close()


def run(steps: int, seed: int) -> int:
    from relay import _hot

    print(f"fuzz_hot: {steps} steps, seed {seed}, extension {_hot.__file__}", flush=True)
    fuzz = Fuzz(seed)
    started = time.monotonic()
    try:
        for i in range(steps):
            if i and not i % PROGRESS_EVERY:
                print(f"fuzz_hot: {i} steps agreed ({i / (time.monotonic() - started):.0f}/s)",
                      flush=True)
            try:
                fuzz.step()
            except AssertionError as exc:
                print(f"fuzz_hot: the loops differ at step {i} (seed {seed}): {exc}",
                      flush=True)
                return 1
    finally:
        fuzz.close()
    compiled = fuzz.pair.workers[1].hot
    counters = compiled.counters() if compiled is not None else {}
    core = fuzz.pair.workers[0].core
    print(f"fuzz_hot: {steps} steps agreed in {time.monotonic() - started:.1f} s; "
          f"compiled loop: {counters}; datagrams {core.received}, relayed {core.relayed}, "
          f"evictions {sum(core.evictions.values())}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="steps to run (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="the RNG seed (default 1)")
    parser.add_argument("--sanitize", action="store_true",
                        help="build relay/_hot.c with ASan and UBSan and run in a child")
    parser.add_argument("--hot-dir", type=Path, default=None,
                        help="load relay._hot from this directory (used by --sanitize)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.sanitize:
        cc = compiler()
        if cc is None:
            print("fuzz_hot: no C compiler ($CC, gcc or cc): cannot build the sanitized "
                  "extension", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="ocm-fuzz-hot-") as tmp:
            package = build_sanitized(Path(tmp))
            child = [sys.executable, "-m", "tests.fuzz.fuzz_hot", "--steps", str(args.steps),
                     "--seed", str(args.seed), "--hot-dir", str(package)]
            return subprocess.run(child, cwd=ROOT, env=sanitizer_env(cc)).returncode
    if args.hot_dir is not None:
        import relay

        relay.__path__.insert(0, str(args.hot_dir))  # before anything imports relay._hot
    return run(args.steps, args.seed)


if __name__ == "__main__":
    sys.exit(main())
