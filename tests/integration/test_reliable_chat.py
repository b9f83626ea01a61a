"""Reliable delivery (ocm1r) end to end: ocm-chat against ocm-control through real loss.

Loss is made with nftables on loopback, on the test server's UDP port only (root; the
test is skipped otherwise), and removed afterwards (tests/integration/lossy.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.harness import Server, start_server
from tests.integration.lossy import Loss, require_nft
from tests.integration.test_client_script import Client, clients, room_of

__all__ = ["clients"]

LINES = 100


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One worker (one UDP port to make lossy); chat rate high enough for a fast script."""
    with start_server("--chat-rate", "200", "--chat-burst", "400", workers=1) as srv:
        yield srv
        srv.stop()


def feed(client: Client, name: str, pause: float) -> threading.Thread:
    def run() -> None:
        for i in range(LINES):
            client.send(f"{name} line {i}")
            time.sleep(pause)  # typing speed, not a wait for an event

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_two_clients_through_5_percent_loss_and_a_3_s_outage_see_every_line_in_order(
        server: Server, room_name: str, clients: list[Client]) -> None:
    require_nft()
    alice, bob = room_of(clients, server, room_name, "alice", "bob")
    with Loss(server.udp_port, 5) as loss:
        feeders = [feed(alice, "alice", 0.03), feed(bob, "bob", 0.03)]
        time.sleep(1.0)  # mid-chat
        with loss.outage():
            time.sleep(3.0)
        for feeder in feeders:
            feeder.join(30)
        bob.expect(rf"^alice: alice line {LINES - 1}$", timeout=60)
        alice.expect(rf"^bob: bob line {LINES - 1}$", timeout=60)
        dropped = loss.dropped()
        bob.close_stdin()
        assert bob.wait(60) == 0
        alice.close_stdin()
        assert alice.wait(60) == 0
    assert dropped > 0
    for reader, other in ((alice, "bob"), (bob, "alice")):
        got = [line for line in reader.out_seen if line.startswith(f"{other}: ")]
        assert got == [f"{other}: {other} line {i}" for i in range(LINES)], reader.out_seen
        assert not any("could not be recovered" in line for line in reader.out_seen)
        assert not any("not delivered" in line for line in reader.out_seen)
