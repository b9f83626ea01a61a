"""``ocm-gui`` on a real X server (Xvfb) with Qt's X11 plugin, driven by real input events.

The offscreen suite (tests/gui/) drives widgets from inside the process; this one runs
``python -m client.gui`` as a user would, under ``QT_QPA_PLATFORM=xcb``, and types into it
with xdotool (XTEST key events through the X server). It reads the window only from
outside: window titles (``xdotool search --name``: the room shown, the unread count, the
verify dialog) and what an ``ocm-chat`` peer receives. Steps: connect and create an
encrypted room, receive a peer, send to it, create a second room, receive a message in
the first one (the unread count in the title), switch back (Ctrl+PgUp), open the verify
dialog (``/verify bob``) and close it, save the transcript (Ctrl+S, Enter in the file
dialog: the file holds what was sent and received), quit (the peer sees the room closed).

Readiness is the X server's ``-displayfd`` handshake and, after each input, the title the
window is expected to show (polled, generous timeouts). ``make test`` installs Xvfb and
xdotool; ``OCM_GUI_X11_SHOTS=DIR`` saves a screenshot of the screen after each step
(ImageMagick's ``import``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Server, start_server
from tests.integration.test_client_script import Client, clients
from tests.integration.test_client_script import spawn as spawn_chat

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 40.0
__all__ = ["clients"]  # the fixture: ocm-chat peers, killed at the end
HINT = "make test installs Xvfb and xdotool (Debian: xvfb xdotool)"


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """A fresh Xvfb; its display name once the server says it is ready (-displayfd)."""
    xvfb = shutil.which("Xvfb")
    assert xvfb and shutil.which("xdotool"), HINT
    read, write = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write), "-screen", "0", "1280x800x24",
                             "-nolisten", "tcp", "-noreset"], pass_fds=(write,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write)
    try:
        number = b""
        deadline = time.monotonic() + WAIT_S
        os.set_blocking(read, False)
        while not number.endswith(b"\n"):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "Xvfb did not start"
            try:
                chunk = os.read(read, 16)
            except BlockingIOError:
                time.sleep(0.05)
                continue
            assert chunk, "Xvfb closed its display pipe"
            number += chunk
        yield f":{number.decode().strip()}"
    finally:
        os.close(read)
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with start_server(workers=1) as srv:
        yield srv


class X:
    """xdotool on one display."""

    def __init__(self, display: str, shots: Path | None) -> None:
        self.env = {**os.environ, "DISPLAY": display}
        self.shots = shots
        self.step = 0

    def run(self, *args: str) -> str:
        done = subprocess.run(["xdotool", *args], env=self.env, capture_output=True,
                              text=True, timeout=30, check=False)
        return done.stdout

    def windows(self, title: str) -> list[str]:
        """Visible windows whose whole title is ``title``."""
        return self.run("search", "--onlyvisible", "--name", f"^{_regex(title)}$").split()

    def wait_title(self, title: str, gone: bool = False) -> str:
        deadline = time.monotonic() + WAIT_S
        while True:
            found = self.windows(title)
            if bool(found) != gone:
                self.shot(title)
                return found[-1] if found else ""
            if time.monotonic() > deadline:
                titles = self.run("search", "--onlyvisible", "--name", ".", "getwindowname")
                raise AssertionError(f"no window titled {title!r} (gone={gone}); "
                                     f"windows: {titles!r}")
            time.sleep(0.1)

    def focus(self, window: str) -> None:
        self.run("windowfocus", "--sync", window)

    def type(self, text: str) -> None:
        self.run("type", "--delay", "15", text)

    def key(self, *keys: str) -> None:
        self.run("key", "--delay", "30", *keys)

    def shot(self, what: str) -> None:
        if self.shots is None or not shutil.which("import"):
            return
        self.step += 1
        name = "".join(ch if ch.isalnum() else "-" for ch in what)[:40]
        subprocess.run(["import", "-window", "root",
                        str(self.shots / f"x11-{self.step:02d}-{name}.png")],
                       env=self.env, capture_output=True, timeout=60, check=False)


def wait_file(path: Path) -> str:
    """The text of ``path`` once it exists and is complete (ends with a newline)."""
    deadline = time.monotonic() + WAIT_S
    while not (path.exists() and path.read_text(encoding="utf-8").endswith("\n")):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.1)
    return path.read_text(encoding="utf-8")


def _regex(text: str) -> str:
    return "".join("\\" + ch if ch in r".^$*+?()[]{}|\\" else ch for ch in text)


def test_gui_on_a_real_x_server_with_real_input(display: str, server: Server,
                                                clients: list[Client],
                                                tmp_path: Path) -> None:
    settings = tmp_path / "ocm-gui.ini"
    settings.write_text(f"[last]\nport={server.tcp_port}\ntls=false\nmode=create\n"
                        "encrypted=true\n"
                        "[recent]\nservers=127.0.0.1\nnames=alice\nrooms=x11-a\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "HOME": str(home),
           "XDG_CONFIG_HOME": str(tmp_path / "alice"), "QT_ACCESSIBILITY": "0"}
    env.pop("WAYLAND_DISPLAY", None)
    log = (tmp_path / "ocm-gui.log").open("w")
    gui = subprocess.Popen([sys.executable, "-m", "client.gui", "--settings", str(settings)],
                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    shots = os.environ.get("OCM_GUI_X11_SHOTS")
    x = X(display, Path(shots) if shots else None)
    try:
        window = x.wait_title("OCM")
        x.focus(window)
        x.key("Return")  # the form is filled from the settings: create x11-a, encrypted
        x.wait_title("x11-a — OCM")
        bob = spawn_chat(clients, server, "--join", "x11-a", "--user", "bob",
                         env={"XDG_CONFIG_HOME": str(tmp_path / "bob")})
        bob.expect_err(r"bob is in encrypted room")
        bob.expect(r"^\* alice is now in the encryption set, key fingerprint ")
        x.type("hello from X11")
        x.key("Return")
        bob.expect_line("alice: hello from X11")

        x.key("ctrl+n")  # a second room, in the same window
        x.wait_title("OCM")
        x.type("x11-b")
        x.key("Return")
        x.wait_title("x11-b — OCM")
        bob.send("ping from bob")  # arrives in x11-a, not shown: counted as unread
        x.wait_title("(1) x11-b — OCM")
        x.key("ctrl+Prior")  # the previous room: x11-a, read
        x.wait_title("x11-a — OCM")
        x.key("ctrl+s")  # Save transcript…: the dialog proposes ~/x11-a.txt
        x.focus(x.wait_title("Save transcript"))
        x.key("Return")
        x.wait_title("Save transcript", gone=True)
        transcript = wait_file(home / "x11-a.txt")
        assert "  alice (you): hello from X11" in transcript, transcript
        assert "  bob: ping from bob" in transcript, transcript  # received, and shown
        x.focus(x.wait_title("x11-a — OCM"))

        x.type("/verify bob")
        x.key("Return")
        dialog = x.wait_title("Verify bob")
        x.focus(dialog)
        x.key("Escape")
        x.wait_title("Verify bob", gone=True)
    except AssertionError:
        log.flush()
        print((tmp_path / "ocm-gui.log").read_text()[-3000:])
        raise
    finally:
        gui.send_signal(signal.SIGTERM)  # leave every room (the host's closes) and quit
        try:
            gui.wait(30)
        finally:
            if gui.poll() is None:
                gui.kill()
                gui.wait(10)
            log.close()
    output = (tmp_path / "ocm-gui.log").read_text()
    assert gui.returncode == 0 and "Traceback" not in output, output[-3000:]
    bob.expect_line("* the room was closed")
    assert bob.wait() == 3
