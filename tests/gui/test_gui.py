"""ocm-gui against a real ocm-control, offscreen: real sockets, real ``ocm-chat`` peers.

Each scenario runs on the qasync loop (``run``); waits are ``until`` a widget shows the
expected state, with a timeout, and an ``ocm-chat`` peer's blocking ``expect`` runs in a
thread so the window keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import qasync
from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from client.gui.app import MainWindow
from client.refusals import Field
from client.reliable import SEND_FAIL_AFTER_S
from tests.gui.conftest import in_thread, run, until
from tests.integration.harness import Server, free_udp_port, start_server
from tests.integration.test_client_script import Client
from tests.integration.test_client_script import spawn as spawn_chat
from tests.integration.test_tls import make_pki, tls_port

_rooms = itertools.count()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    started: list[Client] = []
    yield started
    for client in started:
        client.kill()


def room_name() -> str:
    return f"gui-room-{next(_rooms)}"


def fill(window: MainWindow, qtbot: QtBot, port: int, user: str, room: str, create: bool,
         password: str = "", tls: bool = False) -> None:
    """Fill the connect screen as a user would and press Connect (TLS unticked unless
    ``tls``: ``port`` is then the plain one)."""
    screen = window.connect_screen
    screen.server.setCurrentText("127.0.0.1")
    screen.tls.setChecked(tls)
    screen.port.setValue(port)
    screen.name.setCurrentText(user)
    (screen.create_mode if create else screen.join_mode).setChecked(True)
    screen.room.setCurrentText(room)
    screen.password.setText(password)
    qtbot.mouseClick(screen.connect_button, Qt.MouseButton.LeftButton)


def scrollback(window: MainWindow) -> str:
    return window.room.log.toPlainText()


def in_room(window: MainWindow) -> bool:
    return (window.current is not None and window.pages.currentWidget() is window.room
            and window.link is not None)


def type_line(window: MainWindow, qtbot: QtBot, text: str) -> None:
    window.room.input.setText(text)
    qtbot.keyClick(window.room.input, Qt.Key.Key_Return)


def room_page_shown(window: MainWindow) -> bool:
    return window.current is not None and window.pages.currentWidget() is window.room


async def join_ocm_chat_host(window: MainWindow, qtbot: QtBot, server: Server,
                             clients: list[Client], host: str, user: str, room: str,
                             *flags: str, env: dict[str, str] | None = None) -> Client:
    """``host`` creates ``room`` with ``ocm-chat`` (and ``flags``); the window joins it as
    ``user``. Returns the host's process once the window is in the room."""
    chat = spawn_chat(clients, server, "--create", room, "--user", host, *flags, env=env)
    await in_thread(chat.expect_err, rf"{host} is host of ")
    fill(window, qtbot, server.tcp_port, user, room, create=False)
    await until(lambda: in_room(window), "the room window")
    return chat


def test_gui_creates_ocm_chat_joins_and_they_chat_both_ways(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client]) -> None:
    room = room_name()

    async def scenario() -> None:
        fill(window, qtbot, server.tcp_port, "alice", room, create=True)
        await until(lambda: in_room(window), "the room window")
        assert "alice (host)" not in window.windowTitle()
        assert room in window.windowTitle()
        bob = spawn_chat(clients, server, "--join", room, "--user", "bob")
        await until(lambda: "bob joined the room" in scrollback(window), "bob's joined notice")
        type_line(window, qtbot, "hello 日本語 😀")
        await in_thread(bob.expect_line, "alice: hello 日本語 😀")
        assert window.room.input.text() == ""
        window.room.input.setText("two")  # Shift+Enter: one message of two lines
        qtbot.keyClick(window.room.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
        qtbot.keyClicks(window.room.input, "lines")
        qtbot.keyClick(window.room.input, Qt.Key.Key_Return)
        await in_thread(bob.expect_line, "alice: two\\x0alines")  # ocm-chat shows the escape
        bob.send("hi alice")
        await until(lambda: "bob: hi alice" in scrollback(window), "bob's message")
        # Over the room's limit: refused locally, with the reason; the text stays.
        limit = window.room.max_message
        type_line(window, qtbot, "x" * (limit + 1))
        assert f"the limit in this room is {limit} bytes (1 too many)" in scrollback(window)
        assert window.room.input.text() == "x" * (limit + 1)
        assert window.room.byte_count().over
        assert window.room.counter.text() == f"{limit + 1} / {limit} bytes"
        # /commands as in ocm-chat; /help is a dialog
        type_line(window, qtbot, "/help")
        assert window.help_dialog is not None and window.help_dialog.isVisible()
        assert "/exit" in window.help_dialog.text.text()
        window.help_dialog.close()
        type_line(window, qtbot, "/who")
        await until(lambda: "2 in the room: alice (host, you), bob" in scrollback(window),
                    "the /who answer")
        type_line(window, qtbot, "/nope")
        assert "unknown command '/nope'" in scrollback(window)
        type_line(window, qtbot, "//slash")
        await in_thread(bob.expect_line, "alice: /slash")
        # Closing the window leaves cleanly; as host, after confirming (the room closes).
        window.close()
        box = await until(lambda: window.leave_box, "the confirmation")
        assert window.isVisible() and in_room(window)
        box.button(QMessageBox.StandardButton.Yes).click()
        await until(lambda: not window.isVisible(), "the window to close")
        await in_thread(bob.expect_line, "* the room was closed")
        assert await in_thread(bob.wait) == 3

    run(loop, scenario())


def test_ocm_chat_hosts_gui_joins_and_the_host_closes_the_room(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client]) -> None:
    room = room_name()

    async def scenario() -> None:
        carol = await join_ocm_chat_host(window, qtbot, server, clients, "carol", "dave", room)
        await in_thread(carol.expect_line, "* dave joined the room")
        carol.send("welcome dave")
        await until(lambda: "carol: welcome dave" in scrollback(window), "carol's message")
        type_line(window, qtbot, "thanks")
        await in_thread(carol.expect_line, "dave: thanks")
        carol.close_stdin()  # EOF: ocm-chat sends /exit and, as host, closes the room
        await until(lambda: window.room.banner.isVisible(), "the room-closed banner")
        assert window.room.banner_text.text().startswith("Room closed")
        assert not window.room.input.isEnabled()
        assert window.room.rejoin_button.text() == "Create it again"
        assert window.room_list.row_of(window.sessions[0].item).ended  # greyed in the list
        # "Create it again": dave now hosts a room of the same name, in the same page.
        qtbot.mouseClick(window.room.rejoin_button, Qt.MouseButton.LeftButton)
        await until(lambda: in_room(window) and window.joined is not None
                    and window.joined.details.host, "the re-created room")
        assert "(host: leaving closes the room)" in scrollback(window)
        assert "carol: welcome dave" in scrollback(window)  # the conversation was kept
        assert len(window.sessions) == 1

    run(loop, scenario())


def test_password_wrong_then_right_and_errors_next_to_their_field(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client], tmp_path: Path) -> None:
    room = room_name()
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    errors = window.connect_screen.errors

    async def scenario() -> None:
        erin = spawn_chat(clients, server, "--create", room, "--user", "erin",
                          "--password-file", str(secret))
        await in_thread(erin.expect_err, r"is host of room")
        fill(window, qtbot, server.tcp_port, "frank", room + "-nope", create=False)
        await until(lambda: errors[Field.ROOM].isVisible(), "the room error")
        assert errors[Field.ROOM].text() == (
            f"There is no room named {room + '-nope'!r}. Check the name, or create it.")
        fill(window, qtbot, server.tcp_port, "erin", room, create=False, password="s3cret")
        await until(lambda: errors[Field.NAME].isVisible(), "the name error")
        assert "is already called 'erin'" in errors[Field.NAME].text()
        fill(window, qtbot, server.tcp_port, "frank", room, create=False)
        await until(lambda: errors[Field.PASSWORD].isVisible(), "the password error")
        assert errors[Field.PASSWORD].text().startswith(f"Room {room!r} is protected")
        fill(window, qtbot, server.tcp_port, "frank", room, create=False, password="wrong")
        await until(lambda: errors[Field.PASSWORD].isVisible(), "the password error")
        assert errors[Field.PASSWORD].text() == f"Wrong password for room {room!r}."
        assert not errors[Field.ROOM].isVisible()
        fill(window, qtbot, server.tcp_port, "frank", room, create=False, password="s3cret")
        await until(lambda: in_room(window), "the room window")
        await in_thread(erin.expect_line, "* frank joined the room")
        assert window.current is not None
        assert [action.text() for action in window.room_menu(window.current).actions()] \
            == ["Leave room", "Save transcript…", "Close room"]  # a right click in the list
        # Not a host: leaving asks nothing, and the host sees us go; the page stays.
        type_line(window, qtbot, "/exit")
        await in_thread(erin.expect_line, "* frank left the room")
        assert room_page_shown(window) and window.room.banner.isVisible()
        assert window.room.banner_text.text() == "You left the room."
        # A port nobody listens on: the server field says so.
        qtbot.mouseClick(window.new_room_button, Qt.MouseButton.LeftButton)
        fill(window, qtbot, free_udp_port(), "frank", room, create=False)
        await until(lambda: errors[Field.SERVER].isVisible(), "the server error")
        assert errors[Field.SERVER].text().startswith("Server unreachable")
        # Recents were remembered.
        assert window.settings.value("recent/rooms")[0] == room

    run(loop, scenario())


def test_host_is_asked_before_leaving(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client]) -> None:
    room = room_name()

    async def scenario() -> None:
        fill(window, qtbot, server.tcp_port, "gina", room, create=True)
        await until(lambda: in_room(window), "the room window")
        hank = spawn_chat(clients, server, "--join", room, "--user", "hank")
        await until(lambda: "hank joined the room" in scrollback(window), "hank's notice")
        qtbot.mouseClick(window.room.leave_button, Qt.MouseButton.LeftButton)
        box = await until(lambda: window.leave_box, "the confirmation")
        box.button(QMessageBox.StandardButton.No).click()
        await until(lambda: "staying" in scrollback(window), "staying")
        assert in_room(window)
        type_line(window, qtbot, "/quit")
        box = await until(lambda: window.leave_box, "the confirmation")
        box.button(QMessageBox.StandardButton.Yes).click()
        await in_thread(hank.expect_line, "* the room was closed")
        assert room_page_shown(window) and window.room.banner.isVisible()
        assert window.room.rejoin_button.text() == "Create it again"

    run(loop, scenario())


def test_server_stopping_is_shown_and_a_new_room_finds_it_unreachable(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop) -> None:
    own = start_server(workers=1)

    async def scenario() -> None:
        fill(window, qtbot, own.tcp_port, "ivy", room_name(), create=True)
        await until(lambda: in_room(window), "the room window")
        await in_thread(own.stop, signal.SIGTERM)
        await until(lambda: window.room.banner.isVisible(), "the banner")
        assert "Room closed" in window.room.banner_text.text()
        qtbot.mouseClick(window.new_room_button, Qt.MouseButton.LeftButton)
        assert window.pages.currentWidget() is window.connect_screen
        assert window.connect_screen.name.currentText() == "ivy"  # the form is kept
        qtbot.mouseClick(window.connect_screen.connect_button, Qt.MouseButton.LeftButton)
        errors = window.connect_screen.errors
        await until(lambda: errors[Field.SERVER].isVisible(), "the server error")
        assert "connection refused" in errors[Field.SERVER].text()

    try:
        run(loop, scenario())
    finally:
        own.stop()


def test_window_stays_responsive_while_the_server_does_not_answer(
        qtbot: QtBot, loop: qasync.QEventLoop, settings: QSettings) -> None:
    """A server that accepts TCP and says nothing: the join times out in the background
    while Qt keeps painting and taking input; the error says so next to the server."""
    window = MainWindow(settings, join_timeout=1.5)
    qtbot.addWidget(window)
    window.show()
    silent = socket.create_server(("127.0.0.1", 0))
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))

    async def scenario() -> None:
        timer.start()
        fill(window, qtbot, silent.getsockname()[1], "jo", room_name(), create=True)
        screen = window.connect_screen
        assert not screen.connect_button.isEnabled()
        assert screen.status.text().startswith("Connecting to 127.0.0.1:")
        qtbot.keyClicks(screen.password, "typed while waiting")
        assert screen.password.text() == "typed while waiting"
        await until(lambda: screen.errors[Field.SERVER].isVisible(), "the timeout error")
        assert "did not answer within 1.5 s" in screen.errors[Field.SERVER].text()
        assert screen.connect_button.isEnabled()

    try:
        run(loop, scenario())
    finally:
        timer.stop()
        silent.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    assert len(ticks) > 20 and max(gaps) < 1.0, f"the Qt loop stalled {max(gaps):.2f} s"


def test_disconnected_for_inactivity_then_rejoin(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, clients: list[Client],
        monkeypatch: pytest.MonkeyPatch) -> None:
    own = start_server("--inactivity-timeout", "1", workers=1)
    room = room_name()

    async def scenario() -> None:
        kim = spawn_chat(clients, own, "--create", room, "--user", "kim")  # keepalives on
        await in_thread(kim.expect_err, r"is host of room")
        monkeypatch.setenv("OCM_CHAT_KEEPALIVE", "0")  # the window sends none: evicted
        fill(window, qtbot, own.tcp_port, "lee", room, create=False)
        await until(lambda: in_room(window), "the room window")
        await until(lambda: window.room.banner.isVisible(), "the disconnected banner")
        assert window.room.banner_text.text().startswith("You were disconnected")
        assert window.room.rejoin_button.text() == "Rejoin"
        await in_thread(kim.expect, r"^\* lee was removed for inactivity$")
        monkeypatch.delenv("OCM_CHAT_KEEPALIVE")
        qtbot.mouseClick(window.room.rejoin_button, Qt.MouseButton.LeftButton)
        await until(lambda: in_room(window) and not window.room.banner.isVisible(),
                    "back in the room")
        await in_thread(kim.expect_line, "* lee joined the room")
        assert window.joined is not None and not window.joined.details.host
        window.close()  # a member closing the window leaves without being asked
        await in_thread(kim.expect, r"^\* lee left the room$")
        assert not window.isVisible() and window.leave_box is None

    try:
        run(loop, scenario())
    finally:
        own.stop()


def test_tls_join_with_the_servers_ca_and_refusal_without(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    own = start_server("--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0",
                       workers=1)
    screen = window.connect_screen

    other = tmp_path / "other"
    other.mkdir()
    wrong_ca, _, _ = make_pki(other)

    async def scenario() -> None:
        port = tls_port(own)
        screen.ca_file.setText(str(wrong_ca))  # a CA that did not issue the certificate
        fill(window, qtbot, port, "tess", room_name(), create=True, tls=True)
        await until(lambda: screen.errors[Field.SERVER].isVisible(), "the TLS error")
        text = screen.errors[Field.SERVER].text()
        assert text.startswith("No secure connection: ") and "unknown CA" in text
        assert text.endswith("give the CA that did with the CA file field."), text
        assert "--" not in text
        screen.ca_file.setText(str(tmp_path / "missing.pem"))
        qtbot.mouseClick(screen.connect_button, Qt.MouseButton.LeftButton)
        await until(lambda: screen.errors[Field.SERVER].isVisible(), "the CA file error")
        assert screen.errors[Field.SERVER].text().startswith("Cannot use the CA file")
        screen.ca_file.setText(str(ca))
        qtbot.mouseClick(screen.connect_button, Qt.MouseButton.LeftButton)
        await until(lambda: in_room(window), "the room window, over TLS")
        assert window.joined is not None and window.joined.details.host
        assert window.room.security.text() == "not encrypted · TLS"
        assert "\njoined over TLS (certificate verified, key " in \
            window.room.security.toolTip()
        type_line(window, qtbot, "/who")  # the chat itself runs as usual
        await until(lambda: "1 in the room: tess (host, you)" in scrollback(window),
                    "the /who answer")

    try:
        run(loop, scenario())
    finally:
        own.stop()


def test_two_rooms_on_two_servers_in_one_window(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client]) -> None:
    """A room on each of two servers, side by side: a message in the one not shown is
    counted in its row and the title; leaving one (from the list's menu) leaves the
    other as it was."""
    other = start_server(workers=1)
    first, second = room_name(), room_name()

    async def scenario() -> None:
        fill(window, qtbot, server.tcp_port, "amy", first, create=True)
        await until(lambda: in_room(window) and window.request is not None
                    and window.request.room == first, "the first room")
        bob = spawn_chat(clients, server, "--join", first, "--user", "bob")
        await until(lambda: "bob joined the room" in scrollback(window), "bob's notice")
        qtbot.mouseClick(window.new_room_button, Qt.MouseButton.LeftButton)
        fill(window, qtbot, other.tcp_port, "amy", second, create=True)
        await until(lambda: in_room(window) and window.request is not None
                    and window.request.room == second, "the second room")
        a, b = window.sessions
        assert (a.server(), b.server()) == (f"127.0.0.1:{server.tcp_port}",
                                            f"127.0.0.1:{other.tcp_port}")
        bob.send("for the first room")
        await until(lambda: a.unread.count == 1, "the unread message")
        assert window.windowTitle() == f"(1) {second} — OCM"
        assert window.room_list.row_of(a.item).preview == "bob: for the first room"
        assert "for the first room" not in scrollback(window)  # the second is shown
        leave = next(action for action in window.room_menu(a).actions()
                     if action.text() == "Leave room")
        leave.trigger()  # amy hosts it: asked first
        box = await until(lambda: window.leave_box, "the confirmation")
        box.button(QMessageBox.StandardButton.Yes).click()
        await in_thread(bob.expect_line, "* the room was closed")
        assert window.room_list.row_of(a.item).ended and a.view.banner.isVisibleTo(a.view)
        assert b.link is not None and window.pages.currentWidget() is b.view
        type_line(window, qtbot, "still here")
        assert "amy (you): still here" in scrollback(window)

    try:
        run(loop, scenario())
    finally:
        other.stop()


def test_tls_by_default_pins_the_key_and_refuses_a_changed_one(
        qapp: object, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        settings: QSettings, tmp_path: Path) -> None:
    """The TLS box is ticked from the start: with the CA file empty the server's key is
    pinned on first use; a different pin for the same server is refused, and the text
    names the window's own field, not a command-line flag."""
    import os

    from client.known_servers import FILE_NAME

    window = MainWindow(settings, join_timeout=10.0,
                        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)})
    window.show()
    screen = window.connect_screen
    pins = tmp_path / "ocm" / FILE_NAME

    async def scenario() -> None:
        assert screen.tls.isChecked() and screen.port.value() == 9443
        fill(window, qtbot, server.tls_port, "tia", room_name(), create=True, tls=True)
        await until(lambda: in_room(window), "the room window, over TLS")
        line = pins.read_text().strip()
        assert line.startswith(f"127.0.0.1:{server.tls_port} sha256:"), line
        assert window.room.security.text() == "not encrypted · TLS"
        assert "is now pinned in" in window.room.security.toolTip()
        assert window.current is not None
        window._left(window.current, then_close=True)  # as the leave dialog's "yes" does
        pins.write_text(f"127.0.0.1:{server.tls_port} sha256:{'A' * 43}\n")
        fill(window, qtbot, server.tls_port, "tia", room_name(), create=True, tls=True)
        await until(lambda: screen.errors[Field.SERVER].isVisible(), "the refusal")
        text = screen.errors[Field.SERVER].text()
        assert "HAS CHANGED" in text and f"delete the line for 127.0.0.1:{server.tls_port}" \
            in text and "the CA file field" in text and "--" not in text, text

    try:
        run(loop, scenario())
    finally:
        window.quit_now()
        window.deleteLater()


def test_pending_failed_retry_and_reconnecting(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client]) -> None:
    room = room_name()

    async def scenario() -> None:
        fill(window, qtbot, server.tcp_port, "alice", room, create=True)
        await until(lambda: in_room(window), "the room window")
        bob = spawn_chat(clients, server, "--join", room, "--user", "bob")
        await until(lambda: "bob joined" in window.room.log.toPlainText(), "bob's notice")
        view, link = window.room, window.link
        assert link is not None and link.reliable is not None
        # Delivered: the clock goes away once the relay acknowledges.
        type_line(window, qtbot, "hello")
        entry = len(view.log.entries) - 1
        await in_thread(bob.expect_line, "alice: hello")
        await until(lambda: entry not in view.log.status, "the acknowledgement")
        # A loss the test controls: nothing leaves; the message stays pending (🕓).
        send = link._send
        link._send = lambda data: None  # type: ignore[method-assign]
        type_line(window, qtbot, "lost")
        entry = len(view.log.entries) - 1
        assert view.log.status.get(entry) == "🕓"
        assert not view.failed_bar.isVisibleTo(view)
        # Its resend deadline passes: failed, marked, counted, with Retry.
        clock = link.clock
        link.clock = lambda: clock() + SEND_FAIL_AFTER_S + 1
        link._on_timer()
        await until(lambda: view.log.status.get(entry) == "⚠ not delivered", "the failure")
        assert view.failed_bar.isVisibleTo(view)
        assert view.failed_text.text() == "⚠ 1 message not delivered"
        # Shown once: the mark and the bar, not also the link's "not delivered: …" line.
        assert "not delivered" not in scrollback(window)
        link.clock = clock
        link._send = send  # type: ignore[method-assign]
        qtbot.mouseClick(view.retry_button, Qt.MouseButton.LeftButton)
        assert view.log.status.get(entry) == "🕓"
        assert not view.failed_bar.isVisibleTo(view)
        await in_thread(bob.expect_line, "alice: lost")
        await until(lambda: entry not in view.log.status, "the retried message's ack")
        # A resume: "Reconnecting…" meanwhile, then how it went, briefly.
        resuming = asyncio.ensure_future(link.resume("127.0.0.1"))
        await asyncio.sleep(0)  # the resume's first step: the status says reconnecting
        assert view.connection_banner.isVisibleTo(view)
        assert view.connection_banner.text() == "Reconnecting…"
        await asyncio.wait_for(resuming, 30)
        await until(lambda: view.connection_banner.text()
                    == "Reconnected: everything recovered", "the resume's outcome")
        assert view.connection_banner.isVisibleTo(view)
        # The banner says it; the conversation does not repeat it ("reconnected: …").
        assert "reconnected" not in scrollback(window).casefold()
        type_line(window, qtbot, "after")
        await in_thread(bob.expect_line, "alice: after")
        await until(lambda: not view.connection_banner.isVisibleTo(view),
                    "the outcome to go away", timeout=30)

    run(loop, scenario())
