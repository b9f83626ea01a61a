"""ocm-gui over TLS seals its datagrams (docs/protocol.md §8): the relay demands the MAC of
a member that joined over TLS, so the GUI's chat reaching another member proves it."""

from __future__ import annotations

from pathlib import Path

import qasync
from pytestqt.qtbot import QtBot

from client.gui.app import MainWindow
from client.session import TcrpTarget, client_tls_context, join_room
from tests.gui.conftest import in_thread, run, until
from tests.gui.test_gui import fill, in_room, room_name, type_line
from tests.integration.test_dgmac import send, start_tls, wait_for
from tests.integration.test_tls import tls_port
from wire.codes import Framing, Operation
from wire.tcrp import Request, RequestBody


def test_gui_chat_over_tls_is_sealed_and_relayed(
        window: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, tmp_path: Path) -> None:
    ca, own = start_tls(tmp_path)
    screen = window.connect_screen
    room = room_name()

    async def scenario() -> None:
        port = tls_port(own)
        screen.ca_file.setText(str(ca))
        fill(window, qtbot, port, "gus", room, create=True, tls=True)
        await until(lambda: in_room(window), "the room window, over TLS")
        assert window.joined is not None and window.joined.sealer is not None
        target = TcrpTarget("127.0.0.1", port, tls=client_tls_context(str(ca)))
        bob = await in_thread(join_room, target, Request.of(
            Operation.JOIN, room, RequestBody("bob", framing=Framing.OCM1)))
        try:
            send(bob, b"")  # bound: the GUI's chat reaches bob from now on
            await until(lambda: "bob" in window.room.log.toPlainText(), "bob's join line")
            type_line(window, qtbot, "hello sealed")
            await in_thread(wait_for, bob, "gus", b"hello sealed")
        finally:
            bob.udp_sock.close()

    try:
        run(loop, scenario())
    finally:
        own.stop()
