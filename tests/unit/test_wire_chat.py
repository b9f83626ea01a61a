"""Stage 2 datagrams and deliveries (docs/protocol.md §2): hex vectors, every error, notices.

The Japanese notice texts are copied from docs/protocol.md §2.2 as literals on purpose: the
curriculum's reference client matches them byte for byte, so a typo in wire/ must fail here.
"""

from __future__ import annotations

import pytest

from wire import errors
from wire.chat import (
    ChatDatagram,
    FramedChat,
    Notice,
    decode_chat,
    decode_delivery,
    decode_framed,
    decode_plain,
    encode_chat,
    encode_framed_chat,
    encode_framed_notice,
    encode_plain_chat,
    encode_plain_notice,
    framed_prefix,
    is_exit,
    plain_prefix,
)
from wire.codes import Framing, NoticeEvent, Reason
from wire.limits import max_message_bytes

TOKEN = b"A" + b"x" * 32


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- client -> server -------------------------------------------------------------------------
def test_encode_chat_vector() -> None:
    data = encode_chat(b"room", b"T" * 22, b"hi")
    assert data == h("04 16 72 6f 6f 6d" + " 54" * 22 + " 68 69")


def test_encode_chat_bounds() -> None:
    assert len(encode_chat(b"r" * 255, b"t" * 255, b"")) == 512
    big = encode_chat(b"r", b"t", b"m" * 4092)
    assert len(big) == 4096
    for room, token, message in [
        (b"", b"t", b""),
        (b"r" * 256, b"t", b""),
        (b"r", b"", b""),
        (b"r", b"t" * 256, b""),
        (b"r", b"t", b"m" * 4093),
    ]:
        with pytest.raises(errors.FieldOutOfRange):
            encode_chat(room, token, message)


DECODE_OK = [
    (h("04 21 72 6f 6f 6d") + TOKEN + b"hello", ChatDatagram(b"room", TOKEN, b"hello")),
    (h("01 01 72 74"), ChatDatagram(b"r", b"t", b"")),  # empty message: keepalive
    (h("01 01 72 74") + "こんにちは".encode(), ChatDatagram(b"r", b"t", "こんにちは".encode())),
    # room and token are raw bytes: only the message must be UTF-8 (§2.1)
    (h("02 02 ff fe fd fc 61"), ChatDatagram(b"\xff\xfe", b"\xfd\xfc", b"a")),
    # the largest datagram: 4096 bytes
    (h("01 01 72 74") + b"m" * 4092, ChatDatagram(b"r", b"t", b"m" * 4092)),
]


@pytest.mark.parametrize(("data", "datagram"), DECODE_OK)
def test_decode_chat(data: bytes, datagram: ChatDatagram) -> None:
    assert decode_chat(data) == datagram
    assert encode_chat(datagram.room, datagram.token, datagram.message) == data


DECODE_ERRORS: list[tuple[str, bytes, type[errors.ProtocolError]]] = [
    ("4097 bytes", h("01 01 72 74") + b"m" * 4093, errors.DatagramTooLarge),
    ("empty", b"", errors.TruncatedDatagram),
    ("one byte", h("04"), errors.TruncatedDatagram),
    ("room size 0", h("00 01 74 6d"), errors.EmptyField),
    ("token size 0", h("01 00 72 6d"), errors.EmptyField),
    ("both 0", h("00 00"), errors.EmptyField),
    ("room past end", h("05 01 72 6f"), errors.TruncatedDatagram),
    ("token past end", h("01 05 72 74 74"), errors.TruncatedDatagram),
    ("header only", h("01 01"), errors.TruncatedDatagram),
    ("bad utf-8", h("01 01 72 74 c3 28"), errors.MessageNotUtf8),
    ("cut utf-8", h("01 01 72 74 e3 81"), errors.MessageNotUtf8),
    ("surrogate", h("01 01 72 74 ed a0 80"), errors.MessageNotUtf8),
    # the order of the checks: size, header, empty fields, fields in range, UTF-8
    ("size first", h("00 00") + b"\xff" * 4095, errors.DatagramTooLarge),
    ("empty before truncated", h("00 ff"), errors.EmptyField),
    ("truncated before utf-8", h("ff 01 ff"), errors.TruncatedDatagram),
]


@pytest.mark.parametrize(
    ("data", "error"), [c[1:] for c in DECODE_ERRORS], ids=[c[0] for c in DECODE_ERRORS]
)
def test_decode_chat_errors(data: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error) as info:
        decode_chat(data)
    assert type(info.value) is error


@pytest.mark.parametrize(
    "message",
    [
        b"/exit",
        b"/EXIT",
        b"/Exit",
        b"/eXiT",
        b"  /exit\n",
        b"\t/exit\r\n",
        "\u3000/exit\u3000".encode(),  # str.strip() strips Unicode whitespace too
        b"/exit" + b" " * 59,  # 64 bytes: still checked
    ],
)
def test_is_exit(message: bytes) -> None:
    assert is_exit(message)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"exit",
        b"/exi",
        b"/exit now",
        b"/ exit",
        b"//exit",
        b"/exit\xff",
        b"\xff/exit",
        "/ｅｘｉｔ".encode(),  # full-width letters are other characters
        b"/exit" + b" " * 60,  # 65 bytes: over EXIT_MATCH_MAX_BYTES, so chat
        b" " * 60 + b"/exit",
    ],
)
def test_is_not_exit(message: bytes) -> None:
    assert not is_exit(message)


# --- server -> client: chat -------------------------------------------------------------------
def test_plain_chat() -> None:
    assert plain_prefix("alice") == b"alice: "
    assert encode_plain_chat("alice", b"hello") == h("61 6c 69 63 65 3a 20 68 65 6c 6c 6f")
    assert encode_plain_chat("アリス", "やあ".encode()) == "アリス: やあ".encode()
    assert encode_plain_chat("a", b"") == b"a: "


def test_framed_chat() -> None:
    assert framed_prefix("alice") == h("05 61 6c 69 63 65")
    assert encode_framed_chat("alice", b"hello") == h("05 61 6c 69 63 65 68 65 6c 6c 6f")
    assert encode_framed_chat("アリス", b"") == h("09 e3 82 a2 e3 83 aa e3 82 b9")
    assert framed_prefix("u" * 255)[0] == 255


@pytest.mark.parametrize("username", ["", "u" * 256, "あ" * 86])
def test_framed_prefix_out_of_range(username: str) -> None:
    with pytest.raises(errors.FieldOutOfRange):
        framed_prefix(username)
    with pytest.raises(errors.FieldOutOfRange):
        encode_framed_chat(username, b"x")


def test_4094_byte_rule() -> None:
    """Deliveries are at most 4094 bytes; nothing is truncated (§2.3)."""
    assert len(encode_plain_chat("a", b"m" * 4091)) == 4094
    assert len(encode_framed_chat("a", b"m" * 4092)) == 4094
    with pytest.raises(errors.DeliveryTooLarge, match="1 bytes over"):
        encode_plain_chat("a", b"m" * 4092)
    with pytest.raises(errors.DeliveryTooLarge, match="4 bytes over"):
        encode_framed_chat("a", b"m" * 4096)
    with pytest.raises(errors.DeliveryTooLarge) as info:
        encode_plain_chat("u" * 255, b"m" * 4000)
    assert info.value.detail == f"{255 + 2 + 4000 - 4094} bytes over"


@pytest.mark.parametrize(
    ("room_len", "token_len", "username_len"),
    [(4, 33, 5), (255, 255, 1), (1, 22, 255), (1, 1, 1), (100, 33, 100)],
)
def test_max_message_fits_both_ways(room_len: int, token_len: int, username_len: int) -> None:
    """A message of max_message bytes is sendable and relayable; one more byte is not."""
    room, token, user = b"r" * room_len, b"t" * token_len, "u" * username_len
    n = max_message_bytes(room_len, token_len, username_len)
    assert n == min(4096 - 2 - room_len - token_len, 4094 - 2 - username_len)
    encode_chat(room, token, b"m" * n)
    encode_plain_chat(user, b"m" * n)
    encode_framed_chat(user, b"m" * n)
    too_long = b"m" * (n + 1)
    sendable = 4096 - 2 - room_len - token_len >= len(too_long)
    relayable = 4094 - 2 - username_len >= len(too_long)
    assert not (sendable and relayable)
    if not sendable:
        with pytest.raises(errors.FieldOutOfRange):
            encode_chat(room, token, too_long)
    if not relayable:
        with pytest.raises(errors.DeliveryTooLarge):
            encode_plain_chat(user, too_long)


# --- server -> client: notices ---------------------------------------------------------------
PLAIN_NOTICES = [
    (Notice(NoticeEvent.JOINED, "alice"), "alice がチャットルームに参加しました"),
    (Notice(NoticeEvent.LEFT, "alice", Reason.EXIT), "alice がチャットルームから退出しました"),
    (Notice(NoticeEvent.LEFT, "alice", Reason.INACTIVE), "alice がチャットルームから退出しました"),
    (
        Notice(NoticeEvent.LEFT, "alice", Reason.SEND_FAILURES),
        "alice がチャットルームから退出しました",
    ),
    (Notice(NoticeEvent.LEFT, "alice"), "alice がチャットルームから退出しました"),
    (Notice(NoticeEvent.CLOSED), "チャットルームが閉じられました"),
    # §2.2 is byte-exact: the shutdown reason exists only in framed notices
    (Notice(NoticeEvent.CLOSED, reason=Reason.SHUTDOWN), "チャットルームが閉じられました"),
    (
        Notice(NoticeEvent.DISCONNECTED, reason=Reason.INACTIVE),
        "しばらく発言しなかったので、チャットルームから退出させました",
    ),
    (
        Notice(NoticeEvent.DISCONNECTED, reason=Reason.SEND_FAILURES),
        "チャットルームから切断されました",
    ),
    (Notice(NoticeEvent.DISCONNECTED), "チャットルームから切断されました"),
    (Notice(NoticeEvent.DISCONNECTED, reason=Reason.EXIT), "チャットルームから切断されました"),
    (Notice(NoticeEvent.ERROR, over=7), "メッセージが長すぎます（7 バイト超過）"),
    (Notice(NoticeEvent.ERROR, over=1234), "メッセージが長すぎます（1234 バイト超過）"),
    # a username with braces is substituted, never re-formatted
    (Notice(NoticeEvent.JOINED, "{user}{over}"), "{user}{over} がチャットルームに参加しました"),
]


@pytest.mark.parametrize(("notice", "text"), PLAIN_NOTICES)
def test_plain_notice_texts(notice: Notice, text: str) -> None:
    assert encode_plain_notice(notice) == text.encode("utf-8")


def test_plain_notice_hex() -> None:
    """The "closed" text byte for byte: the model client exits on exactly these bytes."""
    assert encode_plain_notice(Notice(NoticeEvent.CLOSED)) == h(
        "e3 83 81 e3 83 a3 e3 83 83 e3 83 88 e3 83 ab e3 83 bc e3 83 a0 e3 81 8c e9 96 89"
        " e3 81 98 e3 82 89 e3 82 8c e3 81 be e3 81 97 e3 81 9f"
    )


FRAMED_NOTICES = [
    (
        Notice(NoticeEvent.JOINED, "alice"),
        b'\x00{"event":"joined","user":"alice","text":"alice joined the room"}',
    ),
    (
        Notice(NoticeEvent.LEFT, "alice", Reason.EXIT),
        b'\x00{"event":"left","user":"alice","reason":"exit","text":"alice left the room"}',
    ),
    (
        Notice(NoticeEvent.LEFT, "alice", Reason.INACTIVE),
        b'\x00{"event":"left","user":"alice","reason":"inactive",'
        b'"text":"alice was removed for inactivity"}',
    ),
    (
        Notice(NoticeEvent.LEFT, "alice", Reason.SEND_FAILURES),
        b'\x00{"event":"left","user":"alice","reason":"send_failures",'
        b'"text":"alice was removed: messages to them kept failing"}',
    ),
    (
        Notice(NoticeEvent.LEFT, "alice"),
        b'\x00{"event":"left","user":"alice","text":"alice left the room"}',
    ),
    (Notice(NoticeEvent.CLOSED), b'\x00{"event":"closed","text":"the room was closed"}'),
    (
        Notice(NoticeEvent.CLOSED, reason=Reason.SHUTDOWN),
        b'\x00{"event":"closed","reason":"shutdown","text":"the server is shutting down"}',
    ),
    (
        Notice(NoticeEvent.DISCONNECTED, reason=Reason.INACTIVE),
        b'\x00{"event":"disconnected","reason":"inactive",'
        b'"text":"you were disconnected for inactivity"}',
    ),
    (
        Notice(NoticeEvent.DISCONNECTED, reason=Reason.SEND_FAILURES),
        b'\x00{"event":"disconnected","reason":"send_failures",'
        b'"text":"you were disconnected: messages to you kept failing"}',
    ),
    (
        Notice(NoticeEvent.DISCONNECTED),
        b'\x00{"event":"disconnected","text":"you were disconnected"}',
    ),
    (
        Notice(NoticeEvent.DISCONNECTED, reason=Reason.EXIT),
        b'\x00{"event":"disconnected","reason":"exit","text":"you were disconnected"}',
    ),
    (
        Notice(NoticeEvent.ERROR, over=7),
        b'\x00{"event":"error","over":7,"text":"message too long (7 bytes over the limit)"}',
    ),
    (
        Notice(NoticeEvent.JOINED, "アリス"),
        b'\x00{"event":"joined","user":"\xe3\x82\xa2\xe3\x83\xaa\xe3\x82\xb9",'
        b'"text":"\xe3\x82\xa2\xe3\x83\xaa\xe3\x82\xb9 joined the room"}',
    ),
]


@pytest.mark.parametrize(("notice", "data"), FRAMED_NOTICES)
def test_framed_notices(notice: Notice, data: bytes) -> None:
    assert encode_framed_notice(notice) == data
    assert decode_framed(data) == notice


def test_framed_notice_fields_per_event() -> None:
    """Only joined/left carry ``user`` and only error carries ``over``, whatever is set."""
    data = encode_framed_notice(Notice(NoticeEvent.CLOSED, "alice", over=3))
    assert data == b'\x00{"event":"closed","text":"the room was closed"}'
    assert decode_framed(data) == Notice(NoticeEvent.CLOSED)


def test_notices_at_their_largest_fit() -> None:
    for notice in [
        Notice(NoticeEvent.JOINED, "あ" * 85),
        Notice(NoticeEvent.LEFT, "あ" * 85, Reason.SEND_FAILURES),
        Notice(NoticeEvent.ERROR, over=2**63),
    ]:
        assert len(encode_plain_notice(notice)) <= 4094
        assert len(encode_framed_notice(notice)) <= 4094


# --- decode_framed (the client side of ocm1) ---------------------------------------------------
FRAMED_OK: list[tuple[bytes, FramedChat | Notice]] = [
    (h("05 61 6c 69 63 65 68 69"), FramedChat("alice", "hi")),
    (h("01 61"), FramedChat("a", "")),
    (h("09 e3 82 a2 e3 83 aa e3 82 b9 e3 82 84"), FramedChat("アリス", "や")),
    (h("01 61") + b"m" * 4092, FramedChat("a", "m" * 4092)),  # 4094 bytes
    (b'\x00{"event":"closed"}', Notice(NoticeEvent.CLOSED)),  # text is optional
    (b'\x00{"event":"left","user":"b","reason":null,"x":[1]}', Notice(NoticeEvent.LEFT, "b")),
    (b'\x00{"event":"error","over":-1,"text":5}', Notice(NoticeEvent.ERROR, over=-1)),
    # a reason this version does not know is no reason: the event still says what happened
    (b'\x00{"event":"closed","reason":"maintenance"}', Notice(NoticeEvent.CLOSED)),
    (b'\x00{"event":"left","user":"b","reason":"bored"}', Notice(NoticeEvent.LEFT, "b")),
]


@pytest.mark.parametrize(("data", "value"), FRAMED_OK)
def test_decode_framed(data: bytes, value: FramedChat | Notice) -> None:
    assert decode_framed(data) == value


FRAMED_ERRORS: list[tuple[bytes, type[errors.ProtocolError]]] = [
    (b"", errors.TruncatedDatagram),
    (h("01 61") + b"m" * 4093, errors.DatagramTooLarge),  # 4095 bytes
    (h("05 61 6c 69"), errors.TruncatedDatagram),
    (h("01 ff"), errors.MessageNotUtf8),
    (h("01 61 ff"), errors.MessageNotUtf8),
    (h("02 e3 82 a2"), errors.MessageNotUtf8),  # username boundary splits a character
    (h("00"), errors.BadNotice),
    (b"\x00{", errors.BadNotice),
    (b"\x00\xff", errors.BadNotice),
    (b"\x00[]", errors.BadNotice),
    (b'\x00"closed"', errors.BadNotice),
    (b"\x00{}", errors.BadNotice),
    (b'\x00{"event":"nope"}', errors.BadNotice),
    (b'\x00{"event":"CLOSED"}', errors.BadNotice),
    (b'\x00{"event":["closed"]}', errors.BadNotice),
    (b'\x00{"event":"left","reason":7}', errors.BadNotice),
    (b'\x00{"event":"left","reason":{}}', errors.BadNotice),
    (b'\x00{"event":"joined","user":1}', errors.BadNotice),
    (b'\x00{"event":"joined","user":null}', errors.BadNotice),
    (b'\x00{"event":"error","over":"7"}', errors.BadNotice),
    (b'\x00{"event":"error","over":true}', errors.BadNotice),
    (b'\x00{"event":"error","over":7.0}', errors.BadNotice),
]


@pytest.mark.parametrize(("data", "error"), FRAMED_ERRORS)
def test_decode_framed_errors(data: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error) as info:
        decode_framed(data)
    assert type(info.value) is error


# --- decode_plain and decode_delivery (the client side of plain delivery) ---------------------
@pytest.mark.parametrize(("notice", "text"), PLAIN_NOTICES)
def test_plain_notices_decode(notice: Notice, text: str) -> None:
    """Every §2.2 text reads back as its event (reasons other than inactivity are not in
    the plain texts, so they are lost)."""
    got = decode_plain(text.encode())
    assert isinstance(got, Notice)
    assert (got.event, got.user, got.over) == (notice.event, notice.user, notice.over)
    if notice.event is NoticeEvent.DISCONNECTED:
        assert got.reason is (Reason.INACTIVE if notice.reason is Reason.INACTIVE else None)


PLAIN_OK: list[tuple[bytes, FramedChat | Notice]] = [
    (b"alice: hi", FramedChat("alice", "hi")),
    (b"alice: ", FramedChat("alice", "")),
    (b"alice: a: b", FramedChat("alice", "a: b")),  # split at the first separator
    ("アリス: や".encode(), FramedChat("アリス", "や")),
    (b"a: " + b"m" * 4091, FramedChat("a", "m" * 4091)),  # 4094 bytes
    # a name never holds ": ", so this is bob's chat, not a joined notice
    ("bob: alice がチャットルームに参加しました".encode(),
     FramedChat("bob", "alice がチャットルームに参加しました")),
    ("bob: x がチャットルームから退出しました".encode(),
     FramedChat("bob", "x がチャットルームから退出しました")),
    ("メッセージが長すぎます（x バイト超過）: y".encode(),
     FramedChat("メッセージが長すぎます（x バイト超過）", "y")),
]


@pytest.mark.parametrize(("data", "value"), PLAIN_OK)
def test_decode_plain(data: bytes, value: FramedChat | Notice) -> None:
    assert decode_plain(data) == value
    assert decode_delivery(data, Framing.PLAIN) == value


PLAIN_ERRORS: list[tuple[bytes, type[errors.ProtocolError]]] = [
    (b"", errors.TruncatedDatagram),
    (b"a: " + b"m" * 4092, errors.DatagramTooLarge),  # 4095 bytes
    (b"alice: \xff", errors.MessageNotUtf8),
    (b"no separator", errors.BadDelivery),
    (b": no name", errors.BadDelivery),
    (b"alice:no space", errors.BadDelivery),
]


@pytest.mark.parametrize(("data", "error"), PLAIN_ERRORS)
def test_decode_plain_errors(data: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error) as info:
        decode_plain(data)
    assert type(info.value) is error
    with pytest.raises(error):
        decode_delivery(data, Framing.PLAIN)


def test_decode_delivery_framed() -> None:
    assert decode_delivery(h("01 61 62"), Framing.OCM1) == FramedChat("a", "b")
    with pytest.raises(errors.BadNotice):
        decode_delivery(b"\x00[]", Framing.OCM1)
