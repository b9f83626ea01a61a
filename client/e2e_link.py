"""An encrypted room on asyncio (docs/e2e.md): ``E2ERoomLink`` feeds the sans-IO
``RoomCrypto`` with the join reply, notices and deliveries, sends what it returns, arms
its timer, pins every member's keys in the ``KeyStore`` and turns the outcome into
``render.Line``s: decrypted chat, fingerprints, the loud key-change warning, and the
messages that were rejected.

Messages from a member whose pinned key changed are marked unverified until ``/verify``.
A chat from a member whose keys we lack (its ``joined`` notice was lost) fetches the member
list over TCRP, at most once every ``MEMBERS_REFRESH_S``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from client import render
from client.commands import Action, Command
from client.e2e.chains import ChainExhausted
from client.e2e.identity import IdentityKeys, fingerprint, safety_number
from client.e2e.room import (
    Decrypted,
    Output,
    Rejected,
    RejectReason,
    RoomCrypto,
    Send,
)
from client.keystore import KeyStore, KeyStoreError, PinStatus, Trust, config_dir
from client.link import RoomLink
from client.render import Line
from client.session import Addr, Joined, JoinFailed, JoinRefused
from wire import errors
from wire.chat import Notice, decode_framed, encode_chat
from wire.codes import NoticeEvent
from wire.e2e import (
    MIN_SEALED_CHAT_BYTES,
    Kind,
    MemberInfo,
    PublicKeys,
    decode_delivery,
    encode_message,
    max_chat_body,
)
from wire.limits import EXIT_COMMAND

MEMBERS_REFRESH_S: Final = 5.0
"""At most one member-list fetch per this many seconds for unknown senders (§2.4)."""
UNVERIFIED_MARK: Final = "[unverified key] "

_REJECT_TEXTS: Final = {
    RejectReason.MALFORMED: "it is malformed",
    RejectReason.BAD_SIGNATURE: "its signature is wrong (forged, from another room, or "
                                "under another name)",
    RejectReason.DECRYPT_FAILED: "it does not decrypt (altered in transit)",
    RejectReason.REPLAY: "it is a replay of a message already received",
    RejectReason.STALE_ENVELOPE: "it replays an old key",
    RejectReason.OVERFLOW: "too many messages were waiting for its key",
}
"""Rejections shown to the user; unknown senders and key requests from non-members are
handled quietly (the member list is fetched; the request is ignored)."""


def rejection_text(rejected: Rejected) -> str | None:
    """The warning for a rejected delivery, or ``None`` if it is not shown."""
    why = _REJECT_TEXTS.get(rejected.reason)
    if why is None:
        return None
    return f"rejected a message from {render.sanitize_name(rejected.sender)}: {why}"


class E2ERoomLink(RoomLink):
    """A membership of an encrypted room (``details.e2e``)."""

    def __init__(self, joined: Joined, on_line: Callable[[Line], None], store: KeyStore,
                 identity: IdentityKeys,
                 env: dict[str, str] | os._Environ[str] | None = None,
                 rng: Callable[[int], bytes] = secrets.token_bytes) -> None:
        super().__init__(joined, on_line, env)
        room = joined.room_raw.decode()
        self.crypto = RoomCrypto(room, joined.username, identity, rng)
        self.identity = identity
        self.store = store
        self.server_key = joined.tcrp.where if joined.tcrp is not None else \
            f"{joined.server[0]}:{joined.server[1]}"
        self.max_message = max_chat_body(len(joined.room_raw), len(joined.token),
                                         len(joined.username.encode())) - MIN_SEALED_CHAT_BYTES
        self.trust: dict[str, Trust] = {}
        self.rejected = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_refresh = float("-inf")
        self._refresh: asyncio.Task[None] | None = None
        self.on_key_changed: Callable[[str, str, str], object] | None = None
        """Called with (member, old fingerprint, new fingerprint) when a member's key is
        not the pinned one, after the warning line (the GUI opens a dialog)."""

    # -- what the UI calls ---------------------------------------------------------------
    async def open(self) -> None:
        await super().open()
        me = render.sanitize_name(self.joined.username)
        self._on_line(render.notice_line(
            f"room {render.sanitize(self.crypto.room)!r} is end-to-end encrypted; your key "
            f"fingerprint ({me}): {fingerprint(self.identity.public())}"))
        members = self.joined.details.members
        for member in members:
            if member.keys is not None:
                self._pin(member.user, member.keys)
        self._run(self.crypto.start(members, self._now()))

    def send(self, text: str) -> None:
        """Seal and send one message; raise ``MessageTooLong`` over ``max_message``."""
        raw = render.check_length(text, self.max_message)
        try:
            message = self.crypto.seal(raw)
        except ChainExhausted:
            self._run(self.crypto.rotate())
            message = self.crypto.seal(raw)
        self._send(self._datagram(message))

    def leave(self) -> None:
        """Kind 04: the relay removes us as ``/exit`` does in a plain room (§3.2)."""
        self._send(leave_datagram(self.joined))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._refresh is not None:
            self._refresh.cancel()
        super().close()

    async def answer(self, command: Command) -> list[Line] | None:
        """``/who`` with fingerprints, and ``/verify NAME``."""
        if command.action is Action.VERIFY:
            return self.verify(command.text)
        return await super().answer(command)

    def safety_number_with(self, user: str) -> str | None:
        """The safety number to compare with ``user`` (docs/e2e.md §7.2), ``None`` if
        ``user`` is not a member with keys."""
        keys = self.crypto.members.get(user)
        if not user or keys is None:
            return None
        return safety_number(self.joined.username, self.identity.public(), user, keys)

    def trust_of(self, user: str) -> Trust:
        """What we know of ``user``'s key: unverified, verified, or changed."""
        return self.trust.get(user, Trust.UNVERIFIED)

    def verify(self, user: str) -> list[Line]:
        """Show the safety number with ``user`` and mark its pinned key verified."""
        number = self.safety_number_with(user)
        if number is None:
            return [render.warning_line(f"/verify NAME: no member named "
                                        f"{render.sanitize_name(user)!r} with keys")]
        self.store.verify(self.server_key, user)
        self.trust[user] = Trust.VERIFIED
        name = render.sanitize_name(user)
        return [render.notice_line(f"safety number with {name}: {number}"),
                render.notice_line(f"compare it with {name} in person or by phone; "
                                   f"{name} is now marked verified")]

    def who_lines(self, members: tuple[MemberInfo, ...]) -> list[Line]:
        lines = [render.notice_line(f"{len(members)} in the room (end-to-end encrypted):")]
        for member in members:
            me = member.user == self.joined.username
            label = render.member_label(member.user, member.host, me)
            if member.keys is None:
                lines.append(render.notice_line(f"  {label}: no keys"))
                continue
            trust = "" if me else f" · {self.trust_of(member.user).value}"
            lines.append(render.notice_line(f"  {label}: {fingerprint(member.keys)}{trust}"))
        self._learn(members)
        return lines

    # -- receiving ------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if data[:1] == b"\x00":
            self._notice(data)
            return
        try:
            delivery = decode_delivery(data)
        except errors.ProtocolError:
            self.dropped += 1
            return
        self._run(self.crypto.receive(delivery, self._now()))

    def _notice(self, data: bytes) -> None:
        try:
            item = decode_framed(data)
        except errors.ProtocolError:
            self.dropped += 1
            return
        if not isinstance(item, Notice):  # byte 0 = 0 is always a notice
            self.dropped += 1
            return
        self._on_line(render.delivery_line(item))
        if item.event is NoticeEvent.JOINED and item.keys is not None:
            self._pin(item.user, item.keys)
        self._run(self.crypto.handle_notice(item, self._now()))
        self._ended_by(item)

    # -- internals ------------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _datagram(self, message: bytes) -> bytes:
        return encode_chat(self.joined.room_raw, self.joined.token, message)

    def _encode(self, text: str) -> bytes:
        return self._datagram(b"")  # only keepalives go through here: send() seals text

    def _pin(self, user: str, keys: PublicKeys) -> None:
        if user == self.joined.username:
            return
        result = self.store.check(self.server_key, user, keys)
        self.trust[user] = result.trust
        name = render.sanitize_name(user)
        if result.status is PinStatus.NEW:
            self._on_line(render.notice_line(f"{name}'s key fingerprint: {fingerprint(keys)}"))
        elif result.status is PinStatus.CHANGED:
            self._on_line(render.warning_line(
                f"WARNING: {name}'s identity key has CHANGED (was {result.previous}, now "
                f"{fingerprint(keys)}). Someone may be impersonating {name}. Messages from "
                f"{name} are marked unverified until you compare safety numbers: "
                f"/verify {name}"))
            if self.on_key_changed is not None:
                self.on_key_changed(user, result.previous or "?", fingerprint(keys))

    def _run(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                self._send(self._datagram(output.message))
            elif isinstance(output, Decrypted):
                text = output.text.decode("utf-8", "replace")
                if self.trust_of(output.sender) is Trust.CHANGED:
                    text = UNVERIFIED_MARK + text
                self._on_line(render.chat_line(output.sender, text))
            elif isinstance(output, Rejected):
                self.rejected += 1
                if output.reason is RejectReason.UNKNOWN_SENDER:
                    self._refresh_members()
                elif (why := rejection_text(output)) is not None:
                    self._on_line(render.warning_line(why))
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.crypto.next_deadline()
        if deadline is not None and self._transport is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._run(self.crypto.handle_timer(self._now()))

    def _refresh_members(self) -> None:
        now = self._now()
        if now - self._last_refresh < MEMBERS_REFRESH_S or self._transport is None:
            return
        self._last_refresh = now
        self._refresh = asyncio.ensure_future(self._fetch_and_learn())

    async def _fetch_and_learn(self) -> None:
        try:
            members = await self.fetch_members()
        except (JoinFailed, JoinRefused):
            return
        self._learn(members)

    def _learn(self, members: Iterable[MemberInfo]) -> None:
        """Add the members we did not know (their ``joined`` notice was lost)."""
        known = self.crypto.members
        for member in members:
            if member.keys is None or member.user == self.joined.username:
                continue
            if known.get(member.user) != member.keys:
                self._pin(member.user, member.keys)
                self._run(self.crypto.add_member(member.user, member.keys, self._now()))


def leave_datagram(joined: Joined) -> bytes:
    """The datagram that leaves ``joined``'s room: kind 04 in an encrypted room (§3.2),
    ``/exit`` in a plain one (where a kind-04 body would be chat text)."""
    body = encode_message(Kind.LEAVE) if joined.details.e2e else EXIT_COMMAND.encode()
    return encode_chat(joined.room_raw, joined.token, body)


def load_identity(env: Mapping[str, str]) -> tuple[KeyStore, IdentityKeys]:
    """This device's key store and identity (made on first use); raise ``KeyStoreError``."""
    store = KeyStore(config_dir(env))
    try:
        return store, store.load_or_create_identity(secrets.token_bytes)
    except OSError as exc:
        raise KeyStoreError(f"{store.directory}: {exc.strerror or exc}") from None


def room_link(joined: Joined, on_line: Callable[[Line], None], store: KeyStore | None,
              identity: IdentityKeys | None) -> RoomLink:
    """An ``E2ERoomLink`` when the join reply says the room is encrypted."""
    if joined.details.e2e:
        assert store is not None and identity is not None  # the server required keys
        return E2ERoomLink(joined, on_line, store, identity)
    return RoomLink(joined, on_line)
