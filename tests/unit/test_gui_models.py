"""client.gui.models: the desktop client's state, without Qt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from client import render
from client.e2e.identity import fingerprint
from client.gui import models
from client.gui.models import ConnectRequest, Entry, Unread
from client.keystore import Trust
from client.refusals import Field
from wire.codes import Operation, Status
from wire.e2e import MemberInfo, PublicKeys


@pytest.mark.parametrize(("status", "sent", "server", "field", "text"), [
    (Status.INVALID_PASSWORD, True, "wrong password", Field.PASSWORD,
     "Wrong password for room 'lobby'."),
    (Status.INVALID_PASSWORD, False, "", Field.PASSWORD,
     "Room 'lobby' is protected by a password. Enter it."),
    (Status.ROOM_NOT_FOUND, False, "", Field.ROOM,
     "There is no room named 'lobby'. Check the name, or create it."),
    (Status.ROOM_EXISTS, False, "odd", Field.ROOM,
     "A room named 'lobby' already exists. Join it, or pick another name."),
    (Status.USERNAME_TAKEN, False, "", Field.NAME,
     "Someone in 'lobby' is already called 'bob'. Pick another name."),
    (Status.UNAVAILABLE, False, "", Field.SERVER,
     "The server cannot take rooms right now. Try again later."),
    (Status.INVALID_REQUEST, False, "", Field.FORM, "The server refused the request as invalid."),
    (77, False, "odd\x1b", Field.FORM, "The server refused the request (status 77) (odd\\x1b)."),
])
def test_refusal_goes_next_to_its_field(status: Status | int, sent: bool, server: str,
                                        field: Field, text: str) -> None:
    assert models.refusal(status, sent, server, room="lobby", user="bob") == (field, text)


def test_terminal_and_gui_word_a_refusal_alike() -> None:
    """One table: the GUI's sentences are the terminal's line, capitalised."""
    for status in list(Status)[1:]:
        line = render.refusal_text(status, "", "lobby", "bob")
        _, text = models.refusal(status, True, "", room="lobby", user="bob")
        assert text.lower().replace(". ", ": ").rstrip(".") == line.lower()


def test_join_failures_say_what_to_do() -> None:
    assert models.unreachable_text("connection refused") == (
        "Server unreachable: connection refused")
    assert models.unreachable_text("the server at x made a plain room", reached=True) == (
        "The server at x made a plain room.")
    assert models.unreachable_text("bad certificate", tls=True) == (
        "No secure connection: bad certificate.")


def test_validate_before_connecting() -> None:
    assert models.validate("h", "ann", "room", "") == {}
    problems = models.validate(" ", " ann", "", "p" * 256)
    assert set(problems) == {Field.SERVER, Field.NAME, Field.ROOM, Field.PASSWORD}
    assert problems[Field.NAME] == (
        "The username starts or ends with whitespace (shown as ' ann').")


def test_remember_keeps_recent_first_unique_and_bounded() -> None:
    recent: list[str] = []
    for value in ["a", "b", "a", "", *map(str, range(20))]:
        recent = models.remember(recent, value)
    assert recent[0] == "19" and len(recent) == models.MAX_RECENT
    assert models.remember(["x", "y", "x"][:2], "y") == ["y", "x"]


def test_again_recreates_a_gone_room_and_rejoins_a_living_one() -> None:
    request = ConnectRequest("h", 1, Operation.JOIN, "r", "u", "pw", tls=True, ca_file="c")
    assert request.again(room_gone=True).operation is Operation.CREATE
    assert request.again(room_gone=False) == request


def test_unread_counts_only_others_chat_when_unseen() -> None:
    unread = Unread()
    chat = Entry(render.chat_line("bob", "hi"), "12:00")
    assert not unread.arrived(chat, seen=True)
    assert unread.arrived(chat, seen=False)
    assert not unread.arrived(Entry(render.chat_line("me", "x", own=True), "12:00"), False)
    assert not unread.arrived(Entry(render.notice_line("n"), "12:00"), False)
    assert unread.count == 1
    assert models.window_title("r\x1b", unread.count) == "(1) r\\x1b — OCM"
    unread.clear()
    assert models.window_title("r", unread.count) == "r — OCM"
    assert models.window_title(None, 0) == "OCM"


def test_byte_count_is_utf8_bytes() -> None:
    count = models.byte_count("日本", 6)
    assert (count.used, count.over, count.label()) == (6, False, "6 / 6 bytes")
    assert models.byte_count("日本!", 6).over


def test_sender_colour_matches_ocm_chat() -> None:
    assert models.xterm_rgb(25) == (0, 95, 175)
    assert models.xterm_rgb(232) == (8, 8, 8)
    name = "alice"
    assert models.sender_rgb(name) == models.xterm_rgb(render.user_colour(name))


def test_sender_colours_are_lifted_on_dark_backgrounds() -> None:
    assert models.is_dark((30, 30, 30)) and not models.is_dark((239, 239, 239))
    assert models.xterm_rgb(25) == (0, 95, 175)  # a dark blue: dim on near-black
    for name in ("bob", "alice", "carol"):
        light, dark = models.sender_rgb(name), models.sender_rgb(name, dark=True)
        assert all(d >= c for c, d in zip(light, dark, strict=True))
    assert models.sender_rgb("bob", dark=True) != models.sender_rgb("bob")


def test_models_import_no_qt() -> None:
    """The state stays testable without Qt: models imports no PySide6."""
    tree = ast.parse(Path(models.__file__).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith(("PySide6", "qasync")) for name in names)


def test_member_rows_mark_the_host_us_and_each_keys_trust() -> None:
    ann, bo, cy = (PublicKeys(bytes([i]) * 32, bytes([i + 64]) * 32) for i in (1, 2, 3))
    members = (MemberInfo("ann", True, ann), MemberInfo("bo", False, bo),
               MemberInfo("cy", False, cy))
    trust = {"bo": Trust.VERIFIED, "cy": Trust.CHANGED}
    rows = models.member_rows(members, "ann", lambda user: trust[user])
    assert [(r.label(), r.fingerprint, r.trust_text()) for r in rows] == [
        ("ann (host, you)", fingerprint(ann), "your key"),
        ("bo", fingerprint(bo), "✔ verified"),
        ("cy", fingerprint(cy), "⚠ key changed"),
    ]
    assert rows[1].verified and not rows[2].verified
    plain = models.member_rows((MemberInfo("ann", True), MemberInfo("bo\x1b", False)),
                               "bo\x1b", None)
    assert [(r.label(), r.fingerprint, r.trust) for r in plain] == [
        ("ann (host)", None, None), ("bo\\x1b (you)", None, None)]


def test_resumed_text_says_how_many_could_not_be_recovered() -> None:
    assert models.resumed_text(0) == "Reconnected: everything recovered"
    assert models.resumed_text(1) == "Reconnected: 1 message could not be recovered"
    assert models.resumed_text(3) == "Reconnected: 3 messages could not be recovered"


def test_security_text_always_says_encryption_and_tls() -> None:
    assert models.security_text(True, True) == "end-to-end encrypted · TLS"
    assert models.security_text(False, False) == (
        "not encrypted · no TLS")


def test_selection_text_is_the_characters_in_one_message_and_lines_across_several() -> None:
    entries = [models.Entry(render.chat_line("ann", "first line\\x0asecond"), "10:00"),
               models.Entry(render.notice_line("bo joined the room"), "10:01"),
               models.Entry(render.chat_line("me", "reply", own=True), "10:02")]
    assert models.selection_text(entries, (0, 6), (0, 13)) == "line\nse"
    assert models.selection_text(entries, (2, 3), (0, 11)) == (  # either order
        "10:00  ann: second\n10:01  — bo joined the room\n10:02  me (you): rep")
    # ending at the very start of an entry leaves it out
    assert models.selection_text(entries, (0, 0), (2, 0)) == (
        "10:00  ann: first line\nsecond\n10:01  — bo joined the room")
