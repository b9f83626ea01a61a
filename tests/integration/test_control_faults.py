"""Faults of the control process itself, on real processes: a worker respawn under
descriptor pressure (it is retried until it succeeds; a descriptor reserve usually lets it
through at once), a stalled control (SIGSTOP) that must not kill healthy workers, and a
reload failure that is always logged. docs/security.md lists these defences."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.harness import Server, start_server
from tests.integration.peer import Peer, join
from tests.integration.test_ops_support import admin_address, scrape, value, wait_until
from wire.codes import Operation

H = "127.0.0.1"
JOINED = "{} がチャットルームに参加しました"


def worker_pids(srv: Server) -> dict[int, int]:
    """Worker index -> pid of its newest 'started' line."""
    pids: dict[int, int] = {}
    for index, pid in re.findall(r"worker (\d+) started \(pid (\d+)", srv.log_text()):
        pids[int(index)] = int(pid)
    return pids


def pair(srv: Server, room: str) -> tuple[Peer, Peer]:
    alice = join(H, srv.tcp_port, Operation.CREATE, room, "alice")
    bob = join(H, srv.tcp_port, Operation.JOIN, room, "bob")
    assert alice.recv_text() == JOINED.format("bob")
    return alice, bob


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def descriptors_exhausted(srv: Server, spare: int = 24) -> Iterator[list[socket.socket]]:
    """Lower control's descriptor limit (prlimit) to what it uses plus ``spare``, then hold
    idle TCRP connections until control has no descriptor left; close them on exit."""
    pid = srv.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    limit = open_fds(pid) + spare
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    held: list[socket.socket] = []
    try:
        for _ in range(spare + 16):  # more than can be accepted: the rest wait or are reset
            sock = socket.socket()
            sock.settimeout(10)
            sock.connect((H, srv.tcp_port))
            held.append(sock)
        wait_until(lambda: open_fds(pid) >= limit - 1, 30,
                   f"control to hold {limit - 1} descriptors (has {open_fds(pid)})")
        yield held
    finally:
        for sock in held:
            sock.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def test_failed_respawn_is_retried_until_descriptors_return() -> None:
    # No reserve: the respawn fails with EMFILE while the connections are held, and must
    # be retried (it used to die once, "Task exception was never retrieved", for good).
    with start_server("--fd-reserve", "0", "--tcp-timeout", "120",
                      "--max-conns-per-ip", "100000", workers=2) as srv:
        alice, bob = pair(srv, "respawn")
        index = alice.token[0] - 0x41
        pid = worker_pids(srv)[index]
        with descriptors_exhausted(srv):
            os.kill(pid, signal.SIGKILL)
            srv.wait_log(rf"worker {index} \(pid {pid}\) died")
            srv.wait_log(rf"worker {index} could not be respawned \(attempt 2\): .*Too many "
                         r"open files; retrying in")
        srv.wait_log(rf"worker {index} replaced \(restart #1, after \d+ failed attempts\)",
                     timeout=30)
        assert worker_pids(srv)[index] != pid
        # Its room survived: same tokens relay, and the name is joinable again.
        alice.send("back")
        assert bob.recv_text() == "alice: back"
        carol = join(H, srv.tcp_port, Operation.JOIN, "respawn", "carol")
        assert alice.recv_text() == JOINED.format("carol")
        assert bob.recv_text() == JOINED.format("carol")
        carol.send("hi")
        assert bob.recv_text() == "carol: hi"
        srv.stop()
        assert "Task exception was never retrieved" not in srv.log_text()


def test_descriptor_reserve_lets_a_respawn_through_under_pressure() -> None:
    with start_server("--tcp-timeout", "120", "--max-conns-per-ip", "100000",
                      workers=2) as srv:
        alice, bob = pair(srv, "reserve")
        index = alice.token[0] - 0x41
        pid = worker_pids(srv)[index]
        with descriptors_exhausted(srv):
            os.kill(pid, signal.SIGKILL)
            # Replaced while every other descriptor is still taken.
            srv.wait_log(rf"worker {index} replaced \(restart #1\)", timeout=30)
            alice.send("still relaying")
            assert bob.recv_text() == "alice: still relaying"
        assert "could not be respawned" not in srv.log_text()


def test_stalled_control_keeps_its_healthy_workers() -> None:
    # Ping every 0.2 s, replace after 2 s of silence; control is stopped for 4 s.
    with start_server("--ping-interval", "0.2", "--ping-timeout", "2", "--admin-port", "0",
                      workers=2) as srv:
        addr = admin_address(srv)
        rooms = [pair(srv, f"stall-{i}") for i in range(4)]
        assert {a.token[:1] for a, _ in rooms} == {b"A", b"B"}  # both workers hold rooms
        before = worker_pids(srv)
        srv.send_signal(signal.SIGSTOP)
        try:
            time.sleep(4.0)  # the fault itself: control is stopped, there is nothing to await
        finally:
            srv.send_signal(signal.SIGCONT)
        srv.wait_log(r"control did not run for \d+\.\ds; judging worker liveness", timeout=30)
        # Several heartbeats later (each pings every worker), nobody was replaced.
        wait_until(lambda: value(scrape(addr), "ocm_worker_ready", worker="0")
                   + value(scrape(addr), "ocm_worker_ready", worker="1") == 2, 30,
                   "both workers ready")
        for i, (alice, bob) in enumerate(rooms):
            alice.send(f"after the stall {i}")
            assert bob.recv_text() == f"alice: after the stall {i}"
        log = srv.log_text()
        assert "missed pings" not in log and "died" not in log, log
        assert worker_pids(srv) == before
        for pid in before.values():
            os.kill(pid, 0)  # still the same processes
        samples = scrape(addr)
        assert value(samples, "ocm_worker_restarts_total", worker="0") == 0
        assert value(samples, "ocm_worker_restarts_total", worker="1") == 0
        assert value(samples, "ocm_control_stalls_total") >= 1


def test_every_failed_reload_is_logged(tmp_path: Path) -> None:
    conf = tmp_path / "ocm.toml"
    conf.write_text("max_members = 3\n")
    with start_server("--config", str(conf), "--admin-port", "0", workers=1) as srv:
        addr = admin_address(srv)
        conf.write_text("max_members = = 3\n")  # every reload from now on fails
        for n in range(1, 9):  # more than the 5 repeats a minute the log lets through
            srv.send_signal(signal.SIGHUP)
            wait_until(lambda n=n: value(scrape(addr), "ocm_config_reloads_total",
                                         result="failed") == n, 30, f"reload #{n} failed")
            # The line is written before the counter is read; the pipe may lag a little.
            wait_until(lambda n=n: srv.log_text().count(
                "reload failed, keeping the current settings") == n, 10, f"{n} failure lines")
        assert srv.log_text().count("reload failed, keeping the current settings") == 8
