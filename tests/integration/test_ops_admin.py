"""The admin HTTP server (/metrics, /healthz, /readyz), JSON logs and the graceful drain,
against a real ocm-control with real traffic; plus the HTTP server and the counter
bookkeeping on their own (in-process, real sockets on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control.admin import AdminServer, Exposition, WorkerCounters, flatten_stats
from relay.ipc import Counters, Stats
from tests.integration.harness import start_server
from tests.integration.peer import JoinRefused, join
from tests.integration.test_ops_support import (
    admin_address,
    http_get,
    scrape,
    value,
    wait_until,
)
from wire.codes import Operation, Status
from wire.stage1 import encode_stage1

H = "127.0.0.1"
CLOSED = "チャットルームが閉じられました"
JOINED = "{} がチャットルームに参加しました"


# --- the HTTP server alone ---------------------------------------------------------------------
async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(H, port)
    writer.write(request)
    writer.write_eof()  # a client that sends less than a whole head gets 400, not a wait
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


def test_http_server_answers_and_refuses() -> None:
    def boom() -> tuple[int, str, bytes]:
        raise RuntimeError("route failed")

    async def scenario() -> dict[str, bytes]:
        server = AdminServer({"/ok": lambda: (200, "text/plain", b"fine\n"), "/boom": boom})
        host, port = await server.start(H, 0)
        assert host == H
        try:
            return {
                "get": await _raw(port, b"GET /ok?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
                "head": await _raw(port, b"HEAD /ok HTTP/1.1\r\n\r\n"),
                "post": await _raw(port, b"POST /ok HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
                "missing": await _raw(port, b"GET /nope HTTP/1.0\r\n\r\n"),
                "garbage": await _raw(port, b"hello\r\n\r\n"),
                "partial": await _raw(port, b"GET /ok HTTP/1.1\r\n"),
                "huge": await _raw(port, b"GET /ok HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"),
                "boom": await _raw(port, b"GET /boom HTTP/1.1\r\n\r\n"),
            }
        finally:
            server.close()

    answers = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert answers["get"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in answers["get"]
    assert b"\r\nContent-Length: 5\r\n" in answers["get"] and answers["get"].endswith(b"fine\n")
    assert answers["head"].startswith(b"HTTP/1.1 200 OK") and answers["head"].endswith(b"\r\n\r\n")
    assert answers["post"].startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in answers["post"]
    assert answers["missing"].startswith(b"HTTP/1.1 404 ")
    assert answers["garbage"].startswith(b"HTTP/1.1 400 ")
    assert answers["huge"].startswith(b"HTTP/1.1 431 ")
    assert answers["boom"].startswith(b"HTTP/1.1 500 ")


def test_http_server_closes_a_silent_half_closed_client() -> None:
    async def scenario() -> bytes:
        server = AdminServer({})
        _, port = await server.start(H, 0)
        try:
            reader, writer = await asyncio.open_connection(H, port)
            writer.write_eof()  # nothing sent: the server gives up at once, no answer
            data = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return data
        finally:
            server.close()

    assert asyncio.run(scenario()) == b""


# --- counters and exposition -------------------------------------------------------------------
def _stats(pid: int, received: int, malformed: int = 0, stage1: int = 0) -> Stats:
    return Stats(worker=0, pid=pid, sendmmsg=True, forwarded=0, rooms=1, members=2,
                 send_failures=0,
                 chat=Counters(received, received // 2, {"malformed": malformed},
                               {"inactive": 0}),
                 stage1_clients=1, stage1=Counters(stage1, 0, {}, {}))


def test_worker_counters_survive_restarts() -> None:
    counters = WorkerCounters()
    key = ("datagrams_received", (("port", "chat"),))
    counters.absorb(0, None)
    assert counters.totals == {}
    counters.absorb(0, _stats(pid=10, received=5))
    counters.absorb(0, _stats(pid=10, received=8, malformed=1))
    counters.absorb(1, _stats(pid=11, received=100))
    assert counters.totals[key] == 108
    counters.absorb(0, _stats(pid=12, received=3))  # worker 0 replaced: starts from zero
    assert counters.totals[key] == 111
    counters.absorb(0, _stats(pid=12, received=3))  # the same snapshot again
    assert counters.totals[key] == 111
    counters.absorb(0, _stats(pid=12, received=1))  # went back without a new pid
    assert counters.totals[key] == 112
    assert counters.totals[("datagrams_dropped", (("port", "chat"), ("reason", "malformed")))
                           ] == 1


def test_flatten_takes_every_reason_as_it_comes() -> None:
    stats = dataclasses.replace(_stats(pid=1, received=4, stage1=2),
                                send_failures=3, forwarded=5,
                                chat=Counters(4, 2, {"new_reason": 1}, {"exit": 2}))
    chat, stage1 = (("port", "chat"),), (("port", "stage1"),)
    assert flatten_stats(stats) == {
        ("datagrams_received", chat): 4, ("datagrams_relayed", chat): 2,
        ("datagrams_dropped", (*chat, ("reason", "new_reason"))): 1,
        ("evictions", (*chat, ("reason", "exit"))): 2,
        ("datagrams_received", stage1): 2, ("datagrams_relayed", stage1): 0,
        ("send_failures", ()): 3, ("datagrams_forwarded", ()): 5,
    }


def test_exposition_parses_with_prometheus_client() -> None:
    out = Exposition()
    out.family("ocm_x_total", "counter", "a counter", [((("reason", 'a"b\\c\nd'),), 3)])
    out.family("ocm_y", "gauge", "a gauge", [((), 0.25), ((("worker", "1"),), 7)])
    families = {f.name: f for f in text_string_to_metric_families(out.render().decode())}
    assert families["ocm_x"].type == "counter"
    (sample,) = families["ocm_x"].samples
    assert sample.name == "ocm_x_total" and sample.value == 3
    assert sample.labels == {"reason": 'a"b\\c\nd'}
    assert [s.value for s in families["ocm_y"].samples] == [0.25, 7]


# --- a real server -----------------------------------------------------------------------------
def _log_entries(lines: list[str]) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in lines if line.startswith("{")]


def test_metrics_health_readiness_json_logs_and_drain() -> None:
    srv = start_server("--admin-port", "0", "--log-format", "json", "--drain-timeout", "3",
                       "--log-summary-interval", "0.5", workers=2, stage1=True)
    stopped_pid = None
    try:
        addr = admin_address(srv)
        assert http_get(addr, "/healthz")[0] == 200
        assert http_get(addr, "/readyz")[:3:2] == (200, b"ready\n")

        # Control's log lines are JSON objects with the standard fields.
        entries = _log_entries(list(srv.lines))
        ready = next(e for e in entries if str(e["message"]).startswith("ready tcp="))
        assert {"time", "level", "logger", "process", "message"} <= set(ready)
        assert ready["level"] == "INFO" and ready["process"] == "control"
        assert re.fullmatch(r"ready tcp=127\.0\.0\.1:\d+ udp=\d+ stage1=\d+ workers=2 "
                            r"steering=\w+ sched=normal tls=127\.0\.0\.1:\d+",
                            str(ready["message"]))
        messages = [str(e["message"]) for e in entries]
        assert messages[messages.index(ready["message"]) + 1].startswith("admin http=")

        # Real traffic: joins with several outcomes, chat, bad datagrams, Stage 1.
        alice = join(H, srv.tcp_port, Operation.CREATE, "metrics", "alice")
        bob = join(H, srv.tcp_port, Operation.JOIN, "metrics", "bob")
        assert alice.recv_text() == JOINED.format("bob")
        for op, room, status in ((Operation.JOIN, "absent", Status.ROOM_NOT_FOUND),
                                 (Operation.CREATE, "metrics", Status.ROOM_EXISTS),
                                 (Operation.JOIN, "metrics", Status.USERNAME_TAKEN)):
            with pytest.raises(JoinRefused) as refused:
                join(H, srv.tcp_port, op, room, "bob")
            assert refused.value.status == status
        for i in range(20):
            bob.send(f"hello {i}")
        for i in range(20):
            assert alice.recv_text() == f"bob: hello {i}"
        for _ in range(50):
            bob.send_raw(b"\x05\x01x")  # lengths past the end: malformed
        stage1 = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        for i, sock in enumerate(stage1):
            sock.bind((H, 0))
            sock.sendto(encode_stage1(f"s{i}", ""), (H, srv.stage1_port))
        stage1[0].sendto(encode_stage1("s0", "hi"), (H, srv.stage1_port))
        stage1[1].settimeout(10)
        assert stage1[1].recv(4096) == encode_stage1("s0", "hi")

        # Worker counters reach control once a second: wait for them.
        def counted() -> dict | None:
            got = scrape(addr)
            try:
                ok = (value(got, "ocm_datagrams_dropped_total", port="chat",
                            reason="malformed") >= 50
                      and value(got, "ocm_datagrams_relayed_total", port="chat") >= 20
                      and value(got, "ocm_datagrams_received_total", port="chat") >= 70
                      and value(got, "ocm_datagrams_received_total", port="stage1") >= 3
                      and value(got, "ocm_stage1_clients") == 2)
            except KeyError:  # no worker has reported yet
                return None
            return got if ok else None

        got = wait_until(counted, 15, "worker counters in /metrics")
        assert value(got, "ocm_joins_total", status="OK") == 2
        assert value(got, "ocm_joins_total", status="ROOM_NOT_FOUND") == 1
        assert value(got, "ocm_joins_total", status="ROOM_EXISTS") == 1
        assert value(got, "ocm_joins_total", status="USERNAME_TAKEN") == 1
        assert value(got, "ocm_joins_total", status="INVALID_PASSWORD") == 0
        assert value(got, "ocm_rooms") == 1 and value(got, "ocm_members") == 2
        assert value(got, "ocm_datagrams_relayed_total", port="stage1") >= 1
        assert value(got, "ocm_datagrams_dropped_total", port="chat", reason="wrong_ip") == 0
        owner = str(alice.token[0] - 0x41)
        other = str(1 - int(owner))
        assert value(got, "ocm_worker_members", worker=owner) == 2
        assert value(got, "ocm_worker_members", worker=other) == 0
        assert value(got, "ocm_worker_rooms", worker=owner) == 1
        assert value(got, "ocm_worker_ready", worker=owner) == 1
        assert value(got, "ocm_worker_restarts_total", worker=owner) == 0
        # make test builds the compiled hot loop (OCM_REQUIRE_EXTENSIONS=1): auto runs it
        assert value(got, "ocm_worker_hot_path", worker=owner, path="compiled") == 1
        assert value(got, "ocm_ready") == 1 and value(got, "ocm_draining") == 0
        assert value(got, "ocm_evictions_total", port="chat", reason="inactive") == 0
        assert value(got, "process_resident_memory_bytes") > 0
        labels = {label for (_, labels) in got for label, _ in labels}
        assert labels <= {"status", "port", "reason", "worker", "result", "version",
                          "steering", "path"}, labels  # never a room, a user or an address
        received_before = value(got, "ocm_datagrams_received_total", port="chat")

        # A worker crash: counted as a restart, and the totals never go backwards.
        pid = int(re.findall(rf"worker {owner} started \(pid (\d+)", srv.log_text())[-1])
        os.kill(pid, signal.SIGKILL)
        srv.wait_log(rf"worker {owner} replaced", timeout=30)  # logged once it is ready
        assert http_get(addr, "/readyz")[:3:2] == (200, b"ready\n")
        bob.send("after the crash")
        assert alice.recv_text() == "bob: after the crash"

        def restarted() -> dict | None:
            now = scrape(addr)
            return now if value(now, "ocm_worker_restarts_total", worker=owner) == 1 else None

        after = wait_until(restarted, 15, "the restart in /metrics")
        assert value(after, "ocm_datagrams_received_total", port="chat") >= received_before

        # No line per datagram, nor per room at INFO: a periodic summary instead.
        srv.wait_log(r"in the last 0\.5 s: [1-9]\d* rooms created, \d+ closed")
        entries = _log_entries(list(srv.lines))
        assert not any("created on worker" in str(e["message"]) for e in entries)
        assert len(entries) < 40, "\n".join(srv.lines)

        # Drain: freeze the other worker so that the drain lasts until --drain-timeout.
        stopped_pid = int(re.findall(rf"worker {other} started \(pid (\d+)",
                                     srv.log_text())[-1])
        os.kill(stopped_pid, signal.SIGSTOP)
        started = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        srv.wait_log(r"stopping: draining 1 rooms \(up to 3s\)")  # logged once not ready
        assert http_get(addr, "/readyz")[:3:2] == (503, b"draining\n")
        assert http_get(addr, "/healthz")[0] == 200
        assert value(scrape(addr), "ocm_draining") == 1
        with pytest.raises(JoinRefused) as refused:
            join(H, srv.tcp_port, Operation.JOIN, "metrics", "carol")
        assert refused.value.status == Status.UNAVAILABLE
        assert alice.recv_text() == CLOSED
        assert bob.recv_text() == CLOSED
        srv.proc.wait(30)
        elapsed = time.monotonic() - started
        assert srv.proc.returncode == 0
        assert elapsed < 3 + 10, elapsed  # --drain-timeout plus a margin for a busy machine
        srv.wait_log(r"did not stop within 3\.0s")
        srv.wait_log(r"stopped \(exit code 0\)")
    finally:
        if stopped_pid is not None:
            try:
                os.kill(stopped_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        code = srv.stop()
    assert code == 0


def test_admin_disabled_with_minus_one() -> None:
    with start_server("--admin-port", "-1", workers=1) as srv:
        srv.wait_log(r"admin http=disabled$")
        assert "admin HTTP server not started" not in srv.log_text()


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind((H, 0))
    sock.listen()
    return sock


def test_an_explicit_busy_admin_port_is_a_runtime_failure() -> None:
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "control", "--host", H, "--tcp-port", "0", "--udp-port",
             "0", "--stage1-port", "0", "--workers", "1", "--admin-host", H,
             "--admin-port", str(port)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot listen on admin HTTP {H}:{port} (--admin-port)" in proc.stderr


def test_the_default_admin_port_is_best_effort() -> None:
    """If 9100 is taken (by us here, or by node_exporter in real life), the service runs
    without the admin server and says so. Played on another loopback address, so that a
    ``make run`` on this machine keeps its 127.0.0.1:9100."""
    admin_host = "127.0.91.1"
    holder = socket.socket()
    try:
        try:
            holder.bind((admin_host, 9100))
            holder.listen()
        except OSError as exc:  # already busy: the same situation
            assert exc.errno == errno.EADDRINUSE
        # The default port, as outside the test session (tests/conftest.py disables it).
        with start_server("--admin-host", admin_host, workers=1,
                          env={"OCM_ADMIN_PORT": None}) as srv:
            srv.wait_log(r"admin http=disabled$")
            assert f"admin HTTP server not started: {admin_host}:9100" in srv.log_text()
    finally:
        holder.close()


def test_tests_leave_the_default_admin_port_alone() -> None:
    """The test session runs every server without an admin port unless asked
    (tests/conftest.py), so ``make test`` never takes 9100 from a ``make run``."""
    with start_server(workers=1) as srv:
        srv.wait_log(r"admin http=disabled$")
        assert ":9100" not in srv.log_text()


def _run_control(*flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control", "--host", H, "--tcp-port", "0", "--udp-port", "0",
         "--stage1-port", "0", "--workers", "1", *flags],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_a_busy_port_names_the_way_to_pick_another(kind: str) -> None:
    """``make run`` on a busy port: the one error line says how to choose another port
    (the flag, its OCM_* variable, the Makefile's ARGS=), not only that it failed."""
    busy = _busy_port() if kind == "tcp" else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with busy:
        if kind == "udp":
            busy.bind((H, 0))
        port = busy.getsockname()[1]
        proc = _run_control(f"--{kind}-port", str(port))
    assert proc.returncode == 1, proc.stderr
    flag = f"--{kind}-port"
    assert str(port) in proc.stderr
    assert (f"Pick another port with {flag} N (or OCM_{kind.upper()}_PORT=N; with make: "
            f'make run ARGS="{flag} N")') in proc.stderr, proc.stderr
