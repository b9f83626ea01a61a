"""The list of rooms on the left of the main window: one row per room, across servers.

Each row: the room's name (bold while it has unread messages), the last message under it
(the server before there is one; the server is always in the tooltip), a
lock for an end-to-end encrypted room, the unread count in a badge; a room whose chat
ended (left, closed, disconnected) is greyed until it is closed. The rows are painted
by ``RoomDelegate`` from what ``RoomList.update_room`` stores in the item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import (
    QListWidget,
    QListWidgetItem,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QWidget,
)

ROOM_ROLE: Final = Qt.ItemDataRole.UserRole + 10
EMPTY_TEXT: Final = "The rooms you create or join appear here, side by side."


@dataclass(frozen=True, slots=True)
class RoomRow:
    """What a row shows."""

    name: str
    server: str
    encrypted: bool = False
    unread: int = 0
    ended: bool = False
    preview: str = ""  # the last message ("bob: hi"); the server when there is none


class RoomDelegate(QStyledItemDelegate):
    def sizeHint(self, option: QStyleOptionViewItem,  # noqa: N802 (Qt's name)
                 index: QModelIndex | QPersistentModelIndex) -> QSize:
        metrics = QFontMetrics(option.font)
        return QSize(160, metrics.height() * 2 + 14)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        row = index.data(ROOM_ROLE)
        if not isinstance(row, RoomRow):
            super().paint(painter, option, index)
            return
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = option.palette
        rect = QRectF(option.rect).adjusted(4, 2, -4, -2)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        if selected:
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(palette.color(QPalette.ColorRole.Highlight))
            painter.drawRoundedRect(rect, 8, 8)
        text = palette.color(QPalette.ColorRole.HighlightedText if selected
                             else QPalette.ColorRole.WindowText)
        subdued = QColor(text) if selected else palette.color(QPalette.ColorRole.PlaceholderText)
        if row.ended:
            painter.setOpacity(0.5)
        font = QFont(option.font)
        font.setBold(row.unread > 0)
        metrics = QFontMetrics(font)
        badge_width = 0.0
        if row.unread:
            label = str(row.unread) if row.unread < 1000 else "999+"
            badge_width = metrics.horizontalAdvance(label) + 12
            badge = QRectF(rect.right() - badge_width - 6, rect.top() + 6, badge_width,
                           metrics.height() + 2)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor("#ffffff") if selected
                             else palette.color(QPalette.ColorRole.Highlight))
            painter.drawRoundedRect(badge, badge.height() / 2, badge.height() / 2)
            painter.setPen(palette.color(QPalette.ColorRole.Highlight) if selected
                           else palette.color(QPalette.ColorRole.HighlightedText))
            painter.setFont(font)
            painter.drawText(badge, int(Qt.AlignmentFlag.AlignCenter), label)
        name = ("🔒 " if row.encrypted else "") + row.name
        width = int(rect.width() - 20 - badge_width)
        painter.setFont(font)
        painter.setPen(text)
        painter.drawText(QRectF(rect.left() + 10, rect.top() + 5, width, metrics.height()),
                         int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                         metrics.elidedText(name, Qt.TextElideMode.ElideRight, width))
        small = QFont(option.font)
        small.setPointSizeF(max(6.0, small.pointSizeF() * 0.85))
        small_metrics = QFontMetrics(small)
        painter.setFont(small)
        painter.setPen(subdued)
        server = (row.preview or row.server) + (" · ended" if row.ended else "")
        painter.drawText(QRectF(rect.left() + 10, rect.top() + 7 + metrics.height(),
                                rect.width() - 20, small_metrics.height()),
                         int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                         small_metrics.elidedText(server, Qt.TextElideMode.ElideRight,
                                                  int(rect.width() - 20)))
        painter.restore()


class RoomList(QListWidget):
    """The rooms, in the order they were opened."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("rooms")
        self.setItemDelegate(RoomDelegate(self))
        self.setFrameShape(QListWidget.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Not in the Tab chain: a list that takes the focus makes its first row current,
        # which would switch rooms when a disabled button hands the focus on.
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        super().paintEvent(event)
        if self.count() == 0:  # say what the empty list is for
            painter = QPainter(self.viewport())
            painter.setPen(self.palette().color(QPalette.ColorRole.PlaceholderText))
            painter.drawText(self.viewport().rect().adjusted(10, 10, -10, -10),
                             int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop
                                 | Qt.TextFlag.TextWordWrap), EMPTY_TEXT)
            painter.end()

    def add_room(self, row: RoomRow) -> QListWidgetItem:
        item = QListWidgetItem(self)
        self.update_room(item, row)
        return item

    def update_room(self, item: QListWidgetItem, row: RoomRow) -> None:
        item.setData(ROOM_ROLE, row)
        item.setText(row.name)  # for accessibility and keyboard search
        item.setToolTip(f"{row.name} on {row.server}"
                        + (f"\n{row.preview}" if row.preview else "")
                        + (" · end-to-end encrypted" if row.encrypted else "")
                        + (f" · {row.unread} unread" if row.unread else "")
                        + (" · the chat ended" if row.ended else ""))

    def row_of(self, item: QListWidgetItem) -> RoomRow:
        row = item.data(ROOM_ROLE)
        assert isinstance(row, RoomRow)
        return row
