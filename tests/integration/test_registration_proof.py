"""Registration-port amplification: a registered port must prove itself before it gets
more than a small, fixed number of datagrams (docs/protocol.md §4 (j)).

The attack: 300 joins from one IP, each registering the port of a co-located socket (a
victim behind the same NAT) that never sends anything; then the attacker chats. Without
the rule the victim got every ``joined`` notice of the room (299 x 300 / 2 = 44,850) and
a copy of each chat message per member registered there (x 299). With it, the victim
gets at most ``UNPROVEN_MAX_DELIVERIES`` datagrams in all.
"""

from __future__ import annotations

import os
import signal
import socket

from tests.integration.harness import start_server
from tests.integration.joins import join_all
from tests.integration.peer import join
from wire.chat import encode_chat
from wire.codes import Operation
from wire.limits import UNPROVEN_MAX_DELIVERIES

H = "127.0.0.1"
JOINS = 300
CHATS = 20
JOINED = "{} がチャットルームに参加しました"


def _count(sock: socket.socket, quiet_s: float) -> int:
    """Datagrams that arrive on ``sock`` until it has been quiet for ``quiet_s``."""
    sock.settimeout(quiet_s)
    n = 0
    try:
        while True:
            sock.recv(65536)
            n += 1
    except TimeoutError:
        return n


def test_a_registered_port_that_never_spoke_gets_a_bounded_number_of_datagrams() -> None:
    with start_server(workers=1) as srv:
        victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        victim.bind((H, 0))
        victim.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind((H, 0))
        try:
            port = victim.getsockname()[1]
            requests = [(Operation.CREATE, "amp", "u0")]
            requests += [(Operation.JOIN, "amp", f"u{i}") for i in range(1, JOINS)]
            tokens = join_all(srv.tcp_port, requests, port)
            # A witness member with its own, proven address sees every chat: once it has
            # the last one, the worker has sent that chat to everyone.
            witness = join(H, srv.tcp_port, Operation.JOIN, "amp", "witness",
                           bind="keepalive")
            for i in range(CHATS):
                attacker.sendto(encode_chat(b"amp", tokens[0], f"chat {i}".encode()),
                                (H, srv.udp_port))
            last = f"u0: chat {CHATS - 1}"
            while witness.recv_text() != last:
                pass
            got = _count(victim, 1.0)
            witness.close()
        finally:
            victim.close()
            attacker.close()
        print(f"\nregistration amplification: {JOINS} joins registering one port, "
              f"{CHATS} chats: the port that never spoke got {got} datagrams")
        assert 0 < got <= UNPROVEN_MAX_DELIVERIES


def test_a_registered_port_that_speaks_gets_everything() -> None:
    """The reference client's way: register, then send from that port. Until it speaks
    it gets the budget's worth; once it has spoken, its address is proven and it gets
    everything."""
    with start_server("--chat-burst", "1000", "--chat-rate", "1000", workers=1) as srv:
        host = join(H, srv.tcp_port, Operation.CREATE, "talk", "host", bind="keepalive")
        guest = join(H, srv.tcp_port, Operation.JOIN, "talk", "guest")  # registers
        assert host.recv_text() == JOINED.format("guest")
        n = UNPROVEN_MAX_DELIVERIES + 8
        for i in range(n):
            host.send(f"early {i}")
        for i in range(UNPROVEN_MAX_DELIVERIES):
            assert guest.recv_text() == f"host: early {i}"
        guest.send(b"")  # a keepalive from the registered port proves it
        for i in range(n):
            host.send(f"late {i}")
        for i in range(n):
            assert guest.recv_text() == f"host: late {i}"  # early 32.. were withheld
        host.close()
        guest.close()


def test_a_proven_listener_stays_proven_when_its_worker_is_replaced() -> None:
    """Control keeps each member's proof and re-seeds it: after a worker's SIGKILL a
    client that proved its port once (and then only listens) still gets everything."""
    with start_server("--chat-burst", "1000", "--chat-rate", "1000", workers=1) as srv:
        listener = join(H, srv.tcp_port, Operation.CREATE, "crash", "host")  # registers
        listener.send(b"")  # ... and proves its port once, then only listens
        talker = join(H, srv.tcp_port, Operation.JOIN, "crash", "talker", bind="keepalive")
        assert listener.recv_text() == JOINED.format("talker")
        pid = int(srv.wait_log(r"worker 0 started \(pid (\d+)")[1])
        os.kill(pid, signal.SIGKILL)
        srv.wait_log(r"worker 0 replaced")
        n = UNPROVEN_MAX_DELIVERIES + 8
        for i in range(n):
            talker.send(f"after {i}")
        for i in range(n):
            assert listener.recv_text() == f"talker: after {i}"
        listener.close()
        talker.close()
