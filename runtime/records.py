"""Frozen dataclasses as JSON objects and back, checked field by field (pure: no I/O).

A message crossing a pipe is declared once, as a frozen slotted dataclass. ``RecordCodec``
derives from the declaration how to write it as a JSON-ready dict (for orjson) and how to
read such a dict back, checking every value against its field's type. Nothing else is
written per message: a field added to the class is sent, read and checked.

A body is ``{tag: kind, field: value, ...}``, every field present, no other key. Types and
their JSON form:

* ``int`` (not ``bool``), ``float`` (an integer is accepted), ``bool``, ``str``;
* ``bytes``: ASCII text (tokens);
* an ``enum.Enum``: its value;
* ``X | None``: ``null`` or X;
* a dataclass: a nested object of its fields;
* ``tuple[A, B]``: a list of exactly those; ``list[X]``: a list;
* ``dict[str, X]`` / ``Mapping[str, X]``: an object;
* a class given in ``converters``: its own JSON form, both ways (``Converter``).

``Annotated[T, Shape("[ip, port]")]`` names the form of T in error messages. Anything else
raises ``RecordError``, whose message names the record, the field and what was expected.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")

Encode = Callable[[Any], Any] | None
"""``None``: the value is written as it is."""


class RecordError(ValueError):
    """A body does not match its declaration."""


@dataclass(frozen=True, slots=True)
class Shape:
    """How an error message names the expected form of a field (``"[ip, port]"``)."""

    words: str


@dataclass(frozen=True, slots=True)
class Converter:
    """The JSON form of a class the codec does not know: ``decode`` raises one of
    ``errors`` (its text is the reason) on a bad value."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]
    errors: tuple[type[Exception], ...] = (ValueError,)


def _fail(where: str, key: str, words: str, value: Any) -> RecordError:
    return RecordError(f"{where}: {key} must be {words}, got {value!r}")


class _Bad(Exception):
    """A value is not of its field's form: the field's decoder words the ``RecordError``."""


Check = Callable[[Any, str, str], Any]
"""``(value, where, key) -> value``: raises ``_Bad``, or a ``RecordError`` of its own."""

_PLURAL: Final = {"an integer": "integers", "a number": "numbers", "a string": "strings",
                  "an object": "objects", "true or false": "true or false"}
_SCALAR_WORDS: Final[dict[type, str]] = {int: "an integer", float: "a number",
                                         bool: "true or false", str: "a string"}


def _check_bool(value: Any, where: str, key: str) -> Any:
    if value is True or value is False:
        return value
    raise _Bad


def _check_int(value: Any, where: str, key: str) -> Any:
    if type(value) is int:  # orjson makes exact ints; True is not one
        return value
    raise _Bad


def _check_float(value: Any, where: str, key: str) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    raise _Bad


def _check_str(value: Any, where: str, key: str) -> Any:
    if type(value) is str:
        return value
    raise _Bad


def _check_ascii(value: Any, where: str, key: str) -> Any:
    if type(value) is str and value.isascii():
        return value.encode("ascii")
    raise _Bad


_SCALAR_CHECKS: Final[dict[type, Check]] = {int: _check_int, float: _check_float,
                                            bool: _check_bool, str: _check_str}


@dataclass(frozen=True, slots=True)
class _Kind:
    check: Check
    encode: Encode
    words: str


class _Compiler:
    __slots__ = ("converters", "records")

    def __init__(self, converters: Mapping[type, Converter]) -> None:
        self.converters = converters
        self.records: dict[type, _Record] = {}

    def record(self, cls: type) -> _Record:
        found = self.records.get(cls)
        if found is None:
            found = self.records[cls] = _Record(cls, self)
        return found

    def field(self, hint: Any) -> tuple[Check, bool, Encode, str]:
        """A field's check, whether it may be null, its encoder and the words of its form."""
        nullable = False
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (types.UnionType, typing.Union):
            others = [a for a in args if a is not type(None)]
            if len(others) != 1 or len(args) != 2:
                raise TypeError(f"only X | None is supported, not {hint!r}")
            nullable, hint = True, others[0]
        kind = self.kind(hint)
        encode = kind.encode
        if nullable and encode is not None:
            inner = encode
            encode = lambda value: None if value is None else inner(value)  # noqa: E731
        return kind.check, nullable, encode, f"{kind.words} or null" if nullable else kind.words

    def kind(self, hint: Any) -> _Kind:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Annotated:
            inner = self.kind(args[0])
            shapes = [a for a in args[1:] if isinstance(a, Shape)]
            return _Kind(inner.check, inner.encode, shapes[0].words) if shapes else inner
        if hint in _SCALAR_CHECKS:
            return _Kind(_SCALAR_CHECKS[hint], None, _SCALAR_WORDS[hint])
        if hint is bytes:
            return _Kind(_check_ascii, lambda value: value.decode("ascii"), "ASCII text")
        if isinstance(hint, type) and hint in self.converters:
            return self._converted(self.converters[hint])
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self._enum(hint)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self._nested(self.record(hint))
        if origin is tuple and args and args[-1] is not Ellipsis:
            return self._tuple([self.kind(a) for a in args])
        if origin is list:
            return self._list(self.kind(args[0]))
        if origin in (dict, Mapping) and args[0] is str:
            return self._table(self.kind(args[1]))
        raise TypeError(f"no JSON form for {hint!r}")

    @staticmethod
    def _converted(converter: Converter) -> _Kind:
        def check(value: Any, where: str, key: str) -> Any:
            try:
                return converter.decode(value)
            except converter.errors as exc:
                raise RecordError(f"{where}: {key}: {exc}") from None

        return _Kind(check, converter.encode, "its JSON form")

    @staticmethod
    def _enum(cls: type[enum.Enum]) -> _Kind:
        def check(value: Any, where: str, key: str) -> Any:
            try:
                return cls(value)
            except (ValueError, TypeError):
                raise RecordError(f"{where}: unknown {key} {value!r}") from None

        return _Kind(check, None, f"a {cls.__name__} value")  # orjson writes the value

    @staticmethod
    def _nested(record: _Record) -> _Kind:
        def check(value: Any, where: str, key: str) -> Any:
            if type(value) is not dict:
                raise _Bad
            return record.decode(value, f"{where}.{key}", None)

        # A record of plain fields only: orjson writes the dataclass itself.
        return _Kind(check, record.encode if record.encoders else None, "an object")

    @staticmethod
    def _tuple(items: list[_Kind]) -> _Kind:
        checks = [item.check for item in items]
        encoders = [item.encode for item in items]

        def check(value: Any, where: str, key: str) -> Any:
            if type(value) is not list or len(value) != len(checks):
                raise _Bad
            try:
                return tuple(c(v, where, key) for c, v in zip(checks, value, strict=True))
            except RecordError:
                raise _Bad from None

        def encode(value: Any) -> Any:
            return [v if e is None else e(v) for e, v in zip(encoders, value, strict=True)]

        plain = all(e is None for e in encoders)  # orjson writes a tuple as a list
        return _Kind(check, None if plain else encode,
                     "[" + ", ".join(item.words for item in items) + "]")

    @staticmethod
    def _list(item: _Kind) -> _Kind:
        item_check, item_encode = item.check, item.encode

        def check(value: Any, where: str, key: str) -> Any:
            if type(value) is not list:
                raise _Bad
            try:
                return [item_check(v, where, key) for v in value]
            except RecordError:
                raise _Bad from None

        def encode(value: Any) -> Any:
            return list(value) if item_encode is None else [item_encode(v) for v in value]

        return _Kind(check, encode, f"a list of {_PLURAL.get(item.words, item.words)}")

    @staticmethod
    def _table(item: _Kind) -> _Kind:
        item_check, item_encode = item.check, item.encode
        plural = _PLURAL.get(item.words, item.words)
        words = f"an object mapping names to {plural}"

        def check(value: Any, where: str, key: str) -> Any:
            if type(value) is not dict:
                raise _Bad
            try:
                return {name: item_check(v, where, key) for name, v in value.items()}
            except (RecordError, _Bad):
                raise RecordError(f"{where}: {key} must map names to {plural}") from None

        def encode(value: Any) -> Any:
            if item_encode is None:  # orjson writes a dict, not any Mapping
                return value if type(value) is dict else dict(value)
            return {name: item_encode(v) for name, v in value.items()}

        return _Kind(check, encode, words)


_MISSING: Final = object()


class _Record:
    """One dataclass: its fields in ``__init__`` order, each with its decoder and encoder."""

    __slots__ = ("cls", "decoders", "encoders", "get_plain", "names", "plain", "size")

    def __init__(self, cls: type, compiler: _Compiler) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls, include_extras=True)
        compiled = [(f.name, compiler.field(hints[f.name]))
                    for f in dataclasses.fields(cls) if f.init]
        self.decoders = [(name, check, nullable, words)
                         for name, (check, nullable, _, words) in compiled]
        self.plain = tuple(name for name, (_, _, encode, _) in compiled if encode is None)
        self.get_plain = operator.attrgetter(*self.plain) if len(self.plain) > 1 else None
        self.encoders = [(name, encode) for name, (_, _, encode, _) in compiled
                         if encode is not None]
        self.names = frozenset(name for name, _ in compiled)
        self.size = len(compiled)

    def encode(self, value: Any, body: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {} if body is None else body
        if self.get_plain is not None:
            out.update(zip(self.plain, self.get_plain(value), strict=True))
        elif self.plain:
            out[self.plain[0]] = getattr(value, self.plain[0])
        for name, encode in self.encoders:
            out[name] = encode(getattr(value, name))
        return out

    def decode(self, body: dict[str, Any], where: str, tag: str | None) -> Any:
        """``tag``: the one key of ``body`` that is not a field (a nested record has none)."""
        values: list[Any] = []
        for name, check, nullable, words in self.decoders:
            value = body.get(name, _MISSING)
            if value is None and nullable:
                values.append(None)
                continue
            try:
                values.append(check(value, where, name))
            except _Bad:
                if value is _MISSING:
                    raise RecordError(f"{where}: {name} must be {words}, got None (the "
                                      f"field is missing)") from None
                raise _fail(where, name, words, value) from None
        if len(body) != self.size + (tag is not None):
            extra = sorted(str(k) for k in body if k not in self.names and k != tag)
            raise RecordError(f"{where}: unexpected field(s) {', '.join(extra)}")
        return self.cls(*values)


class RecordCodec(Generic[T]):
    """Bodies of the records named in ``kinds`` (``{tag value: class}``)."""

    __slots__ = ("_by_class", "_by_kind", "tag")

    def __init__(self, kinds: Mapping[str, type[T]], *, tag: str = "t",
                 converters: Mapping[type, Converter] | None = None) -> None:
        compiler = _Compiler(converters or {})
        self.tag = tag
        self._by_kind = {kind: compiler.record(cls) for kind, cls in kinds.items()}
        self._by_class = {cls: (kind, compiler.record(cls)) for kind, cls in kinds.items()}

    def to_body(self, record: T) -> dict[str, Any]:
        """``{tag: kind, field: value, ...}``, ready for ``orjson.dumps``."""
        kind, spec = self._by_class[type(record)]
        return spec.encode(record, {self.tag: kind})

    def from_body(self, body: object) -> T:
        """The record a decoded JSON value declares, or ``RecordError``."""
        if not isinstance(body, dict) or not isinstance(kind := body.get(self.tag), str):
            raise RecordError(f"a message must be an object with a string {self.tag!r}")
        spec = self._by_kind.get(kind)
        if spec is None:
            raise RecordError(f"unknown message {kind!r}")
        record: T = spec.decode(body, kind, self.tag)
        return record
