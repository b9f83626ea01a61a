"""An encrypted room on asyncio (docs/e2e.md): ``E2ERoomLink`` feeds the sans-IO
``RoomCrypto`` (Olm and Megolm on vodozemac) with the join reply, notices and deliveries,
sends what it returns, arms its timers, pins every member's keys in the ``KeyStore`` and
turns the outcome into ``render.Line``s.

What the user sees is what the client encrypts to: every member entering the encryption
set gets a line with its fingerprint, whether it came from a ``joined`` notice, the join
reply or the member list; ``/who`` lists exactly that set and flags where the server's
list differs. The member list is fetched every ``MEMBERS_POLL_S`` and after any sign of
loss, so a departure whose ``left`` notice never came still removes the member (and
rotates our session) within that bound. A member whose pinned key changed gets no room
key until the user compares safety numbers and confirms (``/verify NAME`` then
``/verify NAME confirm``), or compares emoji interactively (``/verify NAME sas``, then
``/verify NAME sas match``: vodozemac's SAS over the Olm session, ``client.e2e.sas``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

from client import render
from client.commands import Action, Command
from client.e2e.identity import IdentityKeys, fingerprint, safety_number
from client.e2e.room import (
    Decrypted,
    MemberAdded,
    MemberRemoved,
    Output,
    Rejected,
    RejectReason,
    RoomCrypto,
    SasMessage,
    Send,
    room_binding,
)
from client.e2e.sas import SasError, SasFlow, SasKind, SasShow, decode_sas, encode_sas
from client.keystore import KeyStore, KeyStoreError, PinStatus, Trust, config_dir, server_identity
from client.link import RoomLink
from client.render import Line
from client.session import Addr, Joined, JoinFailed, JoinRefused
from wire import dgmac, errors
from wire.chat import Notice, decode_framed, encode_chat
from wire.codes import NoticeEvent, Operation
from wire.e2e import (
    MIN_CHAT_OVERHEAD_BYTES,
    ContentType,
    Kind,
    MemberInfo,
    PublicKeys,
    SignedPrekey,
    decode_delivery,
    encode_message,
    max_chat_body,
)
from wire.limits import EXIT_COMMAND

_CHAT_KIND: Final = bytes((Kind.CHAT,))
MEMBERS_REFRESH_S: Final = 5.0
"""At most one member-list fetch per this many seconds after a sign of loss."""
MEMBERS_POLL_S: Final = 30.0
"""The member list is fetched this often anyway: a departure is noticed within it."""
UNVERIFIED_MARK: Final = "[unverified key] "
CONFIRM_WORD: Final = "confirm"
SAS_WORD: Final = "sas"
SAS_MATCH: Final = "match"
SAS_CANCEL: Final = "cancel"

_REJECT_TEXTS: Final = {
    RejectReason.MALFORMED: "it is malformed",
    RejectReason.DECRYPT_FAILED: "it does not decrypt (altered in transit, or not for us)",
    RejectReason.BEFORE_KEY: "it was sent before its key was shared with us",
    RejectReason.REPLAY: "it is a replay of a message or key already received",
    RejectReason.WRONG_ROOM: "its key belongs to another room, server or incarnation "
                             "(a replay)",
    RejectReason.FORGED_NAME: "it carries another member's name",
    RejectReason.BAD_PREKEY: "its prekey is not signed by its identity key",
    RejectReason.OVERFLOW: "too many messages were waiting for its key",
}
"""Rejections shown to the user; unknown senders are handled quietly (the member list is
fetched)."""
_LOSS_SIGNS: Final = frozenset({RejectReason.UNKNOWN_SENDER, RejectReason.DECRYPT_FAILED,
                                RejectReason.BEFORE_KEY})


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
                 env: dict[str, str] | os._Environ[str] | None = None) -> None:
        super().__init__(joined, on_line, env)
        self._loop = asyncio.get_running_loop()
        """Datagram callbacks may run where no loop counts as running (qasync): its clock
        and timers are taken from here."""
        room = joined.room_raw.decode()
        self.server_key = link_server_identity(joined)
        self.crypto = RoomCrypto(room, joined.username, identity,
                                 room_binding(room, joined.details.epoch),
                                 joined.server_identity if joined.tcrp is not None
                                 and joined.tcrp.tls is not None else "")
        self.identity = identity
        self.store = store
        trailer = dgmac.TRAILER_BYTES if joined.details.datagram_key is not None else 0
        self.max_message = max_chat_body(len(joined.room_raw), len(joined.token),
                                         len(joined.username.encode()),
                                         self.reliable is not None) - \
            MIN_CHAT_OVERHEAD_BYTES - len(joined.username.encode()) - trailer
        self.trust: dict[str, Trust] = {}
        self.server_members: tuple[MemberInfo, ...] | None = None
        """The server's member list as last fetched (``None`` before the first fetch)."""
        self.rejected = 0
        self._crypto_timer: asyncio.TimerHandle | None = None
        self._typed: str | None = None
        """The text being sealed (``send``): what the send states of its chat name."""
        self._poll: asyncio.TimerHandle | None = None
        self._last_refresh = float("-inf")
        self._refresh: asyncio.Task[None] | None = None
        self.on_key_changed: Callable[[str, str, str], object] | None = None
        """Called with (member, old fingerprint, new fingerprint) when a member's key is
        not the pinned one, after the warning line (the GUI opens a dialog)."""
        self.on_members_changed: Callable[[], object] | None = None
        """Called when the encryption set changed (the GUI refreshes its member list)."""
        self._learned_at: dict[str, float] = {}
        self._fetch_started = float("inf")
        """When the member list being applied was asked for (``inf``: given directly)."""
        self.sas: dict[str, SasFlow] = {}
        """Interactive verifications under way, by member."""
        self.on_sas: Callable[[str, SasShow | None], object] | None = None
        """Called with (member, what to compare) when a verification shows its emoji, and
        with (member, None) when it ends (verified or cancelled): for the GUI's dialog,
        which then calls ``sas_confirm`` or ``sas_cancel``."""

    # -- what the UI calls ---------------------------------------------------------------
    async def open(self) -> None:
        await super().open()
        me = render.sanitize_name(self.joined.username)
        try:
            for server in {link_server_address(self.joined), link_server_identity(self.joined)}:
                self.store.mark_encrypted(server, self.crypto.room)  # any name, and the key
        except (KeyStoreError, OSError) as exc:
            self._on_line(render.warning_line(f"cannot record this room as encrypted: {exc}"))
        self._on_line(render.notice_line(
            f"room {render.sanitize(self.crypto.room)!r} is end-to-end encrypted; your key "
            f"fingerprint ({me}): {fingerprint(self.identity.public())}"))
        accepted: list[MemberInfo] = []
        held: list[MemberInfo] = []
        for member in self.joined.details.members:
            if member.keys is None or member.user == self.joined.username:
                continue
            (accepted if self._pin(member.user, member.keys) else held).append(member)
        now = self._now()
        self._run(self.crypto.start(accepted, now))
        for member in held:
            self._run(self.crypto.add_member(member.user, member.keys or PublicKeys(b"", b""),
                                             member.prekey, now, accepted=False))
        self._arm_poll()

    def send(self, text: str) -> None:
        """Encrypt and send one message; raise ``MessageTooLong`` over ``max_message``.
        With ``ocm1r`` the chat goes with an id, pending until the relay has it, as in a
        plain room (the envelopes a rotation sends go as they are)."""
        raw = render.check_length(text, self.max_message)
        self._typed = raw.decode()
        try:
            self._run(self.crypto.seal(raw, self._now()))
        finally:
            self._typed = None

    def leave(self) -> None:
        """Kind 04: the relay removes us as ``/exit`` does in a plain room (twice with
        ``ocm1r``, whose clients count on the way being lossy)."""
        for _ in range(1 if self.reliable is None else 2):
            self._send(leave_datagram(self.joined))

    def close(self) -> None:
        for timer in (self._crypto_timer, self._poll):
            if timer is not None:
                timer.cancel()
        self._crypto_timer = self._poll = None
        if self._refresh is not None:
            self._refresh.cancel()
        super().close()

    async def answer(self, command: Command) -> list[Line] | None:
        """``/who`` (the encryption set against the server's list) and ``/verify``."""
        if command.action is Action.VERIFY:
            name, _, word = command.text.partition(" ")
            word = word.strip()
            if word == CONFIRM_WORD:
                return self.verify(name)
            if word == SAS_WORD:
                return self.sas_start(name)
            if word == f"{SAS_WORD} {SAS_MATCH}":
                return self.sas_confirm(name)
            if word == f"{SAS_WORD} {SAS_CANCEL}":
                return self.sas_cancel(name)
            return self.verify_prompt(command.text.strip())
        return await super().answer(command)

    def safety_number_with(self, user: str) -> str | None:
        """The safety number to compare with ``user``, ``None`` if ``user`` is not a
        member with keys (in the set or held)."""
        keys = self.keys_of(user)
        if not user or keys is None:
            return None
        return safety_number(self.joined.username, self.identity.public(), user, keys)

    def keys_of(self, user: str) -> PublicKeys | None:
        return self.crypto.members.get(user) or self.crypto.held.get(user)

    def trust_of(self, user: str) -> Trust:
        """What we know of ``user``'s key: unverified, verified, or changed."""
        return self.trust.get(user, Trust.UNVERIFIED)

    def verify_prompt(self, user: str) -> list[Line]:
        """``/verify NAME``: the safety number, and how to confirm; nothing is marked."""
        number = self.safety_number_with(user)
        if number is None:
            return [render.warning_line(f"/verify NAME: no member named "
                                        f"{render.sanitize_name(user)!r} with keys")]
        name = render.sanitize_name(user)
        return [render.notice_line(f"safety number with {name}: {number}"),
                render.notice_line(f"compare it with {name} in person or by phone; only if it "
                                   f"matches, type: /verify {name} {CONFIRM_WORD}")]

    def verify(self, user: str) -> list[Line]:
        """Mark ``user``'s key verified (the user compared and confirmed) and, if it was
        held after a key change, let it into the encryption set."""
        number = self.safety_number_with(user)
        if number is None:
            return [render.warning_line(f"/verify NAME: no member named "
                                        f"{render.sanitize_name(user)!r} with keys")]
        name = render.sanitize_name(user)
        return [render.notice_line(f"safety number with {name}: {number}"),
                self._mark_verified(user)]

    def _mark_verified(self, user: str) -> Line:
        self.store.verify(self.server_key, user)
        self.trust[user] = Trust.VERIFIED
        self._run(self.crypto.accept(user, self._now()))
        return render.notice_line(f"{render.sanitize_name(user)} is now marked verified")

    # -- interactive verification (SAS) ----------------------------------------------------
    def sas_start(self, user: str) -> list[Line]:
        """``/verify NAME sas``: start comparing emoji with ``user``."""
        keys = self.keys_of(user)
        name = render.sanitize_name(user)
        if not user or keys is None:
            return [render.warning_line(f"/verify NAME sas: no member named {name!r} with "
                                        "keys")]
        flow = SasFlow(self.joined.username, self.identity.public(), user, keys,
                       self.crypto.binding, starter=True)
        if not self._sas_send(user, flow.start()):
            return [render.warning_line(f"no encrypted session with {name} yet; try again "
                                        "in a moment")]
        self.sas[user] = flow
        return [render.notice_line(f"verification with {name} started; waiting for {name}")]

    def sas_confirm(self, user: str) -> list[Line]:
        """``/verify NAME sas match``: the emoji matched; send our MAC."""
        flow = self.sas.get(user)
        name = render.sanitize_name(user)
        try:
            if flow is None:
                raise SasError(f"no verification with {name} to confirm")
            self._sas_send(user, flow.confirm())
        except SasError as exc:
            self.sas.pop(user, None)
            return [render.warning_line(f"verification with {name} failed: {exc}")]
        if flow.verified:
            return self._sas_done(user)
        return [render.notice_line(f"confirmed; waiting for {name} to confirm too")]

    def sas_cancel(self, user: str) -> list[Line]:
        """``/verify NAME sas cancel``: the emoji differ, or the user gives up."""
        if self.sas.pop(user, None) is not None:
            self._sas_send(user, encode_sas(SasKind.CANCEL))
        return [render.warning_line(f"verification with {render.sanitize_name(user)} "
                                    "cancelled; nothing was marked")]

    def _sas_send(self, user: str, payload: bytes) -> bool:
        send = self.crypto.send_content(user, ContentType.SAS, payload, self._now())
        if send is None:
            return False
        self._send(self._datagram(send.message))
        return True

    def _sas_done(self, user: str) -> list[Line]:
        self.sas.pop(user, None)
        if self.on_sas is not None:
            self.on_sas(user, None)
        return [render.notice_line(f"the emoji matched on both sides and "
                                   f"{render.sanitize_name(user)}'s keys are the ones shown"),
                self._mark_verified(user)]

    def _sas_received(self, message: SasMessage) -> list[Line]:
        user, name = message.sender, render.sanitize_name(message.sender)
        keys = self.keys_of(user)
        try:
            kind, data = decode_sas(message.payload)
            if keys is None:
                raise SasError("not a member with keys")
            if kind is SasKind.START:
                new = SasFlow(self.joined.username, self.identity.public(), user, keys,
                              self.crypto.binding, starter=False)
                accept, show = new.accept(data)
                self.sas[user] = new
                self._sas_send(user, accept)
                return self._sas_show(user, show, f"{name} asks to verify your keys")
            flow = self.sas.get(user)
            if kind is SasKind.CANCEL:
                self.sas.pop(user, None)
                if self.on_sas is not None:
                    self.on_sas(user, None)
                return [render.warning_line(f"{name} cancelled the verification")]
            if flow is None:
                raise SasError("no verification under way")
            if kind is SasKind.ACCEPT:
                return self._sas_show(user, flow.accepted(data), f"{name} accepted")
            if flow.mac_received(data):
                return self._sas_done(user)
            return [render.notice_line(f"{name} confirmed; confirm too if the emoji match: "
                                       f"/verify {name} {SAS_WORD} {SAS_MATCH}")]
        except SasError as exc:
            self.sas.pop(user, None)
            return [render.warning_line(f"verification with {name} failed: {exc}")]

    def _sas_show(self, user: str, show: SasShow, why: str) -> list[Line]:
        name = render.sanitize_name(user)
        if self.on_sas is not None:
            self.on_sas(user, show)
        numbers = " ".join(str(d) for d in show.decimals)
        return [render.notice_line(f"{why}: compare with what {name} sees"),
                render.notice_line(f"  {show.text()}"),
                render.notice_line(f"  or the numbers {numbers}"),
                render.notice_line(f"same on both sides? /verify {name} {SAS_WORD} {SAS_MATCH}"
                                   f"; different: /verify {name} {SAS_WORD} {SAS_CANCEL}")]

    def who_lines(self, members: tuple[MemberInfo, ...]) -> list[Line]:
        """The encryption set, each with fingerprint and trust, then every difference
        from the server's list."""
        self._sync(members)
        me = self.joined.username
        encrypted = self.crypto.members
        lines = [render.notice_line(f"{len(encrypted) + 1} in the encryption set (end-to-end "
                                    f"encrypted):")]
        lines.append(render.notice_line(
            f"  {render.member_label(me, self.joined.details.host, True)}: "
            f"{fingerprint(self.identity.public())}"))
        hosts = {m.user for m in members if m.host}
        for user, keys in encrypted.items():
            label = render.member_label(user, user in hosts, False)
            lines.append(render.notice_line(f"  {label}: {fingerprint(keys)} · "
                                            f"{self.trust_of(user).value}"))
        listed = {m.user for m in members if m.user != me}
        for user in sorted(listed - set(encrypted)):
            why = "key changed, not accepted (/verify)" if user in self.crypto.held else \
                "no keys"
            lines.append(render.warning_line(f"  the server lists {render.sanitize_name(user)}"
                                             f", who gets no room key: {why}"))
        for user in sorted(set(encrypted) - listed):
            lines.append(render.warning_line(f"  {render.sanitize_name(user)} is encrypted to "
                                             "but not in the server's list"))
        return lines

    # -- receiving ------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.reliable is not None:  # ocm1r: room order first (RoomLink), then below
            super().datagram_received(data, addr)
            return
        if self.rekeyed(data):
            return
        if data[:1] == b"\x00":
            self._notice(data)
            return
        self._addressed(data)

    def _room_delivery(self, body: bytes) -> None:
        """``ocm1r``: the room's next delivery, in room order: a notice, or a chat to
        decrypt (never our own: the relay sends it back only to answer a NACK after a
        resume). A copy was dropped by its number already, before decryption."""
        if body[:1] == b"\x00":
            self._notice(body)
            return
        try:
            delivery = decode_delivery(body)
        except errors.ProtocolError:
            self.dropped += 1
            return
        if delivery.sender == self.joined.username:
            return
        self._run(self.crypto.receive(delivery, self._now()))

    def _addressed(self, body: bytes) -> None:
        """A delivery to us: a chat without ``ocm1r``, else an envelope or key request."""
        try:
            delivery = decode_delivery(body)
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
        now = self._now()
        if item.event is NoticeEvent.JOINED and item.keys is not None:
            self._learn(item.user, item.keys, None, now)
        elif item.event is NoticeEvent.LEFT:
            self._run(self.crypto.remove_member(item.user, now))
        self._ended_by(item)

    # -- internals ------------------------------------------------------------------------
    def _now(self) -> float:
        return self._loop.time()

    def _datagram(self, message: bytes) -> bytes:
        return encode_chat(self.joined.room_raw, self.joined.token, message)

    def _encode(self, text: str) -> bytes:
        return self._datagram(b"")  # only keepalives go through here: send() encrypts text

    def _learn(self, user: str, keys: PublicKeys, prekey: SignedPrekey | None,
               now: float) -> None:
        """A member from any source: pin its key, then add it (held if its key changed)."""
        if user == self.joined.username:
            return
        known = self.keys_of(user)
        if known == keys:
            return
        accepted = self._pin(user, keys)
        self._learned_at[user] = now
        self._run(self.crypto.add_member(user, keys, prekey, now, accepted=accepted))

    def _pin(self, user: str, keys: PublicKeys) -> bool:
        """Pin ``keys``; warn on a change. True if the key may get room keys now."""
        result = self.store.check(self.server_key, user, keys)
        self.trust[user] = result.trust
        name = render.sanitize_name(user)
        if result.status is PinStatus.CHANGED:
            self._on_line(render.warning_line(
                f"WARNING: {name}'s identity key has CHANGED (was {result.previous}, now "
                f"{fingerprint(keys)}). Someone may be impersonating {name}. {name} gets no "
                f"room key until you compare safety numbers: /verify {name}"))
            if self.on_key_changed is not None:
                self.on_key_changed(user, result.previous or "?", fingerprint(keys))
        return result.trust is not Trust.CHANGED

    def _run(self, outputs: Iterable[Output]) -> None:
        changed = False
        for output in outputs:
            if isinstance(output, Send):
                if self.reliable is not None and output.message[:1] == _CHAT_KIND:
                    self._send_numbered(output.message, self._typed or "")
                else:
                    self._send(self._datagram(output.message))
            elif isinstance(output, Decrypted):
                text = output.text.decode("utf-8", "replace")
                if self.trust_of(output.sender) is Trust.CHANGED:
                    text = UNVERIFIED_MARK + text
                self._on_line(render.chat_line(output.sender, text))
            elif isinstance(output, MemberAdded):
                changed = True
                self._on_line(render.notice_line(
                    f"{render.sanitize_name(output.user)} is now in the encryption set, key "
                    f"fingerprint {fingerprint(output.keys)} "
                    f"({self.trust_of(output.user).value})"))
            elif isinstance(output, SasMessage):
                for line in self._sas_received(output):
                    self._on_line(line)
            elif isinstance(output, MemberRemoved):
                changed = True
                self._on_line(render.notice_line(
                    f"{render.sanitize_name(output.user)} left the encryption set; "
                    "new room key sent to the others"))
            elif isinstance(output, Rejected):
                self.rejected += 1
                if output.reason in _LOSS_SIGNS:
                    self._refresh_members()
                if (why := rejection_text(output)) is not None:
                    self._on_line(render.warning_line(why))
        if changed and self.on_members_changed is not None:
            self.on_members_changed()
        self._arm_crypto_timer()

    def _arm_crypto_timer(self) -> None:
        if self._crypto_timer is not None:
            self._crypto_timer.cancel()
            self._crypto_timer = None
        deadline = self.crypto.next_deadline()
        if deadline is not None and self._transport is not None:
            self._crypto_timer = self._loop.call_at(deadline, self._on_crypto_timer)

    def _on_crypto_timer(self) -> None:
        self._crypto_timer = None
        self._run(self.crypto.handle_timer(self._now()))

    def _arm_poll(self) -> None:
        if self._transport is None or self.joined.tcrp is None:
            return
        self._poll = self._loop.call_later(MEMBERS_POLL_S, self._on_poll)

    def _on_poll(self) -> None:
        self._last_refresh = float("-inf")
        self._refresh_members()
        self._arm_poll()

    def _refresh_members(self) -> None:
        now = self._now()
        if now - self._last_refresh < MEMBERS_REFRESH_S or self._transport is None:
            return
        self._last_refresh = now
        self._refresh = asyncio.ensure_future(self._fetch_and_sync())

    async def _fetch_and_sync(self) -> None:
        try:
            members = await self.fetch_members()
        except (JoinFailed, JoinRefused):
            return
        self._sync(members)

    async def fetch_members(self) -> tuple[MemberInfo, ...]:
        self._fetch_started = self._now()
        return await super().fetch_members()

    def _sync(self, members: Iterable[MemberInfo]) -> None:
        """Make the encryption set follow the server's list: add whom it lists (announced
        like a join), remove whom it no longer lists (a lost ``left``) unless we learned
        of it after the list was asked for (its join may be newer than the list)."""
        members = tuple(members)
        self.server_members = members
        now = self._now()
        listed = set()
        for member in members:
            listed.add(member.user)
            if member.keys is not None:
                self._learn(member.user, member.keys, None, now)
        for user in set(self.crypto.members) | set(self.crypto.held):
            if user not in listed and self._learned_at.get(user, 0.0) <= self._fetch_started:
                self._run(self.crypto.remove_member(user, now))


def link_server_identity(joined: Joined) -> str:
    """The server identity member keys are pinned under and room keys bound to: its TLS
    key when the join went over TLS (``Joined.server_identity``), else the canonical
    ``host:port``."""
    if joined.server_identity:
        return joined.server_identity
    return link_server_address(joined)


def link_server_address(joined: Joined) -> str:
    """The canonical ``host:port`` as the user named the server (known before a join:
    identities and the rooms seen encrypted are kept under it)."""
    if joined.tcrp is not None:
        return server_identity(joined.tcrp.host, joined.tcrp.port)
    return server_identity(joined.server[0], joined.server[1])


def status_text(joined: Joined) -> str:
    """What the status line says of a room's protection: encrypted or not, TLS or not."""
    e2e = "end-to-end encrypted" if joined.details.e2e else "NOT encrypted"
    tls = "TLS" if joined.tcrp is not None and joined.tcrp.tls is not None else "no TLS"
    return f"{e2e} · {tls}"


def leave_datagram(joined: Joined) -> bytes:
    """The datagram that leaves ``joined``'s room: kind 04 in an encrypted room (§3.2),
    ``/exit`` in a plain one (where a kind-04 body would be chat text)."""
    body = encode_message(Kind.LEAVE) if joined.details.e2e else EXIT_COMMAND.encode()
    return encode_chat(joined.room_raw, joined.token, body)


def open_store(env: Mapping[str, str], passphrase_file: Path | None = None,
               passphrase: bytes | None = None) -> KeyStore:
    """The key store of this user account's config directory."""
    return KeyStore(config_dir(env), passphrase_file, passphrase=passphrase)


class IdentityChoice:
    """Which identity a join publishes, chosen once the server's identity is known: the
    join's ``keys_for`` (``client.joinflow.KeysFor``). Over TLS the identity is kept
    under the server's TLS key, so one server reached by several names (``localhost``,
    ``127.0.0.1``) is one identity, and an identity made earlier under its ``host:port``
    is adopted; without TLS under the canonical ``host:port``.

    After the join, ``identity`` is what was published (``None`` if the key store could
    not give one: ``error`` says why; with ``required`` the join fails instead, before
    the request is sent)."""

    def __init__(self, store: KeyStore, host: str, port: int, username: str,
                 required: bool = False, room: str | None = None,
                 operation: Operation | None = None, allow_plain: bool = False) -> None:
        self.store = store
        self.address = server_identity(host, port)
        self.username = username
        self.required = required
        self.room = room
        self.operation = operation
        self.allow_plain = allow_plain
        self.identity: IdentityKeys | None = None
        self.error: KeyStoreError | None = None

    def __call__(self, tls_key: str | None) -> PublicKeys | None:
        server = tls_key if tls_key is not None else self.address
        try:
            self.identity = self.store.load_or_create_identity(server, self.username,
                                                               former=self.address)
        except OSError as exc:
            self.error = KeyStoreError(f"{self.store.directory}: {exc.strerror or exc}")
        except KeyStoreError as exc:
            self.error = exc
        if self.identity is None:
            if self.required:
                raise JoinFailed(f"cannot use your identity key: {self.error}")
            return None
        return self.identity.publish()

    def seen_encrypted(self, tls_key: str | None) -> bool:
        """The join's ``e2e_for``: a join of ``room`` this device saw encrypted on this
        server under another name (the record is kept under the TLS key too): it must be
        encrypted now, unless ``allow_plain``. ``must_be_encrypted`` has checked the name
        the user gave, before the connection."""
        if tls_key is None or self.room is None or self.allow_plain \
                or self.operation is not Operation.JOIN:
            return False
        try:
            return self.store.seen_encrypted(tls_key, self.room)
        except (KeyStoreError, OSError):
            return True  # cannot tell: refuse plain rather than leak text


def must_be_encrypted(store: KeyStore | None, host: str, port: int, room: str, e2e: bool,
                      operation: Operation, allow_plain: bool = False) -> bool:
    """The request's ``e2e``: ``--e2e`` was given (create an encrypted room; refuse a plain
    one on join), or a join of a room this device saw encrypted on that server before
    (unless ``allow_plain``). Creating a plain room stays the user's choice."""
    if e2e:
        return True
    if allow_plain or store is None or operation is not Operation.JOIN:
        return False
    try:
        return store.seen_encrypted(server_identity(host, port), room)
    except (KeyStoreError, OSError):
        return True  # cannot tell: refuse plain rather than leak text


def room_link(joined: Joined, on_line: Callable[[Line], None], store: KeyStore | None,
              identity: IdentityKeys | None) -> RoomLink:
    """An ``E2ERoomLink`` when the join reply says the room is encrypted."""
    if joined.details.e2e:
        assert store is not None and identity is not None  # the server required keys
        return E2ERoomLink(joined, on_line, store, identity)
    return RoomLink(joined, on_line)
