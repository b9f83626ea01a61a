"""What Qt needs from the system before ``ocm-gui`` can open a window (no Qt import).

The PySide6 wheels bring Qt itself; its platform plugins load a few system libraries.
On a fresh Debian/Ubuntu desktop the X11 plugin (``plugins/platforms/libqxcb.so``) is the
one that fails: Qt then prints only a generic hint about ``xcb-cursor0`` and aborts. This
module asks the dynamic loader instead: ``ldd`` of the plugin lists every library it
cannot find (``not found``), and each one maps to the Debian package that ships it.

- ``plugin_path(name)``: the plugin's file inside the installed PySide6;
- ``missing_libraries(path)``: the sonames ``ldd`` reports not found;
- ``packages_for(sonames)``: the Debian packages to install (or the sonames nobody maps);
- ``display_problem(env)``: one line when there is no display to open a window on.

``python -m client.gui.syslibs [--platform xcb|offscreen]`` prints the missing packages,
one line, nothing when all is there (the Makefile's ``gui-system-libs`` installs them).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

PACKAGES: Final[Mapping[str, str]] = {
    # the X11 platform plugin (Qt 6.5+ links libxcb-cursor too)
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xinput.so.0": "libxcb-xinput0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-glx.so.0": "libxcb-glx0",
    "libxcb.so.1": "libxcb1",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    # what every platform plugin (offscreen included) loads
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
}
"""Soname -> Debian package (the same names on Ubuntu; ``resolve_renamed`` picks the
``t64`` name where a newer release renamed the package)."""

PLATFORM_PLUGINS: Final = {"xcb": "libqxcb.so", "offscreen": "libqoffscreen.so",
                           "wayland": "libqwayland.so"}
_NOT_FOUND: Final = re.compile(r"^\s*(\S+)\s*=>\s*not found", re.MULTILINE)


def plugin_path(platform: str) -> Path | None:
    """The platform plugin of the installed PySide6, or ``None`` (no PySide6, or no
    such plugin)."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or spec.origin is None or platform not in PLATFORM_PLUGINS:
        return None
    path = Path(spec.origin).parent / "Qt" / "plugins" / "platforms" / PLATFORM_PLUGINS[platform]
    return path if path.exists() else None


def missing_libraries(path: Path) -> list[str]:
    """The sonames the dynamic loader cannot find for ``path`` (``ldd``'s ``not found``
    lines, the libraries those need included); empty without ``ldd``."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    done = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=30,
                          check=False)
    return not_found(done.stdout)


def not_found(ldd_output: str) -> list[str]:
    """The sonames of ``ldd``'s ``libfoo.so.1 => not found`` lines, sorted, once each."""
    return sorted(set(_NOT_FOUND.findall(ldd_output)))


def packages_for(sonames: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(packages, unknown)``: the Debian packages that ship ``sonames``, and the
    sonames this table does not know."""
    packages: list[str] = []
    unknown: list[str] = []
    for soname in sonames:
        package = PACKAGES.get(soname)
        if package is None:
            unknown.append(soname)
        elif package not in packages:
            packages.append(package)
    return packages, unknown


def resolve_renamed(packages: Sequence[str]) -> list[str]:
    """Each package, or its ``t64`` successor where apt knows only that one (Debian 13,
    Ubuntu 24.04 renamed e.g. libglib2.0-0 to libglib2.0-0t64)."""
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        return list(packages)
    resolved = []
    for package in packages:
        if not _apt_knows(apt_cache, package) and _apt_knows(apt_cache, package + "t64"):
            package += "t64"
        resolved.append(package)
    return resolved


def _apt_knows(apt_cache: str, package: str) -> bool:
    done = subprocess.run([apt_cache, "policy", package], capture_output=True, text=True,
                          timeout=30, check=False)
    return "Candidate:" in done.stdout and "Candidate: (none)" not in done.stdout


def display_problem(env: Mapping[str, str]) -> str | None:
    """Why no window can open here, in one line, or ``None``: no ``DISPLAY`` nor
    ``WAYLAND_DISPLAY`` and no ``QT_QPA_PLATFORM`` that needs neither."""
    platform = env.get("QT_QPA_PLATFORM", "").split(":", 1)[0]
    if platform in ("offscreen", "minimal", "vnc", "linuxfb", "eglfs", "vkkhrdisplay"):
        return None
    if platform.startswith("wayland"):
        return None if env.get("WAYLAND_DISPLAY") else (
            "ocm-gui: no Wayland display (WAYLAND_DISPLAY is not set): start it inside "
            "a desktop session")
    if env.get("DISPLAY") or (not platform and env.get("WAYLAND_DISPLAY")):
        return None
    return ("ocm-gui: no display (DISPLAY is not set): start it inside a desktop session, "
            "over ssh -X, or under Xvfb")


def xcb_problem(env: Mapping[str, str]) -> str | None:
    """If Qt would use its X11 plugin and the plugin cannot load: one line naming the
    Debian packages that provide what is missing."""
    platform = env.get("QT_QPA_PLATFORM", "").split(":", 1)[0]
    if platform not in ("", "xcb") or not env.get("DISPLAY"):
        return None
    if not platform and env.get("WAYLAND_DISPLAY"):
        return None  # Qt prefers its Wayland plugin there
    path = plugin_path("xcb")
    if path is None:
        return None
    missing = missing_libraries(path)
    if not missing:
        return None
    packages, unknown = packages_for(missing)
    text = "ocm-gui: Qt's X11 plugin cannot load: missing " + ", ".join(missing) + "."
    if packages:
        text += " Install them: sudo apt-get install " + " ".join(resolve_renamed(packages))
    if unknown:
        text += " (find the package of " + ", ".join(unknown) + " with apt-file search)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.gui.syslibs",
        description="Print the Debian packages a Qt platform plugin of the installed "
                    "PySide6 still needs (one line; nothing when none is missing).")
    parser.add_argument("--platform", choices=sorted(PLATFORM_PLUGINS), action="append",
                        help="the plugin(s) to check (default: xcb and offscreen)")
    args = parser.parse_args(argv)
    wanted: list[str] = []
    unknown: list[str] = []
    for platform in args.platform or ["offscreen", "xcb"]:
        path = plugin_path(platform)
        if path is None:
            print(f"no PySide6 {platform} plugin installed", file=sys.stderr)
            return 2
        packages, strange = packages_for(missing_libraries(path))
        wanted += [package for package in packages if package not in wanted]
        unknown += strange
    if unknown:
        print("no known package for: " + " ".join(unknown), file=sys.stderr)
    if wanted:
        print(" ".join(resolve_renamed(wanted)))
    return 1 if unknown else 0


if __name__ == "__main__":
    sys.exit(main())
