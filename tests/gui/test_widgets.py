"""The room window and main window without a server: scrolling, unread count, notices."""

from __future__ import annotations

import subprocess
import sys

import pytest
import qasync
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QLabel, QWidget
from pytestqt.qtbot import QtBot

from client import render
from client.gui import models
from client.gui.app import MainWindow
from client.gui.connect import ConnectScreen
from client.gui.models import ConnectRequest, Member
from client.gui.room import RoomView
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
    window.room.enter("r", "me", host=False, max_message=100)
    window.pages.setCurrentWidget(window.room)
    other = QWidget()
    qtbot.addWidget(other)
    other.show()
    other.activateWindow()
    qtbot.waitUntil(lambda: not window.isActiveWindow(), timeout=5000)
    window.request = ConnectRequest("127.0.0.1", 1, Operation.JOIN, "r", "me")
    window._on_line(render.chat_line("bob", "one"))
    window._on_line(render.notice_line("carol joined the room"))  # not counted
    window._on_line(render.chat_line("bob", "two"))
    assert window.windowTitle() == "(2) r — OCM"
    assert window.notifications == [("bob", "one"), ("bob", "two")]
    window.room.notify.setChecked(False)
    window._on_line(render.chat_line("bob", "three"))
    assert window.notifications[-1] == ("bob", "two")
    assert settings.value("notifications") in (False, "false")
    window.activateWindow()
    qtbot.waitUntil(lambda: window.windowTitle() == "r — OCM", timeout=5000)


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
    room = window.room
    window.pages.setCurrentWidget(room)
    room.enter("r", "ann", host=True, max_message=100)
    assert room.members.isVisible() and not room.lock.isVisible()
    assert not room.verify_button.isVisible()
    room.set_members([Member("ann", host=True, me=True), Member("bo\x1b")])
    rows = [room.members.item(i).text() for i in range(room.members.count())]
    assert rows == ["ann ★ (host, you)", "bo\\x1b"]
    assert room.members_title.text() == "Members (2)"
    room.enter("r", "ann", host=True, max_message=100, encrypted=True)
    assert room.lock.isVisible() and room.verify_button.isVisible()
    room.set_members([Member("ann", True, True, "a1 a2 a3 a4 a5 a6 a7 a8"),
                      Member("bo", fingerprint="ef01", trust=Trust.VERIFIED),
                      Member("cy", fingerprint="2345", trust=Trust.CHANGED)])
    rows = [room.members.item(i).text() for i in range(room.members.count())]
    assert rows == ["ann ★ (host, you)\na1 a2 a3 a4\na5 a6 a7 a8\nyour key",
                    "bo\nef01\n✔ verified", "cy\n2345\n⚠ key changed"]
    assert room.members_title.text() == "🔒 Members (3) · end-to-end encrypted"
    room.members.item(0).setSelected(True)
    assert not room.verify_button.isEnabled()  # our own key
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


def test_dark_palette_lifts_sender_colours(qtbot: QtBot) -> None:
    view = filled_room(qtbot, 0)
    palette = view.log.palette()
    palette.setColor(QPalette.ColorRole.Base, QColor("#1e1e1e"))
    view.log.setPalette(palette)
    view.append(render.chat_line("bob", "hi"), clock="10:00")
    red, green, blue = models.sender_rgb("bob", dark=True)
    assert f"#{red:02x}{green:02x}{blue:02x}" in view.log.document().toHtml()
