"""ocm-chat's command line, script-mode helpers and local limits (no sockets)."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from pathlib import Path

import pytest

from client import script
from client.__main__ import build_parser, main, read_password_file
from client.link import KEEPALIVE_ENV, GlobalLink, RoomLink, keepalive_interval
from client.render import Line, MessageTooLong, chat_line, notice_line
from client.session import Joined
from wire.codes import Framing
from wire.tcrp import Details


# --- arguments --------------------------------------------------------------------------------
def test_defaults() -> None:
    args = build_parser().parse_args([])
    # No --tcp-port: main() picks 9443 (TLS, the default), or 9000 with --no-tls.
    assert (args.server, args.tcp_port, args.stage1_port) == ("127.0.0.1", None, 9002)
    assert args.tls and args.ca_file is None
    assert not build_parser().parse_args(["--no-tls"]).tls
    assert args.create is args.join is args.user is args.password_file is None
    assert not args.password_stdin and not args.stage1


def test_all_flags() -> None:
    args = build_parser().parse_args(
        ["--server", "chat.example", "--tcp-port", "9100", "--join", "lobby", "--user", "bob",
         "--password-file", "/p", "--timeout", "2.5", "--no-color"])
    assert (args.server, args.tcp_port, args.join, args.user) == ("chat.example", 9100,
                                                                 "lobby", "bob")
    assert (args.password_file, args.timeout, args.no_color) == ("/p", 2.5, True)


@pytest.mark.parametrize(
    "argv",
    [
        ["--create", "a", "--join", "b"],
        ["--password-file", "p", "--password-stdin"],
        ["--tcp-port", "0"],
        ["--tcp-port", "70000"],
        ["--tcp-port", "x"],
        ["--timeout", "0"],
        ["--stage1", "--create", "room"],
        ["--stage1", "--password-stdin"],
        ["--user", " bob"],
        ["--user", "b\x1bob"],
        ["--join", ""],
        ["--create", "x" * 256],
        ["--no-such-flag"],
        ["--tcp-port"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ocm-chat: error: ") and err.endswith(" (see ocm-chat --help)\n")
    assert err.count("\n") == 1, err  # one line, no usage block


@pytest.mark.parametrize("argv", [["--create", "r"], ["--user", "bob"], []])
def test_script_mode_cannot_ask_so_it_says_what_is_missing(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # Under pytest stdin is not a terminal: script mode.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--user" in err and "stdin is not a terminal" in err


def test_stage1_script_mode_needs_a_user(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stage1"]) == 2
    assert "--user" in capsys.readouterr().err


def test_unreadable_password_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["--join", "r", "--user", "u", "--password-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ocm-chat: cannot read the password file") and err.count("\n") == 1


def test_password_file_first_line_without_line_ending(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret pass \r\nsecond line\n")
    assert read_password_file(str(path)) == "s3cret pass "
    path.write_text("no newline")
    assert read_password_file(str(path)) == "no newline"


# --- keepalive interval -----------------------------------------------------------------------
def test_keepalive_interval() -> None:
    assert keepalive_interval(75.0, {}) == 75.0
    assert keepalive_interval(0.5, {KEEPALIVE_ENV: ""}) == 0.5
    assert keepalive_interval(75.0, {KEEPALIVE_ENV: "0"}) is None
    assert keepalive_interval(75.0, {KEEPALIVE_ENV: "-1"}) is None
    assert keepalive_interval(75.0, {KEEPALIVE_ENV: "2"}) == 2.0
    assert keepalive_interval(75.0, {KEEPALIVE_ENV: "junk"}) == 75.0
    assert keepalive_interval(0.0, {}) == 0.05  # never a busy loop


# --- the room link refuses long messages before touching the network --------------------------
def _joined(max_message: int) -> Joined:
    details = Details(udp_port=9001, host=False, max_message=max_message,
                      inactivity_timeout=300.0, framing=Framing.OCM1)
    return Joined(b"room", "bob", b"t" * 22, details, ("127.0.0.1", 9001),
                  udp_sock=None)  # type: ignore[arg-type]  # never opened here


def test_room_link_refuses_messages_over_max_message() -> None:
    async def scenario() -> None:
        link = RoomLink(_joined(8), lambda line: None, env={})
        assert link.max_message == 8
        link.send("12345678")  # at the limit: accepted (not open, so nothing is sent)
        with pytest.raises(MessageTooLong, match="the limit in this room is 8 bytes"):
            link.send("123456789")
        with pytest.raises(MessageTooLong):
            link.send("ééééé")  # 10 bytes

    asyncio.run(scenario())


def test_global_link_says_global_chat_not_this_room() -> None:
    async def scenario() -> None:
        link = GlobalLink("bob", lambda line: None, env={})
        assert link.max_message == 4096 - 1 - 3
        link.send("x" * link.max_message)  # at the limit: accepted (not open: not sent)
        with pytest.raises(MessageTooLong) as info:
            link.send("x" * 4093)
        assert str(info.value) == ("not sent: the message is 4093 bytes, the limit in "
                                   "global chat is 4092 bytes (1 too many)")

    asyncio.run(scenario())


def test_room_link_keepalive_is_a_quarter_of_the_inactivity_timeout() -> None:
    async def scenario() -> None:
        link = RoomLink(_joined(8), lambda line: None, env={})
        assert link._keepalive_s == 75.0
        assert RoomLink(_joined(8), lambda line: None,
                        env={KEEPALIVE_ENV: "0"})._keepalive_s is None

    asyncio.run(scenario())


# --- script-mode helpers ----------------------------------------------------------------------
def test_exit_command_matches_what_the_server_takes_for_exit() -> None:
    for text in ("/exit", " /EXIT ", "/Exit\t"):
        assert script.is_exit_command(text)
    for text in ("/exit now", "exit", "//exit", "/exi"):
        assert not script.is_exit_command(text)


def test_line_writer_writes_flushed_utf8_lines() -> None:
    out = io.BytesIO()
    writer = script.LineWriter(out)
    writer(chat_line("ボブ", "hi\x1b"))
    writer(notice_line("bob joined the room"))
    assert out.getvalue() == "ボブ: hi\\x1b\n* bob joined the room\n".encode()


def test_line_writer_stops_on_a_closed_stream() -> None:
    out = io.BytesIO()
    writer = script.LineWriter(out)
    out.close()
    writer(Line(script.render.Kind.NOTICE, "x"))
    assert writer.broken


def test_read_line_unbuffered_leaves_the_rest_for_the_pump() -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"pass word\r\nfirst\nsecond")
        os.close(write_fd)
        assert script.read_line_unbuffered(read_fd) == b"pass word"
        posted: list[bytes | None] = []
        script._pump_stdin(read_fd, posted.append)
        assert posted == [b"first", b"second", None]
        assert script.read_line_unbuffered(read_fd) is None
    finally:
        os.close(read_fd)


def test_pump_splits_lines_across_reads() -> None:
    read_fd, write_fd = os.pipe()
    posted: list[bytes | None] = []
    done = threading.Event()

    def run() -> None:
        script._pump_stdin(read_fd, posted.append)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        for chunk in (b"hel", b"lo\nwor", b"ld\n\n", b"tail"):
            os.write(write_fd, chunk)
        os.close(write_fd)
        assert done.wait(10)
    finally:
        thread.join(10)
        os.close(read_fd)
    assert posted == [b"hello", b"world", b"", b"tail", None]
