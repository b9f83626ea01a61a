"""Every limit of the server, black box: hit it, check the refusal, show the recovery.

One server per test, started with a small value of the limit under test, so that each
refusal is deterministic and cheap. Then the authentication properties an attacker would
probe: token shape and uniqueness, tokens bound to the issuing IP, tokens of a closed room
dead even when the name is reused, and no secret in the logs. docs/security.md maps each
threat to these tests.
"""

from __future__ import annotations

import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.harness import Server, start_server
from tests.integration.peer import Peer, join, tcrp_exchange
from tests.stress.tools import (
    admin_address,
    dropped,
    exchange,
    final_counters,
    scrape,
    status_of,
    wait_for,
)
from wire.codes import Operation, Status
from wire.limits import TCRP_PAYLOAD_SIZE_BYTES
from wire.stage1 import encode_stage1
from wire.tcrp import MAX_PAYLOAD_SIZE_FIELD, Request, RequestBody, Response, encode_request
from wire.tcrp_client import ClientExchange, ConnectionClosed

H = "127.0.0.1"
H2 = "127.0.0.2"
JOINED = "{} がチャットルームに参加しました"
CLOSED = "チャットルームが閉じられました"
ANSWER_AT_ONCE_S = 2.0
"""An immediate refusal arrives well within this (loopback; generous for a busy machine)."""


def header(room_size: int, op: int, state: int, payload_size: int) -> bytes:
    return bytes([room_size, op, state]) + payload_size.to_bytes(TCRP_PAYLOAD_SIZE_BYTES, "big")


def create(srv: Server, room: str, user: str = "host", bind_ip: str = H,
           password: str | None = None) -> Peer:
    return join(H, srv.tcp_port, Operation.CREATE, room, user, password=password,
                bind_ip=bind_ip)


def request_status(srv: Server, op: Operation, room: str, user: str,
                   password: str | None = None, bind_ip: str = H) -> int:
    return status_of(H, srv.tcp_port, encode_request(
        Request.of(op, room, RequestBody(user, password))), bind_ip)


def closed_without_answer(sock: socket.socket, timeout: float) -> float:
    """Wait until the server closes ``sock`` (FIN or RST); fail if it sends anything.
    Return the seconds it took."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        data = b""
    assert data == b"", f"the server answered {data!r}"
    return time.monotonic() - start


def until_ok(srv: Server, op: Operation, room: str, user: str, timeout: float,
             bind_ip: str = H, password: str | None = None) -> float:
    """Retry a request until it is granted; return the seconds it took."""
    def attempt() -> bool:
        try:
            return request_status(srv, op, room, user, password, bind_ip) == Status.OK
        except ConnectionError:  # e.g. still over the connection cap: reset
            return False

    return wait_for(attempt, timeout, f"{op.name} {room!r} to be granted")[1]


# --- 1. limits -----------------------------------------------------------------------------------
def test_payload_limit_is_checked_before_reading_the_payload() -> None:
    with start_server(workers=1) as srv:
        for declared in (10**9, MAX_PAYLOAD_SIZE_FIELD):
            with socket.create_connection((H, srv.tcp_port), timeout=10) as sock:
                started = time.monotonic()
                exchange = ClientExchange()  # no payload:
                sock.sendall(exchange.send_raw_request(
                    header(1, Operation.CREATE, 0, declared) + b"r"))
                sock.settimeout(10)
                data = b"-"
                while data:
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    exchange.receive_data(data)
                took = time.monotonic() - started  # answered and closed
                response = exchange.next_event()
                assert isinstance(response, Response), response
                assert response.status == Status.TOO_LARGE and response.room_raw == b"r"
                # one frame, nothing else (more bytes would raise UnexpectedFrame)
                assert isinstance(exchange.next_event(), ConnectionClosed)
                assert took < ANSWER_AT_ONCE_S, took
        # The server is unharmed: a normal create works.
        assert request_status(srv, Operation.CREATE, "after-1gb", "alice") == Status.OK


def test_whole_request_deadline_disconnects_slow_clients() -> None:
    with start_server("--tcp-timeout", "1", workers=1) as srv:
        # Idle: connects and sends nothing.
        with socket.create_connection((H, srv.tcp_port), timeout=10) as idle:
            took = closed_without_answer(idle, 10.0)
        assert 0.8 <= took < 5.0, took
        # Slowloris: one byte every 0.2 s keeps the connection busy but never finishes
        # the request; the deadline counts from the connect, not from the last byte.
        request = encode_request(Request.of(Operation.CREATE, "slow", RequestBody("alice")))
        with socket.create_connection((H, srv.tcp_port), timeout=10) as slow:
            started = time.monotonic()
            slow.settimeout(0.2)
            closed_after = None
            for i in range(len(request) - 1):
                try:
                    slow.sendall(request[i : i + 1])
                    data = slow.recv(65536)
                except TimeoutError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                assert data == b"", f"the server answered {data!r}"
                closed_after = time.monotonic() - started
                break
        assert closed_after is not None, "the slow client was never disconnected"
        assert 0.8 <= closed_after < 5.0, closed_after
        # Recovery: a normal client is served at once.
        assert request_status(srv, Operation.CREATE, "slow", "alice") == Status.OK


def test_concurrent_connections_per_ip() -> None:
    with start_server("--max-conns-per-ip", "8", workers=1) as srv:
        held = [socket.create_connection((H, srv.tcp_port), timeout=10) for _ in range(8)]
        try:
            ninth = socket.create_connection((H, srv.tcp_port), timeout=10)
            with ninth:
                assert closed_without_answer(ninth, 10.0) < ANSWER_AT_ONCE_S
            # A join from the same IP is refused the same way (no answer)...
            with pytest.raises(ConnectionError):
                exchange(H, srv.tcp_port, encode_request(
                    Request.of(Operation.CREATE, "cap", RequestBody("alice"))))
            # ... while another IP has its own budget.
            assert request_status(srv, Operation.CREATE, "cap", "bob", bind_ip=H2) == Status.OK
            for sock in held[:3]:
                sock.close()
            took = until_ok(srv, Operation.JOIN, "cap", "alice", timeout=10.0)
            assert took < 5.0
        finally:
            for sock in held:
                sock.close()


def test_request_rate_per_ip() -> None:
    with start_server("--conn-rate-per-ip", "5", workers=1) as srv:
        started = time.monotonic()
        statuses = [request_status(srv, Operation.JOIN, "nowhere", f"u{i}") for i in range(20)]
        refill = int((time.monotonic() - started) * 5) + 1  # 5 per second, while we sent
        limited = statuses.count(Status.RATE_LIMITED)
        served = statuses.count(Status.ROOM_NOT_FOUND)
        assert limited + served == 20, statuses
        assert 5 <= served <= 5 + refill, statuses  # the burst (= rate) plus the refill
        assert statuses[:5] == [Status.ROOM_NOT_FOUND] * 5
        assert request_status(srv, Operation.JOIN, "nowhere", "x", bind_ip=H2) \
            == Status.ROOM_NOT_FOUND  # other IPs are not limited
        took = until_ok(srv, Operation.CREATE, "later", "alice", timeout=10.0)
        assert took < 3.0  # one request per 0.2 s refills


def test_password_failures_per_ip_and_room() -> None:
    with start_server("--max-password-failures", "3", "--password-failure-window", "3",
                      workers=1) as srv:
        create(srv, "vault", password="right")
        create(srv, "other", password="right")
        first_failure = time.monotonic()
        for i in range(3):
            assert request_status(srv, Operation.JOIN, "vault", f"g{i}", f"wrong{i}") \
                == Status.INVALID_PASSWORD
        # The 4th attempt is refused before the password is even checked.
        assert request_status(srv, Operation.JOIN, "vault", "bob", "right") \
            == Status.RATE_LIMITED
        # Another room, and another source IP, are unaffected.
        assert request_status(srv, Operation.JOIN, "other", "g9", "wrong") \
            == Status.INVALID_PASSWORD
        assert request_status(srv, Operation.JOIN, "other", "bob", "right") == Status.OK
        assert request_status(srv, Operation.JOIN, "vault", "bob", "right", bind_ip=H2) \
            == Status.OK
        # Recovery once the window has passed since the failures.
        until_ok(srv, Operation.JOIN, "vault", "carol", timeout=15.0, password="right")
        assert time.monotonic() - first_failure >= 2.5


def test_missing_password_is_not_a_failed_attempt_and_limits_say_when() -> None:
    """A join without a password (a client learning that the room is protected) is
    INVALID_PASSWORD but guesses nothing, so it does not count toward the failure limit;
    a RATE_LIMITED answer says how long to wait."""
    with start_server("--max-password-failures", "2", "--password-failure-window", "30",
                      workers=1) as srv:
        create(srv, "vault", password="right")
        for i, missing in enumerate([None, "", None, None]):
            response, _ = tcrp_exchange(H, srv.tcp_port, encode_request(
                Request.of(Operation.JOIN, "vault", RequestBody(f"m{i}", missing))))
            assert response.status == Status.INVALID_PASSWORD
            assert response.error == "this room needs a password"
        for i in range(2):
            response, _ = tcrp_exchange(H, srv.tcp_port, encode_request(
                Request.of(Operation.JOIN, "vault", RequestBody(f"g{i}", f"wrong{i}"))))
            assert (response.status, response.error) == (Status.INVALID_PASSWORD,
                                                         "wrong password")
        response, _ = tcrp_exchange(H, srv.tcp_port, encode_request(
            Request.of(Operation.JOIN, "vault", RequestBody("bob", "right"))))
        assert response.status == Status.RATE_LIMITED
        match = re.fullmatch(r"too many wrong passwords for this room from your address; "
                             r"retry in (\d+) s", response.error)
        assert match and 25 <= int(match[1]) <= 30, response.error
    with start_server("--conn-rate-per-ip", "2", workers=1) as srv:
        errors = [tcrp_exchange(H, srv.tcp_port, encode_request(
            Request.of(Operation.JOIN, "nowhere",
                RequestBody(f"u{i}"))))[0].error for i in range(4)]
        assert re.fullmatch(r"too many requests from your address; retry in 1 s",
                            errors[-1]), errors


def test_password_failures_hold_under_concurrent_guesses() -> None:
    with start_server("--max-password-failures", "3", workers=1) as srv:
        create(srv, "vault", password="right")

        def guess(i: int) -> int:
            return request_status(srv, Operation.JOIN, "vault", f"g{i}", f"wrong{i}")

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(guess, range(32)))
        checked = statuses.count(Status.INVALID_PASSWORD)
        assert checked <= 3, f"{checked} of 32 concurrent guesses were checked"


def test_chat_rate_per_member() -> None:
    with start_server("--chat-rate", "5", "--chat-burst", "5", "--admin-port", "0",
                      workers=1) as srv:
        admin = admin_address(srv.wait_log(r"admin http=").string)
        assert admin is not None
        alice = create(srv, "chatty", "alice")
        bob = join(H, srv.tcp_port, Operation.JOIN, "chatty", "bob")
        assert alice.recv_text() == JOINED.format("bob")
        for i in range(20):
            bob.send(f"burst {i}")
        alice.send("alice is not limited by bob")  # the bucket is per member
        assert bob.recv_text() == "alice: alice is not limited by bob"
        got = []
        while True:
            try:
                got.append(alice.recv_text(timeout=0.5))
            except TimeoutError:
                break
        assert 5 <= len(got) <= 8, got  # the burst, plus what 5/s refilled meanwhile
        assert got[:5] == [f"bob: burst {i}" for i in range(5)]  # the first ones pass
        numbers = [int(text.rsplit(" ", 1)[1]) for text in got]
        assert numbers == sorted(numbers) and all(text.startswith("bob: burst ") for text in got)
        rejected = 20 - len(got)
        metrics, _ = wait_for(
            lambda: (m := scrape(admin)) and dropped(m, "rate_limited") >= rejected and m,
            10.0, "the rate_limited drop counter")
        assert dropped(metrics, "rate_limited") >= rejected
        # After a pause the member chats again.
        def delivered() -> bool:
            bob.send("after the pause")
            try:
                return alice.recv_text(timeout=0.3) == "bob: after the pause"
            except TimeoutError:
                return False

        wait_for(delivered, 10.0, "bob's chat after the pause", interval=0)
        srv.stop()
        counters = final_counters(srv.log_text())
        assert sum(c.get("drops", {}).get("rate_limited", 0)
                   for c in counters.values()) >= rejected


def test_rooms_per_ip() -> None:
    with start_server("--max-rooms-per-ip", "2", workers=1) as srv:
        first = create(srv, "mine-1")
        create(srv, "mine-2")
        assert request_status(srv, Operation.CREATE, "mine-3", "host") == Status.RATE_LIMITED
        # Joining is not hosting, and other IPs have their own quota.
        assert request_status(srv, Operation.JOIN, "mine-2", "guest") == Status.OK
        assert request_status(srv, Operation.CREATE, "theirs", "host", bind_ip=H2) == Status.OK
        first.send("/exit")  # the host leaves: the room closes, the quota frees
        took = until_ok(srv, Operation.CREATE, "mine-3", "host", timeout=10.0)
        assert took < 5.0


def test_members_per_room() -> None:
    with start_server("--max-members", "3", workers=1) as srv:
        alice = create(srv, "small", "alice")
        join(H, srv.tcp_port, Operation.JOIN, "small", "bob")
        carol = join(H, srv.tcp_port, Operation.JOIN, "small", "carol")
        assert request_status(srv, Operation.JOIN, "small", "dave") == Status.ROOM_FULL
        assert request_status(srv, Operation.CREATE, "big", "dave") == Status.OK  # other rooms
        carol.send("/exit")
        until_ok(srv, Operation.JOIN, "small", "dave", timeout=10.0)
        assert request_status(srv, Operation.JOIN, "small", "eve") == Status.ROOM_FULL
        assert alice.recv_text() == JOINED.format("bob")


def test_stage1_client_table_is_bounded() -> None:
    with start_server("--max-stage1-clients", "3", "--inactivity-timeout", "2.5",
                      "--admin-port", "0", workers=1, stage1=True) as srv:
        admin = admin_address(srv.wait_log(r"admin http=").string)
        assert admin is not None
        port = srv.stage1_port
        socks = []
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((H, 0))
            socks.append(s)
        a, b, c, d = socks
        try:
            for s, name in ((a, "ann"), (b, "ben"), (c, "cat")):
                s.sendto(encode_stage1(name, ""), (H, port))  # remembered: the table is full
            a.sendto(encode_stage1("ann", "hello"), (H, port))
            for s in (b, c):
                s.settimeout(10)
                assert s.recv(4096) == encode_stage1("ann", "hello")
            d.sendto(encode_stage1("dan", "let me in"), (H, port))  # dropped: table full
            a.sendto(encode_stage1("ann", "after dan"), (H, port))
            for s in (b, c):
                assert s.recv(4096) == encode_stage1("ann", "after dan")  # not dan's
            d.settimeout(0.3)
            with pytest.raises((TimeoutError, socket.timeout)):
                d.recv(4096)
            wait_for(lambda: dropped(scrape(admin), "too_many_clients", "stage1") >= 1, 10.0,
                     "the too_many_clients drop counter")

            # Recovery: ben and cat go silent and are forgotten; dan gets a place.
            def dan_is_in() -> bool:
                a.sendto(encode_stage1("ann", ""), (H, port))
                d.sendto(encode_stage1("dan", "dan is in"), (H, port))
                a.settimeout(0.3)
                try:
                    while True:
                        if a.recv(4096) == encode_stage1("dan", "dan is in"):
                            return True
                except TimeoutError:
                    return False

            _, took = wait_for(dan_is_in, 15.0, "dan to be admitted", interval=0)
            assert took < 10.0
        finally:
            for s in socks:
                s.close()


# --- 2. authentication ----------------------------------------------------------------------------
def test_tokens_are_long_printable_and_never_repeat() -> None:
    with start_server(workers=2) as srv:
        def member(i: int) -> bytes:
            room, user = f"tok-{i // 100}", f"user-{i}"
            op = Operation.CREATE if i % 100 == 0 else Operation.JOIN
            response, complete = exchange(H, srv.tcp_port, encode_request(
                Request.of(op, room, RequestBody(user))))
            assert response.status == Status.OK and complete is not None
            return complete.token

        hosts = [member(i) for i in range(0, 1000, 100)]
        with ThreadPoolExecutor(8) as pool:
            guests = list(pool.map(member, [i for i in range(1000) if i % 100]))
        tokens = hosts + guests
        assert len(tokens) == 1000
        assert len(set(tokens)) == 1000
        assert len({t[1:] for t in tokens}) == 1000  # the random part alone never repeats
        for token in tokens:
            assert 22 <= len(token) <= 255
            assert all(0x21 <= b <= 0x7E for b in token)
        alphabet = set(b"".join(t[1:] for t in tokens))
        assert len(alphabet) >= 60  # base64url: not a counter, not hex


def test_token_from_another_ip_is_dropped_and_never_answered() -> None:
    with start_server("--admin-port", "0", workers=1) as srv:
        admin = admin_address(srv.wait_log(r"admin http=").string)
        assert admin is not None
        alice = create(srv, "bound", "alice")
        bob = join(H, srv.tcp_port, Operation.JOIN, "bound", "bob")
        assert alice.recv_text() == JOINED.format("bob")
        thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        thief.bind((H2, 0))
        try:
            for message in (b"", b"stolen chat", b"/exit"):  # keepalive, chat, leave
                thief.sendto(bytes([len(bob.room), len(bob.token)]) + bob.room + bob.token
                             + message, (H, srv.udp_port))
            bob.send("the real bob")
            assert alice.recv_text() == "bob: the real bob"  # first: nothing forged before
            alice.send("still yours")
            assert bob.recv_text() == "alice: still yours"  # bob was neither moved nor removed
            thief.settimeout(0.3)
            with pytest.raises((TimeoutError, socket.timeout)):
                thief.recv(4096)
            wait_for(lambda: dropped(scrape(admin), "wrong_ip") >= 3, 10.0, "wrong_ip drops")
        finally:
            thief.close()


def test_old_tokens_die_with_their_room_even_if_the_name_returns() -> None:
    with start_server(workers=2) as srv:
        old_host = create(srv, "phoenix", "alice")
        old_guest = join(H, srv.tcp_port, Operation.JOIN, "phoenix", "bob")
        assert old_host.recv_text() == JOINED.format("bob")
        old_host.send("/exit")
        assert old_guest.recv_text() == CLOSED
        new_host = until_reused(srv)
        new_guest = join(H, srv.tcp_port, Operation.JOIN, "phoenix", "carol")
        assert new_host.recv_text() == JOINED.format("carol")
        for old in (old_guest, old_host):  # same room name, same IP, dead tokens
            old.send("ghost")
            old.send("/exit")
        new_guest.send("alive")
        assert new_host.recv_text() == "carol: alive"  # first: no ghost, no closing
        new_host.send("and back")
        assert new_guest.recv_text() == "alice2: and back"
        for old in (old_host, old_guest):
            old.expect_nothing(timeout=0.2)


def until_reused(srv: Server) -> Peer:
    """Create 'phoenix' again as soon as control has seen the old room close."""
    def attempt() -> Peer | None:
        try:
            return create(srv, "phoenix", "alice2")
        except Exception as exc:  # ROOM_EXISTS until the worker's `closed` event lands
            if getattr(exc, "status", None) != Status.ROOM_EXISTS:
                raise
            return None

    return wait_for(attempt, 10.0, "the room name to be free")[0]


def test_no_password_token_or_chat_in_the_logs() -> None:
    password = "Pa55-hunter2-" + "q7x"
    wrong = "Wr0ng-guess-" + "z9k"
    chat = "very private chat " + "k3y"
    srv = start_server("--log-level", "debug", "--admin-port", "0", workers=2)
    try:
        admin = admin_address(srv.wait_log(r"admin http=").string)
        assert admin is not None
        alice = create(srv, "secret-room", "alice", password=password)
        assert request_status(srv, Operation.JOIN, "secret-room", "mallory", wrong) \
            == Status.INVALID_PASSWORD
        bob = join(H, srv.tcp_port, Operation.JOIN, "secret-room", "bob", password=password)
        assert alice.recv_text() == JOINED.format("bob")
        bob.send(chat)
        assert alice.recv_text() == f"bob: {chat}"
        bob.send("/exit")
        alice.send("/exit")
        metrics = scrape(admin)
        secrets = [password, wrong, chat, alice.token.decode(), bob.token.decode()]
        for name in metrics:
            assert not any(s in name for s in secrets), name
    finally:
        srv.stop()
    text = srv.log_text()
    assert "room 'secret-room' created" in text  # the log recorded this session
    for s in secrets:
        assert s not in text, f"{s!r} appears in the server log"
    for s in (alice.token, bob.token):  # nor any long piece of a token
        for i in range(0, len(s) - 12):
            assert s[i : i + 12].decode() not in text
