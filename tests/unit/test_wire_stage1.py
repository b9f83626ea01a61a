"""Stage 1 global chat datagrams (docs/protocol.md §3): hex vectors and every error."""

from __future__ import annotations

import pytest

from wire import errors
from wire.stage1 import Stage1Datagram, decode_stage1, encode_stage1


def h(text: str) -> bytes:
    return bytes.fromhex(text)


VECTORS = [
    ("alice", "hello", h("05 61 6c 69 63 65 68 65 6c 6c 6f")),
    ("alice", "", h("05 61 6c 69 63 65")),  # keepalive
    ("アリス", "やあ", h("09 e3 82 a2 e3 83 aa e3 82 b9 e3 82 84 e3 81 82")),
    ("u" * 255, "", b"\xff" + b"u" * 255),
    ("a", "m" * 4094, b"\x01a" + b"m" * 4094),  # 4096 bytes, the largest
]


@pytest.mark.parametrize(("username", "message", "data"), VECTORS)
def test_stage1_vectors(username: str, message: str, data: bytes) -> None:
    assert encode_stage1(username, message) == data
    assert decode_stage1(data) == Stage1Datagram(username.encode(), message.encode())


@pytest.mark.parametrize(
    ("username", "message"), [("", "hi"), ("u" * 256, ""), ("あ" * 86, ""), ("a", "m" * 4095)]
)
def test_encode_stage1_errors(username: str, message: str) -> None:
    with pytest.raises(errors.FieldOutOfRange):
        encode_stage1(username, message)


ERRORS: list[tuple[str, bytes, type[errors.ProtocolError]]] = [
    ("empty", b"", errors.EmptyField),
    ("length 0", h("00 61 62"), errors.EmptyField),
    ("length 0 alone", h("00"), errors.EmptyField),
    ("past the end", h("05 61 6c 69"), errors.TruncatedDatagram),
    ("length only", h("01"), errors.TruncatedDatagram),
    ("4097 bytes", b"\x01a" + b"m" * 4095, errors.DatagramTooLarge),
    ("size before length", b"\x00" * 4097, errors.DatagramTooLarge),
    ("bad username", h("01 ff 61"), errors.MessageNotUtf8),
    ("bad message", h("01 61 c3 28"), errors.MessageNotUtf8),
    ("truncated before utf-8", h("09 ff"), errors.TruncatedDatagram),
    # "あ" is e3 81 82: a username of "a" + e3 and a message of 81 82 is malformed even
    # though the bytes after the length byte are valid UTF-8 as a whole
    ("split character", h("02 61 e3 81 82"), errors.MessageNotUtf8),
]


@pytest.mark.parametrize(
    ("data", "error"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_decode_stage1_errors(data: bytes, error: type[errors.ProtocolError]) -> None:
    with pytest.raises(error) as info:
        decode_stage1(data)
    assert type(info.value) is error
    assert isinstance(info.value, errors.RemoteProtocolError)


def test_split_character_whole_is_valid_utf8() -> None:
    assert h("61 e3 81 82").decode() == "aあ"
    assert decode_stage1(h("04 61 e3 81 82")) == Stage1Datagram("aあ".encode(), b"")
