"""Screenshots of the desktop client, rendered offscreen with ``QWidget.grab()``.

Every run renders them into the test's temporary folder and checks they are real
images; ``make gui-screenshots`` sets ``OCM_GUI_SCREENSHOTS=docs`` to refresh the copies
the README shows (docs/gui-connect.png, docs/gui-room.png, docs/gui-encrypted.png,
docs/gui-verify.png).
Japanese and emoji render where the system has the fonts (Debian: fonts-noto-cjk,
fonts-noto-color-emoji).
"""

from __future__ import annotations

import os
from pathlib import Path

import qasync
from PySide6.QtCore import QSettings
from PySide6.QtGui import QImage
from pytestqt.qtbot import QtBot

from client import render
from client.e2e.identity import IdentityKeys, fingerprint, safety_number
from client.gui import models
from client.gui.app import MainWindow
from client.gui.models import ConnectRequest
from client.gui.verify import VerifyDialog
from client.keystore import Trust
from client.refusals import Field
from wire.codes import Operation
from wire.e2e import MemberInfo

SIZE = (760, 560)
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


def _save(window: MainWindow, path: Path) -> None:
    window.resize(*SIZE)
    assert window.grab().save(str(path)), path
    image = QImage(str(path))
    assert (image.width(), image.height()) == SIZE
    colours = {image.pixel(x, y) for x in range(0, SIZE[0], 7) for y in range(0, SIZE[1], 7)}
    assert len(colours) > 20, "the screenshot is (nearly) blank"


def _converse(window: MainWindow, conversation: list[tuple[str, str, str]], hour: int,
              minute: int) -> None:
    """Append ``conversation`` to the room window, one line a minute from hour:minute."""
    for step, (kind, user, text) in enumerate(conversation):
        if kind in ("chat", "own"):
            line = render.chat_line(user, text, own=kind == "own")
        elif kind == "warning":
            line = render.warning_line(text)
        else:
            line = render.notice_line(text)
        window.room.append(line, clock=f"{hour:02d}:{minute + step:02d}")


def test_screenshot_connect_screen(qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings,
                                   tmp_path: Path) -> None:
    settings.setValue("recent/servers", ["chat.example.org", "127.0.0.1"])
    settings.setValue("recent/names", ["さくら"])
    settings.setValue("recent/rooms", ["lobby"])
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    window.connect_screen.create_mode.setChecked(True)
    window.connect_screen.encrypted.setChecked(True)
    window.connect_screen.tls.setChecked(True)
    window.connect_screen.ca_file.setText("/etc/ocm/ca.pem")
    window.connect_screen.show_error(
        Field.ROOM, "A room named 'lobby' already exists. Join it, or pick another name.")
    window.connect_screen.password.setText("hunter2")
    _save(window, _out_dir(tmp_path) / "gui-connect.png")


def test_screenshot_busy_room(qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings,
                              tmp_path: Path) -> None:
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    window.request = ConnectRequest("127.0.0.1", 9000, Operation.JOIN, "lobby", "さくら")
    window.room.enter("lobby", "さくら", host=False, max_message=4051)
    window.pages.setCurrentWidget(window.room)
    _converse(window, CONVERSATION, 14, 12)
    window.room.set_members(models.member_rows(
        tuple(MemberInfo(name, name == "bob") for name in ("bob", "さくら", "carol", "erin",
                                                          "gina")), "さくら", None))
    window.room.input.setText("shall we meet at 15:00? ☕")
    window.unread.count = 2
    window._update_title()
    _save(window, _out_dir(tmp_path) / "gui-room.png")


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
    ("own", "さくら", "welcome; I'll verify you by phone after lunch"),
]


def test_screenshot_encrypted_room(qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings,
                                   tmp_path: Path) -> None:
    """An encrypted room: the lock, and the member list with fingerprints and key state."""
    window = MainWindow(settings)
    qtbot.addWidget(window)
    window.show()
    keys = {name: IdentityKeys.generate(lambda n, seed=seed: bytes([seed]) * n).public()
            for seed, name in enumerate(("さくら", "bob", "carol"), start=7)}
    prints = {"me" if name == "さくら" else name: fingerprint(public)
              for name, public in keys.items()}
    window.request = ConnectRequest("127.0.0.1", 9000, Operation.CREATE, "design", "さくら",
                                    encrypted=True)
    window.room.enter("design", "さくら", host=True, max_message=3950, encrypted=True)
    window.pages.setCurrentWidget(window.room)
    _converse(window, [(kind, user, text.format(**prints))
                       for kind, user, text in ENCRYPTED_CONVERSATION], 9, 30)
    trust = {"bob": Trust.VERIFIED, "carol": Trust.UNVERIFIED}
    members = tuple(MemberInfo(name, name == "さくら", public) for name, public in keys.items())
    window.room.set_members(models.member_rows(members, "さくら", trust.__getitem__))
    window.room.members.item(2).setSelected(True)  # carol: Verify… is enabled
    window._update_title()
    assert window.room.lock.isVisible() and window.room.members.count() == 3
    assert window.room.verify_button.isEnabled()
    _save(window, _out_dir(tmp_path) / "gui-encrypted.png")
    dialog = VerifyDialog("さくら", prints["me"], "carol", prints["carol"],
                          safety_number("さくら", keys["さくら"], "carol", keys["carol"]),
                          window)
    qtbot.addWidget(dialog)
    dialog.show()
    path = _out_dir(tmp_path) / "gui-verify.png"
    assert dialog.grab().save(str(path)), path
    assert not QImage(str(path)).isNull()
