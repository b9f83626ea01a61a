"""BASELINE, NOT THE OCM SERVER: the "typical implementation" of this assignment.

This is the relay people usually write for the Online Chat Messenger exercise, kept here
only so that ``ocm-loadgen`` and ``make bench`` have something to compare OCM against:

* one thread and one ``select.select`` over the TCP listener and the UDP socket;
* TCRP handled blocking, one connection at a time (accept, read the whole request, answer,
  wait for the client to close or send its 2-byte UDP port);
* ``recvfrom`` one datagram, then one ``sendto`` per other member;
* plain delivery only (an ``ocm1`` request is answered with ``"framing": "plain"``);
* the same wire codecs as OCM (``wire/``), so the bytes are right.

It is correct enough for the load generator: create/join with tokens bound to the TCP
peer's IP, the State 2 token, keepalives and binding by the first datagram, ``joined``,
``left`` and ``closed`` notices, ``/exit``, relaying chat to the other bound members and
an inactivity sweep. It has no passwords hashing, no rate limiting, no workers, no
steering, no graceful drain; do not deploy it.

CLI: ``python -m tests.bench.baselines.simple_relay --host 127.0.0.1 --tcp-port 0 --udp-port 0``
prints ``ready tcp=HOST:PORT udp=PORT stage1=0 workers=1 steering=none`` when listening.
"""

from __future__ import annotations

import argparse
import secrets
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from wire import errors
from wire.chat import Notice, decode_chat, encode_plain_notice, is_exit, plain_prefix
from wire.codes import Framing, NoticeEvent, Operation, Status
from wire.limits import (
    DEFAULT_INACTIVITY_TIMEOUT_S,
    DEFAULT_TCP_PORT,
    DEFAULT_UDP_PORT,
    MAX_DATAGRAM_BYTES,
    MAX_DELIVERY_BYTES,
    REGISTRATION_WINDOW_S,
    max_message_bytes,
)
from wire.tcrp import (
    NEED_DATA,
    Details,
    FrameReader,
    Request,
    Role,
    encode_complete,
    encode_error,
    encode_ok,
)

Addr = tuple[str, int]
TCP_TIMEOUT_S = 10.0
SWEEP_INTERVAL_S = 1.0


@dataclass(eq=False)
class Member:
    token: bytes
    username: str
    ip: str
    prefix: bytes
    addr: Addr | None = None
    last_seen: float = 0.0


@dataclass(eq=False)
class Room:
    name: bytes
    password: str | None
    host: Member
    members: dict[bytes, Member] = field(default_factory=dict)


class SimpleRelay:
    """The whole baseline server: a registry of rooms and two blocking handlers."""

    def __init__(self, tcp: socket.socket, udp: socket.socket, inactivity_timeout: float) -> None:
        self.tcp = tcp
        self.udp = udp
        self.udp_port = udp.getsockname()[1]
        self.inactivity_timeout = inactivity_timeout
        self.rooms: dict[bytes, Room] = {}
        self.running = True

    def serve(self) -> None:
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        while self.running:
            try:
                readable, _, _ = select.select([self.tcp, self.udp], [], [], SWEEP_INTERVAL_S)
            except InterruptedError:
                continue
            if self.udp in readable:
                self.handle_datagram()
            if self.tcp in readable:
                self.handle_connection()
            now = time.monotonic()
            if now >= next_sweep:
                self.sweep(now)
                next_sweep = now + SWEEP_INTERVAL_S

    # --- TCRP, blocking -----------------------------------------------------------------
    def handle_connection(self) -> None:
        try:
            conn, (ip, _port) = self.tcp.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TCP_TIMEOUT_S)
            reader = FrameReader(Role.SERVER)
            try:
                while True:
                    try:
                        event = reader.next_event()
                    except errors.ProtocolError as exc:
                        conn.sendall(encode_error(reader.operation, reader.room_raw,
                                                  exc.status, str(exc)))
                        return
                    if event is not NEED_DATA:
                        break
                    data = conn.recv(65536)
                    if not data:
                        return
                    reader.receive_data(data)
                assert isinstance(event, Request)
                self.answer(conn, ip, event, reader.trailing)
            except OSError:
                return

    def answer(self, conn: socket.socket, ip: str, req: Request, trailing: bytes) -> None:
        body = req.body
        room = self.rooms.get(req.room_raw)
        if req.operation is Operation.CREATE:
            if room is not None:
                conn.sendall(encode_error(req.operation, req.room_raw, Status.ROOM_EXISTS,
                                          "room exists"))
                return
        elif room is None:
            conn.sendall(encode_error(req.operation, req.room_raw, Status.ROOM_NOT_FOUND,
                                      "no such room"))
            return
        elif room.password is not None and body.password != room.password:
            conn.sendall(encode_error(req.operation, req.room_raw, Status.INVALID_PASSWORD,
                                      "wrong password"))
            return
        elif any(m.username == body.username for m in room.members.values()):
            conn.sendall(encode_error(req.operation, req.room_raw, Status.USERNAME_TAKEN,
                                      "username taken"))
            return
        token = secrets.token_urlsafe(24).encode()
        member = Member(token, body.username, ip, plain_prefix(body.username),
                        last_seen=time.monotonic())
        if room is None:
            room = Room(req.room_raw, body.password, member)
            self.rooms[req.room_raw] = room
        room.members[token] = member
        details = Details(
            udp_port=self.udp_port,
            host=room.host is member,
            max_message=max_message_bytes(len(req.room_raw), len(token),
                                          len(body.username.encode())),
            inactivity_timeout=self.inactivity_timeout,
            framing=Framing.PLAIN,
        )
        conn.sendall(encode_ok(req.operation, req.room_raw, details))
        conn.sendall(encode_complete(req.operation, req.room_raw, token))
        # Wait (blocking!) for the optional 2-byte UDP port, the client's close, or 2 s.
        conn.settimeout(REGISTRATION_WINDOW_S)
        extra = bytearray(trailing)
        while len(extra) < 3:
            try:
                data = conn.recv(16)
            except OSError:
                break
            if not data:
                break
            extra += data
        if len(extra) == 2:
            port = int.from_bytes(extra, "big")
            if port:
                self.bind(room, member, (ip, port))

    # --- UDP ------------------------------------------------------------------------------
    def handle_datagram(self) -> None:
        try:
            data, addr = self.udp.recvfrom(MAX_DATAGRAM_BYTES + 1)
        except OSError:
            return
        try:
            dgram = decode_chat(data)
        except errors.ProtocolError:
            return
        room = self.rooms.get(dgram.room)
        if room is None:
            return
        member = room.members.get(dgram.token)
        if member is None or member.ip != addr[0]:
            return
        member.last_seen = time.monotonic()
        if member.addr != addr:
            self.bind(room, member, addr)
        message = dgram.message
        if not message:
            return
        if is_exit(message):
            self.remove(room, member, announce=True)
            return
        out = member.prefix + message
        if len(out) > MAX_DELIVERY_BYTES:
            return
        for other in list(room.members.values()):
            if other is not member and other.addr is not None:
                self.send(out, other.addr)

    def bind(self, room: Room, member: Member, addr: Addr) -> None:
        first = member.addr is None
        member.addr = addr
        if first:
            self.broadcast(room, Notice(NoticeEvent.JOINED, member.username), exclude=member)

    def remove(self, room: Room, member: Member, announce: bool) -> None:
        room.members.pop(member.token, None)
        if member is room.host:
            self.rooms.pop(room.name, None)
            self.broadcast(room, Notice(NoticeEvent.CLOSED))
            room.members.clear()
        elif announce:
            self.broadcast(room, Notice(NoticeEvent.LEFT, member.username))

    def broadcast(self, room: Room, notice: Notice, exclude: Member | None = None) -> None:
        data = encode_plain_notice(notice)
        for other in list(room.members.values()):
            if other is not exclude and other.addr is not None:
                self.send(data, other.addr)

    def send(self, data: bytes, addr: Addr) -> None:
        try:
            self.udp.sendto(data, addr)
        except OSError:
            pass

    def sweep(self, now: float) -> None:
        for room in list(self.rooms.values()):
            for member in list(room.members.values()):
                if now - member.last_seen > self.inactivity_timeout:
                    if member.addr is not None:
                        self.send(encode_plain_notice(Notice(NoticeEvent.DISCONNECTED)),
                                  member.addr)
                    self.remove(room, member, announce=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="simple_relay",
        description="BASELINE ONLY: a deliberately simple single-threaded blocking chat relay "
        "(the typical implementation of this assignment), used by ocm-loadgen/make bench for "
        "comparison. Plain delivery only.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1]")
    parser.add_argument("--tcp-port", type=int, default=DEFAULT_TCP_PORT,
                        help="TCRP port; 0 = any [%(default)s]")
    parser.add_argument("--udp-port", type=int, default=DEFAULT_UDP_PORT,
                        help="chat port; 0 = any [%(default)s]")
    parser.add_argument("--inactivity-timeout", type=float, default=DEFAULT_INACTIVITY_TIMEOUT_S,
                        help="seconds of silence before a member is removed [300]")
    args = parser.parse_args(argv)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((args.host, args.tcp_port))
    tcp.listen(1024)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.host, args.udp_port))
    relay = SimpleRelay(tcp, udp, args.inactivity_timeout)

    def stop(_signum: int, _frame: object) -> None:
        relay.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, tcp_port = tcp.getsockname()
    print(f"ready tcp={host}:{tcp_port} udp={relay.udp_port} stage1=0 workers=1 steering=none",
          flush=True)
    try:
        relay.serve()
    finally:
        tcp.close()
        udp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
