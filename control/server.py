"""The control process: TCRP over asyncio on the sans-IO session, the registry, the
supervisor, and the glue between them.

Per connection (``TcrpConnection``) the adapter only feeds bytes to ``Session``, writes
what it returns and arms one timer (the request deadline, then the 2-byte registration
window). ``ControlApp.handle`` decides a request: registry checks in the order of
docs/protocol.md §1.3, password hashing in a thread pool, then the ``member`` command to the
owning worker — the State 2 token is sent only after the worker acknowledged it, so a
client's very first datagram is never lost.

Password checks: a room remembers a keyed hash (HMAC-SHA256 under a per-process key) of
the password that last verified, so a join with the right password costs one HMAC, not a
scrypt run, and USERNAME_TAKEN / ROOM_FULL can be answered cheaply without skipping
INVALID_PASSWORD's precedence. Everything else that needs scrypt (a create with a
password, a password not seen verified) goes through ``KeyDerivations``'s per-IP budget.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from dataclasses import dataclass
from typing import cast

from control import passwords
from control.config import Config
from control.kdf import KeyDerivations
from control.quotas import Quotas, QuotaSettings
from control.registry import MemberRecord, Registry, RegistryError, RoomRecord
from control.router import Elsewhere, Here, LocalRouter, QuotaRefusal, Router
from control.session import (
    ConnectionClosed,
    Registration,
    RequestRejected,
    Session,
)
from control.supervisor import Supervisor
from control.tls import HandshakeSlots
from relay.ipc import Ack, Bound, Closed, CloseRoom, Left, Rebind, Register
from relay.steering import worker_tag
from wire import dgmac
from wire.codes import Framing, Operation, Reason, Status
from wire.dgmac import DatagramKey
from wire.e2e import MemberInfo
from wire.limits import REGISTRATION_WINDOW_S, RESUME_SECRET_BYTES, max_message_bytes
from wire.tcrp import NEED_DATA, ROOM_EPOCH_BYTES, Details, MembersRequest, Request

log = logging.getLogger("ocm.control")

TOKEN_RANDOM_BYTES = 24
"""192 bits from ``secrets``: 32 base64url characters after the worker tag (33 in all)."""


def new_token(worker: int) -> bytes:
    """The worker tag (steering byte) + 32 random base64url characters."""
    return worker_tag(worker) + secrets.token_urlsafe(TOKEN_RANDOM_BYTES).encode()


def quota_settings(cfg: Config) -> QuotaSettings:
    return QuotaSettings(cfg.max_conns_per_ip, cfg.conn_rate_per_ip, cfg.max_password_failures,
                         cfg.password_failure_window, cfg.max_rooms_per_ip,
                         cfg.kdf_rate_per_ip, cfg.kdf_concurrency_per_ip, cfg.kdf_queue)


class _KeyedLock:
    """An asyncio.Lock with the number of tasks holding or awaiting it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@dataclass(slots=True)
class RoomActivity:
    """What happened to rooms since the last summary line. One INFO line per room would
    be thousands a second under load; each event is a DEBUG line, and ``take`` feeds the
    periodic INFO summary."""

    created: int = 0
    closed: int = 0
    evicted: int = 0

    def take(self) -> RoomActivity:
        """The counts so far, and start again from zero."""
        taken = RoomActivity(self.created, self.closed, self.evicted)
        self.created = self.closed = self.evicted = 0
        return taken


class ControlApp:
    """Decides requests (through its ``Router``: this node, or a cluster) and serves them
    on this node's workers."""

    def __init__(self, cfg: Config, udp_ports: list[int], registry: Registry,
                 router: Router | None = None) -> None:
        self.quotas = Quotas(quota_settings(cfg))
        self.router: Router = router if router is not None else LocalRouter(self.quotas)
        self._cfg = cfg
        self.udp_ports = udp_ports
        self.registry = registry
        self.activity = RoomActivity()  # summed up at INFO every log_summary_interval
        self.supervisor: Supervisor | None = None
        self.accepting = True
        self.connections: set[TcrpConnection] = set()
        self.handshakes = HandshakeSlots()
        """TLS handshakes in progress on the TLS port (capped in all and per IP)."""
        self.kdf = KeyDerivations(self.quotas)
        self.password_cache_hits = 0
        self._verifying: dict[tuple[str, bytes],
                              tuple[RoomRecord, asyncio.Future[tuple[bool, RegistryError | None]]]
                              ] = {}
        """Password checks running, by (room, keyed hash): at most one per connection."""
        self._password_locks: dict[tuple[str, str], _KeyedLock] = {}
        """Held only while a password check for (ip, room) runs or waits: bounded by the
        number of connections."""
        self.joins: dict[str, int] = {}
        """Requests answered, by status name (metrics)."""

    @property
    def cfg(self) -> Config:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: Config) -> None:
        """Live reload (SIGHUP): quotas follow the new settings at once."""
        self._cfg = cfg
        self.quotas.settings = quota_settings(cfg)

    # --- requests -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if not self.accepting or self.supervisor is None:
            raise RegistryError(Status.UNAVAILABLE, "the server is shutting down")

    async def handle(self, request: Request, ip: str, secure: bool = False
                     ) -> tuple[Details, MemberRecord | Elsewhere]:
        """Grant a client's request or raise ``RegistryError`` with the status to answer:
        the router places it (here, or on another node that grants it). ``secure``: the
        request came over TLS, so the member gets a datagram key (wire/dgmac.py) from the
        node that serves it, here or the room's owner (cluster)."""
        self._check_open()
        try:
            placement = await self.router.place(request, ip, secure)
            if isinstance(placement, Elsewhere):
                return placement.details, placement
            return await self._serve(request, ip, secure)
        except QuotaRefusal as exc:
            self.quotas.refused[exc.quota] += 1
            raise

    async def handle_routed(self, request: Request, ip: str, secure: bool = False
                            ) -> tuple[Details, MemberRecord]:
        """Grant a request that another node's router placed on this node; ``secure``:
        the client sent it to that node over TLS (the member gets a datagram key)."""
        self._check_open()
        try:
            await self.router.own(request, ip)
            return await self._serve(request, ip, secure)
        except QuotaRefusal as exc:
            self.quotas.refused[exc.quota] += 1
            raise

    async def _serve(self, request: Request, ip: str, secure: bool = False
                     ) -> tuple[Details, MemberRecord]:
        served = False
        try:
            granted = await self._serve_here(request, ip, secure)
            served = True
            return granted
        finally:
            await self.router.settle(request, served)

    async def _serve_here(self, request: Request, ip: str, secure: bool = False
                          ) -> tuple[Details, MemberRecord]:
        """Serve a request on this node's workers (the router placed it here). A request
        that came over TLS (``secure``) gets a datagram key, installed with the member."""
        self._check_open()
        body = request.body
        if body.framing is Framing.OCM1R and not self.cfg.reliable:
            body = dataclasses.replace(body, framing=Framing.OCM1)
            request = dataclasses.replace(request, body=body)
        if body.resume is not None and request.operation is Operation.JOIN:
            if body.framing is not Framing.OCM1R:
                raise RegistryError(Status.INVALID_REQUEST, "resume needs ocm1r framing")
            return await self._resume(request, ip, secure)
        if request.operation is Operation.CREATE:
            member = await self._create(request, ip)
        else:
            member = await self._join(request, ip)
        if secure:
            member.datagram_key = secrets.token_bytes(dgmac.KEY_BYTES)
        if not await self._install(member):
            if member.alive:
                self.registry.remove_member(member.token)
                if member.is_host:  # the room never went live: give its quota slot back
                    self.quotas.room_closed(member.room.host_ip)
            if member.is_host:
                raise RegistryError(Status.UNAVAILABLE, "the relay worker did not take the "
                                    "room; try again")
            raise RegistryError(Status.ROOM_NOT_FOUND, f"room {request.room!r} closed")
        if member.is_host:
            self.registry.mark_live(member.room)
            self.activity.created += 1
            log.debug("room %r created on worker %d (%d rooms)", member.room.name,
                      member.room.worker, len(self.registry.rooms))
        if member.framing is Framing.OCM1R:
            self.registry.set_resume(member, secrets.token_urlsafe(RESUME_SECRET_BYTES))
        return self._details(request, member), member

    def _details(self, request: Request, member: MemberRecord) -> Details:
        room = member.room
        return Details(
            udp_port=self.udp_ports[room.worker],
            host=member.is_host,
            # A sealed datagram carries the MAC trailer as well (docs/protocol.md §8).
            max_message=max_message_bytes(
                len(request.room_raw),
                len(member.token) + (dgmac.TRAILER_BYTES if member.datagram_key else 0),
                len(member.username.encode()), member.framing is Framing.OCM1R),
            inactivity_timeout=self.cfg.inactivity_timeout,
            framing=member.framing,
            e2e=room.e2e,
            members=member.claimed if room.e2e else (),
            udp_host=self.router.udp_host,
            resume=member.resume,
            resumed=member.resume is not None and request.body.resume is not None,
            datagram_key=member.datagram_key,
            epoch=room.epoch,
        )

    async def _resume(self, request: Request, ip: str, secure: bool = False
                      ) -> tuple[Details, MemberRecord]:
        """A join with ``"resume"`` (ocm1r): the same membership moves to ``ip`` with a
        new token and a new secret; the worker keeps its place and history. The secret
        stands for the password. Over TLS (``secure``) it gets a new datagram key, else
        none (as a join would)."""
        assert self.supervisor is not None and request.body.resume is not None
        room = self.registry.live_room(request.room)
        token = self.registry.issue_token(room.worker)
        member, old = self.registry.resume(request.room, request.body.username,
                                           request.body.resume, ip, token)
        self.registry.set_resume(member, secrets.token_urlsafe(RESUME_SECRET_BYTES))
        member.datagram_key = secrets.token_bytes(dgmac.KEY_BYTES) if secure else None
        member.placement = None  # the worker uses the new key as it is
        key = None if member.datagram_key is None else DatagramKey(member.datagram_key)
        try:
            reply = await self.supervisor.call(room.worker, Rebind(0, old, ip, token, key))
        except (ConnectionError, TimeoutError):
            reply = None
        if not (isinstance(reply, Ack) and reply.ok and member.alive):
            self.registry.remove_member(token)
            raise RegistryError(Status.ROOM_NOT_FOUND, "nothing to resume: the membership "
                                "ended meanwhile")
        log.info("member resumed in a room on worker %d", room.worker)
        return self._details(request, member), member

    async def members(self, request: MembersRequest, ip: str) -> tuple[MemberInfo, ...]:
        """Answer Operation 3 (docs/e2e.md §2.4): every member of the room, the asker
        included, or raise ``RegistryError`` (status 2, 4, 8 or 9). The router says
        whether this node's registry answers or another node did."""
        self._check_open()
        try:
            answer = await self.router.members(request, ip)
        except QuotaRefusal as exc:
            self.quotas.refused[exc.quota] += 1
            raise
        if not isinstance(answer, Here):
            return answer
        member = self.registry.member_for(request.room, request.token, ip)
        return member.room.member_infos()

    async def _create(self, request: Request, ip: str) -> MemberRecord:
        assert self.supervisor is not None
        if request.room in self.registry.rooms:
            raise RegistryError(Status.ROOM_EXISTS, f"a room named {request.room!r} exists")
        if not self.quotas.may_host(ip):
            raise RegistryError(Status.RATE_LIMITED, f"your address hosts "
                                f"{self.cfg.max_rooms_per_ip} rooms already")
        # Take the quota slot before the first await, or concurrent creates from one IP
        # would all pass the check above. The room gives it back when it closes
        # (``on_worker_event``) or if it never goes live (``handle``).
        self.quotas.room_opened(ip)
        try:
            worker = self.registry.place(self.supervisor.available())
            if worker is None:
                raise RegistryError(Status.UNAVAILABLE, "no relay worker is available")
            body = request.body
            password = None
            if body.password:
                password = await self.kdf.run(ip, passwords.hash_password, body.password)
            return self.registry.create(request.room, body.username, ip, body.framing,
                                        worker, password, body.e2e, body.keys,
                                        secrets.token_bytes(ROOM_EPOCH_BYTES))
        except BaseException:
            self.quotas.room_closed(ip)
            raise

    async def _join(self, request: Request, ip: str) -> MemberRecord:
        room = self.registry.live_room(request.room)
        body = request.body
        if room.password is not None:
            # One check at a time per (IP, room): the failure limit is read and written
            # around a slow hash, so concurrent guesses must not all pass the check first.
            key = (ip, room.name)
            entry = self._password_locks.get(key)
            if entry is None:
                entry = self._password_locks[key] = _KeyedLock()
            entry.users += 1
            try:
                async with entry.lock:
                    await self._check_password(ip, room, body.password)
            finally:
                entry.users -= 1
                if not entry.users:
                    del self._password_locks[key]
        return self.registry.join(room, body.username, ip, body.framing,
                                  self.cfg.max_members, body.keys)

    async def _check_password(self, ip: str, room: RoomRecord, password: str | None) -> None:
        """Raise RATE_LIMITED or INVALID_PASSWORD, or return if ``password`` opens ``room``."""
        await self.router.check_password_quota(ip, room.name)
        if not password:
            # A missing password guesses nothing, so it is not a failed attempt: clients
            # may try without one to learn that the room is protected (docs/protocol.md).
            raise RegistryError(Status.INVALID_PASSWORD, "this room needs a password")
        stored = room.password
        mac = passwords.password_mac(password, stored.salt)
        if room.password_mac is not None and passwords.same(mac, room.password_mac):
            ok = True  # verified before: no scrypt (docs/security.md)
            self.password_cache_hits += 1
        else:
            ok = await self._verify_once(ip, room, password, mac)
        if not ok:
            await self.router.password_failed(ip, room.name)
            raise RegistryError(Status.INVALID_PASSWORD, "wrong password")

    async def _verify_once(self, ip: str, room: RoomRecord, password: str, mac: bytes) -> bool:
        """scrypt-verify ``password`` for ``room``, once for all the checks of the same
        password that arrive while it runs (joins from many IPs at once, before the first
        success is cached). Raises RATE_LIMITED (``KeyDerivations``) to all of them."""
        key = (room.name, mac)
        flight = self._verifying.get(key)
        if flight is not None and flight[0] is room:
            ok, refusal = await asyncio.shield(flight[1])
        else:
            done: asyncio.Future[tuple[bool, RegistryError | None]] = \
                asyncio.get_running_loop().create_future()
            entry = self._verifying[key] = (room, done)
            ok, refusal = False, None
            try:
                ok = await self.kdf.run(ip, passwords.verify_password, password, room.password)
            except RegistryError as exc:
                refusal = exc
            finally:
                if self._verifying.get(key) is entry:
                    del self._verifying[key]
                done.set_result((ok, refusal))
            if ok:
                room.password_mac = mac
        if refusal is not None:
            raise RegistryError(refusal.status, refusal.reason)
        return ok

    async def _install(self, member: MemberRecord) -> bool:
        """Install ``member`` on its worker; True once the worker holds it."""
        assert self.supervisor is not None
        index = member.room.worker
        try:
            reply = await self.supervisor.call(index, member.command(0))
            return isinstance(reply, Ack) and reply.ok and member.alive
        except ConnectionError:
            # The worker died with the command in flight; its replacement is seeded
            # from the registry, this member included.
            try:
                await asyncio.wait_for(self.supervisor.handles[index].ready.wait(), 10.0)
            except TimeoutError:
                return False
            return member.alive
        except TimeoutError:
            return False

    def register(self, member: MemberRecord | Elsewhere, port: int) -> None:
        """The 2-byte UDP port registration (§1.4)."""
        if isinstance(member, Elsewhere):
            member.register(port)  # admitted by another node: pass it on
            return
        if member.alive and self.supervisor is not None:
            self.supervisor.send(member.room.worker, Register(member.token, port))

    def close_room(self, room: str, reason: str) -> None:
        """Close one room now (cluster mode: another node holds its name)."""
        record = self.registry.rooms.get(room)
        if record is not None and self.supervisor is not None:
            self.supervisor.send(record.worker, CloseRoom(room, reason))

    async def rebind(self, member: MemberRecord, ip: str, seq: int | None = None) -> bool:
        """The member's datagrams come from ``ip`` from now on (cluster mode: relayed
        through the node at ``ip``). The registry re-seeds a restarted worker with it. A
        member with a datagram key moves only if its worker would accept ``seq``, the
        ``Seq`` of a datagram whose tag the caller checked (False if not)."""
        if self.supervisor is not None:
            try:
                reply = await self.supervisor.call(member.room.worker,
                                                   Rebind(0, member.token, ip, seq=seq))
            except (ConnectionError, TimeoutError):
                reply = None  # a replacement worker is seeded with the new IP
            if isinstance(reply, Ack) and not reply.ok:
                return False
        member.ip = ip
        return True

    # --- worker events ----------------------------------------------------------------------
    def on_worker_event(self, worker: int, event: Bound | Left | Closed) -> None:
        if isinstance(event, Bound):
            self.registry.bind(event.token, (event.ip, event.port), event.proven)
        elif isinstance(event, Left):
            member = self.registry.remove_member(event.token)
            if member is not None and event.reason is not Reason.EXIT:
                self.activity.evicted += 1
                log.debug("member evicted (%s) from a room on worker %d",
                          event.reason.value, worker)
        else:
            room = self.registry.close_room(event.room)
            if room is not None:
                self.quotas.room_closed(room.host_ip)
                self.activity.closed += 1
                log.debug("room %r closed (%s) on worker %d (%d rooms)", room.name,
                          event.reason, worker, len(self.registry.rooms))

    def count(self, status: Status) -> None:
        self.joins[status.name] = self.joins.get(status.name, 0) + 1


class TcrpConnection(asyncio.Protocol):
    """One TCRP connection: bytes in and out of a ``Session``, one timer at a time.

    ``admitted``: the connection was accepted and counted before this protocol got it
    (the TLS port, ``control.tlsport``); ``deadline``: the loop time by which its request
    must be in (from accept), instead of ``tcp_timeout`` from now."""

    def __init__(self, app: ControlApp, admitted: bool = False,
                 deadline: float | None = None) -> None:
        self.app = app
        self.session = Session(app.cfg.max_payload)
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.member: MemberRecord | Elsewhere | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.counted = admitted
        self.deadline = deadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        if not self.counted and not self.app.quotas.open_connection(self.ip):
            # Over the per-IP cap: hold nothing for it, not even a request buffer.
            self.ip = ""
            self.transport.abort()
            self.transport = None
            return
        self.counted = True
        self.app.connections.add(self)
        loop = asyncio.get_running_loop()
        left = self.app.cfg.tcp_timeout if self.deadline is None else \
            max(0.0, self.deadline - loop.time())
        self.timer = loop.call_later(left, self._on_timeout)

    @property
    def secure(self) -> bool:
        """The connection is TLS: a member it creates gets a datagram key (wire/dgmac.py)."""
        transport = self.transport
        return transport is not None and transport.get_extra_info("ssl_object") is not None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.counted = False
            self.app.quotas.close_connection(self.ip)
        self.app.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.session.receive_data(b"")
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        self.session.receive_data(b"")
        self._pump()
        return True  # keep the write side open to answer a half-closed client

    def _pump(self) -> None:
        event = self.session.next_event()
        if event is NEED_DATA:
            return
        if isinstance(event, Request):
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.task = asyncio.ensure_future(self._handle(event))
        elif isinstance(event, MembersRequest):
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.task = asyncio.ensure_future(self._answer_members(event))
        elif isinstance(event, RequestRejected):
            self.app.count(event.status)
            self._close(self.session.send_error(event.status, event.reason))
        elif isinstance(event, Registration):
            if event.port is not None and self.member is not None:
                self.app.register(self.member, event.port)
            self._close()
        elif isinstance(event, ConnectionClosed):
            self._close()

    async def _handle(self, request: Request) -> None:
        try:
            details, member = await self.app.handle(request, self.ip, self.secure)
        except RegistryError as exc:
            self.app.count(exc.status)
            self._close(self.session.send_error(exc.status, exc.reason))
            return
        except Exception:
            log.exception("internal error handling a request")
            self.app.count(Status.INTERNAL_ERROR)
            self._close(self.session.send_error(Status.INTERNAL_ERROR, "internal error"))
            return
        self.app.count(Status.OK)
        self.member = member
        if self.transport is None:
            return  # the client left; its member stays until inactivity, as for UDP loss
        self.transport.write(self.session.send_ok(details, member.token))
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(REGISTRATION_WINDOW_S, self._on_registration_timeout)
        self._pump()

    async def _answer_members(self, request: MembersRequest) -> None:
        """Operation 3: answered from the registry (in cluster mode, the owner's), then
        closed (no State 2)."""
        try:
            members = await self.app.members(request, self.ip)
        except RegistryError as exc:
            self.app.count(exc.status)
            self._close(self.session.send_error(exc.status, exc.reason))
            return
        except Exception:
            log.exception("internal error answering a member list")
            self.app.count(Status.INTERNAL_ERROR)
            self._close(self.session.send_error(Status.INTERNAL_ERROR, "internal error"))
            return
        self.app.count(Status.OK)
        self._close(self.session.send_members(members))

    def _on_timeout(self) -> None:
        self.timer = None
        log.debug("TCRP request deadline passed for %s", self.ip)
        if self.transport is not None:
            self.transport.abort()

    def _on_registration_timeout(self) -> None:
        self.timer = None
        self.session.timeout()
        self._close()

    def _close(self, data: bytes = b"") -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            if data:
                self.transport.write(data)
            self.transport.close()
