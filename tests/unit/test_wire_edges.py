"""The refusals of the newer wire fields (reliable delivery, encrypted-room prekeys and
epochs, resume secrets), each fed the smallest input that must be refused."""

from __future__ import annotations

import orjson
import pytest

from wire import errors
from wire.codes import Framing
from wire.e2e import decode_prekeys, decode_room_key
from wire.limits import MAX_PASSWORD_BYTES, NACK_MAX_RANGE_COUNT, NACK_MAX_RANGES
from wire.reliable import RANGE, decode_nack, encode_nack
from wire.tcrp import Details, decode_request_payload


def _details(**extra: object) -> dict[str, object]:
    obj = Details(9001, False, 100, 30.0, Framing.OCM1R).to_json()
    obj.update(extra)
    return obj


def test_a_room_key_name_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(errors.MessageNotUtf8):
        decode_room_key(b"\x01\xff")


def test_a_prekey_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(errors.BadKeys, match="a prekey must be an object"):
        decode_prekeys({"one_time": ["not an object"], "fallback": {}})


def test_nack_ranges_past_the_limits_are_refused() -> None:
    with pytest.raises(errors.FieldOutOfRange):
        encode_nack(1, [(1, NACK_MAX_RANGE_COUNT + 1)])
    with pytest.raises(errors.FieldOutOfRange):
        encode_nack(1, [(0, 1)])
    one = encode_nack(7, [(1, 1)])
    header, one_range = one[:-RANGE.size], one[-RANGE.size:]
    too_many = header + one_range * (NACK_MAX_RANGES + 1)
    with pytest.raises(errors.FieldOutOfRange, match="ranges"):
        decode_nack(too_many)


@pytest.mark.parametrize(("resume", "error"), [
    (5, errors.BadFieldType),
    ("r" * (MAX_PASSWORD_BYTES + 1), errors.FieldTooLong),
])
def test_a_resume_secret_of_the_wrong_type_or_size_is_refused(
        resume: object, error: type[errors.ProtocolError]) -> None:
    payload = orjson.dumps({"username": "alice", "framing": "ocm1r", "resume": resume})
    with pytest.raises(error):
        decode_request_payload(payload)


@pytest.mark.parametrize("extra", [
    {"resume": 5}, {"resumed": "yes"},
    {"e2e": True, "members": [], "epoch": "not base64!"},
    {"e2e": True, "members": [], "epoch": "AAAA"},
])
def test_details_with_a_bad_resume_or_epoch_are_refused(extra: dict[str, object]) -> None:
    with pytest.raises(errors.BadResponse, match="resume|epoch"):
        Details.from_json(_details(**extra))
