"""The 2-byte UDP port registration (§1.4)."""

from __future__ import annotations

import pytest

from wire import errors
from wire.tcrp import encode_registration


def test_registration_is_big_endian_port() -> None:
    assert encode_registration(5000) == bytes.fromhex("1388")
    assert encode_registration(1) == b"\x00\x01"
    assert encode_registration(65535) == b"\xff\xff"


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_registration_rejects_ports_that_register_nothing(port: int) -> None:
    with pytest.raises(errors.FieldOutOfRange):
        encode_registration(port)
