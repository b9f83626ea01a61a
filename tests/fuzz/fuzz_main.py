"""``make fuzz``: a million inputs through every codec and sans-IO core, then a report.

    python -m tests.fuzz.fuzz_main [--runs 1000000] [--engine auto|atheris|stdlib]
                                   [--seed 1] [--artifacts DIR] [--json FILE]

Targets (tests/fuzz/fuzz_targets.py): the TCRP ``FrameReader`` in both roles,
``decode_chat``, ``decode_framed``, ``decode_stage1``, ``decode_request_payload``,
``control.session.Session`` and ``relay.core.RelayCore.handle_datagram`` (two rooms, five
members, strangers), plus Stage 1's ``GlobalChat``. A *crash* is any exception other than
a ``wire.errors.ProtocolError`` subclass, a failed invariant included.

Engines:

* ``atheris`` (coverage-guided libFuzzer, if ``import atheris`` works here): runs in a
  child process, all targets behind one entry point (the first byte picks the target),
  seeded with the corpus below; it stops at the first crash and writes the input to
  ``--artifacts``.
* ``stdlib``: a mutation fuzzer with no dependency: seeded corpus of valid frames per
  target, 1 to 8 mutations per input (bit flips, interesting bytes, +/-, inserts,
  deletions, duplications, truncation, splices with another corpus entry), round robin
  over the targets, and an input that ends in a new outcome joins the corpus. It records
  every crash (deduplicated by where it was raised), writes each input to
  ``--artifacts`` and goes on. Deterministic for a given ``--seed``.

Prints inputs run, wall time, inputs/s and crashes, per target for the stdlib engine;
exits 1 if anything crashed (or the engine failed), else 0. A 20,000-input run of the
stdlib engine is part of ``make test`` (tests/fuzz/test_fuzz_main.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

MAX_LEN: Final = 8192
CORPUS_CAP: Final = 4096
"""Inputs kept per target by the stdlib engine (seeds plus new outcomes)."""
MAX_CRASHES_SHOWN: Final = 10
INTERESTING: Final = (0, 1, 2, 0x1F, 0x20, 0x21, 0x2F, 0x7E, 0x7F, 0x80, 0x9F, 0xBF, 0xC0,
                      0xE3, 0xED, 0xF4, 0xFE, 0xFF)


@dataclass
class Crash:
    target: str
    kind: str
    where: str
    message: str
    data: bytes
    trace: str


@dataclass
class Report:
    engine: str
    inputs: int = 0
    wall_s: float = 0.0
    crashes: list[Crash] = field(default_factory=list)
    crash_count: int = 0
    per_target: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.crash_count == 0 and not self.error

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "inputs": self.inputs, "wall_s": round(self.wall_s, 3),
                "inputs_per_s": round(self.inputs / self.wall_s) if self.wall_s else None,
                "crashes": self.crash_count, "error": self.error,
                "unique_crashes": [{"target": c.target, "kind": c.kind, "where": c.where,
                                    "message": c.message, "input_hex": c.data.hex()}
                                   for c in self.crashes],
                "per_target": self.per_target}


# --- the stdlib mutation engine -------------------------------------------------------------------
def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> bytes:
    """1 to 8 random edits of ``data`` (or, rarely, fresh random bytes)."""
    if rng.random() < 0.03:
        return rng.randbytes(rng.randrange(64))
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        op = rng.randrange(11)
        if not buf:
            op = 4
        size = len(buf)
        i = rng.randrange(size) if size else 0
        if op == 0:  # flip a bit
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # an interesting byte (lengths, UTF-8 lead bytes, printable edges)
            buf[i] = rng.choice(INTERESTING)
        elif op == 2:  # any byte
            buf[i] = rng.randrange(256)
        elif op == 3:  # off by a little: length fields
            buf[i] = (buf[i] + rng.randint(-3, 3)) % 256
        elif op == 4:  # insert random bytes
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 5:  # delete a range
            del buf[i : i + rng.randint(1, 16)]
        elif op == 6:  # duplicate a range elsewhere
            j = rng.randrange(size)
            buf[j:j] = buf[i : i + rng.randint(1, 32)]
        elif op == 7:  # truncate
            del buf[i:]
        elif op == 8:  # splice with another corpus entry
            other = rng.choice(corpus)
            buf[i:] = other[rng.randrange(len(other) + 1):]
        elif op == 9:  # grow: repeat a chunk (toward the 4096-byte limits)
            chunk = bytes(buf[i : i + rng.randint(1, 4)]) or b"m"
            buf[i:i] = chunk * rng.choice((16, 256, 1024, 4096 // len(chunk)))
        else:  # a big-endian length written over a position
            value = rng.choice((0, 1, 2, 32, 255, 256, 4094, 4095, 4096, 4097, 65535))
            buf[i : i + 2] = value.to_bytes(2, "big")
    return bytes(buf[:MAX_LEN])


def run_stdlib(runs: int, seed: int = 1, artifacts: Path | None = None,
               targets: Mapping[str, Callable[[bytes], str]] | None = None,
               progress: Callable[[str], None] | None = None) -> Report:
    """Run ``runs`` inputs round robin over ``targets`` (default: every target)."""
    from tests.fuzz import fuzz_targets
    from wire.errors import ProtocolError

    targets = dict(targets or fuzz_targets.TARGETS)
    rng = random.Random(seed)
    names = list(targets)
    corpora = {name: list(fuzz_targets.seeds(name)) if name in fuzz_targets.TARGETS
               else [b""] for name in names}
    outcomes: dict[str, set[str]] = {name: set() for name in names}
    counts = dict.fromkeys(names, 0)
    crashes = dict.fromkeys(names, 0)
    report = Report("stdlib")
    seen: set[tuple[str, str, str]] = set()
    start = time.monotonic()
    for n in range(runs):
        name = names[n % len(names)]
        corpus = corpora[name]
        # The seeds themselves first, then mutations of corpus entries.
        k = counts[name]
        data = corpus[k] if k < len(corpus) and k < 64 else mutate(rng, rng.choice(corpus),
                                                                    corpus)
        counts[name] = k + 1
        try:
            outcome = targets[name](data)
        except ProtocolError as exc:  # allowed, though the targets catch their own
            outcome = "escaped-" + type(exc).__name__
        except Exception as exc:
            crashes[name] += 1
            report.crash_count += 1
            tb = traceback.extract_tb(exc.__traceback__)
            where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
            key = (name, type(exc).__name__, where)
            if key not in seen:
                seen.add(key)
                crash = Crash(name, type(exc).__name__, where, str(exc)[:300], data,
                              "".join(traceback.format_exception(exc))[-3000:])
                report.crashes.append(crash)
                if artifacts is not None:
                    artifacts.mkdir(parents=True, exist_ok=True)
                    digest = hashlib.sha1(data).hexdigest()[:16]
                    (artifacts / f"crash-{name}-{digest}.bin").write_bytes(data)
                if progress is not None:
                    progress(f"CRASH in {name}: {crash.kind} at {where}: {crash.message}")
            continue
        if outcome not in outcomes[name]:
            outcomes[name].add(outcome)
            if len(corpus) < CORPUS_CAP:
                corpus.append(data)
        if progress is not None and (n + 1) % 100_000 == 0:
            elapsed = time.monotonic() - start
            progress(f"{n + 1:,} inputs, {elapsed:.0f} s, {(n + 1) / elapsed:,.0f}/s, "
                     f"{report.crash_count} crashes")
    report.inputs = runs
    report.wall_s = time.monotonic() - start
    report.per_target = {name: {"inputs": counts[name], "outcomes": len(outcomes[name]),
                                "corpus": len(corpora[name]), "crashes": crashes[name]}
                         for name in names}
    return report


# --- atheris --------------------------------------------------------------------------------------
def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _atheris_child(runs: int, counts_path: str, argv: list[str]) -> None:
    """Inside the child: instrument the code under test and hand over to libFuzzer."""
    import atheris

    from tests.fuzz import fuzz_targets
    from wire.errors import ProtocolError

    atheris.instrument_all()
    targets = list(fuzz_targets.TARGETS.values())
    names = list(fuzz_targets.TARGETS)
    counts = [0] * len(targets)
    done = [0]

    def flush() -> None:
        with open(counts_path, "w") as fh:
            json.dump(dict(zip(names, counts, strict=True)), fh)

    def test_one_input(data: bytes) -> None:
        i = data[0] % len(targets) if data else 0
        counts[i] += 1
        done[0] += 1
        if done[0] % 10_000 == 0 or done[0] >= runs:
            flush()
        try:
            targets[i](data[1:])
        except ProtocolError:
            pass

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def run_atheris(runs: int, seed: int, artifacts: Path,
                progress: Callable[[str], None] | None = None) -> Report:
    from tests.fuzz import fuzz_targets

    report = Report("atheris")
    artifacts.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ocm-fuzz-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, name in enumerate(fuzz_targets.TARGETS):
            for j, data in enumerate(fuzz_targets.seeds(name)):
                (corpus / f"{name}-{j}").write_bytes(bytes((i,)) + data)
        counts_path = str(Path(tmp) / "counts.json")
        argv = [sys.argv[0], f"-runs={runs}", f"-seed={seed}", f"-max_len={MAX_LEN}",
                f"-artifact_prefix={artifacts}/", "-rss_limit_mb=4096",
                "-print_final_stats=1", str(corpus)]
        cmd = [sys.executable, "-m", "tests.fuzz.fuzz_main", "--engine", "_atheris_child",
               "--runs", str(runs), "--counts", counts_path, "--", *argv]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-80:]
            if progress is not None and re.match(r"#\d+\s+(pulse|REDUCE|NEW)", line) and (
                    "pulse" in line):
                progress(line.strip())
        code = proc.wait()
        report.wall_s = time.monotonic() - start
        text = "\n".join(tail)
        done = re.search(r"Done (\d+) runs in (\d+) second", text)
        report.inputs = int(done[1]) if done else 0
        try:
            with open(counts_path) as fh:
                report.per_target = {k: {"inputs": v} for k, v in json.load(fh).items()}
        except (OSError, ValueError):
            pass
        if code != 0:
            uncaught = "Uncaught Python exception" in text or "ERROR: libFuzzer" in text
            if uncaught:
                report.crash_count = 1
                written = re.search(r"Test unit written to (\S+)", text)
                data = Path(written[1]).read_bytes() if written else b""
                kind = re.findall(r"^(\w+(?:Error|Exception)\w*): ", text, re.M)
                report.crashes.append(Crash(
                    "?" if not data else list(fuzz_targets.TARGETS)[
                        data[0] % len(fuzz_targets.TARGETS)],
                    kind[-1] if kind else "?", written[1] if written else "?", "", data, text))
                report.inputs = report.inputs or sum(
                    v["inputs"] for v in report.per_target.values())
            else:
                report.error = f"atheris exited with {code}:\n{text}"
    return report


# --- the report -----------------------------------------------------------------------------------
def format_report(report: Report) -> str:
    rate = report.inputs / report.wall_s if report.wall_s else 0.0
    lines = [f"fuzz: engine={report.engine} inputs={report.inputs:,} "
             f"wall={report.wall_s:.1f} s ({rate:,.0f} inputs/s) crashes={report.crash_count}"]
    if report.per_target:
        lines.append(f"  {'target':<16} {'inputs':>10} {'outcomes':>9} {'corpus':>7} "
                     f"{'crashes':>8}")
        for name, t in report.per_target.items():
            lines.append(f"  {name:<16} {t['inputs']:>10,} {t.get('outcomes', '-'):>9} "
                         f"{t.get('corpus', '-'):>7} {t.get('crashes', '-'):>8}")
    for crash in report.crashes[:MAX_CRASHES_SHOWN]:
        lines.append(f"\nCRASH in {crash.target}: {crash.kind} at {crash.where}")
        lines.append(f"  input ({len(crash.data)} bytes): {crash.data[:200].hex()}")
        lines.append("  " + crash.trace.strip().replace("\n", "\n  "))
    if report.error:
        lines.append(report.error)
    lines.append("verdict: " + ("OK (0 crashes)" if report.ok else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.fuzz_main",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs to run [1000000]")
    parser.add_argument("--engine", default="auto",
                        choices=("auto", "atheris", "stdlib", "_atheris_child"),
                        help="auto = atheris if it imports, else stdlib")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--artifacts", default=os.environ.get("OCM_FUZZ_ARTIFACTS",
                                                              ".fuzz-artifacts"),
                        help="directory for crashing inputs [.fuzz-artifacts]")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine == "_atheris_child":
        _atheris_child(args.runs, args.counts, args.rest)
        return 0

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    engine = args.engine
    if engine == "auto":
        engine = "atheris" if atheris_available() else "stdlib"
    artifacts = Path(args.artifacts)
    if engine == "atheris":
        report = run_atheris(args.runs, args.seed, artifacts, progress)
    else:
        report = run_stdlib(args.runs, args.seed, artifacts, progress=progress)
    print(format_report(report))
    if artifacts.is_dir() and not any(artifacts.iterdir()):
        artifacts.rmdir()  # nothing crashed: leave no empty directory behind
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
