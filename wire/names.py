"""The username policy (docs/protocol.md §1.2): what a username may contain, and when
two usernames are the same member name.

A username is refused (status 4) if it contains a control character (Unicode category
``Cc``: U+0000-U+001F, U+007F-U+009F), a format character (``Cf``: bidirectional
embeddings, overrides and isolates, zero-width space/joiner/non-joiner, the byte-order
mark, soft hyphen...), a line or paragraph separator (``Zl``/``Zp``: U+2028, U+2029),
or the plain-delivery separator ``": "``; or if it starts or ends with whitespace
(``str.strip()``). Each of these lets a name look like another one, or lets a plain
delivery ``name: message`` look like a message of somebody else.

Uniqueness in a room compares the NFC normalisation of the names (``username_key``), so
``"e\\u0301"`` and ``"\\u00e9"`` cannot both be present; the name shown to others is the
one the member sent.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from wire import errors
from wire.limits import PLAIN_SEPARATOR

REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp"})
"""Unicode general categories a username may not contain."""

_SEPARATOR: Final = PLAIN_SEPARATOR.decode()


def username_problem(name: str) -> str | None:
    """Why ``name`` breaks the character rules above, or ``None`` if it keeps them.

    Length and emptiness are the caller's (they map to other status codes).
    """
    if name != name.strip():
        return "starts or ends with whitespace"
    for ch in name:
        category = unicodedata.category(ch)
        if category in REFUSED_CATEGORIES:
            kind = "a control" if category == "Cc" else "an invisible or line-breaking"
            return f"contains {kind} character U+{ord(ch):04X}"
    if _SEPARATOR in name:
        return f"contains {_SEPARATOR!r}"
    return None


def check_username(name: str) -> None:
    """Raise ``BadUsername`` (status 4) if ``name`` breaks the character rules."""
    problem = username_problem(name)
    if problem is not None:
        raise errors.BadUsername(problem)


def username_key(name: str) -> str:
    """The form under which ``name`` is unique in a room (NFC)."""
    return unicodedata.normalize("NFC", name)
