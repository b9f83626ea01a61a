"""Helpers shared by the hardening tests (tests/integration/test_limits.py, test_floods.py,
tests/fuzz/test_fuzz_server.py) and the long runs (tests/stress/chaos.py, soak.py).

Everything here talks to a running ``ocm-control`` from outside, as a client or an
operator would: TCRP from a chosen source address, the admin ``/metrics`` page, the
process ids printed in the log, and ``/proc`` for memory and file descriptors.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.integration.peer import tcrp_exchange
from wire.tcrp import Complete, Response

T = TypeVar("T")

WORKER_STARTED_RE = re.compile(r"worker (\d+) started \(pid (\d+)")
FINAL_COUNTERS_RE = re.compile(r"worker (\d+) exited \([^)]*\); last counters (.*)$")


# --- polling ----------------------------------------------------------------------------------
def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.05) -> tuple[T, float]:
    """Call ``check`` until it returns something truthy; return it and the seconds it took.

    ``interval`` only spaces the attempts of a check that is itself instantaneous (a
    metrics scrape, a refused join): every wait is bounded by ``timeout``.
    """
    start = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --- TCRP from any source address ---------------------------------------------------------------
def exchange(host: str, port: int, request: bytes, bind_ip: str = "127.0.0.1",
             timeout: float = 10.0, after: bytes = b"") -> tuple[Response, Complete | None]:
    """One TCRP request from ``bind_ip``: the State 1 answer (and State 2 on OK)."""
    return tcrp_exchange(host, port, request, after=after, timeout=timeout, bind_ip=bind_ip)


def status_of(host: str, port: int, request: bytes, bind_ip: str = "127.0.0.1") -> int:
    """The status byte the server answers ``request`` with."""
    return int(exchange(host, port, request, bind_ip)[0].status)


# --- the admin page -----------------------------------------------------------------------------
def admin_address(log_text: str) -> tuple[str, int] | None:
    m = re.search(r"admin http=([\d.]+):(\d+)", log_text)
    return (m[1], int(m[2])) if m else None


def scrape(address: tuple[str, int], timeout: float = 5.0) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}``."""
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback)
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def dropped(metrics: dict[str, float], reason: str, port: str = "chat") -> float:
    return metrics.get(f'ocm_datagrams_dropped_total{{port="{port}",reason="{reason}"}}', 0.0)


# --- processes ------------------------------------------------------------------------------------
def worker_pids(log_text: str) -> dict[int, int]:
    """The current pid of each worker: the newest ``worker N started (pid P`` line."""
    pids: dict[int, int] = {}
    for m in WORKER_STARTED_RE.finditer(log_text):
        pids[int(m[1])] = int(m[2])
    return pids


def final_counters(log_text: str) -> dict[int, dict[str, Any]]:
    """The ``last counters k=v ...`` of each worker, from the lines logged at a stop, as
    nested dicts (``drops.rate_limited=3`` -> ``{"drops": {"rate_limited": 3}}``; counters
    left out of the line because they were 0 are absent)."""
    out: dict[int, dict[str, Any]] = {}
    for line in log_text.splitlines():
        m = FINAL_COUNTERS_RE.search(line)
        if m:
            table: dict[str, Any] = {}
            for item in m[2].split():
                key, sep, raw = item.partition("=")
                if not sep:  # "none": nothing counted
                    continue
                *path, leaf = key.split(".")
                node = table
                for part in path:
                    node = node.setdefault(part, {})
                try:
                    node[leaf] = ast.literal_eval(raw)
                except (ValueError, SyntaxError):
                    node[leaf] = raw
            out[int(m[1])] = table
    return out


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# --- the long runs' command line ---------------------------------------------------------------
def start_loadgen(srv: Any, args: argparse.Namespace, seconds: float, name: str,
                  label: str) -> tuple[subprocess.Popen[str], Path]:
    """``ocm-loadgen`` against ``srv`` with the long run's ``--rooms/--users/--rate``, for
    ``seconds`` after 2 s of warmup; returns the process and where its JSON report will
    be."""
    report_path = Path(tempfile.mkdtemp(prefix=f"ocm-{name}-")) / "loadgen.json"
    cmd = [sys.executable, "-m", "loadgen", "--rooms", str(args.rooms), "--users",
           str(args.users), "--rate", str(args.rate), "--duration", str(seconds),
           "--warmup", "2", "--tcp-port", str(srv.tcp_port), "--quiet",
           "--server-pid", str(srv.proc.pid), "--json", str(report_path),
           "--label", label]
    print(f"{name}: " + " ".join(cmd[2:]), flush=True)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True), report_path


def long_run_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The options chaos.py and soak.py share: the load profile, the workers, --json."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", metavar="FILE")
    return parser


def report_long_run(args: argparse.Namespace, figures: dict[str, Any],
                    summarize: Callable[[dict[str, Any]], tuple[str, bool]]) -> int:
    """Print the summary, write the figures as JSON if asked; the exit code (0: OK)."""
    text, ok = summarize(figures)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0 if ok else 1
