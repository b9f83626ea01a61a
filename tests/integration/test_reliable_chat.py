"""Reliable delivery (ocm1r) end to end: ocm-chat against ocm-control through real loss.

Loss is made with nftables on loopback, on the test server's UDP port only (root; the
test is skipped otherwise), and removed afterwards (tests/integration/lossy.py).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from client import link as link_module
from client.link import Resumed, RoomLink
from client.session import Joined, TcrpTarget, join_room
from tests.integration.harness import Server, start_server
from tests.integration.lossy import Loss, require_nft
from tests.integration.test_client_script import Client, clients, room_of
from wire.chat import encode_chat
from wire.codes import Framing, Operation
from wire.tcrp import Request, RequestBody

__all__ = ["clients"]
H = "127.0.0.1"


def join(server: Server, operation: Operation, room: str, user: str) -> Joined:
    """Join as ocm-chat does: asking for ocm1r."""
    return join_room(TcrpTarget(H, server.tcp_port), Request.of(
        operation, room, RequestBody(user, framing=Framing.OCM1R)))

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


def chat_through_loss(server: Server, alice: Client, bob: Client,
                      forbidden: tuple[str, ...] = ()) -> None:
    """alice and bob type ``LINES`` lines each through 5 % loss each way with a 3-second
    outage; each sees every line of the other once, in order, and no marker of a loss."""
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
        got = [line for line in reader.out_seen if line.startswith(f"{other}: {other} line")]
        assert got == [f"{other}: {other} line {i}" for i in range(LINES)], reader.out_seen
        for bad in ("could not be recovered", "not delivered", *forbidden):
            assert not any(bad in line for line in reader.out_seen), reader.out_seen


def test_two_clients_through_5_percent_loss_and_a_3_s_outage_see_every_line_in_order(
        server: Server, room_name: str, clients: list[Client]) -> None:
    require_nft()
    alice, bob = room_of(clients, server, room_name, "alice", "bob")
    chat_through_loss(server, alice, bob)


# --- resume after a move to a new address ------------------------------------------------------
async def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll the event loop's own state (lines the links have received) until true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def test_a_client_moved_to_a_new_address_resumes_with_nothing_lost(server: Server,
                                                                   room_name: str) -> None:
    async def scenario() -> None:
        seen: dict[str, list[str]] = {"alice": [], "bob": []}
        alice_joined = await asyncio.to_thread(join, server, Operation.CREATE, room_name, "alice")
        alice = RoomLink(alice_joined, lambda line: seen["alice"].append(line.plain()))
        await alice.open()
        bob_joined = await asyncio.to_thread(join, server, Operation.JOIN, room_name, "bob")
        assert bob_joined.details.framing is Framing.OCM1R and bob_joined.details.resume
        bob = RoomLink(bob_joined, lambda line: seen["bob"].append(line.plain()))
        outcomes: list[Resumed] = []
        bob.on_resumed = outcomes.append
        await bob.open()
        await _wait_for(lambda: "* bob joined the room" in seen["alice"])
        for i in range(5):
            alice.send(f"before {i}")
        await _wait_for(lambda: "alice: before 4" in seen["bob"])
        # bob's network goes: its socket is gone, and what it sends goes nowhere
        assert bob._transport is not None
        bob._transport.close()
        old_token = bob.joined.token
        for i in range(10):
            alice.send(f"while away {i}")
        for i in range(3):
            bob.send(f"typed offline {i}")
        assert bob.pending == 3
        await _wait_for(lambda: alice.pending == 0)
        await bob.resume(source="127.0.0.2")  # the new address
        assert bob.joined.token != old_token
        assert bob.joined.udp_sock.getsockname()[0] == "127.0.0.2"
        assert bob.joined.details.resumed and bob.joined.details.resume != \
            bob_joined.details.resume
        await _wait_for(lambda: "alice: while away 9" in seen["bob"]
                        and "bob: typed offline 2" in seen["alice"] and outcomes != [])
        alice.send("after")
        await _wait_for(lambda: "alice: after" in seen["bob"])
        assert outcomes == [Resumed.YES]
        assert seen["bob"].count("* reconnected: nothing was lost") == 1  # ocm-chat's line
        got = [line for line in seen["bob"] if line.startswith("alice: ")]
        assert got == ([f"alice: before {i}" for i in range(5)]
                       + [f"alice: while away {i}" for i in range(10)] + ["alice: after"])
        assert [line for line in seen["alice"] if line.startswith("bob: ")] == [
            f"bob: typed offline {i}" for i in range(3)]
        assert seen["alice"].count("* bob joined the room") == 1  # no left/joined noise
        assert not any("left" in line for line in seen["alice"])
        # the old token is dead: a datagram with it (from the old IP) reaches nobody
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as old:
            old.bind((H, 0))
            old.sendto(encode_chat(bob_joined.room_raw, old_token, b"ghost"), bob.joined.server)
        alice.send("last")
        await _wait_for(lambda: "alice: last" in seen["bob"])
        bob.leave()
        await _wait_for(lambda: "* bob left the room" in seen["alice"])
        assert not any("ghost" in line for line in seen["alice"])
        alice.leave()
        alice.close()
        bob.close()

    asyncio.run(scenario())


def test_a_client_whose_path_went_silent_resumes_by_itself(server: Server, room_name: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(link_module, "RESUME_AFTER_S", 0.8)
    monkeypatch.setattr(link_module, "SYNC_S", 0.2)

    async def scenario() -> None:
        seen: list[str] = []
        host_joined = await asyncio.to_thread(join, server, Operation.CREATE, room_name, "alice")
        alice = RoomLink(host_joined, lambda line: None)
        await alice.open()
        joined = await asyncio.to_thread(join, server, Operation.JOIN, room_name, "bob")
        bob = RoomLink(joined, lambda line: seen.append(line.plain()))
        bob.resume_source = "127.0.0.3"
        states: list[bool] = []
        bob.on_status = lambda: states.append(bob.reconnecting)
        outcomes: list[Resumed] = []
        bob.on_resumed = outcomes.append
        await bob.open()
        assert bob._transport is not None
        bob._transport.close()  # the path is gone; keepalives go nowhere
        alice.send("said while bob was away")
        await _wait_for(lambda: outcomes != [] and "alice: said while bob was away" in seen)
        assert outcomes == [Resumed.YES] and True in states and not bob.reconnecting
        assert bob.joined.udp_sock.getsockname()[0] == "127.0.0.3"
        alice.leave()
        alice.close()
        bob.close()

    asyncio.run(scenario())


def test_a_member_that_hears_the_room_sends_no_keepalives_until_it_goes_quiet(
        server: Server, room_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """While deliveries keep coming, a lost one shows as a hole: no keepalive (and no SYNC
    from the relay) is needed for it. Once the room goes quiet, one goes ``SYNC_S`` later
    (a lost last message is noticed). Before, one went every ``SYNC_S`` regardless."""
    monkeypatch.setattr(link_module, "SYNC_S", 1.0)

    async def scenario() -> None:
        seen: list[str] = []
        alice = RoomLink(await asyncio.to_thread(join, server, Operation.CREATE, room_name,
                                                 "alice"), lambda line: None)
        await alice.open()
        bob = RoomLink(await asyncio.to_thread(join, server, Operation.JOIN, room_name, "bob"),
                       lambda line: seen.append(line.plain()))
        keepalive = bob._encode("")
        sent: list[tuple[float, bytes]] = []
        plain_send = bob._send

        def recording_send(data: bytes) -> None:
            sent.append((time.monotonic(), data))
            plain_send(data)

        bob._send = recording_send  # type: ignore[method-assign]
        await bob.open()
        await _wait_for(lambda: bob.reliable is not None and bob.reliable.receiver.next
                        is not None)
        chatting_from = time.monotonic()
        for i in range(80):  # 4 s at 20 lines a second: four SYNC_S
            alice.send(f"line {i}")
            await asyncio.sleep(0.05)  # typing speed, not a wait for an event
        await _wait_for(lambda: "alice: line 79" in seen)
        quiet_from = time.monotonic()
        during = [t for t, data in sent if data == keepalive and chatting_from < t < quiet_from]
        assert len(during) <= 1, during  # (one if the machine stalled deliveries 1 s)
        await _wait_for(lambda: any(data == keepalive and t > quiet_from for t, data in sent),
                        timeout=10.0)
        alice.leave()
        alice.close()
        bob.close()

    asyncio.run(scenario())
