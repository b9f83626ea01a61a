"""Screenshots of the desktop client, rendered offscreen with ``QWidget.grab()``.

Every run renders them into the test's temporary folder and checks they are real
images; ``make gui-screenshots`` sets ``OCM_GUI_SCREENSHOTS=docs`` to refresh the copies
the README and docs/gui.md show: docs/gui-room.png and docs/gui-room-dark.png (several
rooms, a busy conversation), docs/gui-encrypted.png (an encrypted room, its member list
and a member's details, dark), docs/gui-connect.png, docs/gui-verify.png,
docs/gui-help.png, docs/gui-compose.png (the emoji picker, a two-line message, an ended
room), docs/gui-menu.png (the Room menu), docs/gui-delivery.png and
docs/gui-delivery-dark.png (a message not delivered with Retry, one pending, the
Reconnecting… banner) and docs/gui-sas.png and docs/gui-sas-dark.png (the emoji
verification dialog). Japanese and emoji come from Qt's font
fallback (``make`` installs fonts-ipafont-gothic and fonts-noto-color-emoji).
"""

from __future__ import annotations

import os
from pathlib import Path

import qasync
from PySide6.QtCore import QPoint, QSettings
from PySide6.QtGui import QImage, QPainter
from PySide6.QtWidgets import QApplication, QWidget
from pytestqt.qtbot import QtBot

from client import render
from client.e2e import sas
from client.e2e.identity import fingerprint, safety_number
from client.gui import models
from client.gui.app import MainWindow
from client.gui.chatview import RowKind
from client.gui.emoji import EmojiPicker
from client.gui.room import RoomView
from client.gui.theme import Theme
from client.gui.verify import SasDialog, VerifyDialog
from client.keystore import Trust
from client.refusals import Field
from wire.e2e import MemberInfo, PublicKeys

SIZE = (1000, 640)
YESTERDAY = "2026-12-06"
TODAY = "2026-12-07"
CONVERSATION = [
    ("notice", "", "you are in room 'lobby' as さくら · /help for commands"),
    ("notice", "", "bob joined the room"),
    ("chat", "bob", "hi everyone 👋"),
    ("own", "さくら", "こんにちは！ welcome to the lobby"),
    ("notice", "", "carol joined the room"),
    ("chat", "carol", "did the release go out? 🚀"),
    ("chat", "bob", "yes, 0.1.0 is tagged; the relay benchmarks are in docs/benchmarks.md"),
    ("own", "さくら", "great — I'll try the desktop client on my laptop"),
    ("chat", "dmitri", "Привет! Is there a dark theme?"),
    ("chat", "carol", "it follows the system's light or dark setting"),
    ("notice", "", "erin joined the room"),
    ("chat", "erin", "日本語も絵文字も大丈夫ですね 🍣🍵"),
    ("warning", "", "not sent: the message is 4100 bytes, the limit in this room is 4051 "
                    "bytes (49 too many)"),
    ("chat", "bob", "a long line wraps inside the window instead of running off the edge, "
                    "so nothing is cut"),
    ("notice", "", "dmitri left the room"),
    ("chat", "frank", "has anyone tried 1,000 members in one room?"),
    ("chat", "bob", "the load generator does it: ocm-loadgen --help"),
    ("own", "さくら", "I'll run it tonight and post the p99"),
    ("notice", "", "gina joined the room"),
    ("chat", "gina", "morning! ☀️ what did I miss?"),
    ("chat", "carol", "release notes, benchmarks and a new desktop client"),
    ("chat", "gina", "nice 🎉"),
    ("notice", "", "frank was removed for inactivity"),
    ("chat", "erin", "see you tomorrow!"),
]


def _out_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("OCM_GUI_SCREENSHOTS") or tmp_path)


def _save(window: QWidget, path: Path, size: tuple[int, int] = SIZE) -> None:
    window.resize(*size)
    QApplication.processEvents()
    assert window.grab().save(str(path)), path
    image = QImage(str(path))
    assert (image.width(), image.height()) == size
    colours = {image.pixel(x, y) for x in range(0, size[0], 7) for y in range(0, size[1], 7)}
    assert len(colours) > 20, "the screenshot is (nearly) blank"


def _converse(view: RoomView, conversation: list[tuple[str, str, str]], hour: int,
              minute: int, day: str = TODAY) -> None:
    """Append ``conversation`` to a room page, one line a minute from hour:minute."""
    for step, (kind, user, text) in enumerate(conversation):
        if kind in ("chat", "own"):
            line = render.chat_line(user, text, own=kind == "own")
        elif kind == "warning":
            line = render.warning_line(text)
        else:
            line = render.notice_line(text)
        view.append(line, clock=f"{hour + (minute + step) // 60:02d}:{(minute + step) % 60:02d}",
                    day=day)


def _busy_window(settings: QSettings) -> MainWindow:
    """Three rooms on two servers, the lobby shown with a day of conversation."""
    window = MainWindow(settings)
    window.show()
    for room, server, encrypted, who, text in (
            ("design", "chat.example.org", True, "carol", "new mock-ups are up 🎨"),
            ("release-team", "127.0.0.1", False, "dmitri", "tagging 0.2.0 at five")):
        other = window.open_preview(room, "さくら", encrypted=encrypted, server=server)
        line = render.chat_line(who, text)
        other.append(line, clock="13:58", day=TODAY)
        window.sessions[-1].heard(line)
    view = window.open_preview("lobby", "さくら", server="chat.example.org")
    view.log.fixed_today = TODAY
    _converse(view, EARLIER, 18, 40, day=YESTERDAY)
    _converse(view, CONVERSATION, 14, 2)
    view.set_members(models.member_rows(
        tuple(MemberInfo(name, name == "bob") for name in ("bob", "さくら", "carol", "erin",
                                                          "gina")), "さくら", None))
    view.input.setText("shall we meet at 15:00? ☕")
    design, release, lobby = window.sessions
    lobby.heard(view.scrollback.entries[-1].line)
    view.log.mark_unread(next(i for i, entry in enumerate(view.scrollback.entries)
                              if entry.line.text.startswith("did the release")))
    window._refresh_row(lobby)
    for count, session in ((3, design), (1, release)):
        session.unread.count = count
        window._refresh_row(session)
    window._update_title()
    return window


EARLIER = [
    ("chat", "carol", "see you all tomorrow 👋"),
    ("chat", "carol", "the release checklist is at https://example.org/release"),
    ("own", "さくら", "おやすみなさい 🌙"),
]
CONVERSATION = [
    ("notice", "", "you are in room 'lobby' as さくら · F1 or /help for commands"),
    ("notice", "", "bob joined the room"),
    ("chat", "bob", "hi everyone 👋"),
    ("chat", "bob", "coffee first, then the release?"),
    ("own", "さくら", "こんにちは！ welcome to the lobby"),
    ("own", "さくら", "the notes are in docs/gui.md"),
    ("notice", "", "carol joined the room"),
    ("chat", "carol", "did the release go out? 🚀"),
    ("chat", "bob", "yes, 0.1.0 is tagged; benchmarks at https://example.org/bench"),
    ("chat", "erin", "日本語も絵文字も大丈夫ですね 🍣🍵"),
    ("warning", "", "not sent: the message is 4100 bytes, the limit in this room is 4051 "
                    "bytes (49 too many)"),
    ("chat", "gina", "morning! ☀️ what did I miss?"),
    ("chat", "carol", "release notes, benchmarks and a new desktop client"),
    ("chat", "carol", "with dark mode 🌙 and rooms side by side"),
    ("own", "さくら", "I'll run the load generator tonight and post the p99 📈"),
]


def test_screenshot_rooms_light_and_dark(qtbot: QtBot, loop: qasync.QEventLoop,
                                         settings: QSettings, tmp_path: Path) -> None:
    window = _busy_window(settings)
    qtbot.addWidget(window)
    window.set_theme(Theme.LIGHT)
    log = window.room.log
    window.resize(*SIZE)
    QApplication.processEvents()
    today = next(i for i, row in enumerate(log.rows) if row.kind == RowKind.DAY and i)
    log.verticalScrollBar().setValue(log.tops[today] - 140)  # yesterday and today
    _save(window, _out_dir(tmp_path) / "gui-room.png")
    window.room.scroll_to_bottom()
    window.set_theme(Theme.DARK)
    view = window.room
    view.open_search()
    view.search.setText("release")
    try:
        _save(window, _out_dir(tmp_path) / "gui-room-dark.png")
    finally:
        window.set_theme(Theme.LIGHT)
    assert view.hits and view.hit_label.text().endswith(f"of {len(view.hits)}")


def test_screenshot_connect_screen_and_help(qtbot: QtBot, loop: qasync.QEventLoop,
                                            settings: QSettings, tmp_path: Path) -> None:
    settings.setValue("recent/servers", ["chat.example.org", "127.0.0.1"])
    settings.setValue("recent/names", ["さくら"])
    settings.setValue("recent/rooms", ["lobby"])
    window = _busy_window(settings)
    qtbot.addWidget(window)
    window.set_theme(Theme.LIGHT)
    window.show_connect()
    screen = window.connect_screen
    screen.create_mode.setChecked(True)
    screen.encrypted.setChecked(True)
    screen.tls.setChecked(True)
    screen.ca_file.setText("/etc/ocm/ca.pem")
    screen.room.setCurrentText("lobby")
    screen.show_error(
        Field.ROOM, "A room named 'lobby' already exists. Join it, or pick another name.")
    screen.password.setText("hunter2")
    _save(window, _out_dir(tmp_path) / "gui-connect.png")
    window.show_session(window.sessions[-1])
    dialog = window.show_help()
    qtbot.addWidget(dialog)
    _save(dialog, _out_dir(tmp_path) / "gui-help.png", (660, 600))


def _with_popup(window: QWidget, popup: QWidget, at: QPoint, path: Path) -> None:
    """``window`` with ``popup`` (a menu: a window of its own, which ``grab`` leaves out)
    drawn at ``at``, as the screen shows it when the menu is open."""
    window.resize(*SIZE)
    QApplication.processEvents()
    image = window.grab()
    popup.adjustSize()
    painter = QPainter(image)
    painter.drawPixmap(at, popup.grab())
    painter.end()
    assert image.save(str(path)), path
    assert (QImage(str(path)).width(), QImage(str(path)).height()) == SIZE


def test_screenshot_composing_and_the_room_menu(qtbot: QtBot, loop: qasync.QEventLoop,
                                                settings: QSettings, tmp_path: Path) -> None:
    """A room that ended (greyed in the list), a two-line message being written with the
    emoji picker open; the Room menu (Save transcript…, Leave, Close)."""
    window = _busy_window(settings)
    qtbot.addWidget(window)
    window.set_theme(Theme.LIGHT)
    release = window.sessions[1]
    release.view.show_ended("You left the room.")
    window._refresh_row(release)
    view = window.room
    view.input.setText("see you at the release party 🎉\nbring snacks")
    QApplication.processEvents()
    menu = view.emoji_button.menu()
    picker = menu.findChild(EmojiPicker)
    picker.populate()
    picker.search.setText("face")
    menu.adjustSize()
    corner = view.emoji_button.mapTo(window, QPoint(0, 0))
    top = view.input.mapTo(window, QPoint(0, 0)).y()
    _with_popup(window, menu, QPoint(corner.x(), top - menu.sizeHint().height()),
                _out_dir(tmp_path) / "gui-compose.png")
    assert window.room_list.row_of(release.item).ended
    room_menu = window._menus_by_name["&Room"]
    place = window.menuBar().actionGeometry(room_menu.menuAction()).bottomLeft()
    _with_popup(window, room_menu, window.menuBar().mapTo(window, place),
                _out_dir(tmp_path) / "gui-menu.png")
    assert any("Save transcript" in action.text() for action in room_menu.actions())


ENCRYPTED_CONVERSATION = [
    ("notice", "", "room 'design' is end-to-end encrypted; your key fingerprint (さくら): "
                   "{me}"),
    ("notice", "", "bob joined the room"),
    ("notice", "", "bob's key fingerprint: {bob}"),
    ("chat", "bob", "the mock-ups are in the shared folder 🎨"),
    ("notice", "", "safety number with bob: 31415 92653 58979 32384 62643 38327 95028 "
                   "84197 16939 93751 05820 97494"),
    ("notice", "", "compare it with bob in person or by phone; bob is now marked verified"),
    ("own", "さくら", "thanks! only the three of us can read this room 🔒"),
    ("notice", "", "carol joined the room"),
    ("notice", "", "carol's key fingerprint: {carol}"),
    ("chat", "carol", "hi both — new laptop, so my key is new too"),
    ("chat", "carol", "I'll read out my safety number when we talk at 3"),
    ("own", "さくら", "welcome; I'll verify you by phone after lunch"),
]


def test_screenshot_encrypted_room(qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings,
                                   tmp_path: Path) -> None:
    """An encrypted room (dark): the lock, one row per member, the details of one."""
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    keys = {name: PublicKeys(bytes([seed]) * 32, bytes([seed + 64]) * 32)
            for seed, name in enumerate(("さくら", "bob", "carol"), start=7)}
    prints = {"me" if name == "さくら" else name: fingerprint(public)
              for name, public in keys.items()}
    window.open_preview("lobby", "さくら", server="chat.example.org")
    view = window.open_preview("design", "さくら", host=True, encrypted=True,
                               max_message=3950, server="chat.example.org")
    _converse(view, [(kind, user, text.format(**prints))
                     for kind, user, text in ENCRYPTED_CONVERSATION], 9, 30)
    trust = {"bob": Trust.VERIFIED, "carol": Trust.UNVERIFIED}
    members = tuple(MemberInfo(name, name == "さくら", public) for name, public in keys.items())
    view.set_members(models.member_rows(members, "さくら", trust.__getitem__))
    view.members.item(2).setSelected(True)  # carol: details shown, Verify… enabled
    assert view.lock.isVisible() and view.members.count() == 3
    assert view.verify_button.isEnabled() and view.details.isVisible()
    window.set_theme(Theme.DARK)
    try:
        _save(window, _out_dir(tmp_path) / "gui-encrypted.png")
        dialog = VerifyDialog("さくら", prints["me"], "carol", prints["carol"],
                              safety_number("さくら", keys["さくら"], "carol", keys["carol"]),
                              window)
        qtbot.addWidget(dialog)
        dialog.show()
        QApplication.processEvents()
        path = _out_dir(tmp_path) / "gui-verify.png"
        assert dialog.grab().save(str(path)), path
        assert not QImage(str(path)).isNull()
    finally:
        window.set_theme(Theme.LIGHT)


DELIVERY_CONVERSATION = [
    ("notice", "", "bob joined the room"),
    ("chat", "bob", "are you on the train? 🚆"),
    ("own", "さくら", "yes, the tunnel is coming"),
    ("own", "さくら", "トンネルの中でも送れるかな？"),
    ("own", "さくら", "if this shows a clock, it is still on its way"),
    ("chat", "bob", "I'll wait 👍"),
]


def test_screenshot_delivery_states_and_emoji_verification(
        qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings, tmp_path: Path) -> None:
    """Light and dark: a message not delivered (⚠, the bar with Retry), one pending (🕓),
    the Reconnecting… banner; the emoji (SAS) verification dialog."""
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    view = window.open_preview("commute", "さくら", server="chat.example.org")
    view.log.fixed_today = TODAY
    _converse(view, DELIVERY_CONVERSATION, 8, 12)
    view.set_members(models.member_rows((MemberInfo("bob", True), MemberInfo("さくら", False)),
                                        "さくら", None))
    failed, pending = len(view.log.entries) - 3, len(view.log.entries) - 2
    view.set_status(failed, models.SEND_STATE_MARKS["failed"])
    view.set_status(pending, models.SEND_STATE_MARKS["pending"])
    view.show_failed(1)
    view.show_connection("Reconnecting…")
    assert view.failed_bar.isVisibleTo(view) and view.retry_button.isVisibleTo(view)
    assert view.connection_banner.isVisibleTo(view)
    emoji = tuple(sas.EMOJI[i] for i in (3, 17, 28, 40, 51, 8, 62))
    try:
        for theme, suffix in ((Theme.LIGHT, ""), (Theme.DARK, "-dark")):
            window.set_theme(theme)
            _save(window, _out_dir(tmp_path) / f"gui-delivery{suffix}.png")
            dialog = SasDialog("bob", window)
            qtbot.addWidget(dialog)
            dialog.show_sas(sas.SasShow(emoji, (1742, 5903, 2271)))
            dialog.show()
            QApplication.processEvents()
            _save(dialog, _out_dir(tmp_path) / f"gui-sas{suffix}.png",
                  (max(560, dialog.sizeHint().width()), dialog.sizeHint().height()))
            dialog.finish()
    finally:
        window.set_theme(Theme.LIGHT)
