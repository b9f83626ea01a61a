"""A sniffed token is not a member (docs/protocol.md §8, docs/security.md), on a real
``ocm-control`` over TLS with a test CA, on both hot loops.

Members that joined over TLS get a datagram key and seal every datagram. An attacker who
read bob's token off the wire sends, from bob's IP and another port, a keepalive (which
would rebind bob's address to the attacker), a chat message and a leave (``/exit``, or
kind 04 in an encrypted room): none of it has any effect, and bob chats on. A member that
joined over plain TCRP works as before."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client.link import Resumed, RoomLink
from client.session import Joined, TcrpTarget, client_tls_context, join_room
from tests.integration.harness import Server, start_server
from tests.integration.test_server_modes import worker_pid
from tests.integration.test_tls import chat, make_pki, tls_port
from wire import dgmac
from wire.chat import encode_chat
from wire.codes import Framing, Operation
from wire.e2e import Kind, PublicKeys, encode_message
from wire.tcrp import Request, RequestBody

H = "127.0.0.1"
WAIT_S = 10.0
KEYS = {"alice": PublicKeys(bytes(range(32)), bytes(range(32, 64))),
        "bob": PublicKeys(bytes(range(64, 96)), bytes(range(96, 128))),
        "carol": PublicKeys(bytes(range(128, 160)), bytes(range(160, 192)))}


def _hot_available() -> bool:
    try:
        from relay import _hot  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=["python", "compiled"])
def hot_path(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled" and not _hot_available():
        pytest.skip("relay._hot is not built")
    return str(request.param)


def start_tls(tmp_path: Path, *args: str) -> tuple[Path, Server]:
    """A test CA (its certificate's path) and an ``ocm-control`` with one worker serving
    TCRP over TLS (and plain TCRP) with a certificate from it; ``args``: more flags."""
    ca, cert, key = make_pki(tmp_path)
    return ca, start_server("--tls-cert", str(cert), "--tls-key", str(key), "--tls-port",
                            "0", *args, workers=1)


def receive(member: Joined) -> Iterator[tuple[str, bytes]]:
    """(sender or "" for a notice, message) of each framed delivery to ``member``."""
    member.udp_sock.settimeout(WAIT_S)
    while True:
        data = member.udp_sock.recv(65536)
        if data[0] == 0:
            yield "", data[1:]
        else:
            yield data[1:1 + data[0]].decode(), data[1 + data[0]:]


def wait_for(member: Joined, sender: str, message: bytes) -> list[tuple[str, bytes]]:
    """Every delivery to ``member`` up to and including ``sender``'s ``message``."""
    seen = []
    for item in receive(member):
        seen.append(item)
        if item == (sender, message):
            return seen
    raise AssertionError("unreachable")


def send(member: Joined, body: bytes) -> None:
    member.udp_sock.sendto(member.seal(encode_chat(member.room_raw, member.token, body)),
                           member.server)


@pytest.mark.parametrize("e2e", [False, True], ids=["plain-room", "encrypted-room"])
def test_sniffed_token_cannot_rebind_chat_or_leave(tmp_path: Path, hot_path: str,
                                                   e2e: bool) -> None:
    ca, server = start_tls(tmp_path, "--relay-hot-path", hot_path)
    with server as srv:
        secure = TcrpTarget(H, tls_port(srv), tls=client_tls_context(str(ca)))
        plain = TcrpTarget(H, srv.tcp_port)
        room = "sealed-e2e" if e2e else "sealed"

        def body(user: str) -> RequestBody:
            if e2e:
                return RequestBody(user, framing=Framing.OCM1, keys=KEYS[user], e2e=True)
            return RequestBody(user, framing=Framing.OCM1)

        alice = join_room(secure, Request.of(Operation.CREATE, room, body("alice")))
        bob = join_room(secure, Request.of(Operation.JOIN, room, body("bob")))
        carol = join_room(plain, Request.of(Operation.JOIN, room, body("carol")))
        members = (alice, bob, carol)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            assert alice.sealer is not None and bob.sealer is not None
            assert carol.sealer is None and carol.details.datagram_key is None
            assert bob.details.max_message == carol.details.max_message - 24
            chat = (lambda text: encode_message(Kind.CHAT, text)) if e2e else (lambda t: t)
            for member in members:  # bind every member (and hear every joined notice)
                send(member, b"")
            for member in members:
                send(member, chat(b"hello from " + member.username.encode()))
            wait_for(alice, "carol", chat(b"hello from carol"))
            wait_for(bob, "carol", chat(b"hello from carol"))

            attacker.bind((H, 0))  # bob's IP, another port
            forged = encode_chat(bob.room_raw, bob.token, b"")
            attacker.sendto(forged, bob.server)  # a keepalive: would rebind bob here
            send(carol, chat(b"ping"))
            assert ("carol", chat(b"ping")) in wait_for(bob, "carol", chat(b"ping"))

            leave = encode_message(Kind.LEAVE) if e2e else b"/exit"
            for message in (chat(b"forged"), leave):
                attacker.sendto(encode_chat(bob.room_raw, bob.token, message), bob.server)
            send(bob, chat(b"still here"))
            for member in (alice, carol):
                seen = wait_for(member, "bob", chat(b"still here"))
                assert ("bob", chat(b"forged")) not in seen
                assert not [m for who, m in seen if who == "" and b'"left"' in m], seen
            attacker.setblocking(False)
            with pytest.raises(BlockingIOError):
                attacker.recv(65536)  # nothing was ever delivered to the attacker

            if not e2e:  # the longest message bob may send fits with its trailer
                longest = b"m" * bob.details.max_message
                send(bob, longest)
                wait_for(alice, "bob", longest)

            # The plain-TCRP member is unaffected; and bob really leaves with his key.
            send(bob, leave)
            send(carol, chat(b"after"))
            seen = wait_for(alice, "carol", chat(b"after"))
            assert [m for who, m in seen if who == "" and b'"left"' in m and b"bob" in m]
        finally:
            attacker.close()
            for member in members:
                member.udp_sock.close()


def test_ocm_chat_over_tls_seals_its_datagrams(tmp_path: Path) -> None:
    """ocm-chat joined over TLS: its chat is relayed only because it carries the MAC."""
    ca, server = start_tls(tmp_path)
    with server as srv:
        port = tls_port(srv)
        secure = TcrpTarget(H, port, tls=client_tls_context(str(ca)))
        alice = join_room(secure, Request.of(Operation.CREATE, "cli", RequestBody("alice")))
        try:
            send(alice, b"")
            done = chat("--tls", "--ca-file", str(ca), "--tcp-port", str(port), "--join", "cli",
                        "--user", "dave", stdin="hello from ocm-chat\n")
            assert done.returncode == 0, done.stderr
            wait_for(alice, "dave", b"hello from ocm-chat")
        finally:
            alice.udp_sock.close()


def joiner(target: TcrpTarget, room: str,
           framing: Framing) -> Callable[[Operation, str], Joined]:
    def join(operation: Operation, user: str) -> Joined:
        return join_room(target, Request.of(operation, room,
                                            RequestBody(user, framing=framing)))
    return join


async def wait(predicate: Callable[[], bool]) -> None:
    """Until ``predicate()`` holds, polling the state the links update; WAIT_S at most."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def take_rekey(member: Joined) -> None:
    """Read ``member``'s socket up to the rekey datagram of its new placement and switch
    its key, as ``RoomLink`` does."""
    assert member.sealer is not None
    member.udp_sock.settimeout(WAIT_S)
    while not dgmac.is_rekey(data := member.udp_sock.recv(65536)):
        pass
    assert member.sealer.rekey(data)


def test_a_datagram_recorded_before_a_worker_restart_is_not_replayed_after(
        tmp_path: Path) -> None:
    """The attack: bob's sealed chat, recorded off the wire, sent again from bob's own
    address after his worker was SIGKILLed and replaced. The replacement gets bob back
    with a fresh placement key, so the recording fails its tag and is not relayed; bob,
    told the placement by the rekey datagram, chats on, and a forged unsealed datagram is
    still dropped."""
    ca, server = start_tls(tmp_path)
    with server as srv:
        secure = TcrpTarget(H, tls_port(srv), tls=client_tls_context(str(ca)))
        alice = join_room(secure, Request.of(Operation.CREATE, "kept", RequestBody("alice")))
        bob = join_room(secure, Request.of(Operation.JOIN, "kept", RequestBody("bob")))
        carol = join_room(TcrpTarget(H, srv.tcp_port),
                          Request.of(Operation.JOIN, "kept", RequestBody("carol")))
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for member in (alice, bob, carol):
                send(member, b"")
            recorded = bob.seal(encode_chat(bob.room_raw, bob.token, b"before"))
            bob.udp_sock.sendto(recorded, bob.server)
            wait_for(alice, "bob", b"before")
            pid = worker_pid(srv, 0)
            os.kill(pid, signal.SIGKILL)
            srv.wait_log(r"worker 0 replaced")
            bob.udp_sock.sendto(recorded, bob.server)  # the replay, from bob's address
            send(carol, b"mark")  # plain TCRP: no key, relayed as before
            assert ("bob", b"before") not in wait_for(alice, "carol", b"mark")
            attacker.bind((H, 0))
            attacker.sendto(encode_chat(bob.room_raw, bob.token, b"forged"), bob.server)
            take_rekey(bob)
            send(bob, b"after")
            assert ("bob", b"forged") not in wait_for(alice, "bob", b"after")
        finally:
            attacker.close()
            for member in (alice, bob, carol):
                member.udp_sock.close()


def test_a_sealed_ocm1r_member_chats_and_recovers(tmp_path: Path, hot_path: str) -> None:
    """ocm1r (docs/protocol.md §9) over TLS: SENDs, NACKs and keepalives are sealed and
    the relay reads them past the trailer; a member whose socket went away resumes over
    TLS with a new datagram key and gets back what it missed, nothing lost. An unsealed
    datagram with its new token is dropped."""
    ca, server = start_tls(tmp_path, "--relay-hot-path", hot_path)
    with server as srv:
        secure = TcrpTarget(H, tls_port(srv), tls=client_tls_context(str(ca)))

        join = joiner(secure, "sealed-r", Framing.OCM1R)

        async def scenario() -> None:
            seen: dict[str, list[str]] = {"alice": [], "bob": []}
            alice_joined = await asyncio.to_thread(join, Operation.CREATE, "alice")
            bob_joined = await asyncio.to_thread(join, Operation.JOIN, "bob")
            for joined in (alice_joined, bob_joined):
                assert joined.details.framing is Framing.OCM1R and joined.sealer is not None
            alice = RoomLink(alice_joined, lambda line: seen["alice"].append(line.plain()))
            bob = RoomLink(bob_joined, lambda line: seen["bob"].append(line.plain()))
            outcomes: list[Resumed] = []
            bob.on_resumed = outcomes.append
            await alice.open()
            await bob.open()
            await wait(lambda: "* bob joined the room" in seen["alice"])
            alice.send("before")
            bob.send("hello")
            await wait(lambda: "alice: before" in seen["bob"] and "bob: hello" in seen["alice"]
                       and alice.pending == 0 and bob.pending == 0)
            assert bob._transport is not None
            bob._transport.close()  # bob's network goes
            for i in range(5):
                alice.send(f"while away {i}")
            bob.send("typed offline")
            await wait(lambda: alice.pending == 0)
            old_key = bob.joined.details.datagram_key
            await bob.resume(source="127.0.0.2")
            assert bob.joined.sealer is not None
            assert bob.joined.details.datagram_key not in (None, old_key)
            await wait(lambda: "alice: while away 4" in seen["bob"]
                       and "bob: typed offline" in seen["alice"] and outcomes != [])
            assert outcomes == [Resumed.YES]
            assert [line for line in seen["bob"] if line.startswith("alice: ")] == (
                ["alice: before"] + [f"alice: while away {i}" for i in range(5)])
            bob.joined.udp_sock.send(encode_chat(bob.joined.room_raw, bob.joined.token,
                                                 b"unsealed"))
            bob.send("sealed")
            await wait(lambda: "bob: sealed" in seen["alice"])
            assert "bob: unsealed" not in seen["alice"]
            bob.leave()
            await wait(lambda: "* bob left the room" in seen["alice"])
            alice.leave()
            alice.close()
            bob.close()

        asyncio.run(scenario())


def test_the_client_takes_its_new_placement_key_after_a_worker_restart(
        tmp_path: Path) -> None:
    """``RoomLink`` (ocm-chat, ocm-gui) reads the rekey datagram of its new placement and
    seals with that key from then on: its chat goes on after the worker is replaced."""
    ca, server = start_tls(tmp_path)
    with server as srv:
        secure = TcrpTarget(H, tls_port(srv), tls=client_tls_context(str(ca)))

        join = joiner(secure, "placed", Framing.OCM1)

        async def scenario() -> None:
            seen: dict[str, list[str]] = {"alice": [], "bob": []}
            alice = RoomLink(await asyncio.to_thread(join, Operation.CREATE, "alice"),
                             lambda line: seen["alice"].append(line.plain()))
            bob = RoomLink(await asyncio.to_thread(join, Operation.JOIN, "bob"),
                           lambda line: seen["bob"].append(line.plain()))
            await alice.open()
            await bob.open()
            await wait(lambda: "* bob joined the room" in seen["alice"])
            bob.send("before")
            await wait(lambda: "bob: before" in seen["alice"])
            sealer = bob.joined.sealer
            assert sealer is not None and sealer.key == sealer.base
            os.kill(worker_pid(srv, 0), signal.SIGKILL)
            await asyncio.to_thread(srv.wait_log, r"worker 0 replaced")
            await wait(lambda: sealer.key != sealer.base)
            bob.send("after")
            alice.send("to bob")
            await wait(lambda: "bob: after" in seen["alice"] and "alice: to bob" in seen["bob"])
            assert bob.dropped == 0
            alice.close()
            bob.close()

        asyncio.run(scenario())
