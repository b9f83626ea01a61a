"""The room window and main window without a server: scrolling, unread count, notices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import qasync
from PySide6.QtCore import QEvent, QPoint, QSettings, Qt
from PySide6.QtGui import QColor, QGuiApplication, QHelpEvent, QImage, QPalette
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QLabel,
    QMenu,
    QToolTip,
    QWidget,
)
from pytestqt.qtbot import QtBot

from client import render
from client.gui import chatview
from client.gui.app import MainWindow
from client.gui.chatview import RowKind
from client.gui.connect import ConnectScreen
from client.gui.emoji import EmojiPicker
from client.gui.help import command_rows as help_rows
from client.gui.models import Member
from client.gui.room import RoomView
from client.gui.theme import Theme
from client.gui.verify import VerifyDialog
from client.keystore import Trust
from client.refusals import Field
from wire.codes import Operation
from wire.limits import DEFAULT_TCP_PORT as PLAIN
from wire.limits import DEFAULT_TLS_PORT as TLS


def filled_room(qtbot: QtBot, lines: int) -> RoomView:
    view = RoomView()
    qtbot.addWidget(view)
    view.resize(600, 400)
    view.show()
    view.enter("busy", "me", host=False, max_message=100)
    for i in range(lines):
        view.append(render.chat_line(f"user{i % 5}", f"message {i}"))
    return view


def test_new_lines_do_not_yank_a_view_scrolled_up(qtbot: QtBot) -> None:
    view = filled_room(qtbot, 300)
    bar = view.log.verticalScrollBar()
    assert view.at_bottom() and bar.value() > 0
    bar.setValue(10)
    for i in range(3):
        view.append(render.chat_line("late", f"late {i}"))
    assert bar.value() == 10
    assert view.marker.isVisible() and view.marker.text() == "↓ 3 new messages"
    qtbot.mouseClick(view.marker, Qt.MouseButton.LeftButton)
    assert view.at_bottom() and not view.marker.isVisible()
    view.append(render.chat_line("later", "follows"))  # at the bottom: it stays there
    assert view.at_bottom() and not view.marker.isVisible()
    assert len(view.scrollback) == 304


def test_styles_and_byte_counter(qtbot: QtBot) -> None:
    view = filled_room(qtbot, 0)
    view.append(render.chat_line("me", "mine", own=True), clock="12:34")
    view.append(render.notice_line("bob joined the room"), clock="12:35")
    view.append(render.warning_line("the room was closed"), clock="12:36")
    text = view.log.toPlainText().splitlines()
    assert text == ["12:34  me (you): mine", "12:35  — bob joined the room",
                    "12:36  ⚠ the room was closed"]
    view.input.setText("é" * 50)  # 100 bytes: exactly the limit
    assert view.counter.text() == "100 / 100 bytes" and not view.byte_count().over
    view.input.setText("é" * 50 + "!")
    assert view.counter.text() == "101 / 100 bytes" and "color" in view.counter.styleSheet()


def test_received_control_characters_are_shown_not_obeyed(qtbot: QtBot) -> None:
    view = filled_room(qtbot, 0)
    view.append(render.chat_line("x\x1b[2J", "<b>bold?</b>\u202e"), clock="00:00")
    assert view.log.toPlainText() == "00:00  x\\x1b[2J: <b>bold?</b>\\u202e"


def test_unread_count_in_title_and_notification_when_not_focused(
        qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings) -> None:
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    window.open_preview("r", "me", max_message=100)
    session = window.sessions[0]
    other = QWidget()
    qtbot.addWidget(other)
    other.show()
    other.activateWindow()
    qtbot.waitUntil(lambda: not window.isActiveWindow(), timeout=5000)
    window._on_line(session, render.chat_line("bob", "one"))
    window._on_line(session, render.notice_line("carol joined the room"))  # not counted
    window._on_line(session, render.chat_line("bob", "two"))
    assert window.windowTitle() == "(2) r — OCM"
    assert window.room_list.row_of(session.item).unread == 2
    assert window.notifications == [("bob", "one"), ("bob", "two")]
    window.notify_action.setChecked(False)
    window._on_line(session, render.chat_line("bob", "three"))
    assert window.notifications[-1] == ("bob", "two")
    assert settings.value("notifications") in (False, "false")
    window.activateWindow()
    qtbot.waitUntil(lambda: window.windowTitle() == "r — OCM", timeout=5000)
    assert window.room_list.row_of(session.item).unread == 0


def test_rooms_side_by_side_unread_per_room_and_switching(
        qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings) -> None:
    """Several rooms in one window: a message in a room not shown counts in its row
    and in the title; selecting the room shows it and clears its count; a room whose
    chat ended is greyed in the list and stays readable until closed."""
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    window.activateWindow()
    window.open_preview("one", "me", server="a.example")
    window.open_preview("two", "me", encrypted=True, server="b.example")
    one, two = window.sessions
    assert window.pages.currentWidget() is two.view and window.windowTitle() == "two — OCM"
    window._on_line(one, render.chat_line("bob", "while you were away"))
    assert window.room_list.row_of(one.item).unread == 1
    assert window.room_list.row_of(one.item).preview == "bob: while you were away"
    assert window.windowTitle() == "(1) two — OCM"
    row = window.room_list.row_of(two.item)
    assert (row.encrypted, row.server, row.unread) == (True, "b.example:9000", 0)
    log = one.view.log  # "New messages" above the first one not seen
    assert log.rows[log.unread_row].kind == RowKind.UNREAD
    assert log.rows[log.unread_row + 1].entry == len(log.entries) - 1
    assert all(log.tops[i + 1] - log.tops[i] == row.height for i, row in enumerate(log.rows))
    window.cycle_room(1)  # Ctrl+PgDown wraps to the first
    assert window.pages.currentWidget() is one.view and window.windowTitle() == "one — OCM"
    assert window.room_list.row_of(one.item).unread == 0
    assert log.unread_row >= 0  # still shown while you read
    window.cycle_room(1)
    assert log.unread_row == -1 and all(row.kind != RowKind.UNREAD for row in log.rows)
    assert all(log.tops[i + 1] - log.tops[i] == row.height for i, row in enumerate(log.rows))
    window.cycle_room(1)
    one.view.show_ended("You left the room.")
    window._refresh_row(one)
    ended = [action.text() for action in window.room_menu(one).actions()]
    assert ended == ["Rejoin", "Save transcript…", "Close room"]
    assert window.room_list.row_of(one.item).ended
    assert "while you were away" in one.view.log.toPlainText()
    assert not one.view.input.isEnabled() and one.view.log.greyed
    qtbot.mouseClick(one.view.close_button, Qt.MouseButton.LeftButton)
    assert window.sessions == [two] and window.pages.currentWidget() is two.view
    window.close_session(two)
    assert window.pages.currentWidget() is window.connect_screen
    assert window.windowTitle() == "OCM"


def test_transcript_help_dialog_and_every_command_in_a_menu(
        qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings, tmp_path: Path) -> None:
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    view = window.open_preview("lobby", "me", max_message=4051)
    view.append(render.chat_line("bob", "hi 日本語 😀"), clock="09:00", day="2026-12-06")
    view.append(render.chat_line("me", "hello", own=True), clock="09:01", day="2026-12-07")
    view.append(render.notice_line("bob left the room"), clock="09:02", day="2026-12-07")
    path = tmp_path / "lobby.txt"
    window.save_transcript(window.sessions[0], path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# lobby on 127.0.0.1:9000, saved ")
    assert lines[1].startswith("-- ") and lines[2] == "09:00  bob: hi 日本語 😀"
    assert lines[3].startswith("-- ") and lines[4:] == ["09:01  me (you): hello",
                                                        "09:02  — bob left the room"]
    window.ask_save_transcript()  # Room › Save transcript…: a file dialog
    dialog = window.findChildren(QFileDialog)[-1]
    assert dialog.isVisible()
    dialog.fileSelected.emit(str(tmp_path / "chosen.txt"))
    dialog.reject()
    assert (tmp_path / "chosen.txt").read_text(encoding="utf-8") \
        .splitlines()[-1] == "09:02  — bob left the room"
    window._save_chosen(window.sessions[0], str(tmp_path / "missing" / "x.txt"))
    assert "transcript not saved" in view.log.toPlainText()
    window.find_in_room()  # Edit › Find in room
    assert view.search_bar.isVisible()
    window.submit("/help")  # a dialog, not text in the conversation
    assert window.help_dialog is not None and window.help_dialog.isVisible()
    text = window.help_dialog.text.text()
    assert "4051 bytes" in text and "/help" not in view.log.toPlainText()
    menus = [action.text() for menu in window.menuBar().findChildren(QMenu)
             for action in menu.actions()]
    for command, _what, where in help_rows(4051):
        assert command in text
        name = command.split()[0]
        if name != "//text":  # an escape for typing, not a command
            assert any(f"({name})" in label for label in menus), (name, menus)
            assert where and where.split(" › ")[0] in {"Help", "Room"}


def test_composer_enter_sends_shift_enter_new_line_and_emoji(qtbot: QtBot) -> None:
    view = filled_room(qtbot, 0)
    sent: list[str] = []
    view.submitted.connect(sent.append)
    view.input.setFocus()
    qtbot.keyClicks(view.input, "first line")
    qtbot.keyClick(view.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(view.input, "second")
    height = view.input.height()
    assert view.input.text() == "first line\nsecond" and sent == []
    qtbot.keyClick(view.input, Qt.Key.Key_Return)
    assert sent == ["first line\nsecond"]
    assert height > view.input.fontMetrics().lineSpacing() * 2  # it grew to two lines
    view.input.clear()
    picker = view.emoji_button.menu().findChild(EmojiPicker)
    picker.populate()
    assert picker.grid.count() > 1000 and picker.visible()[:2] == ["😀", "😂"]
    picker.search.setText("sushi")
    assert picker.visible() == ["🍣"]
    picker.search.setText("cat face")
    assert "🐱" in picker.visible() and "🍣" not in picker.visible()
    rect = picker.grid.visualItemRect(picker.grid.item(
        next(i for i in range(picker.grid.count()) if picker.grid.item(i).text() == "🐱")))
    picker.show()
    qtbot.mouseClick(picker.grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert view.input.text() == "🐱" and picker.search.text() == ""
    picker.search.setText("rocket")
    qtbot.keyClick(picker.search, Qt.Key.Key_Return)  # Enter: the first match
    assert view.input.text() == "🐱🚀"


def test_grouping_bubbles_links_and_search(qtbot: QtBot) -> None:
    """Consecutive messages of one sender form one group (name and avatar once); a day
    separator before each day; own messages on the right; links open; Ctrl+F finds."""
    view = filled_room(qtbot, 0)
    view.resize(700, 500)
    log = view.log
    view.append(render.chat_line("bob", "one"), clock="10:00", day="2026-12-06")
    view.append(render.chat_line("bob", "two https://example.org/x."), clock="10:01",
                day="2026-12-06")
    view.append(render.chat_line("bob", "three"), clock="10:30", day="2026-12-06")
    view.append(render.chat_line("me", "mine", own=True), clock="10:31", day="2026-12-07")
    view.append(render.notice_line("carol joined"), clock="10:32", day="2026-12-07")
    kinds = [(row.kind, row.entry, row.header) for row in log.rows]
    assert kinds == [(RowKind.DAY, 0, False), (RowKind.MESSAGE, 0, True),
                     (RowKind.MESSAGE, 1, False), (RowKind.MESSAGE, 2, True),
                     (RowKind.DAY, 3, False), (RowKind.MESSAGE, 3, True),
                     (RowKind.NOTICE, 4, False)]
    assert log.rows[1].height > log.rows[2].height  # the name above the first only
    width = log.viewport().width()
    theirs = log.bubble_rect(log.rows[2], 0, width)
    mine = log.bubble_rect(log.rows[5], 0, width)
    assert theirs.left() < width / 3 and mine.right() > width * 2 / 3
    # the link: found where it is painted, the full stop left out
    view.scroll_to_bottom()
    y = log.tops[2] - log.verticalScrollBar().value()
    bubble = log.bubble_rect(log.rows[2], y, width)
    found = {log.link_at(x, bubble.center().y())
             for x in range(int(bubble.left()), int(bubble.right()), 3)}
    assert found == {None, "https://example.org/x"}
    opened: list[str] = []
    log.open_link = opened.append  # not a real browser
    with qtbot.waitSignal(log.link_clicked, timeout=1000) as clicked:
        x = next(x for x in range(int(bubble.left()), int(bubble.right()), 3)
                 if log.link_at(x, bubble.center().y()))
        qtbot.mouseClick(log.viewport(), Qt.MouseButton.LeftButton,
                         pos=QPoint(x, int(bubble.center().y())))
    assert clicked.args == ["https://example.org/x"] and opened == clicked.args
    log.fixed_today = "2026-12-20"
    point = QPoint(x, int(bubble.center().y()))  # hovering: the day and time
    QApplication.sendEvent(log.viewport(), QHelpEvent(QEvent.Type.ToolTip, point,
                                                      log.viewport().mapToGlobal(point)))
    assert QToolTip.text() == "Sunday 6 December 2026, 10:01"
    menu = log.context_menu(x, bubble.center().y())  # a right click on the link
    assert menu is not None
    actions = {action.text(): action for action in menu.actions()}
    assert list(actions) == ["Copy text", "Copy link"]
    actions["Copy link"].trigger()
    assert QGuiApplication.clipboard().text() == "https://example.org/x"
    actions["Copy text"].trigger()
    assert QGuiApplication.clipboard().text() == "two https://example.org/x."
    # search
    view.open_search()  # Edit › Find in room (Ctrl+F) in the main window
    assert view.search_bar.isVisible()
    qtbot.keyClicks(view.search, "T")
    assert view.hits == [1, 2] and log.current_match == 2  # the newest first
    assert view.hit_label.text() == "2 of 2"
    qtbot.keyClick(view.search, Qt.Key.Key_Return)
    assert log.current_match == 1 and view.hit_label.text() == "1 of 2"
    qtbot.keyClick(view.search, Qt.Key.Key_Escape)
    assert not view.search_bar.isVisible() and log.search == ""


@pytest.mark.parametrize(("user", "room", "which"), [
    ("", "room", Field.NAME), (" lead", "room", Field.NAME), ("ok", "", Field.ROOM),
])
def test_connect_screen_checks_fields_before_connecting(
        qtbot: QtBot, settings: QSettings, user: str, room: str, which: Field) -> None:
    screen = ConnectScreen(settings)
    qtbot.addWidget(screen)
    screen.show()
    screen.name.setCurrentText(user)
    screen.room.setCurrentText(room)
    with qtbot.assertNotEmitted(screen.submitted):
        qtbot.mouseClick(screen.connect_button, Qt.MouseButton.LeftButton)
    assert screen.errors[which].isVisible()


def test_connect_screen_hooks_and_recents(qtbot: QtBot, settings: QSettings) -> None:
    screen = ConnectScreen(settings)
    qtbot.addWidget(screen)
    assert screen.tls.isEnabled() and screen.encrypted.isEnabled()
    # TLS by default: the TLS port, and the CA file to trust (empty: pin the key).
    assert screen.tls.isChecked()
    assert screen.ca_file.isVisibleTo(screen) and screen.port.value() == TLS
    screen.ca_file.setText("/etc/ocm/ca.pem")
    screen.tls.setChecked(False)
    assert screen.port.value() == PLAIN and screen.request().ca_file is None
    screen.tls.setChecked(True)
    assert screen.password.echoMode() == screen.password.EchoMode.Password
    screen.name.setCurrentText("ann")
    screen.room.setCurrentText("lobby")
    screen.join_mode.setChecked(True)
    with qtbot.waitSignal(screen.submitted, timeout=1000) as blocker:
        qtbot.mouseClick(screen.connect_button, Qt.MouseButton.LeftButton)
    request = blocker.args[0]
    assert (request.username, request.room, request.operation) == ("ann", "lobby",
                                                                    Operation.JOIN)
    assert (request.tls, request.ca_file, request.port) == (True, "/etc/ocm/ca.pem", TLS)
    screen.remember_request(request)
    again = ConnectScreen(settings)
    qtbot.addWidget(again)
    assert again.name.currentText() == "ann" and again.room.currentText() == "lobby"
    assert again.join_mode.isChecked()
    assert again.tls.isChecked() and again.ca_file.text() == "/etc/ocm/ca.pem"
    assert again.port.value() == TLS


_SLOT_STORM = """
import os
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from PySide6.QtWidgets import QApplication, QScrollBar
app = QApplication([])
bar = QScrollBar()
bar.setRange(0, 30000)
bar.valueChanged.connect(lambda value: value > 5)
for value in range(30000):
    bar.setValue(value)
print("survived")
"""


def test_qt_binding_survives_many_signals_to_python_slots() -> None:
    """With PySide6 6.12.0 a few thousand signals to a Python slot abort the interpreter
    (bool_dealloc; the scrollback's scroll-bar slot runs on every append): the pin in
    pyproject.toml excludes it."""
    done = subprocess.run([sys.executable, "-c", _SLOT_STORM], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "survived" in done.stdout, done.stderr[-2000:]


def test_member_list_rows_and_the_key_change_dialog(qtbot: QtBot, loop: qasync.QEventLoop,
                                                    settings: QSettings) -> None:
    """The member panel renders what it is given (host marked; fingerprint and key state
    in an encrypted room; names sanitised); Verify… needs a member with a key."""
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    room = window.open_preview("r", "ann", host=True, max_message=100)
    room.enter("r", "ann", host=True, max_message=100)
    assert room.members.isVisible() and not room.lock.isVisible()
    assert not room.verify_button.isVisible()
    room.set_members([Member("ann", host=True, me=True), Member("bo\x1b")])
    rows = [room.members.item(i).text() for i in range(room.members.count())]
    assert rows == ["ann (you) ★", "bo\\x1b"]
    assert room.members_title.text() == "Members (2)"
    room.enter("r", "ann", host=True, max_message=100, encrypted=True)
    assert room.lock.isVisible() and room.verify_button.isVisible()
    room.set_members([Member("ann", True, True, "a1 a2 a3 a4 a5 a6 a7 a8"),
                      Member("bo", fingerprint="ef01", trust=Trust.VERIFIED),
                      Member("cy", fingerprint="2345", trust=Trust.CHANGED)])
    rows = [room.members.item(i).text() for i in range(room.members.count())]
    assert rows == ["ann (you) ★ 🔒", "bo 🔒 ✔", "cy 🔒 ⚠"]  # one row each
    assert room.members.item(1).toolTip() == "bo\nkey fingerprint:\nef01\n✔ verified"
    assert room.members_title.text() == "🔒 Members (3) · end-to-end encrypted"
    room.members.item(0).setSelected(True)
    assert not room.verify_button.isEnabled()  # our own key
    assert room.details.isVisible() and room.details.text() == (
        "ann (host, you)\nkey fingerprint:\na1 a2 a3 a4\na5 a6 a7 a8\nyour key")
    room.members.item(0).setSelected(False)
    room.members.item(2).setSelected(True)
    with qtbot.waitSignal(room.verify_clicked, timeout=1000) as asked:
        qtbot.mouseClick(room.verify_button, Qt.MouseButton.LeftButton)
    assert asked.args == ["cy"]
    box = window.warn_key_changed("bo", "ab:cd", "ef:01")
    assert box.isVisible() and box.icon() == box.Icon.Warning
    assert "before: ab:cd\nnow: ef:01" in box.text()
    box.close()


def test_verify_dialog_shows_both_keys_and_the_number(qtbot: QtBot) -> None:
    number = " ".join(f"{i:05d}" for i in range(12))
    dialog = VerifyDialog("ann", "a1 a2 a3 a4 a5", "bo", "b1 b2", number)
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.findChild(QLabel, "fingerprint-me").text() == "a1 a2 a3 a4\na5"
    assert dialog.findChild(QLabel, "fingerprint-them").text() == "b1 b2"
    assert dialog.number.text().splitlines() == [
        "00000 00001 00002 00003", "00004 00005 00006 00007", "00008 00009 00010 00011"]
    with qtbot.waitSignal(dialog.accepted, timeout=1000):
        dialog.match_button.click()


def test_themes_follow_the_toggle_and_the_chat_repaints(
        qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings) -> None:
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    view = window.open_preview("r", "me")
    view.append(render.chat_line("bob", "hi"), clock="10:00")
    try:
        window.theme_actions[Theme.DARK].trigger()
        assert settings.value("theme") == "dark" and window.dark
        qtbot.waitUntil(lambda: view.log.colours().dark, timeout=5000)
        assert view.log.colours().background.lightness() < 60
        for widget in (view.members, view.input, view.search, window.room_list):
            # every part follows the theme (a widget style sheet would pin it)
            assert widget.palette().color(QPalette.ColorRole.Base).lightness() < 60, widget
        window.theme_actions[Theme.LIGHT].trigger()
        qtbot.waitUntil(lambda: not view.log.colours().dark, timeout=5000)
        assert view.log.colours().background.lightness() > 200
    finally:
        window.set_theme(Theme.LIGHT)
    assert MainWindow(settings).theme is Theme.LIGHT  # remembered


def test_a_resize_estimates_wrapped_rows_and_painting_makes_them_exact(qtbot: QtBot) -> None:
    """After a resize the rows off screen keep an estimate (no text layout for 10,000
    rows); the rows painted get their exact height, and the view stays at the bottom."""
    view = filled_room(qtbot, 0)
    long = "a line long enough to wrap in a narrow window, with words of some length " * 3
    for i in range(60):
        view.append(render.chat_line(f"user{i % 3}", f"{long}{i}"))
    log = view.log
    view.resize(420, 400)
    assert any(not row.exact for row in log.rows)  # estimated, not laid out
    view.grab()  # a paint: the rows on screen become exact
    width = log.viewport().width()
    shown = [i for i, row in enumerate(log.rows)
             if log.tops[i + 1] > log.verticalScrollBar().value()]
    assert shown and all(log.rows[i].exact for i in shown)
    for i in shown:
        assert log.rows[i].height == log._measure(log.rows[i], width)
    assert all(log.tops[i + 1] - log.tops[i] == row.height for i, row in enumerate(log.rows))
    assert view.at_bottom()


def test_a_resize_keeps_every_height_equal_to_a_fresh_measure(qtbot: QtBot) -> None:
    """Rows that keep their height on a resize (one line that still fits) are the ones
    a fresh measure gives the same height: narrow, wide and narrow again."""
    view = filled_room(qtbot, 0)
    long = "a notice or a message long enough to wrap in a narrow window " * 2
    for i in range(40):
        line = render.notice_line(long) if i % 4 == 3 else render.chat_line(
            f"user{i % 3}", long if i % 2 else f"short {i}")
        view.append(line)
    log = view.log
    for width in (380, 1400, 380, 900):
        view.resize(width, 400)
        view.grab()
        fresh = [log._measure(row, log.viewport().width(), estimate=True)
                 if not row.exact else log._measure(row, log.viewport().width())
                 for row in log.rows]
        assert [row.height for row in log.rows] == fresh, width


def test_painted_rows_are_kept_and_painted_again_when_what_they_show_changes(
        qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row painted a second time is kept as an image and copied from then on (one
    scrolled past once is painted directly); a delivery state, a search or the colours
    paint it again; the images kept stay under their bound."""
    view = filled_room(qtbot, 40)
    log = view.log
    view.append(render.chat_line("me", "mine", own=True))
    entry = len(log.entries) - 1

    def shot() -> QImage:
        return log.viewport().grab().toImage()

    before = shot()
    assert not log._images  # painted once: directly
    assert shot() == before  # the same, from images now
    kept = {index: image.cacheKey() for index, (_key, image) in log._images.items()}
    assert entry in kept and len(kept) < 20  # the rows on screen only
    assert shot() == before
    assert {index: image.cacheKey() for index, (_key, image) in log._images.items()} == kept
    log.set_status(entry, "🕓")
    assert shot() != before
    log.set_status(entry, "")
    assert shot() == before
    log.set_search("mine")
    assert shot() != before
    log.set_search("")
    assert shot() == before
    palette = log.palette()
    palette.setColor(QPalette.ColorRole.Base, QColor("#202124"))
    log.setPalette(palette)
    assert shot() != before
    monkeypatch.setattr(chatview, "_IMAGES_MAX", 200_000)
    bar = log.verticalScrollBar()
    for value in range(bar.maximum() - bar.pageStep() // 2, -1, -bar.pageStep() // 2):
        bar.setValue(value)
        shot()
        shot()
        assert 0 < log._images_bytes <= 200_000


def test_a_drag_selects_across_messages_and_ctrl_c_copies_them_with_names_and_times(
        qtbot: QtBot) -> None:
    view = RoomView()
    qtbot.addWidget(view)
    view.resize(700, 500)
    view.show()
    view.enter("room", "me", host=False, max_message=100)
    view.append(render.chat_line("alice", "good morning everyone"), "09:00", "2026-12-07")
    view.append(render.chat_line("bob", "おはよう 🌸 bob here"), "09:01", "2026-12-07")
    view.append(render.notice_line("carol joined the room"), "09:02", "2026-12-07")
    view.append(render.chat_line("me", "hello bob and alice", own=True), "09:03", "2026-12-07")
    log = view.log
    viewport = log.viewport()

    def point(entry: int, offset: int) -> QPoint:
        """Where character ``offset`` of message ``entry`` is on screen."""
        index = next(i for i, row in enumerate(log.rows)
                     if row.entry == entry and row.kind == RowKind.MESSAGE)
        row, width = log.rows[index], log.viewport().width()
        bubble = log.bubble_rect(row, log.tops[index] - log.verticalScrollBar().value(), width)
        text = log.entries[entry].line.text
        layout = log._layout(row, log.bubble_max(width) - 2 * chatview.PAD_X)
        x = layout.lineAt(0).cursorToX(len(text[:offset].encode("utf-16-le")) // 2)
        x = x[0] if isinstance(x, tuple) else x
        return QPoint(int(bubble.left() + chatview.PAD_X + x + 1),
                      int(bubble.top() + chatview.PAD_Y + layout.lineAt(0).height() / 2))

    before = viewport.grab().toImage()
    # from "morning" in alice's message to after "hello" in mine, over bob's and a notice
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=point(0, 5))
    qtbot.mouseMove(viewport, point(1, 3))
    qtbot.mouseMove(viewport, point(3, 5))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=point(3, 5))
    assert log.focusPolicy() == Qt.FocusPolicy.ClickFocus  # a click gives it the keys
    assert log.selection() == ((0, 5), (3, 5))
    assert viewport.grab().toImage() != before  # the selection is shown
    QGuiApplication.clipboard().clear()
    qtbot.keyClick(log, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert QGuiApplication.clipboard().text() == (
        "09:00  alice: morning everyone\n"
        "09:01  bob: おはよう 🌸 bob here\n"
        "09:02  — carol joined the room\n"
        "09:03  me (you): hello")
    # backwards inside one message, after the emoji: only the characters
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=point(1, 10))
    qtbot.mouseMove(viewport, point(1, 5))
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=point(1, 5))
    qtbot.keyClick(log, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert QGuiApplication.clipboard().text() == "🌸 bob"
    # a click without a drag selects nothing; Ctrl+A everything
    qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=point(2 + 1, 2))
    assert log.selection() is None and log.selected_text() == ""
    assert viewport.grab().toImage() == before
    qtbot.keyClick(log, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(log, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert QGuiApplication.clipboard().text() == log.toPlainText()
    qtbot.keyClicks(log, "ok")  # typing after a click goes on in the input
    assert view.input.text() == "ok"
    menu = log.context_menu(point(0, 1).x(), point(0, 1).y())
    assert menu is not None and menu.actions()[0].text() == "Copy selection"
