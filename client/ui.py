"""The interactive client (stdin and stdout are terminals), on prompt_toolkit.

Setup asks, in the order of the specification, only what the flags did not give: the
username, create or join, the room, and a password only when it is needed (offered,
optional, when creating; asked, hidden, when a join gets INVALID_PASSWORD, and again
after each wrong one). Recoverable refusals (room exists / not found / full, name taken)
go back to the question that fixes them.

The chat runs under ``patch_stdout``: incoming lines are printed above the input line and
what is being typed is redrawn intact. When the room closes or the server disconnects us
the prompt is interrupted, the reason shown and a rejoin offered.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import ANSI
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.validation import ValidationError, Validator

from client import commands, render
from client.commands import Action
from client.e2e.identity import IdentityKeys
from client.e2e_link import IdentityChoice, must_be_encrypted, room_link, status_text
from client.keystore import KeyStore
from client.known_servers import KnownServers
from client.link import GlobalLink, Link, RoomLink, open_global
from client.render import Line, MessageTooLong
from client.script import (
    EXIT_ENDED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    new_runner,
)
from client.session import (
    Joined,
    JoinFailed,
    JoinRefused,
    TcrpTarget,
    describe_connection,
    join_room,
)
from wire.chat import Notice
from wire.codes import Framing, NoticeEvent, Operation, Status
from wire.tcrp import Request, RequestBody

RECOVERABLE: Final = frozenset(
    {Status.ROOM_EXISTS, Status.ROOM_NOT_FOUND, Status.USERNAME_TAKEN, Status.ROOM_FULL}
)


class Interrupted(Exception):
    """Ctrl-C or Ctrl-D at a setup question."""


class _Ended(Exception):
    """Raised into the running prompt when the room ends under it."""


KEYS_HELP: Final = "keys: Enter sends, Up/Down recall what you sent, Ctrl-C or Ctrl-D leave"


def help_lines(max_message: int, room_mode: bool) -> list[str]:
    """``client.commands.help_lines`` with this prompt's key bindings."""
    lines = commands.help_lines(max_message, room_mode)
    return [*lines[:-1], KEYS_HELP, lines[-1]]


# --- setup questions --------------------------------------------------------------------------
def _validator(check: Callable[[str], str | None]) -> Validator:
    class _Check(Validator):
        def validate(self, document: object) -> None:
            problem = check(document.text)  # type: ignore[attr-defined]
            if problem:
                raise ValidationError(message=problem)

    return _Check()


class Asker:
    """The setup questions, each on its own prompt_toolkit prompt (run synchronously,
    before the chat's event loop starts)."""

    def __init__(self, colour: bool = True) -> None:
        self._session: PromptSession[str] = PromptSession()
        self._colour = colour

    def _ask(self, message: str, default: str = "", secret: bool = False,
             check: Callable[[str], str | None] | None = None) -> str:
        """One answer. A ``default`` is shown as ``[default]`` before the colon and taken
        when the answer is empty; it is never put in the input line (where typing the
        name again would append to it: ``lobbylobby``)."""
        if default:
            message = message.replace(": ", f" [{render.sanitize(default)}]: ", 1)
            inner = check

            def check(text: str) -> str | None:
                return None if not text or inner is None else inner(text)

        try:
            answer = self._session.prompt(
                message, is_password=secret,
                validator=_validator(check) if check else None, validate_while_typing=False,
            )
        except (KeyboardInterrupt, EOFError):
            raise Interrupted from None
        return answer or default

    def username(self, default: str = "") -> str:
        return self._ask("Your name: ", default, check=render.check_username)

    def operation(self) -> Operation:
        def check(text: str) -> str | None:
            return None if text.strip().lower() in _OPERATION_ANSWERS else "type c or j"

        answer = self._ask("Create a new room or join one? [c/j]: ", check=check)
        return _OPERATION_ANSWERS[answer.strip().lower()]

    def room(self, default: str = "") -> str:
        return self._ask("Room name: ", default, check=render.check_room)

    def new_password(self) -> str | None:
        """The new room's password, typed twice (hidden, so a typo would lock everyone
        out); ``None`` for an open room."""
        while True:
            answer = self._ask("Password for the new room (optional, Enter = open room): ",
                               secret=True, check=_check_password)
            if not answer:
                return None
            if self._ask("Type the password again: ", secret=True) == answer:
                return answer
            say("the two passwords differ: type it again (Enter = open room)", self._colour,
                True)

    def password(self, room: str) -> str:
        return self._ask(f"Password for room {render.sanitize(room)!r}: ", secret=True,
                         check=_check_password)

    def yes_no(self, question: str, default: bool = False) -> bool:
        suffix = " [Y/n] " if default else " [y/N] "
        answer = self._ask(question + suffix).strip().lower()
        return default if not answer else answer in ("y", "yes")


_OPERATION_ANSWERS: Final = {
    "c": Operation.CREATE, "create": Operation.CREATE,
    "j": Operation.JOIN, "join": Operation.JOIN,
}


def _check_password(text: str) -> str | None:
    return "the password is longer than 255 bytes" if len(text.encode()) > 255 else None


@dataclass
class Plan:
    """What we know so far about the room to enter; ``None`` = ask."""

    host: str
    tcp_port: int
    timeout: float
    user: str | None = None
    operation: Operation | None = None
    room: str | None = None
    password: str | None = None
    password_given: bool = False  # --password-file / --password-stdin, or asked already
    last_user: str = ""  # the default answers when a question is asked again
    last_room: str = ""
    tls: ssl.SSLContext | None = None  # TCRP inside TLS (the default; --no-tls: None)
    ca_file: str | None = None  # --ca-file: named when a certificate does not verify
    pins: KnownServers | None = None  # without --ca-file: the server's key pinned here
    e2e: bool = False  # --e2e: a created room is end-to-end encrypted
    store: KeyStore | None = None  # this device's key store and identity (docs/e2e.md §7)
    identity: IdentityKeys | None = None  # loaded once the user name is known
    allow_plain: bool = False  # --allow-plain: a room seen encrypted may answer plain


def say(text: str, colour: bool, warning: bool = False) -> None:
    """A setup-time line; warnings go to stderr."""
    line = render.warning_line(text) if warning else render.notice_line(text)
    print(render.format_ansi(line, colour=colour), file=sys.stderr if warning else sys.stdout,
          flush=True)


def enter_room(plan: Plan, asker: Asker, colour: bool) -> Joined:
    """Ask what is missing and join; loop on recoverable refusals. Raise ``JoinRefused``
    or ``JoinFailed`` for the rest, ``Interrupted`` on Ctrl-C / Ctrl-D."""
    while True:
        user = plan.user = plan.user or asker.username(plan.last_user)
        operation = plan.operation = plan.operation or asker.operation()
        room = plan.room = plan.room or asker.room(plan.last_room)
        plan.last_user, plan.last_room = user, room
        if operation is Operation.CREATE and not plan.password_given:
            plan.password, plan.password_given = asker.new_password(), True
        try:
            choice = None
            if plan.store is not None:
                choice = IdentityChoice(plan.store, plan.host, plan.tcp_port, user,
                                        required=plan.e2e, room=room, operation=operation,
                                        allow_plain=plan.allow_plain)
            e2e = must_be_encrypted(plan.store, plan.host, plan.tcp_port, room, plan.e2e,
                                    operation, plan.allow_plain)
            target = TcrpTarget(plan.host, plan.tcp_port, plan.tls, plan.timeout, plan.ca_file,
                                plan.pins)
            joined = join_room(target, Request.of(operation, room, RequestBody(
                user, plan.password, Framing.OCM1R, e2e=e2e)), keys_for=choice,
                e2e_for=None if choice is None else choice.seen_encrypted)
            if choice is not None:
                plan.identity = choice.identity
                if choice.error is not None:
                    say(f"cannot use your identity key: {choice.error}; encrypted rooms "
                        "cannot be joined", colour, True)
            return joined
        except JoinRefused as refused:
            if refused.status == Status.INVALID_PASSWORD and plan.password is None:
                # Not an error: we tried without a password, the room wants one. (A
                # missing password is not counted as a failed attempt by the server.)
                say(render.password_needed_text(room), colour)
                plan.password, plan.password_given = asker.password(room), True
                continue
            say(render.refusal_text(refused.status, refused.error, room, user,
                                    plan.password is not None), colour, True)
            if refused.status == Status.INVALID_PASSWORD:
                plan.password, plan.password_given = asker.password(room), True
            elif refused.status == Status.USERNAME_TAKEN:
                plan.user = None
            elif refused.status in RECOVERABLE:
                plan.operation = plan.room = None
                plan.password_given = False
            else:
                raise


# --- the chat ---------------------------------------------------------------------------------
@dataclass
class ChatView:
    """Prints lines above the prompt with an HH:MM timestamp."""

    colour: bool

    def __call__(self, line: Line, stamp: bool = True) -> None:
        clock = time.strftime("%H:%M") if stamp else None
        print(render.format_ansi(line, clock, self.colour), flush=True)


def status_line(link: Link, title: str, user: str, host: bool) -> str:
    """The bottom toolbar: where we are, and (reliable delivery) what is in flight."""
    parts = [title, f"{user}{' (host)' if host else ''}"]
    if isinstance(link, RoomLink):
        if link.reconnecting:
            parts.append("reconnecting…")
        if link.pending:
            parts.append(f"{link.pending} pending")
        if failed := len(link.failed):
            parts.append(f"{failed} failed (/retry)")
    return " " + " · ".join([*parts, "/help", "Ctrl-D leaves"]) + " "


async def chat(link: Link, user: str, title: str, host: bool, colour: bool,
               history: InMemoryHistory, intro: Line) -> Notice | None:
    """Show ``intro``, then read lines and send them until the user leaves (``None``) or
    the room ends (the final notice). Must run under ``patch_stdout``; ``link`` is open.
    SIGTERM and SIGHUP leave like Ctrl-D (handlers are in place before ``intro``)."""
    show = ChatView(colour)
    session: PromptSession[str] = PromptSession(
        history=history, erase_when_done=True,
        bottom_toolbar=lambda: status_line(link, title, user, host),
    )
    if isinstance(link, RoomLink):
        link.on_status = lambda: session.app.invalidate() if session.app.is_running else None
    name = render.sanitize_name(user)
    prompt = ANSI(f"\x1b[1;38;5;{render.user_colour(user)}m{name}\x1b[0m> ") if colour \
        else f"{name}> "

    leaving = False

    def interrupt(exception: BaseException) -> None:
        if session.app.is_running:
            session.app.exit(exception=exception)

    def on_signal() -> None:  # SIGTERM, or SIGHUP when the terminal goes away: leave
        nonlocal leaving
        leaving = True
        interrupt(EOFError())

    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGHUP)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    link.ended.add_done_callback(lambda _: interrupt(_Ended()))
    show(intro)
    try:
        while True:
            if link.ended.done():
                return link.ended.result()
            if leaving:
                link.leave()
                return None
            try:
                text = await session.prompt_async(prompt)
            except _Ended:
                continue
            except (KeyboardInterrupt, EOFError):
                link.leave()
                return None
            for part in (p for p in text.split("\n") if p.strip()):
                outcome = await _handle_input(part, link, session, show, host, user)
                if outcome == "leave":
                    link.leave()
                    return None
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def _handle_input(text: str, link: Link, session: PromptSession[str], show: ChatView,
                        host: bool, user: str) -> str:
    """Run a command or send a message; ``"leave"`` to leave."""
    room_mode = isinstance(link, RoomLink)
    command = commands.parse_input(text)
    action = command.action
    if action is Action.LEAVE:
        if host and room_mode:
            try:
                answer = await session.prompt_async(
                    "You are the host: leaving closes the room for everyone. Leave? [y/N] ")
            except (KeyboardInterrupt, EOFError):
                return "leave"
            except _Ended:
                return "stay"
            if answer.strip().lower() not in ("y", "yes"):
                show(render.notice_line("staying"))
                return "stay"
        return "leave"
    if action is Action.HELP:
        for line in help_lines(link.max_message, room_mode):
            show(render.notice_line(line), stamp=False)
        return "stay"
    if action in (Action.WHO, Action.VERIFY, Action.RETRY):
        answer_lines = await link.answer(command)
        if answer_lines is None:  # global chat has no members to list or keys to verify
            answer_lines = [render.warning_line(commands.unknown_text(text))]
        for index, answer_line in enumerate(answer_lines):
            show(answer_line, stamp=index == 0)  # the answer is stamped like a message
        return "stay"
    if action is Action.REFUSED:
        show(render.warning_line(command.text))
        return "stay"
    if action is Action.NOTHING:
        return "stay"
    try:
        link.send(command.text)
    except MessageTooLong as exc:
        show(render.warning_line(str(exc)))
        return "stay"
    show(render.chat_line(user, command.text, own=True))
    return "stay"


def run_room(plan: Plan, colour: bool) -> int:
    """The whole interactive room session, rejoins included. Returns the exit code."""
    asker = Asker(colour)
    history = InMemoryHistory()
    while True:
        try:
            joined = enter_room(plan, asker, colour)
        except Interrupted:
            return EXIT_INTERRUPTED
        except (JoinRefused, JoinFailed) as exc:
            if isinstance(exc, JoinFailed):
                say(str(exc), colour, warning=True)
            return EXIT_FAILED
        with new_runner() as runner:
            notice = runner.run(_room_chat(joined, colour, history, plan))
        if notice is None:
            return EXIT_OK
        room = render.sanitize(joined.room_raw.decode())
        lives = notice.event is NoticeEvent.DISCONNECTED and not joined.details.host
        # Say what yes does: back into the same room if it lives on, else open it again
        # under the same name (a room without its host is gone; whoever creates it hosts).
        question = (f"Rejoin room {room!r}?" if lives
                    else f"Open room {room!r} again (you become its host)?")
        try:
            again = asker.yes_no(question, default=False)
        except Interrupted:
            again = False
        if not again:
            return EXIT_ENDED
        plan.room = joined.room_raw.decode()
        if lives:
            plan.operation = Operation.JOIN
        else:
            plan.operation = Operation.CREATE
            plan.password, plan.password_given = None, False  # a new room: ask afresh


async def _room_chat(joined: Joined, colour: bool, history: InMemoryHistory,
                     plan: Plan) -> Notice | None:
    host = joined.details.host
    room = joined.room_raw.decode()
    with patch_stdout(raw=True):
        show = ChatView(colour)
        link = room_link(joined, show, plan.store, plan.identity)
        await link.open()
        role = " (host: leaving closes the room)" if host else ""
        intro = render.notice_line(
            f"you are in room {render.sanitize(room)!r} as {render.sanitize_name(joined.username)}"
            f"{role} · {describe_connection(joined)} · /help for commands")
        try:
            notice = await chat(link, joined.username,
                                f"room {render.sanitize(room)} · {status_text(joined)}", host,
                                colour, history, intro)
        finally:
            link.close()
    await _settle_output()
    # The last line is printed after patch_stdout has handed over the real stdout, so it
    # cannot be lost with the loop's pending writes.
    if notice is not None:
        show(render.warning_line(render.ended_explanation(notice, host)))
    elif host:
        show(render.notice_line("you left; the room is closed"))
    else:
        show(render.notice_line("you left the room"))
    return notice


def run_global(host: str, port: int, user: str | None, colour: bool) -> int:
    """Interactive Stage 1 chat."""
    if user is None:
        try:
            user = Asker(colour).username()
        except Interrupted:
            return EXIT_INTERRUPTED
    with new_runner() as runner:
        return runner.run(_global_chat(host, port, user, colour))


async def _global_chat(host: str, port: int, user: str, colour: bool) -> int:
    with patch_stdout(raw=True):
        show = ChatView(colour)
        try:
            link: GlobalLink = await open_global(host, port, user, show)
        except OSError as exc:
            print(f"ocm-chat: cannot chat on {host}:{port}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        intro = render.notice_line(f"global chat on {host}:{port} as {render.sanitize_name(user)}"
                                   " · /help for commands")
        try:
            await chat(link, user, f"global chat {host}:{port}", False, colour,
                       InMemoryHistory(), intro)
        finally:
            link.close()
    await _settle_output()
    return EXIT_OK


async def _settle_output(timeout: float = 2.0) -> None:
    """Let the last lines reach the terminal before the loop closes.

    ``patch_stdout``'s writer thread hands text written while a prompt is up to the loop
    (``call_soon_threadsafe``, then a ``run_in_terminal`` task). Closing the proxy joins
    the thread, so every hand-off is queued by now, but it has not run: without this,
    the line that explains why the chat ended could be dropped with the loop."""
    await asyncio.sleep(0)  # run the queued hand-offs: they create the write tasks
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
