"""wire/names.py: the username policy (docs/protocol.md §1.2)."""

from __future__ import annotations

import re

import pytest

from wire import errors
from wire.names import check_username, username_key, username_problem

ACCEPTED = ["alice", "アリス", "a b", "a\u00a0b", "a:b", "a :b", "e\u0301", "🙂", "a\ue000b",
            "x" * 300]


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted(name: str) -> None:
    assert username_problem(name) is None
    check_username(name)


REFUSED = [
    (" alice", "starts or ends with whitespace"),
    ("alice\u3000", "starts or ends with whitespace"),
    ("a\x1bb", "contains a control character U+001B"),
    ("a\x85b", "contains a control character U+0085"),
    ("\u202eecila", "contains an invisible or line-breaking character U+202E"),
    ("al\u200bice", "contains an invisible or line-breaking character U+200B"),
    ("a\u2028b", "contains an invisible or line-breaking character U+2028"),
    ("a\u2029b", "contains an invisible or line-breaking character U+2029"),
    ("\ufeffa", "contains an invisible or line-breaking character U+FEFF"),
    ("bob: hi", "contains ': '"),
]


@pytest.mark.parametrize(("name", "problem"), REFUSED)
def test_refused(name: str, problem: str) -> None:
    assert username_problem(name) == problem
    with pytest.raises(errors.BadUsername, match=re.escape(problem)) as info:
        check_username(name)
    assert info.value.status == 4


def test_username_key_is_nfc() -> None:
    assert username_key("e\u0301") == username_key("\u00e9") == "\u00e9"
    assert username_key("alice") == "alice"
    assert username_key("Alice") != username_key("alice")  # no case folding
    assert username_key("\uff41") != username_key("a")  # NFC, not NFKC
