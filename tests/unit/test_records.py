"""runtime/records.py: a declaration is the whole codec; anything off it is refused."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated

import orjson
import pytest

from runtime.records import Converter, RecordCodec, RecordError, Shape


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float


class Secret:
    """Not a dataclass: written through a ``Converter``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _secret(obj: object) -> Secret:
    if not isinstance(obj, str) or not obj.startswith("s:"):
        raise ValueError("a secret starts with s:")
    return Secret(obj[2:])


@dataclass(frozen=True, slots=True)
class Everything:
    n: int
    f: float
    ok: bool
    name: str
    token: bytes
    color: Color
    at: Point
    pair: Annotated[tuple[str, int], Shape("[host, port]")]
    points: list[Point]
    tally: dict[str, int]
    maybe: Point | None = None
    secret: Secret | None = None
    tags: list[str] = field(default_factory=list)


CODEC: RecordCodec[Everything | Point] = RecordCodec(
    {"all": Everything, "point": Point},
    converters={Secret: Converter(lambda s: "s:" + s.text, _secret)})
FULL = Everything(1, 2.5, True, "ä", b"Tok", Color.BLUE, Point(1.0, 2.0), ("h", 9),
                  [Point(0.5, 0.25)], {"a": 1}, Point(3.0, 4.0), Secret("x"), ["t"])


def round_trip(value: Everything | Point) -> Everything | Point:
    return CODEC.from_body(orjson.loads(orjson.dumps(CODEC.to_body(value))))


@pytest.mark.parametrize("value", [FULL, Everything(0, 0.0, False, "", b"", Color.RED,
                                                    Point(0.0, 0.0), ("", 0), [], {}),
                                   Point(-1.0, 1e300)])
def test_round_trip(value: Everything | Point) -> None:
    assert round_trip(value) == value


def test_body_shape() -> None:
    body = orjson.loads(orjson.dumps(CODEC.to_body(FULL)))
    assert body == {"t": "all", "n": 1, "f": 2.5, "ok": True, "name": "ä", "token": "Tok",
                    "color": "blue", "at": {"x": 1.0, "y": 2.0}, "pair": ["h", 9],
                    "points": [{"x": 0.5, "y": 0.25}], "tally": {"a": 1},
                    "maybe": {"x": 3.0, "y": 4.0}, "secret": "s:x", "tags": ["t"]}


def test_an_integer_is_a_number() -> None:
    got = CODEC.from_body({"t": "point", "x": 1, "y": 2})
    assert got == Point(1.0, 2.0) and isinstance(got.x, float)


def body(**change: object) -> dict[str, object]:
    out = orjson.loads(orjson.dumps(CODEC.to_body(FULL)))
    out.update(change)
    return {k: v for k, v in out.items() if v is not ...}


@pytest.mark.parametrize(("raw", "why"), [
    (body(n=...), "all: n must be an integer, got None .the field is missing"),
    (body(maybe=...), "all: maybe must be an object or null, got None .the field is missing"),
    (body(extra=1), r"all: unexpected field\(s\) extra"),
    (body(n=True), "all: n must be an integer, got True"),
    (body(n="1"), "all: n must be an integer"),
    (body(f="1.5"), "all: f must be a number"),
    (body(ok=0), "all: ok must be true or false"),
    (body(name=None), "all: name must be a string, got None"),
    (body(token="é"), "all: token must be ASCII text"),
    (body(color="green"), "all: unknown color 'green'"),
    (body(color=["red"]), r"all: unknown color \['red'\]"),
    (body(at=[1, 2]), "all: at must be an object"),
    (body(at={"x": 1}), "all.at: y must be a number, got None .the field is missing"),
    (body(at={"x": 1, "y": 2, "z": 3}), r"all.at: unexpected field\(s\) z"),
    (body(pair=["h"]), r"all: pair must be \[host, port\]"),
    (body(pair=["h", "9"]), r"all: pair must be \[host, port\]"),
    (body(points={"x": 1}), "all: points must be a list of objects"),
    (body(points=[{"x": 1}]), "all: points must be a list"),
    (body(tally={"a": "1"}), "all: tally must map names to integers"),
    (body(tally=[]), "all: tally must be an object mapping names to integers"),
    (body(maybe=5), "all: maybe must be an object or null, got 5"),
    (body(secret="x"), "all: secret: a secret starts with s:"),
    (body(tags=[1]), "all: tags must be a list of strings"),
    ({"t": "nothing"}, "unknown message 'nothing'"),
    ({"x": 1}, "an object with a string 't'"),
    ([], "an object with a string 't'"),
])
def test_refused(raw: object, why: str) -> None:
    with pytest.raises(RecordError, match=why):
        CODEC.from_body(raw)


def test_an_unsupported_field_type_fails_at_declaration() -> None:
    @dataclass(frozen=True, slots=True)
    class Odd:
        when: set[int]

    with pytest.raises(TypeError, match="no JSON form"):
        RecordCodec({"odd": Odd})

    @dataclass(frozen=True, slots=True)
    class Either:
        value: int | str

    with pytest.raises(TypeError, match="only X | None"):
        RecordCodec({"either": Either})
