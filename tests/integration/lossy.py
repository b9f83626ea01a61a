"""Datagram loss on loopback for one UDP port, with nftables (root only).

``Loss(port, percent)`` adds its own table with one input-hook chain that drops that share
of the UDP datagrams to and from ``port`` (or only one way: ``sides``) on 127.0.0.0/8
(``numgen random mod 100``), and ``outage()`` drops all of them until it ends. Dropping
at input (not output) keeps the sender's ``sendto`` from failing: the datagram is lost on
the way, as on a real network.
The table is deleted on exit, whatever happened.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import pytest


def require_nft() -> None:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("needs root and nft (nftables) to drop datagrams on loopback")


def _nft(*args: str) -> str:
    done = subprocess.run(["nft", *args], capture_output=True, text=True, timeout=10)
    if done.returncode:
        raise RuntimeError(f"nft {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Loss:
    def __init__(self, port: int, percent: int,
                 sides: tuple[str, ...] = ("dport", "sport")) -> None:
        self.port = port
        self.percent = percent
        self.sides = sides
        """``dport``: the datagrams to ``port``; ``sport``: those from it."""
        self.table = f"ocm_test_loss_{os.getpid()}_{port}"

    def __enter__(self) -> Loss:
        require_nft()
        _nft("add", "table", "ip", self.table)
        _nft("add", "chain", "ip", self.table, "input",
             "{ type filter hook input priority 0 ; policy accept ; }")
        for side in self.sides:
            _nft("add", "rule", "ip", self.table, "input", "ip", "saddr", "127.0.0.0/8",
                 "udp", side, str(self.port), "numgen", "random", "mod", "100", "<",
                 str(self.percent), "counter", "drop")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _nft("delete", "table", "ip", self.table)

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Drop every datagram to and from the port while the block runs."""
        handles = []
        for side in ("dport", "sport"):
            out = _nft("--echo", "--handle", "insert", "rule", "ip", self.table, "input",
                       "ip", "saddr", "127.0.0.0/8", "udp", side, str(self.port), "drop")
            handles.append(out.rsplit("# handle", 1)[1].strip())
        try:
            yield
        finally:
            for handle in handles:
                _nft("delete", "rule", "ip", self.table, "input", "handle", handle)

    def dropped(self) -> int:
        """Datagrams the random rules have dropped so far."""
        out = _nft("list", "table", "ip", self.table)
        return sum(int(part.split()[0]) for part in out.split("counter packets")[1:])
