"""client.commands: what a typed line means (the one parser of ocm-chat and ocm-gui)."""

from __future__ import annotations

import pytest

from client.commands import Action, Command, help_lines, parse_input


@pytest.mark.parametrize(("text", "expected"), [
    ("hello", Command(Action.SEND, "hello")),
    ("  spaced  ", Command(Action.SEND, "  spaced  ")),
    ("", Command(Action.NOTHING)),
    ("   ", Command(Action.NOTHING)),
    ("/exit", Command(Action.LEAVE)),
    (" /EXIT ", Command(Action.LEAVE)),
    ("/quit", Command(Action.LEAVE)),
    ("/help", Command(Action.HELP)),
    ("/who", Command(Action.WHO)),
    (" /WHO ", Command(Action.WHO)),
    ("/who x", Command(Action.REFUSED, "unknown command '/who': /help lists the commands; "
                                       "start with // to send a '/' line")),
    ("/retry", Command(Action.RETRY)),
    (" /RETRY ", Command(Action.RETRY)),
    ("/verify bob", Command(Action.VERIFY, "bob")),
    ("/Verify  ボブ ", Command(Action.VERIFY, "ボブ")),
    ("/verify", Command(Action.VERIFY, "")),
    ("//slash", Command(Action.SEND, "/slash")),
    ("//exit", Command(Action.REFUSED, "not sent: the server would read that as /exit")),
    ("/nope x", Command(Action.REFUSED, "unknown command '/nope': /help lists the commands; "
                                        "start with // to send a '/' line")),
    ("/\x1b[2J", Command(Action.REFUSED, "unknown command '/\\\\x1b[2J': /help lists the "
                                         "commands; start with // to send a '/' line")),
])
def test_parse_input(text: str, expected: Command) -> None:
    assert parse_input(text) == expected


def test_help_names_every_command_and_the_limit() -> None:
    text = "\n".join(help_lines(123))
    for word in ("/help", "/exit", "/quit", "/who", "/retry", "/verify NAME", "//text",
                 "123 bytes"):
        assert word in text
    global_chat = "\n".join(help_lines(99, room_mode=False))
    assert "/who" not in global_chat and "/verify" not in global_chat
    assert "/retry" not in global_chat
    assert "leave global chat" in global_chat


def test_help_descriptions_line_up_in_one_column() -> None:
    for room_mode in (True, False):
        rows = [line for line in help_lines(50, room_mode) if line.startswith("  /")]
        columns = {len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in rows}
        assert len(rows) >= 3 and len(columns) == 1, rows
