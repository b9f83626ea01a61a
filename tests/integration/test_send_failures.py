"""Eviction after consecutive send failures, provoked for real (docs/protocol.md §2.4).

A member joins from 127.9.X.9 (its TCP and UDP sockets bound there; X from this test
process's id, so two test runs on one machine never share it), then the test makes that
address unreachable for this host with ``ip route add unreachable 127.9.X.9/32 table
local``: every send to it fails locally with EHOSTUNREACH. The host
chats until the worker evicts the member and tells the host with a framed ``left``
notice whose reason is ``send_failures``; ``/metrics`` then counts the eviction. Every
fan-out path: the compiled hot loop (the default), the pure-Python loop with one
``sendmmsg`` per delivery format (``OCM_RELAY_HOT_PATH=python``) and the ``sendto``
fallback (``OCM_RELAY_SENDMMSG=0``). Needs root and iproute2 (``ip``); it fails, it does
not skip, where either is missing. The route is removed in a ``finally``. 127.9.0.0/16 is
used by this module only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.integration.harness import start_server
from tests.integration.peer import join
from tests.integration.test_ops_support import Samples, admin_address, scrape, value, wait_until
from wire.chat import Notice
from wire.codes import Framing, NoticeEvent, Operation, Reason

UNREACHABLE_IP = f"127.9.{os.getpid() % 250 + 1}.9"
MAX_SEND_FAILURES = 3
TIMEOUT_S = 15.0


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip")
    assert ip is not None, "iproute2's `ip` is needed to make an address unreachable"
    return subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def unreachable() -> Iterator[None]:
    """Make ``UNREACHABLE_IP`` unreachable from here until the test ends."""
    assert os.geteuid() == 0, "adding a route needs root (or CAP_NET_ADMIN)"
    route = ("route", "add", "unreachable", f"{UNREACHABLE_IP}/32", "table", "local")
    done = _ip(*route)
    assert done.returncode == 0, f"ip {' '.join(route)}: {done.stderr}"
    try:
        yield
    finally:
        _ip("route", "del", "unreachable", f"{UNREACHABLE_IP}/32", "table", "local")


@pytest.mark.parametrize(("sendmmsg", "hot_path"),
                         [("1", "compiled"), ("1", "python"), ("0", "python")],
                         ids=["compiled", "sendmmsg", "sendto"])
def test_a_member_whose_sends_fail_is_evicted(sendmmsg: str, hot_path: str,
                                              request: pytest.FixtureRequest) -> None:
    with start_server("--max-send-failures", str(MAX_SEND_FAILURES), "--admin-port", "0",
                      "--log-level", "debug", workers=1, env={"OCM_RELAY_SENDMMSG": sendmmsg,
                                      "OCM_RELAY_HOT_PATH": hot_path}) as srv:
        admin = admin_address(srv)
        wait_until(lambda: scrape(admin).get(
            ("ocm_worker_hot_path", frozenset({("worker", "0"), ("path", hot_path)}))) == 1,
            TIMEOUT_S, f"/metrics to say the worker runs the {hot_path} loop")
        said = "hot loop compiled" if hot_path == "compiled" else "hot loop pure Python"
        assert said in srv.log_text(), "the worker's log says which loop it runs"
        room = f"unreach-{sendmmsg}-{hot_path}"
        host = join(srv.host, srv.tcp_port, Operation.CREATE, room, "host",
                    framing=Framing.OCM1)
        far = join(srv.host, srv.tcp_port, Operation.JOIN, room, "far",
                   bind_ip=UNREACHABLE_IP)
        try:
            assert far.addr[0] == UNREACHABLE_IP
            joined = host.recv_framed()
            assert isinstance(joined, Notice) and joined.event is NoticeEvent.JOINED
            request.getfixturevalue("unreachable")
            notice = None
            deadline = time.monotonic() + TIMEOUT_S
            for n in range(MAX_SEND_FAILURES):
                host.send(f"chat {n}")
            while notice is None:
                left = deadline - time.monotonic()
                assert left > 0, (f"no eviction after {MAX_SEND_FAILURES} failed sends:\n"
                                  + srv.log_text())
                got = host.recv_framed(timeout=left)
                if isinstance(got, Notice):
                    notice = got
            assert notice == Notice(NoticeEvent.LEFT, "far", Reason.SEND_FAILURES)
            srv.wait_log(r"member evicted \(send_failures\)", timeout=TIMEOUT_S)

            def counted() -> Samples | None:  # the worker reports once a second
                got = scrape(admin)
                evicted = got.get(("ocm_evictions_total", frozenset(
                    {("port", "chat"), ("reason", "send_failures")})), 0)
                return got if evicted else None

            got = wait_until(counted, TIMEOUT_S, "the eviction in /metrics")
            assert value(got, "ocm_evictions_total", port="chat", reason="send_failures") == 1
            assert value(got, "ocm_send_failures_total") >= MAX_SEND_FAILURES
        finally:
            host.close()
            far.close()
