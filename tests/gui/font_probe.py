"""Run by test_fonts.py in a process of its own (fontconfig reads its configuration once
per process): start the app as ``ocm-gui`` does, show a room with Japanese and emoji, and
print what the layout came to, as JSON.

Usage: ``FONTCONFIG_FILE=... python -m tests.gui.font_probe``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QPoint, QSettings  # noqa: E402
from PySide6.QtGui import QFontInfo, QTextLayout  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

from client import render  # noqa: E402
from client.gui import models  # noqa: E402
from client.gui.__main__ import configure_app  # noqa: E402
from client.gui.app import MainWindow  # noqa: E402
from wire.e2e import MemberInfo  # noqa: E402

SAMPLE = "こんにちは 日本語 😀🎉"


def fonts_used(text: str, app: QApplication) -> list[str]:
    """The families Qt actually draws ``text`` with (its fallback included)."""
    layout = QTextLayout(text, app.font())
    layout.beginLayout()
    layout.createLine()
    layout.endLayout()
    return sorted({run.rawFont().familyName() for run in layout.glyphRuns()})


def inside(widget: QWidget, window: QWidget) -> bool:
    """``widget`` is shown and lies wholly inside ``window``."""
    top_left = widget.mapTo(window, QPoint(0, 0))
    return (widget.isVisible() and top_left.x() >= 0 and top_left.y() >= 0
            and top_left.x() + widget.width() <= window.width()
            and top_left.y() + widget.height() <= window.height())


def main() -> int:
    app = QApplication([sys.argv[0]])
    configure_app(app)
    settings = QSettings(sys.argv[1], QSettings.Format.IniFormat)
    window = MainWindow(settings)
    window.show()
    view = window.open_preview("ロビー", "さくら")
    for i, name in enumerate(("bob", "さくら", "carol")):
        view.append(render.chat_line(name, f"{SAMPLE} #{i}", own=name == "さくら"),
                    clock=f"08:5{i}")
    view.set_members(models.member_rows(tuple(MemberInfo(n, n == "bob") for n in (
        "bob", "さくら", "carol")), "さくら", None))
    view.input.setPlainText(SAMPLE)
    app.processEvents()
    hint = window.sizeHint()
    window.resize(1024, 700)
    app.processEvents()
    metrics = window.fontMetrics()
    print(json.dumps({
        "app_family": QFontInfo(app.font()).family(),
        "fonts_for_sample": fonts_used(SAMPLE, app),
        "digits_width": metrics.horizontalAdvance("08:50"),
        "x_width": metrics.horizontalAdvance("x"),
        "size_hint": [hint.width(), hint.height()],
        "minimum_width": window.minimumSizeHint().width(),
        "send_inside": inside(view.send_button, window),
        "members_inside": inside(view.members, window),
        "members_width": view.members.width(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
