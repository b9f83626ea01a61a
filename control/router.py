"""Where a request is served: the seam between ``ControlApp`` and cluster mode.

``ControlApp`` asks its ``Router`` before it serves anything: ``place`` a create or join
(``Here``: serve it on this node's workers, then ``settle``; or ``Elsewhere``: another
node granted it), ``members`` for Operation 3, and ``check_password_quota`` /
``password_failed`` for the wrong-password limit. The router never writes into the app
and serves nothing itself (it may read the registry and the live settings): what it
refuses it raises as ``RegistryError``, and a refusal by a quota the router keeps itself
(the cluster's, in Redis) as ``QuotaRefusal``, which the app counts. ``LocalRouter`` is
one node; ``control.clusterroute.ClusterRouter`` is a node of a cluster.

``Node`` is what a cluster may ask of this node's app when another node forwards a
request to it (control/clusterroute.py, the link server): grant a request routed here,
pass on a registration, read the registry, and order its workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from control.config import Config
from control.quotas import Quotas, retry_seconds
from control.registry import MemberRecord, Registry, RegistryError
from wire.codes import Status
from wire.e2e import MemberInfo
from wire.tcrp import Details, MembersRequest, Request


class QuotaRefusal(RegistryError):
    """A refusal by a per-IP quota that the router keeps: the app counts it as ``quota``
    (one of ``Quotas.refused``'s keys)."""

    def __init__(self, status: Status, reason: str, quota: str) -> None:
        super().__init__(status, reason)
        self.quota = quota


@dataclass(frozen=True, slots=True)
class Here:
    """Serve the request on this node's workers (then ``Router.settle`` it)."""


HERE = Here()


@dataclass(frozen=True, slots=True, eq=False)
class Elsewhere:
    """Another node granted the request: what to answer, and where the registration goes."""

    details: Details
    token: bytes
    register: Callable[[int], None]
    """Pass the member's 2-byte UDP port registration on to the node that owns it."""


def password_refusal(wait: float) -> str:
    return ("too many wrong passwords for this room from your address; retry in "
            f"{retry_seconds(wait)} s")


class Router(Protocol):
    @property
    def udp_host(self) -> str | None:
        """The IP sent as ``details.udp_host`` (cluster mode), else None."""

    async def place(self, request: Request, ip: str, secure: bool = False
                    ) -> Here | Elsewhere:
        """Check the per-IP request rate, then decide where ``request`` is served.
        ``secure``: it came over TLS, so the node that serves it gives the member a
        datagram key (wire/dgmac.py)."""

    async def own(self, request: Request, ip: str) -> Here:
        """Take a request that another node's router placed here (no rate check: that
        node made it); raise ``RegistryError`` if this node cannot serve it."""

    async def settle(self, request: Request, served: bool) -> None:
        """After serving a request placed ``Here``: ``served`` is whether it succeeded."""

    async def members(self, request: MembersRequest, ip: str
                      ) -> Here | tuple[MemberInfo, ...]:
        """Check the per-IP request rate; ``Here`` or the member list from the owner."""

    async def check_password_quota(self, ip: str, room: str) -> None:
        """Raise RATE_LIMITED while ``ip`` has too many wrong passwords for ``room``."""

    async def password_failed(self, ip: str, room: str) -> None:
        """Count a wrong password of ``ip`` for ``room``."""


class LocalRouter:
    """One node: everything is served here, the quotas are this process's."""

    udp_host = None

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    def _check_rate(self, ip: str, reason: str) -> None:
        now = time.monotonic()
        if not self.quotas.allow_request(ip, now):
            raise RegistryError(Status.RATE_LIMITED, reason.format(
                retry_seconds(self.quotas.request_retry_after(ip, now))))

    async def place(self, request: Request, ip: str, secure: bool = False) -> Here:
        self._check_rate(ip, "too many requests from your address; retry in {} s")
        return HERE

    async def own(self, request: Request, ip: str) -> Here:
        return HERE

    async def settle(self, request: Request, served: bool) -> None:
        return None

    async def members(self, request: MembersRequest, ip: str) -> Here:
        self._check_rate(ip, "too many requests from your address; slow down")
        return HERE

    async def check_password_quota(self, ip: str, room: str) -> None:
        now = time.monotonic()
        if self.quotas.password_blocked(ip, room, now):
            raise RegistryError(Status.RATE_LIMITED, password_refusal(
                self.quotas.password_retry_after(ip, room, now)))

    async def password_failed(self, ip: str, room: str) -> None:
        self.quotas.password_failed(ip, room, time.monotonic())


class Node(Protocol):
    """What the cluster may ask of this node's app (``ControlApp`` is one)."""

    @property
    def cfg(self) -> Config:
        """The live settings (they change on SIGHUP)."""

    @property
    def registry(self) -> Registry: ...

    async def handle_routed(self, request: Request, ip: str, secure: bool = False
                            ) -> tuple[Details, MemberRecord]:
        """Grant a request that another node's router placed on this node (``secure``:
        the client sent it over TLS)."""

    def register(self, member: MemberRecord, port: int) -> None:
        """The member's 2-byte UDP port registration."""

    def close_room(self, room: str, reason: str) -> None:
        """Close one room now (its worker tells its members)."""

    async def rebind(self, member: MemberRecord, ip: str, seq: int | None = None) -> bool:
        """The member's datagrams come from ``ip`` from now on; for a member with a
        datagram key only if ``seq`` (of a datagram whose tag was checked) is fresh
        (False if not)."""
