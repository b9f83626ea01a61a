"""The emoji picker: common emoji first, then the emoji blocks of Unicode, searchable by
name (Python's ``unicodedata`` names them, so no table ships with the client).

``emoji_menu(parent, insert)`` is the menu of the input's emoji button: a search field
over a grid (``EmojiPicker``, filled when first shown); a click, or Enter in the search
field (the first match), calls ``insert(emoji)`` and closes the menu.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from typing import Final

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QVBoxLayout,
    QWidget,
    QWidgetAction,
)

COMMON: Final = ("😀 😂 🙂 😉 😍 🤔 😅 😭 😮 😎 🙏 👍 👎 👏 🙌 👋 💪 🎉 🎂 🚀 ❤️ 💔 🔥 ✨ "
                 "⭐ ☀️ 🌸 🍣 🍵 ☕ 🍺 ✅ ❌ ⚠️ ❓ 💡 📎 🔒 👀 🤝").split()
BLOCKS: Final = ((0x1F600, 0x1F64F), (0x1F900, 0x1F9FF), (0x1F300, 0x1F5FF),
                 (0x1F680, 0x1F6FF), (0x1FA70, 0x1FAFF))
"""Emoticons, supplemental symbols, pictographs, transport, symbols extended-A."""
_SKIN_TONES: Final = range(0x1F3FB, 0x1F400)  # modifiers, not emoji of their own
_CELL: Final = 34  # px per grid cell


@functools.cache
def catalogue() -> tuple[tuple[str, str], ...]:
    """``(emoji, lower-case name)``: the common ones, then every named code point of the
    emoji blocks, each once."""
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for emoji in COMMON:
        entries.append((emoji, unicodedata.name(emoji[0], "").lower()))
        seen.add(emoji[0])
    for low, high in BLOCKS:
        for code in range(low, high + 1):
            char = chr(code)
            name = unicodedata.name(char, "")
            if name and code not in _SKIN_TONES and char not in seen:
                entries.append((char, name.lower()))
                seen.add(char)
    return tuple(entries)


class EmojiPicker(QWidget):
    """A search field over a grid of emoji; ``picked(emoji)`` on a click or Enter."""

    picked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("emoji-picker")
        column = QVBoxLayout(self)
        column.setContentsMargins(4, 4, 4, 4)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search emoji (e.g. smile, cat, heart)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.filter)
        self.search.returnPressed.connect(self._first)
        self.grid = QListWidget()
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setUniformItemSizes(True)
        self.grid.setGridSize(QSize(_CELL, _CELL))
        font = self.grid.font()
        font.setPointSizeF(font.pointSizeF() * 1.35)
        self.grid.setFont(font)
        self.grid.itemClicked.connect(lambda item: self.picked.emit(item.text()))
        column.addWidget(self.search)
        column.addWidget(self.grid, 1)
        self.setFixedSize(_CELL * 9 + 30, _CELL * 7 + 40)

    def populate(self) -> None:
        """Fill the grid (once: a few thousand items, only when first needed)."""
        if self.grid.count():
            return
        for emoji, name in catalogue():
            item = QListWidgetItem(emoji, self.grid)
            item.setToolTip(name)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)

    def filter(self, text: str) -> None:
        """Show only the emoji whose name holds every word of ``text``."""
        words = text.lower().split()
        for row in range(self.grid.count()):
            item = self.grid.item(row)
            name = str(item.data(Qt.ItemDataRole.UserRole))
            item.setHidden(not all(word in name for word in words))

    def visible(self) -> list[str]:
        return [self.grid.item(row).text() for row in range(self.grid.count())
                if not self.grid.item(row).isHidden()]

    def _first(self) -> None:
        shown = self.visible()
        if shown:
            self.picked.emit(shown[0])

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt's name)
        self.populate()
        super().showEvent(event)
        self.search.setFocus()


def emoji_menu(parent: QWidget, insert: Callable[[str], None]) -> QMenu:
    """The emoji button's menu: a click (or Enter) calls ``insert(emoji)`` and closes it."""
    menu = QMenu(parent)
    picker = EmojiPicker(menu)
    picker.picked.connect(functools.partial(_pick, insert, menu, picker))
    action = QWidgetAction(menu)
    action.setDefaultWidget(picker)
    menu.addAction(action)
    return menu


def _pick(insert: Callable[[str], None], menu: QMenu, picker: EmojiPicker,
          emoji: str) -> None:
    insert(emoji)
    picker.search.clear()
    menu.close()
