"""The safety-number dialog of an encrypted room (docs/e2e.md §7.2): a view only.

Your key and the member's key side by side (name and fingerprint each), and under them
the safety number both of you see, in groups of five digits, to be compared out of band
(in person, by phone). *They match* accepts; ``client.gui.app.MainWindow`` then marks
the member verified through ``E2ERoomLink.verify`` (pinned in ``client.keystore``, as
``/verify`` does in ``ocm-chat``). Nothing here computes keys or numbers.
"""

from __future__ import annotations

from PySide6.QtGui import QFont, QFontDatabase
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from client import render
from client.gui import models


class VerifyDialog(QDialog):
    """Compare the safety number with ``member``; ``accepted`` if they match."""

    def __init__(self, me: str, my_fingerprint: str, member: str, their_fingerprint: str,
                 number: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        name = render.sanitize_name(member)
        self.setWindowTitle(f"Verify {name}")
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        outer = QVBoxLayout(self)
        intro = QLabel(f"Compare this safety number with {name}, in person or by phone. "
                       f"If it is the same on both screens, nobody is between you.")
        intro.setWordWrap(True)
        outer.addWidget(intro)

        sides = QGridLayout()
        for column, (title, fp) in enumerate(((f"You ({render.sanitize_name(me)})",
                                               my_fingerprint),
                                              (name, their_fingerprint))):
            box = QGroupBox(title)
            inner = QVBoxLayout(box)
            label = QLabel(models.group_lines(fp))
            label.setFont(mono)
            label.setWordWrap(True)
            label.setObjectName("fingerprint-me" if column == 0 else "fingerprint-them")
            inner.addWidget(label)
            sides.addWidget(box, 0, column)
        outer.addLayout(sides)

        outer.addWidget(QLabel("Safety number:"))
        self.number = QLabel(models.group_lines(number))
        self.number.setObjectName("safety-number")
        big = QFont(mono)
        big.setPointSizeF(mono.pointSizeF() * 1.4)
        self.number.setFont(big)
        outer.addWidget(self.number)

        buttons = QDialogButtonBox()
        self.match_button = buttons.addButton("They match: mark verified",
                                              QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        outer.addWidget(buttons)
