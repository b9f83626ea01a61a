"""The connect screen: server, name, create or join, room, password.

It only gathers a ``models.ConnectRequest`` and emits ``submitted``; the main window
joins (``client.session``) and calls ``show_error(field, text)`` with what went wrong,
shown in plain words under the field it concerns. Recent servers, names and rooms live in
``QSettings`` (``remember_request`` after a successful join).

TLS (on by default) asks for TCRP inside TLS on the server's TLS port: the server's key
is pinned on first use (``client.known_servers``), or, with a CA file, its certificate is
verified against that CA. Unticked, TCRP goes in clear to the plain port. "End-to-end
encrypted" (when creating) makes the new room an encrypted one (docs/e2e.md); joining
needs no toggle, the server says whether a room is encrypted.

When the key store needs a passphrase (the identity was saved with one, and no OS keyring
holds the key), the main window asks for it with ``passphrase_dialog`` and joins again.
"""

from __future__ import annotations

from typing import Final

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from client.gui import models
from client.gui.models import ConnectRequest
from client.refusals import Field
from wire.codes import Operation

_RECENT_KEYS: Final = {Field.SERVER: "recent/servers", Field.NAME: "recent/names",
                       Field.ROOM: "recent/rooms"}
_ERROR_STYLE: Final = "color: #d32f2f;"


def _bool(value: object) -> bool:
    """A QSettings boolean (INI files give strings back)."""
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def _recent(settings: QSettings, key: str) -> list[str]:
    value = settings.value(key, [])
    if isinstance(value, str):  # QSettings gives a 1-item list back as a string
        return [value] if value else []
    if isinstance(value, list):
        return [str(item) for item in value]
    return []


PASSPHRASE_TEXT: Final = ("Your identity keys are locked with a passphrase.\n"
                          "Type it to unlock them (it is kept in memory only):")
WRONG_PASSPHRASE_TEXT: Final = "That passphrase does not open your keys. Try again:"


def passphrase_dialog(parent: QWidget, wrong: bool) -> QInputDialog:
    """A dialog asking for the key store's passphrase, typed hidden; ``wrong``: the last
    one did not open the keys. The caller connects ``textValueSelected`` and
    ``rejected`` and calls ``open()``."""
    dialog = QInputDialog(parent)
    dialog.setObjectName("key-passphrase")
    dialog.setWindowTitle("Unlock your keys")
    dialog.setInputMode(QInputDialog.InputMode.TextInput)
    dialog.setTextEchoMode(QLineEdit.EchoMode.Password)
    dialog.setLabelText(WRONG_PASSPHRASE_TEXT if wrong else PASSPHRASE_TEXT)
    dialog.setOkButtonText("Unlock")
    return dialog


PROTECT_TEXT: Final = (
    "Lock your identity keys with a passphrase. Without an OS keyring they are encrypted "
    "with a key file kept beside them, so anyone who copies that folder can read them; with "
    "a passphrase, the folder alone opens nothing. ocm-gui asks for the passphrase when it "
    "needs your keys (once per run); nobody can recover it for you.")
MISMATCH_TEXT: Final = "The two passphrases differ."


class ProtectKeysDialog(QDialog):
    """A new passphrase, typed twice, hidden. ``chosen(bytes)`` once both match; the
    caller may ``refuse(text)`` it (the dialog stays open with the reason) or ``accept()``."""

    chosen = Signal(bytes)

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("protect-keys")
        self.setWindowTitle("Protect your keys")
        layout = QVBoxLayout(self)
        intro = QLabel(PROTECT_TEXT)
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.first = QLineEdit()
        self.second = QLineEdit()
        for field, label in ((self.first, "&Passphrase"), (self.second, "&Again")):
            field.setEchoMode(QLineEdit.EchoMode.Password)
            form.addRow(label, field)
        layout.addLayout(form)
        self.error = QLabel("")
        self.error.setObjectName("error")
        self.error.setWordWrap(True)
        layout.addWidget(self.error)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.protect_button = buttons.addButton("&Lock my keys",
                                                QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self._submit)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _submit(self) -> None:
        first, second = self.first.text(), self.second.text()
        if not first:
            self.refuse("Type a passphrase, twice.")
        elif first != second:
            self.refuse(MISMATCH_TEXT)
        else:
            self.chosen.emit(first.encode())

    def refuse(self, text: str) -> None:
        self.error.setText(text)
        self.second.clear()
        self.second.setFocus()


class ConnectScreen(QWidget):
    """Emits ``submitted(ConnectRequest)`` when the form is valid and Connect is pressed."""

    submitted = Signal(object)

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings = settings
        self.setObjectName("connect")
        card = QWidget()  # the form, centred, at most a readable width
        card.setMaximumWidth(640)
        centre = QHBoxLayout(self)
        centre.addStretch(1)
        centre.addWidget(card, 4)
        centre.addStretch(1)
        outer = QVBoxLayout(card)
        outer.setContentsMargins(16, 24, 16, 24)
        title = QLabel("Online Chat Messenger")
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        title.setFont(font)
        outer.addWidget(title)
        outer.addWidget(QLabel("Create a chat room or join one."))

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.server = self._combo(Field.SERVER, models.DEFAULT_SERVER)
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(int(str(settings.value("last/port", models.DEFAULT_TLS_PORT))))
        self.tls = QCheckBox("TLS")
        self.tls.setEnabled(models.TLS_AVAILABLE)
        self.tls.setToolTip("join over TLS (the server's TLS port): its key is pinned on "
                            "first use, or its certificate verified against the CA file")
        self.tls.setChecked(_bool(settings.value("last/tls", True)))
        where = QHBoxLayout()
        where.addWidget(self.server, 1)
        where.addWidget(QLabel("port"))
        where.addWidget(self.port)
        where.addWidget(self.tls)
        self.errors: dict[Field, QLabel] = {}
        form.addRow("Server", where)
        self.ca_file = QLineEdit(str(settings.value("last/ca_file", "") or ""))
        self.ca_file.setPlaceholderText("optional: the CA that signed the server's "
                                        "certificate (PEM); empty = pin its key")
        self.ca_browse = QPushButton("Browse…")
        self.ca_browse.clicked.connect(self._browse_ca)
        self._ca_row = QWidget()
        ca_row = QHBoxLayout(self._ca_row)
        ca_row.setContentsMargins(0, 0, 0, 0)
        ca_row.addWidget(QLabel("CA file"))
        ca_row.addWidget(self.ca_file, 1)
        ca_row.addWidget(self.ca_browse)
        form.addRow("", self._ca_row)
        form.addRow("", self._error_label(Field.SERVER))

        self.name = self._combo(Field.NAME, "")
        form.addRow("Your name", self.name)
        form.addRow("", self._error_label(Field.NAME))

        self.create_mode = QRadioButton("Create a room")
        self.join_mode = QRadioButton("Join a room")
        self._mode = QButtonGroup(self)
        self._mode.addButton(self.create_mode)
        self._mode.addButton(self.join_mode)
        (self.join_mode if settings.value("last/mode", "create") == "join" else self.create_mode
         ).setChecked(True)
        mode = QHBoxLayout()
        mode.addWidget(self.create_mode)
        mode.addWidget(self.join_mode)
        mode.addStretch(1)
        form.addRow("", mode)

        self.room = self._combo(Field.ROOM, "")
        form.addRow("Room", self.room)
        form.addRow("", self._error_label(Field.ROOM))

        self.password = QLineEdit()
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.password.setPlaceholderText("optional")
        form.addRow("Password", self.password)
        form.addRow("", self._error_label(Field.PASSWORD))

        self.encrypted = QCheckBox("End-to-end encrypted")
        self.encrypted.setChecked(_bool(settings.value("last/encrypted", False)))
        self.encrypted.setToolTip("Messages are encrypted for the room's members: the "
                                  "server relays them without being able to read them")
        form.addRow("", self.encrypted)
        outer.addLayout(form)

        self.connect_button = QPushButton("Connect")
        self.connect_button.setDefault(True)
        self.connect_button.clicked.connect(self._submit)
        self.status = QLabel("")
        outer.addWidget(self.connect_button, 0, Qt.AlignmentFlag.AlignLeft)
        outer.addWidget(self._error_label(Field.FORM))
        outer.addWidget(self.status)
        outer.addStretch(1)
        self.create_mode.toggled.connect(self._mode_changed)
        self.password.returnPressed.connect(self._submit)
        self.tls.toggled.connect(self._tls_changed)
        self._mode_changed()
        self._ca_row.setVisible(self.tls.isChecked())
        self.setFocusProxy(self.room if self.name.currentText() else self.name)

    # -- building ------------------------------------------------------------------------------
    def _combo(self, which: Field, default: str) -> QComboBox:
        box = QComboBox()
        box.setEditable(True)
        box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        recent = _recent(self._settings, _RECENT_KEYS[which])
        box.addItems(recent)
        box.setCurrentText(recent[0] if recent else default)
        line = box.lineEdit()
        assert line is not None
        line.returnPressed.connect(self._submit)
        return box

    def _error_label(self, which: Field) -> QLabel:
        label = QLabel("")
        label.setObjectName(f"error-{which.value}")
        label.setStyleSheet(_ERROR_STYLE)
        label.setWordWrap(True)
        label.hide()
        self.errors[which] = label
        return label

    def _mode_changed(self) -> None:
        creating = self.create_mode.isChecked()
        self.encrypted.setVisible(creating)
        self.password.setPlaceholderText("optional: protects the new room" if creating
                                         else "if the room has one")

    def _tls_changed(self, on: bool) -> None:
        """Show the CA file; move between the default plain and TLS ports."""
        self._ca_row.setVisible(on)
        plain, secure = models.DEFAULT_TCP_PORT, models.DEFAULT_TLS_PORT
        if self.port.value() == (plain if on else secure):
            self.port.setValue(secure if on else plain)

    def _browse_ca(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "CA certificate", "",
                                              "PEM certificates (*.pem *.crt);;All files (*)")
        if path:
            self.ca_file.setText(path)

    # -- what the main window calls ---------------------------------------------------------------
    def request(self) -> ConnectRequest:
        """The request the form describes now (not validated)."""
        return ConnectRequest(
            host=self.server.currentText().strip(),
            port=self.port.value(),
            operation=Operation.CREATE if self.create_mode.isChecked() else Operation.JOIN,
            room=self.room.currentText(),
            username=self.name.currentText(),
            password=self.password.text() or None,
            tls=self.tls.isChecked(),
            encrypted=self.create_mode.isChecked() and self.encrypted.isChecked(),
            ca_file=(self.ca_file.text().strip() or None) if self.tls.isChecked() else None,
        )

    def focus_room(self) -> None:
        """Ready to type a room name (the name, if there is none yet)."""
        target = self.room if self.name.currentText() else self.name
        target.setFocus()
        line = target.lineEdit()
        if line is not None:
            line.selectAll()

    def show_error(self, which: Field, text: str) -> None:
        label = self.errors[which]
        label.setText(text)
        label.show()

    def clear_errors(self) -> None:
        for label in self.errors.values():
            label.clear()
            label.hide()

    def set_busy(self, busy: bool, text: str = "") -> None:
        """While joining: the button is disabled and ``text`` says what is going on."""
        self.connect_button.setEnabled(not busy)
        self.status.setText(text)

    def remember_request(self, request: ConnectRequest) -> None:
        """Put the request's server, name and room first in the recent lists."""
        for which, value in ((Field.SERVER, request.host), (Field.NAME, request.username),
                             (Field.ROOM, request.room)):
            key = _RECENT_KEYS[which]
            recent = models.remember(_recent(self._settings, key), value)
            self._settings.setValue(key, recent)
        self._settings.setValue("last/port", request.port)
        self._settings.setValue("last/tls", request.tls)
        self._settings.setValue("last/ca_file", request.ca_file or "")
        if request.operation is Operation.CREATE:
            self._settings.setValue("last/encrypted", request.encrypted)
        self._settings.setValue("last/mode", "create"
                                if request.operation is Operation.CREATE else "join")
        self._settings.sync()

    # -- internals ----------------------------------------------------------------------------
    def _submit(self) -> None:
        if not self.connect_button.isEnabled():
            return
        self.clear_errors()
        request = self.request()
        problems = models.validate(request.host, request.username, request.room,
                                   request.password or "")
        for which, text in problems.items():
            self.show_error(which, text)
        if not problems:
            self.submitted.emit(request)
