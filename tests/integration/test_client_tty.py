"""The interactive ocm-chat, driven through a pseudo-terminal (pexpect) against a real
server, with script-mode peers (``test_client_script.Client``) on the other side."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Server
from tests.integration.test_client_script import KEEPALIVE_ENV, Client, spawn

pexpect = pytest.importorskip("pexpect")

H = "127.0.0.1"
TIMEOUT_S = 15.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    started: list[Client] = []
    yield started
    for client in started:
        client.kill()


@pytest.fixture
def ttys() -> Iterator[list[object]]:
    started: list[object] = []
    yield started
    for child in started:
        child.close(force=True)  # type: ignore[attr-defined]


def spawn_tty(ttys: list[object], server: Server, *args: str,
              env: dict[str, str] | None = None) -> pexpect.spawn:
    full_env = {**os.environ, "TERM": "xterm-256color", "PROMPT_TOOLKIT_NO_CPR": "1",
                "PYTHONUNBUFFERED": "1"}
    for name in ("NO_COLOR", KEEPALIVE_ENV):
        full_env.pop(name, None)
    full_env.update(env or {})
    child = pexpect.spawn(
        sys.executable, ["-m", "client", "--server", H, "--tcp-port", str(server.tls_port),
                         *args],
        cwd=str(ROOT), env=full_env, dimensions=(40, 120), timeout=TIMEOUT_S,
        encoding="utf-8", codec_errors="replace",
    )
    ttys.append(child)
    return child


def wait_exit(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert "Traceback" not in (child.before or "")
    return int(child.exitstatus)


def test_incoming_message_does_not_garble_the_half_typed_line(
        server: Server, room_name: str, clients: list[Client], ttys: list[object]) -> None:
    carol = spawn_tty(ttys, server, "--create", room_name, "--user", "carol")
    carol.expect("Password for the new room")
    carol.sendline("")  # open room
    carol.expect("you are in room")
    dave = spawn(clients, server, "--join", room_name, "--user", "dave")
    carol.expect("dave joined the room")
    carol.send("half typ")
    carol.expect("typ")  # the terminal shows it: prompt_toolkit has it in its buffer
    dave.send("hello carol")
    carol.expect(r"dave(\x1b\[0m)?: hello carol")
    carol.expect(r"> half typ")  # redrawn below the message, intact
    carol.sendline("ed")
    dave.expect_line("carol: half typed")
    carol.sendline("/help")
    carol.expect(r"/who +list the room's members")
    carol.sendline("/who")
    carol.expect(r"\d\d:\d\d[^\n]*2 in the room: carol \(host, you\), dave")  # stamped
    # The host is warned that leaving closes the room, and may stay.
    carol.sendline("/exit")
    carol.expect(r"You are the host: leaving closes the room for everyone. Leave\? \[y/N\]")
    carol.sendline("n")
    carol.expect("staying")
    dave.send("still open?")
    carol.expect("still open")
    carol.sendline("/exit")
    carol.expect(r"Leave\? \[y/N\]")
    carol.sendline("y")
    carol.expect("the room is closed")
    assert wait_exit(carol) == 0
    dave.expect_line("* the room was closed")
    assert dave.wait() == 3


def test_everything_asked_in_order_without_colour(
        server: Server, room_name: str, clients: list[Client], ttys: list[object]) -> None:
    erin = spawn_tty(ttys, server, env={"NO_COLOR": "1"})
    erin.expect("Your name:")
    erin.sendline(" erin")  # refused locally: leading space
    erin.expect("the username starts or ends with whitespace")
    erin.send("\x15")  # Ctrl-U: clear the line
    erin.sendline("erin")
    erin.expect(r"Create a new room or join one\? \[c/j\]:")
    erin.sendline("j")
    erin.expect("Room name:")
    erin.sendline(room_name)
    erin.expect(f"there is no room named '{room_name}'")  # back to the question
    erin.expect(r"\[c/j\]:")
    erin.sendline("c")
    # offered again as the default, shown but not typed in: typing the name again gives
    # the name (not the name twice), and Enter alone would take the default
    erin.expect(re.escape(f"Room name [{room_name}]:"))
    erin.sendline(room_name)
    erin.expect(r"Password for the new room \(optional, Enter = open room\):")
    erin.sendline("")
    erin.expect(f"you are in room '{room_name}' as erin")
    frank = spawn(clients, server, "--join", room_name, "--user", "frank")
    erin.expect("frank joined the room")
    frank.send("hi erin")
    erin.expect("frank: hi erin")  # no colour: the name is followed directly by ": "
    assert "38;5;" not in (erin.before or "") and "\x1b[36m" not in (erin.before or "")
    erin.sendcontrol("c")  # Ctrl-C leaves at once (as host: the room closes)
    assert wait_exit(erin) == 0
    frank.expect_line("* the room was closed")
    assert frank.wait() == 3


def test_password_is_asked_hidden_and_reasked_after_a_wrong_one(
        server: Server, room_name: str, clients: list[Client], ttys: list[object],
        tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("correct horse\n")
    alice = spawn(clients, server, "--create", room_name, "--user", "alice",
                  "--password-file", str(secret))
    alice.expect_err("is host of room")
    bob = spawn_tty(ttys, server, "--join", room_name, "--user", "bob")
    bob.expect(f"room '{room_name}' is protected by a password")
    bob.expect(f"Password for room '{room_name}':")
    assert "wrong" not in (bob.before or "")  # nothing was typed yet: nothing is wrong
    bob.sendline("battery staple")
    bob.expect(f"wrong password for room '{room_name}'")
    bob.expect(f"Password for room '{room_name}':")
    assert "battery" not in (bob.before or "")  # hidden: never echoed
    bob.sendline("correct horse")
    bob.expect("you are in room")
    alice.expect_line("* bob joined the room")
    alice.send("welcome")
    bob.expect("welcome")
    bob.sendcontrol("d")  # Ctrl-D leaves: /exit is sent
    bob.expect("you left the room")
    assert wait_exit(bob) == 0
    alice.expect_line("* bob left the room")


def test_closed_room_is_explained_and_a_rejoin_offered(
        server: Server, room_name: str, clients: list[Client], ttys: list[object]) -> None:
    alice = spawn(clients, server, "--create", room_name, "--user", "alice")
    alice.expect_err("is host of room")
    bob = spawn_tty(ttys, server, "--join", room_name, "--user", "bob")
    bob.expect("you are in room")
    alice.expect_line("* bob joined the room")
    alice.close_stdin()  # the host leaves: the room closes
    assert alice.wait() == 0
    bob.expect("the room was closed")
    bob.expect("the host left")
    # Yes opens the same room again, as its host: no second "create or join?" question.
    bob.expect(re.escape(f"Open room '{room_name}' again (you become its host)? [y/N]"))
    bob.sendline("y")
    bob.expect("Password for the new room")
    assert "[c/j]" not in (bob.before or "")
    bob.sendline("")
    bob.expect(f"you are in room '{room_name}' as bob")
    carol = spawn(clients, server, "--join", room_name, "--user", "carol")
    bob.expect("carol joined the room")
    bob.sendcontrol("c")
    assert wait_exit(bob) == 0
    carol.expect_line("* the room was closed")
    assert carol.wait() == 3


def test_declining_the_rejoin_exits_3(
        server: Server, room_name: str, clients: list[Client], ttys: list[object]) -> None:
    alice = spawn(clients, server, "--create", room_name, "--user", "alice")
    alice.expect_err("is host of room")
    bob = spawn_tty(ttys, server, "--join", room_name, "--user", "bob")
    alice.expect_line("* bob joined the room")
    alice.send("/exit")
    bob.expect(r"again \(you become its host\)\? \[y/N\]")
    bob.sendline("")
    assert wait_exit(bob) == 3


def test_sigterm_leaves_cleanly(
        server: Server, room_name: str, clients: list[Client], ttys: list[object]) -> None:
    alice = spawn(clients, server, "--create", room_name, "--user", "alice")
    alice.expect_err("is host of room")
    bob = spawn_tty(ttys, server, "--join", room_name, "--user", "bob")
    bob.expect("you are in room")
    alice.expect_line("* bob joined the room")
    bob.kill(signal.SIGTERM)  # e.g. a closing terminal (SIGHUP is handled the same way)
    alice.expect_line("* bob left the room")  # /exit was sent, not a silent disappearance
    assert wait_exit(bob) == 0


def test_new_room_password_is_confirmed(
        server: Server, room_name: str, clients: list[Client], ttys: list[object],
        tmp_path: Path) -> None:
    """A hidden password is typed twice when creating: a typo would lock everyone out."""
    alice = spawn_tty(ttys, server, "--create", room_name, "--user", "alice")
    alice.expect(r"Password for the new room \(optional, Enter = open room\):")
    alice.sendline("correct horse")
    alice.expect("Type the password again:")
    alice.sendline("correct hrose")
    alice.expect("the two passwords differ")
    alice.expect(r"Password for the new room \(optional, Enter = open room\):")
    alice.sendline("correct horse")
    alice.expect("Type the password again:")
    alice.sendline("correct horse")
    alice.expect("you are in room")
    assert "horse" not in (alice.before or "")  # hidden: never echoed
    secret = tmp_path / "pw"
    secret.write_text("correct horse\n")
    bob = spawn(clients, server, "--join", room_name, "--user", "bob",
                "--password-file", str(secret))
    alice.expect("bob joined the room")
    bob.close_stdin()
    assert bob.wait() == 0
    alice.sendcontrol("c")
    assert wait_exit(alice) == 0
