"""loadgen/transport.py: member addresses and the choice of socket mode."""
from __future__ import annotations

import ipaddress

import pytest

from loadgen import cli, transport
from runtime import mmsg


def test_member_ips_are_distinct_loopback_unicast_per_process() -> None:
    seen = set()
    for proc in (0, 1, transport.MAX_SHARED_PROCS - 1):
        for lm in (0, 1, 249, 250, 2499, transport.MAX_SHARED_MEMBERS - 1):
            ip = transport.member_ip(proc, lm)
            addr = ipaddress.ip_address(ip)
            assert addr.is_loopback and ip not in seen
            assert ip.split(".")[3] not in ("0", "255")
            seen.add(ip)
    assert transport.member_ip(0, 0) == "127.100.0.1"
    assert transport.member_ip(1, 250) == "127.101.1.1"
    for proc, lm in ((-1, 0), (transport.MAX_SHARED_PROCS, 0),
                     (0, transport.MAX_SHARED_MEMBERS), (0, -1)):
        with pytest.raises(ValueError):
            transport.member_ip(proc, lm)


def test_member_ips_stay_clear_of_the_common_loopback_address() -> None:
    ips = {transport.member_ip(p, lm) for p in range(4) for lm in range(3000)}
    assert "127.0.0.1" not in ips and len(ips) == 12000


@pytest.mark.skipif(not mmsg.available(), reason="recvmmsg unavailable")
def test_auto_is_shared_on_loopback_only() -> None:
    assert transport.resolve_mode("auto", "127.0.0.1") == "shared"
    assert transport.resolve_mode("auto", "localhost") == "shared"
    assert transport.resolve_mode("shared", "127.0.0.1") == "shared"
    # a documentation address (RFC 5737): resolved, never contacted
    assert transport.resolve_mode("auto", "192.0.2.7") == "member"
    assert transport.resolve_mode("member", "127.0.0.1") == "member"


def test_shared_against_a_remote_server_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="loopback"):
        transport.resolve_mode("shared", "192.0.2.7")
    with pytest.raises(ValueError, match="--sockets must be"):
        transport.resolve_mode("both", "127.0.0.1")


def test_cli_refuses_shared_sockets_for_a_remote_server(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--server", "192.0.2.7", "--sockets", "shared"])
    assert exit_.value.code == 2
    assert "--sockets shared: the server is not on a loopback address" in capsys.readouterr().err


def test_too_many_members_for_one_process_is_refused() -> None:
    with pytest.raises(ValueError, match="--procs"):
        transport.SharedSocket(transport.MAX_SHARED_MEMBERS + 1, 0)
