"""runtime/settings.py: one declaration gives the flag, the variable, the TOML key, the
conversion and the bounds, for control's layered settings and the loadgen's flags alike."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from runtime import settings
from runtime.settings import SettingError, setting


@dataclass(frozen=True)
class Demo:
    count: int = setting(3, "how many", above=0, group="numbers")
    ratio: float = setting(0.5, "a share", minimum=0, maximum=1, group="numbers")
    mode: str = setting("fast", "how", choices=("fast", "slow"))
    loud: bool = setting(False, "say more")
    quiet: bool = setting(True, "say less", flag="--chatty")
    name: str | None = setting(None, "who", shown="nobody")


F = {f.name: f for f in fields(Demo)}


def help_text(f: Any) -> str:
    return f"{settings.meta(f).help} [{settings.shown_default(f)}]"


@pytest.mark.parametrize(("name", "raw", "value"), [
    ("count", " 7 ", 7), ("count", 4.0, 4), ("ratio", "1", 1.0), ("mode", "SLOW", "slow"),
    ("loud", "yes", True), ("loud", "off", False), ("loud", True, True), ("name", "x", "x"),
])
def test_convert(name: str, raw: object, value: object) -> None:
    assert settings.convert(F[name], raw) == value


@pytest.mark.parametrize(("name", "raw", "says"), [
    ("count", "x", "must be an integer, got 'x'"), ("count", 2.5, "must be an integer"),
    ("count", True, "must be an integer, got True"), ("ratio", "inf", "a finite number"),
    ("ratio", "many", "must be a finite number, got 'many'"),
    ("loud", "maybe", "must be true or false"), ("mode", [1], "must be a string"),
])
def test_convert_refuses(name: str, raw: object, says: str) -> None:
    with pytest.raises(SettingError, match=says):
        settings.convert(F[name], raw)


@pytest.mark.parametrize(("name", "value", "says"), [
    ("count", 0, "must be > 0, got 0"), ("ratio", -0.5, "must be >= 0, got -0.5"),
    ("ratio", 2.0, "must be <= 1, got 2"), ("mode", "slower", "must be one of fast, slow"),
])
def test_check(name: str, value: object, says: str) -> None:
    with pytest.raises(SettingError, match=says):
        settings.check(F[name], value)
    settings.check(F[name], settings.convert(F[name], F[name].default))


def test_layers_defaults_file_environment_flags(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    settings.add_flags(parser, [Demo], help_text, typed=False)
    path = tmp_path / "demo.toml"
    path.write_text('mode = "slow"\ncount = 5\nratio = 0.25\n')
    args = parser.parse_args(["--count", "9"])
    values, sources = settings.layered(Demo, args, {"OCM_RATIO": "0.75", "OCM_LOUD": "1"},
                                       str(path))
    assert values == {"mode": "slow", "count": 9, "ratio": 0.75, "loud": True}
    assert sources == {"count": "--count", "ratio": "environment OCM_RATIO",
                       "mode": f"{path} line 1", "loud": "environment OCM_LOUD",
                       "quiet": "default", "name": "default"}
    with pytest.raises(SettingError, match=r"--count: count must be > 0, got 0"):
        settings.check_all(Demo(count=0), {"count": "--count"})
    path.write_text("count = 1\nspeed = 2\n")
    with pytest.raises(SettingError, match=rf"^{path} line 2: unknown setting 'speed'$"):
        settings.layered(Demo, parser.parse_args([]), {}, str(path))


def test_typed_flags(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    settings.add_flags(parser, [Demo], help_text, typed=True, groups=("numbers",))
    got = settings.from_namespace(Demo, parser.parse_args(["--count", "2", "--chatty",
                                                           "--loud", "--mode", "slow"]))
    assert got == Demo(count=2, mode="slow", loud=True, quiet=False)
    assert settings.from_namespace(Demo, parser.parse_args([])) == Demo()
    with pytest.raises(SystemExit):
        parser.parse_args(["--ratio", "3"])
    assert "argument --ratio: must be <= 1, got 3" in capsys.readouterr().err
    text = parser.format_help()
    assert "numbers:" in text and "a share [0.5]" in text and "who [nobody]" in text
