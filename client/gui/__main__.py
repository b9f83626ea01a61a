"""``ocm-gui``: the desktop chat client (``python -m client.gui``; extra ``ocm[gui]``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from client.session import DEFAULT_TIMEOUT_S

if TYPE_CHECKING:
    from PySide6.QtWidgets import QApplication


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocm-gui", description="Chat in OCM rooms in a desktop window (Qt 6).",
        epilog="Without a display (DISPLAY or WAYLAND_DISPLAY), or when Qt's X11 plugin "
               "lacks a system library, it says so in one line (naming the Debian "
               "packages) and exits 1.")
    parser.add_argument("--settings", metavar="PATH",
                        help="keep recent servers, names, rooms, the theme and the "
                             "notification switch in this INI file "
                             "instead of the user's Qt settings")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT_S,
                        help="give up joining after this long (default: %(default)g)")
    return parser


def configure_app(app: QApplication) -> None:
    """Names for the settings and the desktop. The font stays the platform's default:
    Japanese, emoji and other scripts come from Qt's per-character fallback, never from
    a family list (a list whose first name is not a real family would put the whole
    window in its next font, e.g. an emoji font)."""
    app.setApplicationName("ocm-gui")
    app.setOrganizationName("ocm")
    app.setDesktopFileName("ocm-gui")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from client.gui import syslibs

    problem = syslibs.display_problem(os.environ) or syslibs.xcb_problem(os.environ)
    if problem is not None:  # one line, instead of Qt's abort
        print(problem, file=sys.stderr)
        return 1
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from client.gui import bridge
    from client.gui.app import MainWindow

    app = QApplication.instance() or QApplication([sys.argv[0]])
    assert isinstance(app, QApplication)
    configure_app(app)
    settings = (QSettings(args.settings, QSettings.Format.IniFormat) if args.settings
                else QSettings("ocm", "ocm-gui"))
    loop = bridge.new_event_loop(app)
    quitting = asyncio.Event()
    app.aboutToQuit.connect(quitting.set)
    window = MainWindow(settings, join_timeout=args.timeout)
    window.show()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C in the terminal: leave, then quit
        loop.add_signal_handler(sig, window.quit_now)
    with loop:
        loop.run_until_complete(quitting.wait())
    return 0


if __name__ == "__main__":
    sys.exit(main())
