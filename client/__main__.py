"""``ocm-chat``: the reference chat client (``python -m client``).

Interactive when stdin and stdout are terminals (prompt_toolkit UI, questions for whatever
the flags leave out); script mode otherwise (see ``client.script``). ``--stage1`` chats
on the global Stage 1 port instead of a room.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, NoReturn

from client import known_servers, render, script
from client.e2e.identity import IdentityKeys
from client.e2e_link import (
    IdentityChoice,
    must_be_encrypted,
    open_store,
    room_link,
    status_text,
)
from client.joinflow import pinning_tls_context
from client.keystore import KeyStore
from client.known_servers import KnownServers
from client.link import GlobalLink, RoomLink, open_global
from client.render import Line
from client.session import (
    DEFAULT_TIMEOUT_S,
    Joined,
    JoinFailed,
    JoinRefused,
    TcrpTarget,
    client_tls_context,
    describe_connection,
    join_room,
)
from wire import limits
from wire.codes import Framing, Operation, Status
from wire.tcrp import Request, RequestBody

EXIT_USAGE: Final = script.EXIT_USAGE
PLAIN_PORT: Final = limits.DEFAULT_TCP_PORT
TLS_PORT: Final = limits.DEFAULT_TLS_PORT

EPILOG: Final = """\
Without --create/--join, --user or a password option, ocm-chat asks (when run in a
terminal). With stdin not a terminal it runs in script mode: every input line is sent,
every received message is printed as one line ("name: text" or "* notice"), and EOF
leaves the room.

exit codes: 0 left normally; 1 could not join (refused, unreachable, timeout);
2 bad usage; 3 the room was closed or the server disconnected this client;
130/143 interrupted by SIGINT/SIGTERM (script mode) or Ctrl-C at a question.
"""


class _OneLineParser(argparse.ArgumentParser):
    """Every usage error (bad choice, unknown flag, value out of range) is one line and
    exit code 2; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="ocm-chat",
        description="Chat in an OCM room: create or join it over TCRP, then talk over UDP.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server", metavar="HOST", default="127.0.0.1",
                        help="server name or address (default: %(default)s)")
    parser.add_argument("--tcp-port", metavar="PORT", type=_port, default=None,
                        help=f"TCRP control port (default: {TLS_PORT}, the TLS port, or "
                             f"{PLAIN_PORT} with --no-tls)")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                        help="speak TCRP inside TLS (the default). Without --ca-file the "
                             "server's key is pinned on first use in "
                             "$XDG_CONFIG_HOME/ocm/known_servers (~/.config/ocm/...) and a "
                             "changed key is refused; --no-tls speaks plain TCRP, in clear")
    parser.add_argument("--ca-file", metavar="FILE",
                        help="verify the server's certificate against the CA certificates "
                             "(PEM) in FILE instead of pinning its key")
    room = parser.add_mutually_exclusive_group()
    room.add_argument("--create", metavar="ROOM", help="create ROOM and host it")
    room.add_argument("--join", metavar="ROOM", help="join the existing ROOM")
    parser.add_argument("--e2e", action="store_true",
                        help="with --create: make the room end-to-end encrypted; with "
                             "--join: refuse the room unless it is encrypted (exit 1). "
                             "Identity keys are kept per server and user in "
                             "$XDG_CONFIG_HOME/ocm/ (default ~/.config/ocm/)")
    parser.add_argument("--allow-plain", action="store_true",
                        help="accept a plain room this device saw encrypted before "
                             "(refused otherwise, so a server cannot downgrade it)")
    parser.add_argument("--key-passphrase-file", metavar="PATH",
                        help="encrypt the identity keys with a key stretched from the "
                             "passphrase in PATH when no OS keyring is available (else a "
                             "random key file beside them is used)")
    parser.add_argument("--user", metavar="NAME", help="your name in the room")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password-file", metavar="PATH",
                        help="read the room password from the first line of PATH "
                             "(protects the room with --create)")
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the room password from the first line of stdin "
                             "(script mode; in a terminal it is asked, hidden)")
    parser.add_argument("--stage1", action="store_true",
                        help="chat on the global Stage 1 port instead of in a room")
    parser.add_argument("--stage1-port", metavar="PORT", type=_port,
                        default=limits.DEFAULT_STAGE1_PORT,
                        help="Stage 1 global chat port (default: %(default)s)")
    parser.add_argument("--timeout", metavar="SECONDS", type=_positive, default=DEFAULT_TIMEOUT_S,
                        help="give up joining after this long (default: %(default)g)")
    parser.add_argument("--no-color", action="store_true",
                        help="no colours (also when NO_COLOR is set)")
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1..65535: {value}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _fail(text: str, code: int) -> int:
    print(f"ocm-chat: {text}", file=sys.stderr, flush=True)
    return code


def read_password_file(path: str) -> str:
    """The first line of ``path`` without its line ending; raise ``OSError``/``ValueError``."""
    with open(path, encoding="utf-8") as handle:
        line = handle.readline()
    return line.removesuffix("\n").removesuffix("\r")


def _check_names(args: argparse.Namespace) -> str | None:
    if args.user is not None and (problem := render.check_username(args.user)):
        return f"--user: {problem}"
    room = args.create if args.create is not None else args.join
    if room is not None and (problem := render.check_room(room)):
        return f"--{'create' if args.create is not None else 'join'}: {problem}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.stage1 and (args.create or args.join or args.password_file or args.password_stdin):
        parser.error("--stage1 is global chat: no room, no password")
    if problem := _check_names(args):
        parser.error(problem)
    if args.ca_file is not None and not args.tls:
        parser.error("--ca-file is for TLS: drop --no-tls")
    if args.e2e and args.stage1:
        parser.error("--e2e is for rooms (--create or --join), not global chat")
    if args.tcp_port is None:
        args.tcp_port = TLS_PORT if args.tls else PLAIN_PORT
    args.tls_context, args.pins = None, None
    if args.tls and args.ca_file is None:
        args.tls_context = pinning_tls_context()
        args.pins = KnownServers(known_servers.default_dir())
    elif args.tls:
        try:
            args.tls_context = client_tls_context(args.ca_file)
        except (OSError, ValueError) as exc:
            return _fail(f"cannot use the CA file {args.ca_file!r}: {exc}", EXIT_USAGE)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    colour = not args.no_color and not os.environ.get("NO_COLOR")  # no-color.org
    try:
        if args.stage1:
            if interactive:
                from client import ui  # prompt_toolkit is only loaded for a terminal

                return ui.run_global(args.server, args.stage1_port, args.user, colour)
            return _script_global(args)
        password, given = None, False
        if args.password_file is not None:
            try:
                password, given = read_password_file(args.password_file), True
            except (OSError, ValueError) as exc:
                return _fail(f"cannot read the password file {args.password_file!r}: {exc}",
                             EXIT_USAGE)
        elif args.password_stdin and not interactive:
            line = script.read_line_unbuffered(sys.stdin.fileno())
            password, given = (line or b"").decode("utf-8", "replace"), True
        if interactive:
            from client import ui

            plan = ui.Plan(args.server, args.tcp_port, args.timeout, user=args.user,
                           operation=_operation(args), room=args.create or args.join,
                           password=password or None, password_given=given,
                           tls=args.tls_context, ca_file=args.ca_file, pins=args.pins,
                           e2e=args.e2e, store=_store(args), allow_plain=args.allow_plain)
            return ui.run_room(plan, colour)
        return _script_room(args, password or None)
    except KeyboardInterrupt:
        return script.EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        if exc.name != "prompt_toolkit":  # the terminal UI's one extra dependency
            raise
        return _fail("the terminal UI needs prompt_toolkit, from the client extra: "
                     "pip install 'ocm[client]' (script mode works without it)", EXIT_USAGE)


def _target(args: argparse.Namespace) -> TcrpTarget:
    return TcrpTarget(args.server, args.tcp_port, args.tls_context, args.timeout,
                      args.ca_file, args.pins)


def _operation(args: argparse.Namespace) -> Operation | None:
    if args.create is not None:
        return Operation.CREATE
    if args.join is not None:
        return Operation.JOIN
    return None


def _script_room(args: argparse.Namespace, password: str | None) -> int:
    operation = _operation(args)
    if args.user is None or operation is None:
        return _fail("stdin is not a terminal, so nothing can be asked: "
                     "give --user and --create ROOM or --join ROOM", EXIT_USAGE)
    room = args.create or args.join
    store = _store(args)
    choice = IdentityChoice(store, args.server, args.tcp_port, args.user, required=args.e2e,
                            room=room, operation=operation, allow_plain=args.allow_plain)
    try:
        e2e = must_be_encrypted(store, args.server, args.tcp_port, room, args.e2e, operation,
                                args.allow_plain)
        joined = join_room(_target(args), Request.of(operation, room, RequestBody(
            args.user, password, Framing.OCM1R, e2e=e2e)), keys_for=choice,
            e2e_for=choice.seen_encrypted)
    except JoinRefused as refused:
        todo = "give it with --password-file or --password-stdin" if (
            refused.status == Status.INVALID_PASSWORD and password is None) else None
        return _fail(render.refusal_text(refused.status, refused.error, room, args.user,
                                         password is not None, todo), script.EXIT_FAILED)
    except JoinFailed as exc:
        if choice.required and choice.identity is None:
            script.warn(f"cannot use the identity key: {choice.error}; --e2e needs it")
            return EXIT_USAGE
        return _fail(str(exc), script.EXIT_FAILED)
    if choice.error is not None:
        script.warn(f"cannot use the identity key: {choice.error}; encrypted rooms cannot "
                    "be joined")
    identity = choice.identity
    with script.new_runner() as runner:
        return runner.run(script.run_script(_room_opener(joined, store, identity)))


def _store(args: argparse.Namespace) -> KeyStore:
    passphrase = args.key_passphrase_file
    return open_store(os.environ, Path(passphrase) if passphrase else None)


def _room_opener(joined: Joined, store: KeyStore | None,
                 identity: IdentityKeys | None) -> script.OpenLink:
    async def open_link(on_line: Callable[[Line], None]) -> RoomLink:
        link = room_link(joined, on_line, store, identity)
        role = "host of" if joined.details.host else "in"
        room = render.sanitize(joined.room_raw.decode())
        kind = "encrypted room" if joined.details.e2e else "room"
        print(f"ocm-chat: {render.sanitize_name(joined.username)} is {role} {kind} {room!r} "
              f"({status_text(joined)}); messages up to {link.max_message} bytes; "
              f"{describe_connection(joined)}",
              file=sys.stderr, flush=True)
        await link.open()
        return link

    return open_link


def _script_global(args: argparse.Namespace) -> int:
    if args.user is None:
        return _fail("stdin is not a terminal, so nothing can be asked: give --user",
                     EXIT_USAGE)

    async def open_link(on_line: Callable[[Line], None]) -> GlobalLink:
        link = await open_global(args.server, args.stage1_port, args.user, on_line)
        print(f"ocm-chat: {args.user} in global chat on {args.server}:{args.stage1_port}; "
              f"messages up to {link.max_message} bytes", file=sys.stderr, flush=True)
        return link

    try:
        with script.new_runner() as runner:
            return runner.run(script.run_script(open_link))
    except OSError as exc:
        return _fail(f"cannot chat on {args.server}:{args.stage1_port}: {exc}", script.EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
