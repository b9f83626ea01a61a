"""Reliable delivery (ocm1r) in encrypted rooms, end to end against ocm-control: real
``ocm-chat`` processes through 5 % loss each way and a 3-second outage (nftables on
loopback, root only: tests/integration/lossy.py), and ``E2ERoomLink``s in this process for
what a test must reach inside: a resent copy is dropped by its number before decryption
(no replay warning, shown once), and a member that moved to a new address decrypts, in
order, everything said while it was away.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from client.e2e.identity import IdentityKeys
from client.e2e_link import E2ERoomLink
from client.keystore import KeyStore
from client.link import Resumed
from client.session import Joined, TcrpTarget, join_room
from tests.integration.harness import Server
from tests.integration.lossy import require_nft
from tests.integration.test_client_script import Client
from tests.integration.test_e2e_chat import _encrypted_room, clients
from tests.integration.test_reliable_chat import _wait_for, chat_through_loss, server
from wire.codes import Framing, Operation
from wire.tcrp import Request, RequestBody

__all__ = ["clients", "server"]
H = "127.0.0.1"


def test_encrypted_chat_through_5_percent_loss_and_a_3_s_outage_shows_every_line_once_in_order(
        server: Server, room_name: str, clients: list[Client], tmp_path: Path) -> None:
    require_nft()
    alice, bob, _, _ = _encrypted_room(clients, server, room_name, tmp_path)
    bob.send("ready")  # both room keys are in place before the loss starts
    alice.expect(r"^bob: ready$")
    alice.send("go")
    bob.expect(r"^alice: go$")
    chat_through_loss(server, alice, bob, ("rejected a message",))


# --- in this process: copies and a move to a new address ----------------------------------------
def _join(server: Server, op: Operation, room: str, user: str, identity: IdentityKeys,
          source: str | None = None) -> Joined:
    return join_room(TcrpTarget(H, server.tcp_port), Request.of(op, room, RequestBody(
        user, framing=Framing.OCM1R, keys=identity.publish(), e2e=op is Operation.CREATE)),
        source)


def test_a_copy_is_dropped_before_decryption_and_a_moved_member_decrypts_what_it_missed(
        server: Server, room_name: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: dict[str, list[str]] = {"alice": [], "bob": []}
        links: dict[str, E2ERoomLink] = {}
        for op, user in ((Operation.CREATE, "alice"), (Operation.JOIN, "bob")):
            identity = IdentityKeys.generate()
            joined = await asyncio.to_thread(_join, server, op, room_name, user, identity)
            assert joined.details.e2e and joined.details.framing is Framing.OCM1R
            assert joined.details.resume
            links[user] = E2ERoomLink(joined, lambda line, u=user: seen[u].append(line.plain()),
                                      KeyStore(tmp_path / user), identity, env={})
            await links[user].open()
        alice, bob = links["alice"], links["bob"]
        await _wait_for(lambda: bool(alice.crypto.members) and bool(bob.crypto.members))
        raw: list[bytes] = []
        received = bob.datagram_received

        def tap(data: bytes, addr: tuple[str, int]) -> None:
            raw.append(data)
            received(data, addr)

        bob.datagram_received = tap  # type: ignore[method-assign]
        for i in range(3):
            alice.send(f"before {i}")
        await _wait_for(lambda: "alice: before 2" in seen["bob"])
        # every datagram bob got again (DATA, SYNC, envelopes): numbered copies go by number
        numbered = [d for d in raw if d[:1] == b"\x01"]
        assert numbered
        rejected = bob.rejected
        for data in numbered:
            received(data, ("127.0.0.1", 0))
        assert bob.rejected == rejected  # never reached decryption: not a replay
        assert [line for line in seen["bob"] if line.startswith("alice: ")] == [
            f"alice: before {i}" for i in range(3)]
        # bob's network goes: its socket is gone, and what it sends goes nowhere
        assert bob._transport is not None
        bob._transport.close()
        outcomes: list[Resumed] = []
        bob.on_resumed = outcomes.append
        for i in range(10):
            alice.send(f"while away {i}")
        for i in range(3):
            bob.send(f"typed offline {i}")
        assert bob.pending == 3
        await _wait_for(lambda: alice.pending == 0)
        await bob.resume(source="127.0.0.2")
        assert bob.joined.udp_sock.getsockname()[0] == "127.0.0.2"
        await _wait_for(lambda: "alice: while away 9" in seen["bob"]
                        and "bob: typed offline 2" in seen["alice"] and outcomes != [])
        assert outcomes == [Resumed.YES]
        assert [line for line in seen["bob"] if line.startswith("alice: ")] == (
            [f"alice: before {i}" for i in range(3)]
            + [f"alice: while away {i}" for i in range(10)])
        assert [line for line in seen["alice"] if line.startswith("bob: ")] == [
            f"bob: typed offline {i}" for i in range(3)]
        assert bob.rejected == rejected and alice.rejected == 0
        assert not any("left" in line for line in seen["alice"])
        bob.leave()
        await _wait_for(lambda: any("bob left" in line for line in seen["alice"]))
        alice.leave()
        alice.close()
        bob.close()

    asyncio.run(scenario())
