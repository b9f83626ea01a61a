"""Help as a dialog: every ``/command``, what it does, and where it is in the menus;
then the keyboard shortcuts. The commands and their texts come from
``client.commands.help_lines`` (the parser's own list), so the two cannot drift apart;
``MENU_OF`` says where each one is in the menus.
"""

from __future__ import annotations

import html
from typing import Final

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from client import commands

MENU_OF: Final = {
    "/help": "Help › Commands and shortcuts (F1)",
    "/exit": "Room › Leave room, or Leave in the room's header",
    "/who": "Room › Who is here; the member list is always on the right",
    "/verify": "Room › Verify member…, or Verify… under the member list",
    "/retry": "Room › Retry failed messages",
    "//text": "(typing only)",
}
"""Where each command of ``commands.help_lines`` is in the menus."""

SHORTCUTS: Final = (
    ("Enter", "send"), ("Shift+Enter", "new line in the message"),
    ("Ctrl+N", "new room (create or join)"), ("Ctrl+PgDown / Ctrl+PgUp", "next / previous room"),
    ("Ctrl+F", "search this room (Enter: next hit, Shift+Enter: previous, Esc: close)"),
    ("Ctrl+E", "insert an emoji"), ("Ctrl+S", "save the transcript"),
    ("Ctrl+W", "close the room (leaving it first)"), ("F1", "this help"),
    ("Ctrl+Q", "quit (leaving every room)"),
)


def command_rows(max_message: int) -> list[tuple[str, str, str]]:
    """``(command, what it does, menu)`` for every command ``help_lines`` lists."""
    rows = []
    for line in commands.help_lines(max_message or 0):
        if not line.startswith("  /"):
            continue
        command, _, text = line.strip().partition(" ")
        name = command if command == "//text" else command.split()[0]
        rows.append((command + (" NAME" if name == "/verify" else ""), text.strip()
                     .removeprefix("NAME").strip(), MENU_OF.get(name, "")))
    return rows


class HelpDialog(QDialog):
    """Commands (with their menu) and shortcuts; ``set_limit`` for the room shown."""

    def __init__(self, max_message: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("OCM help")
        self.setObjectName("help")
        layout = QVBoxLayout(self)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setObjectName("help-text")
        self.text.setContentsMargins(8, 4, 8, 8)
        self.text.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        scroll = QScrollArea()
        scroll.setWidget(self.text)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        layout.addWidget(scroll, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(660, 600)
        self.set_limit(max_message)

    def set_limit(self, max_message: int) -> None:
        rows = "".join(
            f"<tr><td><b>{html.escape(command)}</b></td><td>{html.escape(text)}</td>"
            f"<td><i>{html.escape(menu)}</i></td></tr>"
            for command, text, menu in command_rows(max_message))
        keys = "".join(f"<tr><td><b>{html.escape(key)}</b></td><td>{html.escape(text)}</td>"
                       "</tr>" for key, text in SHORTCUTS)
        limit = (f"<p>Messages in this room are at most {max_message} bytes (the counter "
                 "under Send); longer ones are not sent.</p>" if max_message else "")
        self.text.setText(
            "<h3>Commands</h3><p>Type them in the message box, or use the menu.</p>"
            f"<table cellspacing=6>{rows}</table>{limit}"
            f"<h3>Keyboard</h3><table cellspacing=6>{keys}</table>")
