"""Settings as frozen dataclasses: one field declaration gives the flag, its help, the
environment variable, the TOML key, the conversion and the bounds.

Used by ``ocm-control`` (control/config.py: defaults < TOML file < ``OCM_*`` environment
< flags actually given, every source converted by ``convert`` and checked by ``check``)
and by ``ocm-loadgen`` (loadgen/options.py: flags only, converted and checked while
argparse reads them). Declare a field with ``setting(default, help, ...)``; the kind of a
value (int, float, bool or str, optionally ``| None``) comes from the annotation.

Messages name what is wrong without saying where (``must be > 0, got 0``); the caller adds
the source (a flag, a variable, a file and line), so each error reads as one line.
"""

from __future__ import annotations

import argparse
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Final

DEFAULT_SOURCE: Final = "default"


class SettingError(Exception):
    """A setting is invalid; the message says which, why and (when known) where from."""


@dataclass(frozen=True, slots=True)
class Meta:
    """What a field declares besides its default (``setting`` builds it)."""

    help: str
    group: str | None = None
    """The ``--help`` section of the flag (``None``: the parser's own)."""
    live: bool = False
    """Reloaded without a restart (control's SIGHUP)."""
    metavar: str | None = None
    shown: str | None = None
    """The default as ``--help`` says it, when it is computed or means something."""
    flag: str | None = None
    """Replaces the derived flag (``--no-rx-timestamps`` for a boolean that defaults to
    true: then the flag stores false)."""
    above: float | None = None
    """Exclusive lower bound of a number."""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    """The accepted words of a string setting (compared in lower case)."""


def setting(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field with its ``Meta`` (keywords as in ``Meta``)."""
    return field(default=default, metadata={"setting": Meta(help, **meta)})


def meta(f: Field[Any]) -> Meta:
    found: Meta = f.metadata["setting"]
    return found


def kind(f: Field[Any]) -> type:
    """int, float, bool or str, from the annotation (a string: annotations are lazy)."""
    base = str(f.type).split("|")[0].strip()
    return {"int": int, "float": float, "bool": bool}.get(base, str)


def flag_name(f: Field[Any]) -> str:
    return meta(f).flag or "--" + f.name.replace("_", "-")


def env_name(name: str, prefix: str = "OCM_") -> str:
    """The environment variable of a setting: the prefix + its name in capitals."""
    return prefix + name.upper()


def default_of(f: Field[Any]) -> Any:
    return None if f.default is MISSING else f.default


def shown_default(f: Field[Any]) -> str:
    """The default as ``--help`` says it."""
    shown = meta(f).shown
    if shown is not None:
        return shown
    default = default_of(f)
    return f"{default:g}" if isinstance(default, float) else str(default)


_KIND_WORDS: Final = {int: "an integer", float: "a finite number", bool: "true or false",
                      str: "a string"}


def convert(f: Field[Any], value: Any) -> Any:
    """A value from a flag, a variable (text) or a TOML file (typed) as the field's kind;
    ``SettingError`` (``must be an integer, got 'x'``) if it is not one."""
    want = kind(f)
    try:
        if want is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(value)
        if want is int:
            if isinstance(value, float):  # TOML 4.0 is fine, 2.5 is not silently 2
                if not value.is_integer():
                    raise ValueError(value)
                return int(value)
            return int(str(value).strip())
        if want is float:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        return str(value).strip().lower() if meta(f).choices else str(value)
    except ValueError:
        raise SettingError(f"must be {_KIND_WORDS[want]}, got {value!r}") from None


def check(f: Field[Any], value: Any) -> None:
    """``SettingError`` if ``value`` is outside the field's bounds or choices."""
    m = meta(f)
    if value is None:
        return
    shown = f"{value:g}" if isinstance(value, float) else value  # 1, not 1.0, as typed
    if m.above is not None and not value > m.above:
        raise SettingError(f"must be > {m.above:g}, got {shown}")
    if m.minimum is not None and value < m.minimum:
        raise SettingError(f"must be >= {m.minimum:g}, got {shown}")
    if m.maximum is not None and value > m.maximum:
        raise SettingError(f"must be <= {m.maximum:g}, got {shown}")
    if m.choices is not None and value not in m.choices:
        raise SettingError(f"must be one of {', '.join(m.choices)}, got {value!r}")


def check_all(obj: Any, sources: Mapping[str, str] | None = None) -> None:
    """``check`` every field of a settings dataclass; the error names the setting and,
    given ``sources``, where it was set (``--workers: workers must be ...``)."""
    for f in fields(obj):
        try:
            check(f, getattr(obj, f.name))
        except SettingError as exc:
            raise SettingError(located(f.name, str(exc), sources)) from None


def located(name: str, message: str, sources: Mapping[str, str] | None) -> str:
    """``[SOURCE: ]name message``: the source unless the value is the default."""
    where = (sources or {}).get(name, DEFAULT_SOURCE)
    text = f"{name} {message}"
    return f"{where}: {text}" if where != DEFAULT_SOURCE else text


# --- flags --------------------------------------------------------------------------------
def _typed(f: Field[Any]) -> Callable[[str], Any]:
    """argparse's ``type=``: convert and check as the flag is read (exit 2 on a bad one)."""

    def parse(text: str) -> Any:
        try:
            value = convert(f, text)
            check(f, value)
        except SettingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def add_flags(parser: argparse.ArgumentParser, classes: Iterable[type],
              help_text: Callable[[Field[Any]], str], *, typed: bool,
              groups: Sequence[str] = ()) -> None:
    """One flag per field of ``classes``, in argument groups by ``Meta.group`` (``groups``
    first, in that order; others as they come).

    ``typed``: argparse converts and checks each flag (its defaults are the fields'
    defaults, a boolean is a switch). Else every flag is kept as text and only when given
    (the parser needs ``argument_default=SUPPRESS``), a boolean is ``--x/--no-x``, and
    ``convert`` and ``check`` judge it beside the other sources (``layered``).
    """
    sections: dict[str | None, Any] = {None: parser}
    for name in groups:
        sections[name] = parser.add_argument_group(name)
    for cls in classes:
        for f in fields(cls):
            m = meta(f)
            target = sections.get(m.group)
            if target is None:
                target = sections[m.group] = parser.add_argument_group(m.group)
            text = help_text(f).replace("%", "%%")
            if not typed:
                if kind(f) is bool:
                    target.add_argument(flag_name(f), action=argparse.BooleanOptionalAction,
                                        help=text)
                else:
                    target.add_argument(flag_name(f), metavar=m.metavar or f.name.upper(),
                                        help=text)
            elif kind(f) is bool:
                target.add_argument(flag_name(f), dest=f.name,
                                    action="store_false" if default_of(f) else "store_true",
                                    help=text)
            elif m.choices:
                target.add_argument(flag_name(f), dest=f.name, default=default_of(f),
                                    choices=m.choices, metavar=m.metavar, help=text)
            else:
                target.add_argument(flag_name(f), dest=f.name, default=default_of(f),
                                    type=_typed(f), metavar=m.metavar, help=text)


def from_namespace(cls: type, args: argparse.Namespace) -> Any:
    """An instance of ``cls`` from the flags of ``add_flags(typed=True)``."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


# --- layers: defaults < TOML file < environment < flags ------------------------------------
def layered(cls: type, args: argparse.Namespace, environ: Mapping[str, str],
            path: str | None, env_prefix: str = "OCM_") -> tuple[dict[str, Any], dict[str, str]]:
    """The values that differ from the defaults, by precedence (a TOML file, then
    ``<prefix><NAME>`` variables, then the flags of ``add_flags(typed=False)`` that were
    given), and where each setting came from: ``"default"``, ``"FILE line N"``,
    ``"environment OCM_X"`` or ``"--flag"``. Converted, not yet checked."""
    by_name = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    sources = dict.fromkeys(by_name, DEFAULT_SOURCE)
    if path:
        for name, (value, where) in read_toml_located(cls, path).items():
            values[name], sources[name] = value, where
    for name, f in by_name.items():
        raw = environ.get(env_name(name, env_prefix))
        if raw is not None:
            where = f"environment {env_name(name, env_prefix)}"
            values[name], sources[name] = _converted(f, raw, where), where
    for name, f in by_name.items():
        if hasattr(args, name):
            values[name] = _converted(f, getattr(args, name), flag_name(f))
            sources[name] = flag_name(f)
    return values, sources


def _converted(f: Field[Any], value: Any, where: str) -> Any:
    try:
        return convert(f, value)
    except SettingError as exc:
        raise SettingError(f"{where}: {f.name} {exc}") from None


def read_toml_located(cls: type, path: str) -> dict[str, tuple[Any, str]]:
    """Settings of ``cls`` from a TOML file (top level or an ``[ocm]`` table), each with
    ``FILE line N``; unknown keys, bad values and syntax errors are ``SettingError``s that
    name the file and the line."""
    by_name = {f.name: f for f in fields(cls)}
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise SettingError(f"{path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                           ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "... (at line 3, column 7)"; lead with the line like a compiler.
        message = str(exc)
        found = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        if found:
            raise SettingError(f"{path} line {found[1]}: {message[:found.start()].rstrip()} "
                               f"(column {found[2]})") from None
        if message.endswith("(at end of document)"):
            last = len(text.splitlines()) or 1
            raise SettingError(f"{path} line {last}: {message[:-21].rstrip()} (at the end "
                               "of the file)") from None
        raise SettingError(f"{path}: {message}") from None
    lines = text.splitlines()
    if "ocm" in data and isinstance(data["ocm"], dict):
        extra = sorted(k for k in data if k != "ocm")
        if extra:
            raise SettingError(f"{_where(path, lines, extra[0])}: unknown setting "
                               f"{extra[0]!r} (put every setting under [ocm], or none)")
        data = data["ocm"]
    out: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        where = _where(path, lines, key)
        if name not in by_name:
            raise SettingError(f"{where}: unknown setting {key!r}")
        out[name] = (_converted(by_name[name], value, where), where)
    return out


def _where(path: str, lines: Sequence[str], key: str) -> str:
    """``FILE line N`` of the first line that assigns ``key`` (or defines [key])."""
    pattern = re.compile(r"^\s*(?:\[\s*)?[\"']?" + re.escape(key) + r"[\"']?\s*[=\]]")
    for number, line in enumerate(lines, 1):
        if pattern.match(line):
            return f"{path} line {number}"
    return path


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return repr(value)
