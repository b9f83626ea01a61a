"""The conversation: a scroll area that paints only the rows on screen.

Every ``models.Entry`` becomes a row: a chat message (a bubble; the sender's name and
initials avatar on the first of a group, ``models.starts_group``; your own on the right
in the accent colour, with no name), a notice or a warning (centred, small, quiet), and
a day separator before the first entry of each day. Times are small and subdued beside
the bubble; the day and time are in the tooltip.

Why not a ``QListView``: with rows of different heights it lays out every row again on
each insertion and each scroll to the bottom, which is quadratic over a busy chat. Here
a row's height is computed once, when it is added (again only when the width changes),
and kept in a list of cumulative offsets: appending is constant time, painting finds the
first visible row by bisection. Only the rows on screen get a ``QTextLayout``
(wrapping, links, search hits), cached until the width changes.

Links (``models.find_links``: http and https only) are underlined and open in the
browser on a click; ``set_search`` highlights a text and returns the rows that hold it.
A drag selects text across messages (a notice is selected whole); Ctrl+C copies it as
plain text (``models.selection_text``: with times and names when it spans several),
Ctrl+A selects the whole conversation.
"""

from __future__ import annotations

import bisect
import datetime
from dataclasses import dataclass
from typing import Final

from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QContextMenuEvent,
    QDesktopServices,
    QFont,
    QFontMetrics,
    QGuiApplication,
    QHelpEvent,
    QKeyEvent,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPalette,
    QPixmap,
    QResizeEvent,
    QTextCharFormat,
    QTextLayout,
    QTextOption,
)
from PySide6.QtWidgets import QAbstractScrollArea, QMenu, QToolTip, QWidget

from client.gui import models
from client.gui.models import Entry
from client.gui.theme import ChatColours
from client.render import Kind

_CENTRED: Final = int(Qt.AlignmentFlag.AlignCenter)
_WRAP_CENTRED: Final = int(Qt.TextFlag.TextWordWrap) | int(Qt.AlignmentFlag.AlignHCenter)
_LEFT: Final = int(Qt.AlignmentFlag.AlignLeft)
_LEFT_TOP: Final = int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
_LEFT_MIDDLE: Final = int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
_WHITE: Final = QColor("#ffffff")
# Looked up once: an enum member's lookup is a descriptor call, many per painted row.
_OWN: Final = Kind.OWN
_CHAT: Final = Kind.CHAT
_WARNING: Final = Kind.WARNING
_NO_PEN: Final = Qt.PenStyle.NoPen
_ELIDE: Final = Qt.TextElideMode.ElideRight
SIDE: Final = 12  # px between the view's edges and the bubbles
AVATAR: Final = 32
GAP: Final = 8  # avatar to bubble, bubble to time
PAD_X: Final = 10
PAD_Y: Final = 6
GROUP_SPACE: Final = 10  # above the first message of a group
SAME_SPACE: Final = 2  # between messages of one group
TIME_ROOM: Final = 48  # width kept for the time beside a bubble
_CACHE_MAX: Final = 400  # text layouts kept (the rows on screen and around)
_IMAGES_MAX: Final = 24 << 20  # bytes of painted rows kept (a few screens, at any scale)


Span = tuple[int, int]  # selected code points of an entry's shown text: [start, end)


class RowKind:
    DAY = 0
    MESSAGE = 1
    NOTICE = 2
    UNREAD = 3  # "New messages" above the first message you have not seen


@dataclass(slots=True)
class Row:
    kind: int
    entry: int  # index into the entries (the day row: the entry it comes before)
    header: bool = False  # a message that shows name and avatar
    height: int = 0
    text_width: int = -1  # natural one-line width of the text, or -1: needs wrapping
    text_height: int = 0  # of a one-line text
    natural: int = -1  # one-line width, kept across resizes (-1: not measured, -2: lines)
    exact: bool = True  # False: the height is an estimate, made exact when painted


class ChatView(QAbstractScrollArea):
    """Shows ``Entry``s; ``add`` appends one, ``clear`` empties it."""

    link_clicked = Signal(str)
    typed = Signal(str)  # text typed while the conversation has the keys (for the input)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("scrollback")
        self.entries: list[Entry] = []
        self.rows: list[Row] = []
        self.tops: list[int] = []  # each row's y offset; the total height last
        self.status: dict[int, str] = {}  # entry -> delivery state shown by its time
        self.search = ""
        self.greyed = False  # the chat ended: still readable, quieter
        self.current_match = -1  # entry index of the highlighted hit
        self.unread_row = -1  # the row of the "New messages" divider, if shown
        self.fixed_today: str | None = None  # "today" for the day labels (None: the clock's)
        self._layouts: dict[tuple[int, str, int, Span | None], QTextLayout] = {}
        self.anchor: models.Position | None = None  # where the selection began
        self.focus_at: models.Position | None = None  # where it ends (the mouse)
        self._dragging = False
        # A message's or notice's row as painted (entry -> what it shows, the image): a
        # frame copies them instead of painting bubbles, avatars and text again. A row is
        # kept from its second paint on: a row scrolled past once is painted directly.
        self._images: dict[int, tuple[tuple[object, ...], QPixmap]] = {}
        self._drawn: dict[int, tuple[object, ...]] = {}  # rows painted once, directly
        self._images_bytes = 0
        self._look = 0  # counts the changes of colours and fonts (part of an image's key)
        self._links: dict[int, list[tuple[int, int, str]]] = {}
        self._senders: dict[tuple[str, bool], tuple[QColor, QColor, str]] = {}
        self._names: dict[tuple[str, int], str] = {}  # (name, room for it) -> as shown
        self._avatars: dict[tuple[str, int, float, int], QPixmap] = {}
        self._laid_width = 0
        self._colours = ChatColours.from_palette(self.palette())
        self.open_link = _open_in_browser  # what a click on a link does
        self.viewport().setMouseTracking(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QAbstractScrollArea.Shape.NoFrame)
        self.verticalScrollBar().setSingleStep(24)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # Ctrl+C, Ctrl+A after a click
        self._fonts()

    # -- fonts and colours ---------------------------------------------------------------------
    def _fonts(self) -> None:
        self.body = QFont(self.font())
        self.bold = QFont(self.body)
        self.bold.setBold(True)
        self.small = QFont(self.body)
        self.small.setPointSizeF(max(6.0, self.body.pointSizeF() * 0.82))
        self.fm = QFontMetrics(self.body)
        self.fm_bold = QFontMetrics(self.bold)
        self.fm_small = QFontMetrics(self.small)
        self.small_bold = QFont(self.small)
        self.small_bold.setBold(True)
        # A line with characters from fallback fonts (emoji, CJK) can be taller than one
        # in the body font: one-line texts that are not ASCII get this height.
        sample = QTextLayout("日本語 😀 Ж", self.body)
        sample.beginLayout()
        line = sample.createLine()
        sample.endLayout()
        self.mixed_height = max(self.fm.height(), int(line.height() + 0.999))

    def colours(self) -> ChatColours:
        """The colours of the palette in use (a theme change clears the cached text)."""
        colours = ChatColours.from_palette(self.palette())
        if colours != self._colours:
            self._colours = colours
            self._layouts.clear()
            self._look += 1
        return colours

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt's name)
        super().changeEvent(event)
        kind = event.type()
        if kind in (QEvent.Type.FontChange, QEvent.Type.ApplicationFontChange):
            self._fonts()
            self._relayout()

    # -- content ---------------------------------------------------------------------------------
    def clear(self) -> None:
        self.entries.clear()
        self.rows.clear()
        self.tops.clear()
        self.status.clear()
        self._layouts.clear()
        self._links.clear()
        self._forget_images()
        self.anchor = self.focus_at = None
        self.current_match = -1
        self.unread_row = -1
        self._update_range()
        self.viewport().update()

    def add(self, entry: Entry) -> None:
        """Append ``entry`` (and a day separator when it starts a new day)."""
        previous = self.entries[-1] if self.entries else None
        index = len(self.entries)
        self.entries.append(entry)
        if previous is None or previous.day != entry.day:
            self._push(Row(RowKind.DAY, index))
        if entry.is_chat:
            row = Row(RowKind.MESSAGE, index, models.starts_group(previous, entry))
        else:
            row = Row(RowKind.NOTICE, index)
        self._push(row)
        self._update_range()
        self.viewport().update()

    def _push(self, row: Row) -> None:
        if not self.tops:
            self.tops.append(0)
        row.height = self._measure(row, self._width())
        self.rows.append(row)
        self.tops.append(self.tops[-1] + row.height)

    def mark_unread(self, entry: int) -> None:
        """Show "New messages" above ``entry`` (moving it if it was elsewhere)."""
        self.clear_unread()
        index = len(self.rows) - 1
        while index >= 0 and not (self.rows[index].entry == entry
                                  and self.rows[index].kind != RowKind.DAY):
            index -= 1
        if index < 0:
            return
        row = Row(RowKind.UNREAD, entry)
        row.height = self._measure(row, self._width())
        self.rows.insert(index, row)
        self.tops.insert(index + 1, 0)
        self.unread_row = index
        self._retop(index)

    def clear_unread(self) -> None:
        """Remove the "New messages" divider."""
        if self.unread_row < 0:
            return
        index, self.unread_row = self.unread_row, -1
        del self.rows[index]
        del self.tops[index + 1]
        self._retop(index)

    def _retop(self, start: int) -> None:
        """The offsets from row ``start`` on, after a row came or went there."""
        bar = self.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 1
        for index in range(start, len(self.rows)):
            self.tops[index + 1] = self.tops[index] + self.rows[index].height
        self._update_range()
        if at_bottom:
            bar.setValue(bar.maximum())
        self.viewport().update()

    def set_status(self, entry: int, text: str) -> None:
        """A delivery state shown beside an entry's time ("" clears it)."""
        if text:
            self.status[entry] = text
        else:
            self.status.pop(entry, None)
        self.viewport().update()

    def today(self) -> str:
        """The local date the day separators count from (it moves on at midnight)."""
        return self.fixed_today or datetime.date.today().isoformat()

    def set_greyed(self, greyed: bool) -> None:
        self.greyed = greyed
        self.viewport().update()

    def toPlainText(self) -> str:  # noqa: N802 (the QPlainTextEdit name it replaces)
        """The conversation as text, one line per entry (``Entry.transcript``)."""
        return "\n".join(entry.transcript() for entry in self.entries)

    # -- search ----------------------------------------------------------------------------------
    def set_search(self, text: str) -> list[int]:
        """Highlight ``text`` (case-insensitive); the entries that hold it, oldest first."""
        self.search = text.casefold()
        self._layouts.clear()
        self.viewport().update()
        if not self.search:
            return []
        return [i for i, entry in enumerate(self.entries)
                if self.search in entry.line.text.casefold()
                or (entry.is_chat and self.search in entry.line.user.casefold())]

    def show_entry(self, entry: int) -> None:
        """Scroll so that ``entry`` is in the middle, and mark it as the current hit."""
        self.current_match = entry
        for row_index, row in enumerate(self.rows):
            if row.entry == entry and row.kind in (RowKind.MESSAGE, RowKind.NOTICE):
                middle = self.tops[row_index] + row.height // 2
                self.verticalScrollBar().setValue(middle - self.viewport().height() // 2)
                break
        self.viewport().update()

    # -- geometry ---------------------------------------------------------------------------------
    def _width(self) -> int:
        return max(200, self.viewport().width())

    def bubble_max(self, width: int) -> int:
        return max(120, min(int(width * 0.72), width - SIDE * 2 - AVATAR - GAP - TIME_ROOM))

    def _measure(self, row: Row, width: int, estimate: bool = False) -> int:
        """The row's height at ``width``. ``estimate``: a message that wraps gets its
        number of lines from its one-line width (a resize of 10,000 rows lays out none of
        them); ``_refine`` makes it exact when it is painted."""
        if row.kind in (RowKind.DAY, RowKind.UNREAD):
            return self.fm_small.height() + 20
        entry = self.entries[row.entry]
        text = models.shown_text(entry.line.text)
        if row.kind == RowKind.NOTICE:
            text = ("⚠ " if entry.line.kind is _WARNING else "") + text
            if row.natural == -1:
                row.natural = -2 if "\n" in text else self.fm_small.horizontalAdvance(text) + 2
            if 0 <= row.natural <= width - 4 * SIDE:
                row.text_width = row.natural
                return self.fm_small.height() + 8  # one line: no wrapping to work out
            row.text_width = -1
            rect = self.fm_small.boundingRect(
                QRect(0, 0, width - 4 * SIDE, 100000),
                _WRAP_CENTRED, text)
            return rect.height() + 8
        inner = self.bubble_max(width) - 2 * PAD_X
        if row.natural == -1:  # measured once; a resize only compares it with the width
            if "\n" in text:
                row.natural = -2
            else:
                ascii_only = text.isascii()
                row.natural = self.fm.horizontalAdvance(text) + (0 if ascii_only else 2)
                row.text_height = self.fm.height() if ascii_only else self.mixed_height
        if 0 <= row.natural <= inner:  # one line: no text layout needed
            row.text_width = row.natural
            row.exact = True
            return self._message_height(row, row.text_height)
        row.exact = not (estimate and row.natural >= 0)
        if not row.exact:
            row.text_width = -1
            return self._message_height(row, -(-row.natural // inner) * row.text_height)
        layout = self._layout(row, inner)
        row.text_width = -1
        return self._message_height(row, int(layout.boundingRect().height() + 0.999))

    def _message_height(self, row: Row, text_height: int) -> int:
        entry = self.entries[row.entry]
        height = text_height + 2 * PAD_Y + (GROUP_SPACE if row.header else SAME_SPACE)
        if row.header and entry.line.kind is _CHAT:
            height += self.fm_bold.height() + 2
        return height

    def _layout(self, row: Row, inner: int) -> QTextLayout:
        """The wrapped text of a message row, with links and search hits formatted."""
        selected = self.selected_span(row.entry)
        key = (row.entry, self.search, inner, selected)
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        entry = self.entries[row.entry]
        text = models.shown_text(entry.line.text)
        layout = QTextLayout(text, self.body)
        option = QTextOption()
        option.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        layout.setTextOption(option)
        own = entry.line.kind is _OWN
        formats = []
        # Qt counts UTF-16 units: the ranges are converted (an emoji is two).
        links = [(_utf16(text, start), _utf16(text, end), url)
                 for start, end, url in models.find_links(text)]
        self._links[row.entry] = links
        for start, end, _url in links:
            link = QTextCharFormat()
            link.setForeground(self._colours.own_text if own else self._colours.link)
            link.setFontUnderline(True)
            formats.append(_range(start, end - start, link))
        if self.search:
            folded = text.casefold()
            at = folded.find(self.search)
            while at >= 0 and len(folded) == len(text):
                hit = QTextCharFormat()
                hit.setBackground(self._colours.match)
                hit.setForeground(QColor("#000000"))
                start = _utf16(text, at)
                formats.append(_range(start, _utf16(text, at + len(self.search)) - start,
                                      hit))
                at = folded.find(self.search, at + len(self.search))
        if selected is not None:
            chosen = QTextCharFormat()
            chosen.setBackground(self.palette().color(QPalette.ColorRole.Highlight))
            chosen.setForeground(self.palette().color(QPalette.ColorRole.HighlightedText))
            start = _utf16(text, selected[0])
            formats.append(_range(start, _utf16(text, selected[1]) - start, chosen))
        layout.setFormats(formats)
        layout.beginLayout()
        y = 0.0
        while True:
            line = layout.createLine()
            if not line.isValid():
                break
            line.setLineWidth(inner)
            line.setPosition(QPointF(0, y))
            y += line.height()
        layout.endLayout()
        if len(self._layouts) > _CACHE_MAX:
            self._layouts.clear()
        self._layouts[key] = layout
        return layout

    def _relayout(self) -> None:
        width = self._width()
        self._laid_width = width
        self._layouts.clear()
        self._forget_images()
        self._names.clear()
        self._look += 1
        tops = [0]
        inner = self.bubble_max(width) - 2 * PAD_X
        notice_width = width - 4 * SIDE
        total = 0
        for row in self.rows:
            kind = row.kind
            # a day row, or a one-line row that still fits, keeps its height
            if not (kind in (RowKind.DAY, RowKind.UNREAD)
                    or (kind == RowKind.MESSAGE and row.text_width >= 0
                        and row.natural <= inner)
                    or (kind == RowKind.NOTICE and row.text_width >= 0
                        and row.natural <= notice_width)):
                row.height = self._measure(row, width, estimate=True)
            total += row.height
            tops.append(total)
        self.tops = tops if self.rows else []
        self._update_range()
        self.viewport().update()

    def _refine(self, width: int) -> None:
        """Make the heights of the rows on screen exact (see ``_measure``), moving the
        rows under them; the view stays at the bottom if it was there."""
        bar = self.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 1
        changed = False
        while True:
            offset = bar.value()
            first = max(0, bisect.bisect_right(self.tops, offset) - 1)
            end = offset + self.viewport().height()
            last = bisect.bisect_right(self.tops, end, first)  # rows below: not on screen
            pending = [index for index in range(first, min(last, len(self.rows)))
                       if not self.rows[index].exact]
            if not pending:
                break
            for index in pending:
                row = self.rows[index]
                row.height = self._measure(row, width)
            start = pending[0]
            for index in range(start, len(self.rows)):
                self.tops[index + 1] = self.tops[index] + self.rows[index].height
            changed = True
            self._update_range()
            if at_bottom:
                bar.setValue(bar.maximum())
        if changed:
            self._update_range()

    def _update_range(self) -> None:
        bar = self.verticalScrollBar()
        total = self.tops[-1] if self.tops else 0
        bar.setPageStep(self.viewport().height())
        bar.setRange(0, max(0, total + SIDE - self.viewport().height()))

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt's name)
        bar = self.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 1
        super().resizeEvent(event)
        if self._width() != self._laid_width:
            self._relayout()
        else:
            self._update_range()
        if at_bottom:
            bar.setValue(bar.maximum())

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(420, 300)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return QSize(240, 120)

    # -- painting ---------------------------------------------------------------------------------
    def paintEvent(self, _event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self.viewport())
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        colours = self.colours()
        painter.fillRect(self.viewport().rect(), colours.background)
        if not self.rows:
            return
        if self.greyed:
            painter.setOpacity(0.55)
        width = self._width()
        self._refine(width)
        offset = self.verticalScrollBar().value()
        bottom = offset + self.viewport().height()
        first = max(0, bisect.bisect_right(self.tops, offset) - 1)
        scale = self.viewport().devicePixelRatioF()
        current = None
        for index in range(first, len(self.rows)):
            top = self.tops[index]
            if top > bottom:
                break
            row = self.rows[index]
            y = top - offset
            if row.kind == RowKind.DAY:
                self._paint_day(painter, row, y, width)
            elif row.kind == RowKind.UNREAD:
                self._paint_unread(painter, row, y, width)
            else:
                image = self._image(row, width, scale)
                if image is not None:
                    painter.drawPixmap(0, y, image)
                elif row.kind == RowKind.NOTICE:
                    self._paint_notice(painter, row, y, width)
                else:
                    self._paint_message(painter, row, y, width)
                if row.entry == self.current_match:
                    current = (row, y)
        if current is not None:  # over the rows around it
            row, y = current
            self._outline(painter, self.bubble_rect(row, y, width).adjusted(-3, -3, 3, 3)
                          if row.kind == RowKind.MESSAGE
                          else QRectF(SIDE, y + 1, width - 2 * SIDE, row.height - 2))
        painter.end()

    def _image(self, row: Row, width: int, scale: float) -> QPixmap | None:
        """The row painted on the background, kept until what it shows changes; None
        the first time the row is painted so (the caller paints it directly)."""
        key = (row.kind, row.header, row.height, width, scale, self._look, self.search,
               self.status.get(row.entry), self.selected_span(row.entry))
        known = self._images.get(row.entry)
        if known is not None and known[0] == key:
            return known[1]
        if self._drawn.get(row.entry) != key:
            if len(self._drawn) > 4096:
                self._drawn.clear()
            self._drawn[row.entry] = key
            return None
        image = QPixmap(int(width * scale + 0.999), int(row.height * scale + 0.999))
        image.setDevicePixelRatio(scale)
        image.fill(self._colours.background)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if row.kind == RowKind.NOTICE:
            self._paint_notice(painter, row, 0, width)
        else:
            self._paint_message(painter, row, 0, width)
        painter.end()
        size = image.width() * image.height() * 4
        if known is not None:
            del self._images[row.entry]
            self._images_bytes -= known[1].width() * known[1].height() * 4
        if self._images_bytes + size > _IMAGES_MAX:
            self._forget_images()
        self._images[row.entry] = (key, image)
        self._images_bytes += size
        return image

    def _forget_images(self) -> None:
        self._images.clear()
        self._drawn.clear()
        self._images_bytes = 0

    def _paint_day(self, painter: QPainter, row: Row, y: int, width: int) -> None:
        today = self.today()
        label = models.day_label(self.entries[row.entry].day or today, today)
        painter.setFont(self.small)
        text_width = self.fm_small.horizontalAdvance(label) + 20
        middle = y + row.height // 2
        pill = QRectF((width - text_width) / 2, middle - self.fm_small.height() / 2 - 3,
                      text_width, self.fm_small.height() + 6)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(self._colours.bubble)
        painter.drawRoundedRect(pill, pill.height() / 2, pill.height() / 2)
        painter.setPen(self._colours.subdued)
        painter.drawText(pill, _CENTRED, label)

    def _paint_unread(self, painter: QPainter, row: Row, y: int, width: int) -> None:
        colour = self.palette().color(QPalette.ColorRole.Highlight)
        label = "New messages"
        middle = y + row.height // 2
        text_width = self.fm_small.horizontalAdvance(label) + 16
        painter.setPen(colour)
        left_end = (width - text_width) / 2
        painter.drawLine(QPointF(SIDE, middle), QPointF(left_end, middle))
        painter.drawLine(QPointF(left_end + text_width, middle),
                         QPointF(width - SIDE, middle))
        painter.setFont(self.small)
        painter.drawText(QRectF(left_end, y, text_width, row.height),
                         _CENTRED, label)

    def _paint_notice(self, painter: QPainter, row: Row, y: int, width: int) -> None:
        entry = self.entries[row.entry]
        warning = entry.line.kind is _WARNING
        text = ("⚠ " if warning else "") + models.shown_text(entry.line.text)
        painter.setFont(self.small)
        painter.setPen(self._colours.warning if warning else self._colours.subdued)
        box = QRect(2 * SIDE, y + 4, width - 4 * SIDE, row.height - 8)
        if self.selected_span(row.entry) is not None:  # a notice is selected whole
            palette = self.palette()
            painter.fillRect(self.fm_small.boundingRect(box, _WRAP_CENTRED, text),
                             palette.color(QPalette.ColorRole.Highlight))
            painter.setPen(palette.color(QPalette.ColorRole.HighlightedText))
        painter.drawText(box, _WRAP_CENTRED, text)

    def bubble_rect(self, row: Row, y: int, width: int) -> QRectF:
        """Where a message's bubble is painted (``y``: the row's top on screen)."""
        entry = self.entries[row.entry]
        own = entry.line.kind is _OWN
        inner = self.bubble_max(width) - 2 * PAD_X
        if row.text_width >= 0:
            text_width, text_height = row.text_width, row.text_height
        else:
            layout = self._layout(row, inner)
            box = layout.boundingRect()
            text_width = min(inner, int(max(line_width(layout), 1) + 0.999))
            text_height = int(box.height() + 0.999)
        top = y + (GROUP_SPACE if row.header else SAME_SPACE)
        if row.header and not own:
            top += self.fm_bold.height() + 2
        bubble_width = text_width + 2 * PAD_X
        left = width - SIDE - bubble_width if own else SIDE + AVATAR + GAP
        return QRectF(left, top, bubble_width, text_height + 2 * PAD_Y)

    def _paint_message(self, painter: QPainter, row: Row, y: int, width: int) -> None:
        colours = self._colours
        entry = self.entries[row.entry]
        own = entry.line.kind is _OWN
        bubble = self.bubble_rect(row, y, width)
        if row.header and not own:
            colour, avatar_colour, letters = self._sender(entry.line.user, colours.dark)
            painter.setFont(self.bold)
            painter.setPen(colour)
            name_top = y + GROUP_SPACE
            room = int(width - bubble.left() - SIDE)
            painter.drawText(QRectF(bubble.left() + 2, name_top, room, self.fm_bold.height()),
                             _LEFT_MIDDLE, self._name(entry.line.user, room))
            painter.drawPixmap(SIDE, name_top, self._avatar(letters, avatar_colour,
                                                            painter.device().devicePixelRatioF()))
        painter.setPen(_NO_PEN)
        painter.setBrush(colours.own_bubble if own else colours.bubble)
        painter.drawRoundedRect(bubble, 12, 12)
        painter.setFont(self.body)
        painter.setPen(colours.own_text if own else colours.text)
        origin = QPointF(bubble.left() + PAD_X, bubble.top() + PAD_Y)
        if row.text_width >= 0 and not self.search and not self._has_link(row) \
                and self.selected_span(row.entry) is None:
            painter.drawText(QRectF(origin.x(), origin.y(), row.text_width + 2,
                                    row.text_height),
                             _LEFT_TOP,
                             entry.line.text)
        else:
            inner = self.bubble_max(width) - 2 * PAD_X
            self._layout(row, inner).draw(painter, origin)
        painter.setFont(self.small)
        painter.setPen(colours.subdued)
        stamp = entry.clock
        if state := self.status.get(row.entry):
            stamp = f"{state} {stamp}" if own else f"{stamp} {state}"
        stamp_width = self.fm_small.horizontalAdvance(stamp)
        stamp_x = bubble.left() - GAP - stamp_width if own else bubble.right() + GAP
        painter.drawText(QRectF(stamp_x, bubble.bottom() - self.fm_small.height() - 2,
                                stamp_width + 1, self.fm_small.height()),
                         _LEFT, stamp)

    def _sender(self, name: str, dark: bool) -> tuple[QColor, QColor, str]:
        """A sender's name colour (lifted on dark), avatar colour and initials."""
        key = (name, dark)
        known = self._senders.get(key)
        if known is None:
            known = (QColor(*models.sender_rgb(name, dark)), QColor(*models.sender_rgb(name)),
                     models.initials(name))
            if len(self._senders) > 4096:
                self._senders.clear()
            self._senders[key] = known
        return known

    def _name(self, name: str, room: int) -> str:
        """``name`` elided to ``room`` pixels in the bold font (kept)."""
        key = (name, room)
        shown = self._names.get(key)
        if shown is None:
            shown = self.fm_bold.elidedText(name, _ELIDE, room)
            if len(self._names) > 4096:
                self._names.clear()
            self._names[key] = shown
        return shown

    def _avatar(self, letters: str, colour: QColor, scale: float) -> QPixmap:
        """The initials on their colour, painted once per look and scale."""
        key = (letters, colour.rgba(), scale, self._look)
        image = self._avatars.get(key)
        if image is None:
            image = QPixmap(int(AVATAR * scale + 0.999), int(AVATAR * scale + 0.999))
            image.setDevicePixelRatio(scale)
            image.fill(Qt.GlobalColor.transparent)
            painter = QPainter(image)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            paint_avatar(painter, QRectF(0, 0, AVATAR, AVATAR), letters, colour,
                         self.small_bold)
            painter.end()
            if len(self._avatars) > 512:
                self._avatars.clear()
            self._avatars[key] = image
        return image

    def _outline(self, painter: QPainter, rect: QRectF) -> None:
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(self.palette().color(QPalette.ColorRole.Highlight))
        painter.drawRoundedRect(rect, 14, 14)

    def _has_link(self, row: Row) -> bool:
        text = self.entries[row.entry].line.text
        return "http" in text.lower() or "www." in text.lower()

    # -- the mouse ---------------------------------------------------------------------------------
    def row_at(self, y: int) -> int:
        """The row under viewport coordinate ``y`` (-1: none)."""
        position = y + self.verticalScrollBar().value()
        index = bisect.bisect_right(self.tops, position) - 1
        return index if 0 <= index < len(self.rows) else -1

    def link_at(self, x: float, y: float) -> str | None:
        """The link under viewport point ``(x, y)``, if any."""
        index = self.row_at(int(y))
        if index < 0 or self.rows[index].kind != RowKind.MESSAGE:
            return None
        row = self.rows[index]
        if not self._has_link(row):
            return None
        width = self._width()
        bubble = self.bubble_rect(row, self.tops[index] - self.verticalScrollBar().value(),
                                  width)
        if not bubble.contains(QPointF(x, y)):
            return None
        layout = self._layout(row, self.bubble_max(width) - 2 * PAD_X)
        local = QPointF(x - bubble.left() - PAD_X, y - bubble.top() - PAD_Y)
        for number in range(layout.lineCount()):
            line = layout.lineAt(number)
            if line.y() <= local.y() < line.y() + line.height():
                if local.x() > line.naturalTextWidth():
                    return None
                at = line.xToCursor(local.x())
                for start, end, url in self._links.get(row.entry, []):
                    if start <= at < end:
                        return url
        return None

    def entry_at(self, y: int) -> int:
        index = self.row_at(y)
        return -1 if index < 0 or self.rows[index].kind in (RowKind.DAY, RowKind.UNREAD) \
            else self.rows[index].entry

    # -- selection ---------------------------------------------------------------------------------
    def selection(self) -> tuple[models.Position, models.Position] | None:
        """The selected stretch, first position first (None: nothing selected)."""
        if self.anchor is None or self.focus_at is None or self.anchor == self.focus_at:
            return None
        return min(self.anchor, self.focus_at), max(self.anchor, self.focus_at)

    def selected_span(self, entry: int) -> Span | None:
        """The part of ``entry``'s shown text that is selected, if any."""
        chosen = self.selection()
        if chosen is None or not chosen[0][0] <= entry <= chosen[1][0]:
            return None
        (first, start), (last, end) = chosen
        low = start if entry == first else 0
        high = end if entry == last else len(models.shown_text(self.entries[entry].line.text))
        return (low, high) if low < high else None

    def selected_text(self) -> str:
        """The selection as plain text (``models.selection_text``); "" when none."""
        chosen = self.selection()
        return "" if chosen is None else models.selection_text(self.entries, *chosen)

    def copy_selection(self) -> None:
        text = self.selected_text()
        if text:
            QGuiApplication.clipboard().setText(text)

    def select_all(self) -> None:
        if self.entries:
            last = len(self.entries) - 1
            self._select((0, 0), (last, len(models.shown_text(self.entries[last].line.text))))

    def clear_selection(self) -> None:
        self._select(None, None)

    def _select(self, anchor: models.Position | None, focus: models.Position | None) -> None:
        if (anchor, focus) != (self.anchor, self.focus_at):
            self.anchor, self.focus_at = anchor, focus
            self.viewport().update()

    def position_at(self, x: float, y: float) -> models.Position | None:
        """The place in the text under viewport point ``(x, y)``: a character of a
        message, the start or end of a notice (the nearer side), the start of the
        entry after a day separator; past the last row, the end of the last entry."""
        if not self.entries:
            return None
        index = self.row_at(int(y))
        if index < 0:
            last = len(self.entries) - 1
            return last, len(models.shown_text(self.entries[last].line.text))
        row = self.rows[index]
        text = models.shown_text(self.entries[row.entry].line.text)
        if row.kind in (RowKind.DAY, RowKind.UNREAD):
            return row.entry, 0
        width = self._width()
        if row.kind == RowKind.NOTICE:
            return row.entry, 0 if x < width / 2 else len(text)
        bubble = self.bubble_rect(row, self.tops[index] - self.verticalScrollBar().value(),
                                  width)
        layout = self._layout(row, self.bubble_max(width) - 2 * PAD_X)
        local_y = y - bubble.top() - PAD_Y
        if local_y < 0:
            return row.entry, 0
        for number in range(layout.lineCount()):
            line = layout.lineAt(number)
            if local_y < line.y() + line.height():
                at = line.xToCursor(x - bubble.left() - PAD_X)
                return row.entry, _from_utf16(text, at)
        return row.entry, len(text)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 (Qt's name)
        if event.matches(QKeySequence.StandardKey.Copy):
            self.copy_selection()
        elif event.matches(QKeySequence.StandardKey.SelectAll):
            self.select_all()
        elif event.text().isprintable() and event.text() and not event.modifiers() & (
                Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier
                | Qt.KeyboardModifier.MetaModifier):
            self.typed.emit(event.text())  # typing after a click goes to the input
        else:
            super().keyPressEvent(event)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt's name)
        if event.button() == Qt.MouseButton.LeftButton:
            point = event.position()
            at = self.position_at(point.x(), point.y())
            self._select(at, at)
            self._dragging = True
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt's name)
        point = event.position()
        if self._dragging:
            bar = self.verticalScrollBar()
            if point.y() < 0:  # past an edge: the view follows
                bar.setValue(bar.value() - bar.singleStep())
            elif point.y() > self.viewport().height():
                bar.setValue(bar.value() + bar.singleStep())
            self._select(self.anchor, self.position_at(point.x(), point.y()))
        link = self.link_at(point.x(), point.y())
        self.viewport().setCursor(Qt.CursorShape.PointingHandCursor if link
                                  else Qt.CursorShape.ArrowCursor)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt's name)
        point = event.position()
        if event.button() == Qt.MouseButton.LeftButton:
            self._dragging = False
        if event.button() == Qt.MouseButton.LeftButton and self.selection() is None \
                and (link := self.link_at(point.x(), point.y())) is not None:
            self.link_clicked.emit(link)
            self.open_link(link)
        super().mouseReleaseEvent(event)

    def viewportEvent(self, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if isinstance(event, QHelpEvent) and event.type() == QEvent.Type.ToolTip:
            entry = self.entry_at(event.pos().y())
            if entry >= 0:
                item = self.entries[entry]
                today = self.today()
                day = models.day_label(item.day or today, today)
                QToolTip.showText(event.globalPos(), f"{day}, {item.clock}", self.viewport())
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)

    def context_menu(self, x: float, y: float) -> QMenu | None:
        """What a right click at viewport point ``(x, y)`` offers: copy the message's
        text, and its link if the click was on one."""
        entry = self.entry_at(int(y))
        if entry < 0:
            return None
        menu = QMenu(self)
        if self.selection() is not None:
            menu.addAction("Copy selection").triggered.connect(self.copy_selection)
        text = models.shown_text(self.entries[entry].line.text)
        menu.addAction("Copy text").triggered.connect(
            lambda: QGuiApplication.clipboard().setText(text))
        link = self.link_at(x, y)
        if link is not None:
            menu.addAction("Copy link").triggered.connect(
                lambda: QGuiApplication.clipboard().setText(link))
        return menu

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:  # noqa: N802 (Qt's name)
        menu = self.context_menu(event.pos().x(), event.pos().y())
        if menu is not None:
            menu.popup(event.globalPos())


def _open_in_browser(url: str) -> None:
    QDesktopServices.openUrl(QUrl(url))


def line_width(layout: QTextLayout) -> float:
    """The widest line of a laid-out text."""
    return max((layout.lineAt(i).naturalTextWidth() for i in range(layout.lineCount())),
               default=0.0)


def paint_avatar(painter: QPainter, rect: QRectF, letters: str, colour: QColor,
                 font: QFont) -> None:
    """A circle in the sender's colour with their initials (``letters``, in ``font``)."""
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(colour)
    painter.drawEllipse(rect)
    painter.setPen(_WHITE)
    painter.setFont(font)
    painter.drawText(rect, _CENTRED, letters)


def _utf16(text: str, index: int) -> int:
    """The UTF-16 offset of code point ``index`` of ``text`` (what Qt counts)."""
    head = text[:index]
    return index if head.isascii() else len(head.encode("utf-16-le")) // 2


def _from_utf16(text: str, offset: int) -> int:
    """The code point index of UTF-16 offset ``offset`` of ``text`` (what Qt returns)."""
    if text.isascii():
        return min(offset, len(text))
    return len(text.encode("utf-16-le")[:2 * offset].decode("utf-16-le", errors="ignore"))


def _range(start: int, length: int, fmt: QTextCharFormat) -> QTextLayout.FormatRange:
    item = QTextLayout.FormatRange()
    item.start, item.length, item.format = start, length, fmt
    return item
