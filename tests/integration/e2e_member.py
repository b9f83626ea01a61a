"""A member of an encrypted room for integration tests: a ``Peer`` (real TCRP and UDP)
driven by the sans-IO ``RoomCrypto``, blocking, every wait with a timeout.

``pump(until)`` reads datagrams, feeds notices and deliveries to the engine, sends what it
returns (envelopes, key answers) and stops when ``until()`` holds. Everything received is
kept (``raw``) so that tests can replay or alter it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from client.e2e.identity import IdentityKeys
from client.e2e.room import (
    Decrypted,
    KeyInstalled,
    Output,
    Rejected,
    RoomCrypto,
    Send,
    room_binding,
)
from tests.integration.peer import TIMEOUT_S, Peer, join
from wire import errors
from wire.chat import Notice, decode_framed, encode_chat
from wire.codes import Framing, Operation
from wire.e2e import E2EDelivery, Kind, decode_delivery, encode_message

Addr = tuple[str, int]


@dataclass
class Member:
    peer: Peer
    crypto: RoomCrypto
    identity: IdentityKeys
    send_to: Addr
    decrypted: list[Decrypted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    installed: list[KeyInstalled] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.peer.user

    def texts(self) -> list[str]:
        return [d.text.decode() for d in self.decrypted]

    def send_message(self, message: bytes) -> None:
        self.peer.sock.sendto(encode_chat(self.peer.room, self.peer.token, message),
                              self.send_to)

    def say(self, text: str) -> bytes:
        """Encrypt and send ``text`` (and any rotation first); return the chat Message."""
        outputs = self.crypto.seal(text.encode(), time.monotonic())
        self.run(outputs)
        last = outputs[-1]
        assert isinstance(last, Send)
        return last.message

    def holds_current_session_of(self, other: Member) -> bool:
        return any(k.sender == other.name and k.session_id == other.crypto.session_id
                   for k in self.installed)

    def leave(self) -> None:
        self.send_message(encode_message(Kind.LEAVE))

    def run(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                self.send_message(out.message)
            elif isinstance(out, Decrypted):
                self.decrypted.append(out)
            elif isinstance(out, Rejected):
                self.rejected.append(out)
            elif isinstance(out, KeyInstalled):
                self.installed.append(out)

    def handle(self, data: bytes) -> None:
        self.raw.append(data)
        now = time.monotonic()
        if data[:1] == b"\x00":
            notice = decode_framed(data)
            assert isinstance(notice, Notice)
            self.notices.append(notice)
            self.run(self.crypto.handle_notice(notice, now))
            return
        self.run(self.crypto.receive(decode_delivery(data), now))

    def poll(self, timeout: float) -> bool:
        """Handle one datagram if one comes within ``timeout``; also run the engine's
        timer. False on timeout."""
        deadline = self.crypto.next_deadline()
        if deadline is not None and deadline <= time.monotonic():
            self.run(self.crypto.handle_timer(time.monotonic()))
        self.peer.sock.settimeout(timeout)
        try:
            data = self.peer.sock.recv(65536)
        except TimeoutError:
            return False
        self.handle(data)
        return True

    def deliveries(self) -> list[E2EDelivery]:
        out = []
        for data in self.raw:
            if data[:1] != b"\x00":
                try:
                    out.append(decode_delivery(data))
                except errors.ProtocolError:
                    pass
        return out


def pump(members: list[Member], until: Callable[[], bool], timeout: float = TIMEOUT_S,
         what: str = "") -> None:
    """Poll every member in turn until ``until()`` or ``timeout`` (AssertionError)."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or until}")
        for member in members:
            member.poll(0.01)


def settle(members: list[Member], quiet: float = 0.5, timeout: float = TIMEOUT_S) -> None:
    """Poll until no member has received anything for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() - last < quiet and time.monotonic() < deadline:
        for member in members:
            if member.poll(0.01):
                last = time.monotonic()


def new_member(host: str, tcp_port: int, op: Operation, room: str, user: str,
               identity: IdentityKeys | None = None, e2e: bool = True,
               send_to: Addr | None = None, bind: str = "register") -> Member:
    """Create (``op`` CREATE, with ``e2e``) or join an encrypted room as ``user``."""
    identity = identity or IdentityKeys.generate()
    peer = join(host, tcp_port, op, room, user, framing=Framing.OCM1, keys=identity.publish(),
                e2e=e2e and op is Operation.CREATE, bind=bind)
    details = peer.details
    binding = room_binding(room,
                           details.epoch)  # type: ignore[attr-defined]
    crypto = RoomCrypto(room, user, identity, binding)
    member = Member(peer, crypto, identity, send_to or (host, peer.udp_port))
    member.run(crypto.start(details.members, time.monotonic()))  # type: ignore[attr-defined]
    return member


def sock_addr(member: Member) -> Addr:
    name = member.peer.sock.getsockname()
    return (str(name[0]), int(name[1]))


__all__ = ["Member", "new_member", "pump", "settle", "sock_addr", "socket"]
