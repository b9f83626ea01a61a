"""The main window: the rooms you are in, side by side, and everything between them.

Left, the room list (``sidebar.RoomList``: across servers, unread counts, a lock for an
encrypted room, greyed once the chat ended); right, the connect screen (*New room*) or
the page (``room.RoomView``) of the room selected. Each room is a ``RoomSession``: its
request, its membership (``Joined``) and link, its page and its unread count.

``MainWindow`` owns the memberships: it joins with ``client.session_aio.join_room_async``
(on the loop, so the window never waits on the network) with this device's public keys
(``client.e2e_link.IdentityChoice``: the key store ``ocm-chat`` uses), opens the link
``client.e2e_link.room_link`` picks (``RoomLink``, or ``E2ERoomLink`` in an encrypted
room: the same links ``ocm-chat`` uses) and routes its lines to the room's page; it reads
typed input with ``client.commands`` and leaves cleanly when asked, when the window
closes, or when the chat ends under it. The member list is the server's (``/who``, TCRP
Operation 3), fetched on entering and after every join or leave; in an encrypted room a
pinned key that changed opens a warning dialog (``E2ERoomLink.on_key_changed``), and
verifying opens ``client.gui.verify.VerifyDialog``.

Every ``/command`` is also in the menus (``help.MENU_OF``); ``/help`` opens the help
dialog. The title shows the unread count of all rooms; a desktop notification while the
window is unfocused; the host is asked before leaving (closing the window included).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from PySide6.QtCore import QEvent, QPoint, QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QInputDialog,
    QLabel,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QStyle,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from client import commands, known_servers, render
from client.commands import Action, Command
from client.e2e.identity import IdentityKeys, fingerprint
from client.e2e.sas import SasShow
from client.e2e_link import (
    E2ERoomLink,
    IdentityChoice,
    leave_datagram,
    must_be_encrypted,
    open_store,
    room_link,
)
from client.gui import models, theme
from client.gui.bridge import Tasks
from client.gui.connect import ConnectScreen, ProtectKeysDialog, passphrase_dialog
from client.gui.help import HelpDialog
from client.gui.models import ConnectRequest, Unread
from client.gui.room import RoomView
from client.gui.sidebar import RoomList, RoomRow
from client.gui.theme import Theme
from client.gui.verify import SasDialog, VerifyDialog
from client.joinflow import GUI_HINTS, pinning_tls_context
from client.keystore import KeySource, KeyStore, KeyStoreError, PassphraseNeeded, WrongPassphrase
from client.known_servers import KnownServers
from client.link import Resumed, RoomLink, SendState
from client.refusals import Field
from client.render import Kind, Line, MessageTooLong
from client.session import (
    DEFAULT_TIMEOUT_S,
    Joined,
    JoinFailed,
    JoinRefused,
    NoEncryptedRooms,
    TcrpTarget,
    client_tls_context,
    describe_connection,
)
from client.session_aio import join_room_async
from wire.chat import Notice
from wire.codes import Framing, NoticeEvent, Operation
from wire.e2e import MemberInfo
from wire.tcrp import Request, RequestBody

NOTIFY_KEY: Final = "notifications"
THEME_KEY: Final = "theme"
RESUMED_SHOWN_MS: Final = 6000  # how long "Reconnected: …" stays in the banner


@dataclass(eq=False)
class RoomSession:
    """One room in the window: what was asked, the membership, its page."""

    request: ConnectRequest
    view: RoomView
    item: QListWidgetItem
    joined: Joined | None = None
    link: RoomLink | None = None
    unread: Unread = field(default_factory=Unread)
    members: tuple[MemberInfo, ...] = ()
    members_task: asyncio.Task[None] | None = None
    members_stale: bool = False
    room_gone: bool = False  # how the chat ended: rejoin, or create it again
    encrypted: bool = False
    sent: dict[int, int] = field(default_factory=dict)  # our message id -> its entry
    gaps_before: int | None = None  # the link's gaps when a resume began
    preview: str = ""  # the last message, under the room's name in the list

    def heard(self, line: Line) -> None:
        """Keep ``line`` (a chat line) as the list's preview of the room."""
        who = "You" if line.kind is Kind.OWN else line.user
        self.preview = f"{who}: {' '.join(models.shown_text(line.text).split())}"

    @property
    def hosting(self) -> bool:
        return self.link is not None and self.joined is not None and self.joined.details.host

    def server(self) -> str:
        return f"{self.request.host}:{self.request.port}"

    def same_room(self, request: ConnectRequest) -> bool:
        return (request.host, request.port, request.room) == (
            self.request.host, self.request.port, self.request.room)


class MainWindow(QMainWindow):
    """The whole app in one window. ``settings`` holds recents, theme and the notify
    switch; ``env`` says where the key store is (``$XDG_CONFIG_HOME/ocm``, as for
    ``ocm-chat``)."""

    def __init__(self, settings: QSettings, join_timeout: float = DEFAULT_TIMEOUT_S,
                 parent: QWidget | None = None, env: Mapping[str, str] | None = None
                 ) -> None:
        super().__init__(parent)
        self.settings = settings
        self.join_timeout = join_timeout
        self.env = os.environ if env is None else env
        self.sessions: list[RoomSession] = []
        self.current: RoomSession | None = None  # the room page last shown
        self.key_warnings: list[QMessageBox] = []  # the key-change dialogs shown
        self.verify_dialog: VerifyDialog | None = None
        self.sas_dialogs: dict[tuple[RoomSession, str], SasDialog] = {}
        self.help_dialog: HelpDialog | None = None
        self.tasks = Tasks(self._task_failed)
        self.notifications: list[tuple[str, str]] = []  # the last few shown (for tests)
        self.leave_box: QMessageBox | None = None
        self.key_passphrase: bytes | None = None
        """The key store's passphrase as typed in ``passphrase_dialog`` (memory only)."""
        self.passphrase_dialog: QInputDialog | None = None  # while it is asking
        self.protect_dialog: ProtectKeysDialog | None = None  # while it is asking
        self.info_box: QMessageBox | None = None  # the last information shown, while open
        self._closing = False
        self.theme = Theme.SYSTEM
        self.dark = False

        self.room_list = RoomList()
        self.room_list.currentItemChanged.connect(self._room_selected)
        self.room_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.room_list.customContextMenuRequested.connect(self._room_menu)
        self.new_room_button = QPushButton("＋ New room")
        self.new_room_button.setObjectName("new-room")
        self.new_room_button.setToolTip("create or join a room (Ctrl+N)")
        self.new_room_button.clicked.connect(self.show_connect)
        side = QWidget()
        side.setObjectName("sidebar")
        column = QVBoxLayout(side)
        column.setContentsMargins(6, 8, 6, 8)
        heading = QLabel("Rooms")
        heading.setObjectName("sidebar-title")
        column.addWidget(heading)
        column.addWidget(self.room_list, 1)
        column.addWidget(self.new_room_button)
        side.setMinimumWidth(150)

        self.pages = QStackedWidget()
        self.connect_screen = ConnectScreen(settings)
        self.pages.addWidget(self.connect_screen)
        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.setChildrenCollapsible(False)
        self.split.addWidget(side)
        self.split.addWidget(self.pages)
        self.split.setStretchFactor(1, 1)
        self.split.setSizes([190, 790])
        self.setCentralWidget(self.split)
        self.resize(980, 640)

        self.connect_screen.submitted.connect(self.start_connect)
        self._tray: QSystemTrayIcon | None = None
        if QSystemTrayIcon.isSystemTrayAvailable():
            icon = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxInformation)
            self._tray = QSystemTrayIcon(icon, self)
        self._menus()
        value = str(settings.value(THEME_KEY, Theme.SYSTEM.value))
        self.set_theme(Theme(value) if value in {t.value for t in Theme} else Theme.SYSTEM)
        QGuiApplication.styleHints().colorSchemeChanged.connect(self._system_scheme_changed)
        self.show_connect()

    # -- menus ----------------------------------------------------------------------------------
    def _action(self, menu_name: str, text: str, slot: object, shortcut: str | None = None,
                tip: str = "") -> QAction:
        menu = self._menus_by_name[menu_name]
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _menus(self) -> None:
        bar = self.menuBar()
        self._menus_by_name = {name: bar.addMenu(name) for name in (
            "&Room", "&Edit", "&View", "&Help")}
        room = "&Room"
        self._action(room, "&New room…", self.show_connect, "Ctrl+N",
                     "create or join a room")
        self._action(room, "Ne&xt room", lambda: self.cycle_room(1), "Ctrl+PgDown")
        self._action(room, "Pre&vious room", lambda: self.cycle_room(-1), "Ctrl+PgUp")
        self._menus_by_name[room].addSeparator()
        self.who_action = self._action(room, "&Who is here  (/who)", self.who,
                                       tip="list the room's members")
        self.verify_action = self._action(room, "&Verify member…  (/verify)",
                                          self.ask_verify,
                                          tip="compare safety numbers with a member")
        self.retry_action = self._action(room, "&Retry failed messages  (/retry)",
                                         self.retry_failed,
                                         tip="send again what the relay never acknowledged")
        self.save_action = self._action(room, "&Save transcript…", self.ask_save_transcript,
                                        "Ctrl+S", "save this room's conversation as text")
        self._action(room, "Protect &keys with a passphrase…", self.ask_protect_keys,
                     tip="lock your identity keys with a passphrase instead of a key file")
        self._menus_by_name[room].addSeparator()
        self.leave_action = self._action(room, "&Leave room  (/exit)",
                                         lambda: self.request_leave(),
                                         tip="leave; the conversation stays readable")
        self.close_action = self._action(room, "&Close room", self.close_current, "Ctrl+W",
                                         "leave if still in it, and remove it from the list")
        self._menus_by_name[room].addSeparator()
        self._action(room, "&Quit", self.close, "Ctrl+Q")
        edit = "&Edit"
        self._action(edit, "&Find in room…", self.find_in_room, "Ctrl+F")
        self._action(edit, "Insert &emoji…", self.pick_emoji, "Ctrl+E")
        view = self._menus_by_name["&View"]
        themes = view.addMenu("&Theme")
        group = QActionGroup(self)
        self.theme_actions: dict[Theme, QAction] = {}
        for which, label in ((Theme.SYSTEM, "Follow the &system"), (Theme.LIGHT, "&Light"),
                             (Theme.DARK, "&Dark")):
            action = QAction(label, self, checkable=True)
            action.triggered.connect(functools.partial(self.set_theme, which))
            group.addAction(action)
            themes.addAction(action)
            self.theme_actions[which] = action
        self.members_action = QAction("&Member list", self, checkable=True)
        self.members_action.setChecked(True)
        self.members_action.toggled.connect(self._show_member_lists)
        view.addAction(self.members_action)
        self.notify_action = QAction("Desktop &notifications", self, checkable=True)
        self.notify_action.setToolTip("a desktop notification for messages while this "
                                      "window is not focused")
        self.notify_action.setChecked(self._setting_bool(NOTIFY_KEY, True))
        self.notify_action.toggled.connect(lambda on: self.settings.setValue(NOTIFY_KEY, on))
        view.addAction(self.notify_action)
        self._action("&Help", "&Commands and shortcuts  (/help)", self.show_help, "F1")
        self._action("&Help", "&About OCM", self._about)
        self._room_actions_enabled()

    def _room_actions_enabled(self) -> None:
        session = self._shown_session()
        live = session is not None and session.link is not None
        self.who_action.setEnabled(live)
        self.verify_action.setEnabled(live and session is not None and session.encrypted)
        self.leave_action.setEnabled(live)
        self.retry_action.setEnabled(live)
        self.save_action.setEnabled(session is not None)
        self.close_action.setEnabled(session is not None)

    # -- compatibility views of the room shown ---------------------------------------------------
    @property
    def room(self) -> RoomView:
        """The page of the room shown (or shown last)."""
        if self.current is None:
            raise LookupError("no room open")
        return self.current.view

    @property
    def link(self) -> RoomLink | None:
        return self.current.link if self.current is not None else None

    @property
    def joined(self) -> Joined | None:
        return self.current.joined if self.current is not None else None

    @property
    def request(self) -> ConnectRequest | None:
        return self.current.request if self.current is not None else None

    @property
    def members(self) -> tuple[MemberInfo, ...]:
        return self.current.members if self.current is not None else ()

    @property
    def unread(self) -> int:
        """Unread messages across every room (the title's count)."""
        return sum(session.unread.count for session in self.sessions)

    def _shown_session(self) -> RoomSession | None:
        session = self.current
        return session if session is not None and self.pages.currentWidget() is session.view \
            else None

    # -- rooms ---------------------------------------------------------------------------------
    def _new_session(self, request: ConnectRequest) -> RoomSession:
        view = RoomView()
        item = self.room_list.add_room(RoomRow(request.room, f"{request.host}:{request.port}"))
        session = RoomSession(request, view, item)
        self.sessions.append(session)
        self.pages.addWidget(view)
        view.submitted.connect(functools.partial(self.submit_in, session))
        view.leave_clicked.connect(functools.partial(self.request_leave, session))
        view.rejoin_clicked.connect(functools.partial(self._rejoin, session))
        view.close_clicked.connect(functools.partial(self.close_session, session))
        view.caught_up.connect(functools.partial(self._caught_up, session))
        view.verify_clicked.connect(functools.partial(self.open_verify, session=session))
        view.retry_clicked.connect(functools.partial(self._retry_in, session))
        view.member_panel.setVisible(self.members_action.isChecked())
        view.members_button.setChecked(self.members_action.isChecked())
        return session

    def open_preview(self, room: str, username: str, host: bool = False,
                     encrypted: bool = False, max_message: int = 4051,
                     server: str = "127.0.0.1") -> RoomView:
        """A room page without a membership: what the screenshots and layout tests show."""
        request = ConnectRequest(server, models.DEFAULT_TCP_PORT, Operation.JOIN, room,
                                 username, encrypted=encrypted)
        session = self._new_session(request)
        session.encrypted = encrypted
        session.view.enter(room, username, host, max_message, encrypted=encrypted,
                           tls=request.tls)
        self.show_session(session)
        self._refresh_row(session)
        return session.view

    def show_session(self, session: RoomSession) -> None:
        self._leaving_page()
        self.current = session
        self.pages.setCurrentWidget(session.view)
        if self.room_list.currentItem() is not session.item:
            self.room_list.setCurrentItem(session.item)
        if session.view.at_bottom() and session.unread.count:
            session.unread.clear()
            self._refresh_row(session)
        session.view.input.setFocus()
        self._room_actions_enabled()
        self._update_title()

    def _leaving_page(self) -> None:
        """The room shown is about to be hidden: what was new in it has been seen."""
        shown = self._shown_session()
        if shown is not None and not shown.unread.count:
            shown.view.log.clear_unread()

    def _room_selected(self, item: QListWidgetItem | None, _previous: object) -> None:
        for session in self.sessions:
            if session.item is item:
                if self.pages.currentWidget() is not session.view:
                    self.show_session(session)
                return

    def room_menu(self, session: RoomSession) -> QMenu:
        """What a right click on a room in the list offers."""
        menu = QMenu(self)
        if session.link is not None:
            menu.addAction("Leave room", functools.partial(self.request_leave, session))
        else:
            menu.addAction(session.view.rejoin_button.text(),
                           functools.partial(self._rejoin, session))
        menu.addAction("Save transcript…", functools.partial(self._ask_save, session))
        menu.addAction("Close room", functools.partial(self.close_session, session))
        return menu

    def _room_menu(self, point: QPoint) -> None:
        item = self.room_list.itemAt(point)
        session = next((s for s in self.sessions if s.item is item), None)
        if session is not None:
            self.room_menu(session).popup(self.room_list.viewport().mapToGlobal(point))

    def cycle_room(self, step: int) -> None:
        if not self.sessions:
            return
        shown = self._shown_session()
        index = self.sessions.index(shown) + step if shown is not None else 0
        self.show_session(self.sessions[index % len(self.sessions)])

    def show_connect(self) -> None:
        """The connect screen, to create or join one more room."""
        self._leaving_page()
        self.pages.setCurrentWidget(self.connect_screen)
        self.room_list.setCurrentRow(-1)
        self.room_list.clearSelection()
        self.connect_screen.focus_room()
        self._room_actions_enabled()
        self._update_title()

    def _refresh_row(self, session: RoomSession) -> None:
        self.room_list.update_room(session.item, RoomRow(
            session.request.room, session.server(), session.encrypted,
            session.unread.count, session.link is None and session.joined is not None
            or session.view.ended, session.preview))

    # -- connecting ---------------------------------------------------------------------------
    def start_connect(self, request: ConnectRequest,
                      session: RoomSession | None = None) -> asyncio.Task[bool]:
        """Join as ``request`` says, in the background (into ``session``: a rejoin); the
        task's result says if it did. The connect screen shows at once that it is busy."""
        if session is None:
            for known in self.sessions:
                if known.same_room(request):
                    if known.link is not None:  # already in it: just show it
                        self.show_session(known)
                        return self.tasks.spawn(_done(True))
                    session = known  # an ended room of that name: rejoin into it
        self._show_busy(request)
        return self.tasks.spawn(self.connect_to(request, session))

    def _show_busy(self, request: ConnectRequest) -> None:
        self.connect_screen.clear_errors()
        self.connect_screen.set_busy(True, f"Connecting to {request.host}:{request.port}…")

    async def connect_to(self, request: ConnectRequest,
                         session: RoomSession | None = None) -> bool:
        """Join, then chat: errors go next to their field on the connect screen (or, for
        a rejoin, into the room's conversation)."""
        screen = self.connect_screen
        self._show_busy(request)

        def failed(which: Field, text: str) -> bool:
            screen.set_busy(False)
            if session is not None and self.pages.currentWidget() is session.view:
                session.view.append(render.warning_line(text))
            else:
                self._back_to_connect(which, text)
            return False

        tls, pins = None, None
        if request.tls and request.ca_file is None:
            tls, pins = pinning_tls_context(), KnownServers(known_servers.default_dir(self.env))
        elif request.tls:
            try:
                tls = client_tls_context(request.ca_file)
            except OSError as exc:
                return failed(Field.SERVER, f"Cannot use the CA file: {exc}")
        store = open_store(self.env, passphrase=self.key_passphrase)
        choice = IdentityChoice(store, request.host, request.port, request.username,
                                required=request.encrypted, room=request.room,
                                operation=request.operation)
        try:
            target = TcrpTarget(request.host, request.port, tls, self.join_timeout,
                                request.ca_file if tls is not None else None, pins, GUI_HINTS)
            joined = await join_room_async(target, Request.of(
                request.operation, request.room, RequestBody(
                    request.username, request.password, Framing.OCM1R,
                    e2e=must_be_encrypted(store, request.host, request.port, request.room,
                                          request.encrypted, request.operation))),
                keys_for=choice, e2e_for=choice.seen_encrypted)
        except (JoinRefused, JoinFailed) as exc:
            if isinstance(choice.error, PassphraseNeeded):  # locked keys: ask, join again
                screen.set_busy(False)
                if await self.ask_key_passphrase(isinstance(choice.error, WrongPassphrase)):
                    return await self.connect_to(request, session)
                return failed(Field.FORM, "Your keys are locked with a passphrase; join "
                              "again to type it")
            if isinstance(exc, JoinRefused):
                which, text = models.refusal(exc.status, bool(request.password), exc.error,
                                             room=request.room, user=request.username)
                return failed(which, text)
            if choice.required and choice.identity is None:
                return failed(Field.FORM, f"Cannot use your keys: {choice.error}")
            return failed(Field.SERVER, models.unreachable_text(
                str(exc), request.tls, reached=isinstance(exc, NoEncryptedRooms)))
        finally:
            screen.set_busy(False)
        if self._closing:  # the window closed while joining: leave at once
            _abandon(joined)
            return False
        screen.remember_request(request)
        identity = choice.identity  # None: plain rooms still work; encrypted ones refuse
        await self._chat(request, joined, store if identity is not None else None, identity,
                         session)
        return True

    async def ask_key_passphrase(self, wrong: bool) -> bool:
        """Ask for the key store's passphrase (``wrong``: the last one did not open the
        keys); True once one was typed, False if the dialog was cancelled."""
        self.key_passphrase = None
        dialog = passphrase_dialog(self, wrong)
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def answered(text: str) -> None:
            if not answer.done():
                answer.set_result(text)

        dialog.textValueSelected.connect(answered)
        dialog.rejected.connect(lambda: answered(""))
        self.passphrase_dialog = dialog
        dialog.open()
        try:
            text = await answer
        finally:
            self.passphrase_dialog = None
            dialog.deleteLater()
        if not text:
            return False
        self.key_passphrase = text.encode()
        return True

    async def _chat(self, request: ConnectRequest, joined: Joined, store: KeyStore | None,
                    identity: IdentityKeys | None, session: RoomSession | None) -> None:
        rejoin = session is not None
        if session is None:
            session = self._new_session(request)
        session.request, session.joined = request, joined
        host = joined.details.host
        link = room_link(joined, functools.partial(self._on_line, session), store, identity)
        session.encrypted = isinstance(link, E2ERoomLink)
        session.view.enter(request.room, joined.username, host, link.max_message,
                           encrypted=session.encrypted, keep=rejoin,
                           tls=joined.tcrp is not None and joined.tcrp.tls is not None,
                           connection=describe_connection(joined))
        session.members = ()
        session.room_gone = False
        link.on_notice = functools.partial(self._on_notice, session)
        link.on_send_state = functools.partial(self._on_send_state, session, link)
        link.on_status = functools.partial(self._on_link_status, session, link)
        link.on_resumed = functools.partial(self._on_resumed, session, link)
        link.status_lines = False  # the banner and the marks on messages say it
        session.sent.clear()
        if isinstance(link, E2ERoomLink):
            link.on_key_changed = functools.partial(self.warn_key_changed, session=session)
            link.on_sas = functools.partial(self._on_sas, session, link)
        self.show_session(session)
        try:
            await link.open()
        except OSError as exc:  # e.g. no route to the UDP port the server named
            link.close()
            joined.udp_sock.close()
            session.view.show_ended(f"Cannot chat with the server: {exc}")
            self._refresh_row(session)
            return
        session.link = link
        session.unread.clear()
        self._refresh_row(session)
        self._room_actions_enabled()
        self._update_title()
        role = " (host: leaving closes the room)" if host else ""
        session.view.append(render.notice_line(
            f"you are in room {render.sanitize(request.room)!r} as "
            f"{render.sanitize(joined.username)}{role} · F1 or /help for commands"))
        self.tasks.spawn(self._wait_end(session, link))
        self.refresh_members(session)

    async def _wait_end(self, session: RoomSession, link: RoomLink) -> None:
        notice = await link.ended
        if session.link is not link:
            return
        session.link = None
        host = session.joined.details.host if session.joined else False
        session.view.append(render.warning_line(render.ended_explanation(notice, host)))
        session.room_gone = notice.event is NoticeEvent.CLOSED or host
        session.view.rejoin_button.setText("Create it again" if session.room_gone
                                           else "Rejoin")
        if notice.event is NoticeEvent.CLOSED:
            headline = "Room closed: " + render.ended_explanation(notice, host)
        else:
            headline = "You were disconnected: " + render.ended_explanation(notice, host)
        session.view.show_ended(headline)
        self._refresh_row(session)
        self._room_actions_enabled()
        self._alert("OCM", headline)

    def _back_to_connect(self, which: Field, text: str) -> None:
        self.show_connect()
        self.connect_screen.show_error(which, text)

    def _rejoin(self, session: RoomSession) -> None:
        self.start_connect(session.request.again(session.room_gone), session)

    # -- chatting -----------------------------------------------------------------------------
    def submit(self, text: str) -> None:
        """Carry out one typed line in the room shown (a message or a /command)."""
        if self.current is not None:
            self.submit_in(self.current, text)

    def submit_in(self, session: RoomSession, text: str) -> None:
        """Carry out one typed line (a message or a /command) in ``session``."""
        view = session.view
        command = commands.parse_input(text)
        action = command.action
        if action is Action.NOTHING:
            return
        if action is Action.LEAVE:
            view.input.clear()
            self.request_leave(session)
        elif action is Action.HELP:
            view.input.clear()
            self.show_help()
        elif action is Action.WHO:
            view.input.clear()
            self.tasks.spawn(self._who(session))
        elif action is Action.VERIFY:
            view.input.clear()
            link = session.link
            if isinstance(link, E2ERoomLink) and link.keys_of(command.text) is not None:
                self.open_verify(command.text, session=session)
            else:  # no such member, or a plain room: the link says why
                self.tasks.spawn(self._answer(session, command))
        elif action is Action.REFUSED:
            view.append(render.warning_line(command.text))
        elif action is Action.RETRY:  # the link answers (reliable delivery) or says none
            view.input.clear()
            self.tasks.spawn(self._answer(session, command))
        elif session.link is not None and session.joined is not None:
            try:
                session.link.send(command.text)
            except MessageTooLong as exc:
                view.append(render.warning_line(str(exc)))
                return  # the text stays in the input, to be shortened
            view.input.clear()
            line = render.chat_line(session.joined.username, command.text, own=True)
            view.log.clear_unread()
            view.append(line)
            link = session.link
            if link.reliable is not None and link.last_id not in session.sent:
                session.sent[link.last_id] = len(view.log.entries) - 1
                self._on_send_state(session, link, link.last_id, SendState.PENDING, "")
            view.scroll_to_bottom()
            session.heard(line)
            self._refresh_row(session)

    def _on_send_state(self, session: RoomSession, link: RoomLink, msg_id: int,
                       state: SendState, _text: str) -> None:
        """One of our messages moved on: 🕓 while pending, ⚠ once it failed, nothing
        once the relay has it."""
        if link is not session.link:
            return
        entry = session.sent.get(msg_id)
        if entry is None:  # still being sent: ``submit_in`` shows it once it is shown
            return
        session.view.set_status(entry, models.SEND_STATE_MARKS.get(state.value, ""))
        if state in (SendState.SENT, SendState.REFUSED):
            session.sent.pop(msg_id, None)

    def _on_link_status(self, session: RoomSession, link: RoomLink) -> None:
        """``Reconnecting…`` while the link resumes; the failed messages' count."""
        if link is not session.link:
            return
        if link.reconnecting:
            if session.gaps_before is None:
                session.gaps_before = link.gaps
            session.view.show_connection("Reconnecting…")
        session.view.show_failed(len(link.failed))

    def _on_resumed(self, session: RoomSession, link: RoomLink, outcome: Resumed) -> None:
        """Say briefly how the resume went."""
        lost = link.gaps - (session.gaps_before or 0)
        session.gaps_before = None
        if link is not session.link or outcome is Resumed.NO:
            session.view.show_connection("")
            return
        session.view.show_connection(models.resumed_text(lost), RESUMED_SHOWN_MS)

    def _retry_in(self, session: RoomSession) -> None:
        """The *Retry* beside the undelivered count: the link sends them again."""
        if session.link is not None:
            session.link.retry()
            session.view.show_failed(len(session.link.failed))

    def retry_failed(self) -> None:
        """*Room › Retry failed messages* (``/retry``): the link answers (reliable delivery
        sends them again) or says there is nothing to retry."""
        session = self._shown_session()
        if session is not None:
            self.tasks.spawn(self._answer(session, commands.parse_input("/retry")))

    def who(self) -> None:
        """*Room › Who is here* (``/who``)."""
        session = self._shown_session()
        if session is not None:
            self.tasks.spawn(self._who(session))

    async def _who(self, session: RoomSession) -> None:
        """``/who``: the lines in the conversation, the list in the member panel."""
        link = session.link
        if link is None:
            return
        lines, members = await link.who()
        for line in lines:
            session.view.append(line)
        if members and link is session.link:
            self._show_members(session, link, members)

    async def _answer(self, session: RoomSession, command: Command) -> None:
        if session.link is not None:
            for line in await session.link.answer(command) or ():
                session.view.append(line)

    def find_in_room(self) -> None:
        if (session := self._shown_session()) is not None:
            session.view.open_search()

    def pick_emoji(self) -> None:
        if (session := self._shown_session()) is not None and session.link is not None:
            session.view.emoji_button.showMenu()

    def show_help(self) -> HelpDialog:
        """The commands, what each does, where it is in the menus, and the shortcuts."""
        session = self._shown_session()
        limit = session.view.max_message if session is not None else 0
        if self.help_dialog is None:
            self.help_dialog = HelpDialog(limit, self)
        else:
            self.help_dialog.set_limit(limit)
        self.help_dialog.show()
        self.help_dialog.raise_()
        return self.help_dialog

    # -- key protection ---------------------------------------------------------------------------
    def ask_protect_keys(self) -> None:
        """Lock the identities kept under the key file with a passphrase (no OS keyring);
        say so if there is nothing to lock."""
        sources = open_store(self.env, passphrase=self.key_passphrase).sources()
        if not sources[KeySource.FILE]:
            self._inform("Protect your keys", (
                "Your identity keys are already locked with a passphrase."
                if sources[KeySource.PASSPHRASE] else
                "Your identity keys are kept by the OS keyring."
                if sources[KeySource.KEYRING] else
                "You have no identity keys yet: they are made when you first join a room. "
                "Come back here afterwards."))
            return
        dialog = ProtectKeysDialog(self)
        dialog.chosen.connect(functools.partial(self._protect_chosen, dialog))
        dialog.finished.connect(lambda _: setattr(self, "protect_dialog", None))
        self.protect_dialog = dialog
        dialog.open()

    def _protect_chosen(self, dialog: ProtectKeysDialog, passphrase: bytes) -> None:
        try:
            moved = open_store(self.env).protect(passphrase)
        except WrongPassphrase:
            dialog.refuse("Some of your keys are already locked with another passphrase: "
                          "type that one.")
            return
        except KeyStoreError as exc:
            dialog.refuse(f"Your keys could not be locked: {exc}")
            return
        self.key_passphrase = passphrase
        dialog.accept()
        self._inform("Keys locked", f"{moved} identit{'y is' if moved == 1 else 'ies are'} "
                     "now locked with your passphrase. ocm-gui asks for it when it needs "
                     "your keys.")

    def _inform(self, title: str, text: str) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, title, text,
                          QMessageBox.StandardButton.Ok, self)
        self.info_box = box
        box.finished.connect(lambda _: setattr(self, "info_box", None))
        box.open()

    def _about(self) -> None:
        QMessageBox.about(self, "About OCM", "OCM: chat rooms over a UDP relay, optionally "
                          "end-to-end encrypted. This is ocm-gui, the desktop client; "
                          "ocm-chat is the same client in a terminal.")

    # -- transcripts -----------------------------------------------------------------------------
    def ask_save_transcript(self) -> None:
        if (session := self._shown_session()) is not None:
            self._ask_save(session)

    def _ask_save(self, session: RoomSession) -> None:
        dialog = QFileDialog(self, "Save transcript",
                             str(Path.home() / f"{_file_name(session.request.room)}.txt"),
                             "Text (*.txt);;All files (*)")
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.fileSelected.connect(functools.partial(self._save_chosen, session))
        dialog.open()

    def _save_chosen(self, session: RoomSession, path: str) -> None:
        try:
            self.save_transcript(session, Path(path))
        except OSError as exc:
            session.view.append(render.warning_line(f"transcript not saved: {exc}"))

    def save_transcript(self, session: RoomSession, path: Path) -> None:
        """The room's conversation as UTF-8 text: a heading, a line per day, then one
        line per message or notice."""
        lines = [f"# {session.request.room} on {session.server()}, saved "
                 f"{time.strftime('%Y-%m-%d %H:%M')}"]
        day = None
        today = time.strftime("%Y-%m-%d")
        for entry in session.view.scrollback.entries:
            if entry.day != day:
                day = entry.day
                lines.append(f"-- {models.day_label(day or today, today)} --")
            lines.append(entry.transcript())
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # -- the member list ----------------------------------------------------------------------
    def refresh_members(self, session: RoomSession | None = None) -> None:
        """Fetch the member list (Operation 3) for the panel; one fetch at a time, and
        one more if something changed meanwhile. Nothing to do outside a room."""
        session = session or self.current
        if session is None or session.link is None:
            return
        if session.members_task is not None:
            session.members_stale = True
            return
        session.members_task = self.tasks.spawn(self._fetch_members(session))

    async def _fetch_members(self, session: RoomSession) -> None:
        try:
            while (link := session.link) is not None:
                session.members_stale = False
                _, members = await link.who()  # an encrypted link learns missing keys
                if members and link is session.link:
                    self._show_members(session, link, members)
                if not session.members_stale:
                    break
        finally:
            session.members_task = None

    def _show_members(self, session: RoomSession, link: RoomLink,
                      members: tuple[MemberInfo, ...]) -> None:
        session.members = members
        trust = link.trust_of if isinstance(link, E2ERoomLink) else None
        session.view.set_members(models.member_rows(members, link.joined.username, trust))

    def _on_notice(self, session: RoomSession, notice: Notice) -> None:
        if notice.event in (NoticeEvent.JOINED, NoticeEvent.LEFT):
            self.refresh_members(session)

    def _show_member_lists(self, on: bool) -> None:
        for session in self.sessions:
            session.view.member_panel.setVisible(on)
            session.view.members_button.setChecked(on)

    def ask_verify(self) -> None:
        """*Room › Verify member…*: the selected member, or pick one."""
        session = self._shown_session()
        if session is None or not isinstance(session.link, E2ERoomLink):
            return
        if (name := session.view.selected_member()) is not None \
                and name != session.link.joined.username:
            self.open_verify(name, session=session)
            return
        names = [m.user for m in session.members
                 if m.keys is not None and m.user != session.link.joined.username]
        if not names:
            session.view.append(render.notice_line("nobody else here has a key to verify"))
            return
        dialog = QInputDialog(self)
        dialog.setWindowTitle("Verify member")
        dialog.setLabelText("Compare safety numbers with:")
        dialog.setComboBoxItems(names)
        dialog.textValueSelected.connect(
            lambda name: self.open_verify(name, session=session))
        dialog.open()

    def open_verify(self, member: str, session: RoomSession | None = None
                    ) -> VerifyDialog | None:
        """Show the safety number with ``member`` side by side with both keys; *They
        match* marks ``member`` verified (``E2ERoomLink.verify``, pinned on disk)."""
        session = session or self.current
        link = session.link if session is not None else None
        if session is None or not isinstance(link, E2ERoomLink):
            return None
        number = link.safety_number_with(member)
        keys = link.keys_of(member)
        if number is None or keys is None:
            for line in link.verify(member):  # says there is no such member
                session.view.append(line)
            return None
        dialog = VerifyDialog(link.joined.username, fingerprint(link.identity.public()),
                              member, fingerprint(keys), number, self)
        dialog.accepted.connect(functools.partial(self._verified, session, link, member))
        dialog.emoji_requested.connect(functools.partial(self.start_sas, member, session))
        self.verify_dialog = dialog
        dialog.open()
        return dialog

    def _verified(self, session: RoomSession, link: E2ERoomLink, member: str) -> None:
        self.verify_dialog = None
        for line in link.verify(member):
            session.view.append(line)
        if link is session.link and session.members:
            self._show_members(session, link, session.members)

    def start_sas(self, member: str, session: RoomSession) -> SasDialog | None:
        """*Compare emoji…*: start the interactive verification with ``member``
        (``E2ERoomLink.sas_start``) and show its dialog, waiting for the emoji."""
        link = session.link
        if not isinstance(link, E2ERoomLink):
            return None
        for line in link.sas_start(member):
            session.view.append(line)
        if member not in link.sas:  # could not start: the conversation says why
            return None
        return self._sas_dialog(session, link, member)

    def _sas_dialog(self, session: RoomSession, link: E2ERoomLink, member: str) -> SasDialog:
        dialog = self.sas_dialogs.get((session, member))
        if dialog is None:
            dialog = SasDialog(member, self)
            dialog.matched.connect(functools.partial(self._sas_matched, session, link, member))
            dialog.cancelled.connect(
                functools.partial(self._sas_cancelled, session, link, member))
            self.sas_dialogs[(session, member)] = dialog
            dialog.open()
        return dialog

    def _on_sas(self, session: RoomSession, link: E2ERoomLink, member: str,
                show: SasShow | None) -> None:
        """``E2ERoomLink.on_sas``: the emoji to compare (opening the dialog when
        ``member`` asked), or the verification is over (``None``)."""
        if link is not session.link:
            return
        if show is not None:
            self._sas_dialog(session, link, member).show_sas(show)
            return
        self._sas_over(session, link, member)

    def _sas_matched(self, session: RoomSession, link: E2ERoomLink, member: str) -> None:
        for line in link.sas_confirm(member):
            session.view.append(line)
        if member not in link.sas:  # verified at once, or failed
            self._sas_over(session, link, member)

    def _sas_cancelled(self, session: RoomSession, link: E2ERoomLink, member: str) -> None:
        self.sas_dialogs.pop((session, member), None)
        if member in link.sas:
            for line in link.sas_cancel(member):
                session.view.append(line)

    def _sas_over(self, session: RoomSession, link: E2ERoomLink, member: str) -> None:
        dialog = self.sas_dialogs.pop((session, member), None)
        if dialog is not None:
            dialog.finish()
        QTimer.singleShot(0, functools.partial(self._members_again, session, link))

    def _members_again(self, session: RoomSession, link: E2ERoomLink) -> None:
        """The member list once the link has marked (or not) the member verified."""
        if link is session.link and session.members:
            self._show_members(session, link, session.members)

    # -- leaving ----------------------------------------------------------------------------------
    def request_leave(self, session: RoomSession | None = None, then_quit: bool = False,
                      then_close: bool = False) -> None:
        """Leave ``session`` (the room shown by default); the conversation stays, greyed.
        A host is asked first, because leaving closes the room. ``then_close`` removes the
        room from the list, ``then_quit`` closes the window."""
        session = session or self._shown_session()
        if session is None or session.link is None:
            return
        if session.hosting:
            if self.leave_box is not None:  # already asking
                self.leave_box.raise_()
                return
            box = QMessageBox(QMessageBox.Icon.Question, "Leave and close the room?",
                              f"You are the host of {render.sanitize(session.request.room)}: "
                              "leaving closes the room for everyone.",
                              QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                              self)
            box.setDefaultButton(QMessageBox.StandardButton.No)
            box.finished.connect(functools.partial(self._leave_answered, box, session,
                                                   then_quit, then_close))
            self.leave_box = box
            box.open()
            return
        self._left(session, then_close)
        if then_quit:
            self.quit_now()

    def _leave_answered(self, box: QMessageBox, session: RoomSession, then_quit: bool,
                        then_close: bool, _result: int) -> None:
        self.leave_box = None
        if box.standardButton(box.clickedButton()) == QMessageBox.StandardButton.Yes:
            if then_quit:
                self.quit_now()
                return
            self._left(session, then_close)
        else:
            session.view.append(render.notice_line("staying"))

    def _left(self, session: RoomSession, then_close: bool) -> None:
        host = session.hosting
        self._leave_now(session)
        if then_close:
            self.close_session(session)
            return
        session.room_gone = host
        session.view.append(render.notice_line("you left the room"))
        session.view.rejoin_button.setText("Create it again" if host else "Rejoin")
        session.view.show_ended("You left the room" + (": it is closed, as you were its host."
                                                       if host else "."))
        self._refresh_row(session)
        self._room_actions_enabled()

    def close_current(self) -> None:
        if (session := self._shown_session()) is not None:
            self.close_session(session)

    def close_session(self, session: RoomSession) -> None:
        """Remove the room from the window (leaving it first, the host after asking)."""
        if session.link is not None:
            self.request_leave(session, then_close=True)
            return
        if session not in self.sessions:
            return
        index = self.sessions.index(session)
        self.sessions.remove(session)
        self.room_list.takeItem(self.room_list.row(session.item))
        self.pages.removeWidget(session.view)
        session.view.deleteLater()
        if self.current is session:
            self.current = None
        if self.sessions:
            self.show_session(self.sessions[min(index, len(self.sessions) - 1)])
        else:
            self.show_connect()
        self._update_title()

    def hosting(self) -> bool:
        """In some room, as its host."""
        return any(session.hosting for session in self.sessions)

    def quit_now(self) -> None:
        """Close the window without asking (leaving every room): Ctrl-C, SIGTERM."""
        self._closing = True
        self.close()

    def _leave_now(self, session: RoomSession) -> None:
        """Send ``/exit`` and close the link (no-op if not in the room)."""
        link, session.link = session.link, None
        if link is not None:
            link.leave()
            link.close()

    def warn_key_changed(self, member: str, old: str, new: str,
                         session: RoomSession | None = None) -> QMessageBox:
        """A member's key is not the one pinned before (``E2ERoomLink.on_key_changed``):
        a warning dialog, not only a line in the conversation, because it may mean someone
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
        self.refresh_members(session)
        return box

    def _on_line(self, session: RoomSession, line: Line) -> None:
        view = session.view
        entry = view.append(line)
        if entry.is_chat:
            session.heard(line)
            self._refresh_row(session)
        seen = (self.isActiveWindow() and self._shown_session() is session
                and view.at_bottom())
        if session.unread.arrived(entry, seen):
            if session.unread.count == 1:  # the first one you have not seen
                view.log.mark_unread(len(view.scrollback) - 1)
            self._refresh_row(session)
            self._update_title()
            if not self.isActiveWindow():
                self._alert(line.user, line.text)

    def _alert(self, title: str, text: str) -> None:
        """A desktop notification, if the window is not focused and they are on."""
        if self.isActiveWindow() or not self.notify_action.isChecked():
            return
        self.notifications = [*self.notifications[-9:], (title, text)]
        if self._tray is not None and QSystemTrayIcon.supportsMessages():
            self._tray.show()
            self._tray.showMessage(title, text)
        QApplication.alert(self)

    def _caught_up(self, session: RoomSession) -> None:
        if self.isActiveWindow() and self._shown_session() is session \
                and session.unread.count:
            session.unread.clear()
            self._refresh_row(session)
            self._update_title()

    def _update_title(self) -> None:
        shown = self._shown_session()
        self.setWindowTitle(models.window_title(
            shown.request.room if shown is not None else None, self.unread))

    # -- themes ---------------------------------------------------------------------------------
    def set_theme(self, which: Theme) -> None:
        """Light, dark, or the system's (remembered)."""
        self.theme = which
        self.theme_actions[which].setChecked(True)
        self.settings.setValue(THEME_KEY, which.value)
        app = QApplication.instance()
        if isinstance(app, QApplication):
            self.dark = theme.apply(app, which)

    def _system_scheme_changed(self, _scheme: object) -> None:
        if self.theme is Theme.SYSTEM:
            self.set_theme(Theme.SYSTEM)

    # -- Qt events ----------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.ActivationChange and self.isActiveWindow() \
                and (session := self._shown_session()) is not None:
            self._caught_up(session)
        super().changeEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        """Closing the window leaves every room cleanly (``/exit``); a host is asked
        first (``quit_now`` does not ask)."""
        hosted = next((s for s in self.sessions if s.hosting), None)
        if hosted is not None and not self._closing:
            event.ignore()
            if self.leave_box is None:
                self.show_session(hosted)
                self.request_leave(hosted, then_quit=True)
            return
        self._closing = True
        for session in self.sessions:
            self._leave_now(session)
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


async def _done(value: bool) -> bool:
    return value


def _file_name(room: str) -> str:
    """A room name as a safe file name."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in room).strip("._")
    return safe or "room"


def _abandon(joined: Joined) -> None:
    """Leave a membership that nobody will use (the window closed during the join)."""
    try:
        joined.udp_sock.sendto(joined.seal(leave_datagram(joined)), joined.server)
    except OSError:
        pass
    joined.udp_sock.close()
