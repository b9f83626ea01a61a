"""The rules of the conversation view, without widgets: grouping, day labels, avatars'
initials, links, multi-line text, member rows, transcript lines."""

from __future__ import annotations

import pytest

from client import render
from client.gui import models
from client.gui.models import Entry, Member
from client.keystore import Trust


def chat(user: str, clock: str, day: str = "2026-12-07", own: bool = False) -> Entry:
    return Entry(render.chat_line(user, "hi", own=own), clock, day)


def test_a_group_is_one_sender_in_a_row_on_one_day_without_a_pause() -> None:
    first = chat("bob", "10:00")
    assert models.starts_group(None, first)
    assert not models.starts_group(first, chat("bob", "10:05"))  # 5 minutes: still one
    assert models.starts_group(first, chat("bob", "10:06"))  # a pause
    assert models.starts_group(first, chat("carol", "10:01"))
    assert models.starts_group(first, chat("bob", "10:01", day="2026-12-08"))
    notice = Entry(render.notice_line("carol joined the room"), "10:01", "2026-12-07")
    assert models.starts_group(notice, chat("bob", "10:02"))
    mine = chat("bob", "10:01", own=True)  # our own name, same text: another side
    assert models.starts_group(first, mine)


def test_day_labels() -> None:
    assert models.day_label("2026-12-07", "2026-12-07") == "Today"
    assert models.day_label("2026-12-06", "2026-12-07") == "Yesterday"
    assert models.day_label("2026-01-01", "2026-12-07") == "Thursday 1 January 2026"
    assert models.day_label("not a day", "2026-12-07") == "not a day"


@pytest.mark.parametrize(("name", "letters"), [
    ("bob", "B"), ("bob smith", "BS"), ("mary-jane", "MJ"), ("さくら", "さ"), ("", "?"),
    ("a_b_c", "AB"),
])
def test_initials(name: str, letters: str) -> None:
    assert models.initials(name) == letters


def test_links_are_http_only_and_leave_trailing_punctuation_out() -> None:
    text = ("see https://example.org/a_(b)), www.example.com. and "
            "javascript:alert(1) file:///etc/passwd ftp://x.org")
    assert models.find_links(text) == [
        (4, 29, "https://example.org/a_(b)"),
        (32, 47, "https://www.example.com"),
    ]
    assert models.find_links("HTTP://EXAMPLE.ORG!") == [(0, 18, "HTTP://EXAMPLE.ORG")]


def test_multi_line_messages_show_their_line_breaks_and_nothing_else() -> None:
    line = render.chat_line("bob", "one\ntwo\x1b[2J\u202e")
    assert line.text == "one\\x0atwo\\x1b[2J\\u202e"  # sanitised by the shared library
    assert models.shown_text(line.text) == "one\ntwo\\x1b[2J\\u202e"


def test_member_rows_are_one_line_with_badges_and_details_hold_the_key() -> None:
    assert Member("ann", host=True, me=True).row_text() == "ann (you) ★"
    assert Member("bo\u200b").row_text() == "bo\\u200b"
    verified = Member("bo", fingerprint="a1 a2 a3 a4 a5", trust=Trust.VERIFIED)
    assert verified.row_text() == "bo 🔒 ✔"
    assert verified.details() == "bo\nkey fingerprint:\na1 a2 a3 a4\na5\n✔ verified"
    changed = Member("cy", host=True, fingerprint="ff", trust=Trust.CHANGED)
    assert changed.row_text() == "cy ★ 🔒 ⚠"
    assert changed.details() == "cy (host)\nkey fingerprint:\nff\n⚠ key changed"


def test_transcript_lines() -> None:
    assert chat("bob", "10:00").transcript() == "10:00  bob: hi"
    assert chat("me", "10:01", own=True).transcript() == "10:01  me (you): hi"
    assert Entry(render.warning_line("gone"), "10:02").transcript() == "10:02  ⚠ gone"
    assert Entry(render.notice_line("bob left"), "10:03").transcript() == "10:03  — bob left"
