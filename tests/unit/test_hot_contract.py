"""relay/_hot.c touches only what relay/core.py declares for it: the ``Member`` and
``Room`` slots (read, and the few written), the ``RelayCore`` attributes and the adapter's
callbacks. The C source is parsed, so a new slot or call in C without its declaration (or
a declaration C no longer needs) fails here."""

from __future__ import annotations

import re
from pathlib import Path

from relay import core
from relay.core import Member, RelayCore, Room

SOURCE = (Path(__file__).resolve().parents[2] / "relay" / "_hot.c").read_text()


def _strings(array: str) -> tuple[str, ...]:
    body = re.search(rf"{array}\[\w+\] = \{{(.*?)\}};", SOURCE, re.S)
    assert body is not None, f"{array} not found in relay/_hot.c"
    return tuple(re.findall(r'"(\w+)"', body.group(1)))


def test_the_slots_it_reads_are_the_declared_ones() -> None:
    assert _strings("member_slots") == core.HOT_MEMBER_SLOTS
    assert _strings("room_slots") == core.HOT_ROOM_SLOTS
    assert set(core.HOT_MEMBER_SLOTS) <= set(Member.__slots__)
    assert set(core.HOT_ROOM_SLOTS) <= set(Room.__slots__)


def test_it_writes_only_the_declared_member_slots_and_no_room_slot() -> None:
    written = set(re.findall(r"set_slot\(\s*[\w>-]+,\s*m\[M_(\w+)\]", SOURCE))
    assert {name.lower() for name in written} == set(core.HOT_MEMBER_WRITES)
    assert set(core.HOT_MEMBER_WRITES) <= set(core.HOT_MEMBER_SLOTS)
    assert not re.search(r"set_slot\([^;]*r\[R_", SOURCE)


def test_the_core_attributes_it_uses_are_the_declared_ones() -> None:
    used = set(re.findall(r'GetAttrString\(core, "(\w+)"\)', SOURCE))
    used |= set(re.findall(r'InternFromString\("(\w+)"\)', SOURCE))
    assert used == set(core.HOT_CORE_ATTRIBUTES)
    relay = RelayCore()
    for name in core.HOT_CORE_ATTRIBUTES:
        assert hasattr(relay, name), name


def test_the_callbacks_it_takes_are_the_declared_ones() -> None:
    kwlist = re.search(r"Hot_init\(.*?kwlist\[\] = \{(.*?)\};", SOURCE, re.S)
    assert kwlist is not None
    params = set(re.findall(r'"(\w+)"', kwlist.group(1)))
    callables = {p for p in params if re.search(
        rf"(PyObject_Call\w*\(self->{p}\b|self->{p}\s*==\s*Py_None)", SOURCE)}
    assert callables == set(core.HOT_CALLBACKS)
