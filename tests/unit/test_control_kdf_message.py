"""control/kdf.py: a refusal by the per-IP derivation rate says how long to wait."""

from __future__ import annotations

import asyncio
import re

import pytest

from control.kdf import KeyDerivations
from control.quotas import Quotas, QuotaSettings
from control.registry import RegistryError
from wire.codes import Status


def test_rate_refusal_says_when_to_retry() -> None:
    settings = QuotaSettings(max_conns_per_ip=8, conn_rate_per_ip=100.0,
                             max_password_failures=5, password_failure_window=60.0,
                             max_rooms_per_ip=8, kdf_rate_per_ip=1.0)

    async def scenario() -> None:
        kdf = KeyDerivations(Quotas(settings), threads=1)
        try:
            assert await kdf.run("10.0.0.1", len, "pw") == 2  # the burst: one derivation
            with pytest.raises(RegistryError) as info:
                await kdf.run("10.0.0.1", len, "pw")
            assert info.value.status == Status.RATE_LIMITED
            match = re.fullmatch(r"too many password checks from your address; "
                                 r"retry in (\d) s", info.value.reason)
            assert match and int(match[1]) == 1, info.value.reason  # 1 token at 1/s
        finally:
            kdf.shutdown()

    asyncio.run(scenario())
