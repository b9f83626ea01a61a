"""relay/_hot.c touches only what relay/core.py declares for it: the ``Member``, ``Room``,
``History`` and ``Reliable`` slots (read, and the few written), the ``RelayCore`` attributes,
the ``History`` method and the adapter's callbacks. The C source is parsed, so a new slot
or call in C without its declaration (or a declaration C no longer needs) fails here."""

from __future__ import annotations

import re
from pathlib import Path

from relay import core
from relay.core import Member, RelayCore, Reliable, Room
from relay.history import History, HistoryBudget

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
    assert _strings("history_slots") == core.HOT_HISTORY_SLOTS
    assert _strings("reliable_slots") == core.HOT_RELIABLE_SLOTS
    assert set(core.HOT_HISTORY_SLOTS) <= set(History.__slots__)
    assert set(core.HOT_RELIABLE_SLOTS) <= set(Reliable.__slots__)
    assert _strings("budget_slots") == core.HOT_BUDGET_SLOTS
    assert set(core.HOT_BUDGET_SLOTS) <= set(HistoryBudget.__slots__)


def test_it_writes_only_the_declared_member_slots_and_no_room_slot() -> None:
    written = set(re.findall(r"set_slot\(\s*[\w>-]+,\s*m\[M_(\w+)\]", SOURCE))
    assert {name.lower() for name in written} == set(core.HOT_MEMBER_WRITES)
    assert set(core.HOT_MEMBER_WRITES) <= set(core.HOT_MEMBER_SLOTS)
    assert not re.search(r"set_slot\([^;]*r\[R_", SOURCE)
    written = set(re.findall(r"set_slot\(\s*[\w>-]+,\s*self->h\[H_(\w+)\]", SOURCE))
    assert {name.lower() for name in written} == set(core.HOT_HISTORY_WRITES)
    assert set(core.HOT_HISTORY_WRITES) <= set(core.HOT_HISTORY_SLOTS)
    written = set(re.findall(r"set_slot\(\s*[\w>-]+,\s*self->l\[L_(\w+)\]", SOURCE))
    assert {name.lower() for name in written} == set(core.HOT_RELIABLE_SLOTS)
    written = set(re.findall(r"set_slot\(\s*[\w>-]+,\s*self->b\[B_(\w+)\]", SOURCE))
    assert {name.lower() for name in written} == set(core.HOT_BUDGET_WRITES)
    assert set(core.HOT_BUDGET_WRITES) <= set(core.HOT_BUDGET_SLOTS)


def test_the_core_attributes_it_uses_are_the_declared_ones() -> None:
    used = set(re.findall(r'GetAttrString\(core, "(\w+)"\)', SOURCE))
    used |= set(re.findall(r'InternFromString\("(\w+)"\)', SOURCE))
    assert used == set(core.HOT_CORE_ATTRIBUTES) | set(core.HOT_HISTORY_METHODS) | set(
        core.HOT_DEQUE_METHODS)
    assert not set(core.HOT_CORE_ATTRIBUTES) & set(core.HOT_HISTORY_METHODS)
    relay = RelayCore()
    for name in core.HOT_CORE_ATTRIBUTES:
        assert hasattr(relay, name), name
    for name in core.HOT_HISTORY_METHODS:
        assert callable(getattr(History, name, None)), name


def test_the_callbacks_it_takes_are_the_declared_ones() -> None:
    kwlist = re.search(r"Hot_init\(.*?kwlist\[\] = \{(.*?)\};", SOURCE, re.S)
    assert kwlist is not None
    params = set(re.findall(r'"(\w+)"', kwlist.group(1)))
    callables = {p for p in params if re.search(
        rf"(PyObject_Call\w*\(self->{p}\b|self->{p}\s*==\s*Py_None)", SOURCE)}
    assert callables == set(core.HOT_CALLBACKS)
