"""The main window: connect screen and room window, and everything between them.

``MainWindow`` owns the membership: it joins with ``client.session_aio.join_room_async``
(on the loop, so the window never waits on the network) with this device's public keys
(``client.e2e_link.load_identity``: the key store ``ocm-chat`` uses), opens the link
``client.e2e_link.room_link`` picks (``RoomLink``, or ``E2ERoomLink`` in an encrypted
room: the same links ``ocm-chat`` uses) and routes its lines to the room window; it reads
typed input with ``client.commands`` and leaves cleanly when asked, when the window
closes, or when the chat ends under it. The member list is the server's (``/who``,
TCRP Operation 3), fetched on entering and after every join or leave; in an encrypted
room a pinned key that changed opens a warning dialog (``E2ERoomLink.on_key_changed``),
and verifying opens ``client.gui.verify.VerifyDialog``. Unread count in the title, a
desktop notification while unfocused, the host's confirmation before leaving (closing
the window included).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping
from typing import Final

from PySide6.QtCore import QEvent, QSettings
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QApplication,
    QMainWindow,
    QMessageBox,
    QStackedWidget,
    QStyle,
    QSystemTrayIcon,
    QWidget,
)

from client import commands, known_servers, render
from client.commands import Action, Command
from client.e2e.identity import IdentityKeys, fingerprint
from client.e2e_link import E2ERoomLink, leave_datagram, load_identity, room_link
from client.gui import models
from client.gui.bridge import Tasks
from client.gui.connect import ConnectScreen
from client.gui.models import ConnectRequest, Unread
from client.gui.room import RoomView
from client.gui.verify import VerifyDialog
from client.joinflow import GUI_HINTS, pinning_tls_context
from client.keystore import KeyStore, KeyStoreError
from client.known_servers import KnownServers
from client.link import RoomLink
from client.refusals import Field
from client.render import Line, MessageTooLong
from client.session import (
    DEFAULT_TIMEOUT_S,
    Joined,
    JoinFailed,
    JoinRefused,
    NoEncryptedRooms,
    TcrpTarget,
    client_tls_context,
)
from client.session_aio import join_room_async
from wire.chat import Notice
from wire.codes import Framing, NoticeEvent, Operation
from wire.e2e import MemberInfo
from wire.tcrp import Request, RequestBody

NOTIFY_KEY: Final = "notifications"


class MainWindow(QMainWindow):
    """The whole app in one window. ``settings`` holds recents and the notify switch;
    ``env`` says where the key store is (``$XDG_CONFIG_HOME/ocm``, as for ``ocm-chat``)."""

    def __init__(self, settings: QSettings, join_timeout: float = DEFAULT_TIMEOUT_S,
                 parent: QWidget | None = None, env: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(parent)
        self.settings = settings
        self.join_timeout = join_timeout
        self.env = os.environ if env is None else env
        self.members: tuple[MemberInfo, ...] = ()  # the last list the server gave
        self.key_warnings: list[QMessageBox] = []  # the key-change dialogs shown
        self.verify_dialog: VerifyDialog | None = None
        self._members_task: asyncio.Task[None] | None = None
        self._members_stale = False
        self.tasks = Tasks(self._task_failed)
        self.link: RoomLink | None = None
        self.joined: Joined | None = None
        self.request: ConnectRequest | None = None
        self.unread = Unread()
        self.notifications: list[tuple[str, str]] = []  # the last few shown (for tests)
        self.leave_box: QMessageBox | None = None
        self._closing = False
        self._room_gone = False  # how the last chat ended: rejoin, or create it again

        self.pages = QStackedWidget()
        self.connect_screen = ConnectScreen(settings)
        self.room = RoomView()
        self.pages.addWidget(self.connect_screen)
        self.pages.addWidget(self.room)
        self.setCentralWidget(self.pages)
        self.resize(760, 560)

        self.connect_screen.submitted.connect(self.start_connect)
        self.room.submitted.connect(self.submit)
        self.room.leave_clicked.connect(self.request_leave)
        self.room.rejoin_clicked.connect(self._rejoin)
        self.room.new_room_clicked.connect(self._new_room)
        self.room.caught_up.connect(self._caught_up)
        self.room.verify_clicked.connect(self.open_verify)
        self.room.notify.setChecked(self._setting_bool(NOTIFY_KEY, True))
        self.room.notify.toggled.connect(lambda on: settings.setValue(NOTIFY_KEY, on))
        self._tray: QSystemTrayIcon | None = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            icon = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxInformation)
            self._tray = QSystemTrayIcon(icon, self)
        self._update_title()

    # -- connecting ---------------------------------------------------------------------------
    def start_connect(self, request: ConnectRequest) -> asyncio.Task[bool]:
        """Join as ``request`` says, in the background; the task's result says if it did.
        The connect screen shows at once that it is busy."""
        self._show_busy(request)
        return self.tasks.spawn(self.connect_to(request))

    def _show_busy(self, request: ConnectRequest) -> None:
        self.connect_screen.clear_errors()
        self.connect_screen.set_busy(True, f"Connecting to {request.host}:{request.port}…")

    async def connect_to(self, request: ConnectRequest) -> bool:
        """Join, then chat: errors go next to their field on the connect screen."""
        screen = self.connect_screen
        self._show_busy(request)
        tls, pins = None, None
        if request.tls and request.ca_file is None:
            tls, pins = pinning_tls_context(), KnownServers(known_servers.default_dir(self.env))
        elif request.tls:
            try:
                tls = client_tls_context(request.ca_file)
            except OSError as exc:
                screen.set_busy(False)
                self._back_to_connect(Field.SERVER, f"Cannot use the CA file: {exc}")
                return False
        try:
            store, identity = load_identity(self.env)
        except KeyStoreError as exc:
            if request.encrypted:
                screen.set_busy(False)
                self._back_to_connect(Field.FORM, f"Cannot use your keys: {exc}")
                return False
            store, identity = None, None  # plain rooms still work; encrypted ones refuse
        try:
            target = TcrpTarget(request.host, request.port, tls, self.join_timeout,
                                request.ca_file if tls is not None else None, pins, GUI_HINTS)
            joined = await join_room_async(target, Request.of(
                request.operation, request.room, RequestBody(
                    request.username, request.password, Framing.OCM1R,
                    keys=identity.public() if identity is not None else None,
                    e2e=request.encrypted and request.operation is Operation.CREATE)))
        except JoinRefused as exc:
            which, text = models.refusal(exc.status, bool(request.password), exc.error,
                                         room=request.room, user=request.username)
            self._back_to_connect(which, text)
            return False
        except JoinFailed as exc:
            self._back_to_connect(Field.SERVER, models.unreachable_text(
                str(exc), request.tls, reached=isinstance(exc, NoEncryptedRooms)))
            return False
        finally:
            screen.set_busy(False)
        if self._closing:  # the window closed while joining: leave at once
            _abandon(joined)
            return False
        screen.remember_request(request)
        await self._chat(request, joined, store, identity)
        return True

    async def _chat(self, request: ConnectRequest, joined: Joined, store: KeyStore | None,
                    identity: IdentityKeys | None) -> None:
        self.request, self.joined = request, joined
        host = joined.details.host
        link = room_link(joined, self._on_line, store, identity)
        self.room.enter(request.room, joined.username, host, link.max_message,
                        encrypted=isinstance(link, E2ERoomLink))
        self.members = ()
        self.pages.setCurrentWidget(self.room)
        link.on_notice = self._on_notice
        if isinstance(link, E2ERoomLink):
            link.on_key_changed = self.warn_key_changed
        try:
            await link.open()
        except OSError as exc:  # e.g. no route to the UDP port the server named
            link.close()
            joined.udp_sock.close()
            self._back_to_connect(Field.SERVER, f"Cannot chat with the server: {exc}")
            return
        self.link = link
        self.unread.clear()
        self._update_title()
        role = " (host: leaving closes the room)" if host else ""
        self.room.append(render.notice_line(
            f"you are in room {render.sanitize(request.room)!r} as "
            f"{render.sanitize(joined.username)}{role} · /help for commands"))
        self.tasks.spawn(self._wait_end(link))
        self.refresh_members()

    async def _wait_end(self, link: RoomLink) -> None:
        notice = await link.ended
        if self.link is not link:
            return
        self.link = None
        host = self.joined.details.host if self.joined else False
        self.room.append(render.warning_line(render.ended_explanation(notice, host)))
        self._room_gone = notice.event is NoticeEvent.CLOSED or host
        self.room.rejoin_button.setText("Create it again" if self._room_gone else "Rejoin")
        if notice.event is NoticeEvent.CLOSED:
            headline = "Room closed: " + render.ended_explanation(notice, host)
        else:
            headline = "You were disconnected: " + render.ended_explanation(notice, host)
        self.room.show_ended(headline)
        self._alert("OCM", headline)

    def _back_to_connect(self, which: Field, text: str) -> None:
        self.pages.setCurrentWidget(self.connect_screen)
        self.connect_screen.show_error(which, text)
        self._update_title()

    def _rejoin(self) -> None:
        if self.request is None:
            return
        self.start_connect(self.request.again(self._room_gone))

    def _new_room(self) -> None:
        self._leave_now()
        self.pages.setCurrentWidget(self.connect_screen)
        self._update_title()

    # -- chatting -----------------------------------------------------------------------------
    def submit(self, text: str) -> None:
        """Carry out one typed line (a message or a /command)."""
        command = commands.parse_input(text)
        action = command.action
        if action is Action.NOTHING:
            return
        if action is Action.LEAVE:
            self.room.input.clear()
            self.request_leave()
        elif action is Action.HELP:
            self.room.input.clear()
            for line in commands.help_lines(self.room.max_message):
                self.room.append(render.notice_line(line))
        elif action is Action.WHO:
            self.room.input.clear()
            self.tasks.spawn(self._who())
        elif action is Action.VERIFY:
            self.room.input.clear()
            if isinstance(self.link, E2ERoomLink) and command.text in self.link.crypto.members:
                self.open_verify(command.text)
            else:  # no such member, or a plain room: the link says why
                self.tasks.spawn(self._answer(command))
        elif action is Action.REFUSED:
            self.room.append(render.warning_line(command.text))
        elif action is Action.RETRY:  # the link answers (reliable delivery) or says none
            self.room.input.clear()
            self.tasks.spawn(self._answer(command))
        elif self.link is not None and self.joined is not None:
            try:
                self.link.send(command.text)
            except MessageTooLong as exc:
                self.room.append(render.warning_line(str(exc)))
                return  # the text stays in the input, to be shortened
            self.room.input.clear()
            self.room.append(render.chat_line(self.joined.username, command.text, own=True))
            self.room.scroll_to_bottom()

    async def _who(self) -> None:
        """``/who``: the lines in the scrollback, the list in the member panel."""
        link = self.link
        if link is None:
            return
        lines, members = await link.who()
        for line in lines:
            self.room.append(line)
        if members and link is self.link:
            self._show_members(link, members)

    async def _answer(self, command: Command) -> None:
        if self.link is not None:
            for line in await self.link.answer(command) or ():
                self.room.append(line)

    # -- the member list ----------------------------------------------------------------------
    def refresh_members(self) -> None:
        """Fetch the member list (Operation 3) for the panel; one fetch at a time, and
        one more if something changed meanwhile. Nothing to do outside a room."""
        if self.link is None:
            return
        if self._members_task is not None:
            self._members_stale = True
            return
        self._members_task = self.tasks.spawn(self._fetch_members())

    async def _fetch_members(self) -> None:
        try:
            while (link := self.link) is not None:
                self._members_stale = False
                _, members = await link.who()  # an encrypted link learns missing keys
                if members and link is self.link:
                    self._show_members(link, members)
                if not self._members_stale:
                    break
        finally:
            self._members_task = None

    def _show_members(self, link: RoomLink, members: tuple[MemberInfo, ...]) -> None:
        self.members = members
        trust = link.trust_of if isinstance(link, E2ERoomLink) else None
        self.room.set_members(models.member_rows(members, link.joined.username, trust))

    def _on_notice(self, notice: Notice) -> None:
        if notice.event in (NoticeEvent.JOINED, NoticeEvent.LEFT):
            self.refresh_members()

    def open_verify(self, member: str) -> VerifyDialog | None:
        """Show the safety number with ``member`` side by side with both keys; *They
        match* marks ``member`` verified (``E2ERoomLink.verify``, pinned on disk)."""
        link = self.link
        if not isinstance(link, E2ERoomLink):
            return None
        number = link.safety_number_with(member)
        keys = link.crypto.members.get(member)
        if number is None or keys is None:
            for line in link.verify(member):  # says there is no such member
                self.room.append(line)
            return None
        dialog = VerifyDialog(link.joined.username, fingerprint(link.identity.public()),
                              member, fingerprint(keys), number, self)
        dialog.accepted.connect(functools.partial(self._verified, link, member))
        self.verify_dialog = dialog
        dialog.open()
        return dialog

    def _verified(self, link: E2ERoomLink, member: str) -> None:
        self.verify_dialog = None
        for line in link.verify(member):
            self.room.append(line)
        if link is self.link and self.members:
            self._show_members(link, self.members)

    def request_leave(self, then_quit: bool = False) -> None:
        """Leave (and close the window if ``then_quit``); a host is asked first, because
        leaving closes the room."""
        if self.link is None:
            return
        if self.hosting():
            box = QMessageBox(QMessageBox.Icon.Question, "Leave and close the room?",
                              "You are the host: leaving closes the room for everyone.",
                              QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                              self)
            box.setDefaultButton(QMessageBox.StandardButton.No)
            box.finished.connect(functools.partial(self._leave_answered, box, then_quit))
            self.leave_box = box
            box.open()
            return
        self._leave_and_show_connect()
        if then_quit:
            self.quit_now()

    def hosting(self) -> bool:
        """In a room, as its host."""
        return self.link is not None and self.joined is not None and self.joined.details.host

    def quit_now(self) -> None:
        """Close the window without asking (leaving the room): Ctrl-C, SIGTERM."""
        self._closing = True
        self.close()

    def _leave_answered(self, box: QMessageBox, then_quit: bool, _result: int) -> None:
        self.leave_box = None
        if box.standardButton(box.clickedButton()) == QMessageBox.StandardButton.Yes:
            self._leave_and_show_connect()
            if then_quit:
                self.quit_now()
        else:
            self.room.append(render.notice_line("staying"))

    def _leave_and_show_connect(self) -> None:
        self._leave_now()
        self.pages.setCurrentWidget(self.connect_screen)
        self._update_title()

    def _leave_now(self) -> None:
        """Send ``/exit`` and close the link (no-op if not in a room)."""
        link, self.link = self.link, None
        if link is not None:
            link.leave()
            link.close()

    def warn_key_changed(self, member: str, old: str, new: str) -> QMessageBox:
        """A member's key is not the one pinned before (``E2ERoomLink.on_key_changed``):
        a warning dialog, not only a line in the scrollback, because it may mean someone
        else is speaking under that name. Their messages are marked unverified until
        they are verified again."""
        name = render.sanitize(member)
        box = QMessageBox(QMessageBox.Icon.Warning, f"{name}'s key changed",
                          f"The encryption key of {name} is not the one you saw before.\n\n"
                          f"before: {render.sanitize(old)}\nnow: {render.sanitize(new)}\n\n"
                          "This happens when they reinstall or use another device, or when "
                          "someone else is using their name. Their messages are marked "
                          "[unverified key] until you compare safety numbers with them "
                          f"(Verify… in the member list, or /verify {name}).",
                          QMessageBox.StandardButton.Ok, self)
        self.key_warnings = [*self.key_warnings[-9:], box]
        box.open()
        self.refresh_members()
        return box

    def _on_line(self, line: Line) -> None:
        entry = self.room.append(line)
        seen = self.isActiveWindow() and self.room.at_bottom()
        if self.unread.arrived(entry, seen):
            self._update_title()
            if not self.isActiveWindow():
                self._alert(line.user, line.text)

    def _alert(self, title: str, text: str) -> None:
        """A desktop notification, if the window is not focused and they are on."""
        if self.isActiveWindow() or not self.room.notify.isChecked():
            return
        self.notifications = [*self.notifications[-9:], (title, text)]
        if self._tray is not None and QSystemTrayIcon.supportsMessages():
            self._tray.show()
            self._tray.showMessage(title, text)
        QApplication.alert(self)

    def _caught_up(self) -> None:
        if self.isActiveWindow() and self.unread.count:
            self.unread.clear()
            self._update_title()

    def _update_title(self) -> None:
        in_room = self.pages.currentWidget() is self.room and self.request is not None
        room = self.request.room if in_room and self.request is not None else None
        self.setWindowTitle(models.window_title(room, self.unread.count))

    # -- Qt events ----------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ActivationChange and self.isActiveWindow():
            self._caught_up()
        super().changeEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        """Closing the window leaves the room cleanly (``/exit``); the host is asked
        first (``quit_now`` does not ask)."""
        if self.hosting() and not self._closing:
            event.ignore()
            if self.leave_box is None:
                self.request_leave(then_quit=True)
            return
        self._closing = True
        self._leave_now()
        self.tasks.cancel_all()
        super().closeEvent(event)

    def _task_failed(self, exc: BaseException) -> None:
        self.connect_screen.set_busy(False)
        self._back_to_connect(Field.FORM, f"Something went wrong: {exc}")

    def _setting_bool(self, key: str, default: bool) -> bool:
        value = self.settings.value(key, default)
        if isinstance(value, str):
            return value.lower() in ("true", "1")
        return bool(value)


def _abandon(joined: Joined) -> None:
    """Leave a membership that nobody will use (the window closed during the join)."""
    try:
        joined.udp_sock.sendto(joined.seal(leave_datagram(joined)), joined.server)
    except OSError:
        pass
    joined.udp_sock.close()

