"""The load tools with datagram MACs (docs/protocol.md §8): ``ocm-loadgen --tls-ca``
joins over TLS and seals its own datagrams, and writes each member's key with
``--tokens-out``; cload (tests/bench/perf/cload.c) then seals every datagram of those
members. Without the seals the relay would drop everything (``bad_mac``): no loss here
shows both seal right. This is what the per-core benchmark's ``ocm-mac`` relay runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.tokens import decode_file
from tests.bench import climit
from tests.integration.test_dgmac import start_tls
from tests.integration.test_tls import tls_port

ROOMS, USERS = 2, 3


def loadgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadgen", "--rooms", str(ROOMS), "--users",
                           str(USERS), "--framing", "ocm1", "--procs", "1", *args],
                          capture_output=True, text=True, timeout=120)


def test_loadgen_over_tls_seals_its_datagrams(tmp_path: Path) -> None:
    ca, server = start_tls(tmp_path)
    with server as srv:
        out = tmp_path / "report.json"
        done = loadgen("--tcp-port", str(tls_port(srv)), "--tls-ca", str(ca), "--rate", "5",
                       "--duration", "1", "--warmup", "0.5", "--drain", "1", "--json",
                       str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"joins {ROOMS * USERS} ok, 0 failed" in done.stdout, done.stdout
        counts = json.loads(out.read_text())["result"]["counts"]
        assert counts["sent"] > 0
        assert counts["delivered"] == counts["expected"] == counts["sent"] * (USERS - 1)


def test_cload_seals_the_members_of_a_tokens_file_with_keys(tmp_path: Path) -> None:
    try:
        tools = climit.build(tmp_path / "perf")
    except climit.BuildError as exc:
        pytest.fail(f"cannot build the C tools: {exc}")
    ca, server = start_tls(tmp_path)
    with server as srv:
        tokens = tmp_path / "tokens.txt"
        done = loadgen("--tcp-port", str(tls_port(srv)), "--tls-ca", str(ca), "--quiet",
                       "--tokens-out", str(tokens))
        assert done.returncode == 0, done.stdout + done.stderr
        members = decode_file(tokens.read_text())
        assert len(members) == ROOMS * USERS
        assert all(m.datagram_key is not None and len(m.datagram_key) == 32 for m in members)
        report = climit.run_cload(
            [str(tools["cload"]), "--target", f"127.0.0.1:{srv.udp_port}", "--tokens",
             str(tokens), "--rate", "5", "--seconds", "1", "--warmup", "0.5", "--drain",
             "0.5", "--base-port", "0"], timeout_s=60)
        assert report["sent"] > 0
        assert report["delivered"] == report["expected"] == report["sent"] * (USERS - 1)
        assert report["loss_pct"] == 0 and report["stray"] == 0


def test_the_percore_harness_runs_an_ocm_mac_step(tmp_path: Path) -> None:
    """One ``ocm-mac`` step of tests/bench/percore.py as the benchmark runs it: its OCM
    serves TLS (the base command's ``--no-tls`` must not win), the members join over it
    with datagram keys, cload seals, and nothing is lost."""
    from tests.bench.percore import Bench, Settings, Step

    try:
        tools = climit.build(tmp_path / "perf")
    except climit.BuildError as exc:
        pytest.fail(f"cannot build the C tools: {exc}")
    cpus = sorted(os.sched_getaffinity(0))
    s = Settings(relays=("ocm-mac",), rates=(2.0,), cpu_rate=2.0, repeat=1, rooms=ROOMS,
                 users=USERS, size=100, seconds=1.0, warmup=0.5, drain=0.5, poll_us=0,
                 base_port=0, relay_cpu=cpus[-1], load_cpu=cpus[0], stop_after=0,
                 ocm_command=(), ocm_env={}, chat_rate=4.0)
    step = Step("ocm-mac", 0, 2.0)
    Bench(s, tools, tmp_path).run_ocm(step, {}, tls=True)
    assert step.error is None
    assert any("tls=127.0.0.1:" in line for line in step.server_log), step.server_log
    assert step.members == ROOMS * USERS
    tokens = decode_file((tmp_path / "tokens-ocm-mac-0-2.txt").read_text())
    assert all(m.datagram_key is not None for m in tokens)
    assert step.report is not None and step.report["sent"] > 0
    assert step.report["delivered"] == step.report["expected"], step.report
    assert step.report["loss_pct"] == 0


def test_the_memory_harness_joins_its_members_over_tls(tmp_path: Path) -> None:
    """``python -m tests.bench.memory --tls``: every member joins over TLS (so holds a
    datagram key) and its first datagram, sealed, is received and not dropped."""
    from tests.bench import memory

    assert memory.main(["--rooms", "2", "--tls", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "memory.json").read_text())
    assert result["tls"] is True and result["members"] == 2 * 10
    assert result["datagrams"]["received"] == 2 * 10
    assert not any(v for k, v in result["datagrams"].items() if k.startswith("dropped_"))
