"""What a line typed into a chat means: a message to send or one of the ``/commands``.

Pure and UI-neutral: both interactive front ends (``ocm-chat``'s prompt in
``client.ui`` and ``ocm-gui``) read input with ``parse_input(text)``, which returns a
``Command``; the front end carries it out (send, leave, show help) and hands ``/who``
and ``/verify NAME`` to the link (``client.link.Link.answer``), which owns the member
list and the keys. The rules: ``/exit`` and ``/quit`` leave, ``/help`` lists the
commands, ``/who`` lists the members (TCRP Operation 3, docs/e2e.md §2.4), ``/verify
NAME`` compares safety numbers in an encrypted room, ``//text`` sends ``/text``, any
other ``/word`` is refused as unknown. ``/retry`` sends again the messages that the
server never acknowledged (reliable delivery, ``ocm1r``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from client import render
from wire.limits import EXIT_COMMAND


class Action(enum.Enum):
    SEND = "send"  # send ``Command.text`` as a chat message
    LEAVE = "leave"  # /exit or /quit: leave the room (as host: close it)
    HELP = "help"  # show ``help_lines``
    WHO = "who"  # list the room's members (the link fetches them)
    VERIFY = "verify"  # /verify NAME: ``Command.text`` is NAME (may be empty)
    RETRY = "retry"  # /retry: send our failed messages again (reliable delivery)
    NOTHING = "nothing"  # blank input: nothing to do
    REFUSED = "refused"  # not sent; ``Command.text`` says why


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed input line: what to do, and the text to send, the name to verify, or
    the reason refused."""

    action: Action
    text: str = ""


def is_exit_command(text: str) -> bool:
    """What the server takes for ``/exit`` (docs/protocol.md §2.1: stripped,
    case-insensitive)."""
    return text.strip().lower() == EXIT_COMMAND


def unknown_text(text: str) -> str:
    """The refusal of an unknown ``/word`` (or one this chat does not have)."""
    first = render.sanitize(text.split()[0]) if text.split() else text
    return (f"unknown command {first!r}: /help lists the commands; start with // to send "
            "a '/' line")


def parse_input(text: str) -> Command:
    """The ``Command`` that ``text`` (one typed line, as typed) asks for."""
    word, _, rest = text.strip().partition(" ")
    word = word.lower()
    if not text.strip():
        return Command(Action.NOTHING)
    if is_exit_command(text) or word == "/quit" and not rest:
        return Command(Action.LEAVE)
    if word == "/help" and not rest:
        return Command(Action.HELP)
    if word == "/who" and not rest:
        return Command(Action.WHO)
    if word == "/retry" and not rest:
        return Command(Action.RETRY)
    if word == "/verify":
        return Command(Action.VERIFY, rest.strip())
    if text.startswith("//"):
        text = text[1:]
        if is_exit_command(text):  # the server would take it for /exit
            return Command(Action.REFUSED, "not sent: the server would read that as /exit")
        return Command(Action.SEND, text)
    if text.startswith("/"):
        return Command(Action.REFUSED, unknown_text(text))
    return Command(Action.SEND, text)


def help_lines(max_message: int, room_mode: bool = True) -> list[str]:
    """The commands of a room chat (``room_mode``) or of global chat, one per line with
    the descriptions in one column; the front end adds its key bindings."""
    rows = [
        ("/help", "show this help"),
        ("/exit", "leave " + ("the room (as its host: this closes it for everyone)"
                              if room_mode else "global chat") + "; /quit does the same"),
    ]
    if room_mode:
        rows += [
            ("/who", "list the room's members (host marked; fingerprints in an encrypted "
                     "room)"),
            ("/retry", "send again the messages that could not be delivered"),
            ("/verify NAME", "encrypted room: show the safety number to compare with NAME "
                             "out of band (/verify NAME confirm then marks NAME verified), "
                             "or /verify NAME sas to compare emoji with NAME"),
        ]
    rows.append(("//text", "send a message that starts with '/'"))
    width = max(len(name) for name, _ in rows) + 2
    return ["commands:",
            *(f"  {name:<{width}}{text}" for name, text in rows),
            f"messages are at most {max_message} bytes; longer ones are not sent"]
