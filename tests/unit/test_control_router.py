"""The seam between ``ControlApp`` and where requests are served (control/router.py).

No sockets: a router here is a small recording object, and the app's supervisor offers
no worker, so a request placed ``Here`` fails the way a node without workers does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from control.config import Config
from control.registry import Registry, RegistryError
from control.router import HERE, Elsewhere, Here, LocalRouter, QuotaRefusal
from control.server import ControlApp, new_token
from wire.codes import Framing, Operation, Status
from wire.e2e import MemberInfo
from wire.tcrp import Details, MembersRequest, Request, RequestBody

CREATE = Request(Operation.CREATE, "r", b"r", RequestBody("alice", None, Framing.PLAIN))
DETAILS = Details(9001, True, 1000, 30.0, Framing.PLAIN, udp_host="127.0.1.2")


class NoWorkers:
    """A supervisor whose workers are all unavailable."""

    def available(self) -> list[int]:
        return []


@dataclass
class Recording:
    """A router that answers ``placement`` (or raises ``refusal``) and records calls."""

    placement: Here | Elsewhere = HERE
    refusal: RegistryError | None = None
    settled: list[tuple[str, bool]] = field(default_factory=list)
    udp_host: str | None = "127.0.1.1"

    async def place(self, request: Request, ip: str, secure: bool = False
                    ) -> Here | Elsewhere:
        if self.refusal is not None:
            raise self.refusal
        return self.placement

    async def own(self, request: Request, ip: str) -> Here:
        return HERE

    async def settle(self, request: Request, served: bool) -> None:
        self.settled.append((request.room, served))

    async def members(self, request: MembersRequest, ip: str
                      ) -> Here | tuple[MemberInfo, ...]:
        if self.refusal is not None:
            raise self.refusal
        return (MemberInfo("remote", True, None),)

    async def check_password_quota(self, ip: str, room: str) -> None:
        return None

    async def password_failed(self, ip: str, room: str) -> None:
        return None


def app_with(router: Recording | None, cfg: Config | None = None) -> ControlApp:
    cfg = cfg or Config()
    app = ControlApp(cfg, [9001], Registry(1, new_token), router)
    app.supervisor = NoWorkers()  # type: ignore[assignment]
    return app


def test_a_request_granted_elsewhere_is_not_served_here() -> None:
    ports: list[int] = []
    remote = Elsewhere(DETAILS, b"!Btoken", ports.append)
    router = Recording(placement=remote)
    app = app_with(router)
    details, member = asyncio.run(app.handle(CREATE, "127.0.9.1"))
    assert (details, member) == (DETAILS, remote)
    assert not app.registry.rooms and router.settled == []
    app.register(member, 5000)  # the registration goes where the member lives
    assert ports == [5000]


def test_a_request_placed_here_is_served_here_then_settled() -> None:
    router = Recording()
    app = app_with(router)
    with pytest.raises(RegistryError) as caught:
        asyncio.run(app.handle(CREATE, "127.0.9.1"))
    assert caught.value.status is Status.UNAVAILABLE  # no worker: served here, and failed
    assert router.settled == [("r", False)]
    assert app.quotas.rooms == {}  # the room's quota slot was given back


def test_the_app_counts_the_refusals_of_the_routers_quotas() -> None:
    router = Recording(refusal=QuotaRefusal(Status.RATE_LIMITED, "slow down", "conn_rate"))
    app = app_with(router)
    for call in (app.handle(CREATE, "127.0.9.1"),
                 app.members(MembersRequest("r", b"r", b"!Atoken"), "127.0.9.1")):
        with pytest.raises(QuotaRefusal):
            asyncio.run(call)
    assert app.quotas.refused["conn_rate"] == 2
    router.refusal = RegistryError(Status.ROOM_NOT_FOUND, "no room")
    with pytest.raises(RegistryError):
        asyncio.run(app.handle(CREATE, "127.0.9.1"))
    assert app.quotas.refused["conn_rate"] == 2  # a plain refusal is no quota's


def test_member_lists_come_from_the_router_when_another_node_answers() -> None:
    app = app_with(Recording())
    members = asyncio.run(app.members(MembersRequest("r", b"r", b"!Atoken"), "127.0.9.1"))
    assert members == (MemberInfo("remote", True, None),)


def test_the_details_carry_the_routers_udp_host() -> None:
    assert app_with(Recording()).router.udp_host == "127.0.1.1"
    assert app_with(None).router.udp_host is None  # one node: no udp_host


def test_the_local_router_applies_this_processs_quotas() -> None:
    app = app_with(None, Config(conn_rate_per_ip=2))
    assert isinstance(app.router, LocalRouter)
    ip = "127.0.9.2"
    assert asyncio.run(app.router.place(CREATE, ip)) is HERE
    assert asyncio.run(app.router.place(CREATE, ip)) is HERE
    with pytest.raises(RegistryError) as caught:
        asyncio.run(app.router.place(CREATE, ip))
    assert caught.value.status is Status.RATE_LIMITED and "retry in" in caught.value.reason
    assert not isinstance(caught.value, QuotaRefusal)  # Quotas counted it already
    assert app.quotas.refused["conn_rate"] == 1
    for _ in range(app.cfg.max_password_failures):
        asyncio.run(app.router.password_failed(ip, "r"))
    with pytest.raises(RegistryError, match="too many wrong passwords"):
        asyncio.run(app.router.check_password_quota(ip, "r"))
    asyncio.run(app.router.check_password_quota(ip, "other"))
