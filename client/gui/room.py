"""The room window: scrollback, input with byte counter, the end-of-chat banner.

A view only: it shows ``render.Line``s (already sanitised by the shared library) and the
member list, and emits what the user asked for (``submitted``, ``leave_clicked``,
``rejoin_clicked``, ``new_room_clicked``, ``verify_clicked``);
``client.gui.app.MainWindow`` does the networking.

The scrollback is a read-only ``QPlainTextEdit``: it lays out only the visible blocks,
so appending stays cheap at 10,000 lines (``make bench-gui`` measures it). A new line
scrolls the view only when it was at the bottom; otherwise a "new messages" marker
appears, and clicking it jumps down.

The member list (``set_members``, rows from ``models.member_rows``) marks the host; in an
encrypted room the header shows a lock, each row the member's key fingerprint and its
state (unverified, verified, key changed), and *Verify…* (or a double click) asks to
compare safety numbers with the selected member.
"""

from __future__ import annotations

import html
import time
from typing import Final

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from client import render
from client.gui import models
from client.gui.models import ByteCount, Entry, Member, Scrollback
from client.keystore import Trust
from client.render import Kind, Line

WARNING_COLOUR: Final = "#d32f2f"
_AT_BOTTOM_SLACK: Final = 1  # scroll-bar steps (lines) still counted as "at the bottom"


def entry_html(entry: Entry, notice_colour: str, own_background: str,
               dark: bool = False) -> str:
    """One scrollback line as the rich text ``QPlainTextEdit.appendHtml`` takes; ``dark``:
    the background is dark (sender colours are lifted)."""
    line = entry.line
    stamp = f'<span style="color:{notice_colour}">{entry.clock}</span>&nbsp;&nbsp;'
    text = f'<span style="white-space:pre-wrap">{html.escape(line.text)}</span>'
    if line.kind in (Kind.CHAT, Kind.OWN):
        red, green, blue = models.sender_rgb(line.user, dark)
        name = f'<b style="color:rgb({red},{green},{blue})">{html.escape(line.user)}</b>'
        if line.kind is Kind.OWN:
            return (f'{stamp}<span style="background-color:{own_background}">'
                    f'{name} <span style="color:{notice_colour}">(you)</span>: {text}</span>')
        return f"{stamp}{name}: {text}"
    if line.kind is Kind.WARNING:
        return f'{stamp}<b style="color:{WARNING_COLOUR}">⚠ {text}</b>'
    return f'{stamp}<i style="color:{notice_colour}">— {text}</i>'


class RoomView(QWidget):
    """The chat of one room; ``enter(...)`` resets it for a new membership."""

    submitted = Signal(str)
    leave_clicked = Signal()
    rejoin_clicked = Signal()
    new_room_clicked = Signal()
    verify_clicked = Signal(str)  # the member to compare safety numbers with
    caught_up = Signal()  # the view reached the bottom: everything is seen

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("room")
        self.scrollback = Scrollback()
        self.max_message = 0
        self.encrypted = False
        self.unseen = 0  # lines that arrived while scrolled up (the marker's count)
        outer = QVBoxLayout(self)

        header = QHBoxLayout()
        self.lock = QLabel("🔒")
        self.lock.setToolTip("end-to-end encrypted room")
        self.lock.setVisible(False)  # shown in encrypted rooms
        lock_font = self.lock.font()
        lock_font.setPointSizeF(lock_font.pointSizeF() * 1.5)
        self.lock.setFont(lock_font)
        self.title = QLabel("")
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.2)
        self.title.setFont(font)
        self.role = QLabel("")
        self.notify = QCheckBox("Notifications")
        self.notify.setToolTip("a desktop notification for messages while this window "
                               "is not focused")
        self.leave_button = QPushButton("Leave")
        self.leave_button.clicked.connect(self.leave_clicked)
        header.addWidget(self.lock)
        header.addWidget(self.title)
        header.addWidget(self.role)
        header.addStretch(1)
        header.addWidget(self.notify)
        header.addWidget(self.leave_button)
        outer.addLayout(header)

        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setObjectName("scrollback")
        self.log.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse
                                         | Qt.TextInteractionFlag.TextSelectableByKeyboard)
        self.log.verticalScrollBar().valueChanged.connect(self._scrolled)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.log)
        split.addWidget(self._member_panel())
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([500, 220])
        outer.addWidget(split, 1)

        self.marker = QPushButton("")
        self.marker.setObjectName("new-messages")
        self.marker.clicked.connect(self.scroll_to_bottom)
        self.marker.hide()
        outer.addWidget(self.marker, 0, Qt.AlignmentFlag.AlignHCenter)

        self.banner = QFrame()
        self.banner.setObjectName("ended")
        self.banner.setFrameShape(QFrame.Shape.StyledPanel)
        banner = QHBoxLayout(self.banner)
        self.banner_text = QLabel("")
        self.banner_text.setWordWrap(True)
        self.rejoin_button = QPushButton("Rejoin")
        self.rejoin_button.clicked.connect(self.rejoin_clicked)
        self.new_room_button = QPushButton("New room")
        self.new_room_button.clicked.connect(self.new_room_clicked)
        banner.addWidget(self.banner_text, 1)
        banner.addWidget(self.rejoin_button)
        banner.addWidget(self.new_room_button)
        self.banner.hide()
        outer.addWidget(self.banner)

        row = QHBoxLayout()
        self.input = QLineEdit()
        self.input.setObjectName("input")
        self.input.setPlaceholderText("Message (Enter sends; /help for commands)")
        self.input.returnPressed.connect(self._submit)
        self.input.textChanged.connect(self._count)
        self.counter = QLabel("")
        self.counter.setObjectName("byte-counter")
        self.counter.setMinimumWidth(
            self.counter.fontMetrics().horizontalAdvance("00000 / 00000 bytes"))
        self.counter.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(self._submit)
        row.addWidget(self.input, 1)
        row.addWidget(self.counter)
        row.addWidget(self.send_button)
        outer.addLayout(row)

    # -- what the main window calls -------------------------------------------------------------
    def _member_panel(self) -> QWidget:
        panel = QWidget()
        panel.setObjectName("member-panel")
        column = QVBoxLayout(panel)
        column.setContentsMargins(0, 0, 0, 0)
        self.members_title = QLabel("Members")
        self.members_title.setObjectName("members-title")
        self.members_title.setWordWrap(True)
        self.members = QListWidget()
        self.members.setObjectName("members")
        self.members.setWordWrap(True)
        self.members.setAlternatingRowColors(True)  # rows of three lines stay apart
        self.members.setFont(emoji_capable_font(self.members.font()))
        self.members.itemSelectionChanged.connect(self._member_selected)
        self.members.itemDoubleClicked.connect(lambda _item: self._verify_selected())
        self.verify_button = QPushButton("Verify…")
        self.verify_button.setToolTip("compare safety numbers with the selected member")
        self.verify_button.clicked.connect(self._verify_selected)
        column.addWidget(self.members_title)
        column.addWidget(self.members, 1)
        column.addWidget(self.verify_button)
        return panel

    def enter(self, room: str, username: str, host: bool, max_message: int,
              encrypted: bool = False) -> None:
        """Start showing a new membership (the scrollback starts empty); ``encrypted``
        shows the lock and the verify button."""
        self.scrollback = Scrollback()
        self.log.clear()
        self.max_message = max_message
        self.unseen = 0
        self.marker.hide()
        self.banner.hide()
        self.title.setText(render.sanitize(room))
        self.role.setText(f"as {render.sanitize(username)}"
                          + (" · host (leaving closes the room)" if host else ""))
        self.encrypted = encrypted
        self.lock.setVisible(encrypted)
        self.verify_button.setVisible(encrypted)
        self.set_members([])
        self._set_chatting(True)
        self._count(self.input.text())
        self.input.setFocus()

    def append(self, line: Line, clock: str | None = None) -> Entry:
        """Add ``line`` at the end; keep the view where it is unless it was at the bottom."""
        entry = Entry(line, clock if clock is not None else time.strftime("%H:%M"))
        self.scrollback.append(entry)
        bar = self.log.verticalScrollBar()
        at_bottom = self.at_bottom()
        kept = bar.value()
        self.log.appendHtml(entry_html(entry, self._notice_colour(), self._own_background(),
                                       self._dark()))
        if at_bottom:
            bar.setValue(bar.maximum())
        else:
            bar.setValue(kept)
            self.unseen += 1
            self.marker.setText(f"↓ {self.unseen} new message{'s' if self.unseen > 1 else ''}")
            self.marker.show()
        return entry

    def at_bottom(self) -> bool:
        bar = self.log.verticalScrollBar()
        return bar.value() >= bar.maximum() - _AT_BOTTOM_SLACK

    def scroll_to_bottom(self) -> None:
        bar = self.log.verticalScrollBar()
        bar.setValue(bar.maximum())

    def show_ended(self, text: str, can_rejoin: bool = True) -> None:
        """The chat is over: say why, offer rejoin or a new room, stop the input."""
        self.banner_text.setText(text)
        self.rejoin_button.setVisible(can_rejoin)
        self.banner.show()
        self._set_chatting(False)

    def set_members(self, members: list[Member]) -> None:
        """Show ``members``: host marked; fingerprint and key state in encrypted rooms."""
        selected = self.selected_member()
        self.members.clear()
        lock = "🔒 " if self.encrypted else ""
        self.members_title.setText(f"{lock}Members ({len(members)})"
                                   + (" · end-to-end encrypted" if self.encrypted else ""))
        for member in members:
            text = member.label().replace(" (host", " ★ (host")
            if member.fingerprint is not None:
                text += f"\n{models.group_lines(member.fingerprint)}\n" \
                        f"{member.trust_text()}"
            item = QListWidgetItem(text, self.members)
            item.setData(Qt.ItemDataRole.UserRole, member.name)
            if member.fingerprint is not None and not member.me:
                item.setData(Qt.ItemDataRole.UserRole + 1, True)  # can be verified
            if member.trust is Trust.CHANGED:
                item.setForeground(QColor(WARNING_COLOUR))
            if member.name == selected:
                item.setSelected(True)
        self._member_selected()

    def selected_member(self) -> str | None:
        items = self.members.selectedItems()
        return str(items[0].data(Qt.ItemDataRole.UserRole)) if items else None

    def byte_count(self) -> ByteCount:
        return models.byte_count(self.input.text(), self.max_message)

    # -- internals ----------------------------------------------------------------------------
    def _set_chatting(self, chatting: bool) -> None:
        self.input.setEnabled(chatting)
        self.send_button.setEnabled(chatting)
        self.leave_button.setEnabled(chatting)

    def _member_selected(self) -> None:
        items = self.members.selectedItems()
        self.verify_button.setEnabled(
            bool(items) and bool(items[0].data(Qt.ItemDataRole.UserRole + 1)))

    def _verify_selected(self) -> None:
        if self.verify_button.isEnabled() and self.encrypted \
                and (name := self.selected_member()) is not None:
            self.verify_clicked.emit(name)

    def _submit(self) -> None:
        if self.input.isEnabled():
            self.submitted.emit(self.input.text())

    def _count(self, text: str) -> None:
        count = models.byte_count(text, self.max_message)
        self.counter.setText(count.label())
        self.counter.setStyleSheet(f"color: {WARNING_COLOUR};" if count.over else "")

    def _scrolled(self, _value: int) -> None:
        if self.at_bottom():
            if self.unseen:
                self.unseen = 0
                self.marker.hide()
            self.caught_up.emit()

    def _notice_colour(self) -> str:
        return self.palette().color(QPalette.ColorRole.PlaceholderText).name()

    def _dark(self) -> bool:
        base = self.log.palette().color(QPalette.ColorRole.Base)
        return models.is_dark((base.red(), base.green(), base.blue()))

    def _own_background(self) -> str:
        return self.palette().color(QPalette.ColorRole.AlternateBase).name()


def emoji_capable_font(base: QFont) -> QFont:
    """``base`` with fallbacks that cover Japanese and colour emoji where installed
    (fontconfig substitutes the rest)."""
    font = QFont(base)
    font.setFamilies([base.family(), "Noto Sans CJK JP", "Noto Color Emoji"])
    return font
