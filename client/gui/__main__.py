"""``ocm-gui``: the desktop chat client (``python -m client.gui``; extra ``ocm[gui]``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence

from client.session import DEFAULT_TIMEOUT_S


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocm-gui", description="Chat in OCM rooms in a desktop window (Qt 6).")
    parser.add_argument("--settings", metavar="PATH",
                        help="keep recent servers, names and rooms in this INI file "
                             "instead of the user's Qt settings")
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT_S,
                        help="give up joining after this long (default: %(default)g)")
    return parser


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
    from client.gui.room import emoji_capable_font

    app = QApplication.instance() or QApplication([sys.argv[0]])
    assert isinstance(app, QApplication)
    app.setApplicationName("ocm-gui")
    app.setOrganizationName("ocm")
    app.setFont(emoji_capable_font(app.font()))
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
