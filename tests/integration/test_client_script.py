"""ocm-chat in script mode against a real ocm-control: real processes, pipes, timeouts.

Each client is ``python -m client ...`` with its stdin, stdout and stderr piped. Nothing
sleeps to wait for an event: before a message is sent, the test waits for the line that
proves the recipient is bound (its ``joined`` notice, or the ready line on stderr).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Server, start_server
from wire.codes import Framing, Operation, State, Status
from wire.tcrp import NEED_DATA, Details, FrameReader, Role, encode_error, encode_frame, encode_ok

H = "127.0.0.1"
TIMEOUT_S = 15.0
ROOT = Path(__file__).resolve().parents[2]


class Client:
    """One ``ocm-chat`` process in script mode, its output read by two threads."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        full_env.pop(KEEPALIVE_ENV, None)
        full_env.update(env or {})
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client", *args], cwd=ROOT, env=full_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.out_seen: list[str] = []
        self.err_seen: list[str] = []
        for stream, box in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, box), daemon=True).start()

    @staticmethod
    def _pump(stream: object, box: queue.Queue[str | None]) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            box.put(raw.decode("utf-8", "replace").rstrip("\n"))
        box.put(None)

    def _expect(self, box: queue.Queue[str | None], seen: list[str], pattern: str,
                timeout: float) -> str:
        rx = re.compile(pattern)
        while True:
            try:
                line = box.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"{self.args}: no line matching {pattern!r} within {timeout} s; "
                    f"stdout so far {self.out_seen}, stderr {self.err_seen}") from None
            if line is None:
                box.put(None)
                raise AssertionError(
                    f"{self.args}: output ended without {pattern!r}; stdout {self.out_seen}, "
                    f"stderr {self.err_seen}, exit {self.proc.poll()}")
            seen.append(line)
            if rx.search(line):
                return line

    def expect(self, pattern: str, timeout: float = TIMEOUT_S) -> str:
        """Wait for a stdout line matching the regex ``pattern`` (earlier lines are kept)."""
        return self._expect(self.out, self.out_seen, pattern, timeout)

    def expect_line(self, exact: str, timeout: float = TIMEOUT_S) -> None:
        """Wait for a stdout line; it must be exactly ``exact`` (no line in between)."""
        line = self._expect(self.out, self.out_seen, r"", timeout)
        assert line == exact, f"{self.args}: got {line!r}, expected {exact!r}"

    def expect_err(self, pattern: str, timeout: float = TIMEOUT_S) -> str:
        return self._expect(self.err, self.err_seen, pattern, timeout)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        """Wait for the exit; return the code. All remaining output is collected."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.args} did not exit; stdout {self.out_seen}, "
                                 f"stderr {self.err_seen}") from None
        for box, seen in ((self.out, self.out_seen), (self.err, self.err_seen)):
            while (line := box.get(timeout=timeout)) is not None:
                seen.append(line)
            box.put(None)
        assert not any("Traceback" in line for line in self.err_seen), self.err_seen
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT_S)


KEEPALIVE_ENV = "OCM_CHAT_KEEPALIVE"


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Spawned clients, killed at the end if a test left any running."""
    started: list[Client] = []
    yield started
    for client in started:
        client.kill()


def spawn(clients: list[Client], server: Server, *args: str,
          env: dict[str, str] | None = None) -> Client:
    client = Client("--server", H, "--tcp-port", str(server.tls_port), *args, env=env)
    clients.append(client)
    return client


def room_of(clients: list[Client], server: Server, room: str, *users: str) -> list[Client]:
    """The first user creates ``room``, the others join; returns when everyone is bound."""
    host = spawn(clients, server, "--create", room, "--user", users[0])
    host.expect_err(r"is host of room")
    members = [host]
    for user in users[1:]:
        member = spawn(clients, server, "--join", room, "--user", user)
        member.expect_err(r"is in room")  # its event loop runs (signal handlers in place)
        for earlier in members:
            earlier.expect_line(f"* {user} joined the room")
        members.append(member)
    return members


# --- chatting ---------------------------------------------------------------------------------
def test_two_clients_chat_both_ways_and_leave(server: Server, room_name: str,
                                              clients: list[Client]) -> None:
    alice, bob = room_of(clients, server, room_name, "alice", "bob")
    bob.send("hello alice")
    alice.expect_line("bob: hello alice")
    alice.send("hi bob, ça va? 🙂")
    bob.expect_line("alice: hi bob, ça va? 🙂")
    bob.close_stdin()  # EOF: bob sends /exit
    assert bob.wait() == 0
    alice.expect_line("* bob left the room")
    alice.close_stdin()
    assert alice.wait() == 0
    assert bob.out_seen == ["alice: hi bob, ça va? 🙂"]  # never its own message


def test_three_clients_each_message_reaches_the_two_others(server: Server, room_name: str,
                                                           clients: list[Client]) -> None:
    members = room_of(clients, server, room_name, "alice", "bob", "carol")
    for sender in members:
        name = sender.args[sender.args.index("--user") + 1]
        sender.send(f"from {name}: こんにちは")
        for other in members:
            if other is not sender:
                other.expect_line(f"{name}: from {name}: こんにちは")
    for member in members[1:]:
        member.send("/exit")
        assert member.wait() == 0
    members[0].close_stdin()
    assert members[0].wait() == 0


def test_received_escape_sequences_are_neutralised(server: Server, room_name: str,
                                                   clients: list[Client]) -> None:
    alice, bob = room_of(clients, server, room_name, "alice", "bob")
    bob.send("\x1b]0;owned\x07\x1b[2Jred\u202e")
    alice.expect_line("bob: \\x1b]0;owned\\x07\\x1b[2Jred\\u202e")


def test_message_over_max_message_is_refused_locally(server: Server, room_name: str,
                                                     clients: list[Client]) -> None:
    alice = spawn(clients, server, "--create", room_name, "--user", "alice")
    limit = int(alice.expect_err(r"messages up to (\d+) bytes").rsplit("up to ", 1)[1].split()[0])
    bob = spawn(clients, server, "--join", room_name, "--user", "bob")
    alice.expect_line("* bob joined the room")
    alice.send("x" * (limit + 1))
    alice.expect_err(rf"not sent: the message is {limit + 1} bytes, the limit in this room "
                     rf"is {limit} bytes")
    alice.send("y" * limit)
    bob.expect_line("alice: " + "y" * limit)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_leave_the_room(server: Server, room_name: str, clients: list[Client],
                                signum: int, code: int) -> None:
    alice, bob = room_of(clients, server, room_name, "alice", "bob")
    bob.proc.send_signal(signum)
    alice.expect_line("* bob left the room")  # /exit was sent on the way out
    assert bob.wait() == code


# --- passwords --------------------------------------------------------------------------------
def test_password_protected_room(server: Server, room_name: str, clients: list[Client],
                                 tmp_path: Path) -> None:
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("open sesame\n")
    wrong.write_text("open says me\n")
    alice = spawn(clients, server, "--create", room_name, "--user", "alice",
                  "--password-file", str(right))
    alice.expect_err("is host of room")
    bob = spawn(clients, server, "--join", room_name, "--user", "bob",
                "--password-file", str(wrong))
    assert bob.wait() == 1
    assert len(bob.err_seen) == 1
    assert bob.err_seen[0] == f"ocm-chat: wrong password for room '{room_name}'"  # once
    bob = spawn(clients, server, "--join", room_name, "--user", "bob")
    assert bob.wait() == 1
    assert len(bob.err_seen) == 1
    assert bob.err_seen[0] == (f"ocm-chat: room '{room_name}' is protected by a password: "
                               "give it with --password-file or --password-stdin")
    bob = spawn(clients, server, "--join", room_name, "--user", "bob",
                "--password-file", str(right))
    alice.expect_line("* bob joined the room")
    carol = spawn(clients, server, "--join", room_name, "--user", "carol", "--password-stdin")
    carol.send("open sesame")  # the first stdin line is the password, the rest is chat
    alice.expect_line("* carol joined the room")
    bob.expect_line("* carol joined the room")
    carol.send("open sesame was my password")
    alice.expect_line("carol: open sesame was my password")
    bob.expect_line("carol: open sesame was my password")


# --- the end of a room ------------------------------------------------------------------------
def test_host_exit_closes_the_room_for_the_others(server: Server, room_name: str,
                                                  clients: list[Client]) -> None:
    alice, bob, carol = room_of(clients, server, room_name, "alice", "bob", "carol")
    alice.send("/exit")
    assert alice.wait() == 0
    for member in (bob, carol):
        member.expect_line("* the room was closed")
        assert member.wait() == 3
        assert member.err_seen[-1].startswith("ocm-chat: the host left")
    # The name is free again.
    again = spawn(clients, server, "--create", room_name, "--user", "dave")
    again.expect_err("is host of room")
    again.close_stdin()
    assert again.wait() == 0


def test_server_shutdown_is_said_as_such(room_name: str, clients: list[Client]) -> None:
    """On SIGTERM every member, the host included, is told the server is shutting down,
    not that the host left."""
    with start_server() as server:
        alice, bob = room_of(clients, server, room_name, "alice", "bob")
        server.stop()
    for member in (alice, bob):
        member.expect_line("* the server is shutting down")
        assert member.wait() == 3
        assert member.err_seen[-1] == (
            "ocm-chat: the server is shutting down, so the room is gone")


def test_inactivity_disconnect_is_shown_and_keepalives_keep_others_in(
        room_name: str, clients: list[Client]) -> None:
    with start_server("--inactivity-timeout", "2") as server:
        alice = spawn(clients, server, "--create", room_name, "--user", "alice")
        alice.expect_err("is host of room")
        bob = spawn(clients, server, "--join", room_name, "--user", "bob",
                    env={KEEPALIVE_ENV: "0"})  # joins (one keepalive), then stays silent
        alice.expect_line("* bob joined the room")
        bob.expect_line("* you were disconnected: nothing was sent for too long", timeout=30)
        assert bob.wait() == 3
        assert "heard nothing from this client" in bob.err_seen[-1]
        alice.expect_line("* bob was removed for inactivity")
        # alice's keepalives (every 0.5 s) kept her in; a newcomer still reaches her.
        carol = spawn(clients, server, "--join", room_name, "--user", "carol")
        alice.expect_line("* carol joined the room")
        carol.send("still there?")
        alice.expect_line("carol: still there?")
        alice.close_stdin()
        carol.expect_line("* the room was closed")
        assert alice.wait() == 0 and carol.wait() == 3


# --- Stage 1 ----------------------------------------------------------------------------------
def test_stage1_relays_between_two_clients(clients: list[Client]) -> None:
    with start_server(stage1=True) as server:
        def stage1(user: str) -> Client:
            client = Client("--stage1", "--server", H, "--stage1-port", str(server.stage1_port),
                            "--user", user)
            clients.append(client)
            client.expect_err("in global chat")  # its first keepalive has been sent
            return client

        ann = stage1("ann")
        ben = stage1("ben")
        ben.send("hello ann")  # ann registered before ben even started
        ann.expect_line("ben: hello ann")
        ann.send("hi ben")  # ben's keepalive went out before his ready line
        ben.expect_line("ann: hi ben")
        ann.close_stdin()
        ben.close_stdin()
        assert ann.wait() == 0 and ben.wait() == 0


# --- refusals and failures: one line on stderr, exit 1 ----------------------------------------
def test_refusals_from_the_real_server(server: Server, room_name: str, clients: list[Client],
                                       tmp_path: Path) -> None:
    def refused(*args: str) -> str:
        client = spawn(clients, server, *args)
        assert client.wait() == 1
        assert len(client.err_seen) == 1 and not client.out_seen, client.err_seen
        return client.err_seen[0]

    assert f"there is no room named '{room_name}'" in refused("--join", room_name, "--user",
                                                             "bob")
    alice = spawn(clients, server, "--create", room_name, "--user", "alice")
    alice.expect_err("is host of room")
    assert "already exists: join it" in refused("--create", room_name, "--user", "bob")
    assert "is already called 'alice'" in refused("--join", room_name, "--user", "alice")
    long_password = tmp_path / "long"
    long_password.write_text("p" * 300)
    assert "the request is too large" in refused("--create", room_name + "-x", "--user", "bob",
                                                 "--password-file", str(long_password))


def test_rate_limited_refusal_says_when_to_retry(room_name: str, clients: list[Client],
                                                 tmp_path: Path) -> None:
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("open sesame\n")
    wrong.write_text("open says me\n")
    with start_server("--max-password-failures", "1", "--password-failure-window", "60"
                      ) as server:
        alice = spawn(clients, server, "--create", room_name, "--user", "alice",
                      "--password-file", str(right))
        alice.expect_err("is host of room")
        for _ in range(2):  # trying without a password first costs nothing
            bob = spawn(clients, server, "--join", room_name, "--user", "bob")
            assert bob.wait() == 1
            assert "protected by a password" in bob.err_seen[0]
        bob = spawn(clients, server, "--join", room_name, "--user", "bob",
                    "--password-file", str(wrong))
        assert bob.wait() == 1 and "wrong password" in bob.err_seen[0]
        bob = spawn(clients, server, "--join", room_name, "--user", "bob",
                    "--password-file", str(right))
        assert bob.wait() == 1
        assert re.fullmatch(r"ocm-chat: too many attempts from this address \(too many wrong "
                            r"passwords for this room from your address; retry in (5\d|60) s\): "
                            r"wait a little and try again", bob.err_seen[0]), bob.err_seen


def test_room_full(room_name: str, clients: list[Client]) -> None:
    with start_server("--max-members", "1") as server:
        alice = spawn(clients, server, "--create", room_name, "--user", "alice")
        alice.expect_err("is host of room")
        bob = spawn(clients, server, "--join", room_name, "--user", "bob")
        assert bob.wait() == 1
        assert bob.err_seen[0] == f"ocm-chat: room '{room_name}' is full (the room has 1 members)"


class FakeServer:
    """Answers every TCRP request with one fixed error status (for the codes a real
    server only gives under load or failure), or never answers (``status=None``)."""

    def __init__(self, status: Status | None, text: str = "") -> None:
        self.listener = socket.create_server((H, 0))
        self.port = self.listener.getsockname()[1]
        self.status, self.text = status, text
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        if self.status is None:
            return  # the connection sits in the backlog, never answered
        conn, _ = self.listener.accept()
        with conn:
            reader = FrameReader(Role.SERVER)
            conn.settimeout(TIMEOUT_S)
            while (event := reader.next_event()) is NEED_DATA:
                reader.receive_data(conn.recv(65536))
            assert event is not NEED_DATA
            conn.sendall(encode_error(reader.operation, reader.room_raw, self.status, self.text))

    def close(self) -> None:
        self.thread.join(TIMEOUT_S)
        self.listener.close()


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.OK])
def test_every_status_code_is_one_clear_line(status: Status) -> None:
    fake = FakeServer(status, f"reason for {status.name}")
    try:
        client = Client("--no-tls", "--tcp-port", str(fake.port), "--join", "lobby", "--user",
                        "bob")
        assert client.wait() == 1
    finally:
        fake.close()
    assert len(client.err_seen) == 1 and not client.out_seen
    line = client.err_seen[0]
    assert line.startswith("ocm-chat: ")
    # The server's words, unless they can only restate ours (then said once, by us).
    restates = {Status.ROOM_EXISTS, Status.INVALID_PASSWORD, Status.USERNAME_TAKEN}
    assert (f"(reason for {status.name})" in line) is (status not in restates), line


def test_unexpected_answer_is_one_clear_line() -> None:
    listener = socket.create_server((H, 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(encode_frame(Operation.JOIN, State.COMPLETE, b"lobby", b"x" * 22))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = Client("--no-tls", "--tcp-port", str(port), "--join", "lobby", "--user", "bob")
        assert client.wait() == 1
    finally:
        thread.join(TIMEOUT_S)
        listener.close()
    assert client.err_seen == [f"ocm-chat: the server at 127.0.0.1:{port} sent an invalid "
                               "answer: the server sent a frame the client did not expect: "
                               "a token before the response"]


@pytest.mark.parametrize(("answer", "what"), [
    (b"", "answering; if this is its TLS port, drop --no-tls (or use its plain port)"),
    (encode_ok(Operation.JOIN, b"lobby", Details(9001, False, 4000, 300.0, Framing.OCM1)),
     "the token"),
])
def test_server_closing_early_is_one_clear_line(answer: bytes, what: str) -> None:
    listener = socket.create_server((H, 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = Client("--no-tls", "--tcp-port", str(port), "--join", "lobby", "--user", "bob")
        assert client.wait() == 1
    finally:
        thread.join(TIMEOUT_S)
        listener.close()
    assert client.err_seen == [f"ocm-chat: the server at 127.0.0.1:{port} closed the "
                               f"connection before {what}"]


def test_unreachable_server(clients: list[Client]) -> None:
    with socket.socket() as probe:
        probe.bind((H, 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        client = Client("--no-tls", "--tcp-port", str(port), "--create", "lobby", "--user", "bob")
        assert client.wait() == 1
    assert client.err_seen == [f"ocm-chat: cannot reach the server at 127.0.0.1:{port} "
                               "(connection refused); is ocm-control running there?"]


def test_server_that_never_answers_times_out() -> None:
    fake = FakeServer(None)
    try:
        client = Client("--no-tls", "--tcp-port", str(fake.port), "--timeout", "0.5",
                        "--join", "lobby", "--user", "bob")
        assert client.wait() == 1
    finally:
        fake.close()
    assert client.err_seen == [f"ocm-chat: the server at 127.0.0.1:{fake.port} did not "
                               "answer within 0.5 s"]
