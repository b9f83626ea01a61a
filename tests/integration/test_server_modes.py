"""Supervision, steering modes, isolation, Stage 1 and the curriculum's reference client flow."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from runtime import sched
from tests.integration.harness import Server, start_server
from tests.integration.peer import Peer, join
from wire.chat import encode_chat
from wire.codes import Operation
from wire.stage1 import encode_stage1

H = "127.0.0.1"
JOINED = "{} がチャットルームに参加しました"
CLOSED = "チャットルームが閉じられました"


def worker_pid(server: Server, index: int, after: int = 0) -> int:
    """The pid of worker ``index`` from its newest 'started' line (after ``after`` lines)."""
    match = server.wait_log(rf"worker {index} started \(pid (\d+)")
    pids = [int(m) for m in __import__("re").findall(
        rf"worker {index} started \(pid (\d+)", server.log_text())]
    assert pids, match
    return pids[-1]


def pair(server: Server, room: str) -> tuple[Peer, Peer]:
    alice = join(H, server.tcp_port, Operation.CREATE, room, "alice")
    bob = join(H, server.tcp_port, Operation.JOIN, room, "bob")
    assert alice.recv_text() == JOINED.format("bob")
    return alice, bob


def chat_until_delivered(sender: Peer, receiver: Peer, text: str, timeout: float) -> float:
    """Send numbered copies of ``text`` every 50 ms until one arrives; return the seconds
    it took. Then sync: a final unique message is read past any late earlier copies, so
    the receiver's socket holds nothing stale afterwards."""
    start = time.monotonic()
    attempt = 0
    took = None
    while took is None and time.monotonic() - start < timeout:
        attempt += 1
        sender.send(f"{text} #{attempt}")
        try:
            got = receiver.recv_text(timeout=0.05)
        except TimeoutError:
            continue
        assert got.startswith(f"{sender.user}: {text} #"), got
        took = time.monotonic() - start
    if took is None:
        raise AssertionError(f"{text!r} not delivered within {timeout}s")
    sender.send(f"{text} sync")
    while (got := receiver.recv_text()) != f"{sender.user}: {text} sync":
        assert got.startswith(f"{sender.user}: {text} #"), got
    return took


@pytest.mark.parametrize(("args", "sendmmsg"), [
    ((), "1"), (("--steering", "forward"), "1"), (("--port-per-shard",), "1"),
    ((), "0"),  # the sendto fallback of relay/worker.py, used where sendmmsg is missing
])
def test_forty_rooms_on_two_workers_are_isolated(args: tuple[str, ...], sendmmsg: str) -> None:
    with start_server(*args, workers=2, env={"OCM_RELAY_SENDMMSG": sendmmsg}) as srv:
        expected = {"()": "bpf", "('--steering', 'forward')": "forward",
                    "('--port-per-shard',)": "port-per-shard"}[str(args)]
        assert srv.steering == expected
        if args == ("--port-per-shard",):
            assert len(set(srv.udp_ports)) == 2
        rooms = [pair(srv, f"iso-{i}") for i in range(40)]
        assert {a.token[:1] for a, _ in rooms} == {b"A", b"B"}  # both workers used
        if args == ("--port-per-shard",):
            assert {a.udp_port for a, _ in rooms} == set(srv.udp_ports)
        for i, (alice, bob) in enumerate(rooms):
            alice.send(f"to room {i}")
            bob.send(f"back from {i}")
        for i, (alice, bob) in enumerate(rooms):
            assert bob.recv_text() == f"alice: to room {i}"
            assert alice.recv_text() == f"bob: back from {i}"
        for _, bob in rooms:
            bob.expect_nothing(timeout=0.05)
        srv.stop()
        batched = "True" if sendmmsg == "1" else "False"
        assert srv.log_text().count(f" sendmmsg={batched} ") == 2  # both workers' counters


def test_sigkill_worker_mid_chat_rooms_keep_relaying_with_same_tokens() -> None:
    with start_server(workers=2) as srv:
        rooms = [pair(srv, f"kill-{i}") for i in range(6)]
        victim_tag = rooms[0][0].token[:1]
        index = victim_tag[0] - 0x41
        pid = worker_pid(srv, index)
        os.kill(pid, signal.SIGKILL)
        srv.wait_log(rf"worker {index} \(pid {pid}\) died: killed by SIGKILL")
        for alice, bob in rooms:
            took = chat_until_delivered(alice, bob, "after the crash", timeout=10.0)
            assert took < 2.0, f"relay resumed after {took:.2f}s"
            bob.send("and back")
            assert alice.recv_text() == "bob: and back"
        srv.wait_log(rf"worker {index} replaced")
        # New members can still join the restarted worker's rooms (registry intact).
        carol = join(H, srv.tcp_port, Operation.JOIN, "kill-0", "carol")
        assert rooms[0][0].recv_text() == JOINED.format("carol")
        assert rooms[0][1].recv_text() == JOINED.format("carol")
        carol.send("hello")
        assert rooms[0][1].recv_text() == "carol: hello"


def test_sigstop_worker_is_detected_and_replaced() -> None:
    with start_server("--ping-interval", "0.2", "--ping-timeout", "1.5", workers=2) as srv:
        alice, bob = pair(srv, "frozen")
        index = alice.token[0] - 0x41
        pid = worker_pid(srv, index)
        os.kill(pid, signal.SIGSTOP)
        try:
            srv.wait_log(rf"worker {index} \(pid {pid}\) missed pings", timeout=30)
            srv.wait_log(rf"worker {index} replaced", timeout=30)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        chat_until_delivered(alice, bob, "thawed", timeout=10.0)


@pytest.mark.skipif(sched.probe(3) is not None, reason="SCHED_FIFO is not permitted here")
def test_realtime_priority_puts_workers_not_control_under_sched_fifo() -> None:
    with start_server("--realtime-priority", "3", workers=2) as srv:
        assert srv.wait_log(r"ready tcp=.* sched=(\S+)")[1] == "fifo:3"
        for index in range(2):
            pid = worker_pid(srv, index)
            assert os.sched_getscheduler(pid) == os.SCHED_FIFO
            assert os.sched_getparam(pid).sched_priority == 3
        assert os.sched_getscheduler(srv.proc.pid) == os.SCHED_OTHER  # the probe undid itself
        alice, bob = pair(srv, "rt")
        chat_until_delivered(alice, bob, "preempting", timeout=10.0)
        # A replacement worker is promoted as well.
        index = alice.token[0] - 0x41
        pid = worker_pid(srv, index)
        os.kill(pid, signal.SIGKILL)
        srv.wait_log(rf"worker {index} replaced")
        new_pid = worker_pid(srv, index)
        assert new_pid != pid
        assert os.sched_getscheduler(new_pid) == os.SCHED_FIFO
        chat_until_delivered(alice, bob, "after the restart", timeout=10.0)


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv to take CAP_SYS_NICE away")
def test_realtime_priority_without_permission_refuses_to_start() -> None:
    # Root without CAP_SYS_NICE (and RLIMIT_RTPRIO 0) may not use SCHED_FIFO.
    cmd = ["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--",
           sys.executable, "-m", "control", "--host", H, "--tcp-port", "0",
           "--udp-port", "0", "--stage1-port", "0", "--admin-port=-1", "--workers", "1",
           "--realtime-priority", "5"]
    env = dict(os.environ)
    env.pop("OCM_REALTIME_PRIORITY", None)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0)))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "SCHED_FIFO priority 5 for the relay workers is not permitted" in out, out
    assert "ready tcp=" not in out


def test_sigterm_sends_closed_to_everyone_and_exits_zero() -> None:
    srv = start_server(workers=2)
    rooms = [pair(srv, f"term-{i}") for i in range(4)]
    started = time.monotonic()
    assert srv.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    for alice, bob in rooms:
        assert alice.recv_text() == CLOSED
        assert bob.recv_text() == CLOSED


def test_sigint_also_drains() -> None:
    srv = start_server(workers=1)
    alice, bob = pair(srv, "int")
    assert srv.stop(signal.SIGINT) == 0
    assert bob.recv_text() == CLOSED


def test_malformed_storm_leaves_relay_serving() -> None:
    with start_server(workers=2) as srv:
        alice, bob = pair(srv, "storm")
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rng = __import__("random").Random(7)
        for i in range(20_000):
            size = rng.choice((0, 1, 2, 3, 40, 200, 4096, 4097, 5000))
            data = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (
                size // 64 + 1)
            if i % 3 == 0 and len(data) > 2:  # well-formed shape, forged token
                data = encode_chat(b"storm", b"A" + b"x" * 32, data[:100])
            try:
                junk.sendto(data[:size], (H, srv.udp_port))
            except OSError:
                pass
        junk.close()
        chat_until_delivered(alice, bob, "still alive", timeout=10.0)
        alice.expect_nothing(timeout=0.05)


def test_stage1_global_chat() -> None:
    with start_server(workers=2, stage1=True) as srv:
        assert srv.stage1_port
        socks = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((H, 0))
            s.settimeout(10)
            socks.append(s)
        a, b, c = socks
        for s, name in zip(socks, ("ann", "ben", "cat"), strict=True):
            s.sendto(encode_stage1(name, ""), (H, srv.stage1_port))  # keepalive: remembered
        b.sendto(b"\x00bad", (H, srv.stage1_port))  # malformed: dropped, nothing else
        message = encode_stage1("ann", "hello everyone")
        deadline = time.monotonic() + 10
        got_b = got_c = None
        while (got_b is None or got_c is None) and time.monotonic() < deadline:
            a.sendto(message, (H, srv.stage1_port))
            for s in (b, c):
                s.settimeout(0.2)
                try:
                    data, addr = s.recvfrom(4096)
                except TimeoutError:
                    continue
                assert addr == (H, srv.stage1_port)
                if s is b:
                    got_b = data
                else:
                    got_c = data
        assert got_b == message and got_c == message  # relayed unchanged
        a.settimeout(0.3)
        with pytest.raises(TimeoutError):
            a.recv(4096)  # never its own
        for s in socks:
            s.close()


def test_model_answer_client_flow() -> None:
    """A client written only to the original spec: plain username payload, reads one
    status byte, takes the State 2 payload as the token, sends its UDP port as 2 bytes,
    prints datagrams as text, exits on the room-closed text."""
    with start_server(workers=2) as srv:
        def model_client(op: int, room: str, user: str) -> tuple[socket.socket, bytes]:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((H, 0))
            tcp = socket.create_connection((H, srv.tcp_port), timeout=10)
            payload = user.encode()
            tcp.sendall(bytes([len(room.encode()), op, 0]) + len(payload).to_bytes(29, "big")
                        + room.encode() + payload)
            header = recv_exact(tcp, 32)
            body = recv_exact(tcp, header[0] + int.from_bytes(header[3:32], "big"))
            status = body[header[0]]  # one status byte after the echoed room name
            assert status == 0, body
            header2 = recv_exact(tcp, 32)
            body2 = recv_exact(tcp, header2[0] + int.from_bytes(header2[3:32], "big"))
            token = body2[header2[0]:]
            tcp.sendall(udp.getsockname()[1].to_bytes(2, "big"))
            assert tcp.recv(10) == b""  # the server closes after the registration
            tcp.close()
            udp.settimeout(10)
            return udp, token

        host_udp, host_token = model_client(1, "model", "taro")
        guest_udp, guest_token = model_client(2, "model", "hanako")
        assert host_udp.recv(4096).decode() == JOINED.format("hanako")
        guest_udp.sendto(bytes([5, len(guest_token)]) + b"model" + guest_token
                         + "こんにちは".encode(), (H, srv.udp_port))
        assert host_udp.recv(4096).decode() == "hanako: こんにちは"
        host_udp.sendto(bytes([5, len(host_token)]) + b"model" + host_token + b"exit?",
                        (H, srv.udp_port))
        assert guest_udp.recv(4096).decode() == "taro: exit?"
        host_udp.sendto(bytes([5, len(host_token)]) + b"model" + host_token + b"/exit",
                        (H, srv.udp_port))
        assert guest_udp.recv(4096).decode() == CLOSED


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data
