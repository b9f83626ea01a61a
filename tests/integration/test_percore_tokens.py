"""``ocm-loadgen --tokens-out`` against a real ocm-control, then the C load generator
(tests/bench/perf/cload.c, built here with cc) drives those members: the file has the
format cload reads, and every delivery arrives. No C compiler is a failure, not a skip:
the per-core benchmark (tests/bench/percore.py) cannot run without one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadgen.tokens import decode_file
from tests.bench import climit
from tests.bench.percore import verdict
from tests.integration.harness import Server, start_server

ROOMS, USERS = 2, 3


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    try:
        return climit.build(tmp_path_factory.mktemp("perf"))
    except climit.BuildError as exc:
        pytest.fail(f"cannot build the C tools for the per-core benchmark: {exc}")


@pytest.fixture(scope="module")
def one_worker() -> Iterator[Server]:
    with start_server(workers=1) as srv:
        yield srv
        srv.stop()


def test_tokens_out_feeds_cload_without_loss(tools: dict[str, Path], one_worker: Server,
                                             tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    joined = subprocess.run(
        [sys.executable, "-m", "loadgen", "--tcp-port", str(one_worker.tcp_port), "--rooms",
         str(ROOMS), "--users", str(USERS), "--framing", "ocm1", "--procs", "1", "--quiet",
         "--tokens-out", str(tokens)], capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert f"joined {ROOMS * USERS} of {ROOMS * USERS} members" in joined.stdout

    members = decode_file(tokens.read_text())
    assert [(m.room, m.slot) for m in members] == [(r, s) for r in range(ROOMS)
                                                  for s in range(USERS)]
    for m in members:
        assert m.room_name == members[m.room * USERS].room_name
        assert 22 <= len(m.token) <= 255 and all(0x21 <= b <= 0x7E for b in m.token)
        assert (m.udp_host, m.udp_port) == ("127.0.0.1", one_worker.udp_port)
    assert len({m.room_name for m in members}) == ROOMS
    assert len({m.token for m in members}) == ROOMS * USERS

    report = climit.run_cload(
        [str(tools["cload"]), "--target", f"127.0.0.1:{one_worker.udp_port}", "--tokens",
         str(tokens), "--rate", "5", "--seconds", "1", "--warmup", "0.5", "--drain", "0.5",
         "--base-port", "0"], timeout_s=60)
    assert (report["rooms"], report["users"]) == (ROOMS, USERS)
    assert report["sent"] > 0
    assert report["delivered"] == report["expected"] == report["sent"] * (USERS - 1)
    assert report["loss_pct"] == 0 and report["dups"] == 0 and report["stray"] == 0
    assert verdict(report, 5.0, ROOMS * USERS).held
