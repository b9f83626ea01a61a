"""The verification dialogs of an encrypted room (docs/e2e.md §7.2): views only.

Your key and the member's key side by side (name and fingerprint each), and under them
the safety number both of you see, in groups of five digits, to be compared out of band
(in person, by phone). *They match* accepts; ``client.gui.app.MainWindow`` then marks
the member verified through ``E2ERoomLink.verify`` (pinned in ``client.keystore``, as
``/verify`` does in ``ocm-chat``). *Compare emoji…* (``emoji_requested``) starts the
interactive verification instead: ``SasDialog`` shows the seven emoji and three numbers
``E2ERoomLink.on_sas`` gives; *They match* and *Cancel* are ``matched`` and ``cancelled``
(the main window calls ``sas_confirm`` / ``sas_cancel``). Nothing here computes keys or
numbers.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
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
from client.e2e.sas import SasShow
from client.gui import models


class VerifyDialog(QDialog):
    """Compare the safety number with ``member``; ``accepted`` if they match."""

    emoji_requested = Signal()  # compare emoji instead (the dialog closes)

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
        self.emoji_button = buttons.addButton("Compare emoji…",
                                              QDialogButtonBox.ButtonRole.ActionRole)
        self.emoji_button.setToolTip(f"both of you compare seven emoji, each on your own "
                                     f"screen, while {name} is online")
        self.emoji_button.clicked.connect(self._emoji)
        buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        outer.addWidget(buttons)

    def _emoji(self) -> None:
        self.reject()
        self.emoji_requested.emit()


class SasDialog(QDialog):
    """Compare emoji with ``member``: waiting, then the emoji and numbers (``show_sas``),
    *They match* (``matched``) or *Cancel* (``cancelled``, also when closed);
    ``finish`` closes it when the verification is over."""

    matched = Signal()
    cancelled = Signal()

    def __init__(self, member: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.member = member
        self.name = render.sanitize_name(member)
        self._over = False
        self.setWindowTitle(f"Verify {self.name} with emoji")
        outer = QVBoxLayout(self)
        self.state = QLabel(f"Waiting for {self.name} to accept…")
        self.state.setObjectName("sas-state")
        self.state.setWordWrap(True)
        outer.addWidget(self.state)
        self.grid = QGridLayout()
        outer.addLayout(self.grid)
        self.emoji: list[tuple[str, str]] = []
        self.decimals = QLabel("")
        self.decimals.setObjectName("sas-decimals")
        mono = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        mono.setPointSizeF(mono.pointSizeF() * 1.3)
        self.decimals.setFont(mono)
        self.decimals.setAlignment(Qt.AlignmentFlag.AlignCenter)
        outer.addWidget(self.decimals)
        buttons = QDialogButtonBox()
        self.match_button = buttons.addButton("They match",
                                              QDialogButtonBox.ButtonRole.AcceptRole)
        self.match_button.setEnabled(False)
        self.cancel_button = buttons.addButton("They differ / Cancel",
                                               QDialogButtonBox.ButtonRole.RejectRole)
        self.match_button.clicked.connect(self._match)
        buttons.rejected.connect(self.reject)
        outer.addWidget(buttons)

    def show_sas(self, show: SasShow) -> None:
        """The emoji (symbol over name) and numbers both screens show."""
        self.emoji = list(show.emoji)
        big = QFont(self.font())
        big.setPointSizeF(big.pointSizeF() * 2.2)
        for column, (symbol, name) in enumerate(show.emoji):
            glyph = QLabel(symbol)
            glyph.setFont(big)
            glyph.setAlignment(Qt.AlignmentFlag.AlignCenter)
            label = QLabel(name)
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.grid.addWidget(glyph, 0, column)
            self.grid.addWidget(label, 1, column)
        self.decimals.setText("   ".join(str(d) for d in show.decimals))
        self.state.setText(f"Compare these with what {self.name} sees. The same on both "
                           f"screens: nobody is between you.")
        self.match_button.setEnabled(True)

    def finish(self) -> None:
        """The verification is over (verified, cancelled or failed): close quietly."""
        self._over = True
        self.accept()

    def _match(self) -> None:
        self.match_button.setEnabled(False)
        self.state.setText(f"Confirmed; waiting for {self.name} to confirm too…")
        self.matched.emit()

    def reject(self) -> None:
        if not self._over:
            self._over = True
            self.cancelled.emit()
        super().reject()
