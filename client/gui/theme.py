"""Light and dark themes: Qt's Fusion style with a palette of ours, following the system.

``Theme.SYSTEM`` follows the desktop's colour scheme (``QStyleHints.colorScheme``, which
Qt keeps up to date; it changes live); *View › Theme* overrides it with light or dark,
remembered in the settings. ``ChatColours`` are the chat view's colours, taken from the
palette in use so that bubbles, notices and links match the rest of the window.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

WARNING: Final = "#d32f2f"
WARNING_DARK: Final = "#ff6b6b"


class Theme(enum.Enum):
    SYSTEM = "system"
    LIGHT = "light"
    DARK = "dark"


_LIGHT: Final = {
    QPalette.ColorRole.Window: "#f4f5f7", QPalette.ColorRole.WindowText: "#1d1f23",
    QPalette.ColorRole.Base: "#ffffff", QPalette.ColorRole.AlternateBase: "#eceff3",
    QPalette.ColorRole.Text: "#1d1f23", QPalette.ColorRole.Button: "#e9ebef",
    QPalette.ColorRole.ButtonText: "#1d1f23", QPalette.ColorRole.Highlight: "#2f6fde",
    QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.Link: "#1f5fc8",
    QPalette.ColorRole.PlaceholderText: "#6b7280", QPalette.ColorRole.ToolTipBase: "#ffffff",
    QPalette.ColorRole.ToolTipText: "#1d1f23", QPalette.ColorRole.Mid: "#c9cdd4",
}
_DARK: Final = {
    QPalette.ColorRole.Window: "#1f2228", QPalette.ColorRole.WindowText: "#e6e8eb",
    QPalette.ColorRole.Base: "#16181d", QPalette.ColorRole.AlternateBase: "#2a2e36",
    QPalette.ColorRole.Text: "#e6e8eb", QPalette.ColorRole.Button: "#2c3038",
    QPalette.ColorRole.ButtonText: "#e6e8eb", QPalette.ColorRole.Highlight: "#3d7cf0",
    QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.Link: "#8ab4ff",
    QPalette.ColorRole.PlaceholderText: "#9aa1ab", QPalette.ColorRole.ToolTipBase: "#2a2e36",
    QPalette.ColorRole.ToolTipText: "#e6e8eb", QPalette.ColorRole.Mid: "#3a3f48",
}


def system_is_dark() -> bool:
    """The desktop asks for a dark scheme (Qt 6.5+ reads it from the platform)."""
    hints = QGuiApplication.styleHints()
    return hints.colorScheme() == Qt.ColorScheme.Dark


def palette(dark: bool) -> QPalette:
    result = QPalette()
    for role, colour in (_DARK if dark else _LIGHT).items():
        result.setColor(role, QColor(colour))
    disabled = QColor("#6b7280" if dark else "#9aa1ab")
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText,
                 QPalette.ColorRole.ButtonText):
        result.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return result


def apply(app: QApplication, theme: Theme) -> bool:
    """Use ``theme`` (the system's scheme for ``SYSTEM``); returns whether it is dark."""
    dark = system_is_dark() if theme is Theme.SYSTEM else theme is Theme.DARK
    if app.style().name().lower() != "fusion" and "Fusion" in QStyleFactory.keys():
        app.setStyle("Fusion")
    app.setPalette(palette(dark))
    return dark


@dataclass(frozen=True, slots=True)
class ChatColours:
    """What the chat view paints with."""

    background: QColor
    text: QColor
    subdued: QColor
    bubble: QColor  # others' messages
    own_bubble: QColor
    own_text: QColor
    link: QColor
    warning: QColor
    match: QColor  # a search hit
    dark: bool

    @classmethod
    def from_palette(cls, pal: QPalette) -> ChatColours:
        base = pal.color(QPalette.ColorRole.Base)
        dark = base.lightness() < 128
        return cls(background=base, text=pal.color(QPalette.ColorRole.Text),
                   subdued=pal.color(QPalette.ColorRole.PlaceholderText),
                   bubble=pal.color(QPalette.ColorRole.AlternateBase),
                   own_bubble=pal.color(QPalette.ColorRole.Highlight),
                   own_text=pal.color(QPalette.ColorRole.HighlightedText),
                   link=pal.color(QPalette.ColorRole.Link),
                   warning=QColor(WARNING_DARK if dark else WARNING),
                   match=QColor("#f2c94c" if dark else "#ffe27a"), dark=dark)
