"""The servers a load run joins through: ``--server`` takes one address or several.

``--server 127.0.1.1,127.0.1.2:9100,127.0.1.3`` names the control addresses of a
cluster's nodes; joins are spread over them round-robin (member i joins through address
i mod n). Each member then sends its datagrams where its join's details say
(``udp_host``, else the address it joined through).
"""

from __future__ import annotations

Target = tuple[str, int]


def split_servers(text: str, default_port: int) -> list[Target]:
    """``HOST[:PORT]`` items separated by commas; raise ``ValueError`` on a bad item."""
    targets: list[Target] = []
    for item in text.split(","):
        item = item.strip()
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, ""
        if not host:
            raise ValueError(f"--server: empty address in {text!r}")
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise ValueError(f"--server: bad port in {item!r}") from None
        if not 0 < number < 65536:
            raise ValueError(f"--server: port {number} out of range in {item!r}")
        targets.append((host, number))
    return targets


def first_host(text: str) -> str:
    """The host of the first address (for what needs one: the local IP, loopback checks)."""
    return text.split(",")[0].strip().rpartition(":")[0] or text.split(",")[0].strip()
