"""The window's font is the platform's default whatever fonts are installed: emoji and
Japanese come from Qt's per-character fallback, never from a family list that can take
over the layout (a list whose first name is not a real family made the whole window
render in the emoji font: spaced-out digits, a window wider than the screen).

Each case runs ``tests.gui.font_probe`` in a process of its own with a fontconfig
configuration that offers only the fonts the case names (symlinks to the system's font
files in ``tmp_path``): a text font plus an emoji font and no Japanese font, and the
reverse. ``make test`` installs the fonts (fonts-noto-color-emoji, fonts-ipafont-gothic).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FONTS = {
    "text": ":family=DejaVu Sans:style=Book",
    "emoji": ":family=Noto Color Emoji",
    "japanese": ":lang=ja",
}
MAKE_HINT = ("make test installs the fonts (Debian: fonts-noto-color-emoji "
             "fonts-ipafont-gothic fonts-dejavu-core)")


def font_file(pattern: str) -> Path:
    """A font file fontconfig lists for ``pattern`` (the test fails if there is none)."""
    assert shutil.which("fc-list"), "fontconfig's fc-list is missing: " + MAKE_HINT
    listed = subprocess.run(["fc-list", pattern, "file"], capture_output=True, text=True,
                            timeout=60, check=True).stdout.split()
    files = sorted(Path(line.rstrip(":")) for line in listed if line.rstrip(":"))
    assert files, f"no font for {pattern!r}: {MAKE_HINT}"
    return files[0]


def probe(tmp_path: Path, fonts: list[str]) -> dict[str, object]:
    """Run the probe with only ``fonts`` (keys of ``FONTS``) installed."""
    folder = tmp_path / "fonts"
    folder.mkdir()
    for name in fonts:
        source = font_file(FONTS[name])
        (folder / source.name).symlink_to(source)
    config = tmp_path / "fonts.conf"
    config.write_text(f"""<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig>
  <dir>{folder}</dir>
  <cachedir>{tmp_path / "cache"}</cachedir>
  <include ignore_missing="yes">/etc/fonts/conf.d</include>
</fontconfig>
""")
    env = {**os.environ, "FONTCONFIG_FILE": str(config), "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-m", "tests.gui.font_probe",
                           str(tmp_path / "settings.ini")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def check_layout(result: dict[str, object]) -> None:
    assert result["app_family"] == "DejaVu Sans", result
    digits, x_width = result["digits_width"], result["x_width"]
    assert isinstance(digits, int) and isinstance(x_width, int)
    assert digits <= 6 * x_width, f"spaced-out digits: {result}"
    hint = result["size_hint"]
    assert isinstance(hint, list) and hint[0] <= 1280, f"wider than a screen: {result}"
    assert result["minimum_width"] <= 1024, result  # type: ignore[operator]
    assert result["send_inside"] and result["members_inside"], result
    assert result["members_width"] >= 120, result  # type: ignore[operator]


@pytest.mark.parametrize(("fonts", "fallback"), [
    (["text", "emoji"], "Noto Color Emoji"),
    (["text", "japanese"], None),
])
def test_layout_with_an_emoji_font_and_no_japanese_font_and_the_reverse(
        tmp_path: Path, fonts: list[str], fallback: str | None) -> None:
    result = probe(tmp_path, fonts)
    check_layout(result)
    used = result["fonts_for_sample"]
    assert isinstance(used, list) and "DejaVu Sans" in used, result
    if fallback is not None:  # emoji drawn with the emoji font, through the fallback
        assert fallback in used, result
    else:  # Japanese drawn with the Japanese font
        assert any(name not in ("DejaVu Sans", "Noto Color Emoji") for name in used), result
