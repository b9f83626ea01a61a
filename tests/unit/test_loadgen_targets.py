"""``ocm-loadgen --server`` with one address or a cluster's several."""

from __future__ import annotations

import pytest

from loadgen.targets import first_host, split_servers


def test_one_or_several_addresses_with_optional_ports() -> None:
    assert split_servers("127.0.0.1", 9000) == [("127.0.0.1", 9000)]
    assert split_servers("127.0.1.1, 127.0.1.2:9100,127.0.1.3", 9000) == [
        ("127.0.1.1", 9000), ("127.0.1.2", 9100), ("127.0.1.3", 9000)]
    assert first_host("127.0.1.1:9100,127.0.1.2") == "127.0.1.1"
    assert first_host("localhost") == "localhost"


@pytest.mark.parametrize("text", ["", "a,,b", "h:x", "h:0", "h:70000", ":9000"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--server"):
        split_servers(text, 9000)
