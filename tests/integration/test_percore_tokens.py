"""``ocm-loadgen --tokens-out`` against a real ocm-control, then the C load generator
(tests/bench/perf/cload.c, built here with cc) drives those members: the file has the
format cload reads, and every delivery arrives. No C compiler is a failure, not a skip:
the per-core benchmark (tests/bench/percore.py) cannot run without one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadgen.tokens import decode_file
from tests.bench import climit
from tests.bench.percore import verdict
from tests.integration.harness import Server, start_server
from tests.integration.lossy import Loss

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


def join(server: Server, tokens: Path, framing: str) -> None:
    """``ocm-loadgen --tokens-out``: ROOMS x USERS members, every one joined."""
    joined = subprocess.run(
        [sys.executable, "-m", "loadgen", "--tcp-port", str(server.tcp_port), "--rooms",
         str(ROOMS), "--users", str(USERS), "--framing", framing, "--procs", "1", "--quiet",
         "--tokens-out", str(tokens)], capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert f"joined {ROOMS * USERS} of {ROOMS * USERS} members" in joined.stdout


def test_tokens_out_feeds_cload_without_loss(tools: dict[str, Path], one_worker: Server,
                                             tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    join(one_worker, tokens, "ocm1")

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


def test_reliable_members_take_cloads_sends_and_carry_their_acks(
        tools: dict[str, Path], one_worker: Server, tmp_path: Path) -> None:
    """``ocm-r``: members that joined with ``--framing ocm1r`` and cload ``--reliable``:
    every SEND is taken and relayed as a numbered DATA, and acknowledged once: held and
    carried for ``06`` SENDs (or alone after the hold), alone for ``01`` SENDs."""
    for kind in ("6", "1"):  # members of their own each time: ids start from 1
        tokens = tmp_path / f"tokens-r{kind}.txt"
        join(one_worker, tokens, "ocm1r")
        report = climit.run_cload(
            [str(tools["cload"]), "--target", f"127.0.0.1:{one_worker.udp_port}", "--tokens",
             str(tokens), "--rate", "5", "--seconds", "1", "--warmup", "0.5", "--drain",
             "0.5", "--base-port", "0", "--reliable", kind], timeout_s=60)
        assert report["reliable"] == int(kind), report
        assert report["sent"] > 0
        assert report["delivered"] == report["expected"] == report["sent"] * (USERS - 1), report
        assert report["loss_pct"] == 0 and report["dups"] == 0 and report["stray"] == 0
        sends = report["sent"] + report["sent_warm"]
        assert report["acks"] + report["carried"] == sends, report
        assert report["refused"] == report["lost"] == 0
        if kind == "1":
            assert report["carried"] == 0
        else:  # 15 messages a second in a room of 3: most ACKs ride on a DATA
            assert report["carried"] > report["acks"], report


def test_cload_resends_the_sends_the_relay_missed(tools: dict[str, Path], one_worker: Server,
                                                  tmp_path: Path) -> None:
    """5 % of the datagrams to the relay dropped (nftables): the relay takes an id only
    after the one before it, so without resends a member would be silent from its first
    lost SEND on. cload goes back on the ACK that does not advance, and after a second
    without an ACK that advances (a lost first SEND, which the relay answers with
    nothing), as ocm-chat does; the room gets everything, or nearly (deliveries are not
    dropped here)."""
    tokens = tmp_path / "tokens-loss.txt"
    join(one_worker, tokens, "ocm1r")
    with Loss(one_worker.udp_port, 5, sides=("dport",)) as loss:
        report = climit.run_cload(
            [str(tools["cload"]), "--target", f"127.0.0.1:{one_worker.udp_port}", "--tokens",
             str(tokens), "--rate", "10", "--seconds", "4", "--warmup", "0.5", "--drain",
             "2", "--base-port", "0", "--reliable", "1"], timeout_s=60)
        dropped = loss.dropped()
    assert dropped > 0
    assert report["loss_pct"] < 2.0, report
    assert report["go_backs"] > 0 and report["resent"] > 0, report
    assert report["dups"] == 0 and report["stray"] == 0, report


def test_cload_loss_recovers_every_message_in_order_as_the_client_does(
        tools: dict[str, Path], one_worker: Server, tmp_path: Path) -> None:
    """``cload --loss``: 10 % of what each member sends and receives dropped inside cload,
    every member recovering as ``client/reliable.py`` does (NACKs, go-back, keepalives
    whose SYNC reveals a lost last message): every message is shown once, in order, and
    nothing is left open at the end. Without the recovery about 10 % of the deliveries
    and of the sends would be missing."""
    for sockets in ([], ["--shared"]):  # a socket per member, or per user slot
        tokens = tmp_path / f"tokens-recover{len(sockets)}.txt"
        join(one_worker, tokens, "ocm1r")
        report = climit.run_cload(
            [str(tools["cload"]), "--target", f"127.0.0.1:{one_worker.udp_port}", "--tokens",
             str(tokens), "--rate", "10", "--seconds", "3", "--warmup", "0.5", "--drain",
             "4", "--base-port", "0", "--reliable", "1", "--loss", "10", *sockets],
            timeout_s=60)
        recovered_all(report)


def recovered_all(report: dict[str, Any]) -> None:
    assert report["loss_ppm"] == 100_000
    assert report["tx_dropped"] > 0 and report["rx_dropped"] > 0, report
    assert report["nacks"] > 0 and report["recovered"] > 0 and report["go_backs"] > 0, report
    assert report["sent"] > 0
    assert report["delivered"] == report["expected"] == report["sent"] * (USERS - 1), report
    assert report["dups"] == report["out_of_order"] == report["stray"] == 0, report
    assert report["unrecovered"] == report["holes_open_at_end"] == 0, report
    assert report["pending_at_end"] == report["unsynced_at_end"] == 0, report


def test_cload_loss_needs_reliable_members(tools: dict[str, Path]) -> None:
    for args, error in ((["--loss", "5"], "--loss needs --reliable"),
                        (["--shared"], "--shared needs --loss"),
                        (["--outage-seconds", "3"], "--outage-seconds needs --loss")):
        done = subprocess.run([str(tools["cload"]), *args], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 2 and error in done.stderr, done.stderr


def test_ocm1r_framing_is_for_token_files_only() -> None:
    """A metered run cannot read numbered deliveries: --framing ocm1r is refused there."""
    done = subprocess.run(
        [sys.executable, "-m", "loadgen", "--tcp-port", "9", "--framing", "ocm1r"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--framing ocm1r needs --join-only or --tokens-out" in done.stderr
