"""What Qt's X11 plugin lacks, found with ``ldd`` and named as Debian packages."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from client.gui import syslibs

LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007ffd)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-cursor.so.0 => not found
\tlibxkbcommon-x11.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibweird.so.9 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
"""


def test_not_found_lines_map_to_debian_packages() -> None:
    missing = syslibs.not_found(LDD_OUTPUT)
    assert missing == ["libweird.so.9", "libxcb-cursor.so.0", "libxcb-icccm.so.4",
                       "libxcb-keysyms.so.1", "libxkbcommon-x11.so.0"]
    packages, unknown = syslibs.packages_for(missing)
    assert packages == ["libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1",
                        "libxkbcommon-x11-0"]
    assert unknown == ["libweird.so.9"]


def test_real_ldd_of_the_installed_plugins(tmp_path: Path) -> None:
    """The X11 plugin of the installed PySide6 loads here (make installs what it
    lacks); a copy outside the wheel loses Qt's own libraries, and ldd says so."""
    path = syslibs.plugin_path("xcb")
    assert path is not None and path.name == "libqxcb.so"
    assert syslibs.missing_libraries(path) == []
    assert syslibs.missing_libraries(syslibs.plugin_path("offscreen")) == []  # type: ignore[arg-type]
    moved = tmp_path / "libqxcb.so"
    shutil.copy(path, moved)
    assert "libQt6XcbQpa.so.6" in syslibs.missing_libraries(moved)
    assert syslibs.main(["--platform", "xcb"]) == 0


def test_display_and_plugin_problems_in_one_line() -> None:
    assert syslibs.display_problem({}) is not None
    assert syslibs.display_problem({"DISPLAY": ":0"}) is None
    assert syslibs.display_problem({"WAYLAND_DISPLAY": "wayland-0"}) is None
    assert syslibs.display_problem({"QT_QPA_PLATFORM": "offscreen"}) is None
    assert "WAYLAND_DISPLAY" in (syslibs.display_problem(
        {"QT_QPA_PLATFORM": "wayland", "DISPLAY": ":0"}) or "")
    assert syslibs.xcb_problem({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}) is None
    assert syslibs.xcb_problem({"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ":0"}) is None
    assert sys.modules.get("PySide6.QtWidgets") is not None  # (the suite imports Qt anyway)


def test_the_plugin_message_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syslibs, "missing_libraries",
                        lambda _path: ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"])
    text = syslibs.xcb_problem({"DISPLAY": ":0"})
    assert text is not None and "\n" not in text
    assert text.endswith("sudo apt-get install libxcb-icccm4 libxcb-keysyms1"), text
