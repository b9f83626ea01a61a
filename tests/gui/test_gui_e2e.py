"""ocm-gui's member list and encrypted rooms against a real ocm-control and real
``ocm-chat`` peers: ``/who`` with the host marked, an encrypted room with the lock,
fingerprints, safety numbers and messages decrypted both ways, and the warning dialog
when a pinned key changes.

Every party keeps its keys in its own ``$XDG_CONFIG_HOME`` under ``tmp_path`` (the
window through its ``env``, the ``ocm-chat`` processes through their environment).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import qasync
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication, QInputDialog, QLineEdit
from pytestqt.qtbot import QtBot

from client.e2e.identity import fingerprint
from client.e2e_link import E2ERoomLink
from client.gui.app import MainWindow
from client.gui.connect import MISMATCH_TEXT, PASSPHRASE_TEXT, WRONG_PASSPHRASE_TEXT
from client.gui.models import group_lines
from client.keystore import KEY_FILE, KeyStore, PassphraseNeeded, server_identity
from tests.gui.conftest import in_thread, run, until
from tests.gui.test_gui import (
    clients,
    fill,
    in_room,
    join_ocm_chat_host,
    room_name,
    scrollback,
    type_line,
)
from tests.integration.harness import Server
from tests.integration.test_client_script import Client
from tests.integration.test_client_script import spawn as spawn_chat

__all__ = ["clients"]  # the fixture, shared with test_gui

FP = r"[0-9a-f]{4}(?: [0-9a-f]{4}){7}"
SAFETY = r"\d{5}(?: \d{5}){11}"


def keys_env(tmp_path: Path, who: str) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / who)}


@pytest.fixture
def gui(qapp: QApplication, loop: qasync.QEventLoop, settings: QSettings, tmp_path: Path
        ) -> Iterator[MainWindow]:
    """A window whose key store is ``tmp_path/gui/ocm``."""
    win = MainWindow(settings, join_timeout=10.0, env=keys_env(tmp_path, "gui"))
    win.show()
    yield win
    win.quit_now()
    win.deleteLater()
    qapp.processEvents()


def member_rows(window: MainWindow) -> list[str]:
    members = window.room.members
    return [members.item(i).text() for i in range(members.count())]


def e2e_link(window: MainWindow) -> E2ERoomLink:
    link = window.link
    assert isinstance(link, E2ERoomLink), link
    return link


async def create_encrypted(gui: MainWindow, qtbot: QtBot, server: Server, user: str,
                           room: str) -> None:
    """The window creates ``room`` end-to-end encrypted, as ``user``."""
    gui.connect_screen.create_mode.setChecked(True)
    gui.connect_screen.encrypted.setChecked(True)
    fill(gui, qtbot, server.tcp_port, user, room, create=True)
    await until(lambda: in_room(gui), "the room window")


def test_who_in_a_plain_room_lists_the_members_with_the_host_marked(
        gui: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client]) -> None:
    room = room_name()

    async def scenario() -> None:
        await join_ocm_chat_host(gui, qtbot, server, clients, "carol", "dave", room)
        assert not gui.room.lock.isVisible()
        assert gui.room.security.text() == "not encrypted · no TLS"
        assert gui.room.security.toolTip().endswith("\njoined over plain TCRP (not TLS)")
        await until(lambda: member_rows(gui) == ["carol ★", "dave (you)"],
                    "the member list on entering")
        type_line(gui, qtbot, "/who")
        await until(lambda: "2 in the room: carol (host), dave (you)" in scrollback(gui),
                    "the /who answer")
        erin = spawn_chat(clients, server, "--join", room, "--user", "erin")
        await until(lambda: member_rows(gui) == ["carol ★", "dave (you)", "erin"],
                    "erin in the member list")
        erin.close_stdin()
        await until(lambda: member_rows(gui) == ["carol ★", "dave (you)"],
                    "erin gone from the member list")
        assert gui.room.members_title.text() == "Members (2)"
        type_line(gui, qtbot, "/verify carol")
        await until(lambda: "this room is not end-to-end encrypted" in scrollback(gui),
                    "/verify refused in a plain room")

    run(loop, scenario())


def test_gui_creates_an_encrypted_room_and_chats_with_ocm_chat(
        gui: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client], tmp_path: Path) -> None:
    room = room_name()

    async def scenario() -> None:
        await create_encrypted(gui, qtbot, server, "alice", room)
        link = e2e_link(gui)
        assert gui.joined is not None and gui.joined.details.e2e
        assert gui.room.lock.isVisible()
        assert gui.room.security.text() == "end-to-end encrypted · no TLS"
        mine = fingerprint(link.identity.public())
        assert f"your key fingerprint (alice): {mine}" in scrollback(gui)
        assert list((tmp_path / "gui" / "ocm").glob("identity-*.json"))  # the GUI's own store

        bob = spawn_chat(clients, server, "--join", room, "--user", "bob",
                         env=keys_env(tmp_path, "bob"))
        await in_thread(bob.expect_err, r"bob is in encrypted room")
        await in_thread(bob.expect, rf"^\* alice is now in the encryption set, key "
                                    rf"fingerprint {re.escape(mine)}")
        fp_bob = await until(lambda: re.search(rf"bob is now in the encryption set, key "
                                               rf"fingerprint ({FP})",
                                               scrollback(gui)), "bob's fingerprint")
        fp_bob = fp_bob.group(1)
        await until(lambda: member_rows(gui) == ["alice (you) ★ 🔒", "bob 🔒"],
                    "the member list, one row each")
        assert gui.room.members.item(1).toolTip() == (
            f"bob\nkey fingerprint:\n{group_lines(fp_bob)}\nunverified")
        assert "🔒" in gui.room.members_title.text()

        type_line(gui, qtbot, "hello bob, 日本語 🙂")
        await in_thread(bob.expect, r"^alice: hello bob, 日本語 🙂$")
        bob.send("hi alice, sealed")
        await until(lambda: "bob: hi alice, sealed" in scrollback(gui), "bob's message")
        assert link.rejected == 0

        # Verify: the dialog shows both keys and the number ocm-chat shows bob.
        gui.room.members.item(1).setSelected(True)
        qtbot.mouseClick(gui.room.verify_button, Qt.MouseButton.LeftButton)
        dialog = await until(lambda: gui.verify_dialog, "the verify dialog")
        bob.send("/verify alice")
        number = (await in_thread(bob.expect, rf"^\* safety number with alice: {SAFETY}$")
                  ).rsplit(": ", 1)[1]
        assert dialog.number.text().split() == number.split()
        dialog.match_button.click()
        await until(lambda: member_rows(gui)[1] == "bob 🔒 ✔", "bob marked verified")
        assert gui.room.details.text().endswith(f"{group_lines(fp_bob)}\n✔ verified")
        assert f"safety number with bob: {number}" in scrollback(gui)
        pins = json.loads((tmp_path / "gui" / "ocm" / "pins.json").read_text())
        assert pins["servers"][f"127.0.0.1:{server.tcp_port}"]["bob"]["trust"] == "verified"
        bob.close_stdin()
        assert await in_thread(bob.wait) == 0
        await until(lambda: "bob left the room" in scrollback(gui), "bob leaving")

    run(loop, scenario())


def test_a_changed_key_opens_a_warning_and_marks_messages_unverified(
        gui: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client], tmp_path: Path) -> None:
    room = room_name()

    async def scenario() -> None:
        # Joining needs no toggle: the server says the room is encrypted.
        await join_ocm_chat_host(gui, qtbot, server, clients, "carol", "dave", room, "--e2e",
                                 env=keys_env(tmp_path, "carol"))
        assert gui.room.lock.isVisible()
        bob = spawn_chat(clients, server, "--join", room, "--user", "bob",
                         env=keys_env(tmp_path, "bob"))
        await in_thread(bob.expect_err, r"bob is in encrypted room")
        await until(lambda: "bob is now in the encryption set" in scrollback(gui),
                    "bob's first key")
        bob.send("first device")
        await until(lambda: "bob: first device" in scrollback(gui), "bob's message")
        assert not gui.key_warnings
        bob.close_stdin()
        assert await in_thread(bob.wait) == 0
        await until(lambda: "bob left the room" in scrollback(gui), "bob leaving")

        # "bob" again with another key store: another key under the same name.
        impostor = spawn_chat(clients, server, "--join", room, "--user", "bob",
                              env=keys_env(tmp_path, "bob-2"))
        box = await until(lambda: gui.key_warnings and gui.key_warnings[-1], "the dialog")
        assert box.isVisible() and box.icon() == box.Icon.Warning
        assert box.windowTitle() == "bob's key changed"
        held = e2e_link(gui).keys_of("bob")
        assert held is not None and "bob" in e2e_link(gui).crypto.held
        new = fingerprint(held)
        assert f"now: {new}" in box.text()
        await until(lambda: "bob 🔒 ⚠" in member_rows(gui), "the changed key listed")
        impostor.send("it is really me")
        await until(lambda: "bob: [unverified key] it is really me" in scrollback(gui),
                    "the message marked unverified")
        box.close()
        gui.room.members.clearSelection()
        gui.verify_action.trigger()  # Room › Verify member…, nobody selected: pick one
        picker = await until(lambda: gui.findChildren(QInputDialog), "the member picker")
        assert picker[-1].comboBoxItems() == ["carol", "bob"]  # everyone else with a key
        picker[-1].setTextValue("bob")
        picker[-1].accept()
        shown = await until(lambda: gui.verify_dialog, "the verify dialog")
        shown.reject()
        gui.verify_dialog = None
        type_line(gui, qtbot, "/verify bob")  # the same dialog as the button
        dialog = await until(lambda: gui.verify_dialog, "the verify dialog")
        dialog.match_button.click()
        impostor.send("verified now")
        await until(lambda: "bob: verified now" in scrollback(gui), "an unmarked message")
        impostor.close_stdin()
        assert await in_thread(impostor.wait) == 0

    run(loop, scenario())


def test_emoji_verification_from_the_verify_dialog_with_ocm_chat(
        gui: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        clients: list[Client], tmp_path: Path) -> None:
    """*Compare emoji…* starts SAS with an ``ocm-chat`` peer: the dialog shows the emoji
    and numbers bob sees; *They match* on both sides marks bob verified; a second round
    that bob cancels closes the dialog and marks nothing."""
    room = room_name()

    async def scenario() -> None:
        await create_encrypted(gui, qtbot, server, "alice", room)
        bob = spawn_chat(clients, server, "--join", room, "--user", "bob",
                         env=keys_env(tmp_path, "bob"))
        await until(lambda: member_rows(gui) == ["alice (you) ★ 🔒", "bob 🔒"],
                    "bob in the member list")
        bob.send("hello")  # the Olm sessions answer both ways before the verification
        await until(lambda: "bob: hello" in scrollback(gui), "bob's message")
        gui.room.members.item(1).setSelected(True)
        qtbot.mouseClick(gui.room.verify_button, Qt.MouseButton.LeftButton)
        verify = await until(lambda: gui.verify_dialog, "the verify dialog")
        verify.emoji_button.click()
        assert not verify.isVisible()
        dialog = await until(lambda: gui.sas_dialogs.get((gui.current, "bob")), "SAS dialog")
        assert not dialog.match_button.isEnabled()  # nothing to compare yet
        await in_thread(bob.expect, r"alice asks to verify your keys")
        emoji_bob = (await in_thread(bob.expect, r"^\*   \S")).strip(" *")
        numbers_bob = (await in_thread(bob.expect, r"or the numbers \d+ \d+ \d+$")
                       ).rsplit("numbers ", 1)[1]
        await until(lambda: dialog.match_button.isEnabled(), "the emoji")
        assert "  ".join(f"{s} {n}" for s, n in dialog.emoji) == emoji_bob
        assert dialog.decimals.text().split() == numbers_bob.split()
        assert member_rows(gui)[1] == "bob 🔒"  # nothing marked before both confirm
        qtbot.mouseClick(dialog.match_button, Qt.MouseButton.LeftButton)
        assert dialog.isVisible() and "waiting for bob" in dialog.state.text()
        await in_thread(bob.expect, r"alice confirmed")
        bob.send("/verify alice sas match")
        await in_thread(bob.expect, r"^\* alice is now marked verified$")
        await until(lambda: not dialog.isVisible(), "the dialog to close")
        await until(lambda: member_rows(gui)[1] == "bob 🔒 ✔", "bob marked verified")
        assert "bob is now marked verified" in scrollback(gui)
        assert not gui.sas_dialogs
        # bob starts one and cancels it: the GUI's dialog opens on its own, then closes.
        bob.send("/verify alice sas")
        second = await until(lambda: gui.sas_dialogs.get((gui.current, "bob")),
                             "the dialog bob's request opens")
        await until(lambda: second.match_button.isEnabled(), "the emoji")
        bob.send("/verify alice sas cancel")
        await until(lambda: not second.isVisible(), "the dialog to close")
        assert "bob cancelled the verification" in scrollback(gui)
        assert not gui.sas_dialogs
        # The GUI cancels one: bob is told.
        third = gui.start_sas("bob", gui.current)
        assert third is not None
        await in_thread(bob.expect, r"alice asks to verify your keys")
        qtbot.mouseClick(third.cancel_button, Qt.MouseButton.LeftButton)
        await in_thread(bob.expect, r"alice cancelled the verification")
        assert "verification with bob cancelled" in scrollback(gui)
        bob.close_stdin()
        assert await in_thread(bob.wait) == 0

    run(loop, scenario())


def test_locked_keys_are_unlocked_with_a_passphrase_typed_in_a_dialog(
        gui: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, server: Server,
        tmp_path: Path) -> None:
    """alice's identity on this server was saved with a passphrase (``ocm-chat
    --key-passphrase-file``, no OS keyring). Creating an encrypted room, the window asks
    for it in a dialog instead of failing: a wrong one is asked again, the right one opens
    the keys and the room is made with that identity."""
    phrase = tmp_path / "phrase"
    phrase.write_text("correct horse\n")
    locked = KeyStore(tmp_path / "gui" / "ocm", phrase, use_keyring=False)
    made = locked.load_or_create_identity(server_identity("127.0.0.1", server.tcp_port),
                                          "alice")
    room = room_name()

    async def answer(text: str, label: str) -> QInputDialog:
        await until(lambda: gui.passphrase_dialog is not None, "the passphrase dialog")
        dialog = gui.passphrase_dialog
        assert dialog is not None and dialog.labelText() == label
        assert dialog.textEchoMode() is QLineEdit.EchoMode.Password
        dialog.setTextValue(text)
        dialog.accept()
        await until(lambda: gui.passphrase_dialog is not dialog, "the dialog closed")
        return dialog

    async def scenario() -> None:
        gui.connect_screen.create_mode.setChecked(True)
        gui.connect_screen.encrypted.setChecked(True)
        fill(gui, qtbot, server.tcp_port, "alice", room, create=True)
        await answer("wrong horse", PASSPHRASE_TEXT)
        await answer("correct horse", WRONG_PASSPHRASE_TEXT)
        await until(lambda: in_room(gui), "the room window")
        assert fingerprint(e2e_link(gui).identity.public()) == fingerprint(made.public())
        assert f"your key fingerprint (alice): {fingerprint(made.public())}" in scrollback(gui)

    run(loop, scenario())


def test_keys_under_a_key_file_are_locked_with_a_passphrase_from_the_menu(
        gui: MainWindow, qtbot: QtBot, loop: qasync.QEventLoop, tmp_path: Path) -> None:
    """No OS keyring: alice's identity is under the key file beside it. Room → Protect keys
    locks it with a passphrase typed twice (a mismatch is refused in the dialog), deletes
    the key file, and the window keeps the passphrase for its next joins; the directory
    alone then opens nothing."""
    directory = tmp_path / "gui" / "ocm"
    server = server_identity("127.0.0.1", 9443)
    made = KeyStore(directory, use_keyring=False).load_or_create_identity(server, "alice")
    assert (directory / KEY_FILE).exists()

    async def scenario() -> None:
        assert not gui.retry_action.isEnabled()  # no room: nothing to retry (or to ask)
        gui.ask_protect_keys()
        dialog = gui.protect_dialog
        assert dialog is not None and dialog.isVisible()
        dialog.first.setText("correct horse")
        dialog.second.setText("correct hose")
        qtbot.mouseClick(dialog.protect_button, Qt.MouseButton.LeftButton)
        assert dialog.error.text() == MISMATCH_TEXT and dialog.isVisible()
        assert (directory / KEY_FILE).exists()
        dialog.second.setText("correct horse")
        qtbot.mouseClick(dialog.protect_button, Qt.MouseButton.LeftButton)
        await until(lambda: gui.protect_dialog is None, "the dialog closed")
        assert gui.info_box is not None
        assert gui.info_box.text().startswith("1 identity is now locked with your passphrase")
        gui.info_box.accept()
        assert gui.key_passphrase == b"correct horse"
        gui.ask_protect_keys()  # nothing left to lock: it says so
        assert gui.protect_dialog is None and gui.info_box is not None
        assert "already locked" in gui.info_box.text()
        gui.info_box.accept()

    run(loop, scenario())
    assert not (directory / KEY_FILE).exists()
    with pytest.raises(PassphraseNeeded):
        KeyStore(directory, use_keyring=False).load_or_create_identity(server, "alice")
    typed = KeyStore(directory, use_keyring=False, passphrase=b"correct horse")
    assert typed.load_or_create_identity(server, "alice").public() == made.public()
