"""Which hot loop a relay worker runs: the compiled one (``relay/_hot.c``) or pure Python.

The compiled loop reads the UDP socket with ``recvmmsg`` and relays the ordinary chat
datagrams of settled members in C: parse, authenticate (the MAC trailer too, for members
that joined over TLS: wire/dgmac.py, linked against OpenSSL 3's libcrypto), UTF-8 and
``/exit`` checks, the token bucket, and one ``sendmmsg`` per room and delivery format
with the member's prefix and the message as two iovecs (no copy); in a room with
``ocm1r`` members it numbers the chat (relay/history.py) and acknowledges an in-order
SEND too. Every other datagram goes, in order, to the pure-Python path
(``Worker._handle_one`` → ``RelayCore.handle_datagram``), which stays the one definition
of the protocol; tests/unit/test_relay_hot.py feeds both the same traffic and compares
every delivery, counter and member's state.

The extension is optional, as the loadgen's (setup.py): built at install time where a C
compiler, the Python headers and OpenSSL 3's headers exist, else the worker runs the
pure-Python loop. The setting ``relay_hot_path`` (``--relay-hot-path``,
``OCM_RELAY_HOT_PATH``) chooses:

* ``auto`` (default): compiled if it is built and batched I/O works here, else Python.
  ``OCM_PURE_PYTHON=1`` in the environment makes ``auto`` choose Python (for A/B runs).
* ``compiled``: the compiled loop or a worker that refuses to start, saying why.
* ``python``: always the pure-Python loop.

Each worker logs the path it runs at start, and reports it in its ``Stats``
(``hot_path``), exposed as ``ocm_worker_hot_path`` in ``/metrics``.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Final

from runtime import mmsg
from wire.limits import HOT_PATH_MODES

if TYPE_CHECKING:
    from relay._hot import Hot as Hot
    from relay._hot import Route as Route

MODES: Final = HOT_PATH_MODES
COMPILED: Final = "compiled"
PYTHON: Final = "python"
NOT_BUILT: Final = ("the C extension relay._hot was not built when ocm was installed (no C "
                    "compiler, Python headers or OpenSSL 3 headers (libssl-dev) then, or "
                    "OCM_PURE_PYTHON=1); reinstall with them to use it")


class Unavailable(Exception):
    """The compiled hot loop cannot run here; the message says why."""


def extension() -> ModuleType:
    """The compiled module; raises ``Unavailable`` (with the reason) if it cannot run here."""
    if not mmsg.available():
        raise Unavailable("recvmmsg/sendmmsg are unavailable here")
    try:
        from relay import _hot
    except ImportError as exc:
        raise Unavailable(NOT_BUILT) from exc
    return _hot


def choose(mode: str) -> tuple[ModuleType | None, str]:
    """The module to run (None: pure Python) and a sentence that says which and why.
    Raises ``Unavailable`` when ``mode`` is ``compiled`` and it cannot be had."""
    if mode not in MODES:
        raise ValueError(f"relay_hot_path must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == PYTHON:
        return None, "pure Python (relay_hot_path = python)"
    if mode == "auto" and os.environ.get("OCM_PURE_PYTHON") == "1":
        return None, "pure Python (OCM_PURE_PYTHON=1)"
    try:
        module = extension()
    except Unavailable as exc:
        if mode == COMPILED:
            raise
        return None, f"pure Python ({exc})"
    return module, "compiled (relay._hot: recvmmsg batches, chat relayed in C)"
