"""One room's page: header, conversation, search, input, member panel.

A view only: it shows ``render.Line``s (already sanitised by the shared library) in a
``chatview.ChatView`` and the member list, and emits what the user asked for
(``submitted``, ``leave_clicked``, ``rejoin_clicked``, ``close_clicked``,
``verify_clicked``); ``client.gui.app.MainWindow`` does the networking.

- The conversation scrolls with new messages only when it was at the bottom; otherwise a
  "↓ N new messages" button appears and jumps down.
- Search (Ctrl+F): the hits are highlighted, Enter / Shift+Enter go to the next and
  previous one, Escape closes the bar.
- The input takes several lines: Enter sends, Shift+Enter starts a new line; the byte
  counter shows the message's size against the room's limit; the emoji button opens a
  picker.
- The member panel: one row per member (name, "(you)", ★ host, 🔒 a key in an
  encrypted room, ✔ verified, ⚠ key changed); the selected member's details (role,
  key fingerprint, its state) under the list, with *Verify…*.
- ``connection_banner`` shows the link's state ("Reconnecting…", then briefly how the
  resume went); ``set_status`` shows a message's delivery state beside its time (🕓
  pending, ⚠ not delivered); a bar over the input counts the undelivered ones, with
  *Retry*.
- When the chat ends (left, closed, disconnected) the page stays readable, greyed, with
  the reason and *Rejoin* / *Close*.
"""

from __future__ import annotations

import time
from typing import Final

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFontDatabase, QKeyEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from client import render
from client.gui import models
from client.gui.chatview import ChatView
from client.gui.emoji import emoji_menu
from client.gui.models import ByteCount, Entry, Member, Scrollback
from client.gui.theme import WARNING
from client.keystore import Trust
from client.render import Line

WARNING_COLOUR: Final = WARNING
_AT_BOTTOM_SLACK: Final = 4  # px still counted as "at the bottom"
_INPUT_LINES: Final = 5  # the input grows up to this many lines, then scrolls


class SearchField(QLineEdit):
    """The search text: Enter / Shift+Enter for the next / previous hit, Escape closes."""

    following = Signal()
    previous = Signal()
    escaped = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt's name)
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            shifted = event.modifiers() & Qt.KeyboardModifier.ShiftModifier
            (self.previous if shifted else self.following).emit()
        elif event.key() == Qt.Key.Key_Escape:
            self.escaped.emit()
        else:
            super().keyPressEvent(event)


class Composer(QPlainTextEdit):
    """The message input: Enter sends (``send``), Shift+Enter is a new line."""

    send = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("input")
        self.setTabChangesFocus(True)
        self.setPlaceholderText("Message  (Enter sends, Shift+Enter new line, /help)")
        self.document().documentLayout().documentSizeChanged.connect(self._fit)
        self._fit()

    def text(self) -> str:
        return self.toPlainText()

    def setText(self, text: str) -> None:  # noqa: N802 (QLineEdit's name, for callers)
        self.setPlainText(text)
        self.moveCursor(self.textCursor().MoveOperation.End)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt's name)
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) \
                and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.send.emit()
            return
        super().keyPressEvent(event)

    def _fit(self, *_args: object) -> None:
        lines = max(1, min(_INPUT_LINES, int(self.document().size().height())))
        margins = self.contentsMargins()
        height = (lines * self.fontMetrics().lineSpacing() + 2 * self.document().documentMargin()
                  + margins.top() + margins.bottom())
        self.setFixedHeight(int(height) + 2)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(200, self.height())


class RoomView(QWidget):
    """The chat of one room; ``enter(...)`` starts a membership."""

    submitted = Signal(str)
    leave_clicked = Signal()
    rejoin_clicked = Signal()
    close_clicked = Signal()
    verify_clicked = Signal(str)  # the member to compare safety numbers with
    retry_clicked = Signal()  # send the failed messages again
    caught_up = Signal()  # the view reached the bottom: everything is seen

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("room")
        self.scrollback = Scrollback()
        self.max_message = 0
        self.encrypted = False
        self.unseen = 0  # lines that arrived while scrolled up (the marker's count)
        self.hits: list[int] = []
        self.hit = -1
        self._members: list[Member] = []
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addWidget(self._header())

        self.connection_banner = QLabel("")  # the link's state: reconnecting, offline
        self.connection_banner.setObjectName("connection-banner")
        self.connection_banner.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.connection_banner.hide()
        outer.addWidget(self.connection_banner)
        self._banner_timer = QTimer(self)
        self._banner_timer.setSingleShot(True)
        self._banner_timer.timeout.connect(self.connection_banner.hide)
        outer.addWidget(self._search_bar())

        self.log = ChatView()
        self.log.verticalScrollBar().valueChanged.connect(self._scrolled)
        self.log.typed.connect(self.insert_text)
        conversation = QWidget()
        column = QVBoxLayout(conversation)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.log, 1)
        self.marker = QPushButton("")
        self.marker.setObjectName("new-messages")
        self.marker.clicked.connect(self.scroll_to_bottom)
        self.marker.hide()
        column.addWidget(self.marker, 0, Qt.AlignmentFlag.AlignHCenter)
        column.addWidget(self._failed_bar())
        column.addWidget(self._ended_banner())
        column.addWidget(self._composer())

        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.setChildrenCollapsible(False)
        self.split.addWidget(conversation)
        self.split.addWidget(self._member_panel())
        self.split.setStretchFactor(0, 3)
        self.split.setStretchFactor(1, 1)
        self.split.setSizes([560, 200])
        outer.addWidget(self.split, 1)

    # -- building -----------------------------------------------------------------------------
    def _header(self) -> QWidget:
        header = QFrame()
        header.setObjectName("room-header")
        row = QHBoxLayout(header)
        row.setContentsMargins(12, 8, 8, 8)
        self.lock = QLabel("🔒")
        self.lock.setToolTip("end-to-end encrypted: the server relays what it cannot read")
        self.lock.setVisible(False)
        self.title = QLabel("")
        font = self.title.font()
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.15)
        self.title.setFont(font)
        self.role = QLabel("")
        self.role.setObjectName("subdued")
        self.security = QLabel("")  # encrypted or not, over TLS or not: always said
        self.security.setObjectName("room-security")
        self.search_button = QToolButton()
        self.search_button.setText("Search")
        self.search_button.setToolTip("search this room (Ctrl+F)")
        self.search_button.clicked.connect(self.open_search)
        self.members_button = QToolButton()
        self.members_button.setText("Members")
        self.members_button.setCheckable(True)
        self.members_button.setChecked(True)
        self.members_button.setToolTip("show or hide the member list")
        self.members_button.toggled.connect(lambda on: self.member_panel.setVisible(on))
        self.leave_button = QPushButton("Leave")
        self.leave_button.setToolTip("leave this room (/exit); it stays readable here")
        self.leave_button.clicked.connect(self.leave_clicked)
        row.addWidget(self.lock)
        row.addWidget(self.title)
        row.addWidget(self.role)
        row.addWidget(self.security)
        row.addStretch(1)
        for widget in (self.search_button, self.members_button, self.leave_button):
            row.addWidget(widget)
        return header

    def _search_bar(self) -> QWidget:
        self.search_bar = QFrame()
        self.search_bar.setObjectName("search-bar")
        row = QHBoxLayout(self.search_bar)
        row.setContentsMargins(12, 4, 8, 4)
        self.search = SearchField()
        self.search.setObjectName("search")
        self.search.setPlaceholderText("Search this room")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._search_changed)
        self.search.following.connect(self.next_hit)
        self.search.previous.connect(self.previous_hit)
        self.search.escaped.connect(self.close_search)
        self.hit_label = QLabel("")
        previous = QToolButton()
        previous.setText("↑")
        previous.setToolTip("previous (Shift+Enter)")
        previous.clicked.connect(self.previous_hit)
        following = QToolButton()
        following.setText("↓")
        following.setToolTip("next (Enter)")
        following.clicked.connect(self.next_hit)
        done = QToolButton()
        done.setText("Done")
        done.clicked.connect(self.close_search)
        for widget in (self.search, self.hit_label, previous, following, done):
            row.addWidget(widget, 1 if widget is self.search else 0)
        self.search_bar.hide()
        return self.search_bar

    def _ended_banner(self) -> QWidget:
        self.banner = QFrame()
        self.banner.setObjectName("ended")
        banner = QHBoxLayout(self.banner)
        banner.setContentsMargins(12, 6, 8, 6)
        self.banner_text = QLabel("")
        self.banner_text.setWordWrap(True)
        self.rejoin_button = QPushButton("Rejoin")
        self.rejoin_button.clicked.connect(self.rejoin_clicked)
        self.close_button = QPushButton("Close")
        self.close_button.setToolTip("remove this room from the list")
        self.close_button.clicked.connect(self.close_clicked)
        banner.addWidget(self.banner_text, 1)
        banner.addWidget(self.rejoin_button)
        banner.addWidget(self.close_button)
        self.banner.hide()
        return self.banner

    def _failed_bar(self) -> QWidget:
        self.failed_bar = QFrame()
        self.failed_bar.setObjectName("failed-bar")
        row = QHBoxLayout(self.failed_bar)
        row.setContentsMargins(12, 4, 8, 4)
        self.failed_text = QLabel("")
        self.failed_text.setStyleSheet(f"color: {WARNING_COLOUR};")
        self.retry_button = QPushButton("Retry")
        self.retry_button.setToolTip("send the messages that were not delivered again (/retry)")
        self.retry_button.clicked.connect(self.retry_clicked)
        row.addWidget(self.failed_text, 1)
        row.addWidget(self.retry_button)
        self.failed_bar.hide()
        return self.failed_bar

    def _composer(self) -> QWidget:
        box = QFrame()
        box.setObjectName("composer")
        row = QHBoxLayout(box)
        row.setContentsMargins(8, 6, 8, 8)
        self.emoji_button = QToolButton()
        self.emoji_button.setText("😀")
        self.emoji_button.setToolTip("insert an emoji")
        self.emoji_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.emoji_button.setMenu(emoji_menu(self.emoji_button, self.insert_text))
        self.input = Composer()
        self.input.send.connect(self._submit)
        self.input.textChanged.connect(self._count)
        self.counter = QLabel("")
        self.counter.setObjectName("byte-counter")
        self.counter.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self._submit)
        right = QVBoxLayout()
        right.setSpacing(2)
        right.addWidget(self.send_button)
        right.addWidget(self.counter)
        row.addWidget(self.emoji_button, 0, Qt.AlignmentFlag.AlignBottom)
        row.addWidget(self.input, 1)
        row.addLayout(right)
        return box

    def _member_panel(self) -> QWidget:
        self.member_panel = QWidget()
        self.member_panel.setObjectName("member-panel")
        column = QVBoxLayout(self.member_panel)
        column.setContentsMargins(6, 6, 8, 8)
        self.members_title = QLabel("Members")
        self.members_title.setObjectName("members-title")
        self.members_title.setWordWrap(True)
        self.members = QListWidget()
        self.members.setObjectName("members")
        self.members.setSpacing(2)  # (a style sheet would stop it following the theme)
        self.members.itemSelectionChanged.connect(self._member_selected)
        self.members.itemDoubleClicked.connect(lambda _item: self._verify_selected())
        self.details = QLabel("")
        self.details.setObjectName("member-details")
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.verify_button = QPushButton("Verify…")
        self.verify_button.setToolTip("compare safety numbers with the selected member")
        self.verify_button.clicked.connect(self._verify_selected)
        column.addWidget(self.members_title)
        column.addWidget(self.members, 1)
        column.addWidget(self.details)
        column.addWidget(self.verify_button)
        self.member_panel.setMinimumWidth(150)
        return self.member_panel

    # -- what the main window calls -------------------------------------------------------------
    def enter(self, room: str, username: str, host: bool, max_message: int,
              encrypted: bool = False, keep: bool = False, tls: bool = False,
              connection: str = "") -> None:
        """Start showing a membership; ``keep``: a rejoin, the conversation stays;
        ``tls``: joined over TLS; ``connection``: how (the header's tooltip)."""
        if not keep:
            self.scrollback = Scrollback()
            self.log.clear()
        self.max_message = max_message
        self.unseen = 0
        self.marker.hide()
        self.banner.hide()
        self.title.setText(render.sanitize(room))
        self.role.setText(f"as {render.sanitize_name(username)}"
                          + (" · host (leaving closes the room)" if host else ""))
        self.encrypted = encrypted
        self.lock.setVisible(encrypted)
        self.security.setText(models.security_text(encrypted, tls))
        self.security.setToolTip(
            ("end-to-end encrypted: the server relays what it cannot read" if encrypted
             else "not end-to-end encrypted: the server can read the messages")
            + (f"\n{connection}" if connection else ""))
        self.security.setStyleSheet("" if tls else f"color: {WARNING_COLOUR};")
        self.verify_button.setVisible(encrypted)
        self.set_members([])
        self._set_chatting(True)
        self._count()
        self.input.setFocus()

    def append(self, line: Line, clock: str | None = None, day: str | None = None) -> Entry:
        """Add ``line`` at the end; keep the view where it is unless it was at the bottom."""
        now = time.localtime()
        entry = Entry(line, clock if clock is not None else time.strftime("%H:%M", now),
                      day if day is not None else time.strftime("%Y-%m-%d", now))
        self.scrollback.append(entry)
        bar = self.log.verticalScrollBar()
        at_bottom = self.at_bottom()
        kept = bar.value()
        self.log.add(entry)
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
        """The chat is over: say why, offer rejoin and close; the conversation stays,
        greyed, the input off."""
        self.banner_text.setText(text)
        self.show_connection("")
        self.failed_bar.hide()
        self.rejoin_button.setVisible(can_rejoin)
        self.banner.show()
        self._set_chatting(False)

    @property
    def ended(self) -> bool:
        return self.banner.isVisibleTo(self)

    def set_members(self, members: list[Member]) -> None:
        """One row per member; the selected one's details under the list."""
        selected = self.selected_member()
        self._members = list(members)
        self.members.clear()
        lock = "🔒 " if self.encrypted else ""
        self.members_title.setText(f"{lock}Members ({len(members)})"
                                   + (" · end-to-end encrypted" if self.encrypted else ""))
        for member in members:
            item = QListWidgetItem(member.row_text(), self.members)
            item.setData(Qt.ItemDataRole.UserRole, member.name)
            item.setToolTip(member.details())
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

    def insert_text(self, text: str) -> None:
        self.input.insertPlainText(text)
        self.input.setFocus()

    def set_status(self, entry: int, text: str) -> None:
        """A message's delivery state beside its time ("" clears it)."""
        self.log.set_status(entry, text)

    def show_connection(self, text: str, for_ms: int = 0) -> None:
        """The link's state in ``connection_banner`` ("" hides it); ``for_ms``: only
        that long (an outcome, not a state)."""
        self._banner_timer.stop()
        self.connection_banner.setText(text)
        self.connection_banner.setVisible(bool(text))
        if text and for_ms:
            self._banner_timer.start(for_ms)

    def show_failed(self, count: int) -> None:
        """How many of our messages were not delivered, with *Retry* (0 hides it)."""
        self.failed_text.setText(
            f"⚠ {count} message{'s' if count != 1 else ''} not delivered")
        self.failed_bar.setVisible(count > 0)

    # -- search ---------------------------------------------------------------------------------
    def open_search(self) -> None:
        self.search_bar.show()
        self.search.setFocus()
        self.search.selectAll()

    def close_search(self) -> None:
        self.search.clear()
        self.search_bar.hide()
        self.input.setFocus()

    def _search_changed(self, text: str) -> None:
        self.hits = self.log.set_search(text)
        self.hit = len(self.hits)  # the first Enter goes to the newest hit
        if self.hits:
            self.previous_hit()
        else:
            self.log.current_match = -1
            self.hit_label.setText("no match" if text else "")

    def next_hit(self) -> None:
        self._go_hit(+1)

    def previous_hit(self) -> None:
        self._go_hit(-1)

    def _go_hit(self, step: int) -> None:
        if not self.hits:
            return
        self.hit = (self.hit + step) % len(self.hits)
        self.log.show_entry(self.hits[self.hit])
        self.hit_label.setText(f"{self.hit + 1} of {len(self.hits)}")

    # -- internals ----------------------------------------------------------------------------
    def _set_chatting(self, chatting: bool) -> None:
        self.input.setEnabled(chatting)
        self.send_button.setEnabled(chatting)
        self.emoji_button.setEnabled(chatting)
        self.leave_button.setEnabled(chatting)
        self.log.set_greyed(not chatting)

    def _member_selected(self) -> None:
        items = self.members.selectedItems()
        name = str(items[0].data(Qt.ItemDataRole.UserRole)) if items else None
        member = next((m for m in self._members if m.name == name), None)
        if member is None:
            self.details.setText("")
            self.details.hide()
        else:
            self.details.setText(member.details())
            self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
                                 if member.fingerprint else self.font())
            self.details.show()
        self.verify_button.setEnabled(
            bool(items) and bool(items[0].data(Qt.ItemDataRole.UserRole + 1)))

    def _verify_selected(self) -> None:
        if self.verify_button.isEnabled() and self.encrypted \
                and (name := self.selected_member()) is not None:
            self.verify_clicked.emit(name)

    def _submit(self) -> None:
        if self.input.isEnabled():
            self.submitted.emit(self.input.text())

    def _count(self) -> None:
        count = models.byte_count(self.input.text(), self.max_message)
        self.counter.setText(count.label())
        self.counter.setStyleSheet(f"color: {WARNING_COLOUR};" if count.over else "")

    def _scrolled(self, _value: int) -> None:
        if self.at_bottom():
            if self.unseen:
                self.unseen = 0
                self.marker.hide()
            self.caught_up.emit()

