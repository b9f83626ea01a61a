"""client.commands: what a typed line means (shared by the desktop client)."""

from __future__ import annotations

import pytest

from client.commands import WHO_TEXT, Action, Command, help_lines, parse_input


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
    for word in ("/help", "/exit", "/quit", "/who", "//text", "123 bytes"):
        assert word in text
    assert "member list" not in WHO_TEXT and "/who" in WHO_TEXT
