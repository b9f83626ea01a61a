"""client.render: deliveries -> lines, sanitising, colours, refusal texts (pure)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from client import render
from client.render import Kind, Line, MessageTooLong
from wire.chat import (
    FramedChat,
    Notice,
    encode_framed_chat,
    encode_framed_notice,
    encode_plain_chat,
    encode_plain_notice,
)
from wire.codes import Framing, NoticeEvent, Reason, Status
from wire.stage1 import encode_stage1

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

NOTICES = [
    Notice(NoticeEvent.JOINED, user="bob"),
    Notice(NoticeEvent.LEFT, user="bob", reason=Reason.EXIT),
    Notice(NoticeEvent.LEFT, user="bob", reason=Reason.INACTIVE),
    Notice(NoticeEvent.LEFT, user="bob", reason=Reason.SEND_FAILURES),
    Notice(NoticeEvent.CLOSED),
    Notice(NoticeEvent.DISCONNECTED, reason=Reason.INACTIVE),
    Notice(NoticeEvent.DISCONNECTED, reason=Reason.SEND_FAILURES),
    Notice(NoticeEvent.ERROR, over=17),
]


def test_render_is_pure() -> None:
    """render.py is the sans-IO part of the client: no I/O, clock or event loop."""
    source = (Path(__file__).resolve().parents[2] / "client" / "render.py").read_text()
    imported = {alias.name.partition(".")[0] for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.partition(".")[0] for node in ast.walk(ast.parse(source))
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"asyncio", "socket", "time", "os", "sys", "threading",
                           "prompt_toolkit", "datetime"}


# --- sanitising -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, こんにちは", "plain text, こんにちは"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # OSC: retitle the terminal
        ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear screen, cursor home
        ("a\rb\nc\td\x00", "a\\x0db\\x0ac\\x09d\\x00"),  # no line tricks, no NUL
        ("del\x7f", "del\\x7f"),
        ("\x9b31m", "\\x9b31m"),  # C1 CSI
        ("\x85next", "\\x85next"),  # C1 NEL
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("\u2066x\u2069", "\\u2066x\\u2069"),  # isolates
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
    ],
)
def test_sanitize_makes_controls_visible(raw: str, shown: str) -> None:
    assert render.sanitize(raw) == shown


def test_sanitize_leaves_no_control_character() -> None:
    every = "".join(map(chr, range(0x00, 0x250)))
    clean = render.sanitize(every)
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in clean)


def test_received_text_and_names_are_sanitised_in_lines() -> None:
    line = render.delivery_line(FramedChat("ev\x1bil", "\x1b[31mred"))
    assert line == Line(Kind.CHAT, "\\x1b[31mred", "ev\\x1bil")
    notice = render.delivery_line(Notice(NoticeEvent.JOINED, user="x\x1b[2J"))
    assert "\x1b" not in notice.text


# --- colours ----------------------------------------------------------------------------------
def test_user_colour_is_stable_and_from_the_palette() -> None:
    assert render.user_colour("alice") == render.user_colour("alice")
    assert render.user_colour("alice") in render.USER_COLOURS
    # CRC-32, not the salted hash(): the same in every process (pinned value).
    assert render.user_colour("alice") == render.USER_COLOURS[0x278EBC47 % 16]
    assert len({render.user_colour(f"user{i}") for i in range(200)}) == len(render.USER_COLOURS)


def test_format_ansi_colours_the_name_and_stamps_the_time() -> None:
    text = render.format_ansi(render.chat_line("bob", "hi"), "09:05")
    assert f"38;5;{render.user_colour('bob')}m" in text
    assert ANSI_RE.sub("", text) == "09:05 bob: hi"


def test_format_ansi_without_colour_has_no_escape_at_all() -> None:
    lines = [render.chat_line("bob", "hi"), render.chat_line("me", "x", own=True),
             render.notice_line("n"), render.warning_line("w")]
    texts = [render.format_ansi(line, "12:00", colour=False) for line in lines]
    assert texts == ["12:00 bob: hi", "12:00 me: x", "12:00 * n", "12:00 * w"]


def test_notices_and_warnings_have_distinct_styles() -> None:
    notice = render.format_ansi(render.notice_line("n"))
    warning = render.format_ansi(render.warning_line("w"))
    chat = render.format_ansi(render.chat_line("bob", "n"))
    assert notice.startswith("\x1b[") and warning.startswith("\x1b[")
    assert notice[:8] != warning[:8] != chat[:8]


# --- deliveries -------------------------------------------------------------------------------
def test_script_lines_are_name_text_and_star_notice() -> None:
    assert render.delivery_line(FramedChat("bob", "hi: there")).plain() == "bob: hi: there"
    texts = [render.delivery_line(n).plain() for n in NOTICES]
    assert texts == [
        "* bob joined the room",
        "* bob left the room",
        "* bob was removed for inactivity",
        "* bob was removed: messages to them kept failing",
        "* the room was closed",
        "* you were disconnected: nothing was sent for too long",
        "* you were disconnected: messages to you kept failing",
        "* your last message was not delivered: it is 17 bytes over the limit",
    ]


@pytest.mark.parametrize("notice", NOTICES)
def test_framed_notices_decode_to_their_line(notice: Notice) -> None:
    item = render.decode_delivery(encode_framed_notice(notice), Framing.OCM1)
    assert item == notice
    kind = render.delivery_line(notice).kind
    final = notice.event in (NoticeEvent.CLOSED, NoticeEvent.DISCONNECTED, NoticeEvent.ERROR)
    assert kind is (Kind.WARNING if final else Kind.NOTICE)


@pytest.mark.parametrize("notice", NOTICES)
def test_plain_notices_are_recognised(notice: Notice) -> None:
    item = render.decode_delivery(encode_plain_notice(notice), Framing.PLAIN)
    assert isinstance(item, Notice) and item.event is notice.event
    assert item.user == notice.user and item.over == notice.over


def test_chat_decodes_in_both_framings() -> None:
    message = "a: b がチャットルーム".encode()
    assert render.decode_delivery(encode_framed_chat("bob", message), Framing.OCM1) == \
        FramedChat("bob", "a: b がチャットルーム")
    assert render.decode_delivery(encode_plain_chat("bob", message), Framing.PLAIN) == \
        FramedChat("bob", "a: b がチャットルーム")


@pytest.mark.parametrize("data", [b"\x05ab", b"\x00not json", b"\x00[]", b"\x00{}",
                                  b"\x03bob\xff\xfe", b"", b"x" * 5000])
def test_malformed_framed_deliveries_are_dropped_not_raised(data: bytes) -> None:
    assert render.decode_delivery(data, Framing.OCM1) is None


def test_plain_text_without_separator_is_dropped() -> None:
    assert render.decode_delivery(b"no separator here", Framing.PLAIN) is None


def test_stage1_relays_decode_and_keepalives_are_ignored() -> None:
    assert render.decode_global(encode_stage1("ann", "hello")) == FramedChat("ann", "hello")
    assert render.decode_global(encode_stage1("ann", "")) is None
    assert render.decode_global(b"\x00x") is None
    assert render.decode_global(b"\x09ab") is None


def test_final_notices() -> None:
    assert render.is_final(Notice(NoticeEvent.CLOSED))
    assert render.is_final(Notice(NoticeEvent.DISCONNECTED, reason=Reason.INACTIVE))
    assert not render.is_final(Notice(NoticeEvent.LEFT, user="x", reason=Reason.EXIT))
    assert not render.is_final(Notice(NoticeEvent.ERROR, over=1))


def test_ended_explanations() -> None:
    closed = render.ended_explanation(Notice(NoticeEvent.CLOSED), host=False)
    assert closed == "the host left, so the room is gone"
    shutdown = Notice(NoticeEvent.CLOSED, reason=Reason.SHUTDOWN)
    for host in (False, True):  # on shutdown the host is told too, and not "host left"
        assert render.ended_explanation(shutdown, host) == (
            "the server is shutting down, so the room is gone")
    assert render.delivery_line(shutdown).plain() == "* the server is shutting down"
    inactive = Notice(NoticeEvent.DISCONNECTED, reason=Reason.INACTIVE)
    assert "too long" in render.ended_explanation(inactive, host=False)
    assert "closed the room" in render.ended_explanation(inactive, host=True)


# --- local refusals and validation ------------------------------------------------------------
def test_message_over_the_limit_is_refused_with_the_limit_shown() -> None:
    assert render.check_length("x" * 10, 10) == b"x" * 10
    with pytest.raises(MessageTooLong) as info:
        render.check_length("é" * 6, 10)  # 12 bytes: the limit is in bytes, not characters
    assert (info.value.size, info.value.limit) == (12, 10)
    assert str(info.value) == ("not sent: the message is 12 bytes, the limit in this room is "
                               "10 bytes (2 too many)")


@pytest.mark.parametrize(
    ("name", "ok"),
    [("alice", True), ("ア" * 85, True), ("ア" * 86, False), ("", False), (" bob", False),
     ("bob ", False), ("b\x1bob", False), ("b\x85", False), ("b\u00a0c", True),
     ("al\u200bice", False), ("\u202eecila", False), ("a\u2028b", False), ("bob: hi", False),
     ("a:b", True)],
)
def test_check_username_follows_the_server_rules(name: str, ok: bool) -> None:
    assert (render.check_username(name) is None) is ok


def test_check_username_shows_the_hidden_character() -> None:
    assert render.check_username("al\u200bice") == (
        "the username contains an invisible or line-breaking character U+200B "
        "(shown as 'al\\\\u200bice')")


def test_names_show_invisible_characters() -> None:
    """A name with a zero-width or format character cannot pass for another (§1.2)."""
    assert render.sanitize_name("alice") == "alice"
    assert render.sanitize_name("al\u200bice") == "al\\u200bice"
    assert render.sanitize_name("\ufeffbob\u00ad") == "\\ufeffbob\\xad"
    assert render.sanitize_name("a\U000e0001b") == "a\\U000e0001b"  # LANGUAGE TAG
    assert render.sanitize_name("a\u2028b\x1b") == "a\\u2028b\\x1b"
    assert render.sanitize_name("a\u00a0b\u3000c") == "a\u00a0b\u3000c"  # spaces are visible
    line = render.delivery_line(FramedChat("al\u200dice", "hi\u200d"))
    assert line.plain() == "al\\u200dice: hi\u200d"  # names strict, messages keep emoji ZWJ
    joined = render.delivery_line(Notice(NoticeEvent.JOINED, user="al\u200bice"))
    assert joined.plain() == "* al\\u200bice joined the room"


def test_check_room() -> None:
    assert render.check_room("lobby") is None
    assert render.check_room("") is not None
    assert render.check_room("x" * 256) is not None


@pytest.mark.parametrize("status", list(Status)[1:] + [42])
def test_every_refusal_is_one_safe_line(status: Status | int) -> None:
    text = render.refusal_text(status, "the server's words\x1b[2J", "lobby", "bob")
    assert "\n" not in text and "\x1b" not in text
    restates = {Status.ROOM_EXISTS, Status.INVALID_PASSWORD, Status.USERNAME_TAKEN}
    assert ("the server's words\\x1b[2J" in text) is (status not in restates)
    if not isinstance(status, Status):
        assert text == "the server refused the request (status 42) (the server's words\\x1b[2J)"


def test_refusal_texts_name_the_room_and_user() -> None:
    assert "'lobby'" in render.refusal_text(Status.ROOM_NOT_FOUND, "", "lobby", "bob")
    taken = render.refusal_text(Status.USERNAME_TAKEN, "", "lobby", "bob")
    assert taken == "someone in 'lobby' is already called 'bob': pick another name"


@pytest.mark.parametrize(("status", "server", "sent", "line"), [
    # The server's words restate ours: one clear line, said once.
    (Status.INVALID_PASSWORD, "wrong password", True, "wrong password for room 'lobby'"),
    (Status.INVALID_PASSWORD, "this room needs a password", False,
     "room 'lobby' is protected by a password: enter it"),
    (Status.ROOM_NOT_FOUND, "no room named 'lobby'", True,
     "there is no room named 'lobby': check the name, or create it"),
    (Status.ROOM_EXISTS, "a room named 'lobby' exists", True,
     "a room named 'lobby' already exists: join it, or pick another name"),
    # They add something: kept once, in parentheses.
    (Status.ROOM_NOT_FOUND, "room 'lobby' closed", True,
     "there is no room named 'lobby' (room 'lobby' closed): check the name, or create it"),
    (Status.ROOM_FULL, "the room has 8 members", True,
     "room 'lobby' is full (the room has 8 members)"),
    (Status.UNAVAILABLE, "the server is shutting down", True,
     "the server cannot take rooms right now (the server is shutting down): try again later"),
])
def test_refusal_lines_say_it_once(status: Status, server: str, sent: bool, line: str) -> None:
    assert render.refusal_text(status, server, "lobby", "bob", sent) == line
