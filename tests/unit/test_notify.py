"""control/notify.py without sockets: reading NOTIFY_SOCKET and the watchdog settings.
(Sending to a real Unix datagram socket: tests/integration/test_ops_notify.py.)"""

from __future__ import annotations

import os

from control.notify import notify, notify_address, watchdog_interval


def test_no_socket_means_no_op() -> None:
    assert notify_address({}) is None
    assert notify("READY=1", {}) is False


def test_path_and_abstract_addresses() -> None:
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@ocm/notify"}) == b"\0ocm/notify"


def test_unsupported_addresses_are_ignored() -> None:
    for value in ("", "@", "relative/path", "vsock:2:1234"):
        assert notify_address({"NOTIFY_SOCKET": value}) is None, value
        assert notify("READY=1", {"NOTIFY_SOCKET": value}) is False


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=43) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000",
                              "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
