"""Cluster mode, the owner's side of the link: requests from other nodes for this node's rooms.

One request per connection (control/clusterlink.py): a ``Forward`` is handed to this
node's app as a request routed here (``Node.handle_routed``), and the member's
registration that follows is passed to it; a ``MembersQuery`` is answered from this
node's registry; a ``RelayRequest`` rebinds a member to the node that relays its
datagrams (control/clusterudp.py) and tells that node the member's datagram key. A
request whose MAC does not verify is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

from control import clusterlink as link
from control.clusterleases import NodeInfo
from control.registry import RegistryError
from control.router import Node
from wire import dgmac
from wire.codes import Status
from wire.limits import REGISTRATION_WINDOW_S

log = logging.getLogger("ocm.cluster")


async def read_body(reader: asyncio.StreamReader,
                    limit: int = link.MAX_LINK_FRAME_BYTES) -> bytes:
    """One frame's body from the link (``LinkError`` past ``limit``, before reading it)."""
    header = await reader.readexactly(link.LENGTH.size)
    return await reader.readexactly(link.frame_length(header, limit))


class LinkServer:
    """Serves the link for ``node``; ``serve`` is the ``asyncio.start_server`` callback."""

    def __init__(self, secret: bytes, node: Node,
                 lookup: Callable[[str], Awaitable[NodeInfo | None]],
                 moved: Callable[[str], bool], counters: dict[str, int]) -> None:
        self.secret = secret
        self.node = node
        self.lookup = lookup
        """The live node of an id (the request's ``origin``), or None."""
        self.moved = moved
        """Whether a room's name now belongs to another node (no new members here)."""
        self.counters = counters
        """The cluster's counters: ``served_for_others``, ``link_refused`` (a bad MAC or
        an oversized frame) and ``link_capped`` (over a connection cap) count here."""
        self.connections = 0
        self.per_ip: dict[str, int] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One link connection, within the connection caps."""
        peer = writer.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else ""
        if (self.connections >= link.MAX_LINK_CONNECTIONS
                or self.per_ip.get(ip, 0) >= link.MAX_LINK_CONNECTIONS_PER_IP):
            self.counters["link_capped"] += 1
            writer.transport.abort()
            return
        self.connections += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        try:
            await self._serve(reader, writer)
        finally:
            self.connections -= 1
            if self.per_ip[ip] > 1:
                self.per_ip[ip] -= 1
            else:
                del self.per_ip[ip]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The owner's side of one request from another node."""
        nonce = secrets.token_bytes(link.NONCE_BYTES)
        try:
            writer.write(link.encode(link.Hello(nonce)))
            header = await asyncio.wait_for(reader.readexactly(link.LENGTH.size),
                                            link.LINK_TIMEOUT_S)
            try:
                size = link.frame_length(header, link.MAX_REQUEST_FRAME_BYTES)
            except link.LinkError as exc:
                self.counters["link_refused"] += 1
                log.warning("cluster link: refused a request from %s before reading it: %s",
                            writer.get_extra_info("peername"), exc)
                writer.transport.abort()
                return
            body = await asyncio.wait_for(reader.readexactly(size), link.LINK_TIMEOUT_S)
            mac = await asyncio.wait_for(reader.readexactly(link.MAC_BYTES), link.LINK_TIMEOUT_S)
            if not link.verify(self.secret, nonce, body, mac):
                self.counters["link_refused"] += 1
                log.warning("cluster link: refused a request with a bad MAC from %s",
                            writer.get_extra_info("peername"))
                return
            request = link.decode_request(body)
            if isinstance(request, link.Forward):
                self.counters["served_for_others"] += 1
                await self._serve_forward(request, nonce, reader, writer)
                return
            if isinstance(request, link.RelayRequest):
                reply: link.Reply = await self._accept_relay(request)
                if isinstance(reply, link.Accepted):
                    reply = link.mask_accepted(self.secret, nonce, reply)
            else:
                reply = await self._serve_members(request)
            writer.write(link.encode(reply))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, link.LinkError,
                ValueError) as exc:
            log.debug("cluster link: dropped a connection: %s", exc)
        except asyncio.CancelledError:
            pass  # the node is stopping: the caller sees the link close
        finally:
            writer.close()

    async def _serve_forward(self, forwarded: link.Forward, nonce: bytes,
                             reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        """Serve one forwarded TCRP request and pass on the member's registration. A
        member's datagram key crosses the link masked (``link.mask_granted``)."""
        try:
            details, member = await self.node.handle_routed(forwarded.request(), forwarded.ip,
                                                            forwarded.secure)
        except RegistryError as exc:
            writer.write(link.encode(link.Refused(exc.status, exc.reason)))
            await writer.drain()
            return
        except Exception:
            log.exception("internal error serving a request forwarded by node %s",
                          forwarded.origin)
            writer.write(link.encode(link.Refused(Status.INTERNAL_ERROR, "internal error")))
            await writer.drain()
            return
        writer.write(link.encode(link.mask_granted(self.secret, nonce,
                                                   link.Granted(details, member.token))))
        try:
            body = await asyncio.wait_for(read_body(reader, link.MAX_REQUEST_FRAME_BYTES),
                                          REGISTRATION_WINDOW_S)
        except (TimeoutError, asyncio.IncompleteReadError):
            return
        port = link.decode(body, link.Registration).port
        if 0 < port < 65536:
            self.node.register(member, port)

    async def _serve_members(self, query: link.MembersQuery
                             ) -> link.MemberList | link.Refused:
        """Operation 3 for a room of this node, for the token's holder at the IP it was
        issued to (a relayed member's datagrams come from the relaying node, its requests
        still from its own IP)."""
        try:
            if self.moved(query.room):
                raise RegistryError(Status.ROOM_NOT_FOUND, f"room {query.room!r} moved")
            members = self.node.registry.member_for(query.room, query.token, query.ip
                                                    ).room.member_infos()
        except RegistryError as exc:
            return link.Refused(exc.status, exc.reason)
        return link.MemberList(members)

    async def _accept_relay(self, request: link.RelayRequest
                            ) -> link.Accepted | link.Refused:
        """The owner's side of ``request_relay``: rebind the member to the relaying node,
        only for the client at the IP the token was issued to (where its datagrams come
        from now, the relaying node's address, proves nothing). The reply carries the
        member's datagram key and current placement (unmasked here), so that the relaying
        node checks the member's MAC trailer first."""
        origin = await self.lookup(request.origin)
        member = self.node.registry.tokens.get(request.token)
        if origin is None or member is None or not member.alive:
            return link.Refused(Status.ROOM_NOT_FOUND, "no such member")
        if member.issued_ip != request.ip:
            return link.Refused(Status.INVALID_REQUEST, "token of another IP")
        key = member.datagram_key
        if key is None:
            if member.ip != origin.advertise:
                await self.node.rebind(member, origin.advertise)
                log.info("member relayed through node %s from now on", request.origin)
            return link.Accepted()
        if member.ip != origin.advertise:
            # A token sent from the issuing IP proves nothing of a member with a key:
            # only one of its datagrams, with a right tag and a Seq its worker has not
            # seen, moves it (else a sniffed token would turn its datagrams away).
            placed = key if member.placement is None else dgmac.placement_key(
                key, member.placement)
            seq = None if request.proof is None else dgmac.verify(placed, request.proof)
            if seq is None:
                return link.Accepted(key, member.placement, moved=False)
            if not await self.node.rebind(member, origin.advertise, seq):
                return link.Refused(Status.INVALID_REQUEST, "a datagram seen before")
            log.info("member relayed through node %s from now on", request.origin)
        return link.Accepted(key, member.placement)
