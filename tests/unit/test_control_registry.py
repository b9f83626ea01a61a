"""The registry: room and member lifecycle, placement, re-seeding order."""

from __future__ import annotations

import itertools

import pytest

from control.registry import Registry, RegistryError
from wire.codes import Framing, Status


def make(workers: int = 2) -> Registry:
    counter = itertools.count()
    return Registry(workers, lambda w: bytes([0x41 + w]) + b"%032d" % next(counter))


def test_create_join_and_statuses_in_order() -> None:
    reg = make()
    host = reg.create("r", "alice", "127.0.0.1", Framing.PLAIN, 0, None)
    assert host.token[:1] == b"A" and host.is_host
    with pytest.raises(RegistryError) as exc:
        reg.live_room("r")  # not live until the worker acknowledged it
    assert exc.value.status == Status.ROOM_NOT_FOUND
    with pytest.raises(RegistryError) as exc:
        reg.create("r", "x", "127.0.0.1", Framing.PLAIN, 1, None)
    assert exc.value.status == Status.ROOM_EXISTS
    reg.mark_live(host.room)
    room = reg.live_room("r")
    bob = reg.join(room, "bob", "127.0.0.2", Framing.OCM1, max_members=3)
    assert bob.room is room and not bob.is_host
    with pytest.raises(RegistryError) as exc:
        reg.join(room, "bob", "127.0.0.1", Framing.PLAIN, max_members=3)
    assert exc.value.status == Status.USERNAME_TAKEN
    reg.join(room, "carol", "127.0.0.1", Framing.PLAIN, max_members=3)
    with pytest.raises(RegistryError) as exc:
        reg.join(room, "dave", "127.0.0.1", Framing.PLAIN, max_members=3)
    assert exc.value.status == Status.ROOM_FULL
    assert reg.load == [3, 0]


def test_member_leaving_frees_name_and_host_leaving_closes_room() -> None:
    reg = make()
    host = reg.create("r", "alice", "127.0.0.1", Framing.PLAIN, 0, None)
    reg.mark_live(host.room)
    bob = reg.join(host.room, "bob", "127.0.0.1", Framing.PLAIN, 10)
    assert reg.remove_member(bob.token) is bob and not bob.alive
    assert reg.remove_member(bob.token) is None
    bob2 = reg.join(host.room, "bob", "127.0.0.1", Framing.PLAIN, 10)
    reg.remove_member(host.token)
    assert "r" not in reg.rooms and bob2.token not in reg.tokens and not bob2.alive
    assert reg.load == [0, 0]
    again = reg.create("r", "zed", "127.0.0.1", Framing.PLAIN, 1, None)
    assert again.token not in (host.token, bob.token, bob2.token)


def test_close_room_revokes_every_token() -> None:
    reg = make()
    host = reg.create("r", "alice", "127.0.0.1", Framing.PLAIN, 1, None)
    reg.mark_live(host.room)
    bob = reg.join(host.room, "bob", "127.0.0.1", Framing.PLAIN, 10)
    assert reg.close_room("r") is host.room
    assert reg.tokens == {} and reg.load == [0, 0] and not bob.alive
    assert reg.close_room("r") is None


def test_least_loaded_placement() -> None:
    reg = make(3)
    assert reg.place([0, 1, 2]) == 0
    host = reg.create("r", "alice", "127.0.0.1", Framing.PLAIN, 0, None)
    assert reg.place([0, 1, 2]) == 1
    assert reg.place([0]) == 0
    assert reg.place([]) is None
    reg.mark_live(host.room)


def test_members_of_worker_host_first_with_addresses_for_reseeding() -> None:
    reg = make()
    host = reg.create("r", "alice", "127.0.0.1", Framing.PLAIN, 1, None)
    reg.mark_live(host.room)
    bob = reg.join(host.room, "bob", "127.0.0.1", Framing.OCM1, 10)
    reg.bind(bob.token, ("127.0.0.1", 4000), proven=True)
    reg.bind(b"unknown", ("127.0.0.1", 1))
    other = reg.create("s", "x", "127.0.0.1", Framing.PLAIN, 0, None)
    commands = [m.command(7) for m in reg.members_of(1)]
    assert [c.user for c in commands] == ["alice", "bob"]
    assert commands[0].host and commands[0].addr is None and not commands[0].announced
    assert commands[1].addr == ("127.0.0.1", 4000) and commands[1].announced
    assert commands[1].proven and not commands[0].proven
    assert commands[1].framing is Framing.OCM1 and commands[1].id == 7
    assert [m.username for m in reg.members_of(0)] == [other.username]
    assert reg.statistics() == {"rooms": 2, "members": 3, "load": [1, 2]}


def test_encrypted_room_keys_member_lists_and_limit() -> None:
    from wire.e2e import MemberInfo, PublicKeys
    from wire.limits import MAX_E2E_MEMBERS

    keys = PublicKeys(b"x" * 32, b"e" * 32)
    reg = make()
    host = reg.create("r", "alice", "127.0.0.1", Framing.OCM1, 0, None, e2e=True, keys=keys)
    reg.mark_live(host.room)
    room = host.room
    with pytest.raises(RegistryError) as exc:
        reg.join(room, "bob", "127.0.0.1", Framing.OCM1, 1000)  # no keys
    assert exc.value.status == Status.INVALID_REQUEST
    bob = reg.join(room, "bob", "127.0.0.1", Framing.OCM1, 1000, keys)
    assert room.member_infos(exclude=bob) == (MemberInfo("alice", True, keys),)
    assert reg.member_for("r", bob.token, "127.0.0.1") is bob
    for token, ip in ((bob.token, "127.0.0.2"), (b"nope", "127.0.0.1")):
        with pytest.raises(RegistryError) as exc:
            reg.member_for("r", token, ip)
        assert exc.value.status == Status.INVALID_REQUEST
    bob.ip = "127.0.1.2"  # relayed through a cluster node: its datagrams come from there
    assert reg.member_for("r", bob.token, "127.0.0.1") is bob  # still its holder's IP
    with pytest.raises(RegistryError):
        reg.member_for("r", bob.token, "127.0.1.2")  # the relay's address proves nothing
    assert bob.issued_ip == "127.0.0.1"
    for i in range(MAX_E2E_MEMBERS - 2):
        reg.join(room, f"u{i}", "127.0.0.1", Framing.OCM1, 1000, keys)
    with pytest.raises(RegistryError) as exc:
        reg.join(room, "late", "127.0.0.1", Framing.OCM1, 1000, keys)
    assert exc.value.status == Status.ROOM_FULL
    # a plain room ignores keys
    plain = reg.create("p", "alice", "127.0.0.1", Framing.OCM1, 1, None, keys=keys)
    assert plain.keys is None and plain.info() == MemberInfo("alice", True)


def test_usernames_are_unique_up_to_nfc() -> None:
    """"é" as one code point and as e + combining acute are the same member name
    (docs/protocol.md §1.2); the name kept is the one the member sent."""
    reg = make()
    host = reg.create("r", "\u00e9", "127.0.0.1", Framing.PLAIN, 0, None)
    reg.mark_live(host.room)
    with pytest.raises(RegistryError) as exc:
        reg.join(host.room, "e\u0301", "127.0.0.1", Framing.PLAIN, 10)
    assert exc.value.status == Status.USERNAME_TAKEN
    bob = reg.join(host.room, "bo\u0301b", "127.0.0.1", Framing.PLAIN, 10)
    assert bob.username == "bo\u0301b"
    assert reg.remove_member(bob.token) is bob
    assert reg.join(host.room, "b\u00f3b", "127.0.0.1", Framing.PLAIN, 10).username == "b\u00f3b"


def test_a_bound_address_shares_the_member_ip_string() -> None:
    reg = make()
    host = reg.create("r", "alice", "127.0.0.1", Framing.PLAIN, 0, None)
    ip = "".join(["127.0.", "0.1"])  # equal, but another object (as from the pipe)
    assert ip == host.ip and ip is not host.ip
    reg.bind(host.token, (ip, 4000), proven=True)
    assert host.addr == ("127.0.0.1", 4000) and host.addr[0] is host.ip
    reg.bind(host.token, ("10.0.0.9", 4001))  # cluster mode: another node's IP, as given
    assert host.addr == ("10.0.0.9", 4001) and not host.proven

