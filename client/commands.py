"""What a line typed into a chat means: a message to send or one of the ``/commands``.

Pure and UI-neutral, so that every front end (``ocm-gui`` today) reads input the same
way: ``parse_input(text)`` returns a ``Command`` and the front end carries it out (send,
leave, show help). The rules are those of ``ocm-chat``'s interactive mode: ``/exit`` and
``/quit`` leave, ``/help`` lists the commands, ``/who`` explains that the server has no
member list yet, ``//text`` sends ``/text``, any other ``/word`` is refused as unknown.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from client import render
from wire.limits import EXIT_COMMAND

WHO_TEXT: Final = ("there is no /who: the server does not tell clients who is in a room "
                   "(joins and leaves are shown as they happen)")


class Action(enum.Enum):
    SEND = "send"  # send ``Command.text`` as a chat message
    LEAVE = "leave"  # /exit or /quit: leave the room (as host: close it)
    HELP = "help"  # show ``help_lines``
    WHO = "who"  # show ``WHO_TEXT`` (until the server has a member list)
    NOTHING = "nothing"  # blank input: nothing to do
    REFUSED = "refused"  # not sent; ``Command.text`` says why


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed input line: what to do, and the text to send or the reason refused."""

    action: Action
    text: str = ""


def is_exit_command(text: str) -> bool:
    """What the server takes for ``/exit`` (docs/protocol.md §2.1: stripped,
    case-insensitive)."""
    return text.strip().lower() == EXIT_COMMAND


def parse_input(text: str) -> Command:
    """The ``Command`` that ``text`` (one typed line, as typed) asks for."""
    word = text.strip().lower()
    if not text.strip():
        return Command(Action.NOTHING)
    if is_exit_command(text) or word == "/quit":
        return Command(Action.LEAVE)
    if word == "/help":
        return Command(Action.HELP)
    if word == "/who":
        return Command(Action.WHO)
    if text.startswith("//"):
        text = text[1:]
        if is_exit_command(text):  # the server would take it for /exit
            return Command(Action.REFUSED, "not sent: the server would read that as /exit")
        return Command(Action.SEND, text)
    if text.startswith("/"):
        first = render.sanitize(text.split()[0])
        return Command(Action.REFUSED, f"unknown command {first!r}: /help lists the "
                                       "commands; start with // to send a '/' line")
    return Command(Action.SEND, text)


def help_lines(max_message: int) -> list[str]:
    """The commands of a room chat, one per line (key bindings are the front end's)."""
    return [
        "commands:",
        "  /help    show this help",
        "  /exit    leave the room (as its host: this closes it for everyone); "
        "/quit does the same",
        "  /who     who is in the room (needs server support; not yet available)",
        "  //text   send a message that starts with '/'",
        f"messages are at most {max_message} bytes; longer ones are not sent",
    ]
