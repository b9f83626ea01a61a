"""The ``ocm-gui`` entry point as a real process: it starts offscreen and quits cleanly
on SIGTERM (what a session manager or a terminal's Ctrl-C does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 60.0


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (Linux: SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


def test_ocm_gui_starts_and_quits_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.Popen([sys.executable, "-m", "client.gui", "--settings",
                             str(tmp_path / "s.ini")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # The handler is installed just before the loop runs: that is "ready".
        while not _catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "ocm-gui did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


def test_without_a_display_it_says_so_in_one_line() -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    done = subprocess.run([sys.executable, "-m", "client.gui"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "ocm-gui: no display (DISPLAY is not set): start it inside a desktop session, "
        "over ssh -X, or under Xvfb"], done.stderr
