"""``make bench-memory``: memory per member at 100,000 members (the target: ≤ 1 KiB).

Starts ``ocm-control`` (``--workers 1`` by default) with the per-IP quotas raised so that
every member fits (``--max-rooms-per-ip``, ``--max-conns-per-ip``, ``--conn-rate-per-ip``;
the loadgen's shared sockets give every member its own loopback IP anyway), samples every
process of its tree (RSS from ``/proc/PID/status``; PSS and USS = private clean + dirty
from ``/proc/PID/smaps_rollup``), joins 10,000 rooms × 10 members through real TCRP with
framed delivery (``ocm-loadgen --join-only``: each host creates its room, each member
binds its UDP address with a first datagram and the loadgen waits for the ``joined``
notices), samples again, and reports bytes per member for the worker(s), control and the
whole tree: (after − before) / members.

``--tls``: the members join over TLS (a test CA made in ``--out``), so that each also
holds its datagram key (docs/protocol.md §8), as every member of OCM's own clients does.
``--framing ocm1r``: they ask for reliable delivery (docs/protocol.md §9), as OCM's own
clients do, so that each also holds its ``Reliable`` state (ids, held ACK, NACK bucket)
and its room is numbered (an epoch and an empty history); ``ocm1`` by default.

Writes ``memory.md`` (printed) and ``memory.json`` into ``--out``; ``--update-docs``
replaces the section of docs/performance.md and writes docs/bench/memory.json.

Beside it, the history of one ``ocm1r`` room at the default limits (relay/history.py,
wire/limits.py): a ``History`` filled, in this process, with the deliveries of
``--size``-byte chats until its message limit holds it, measured with ``tracemalloc``
(Python's allocations: the process figure adds the allocator's slack), with the bytes it
charges against the limits and how many such rooms the worker's budget holds.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any, Final

import orjson

from loadgen.report import machine_info
from relay.history import History, HistoryBudget
from tests.bench import climit, servers
from tests.bench.percore import (
    TLS_JOIN_CONCURRENCY,
    TLS_RE,
    add_common_arguments,
    command_line,
    put_section,
)

SECTION: Final = "## Memory per member (make bench)"
TARGET_BYTES: Final = 1024
MEMBERS_PER_LOADGEN_PROC: Final = 60_000
"""Below the loadgen's shared-socket bound (loadgen/transport.py MAX_SHARED_MEMBERS)."""
JOIN_TIMEOUT_S: Final = 1800.0
SETTLE_S: Final = 2.0
"""Pause before each sample, so that the worker has applied every join it was sent."""
KINDS: Final = ("rss", "pss", "uss")


def memory_of(pid: int) -> dict[str, int] | None:
    """RSS, PSS and USS of ``pid`` in bytes (None if it is gone)."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb: dict[str, int] = {}
    for line in rollup.splitlines() + status.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            kb[parts[0][:-1]] = int(parts[1])
    return {"rss": kb.get("VmRSS", 0) * 1024, "pss": kb.get("Pss", 0) * 1024,
            "uss": (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) * 1024}


def sample(pid: int, workers: set[int]) -> dict[str, dict[str, int]]:
    """Memory by role: ``control`` (the top process), ``workers`` (summed), ``tree`` (every
    process, the resource tracker and the like included)."""
    out = {role: dict.fromkeys(KINDS, 0) for role in ("control", "workers", "tree")}
    for p in climit.tree_times(pid):
        mem = memory_of(p)
        if mem is None:
            continue
        roles = ["tree"] + (["control"] if p == pid else ["workers"] if p in workers else [])
        for role in roles:
            for k in KINDS:
                out[role][k] += mem[k]
    return out


def per_member(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
               members: int) -> dict[str, dict[str, float]]:
    """Bytes per member by role and kind: (after − before) / members."""
    return {role: {k: (after[role][k] - before[role][k]) / max(members, 1) for k in KINDS}
            for role in after}


def history_per_room(size: int, sender: str = "u1") -> dict[str, float]:
    """One room's history at the default limits, full of deliveries of ``size``-byte chats
    from ``sender`` (``ocm1`` framing, as the relay numbers them): the entries kept, the
    bytes ``tracemalloc`` sees it allocate, the bytes it charges against the limits, and
    how many such rooms the worker's budget holds."""
    budget = HistoryBudget()
    text = b"x" * size
    prefix = bytes((len(sender),)) + sender.encode()
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        history = History(1, budget)
        for i in range(2 * budget.max_messages):  # past the limit: a steady full history
            history.number(prefix + text, float(i))
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    entries = len(history.entries)
    return {"size": size, "entries": entries, "allocated": allocated,
            "charged": history.bytes, "max_messages": budget.max_messages,
            "max_bytes": budget.max_bytes, "max_age_s": budget.max_age,
            "worker_bytes": budget.worker_bytes,
            "rooms_in_worker_budget": budget.worker_bytes // max(history.bytes, 1)}


def wait_admin(server: servers.Running, timeout_s: float = 30.0) -> str | None:
    """``HOST:PORT`` of control's admin HTTP server, from its ``admin http=HOST:PORT`` log
    line (logged just after the READY line); None if it does not come."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(r"admin http=([\d.]+:\d+)", server.output())
        if match is not None:
            return match[1]
        time.sleep(0.05)  # polling the log pump's lines; there is no event to wait on
    return None


def chat_datagrams(admin: str | None) -> dict[str, float]:
    """The chat port's datagram counters from control's /metrics: ``received``, and
    ``dropped`` by reason. Every member sends one first datagram; if all were received
    and none dropped, all are bound (the loadgen's own count relies on ``joined`` notices,
    which its socket may drop while it is busy joining)."""
    if admin is None:
        return {}
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if 'port="chat"' not in line or line.startswith("#"):
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("ocm_datagrams_received_total"):
            out["received"] = out.get("received", 0) + float(value)
        elif name.startswith("ocm_datagrams_dropped_total"):
            reason = re.search(r'reason="([^"]+)"', name)
            out["dropped_" + (reason[1] if reason else "?")] = float(value)
    return out


def _datagrams_text(counts: dict[str, float]) -> str:
    if not counts:
        return "unknown (no /metrics)"
    drops = {k[len("dropped_"):]: v for k, v in counts.items() if k.startswith("dropped_") and v}
    text = ", ".join(f"{v:,.0f} {k}" for k, v in sorted(drops.items())) or "none"
    return f"{counts.get('received', 0):,.0f}, dropped {text}"


def render(result: dict[str, Any], command: str) -> str:
    pm = result["per_member"]
    relay, tree = pm["workers"]["uss"], pm["tree"]["uss"]

    def verdict(value: float) -> str:
        return "within" if value <= TARGET_BYTES else "over"

    lines = [
        SECTION, "",
        f"- **{relay:,.0f} B per member in the relay worker(s)** ({verdict(relay)} the "
        f"{TARGET_BYTES:,}-byte target), {pm['control']['uss']:,.0f} B in control (the "
        f"registry: tokens, names, rooms, per-IP quotas), **{tree:,.0f} B for the whole "
        f"tree** ({verdict(tree)} it), USS at {result['members']:,} members.", "",
        f"Setup: `ocm-control --workers {result['workers']}`, {result['rooms']:,} rooms × "
        f"{result['users']} members joined through TCRP"
        f"{' over TLS (each with its datagram key)' if result.get('tls') else ''} "
        f"with {result.get('framing', 'ocm1')} delivery and bound by a "
        f"first datagram (`ocm-loadgen --join-only`) in {result['join_s']:.0f} s; memory "
        "sampled before and after, (after − before) / members. Chat datagrams the "
        f"worker(s) received: {_datagrams_text(result['datagrams'])}.", "",
        *(["The rooms keep no history in this run (`--history-messages 0`: the members' "
            "`joined` notices are numbered but not kept), so that the figure is the "
            "members' own; the history of a room is given per room below.", ""]
          if result.get("history_messages") == 0 else []),
        f"Reproduce: `{command}` (or `make bench-memory`).", "",
        *_history_lines(result.get("history")),
        "| process | RSS B/member | PSS B/member | USS B/member | USS before | USS after |",
        "|---|---|---|---|---|---|",
    ]
    for role in ("workers", "control", "tree"):
        row = pm[role]
        lines.append(f"| {role} | {row['rss']:,.0f} | {row['pss']:,.0f} | {row['uss']:,.0f} | "
                     f"{result['before'][role]['uss'] / 2**20:,.1f} MiB | "
                     f"{result['after'][role]['uss'] / 2**20:,.1f} MiB |")
    return "\n".join(lines) + "\n"


def _history_lines(h: dict[str, float] | None) -> list[str]:
    if not h:
        return []
    return [f"History of one `ocm1r` room at the default limits ({h['max_messages']:,.0f} "
            f"messages, {h['max_bytes'] / 1024:,.0f} KiB, {h['max_age_s']:g} s; "
            f"{h['worker_bytes'] / 2**20:,.0f} MiB per worker), full of {h['size']:,.0f}-byte "
            f"chats: **{h['allocated']:,.0f} B per room** ({h['entries']:,.0f} entries, "
            f"{h['allocated'] / max(h['entries'], 1):,.0f} B each; Python's allocations by "
            f"`tracemalloc`), {h['charged']:,.0f} B charged against the limits; the worker's "
            f"budget holds {h['rooms_in_worker_budget']:,.0f} such rooms, past it new "
            "deliveries are sent but not kept.", ""]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=10_000)
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--tls", action="store_true",
                   help="members join over TLS and hold a datagram key each [plain TCRP]")
    p.add_argument("--framing", choices=("ocm1", "ocm1r"), default="ocm1",
                   help="delivery the members ask for [ocm1]")
    p.add_argument("--history-messages", type=int, default=None, metavar="N",
                   help="ocm-control --history-messages: 0 keeps no history, so that an "
                        "ocm1r member's own memory is measured without its room's (the "
                        "joined notices are numbered and kept); the room's history is "
                        "reported beside it [the server's default]")
    p.add_argument("--history-size", type=int, default=100,
                   help="chat bytes of the deliveries in the measured room history [100]")
    add_common_arguments(p, "memory")
    return p


def main(argv: list[str] | None = None) -> int:
    argv_list = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv_list)
    members = args.rooms * args.users
    quota = str(max(members, 1000))
    flags = [*(f for f in servers.control_command(args.workers)[3:] if f != "--admin-port=-1"),
             "--admin-port", "0", "--max-rooms-per-ip", quota,
             "--max-conns-per-ip", quota, "--conn-rate-per-ip", quota,
             "--max-members", str(max(args.users, 2)),
             # the joins may outlast the default 300 s (100,000 over TLS: ~11 min) and a
             # joined member stays silent: it must not be evicted before the sample
             "--inactivity-timeout", str(JOIN_TIMEOUT_S),
             *([] if args.history_messages is None
               else ["--history-messages", str(args.history_messages)])]
    on_path = not args.ocm_command
    procs = max(1, math.ceil(members / MEMBERS_PER_LOADGEN_PROC))
    out = args.out or climit.BUILD_DIR / time.strftime("memory-%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    join_tls: list[str] = []
    if args.tls:  # the base command turns TLS off
        from tests.integration.test_tls import make_pki

        ca, cert, key = make_pki(out)
        flags = [f for f in flags if f != "--no-tls"]
        flags += ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0"]
        join_tls = ["--tls-ca", str(ca), "--join-concurrency", str(TLS_JOIN_CONCURRENCY)]
    cmd = ([*shlex.split(args.ocm_command), *flags] if args.ocm_command
           else [sys.executable, "-m", "control", *flags])
    server = servers.start(cmd, timeout=120.0, extra_env=dict(args.ocm_env),
                           repo_on_path=on_path)
    try:
        workers = set(servers.worker_pids(server.output()).values())
        admin = wait_admin(server)  # now: the log keeps only its last 2,000 lines
        time.sleep(SETTLE_S)  # a sample of a settled process, not a wait for an event
        before = sample(server.pid, workers)
        tcp_port = server.tcp_port
        if args.tls:
            found = TLS_RE.search(server.output())
            if found is None:
                raise RuntimeError("ocm-control's ready line names no TLS port")
            tcp_port = int(found[1])
        t = time.monotonic()
        join = [sys.executable, "-m", "loadgen", "--server", server.host, "--tcp-port",
                str(tcp_port), *join_tls, "--rooms", str(args.rooms), "--users", str(args.users),
                "--framing", args.framing, "--procs", str(procs), "--join-only", "--quiet",
                "--bind-timeout", "10", "--json", str(out / "joins.json")]
        done = subprocess.run(join, capture_output=True, text=True, timeout=JOIN_TIMEOUT_S,
                              env=dict(os.environ, PYTHONPATH=str(servers.REPO_ROOT)))
        join_s = time.monotonic() - t
        print(done.stdout.strip(), done.stderr.strip(), sep="\n", file=sys.stderr)
        setup = orjson.loads((out / "joins.json").read_bytes())["setup"]
        joined = int(setup["joins_ok"])
        time.sleep(SETTLE_S)
        after = sample(server.pid, workers)
        datagrams = chat_datagrams(admin)
    finally:
        server.stop()
    result = {"members": joined, "rooms": args.rooms, "users": args.users,
              "workers": args.workers, "tls": args.tls, "framing": args.framing,
              "history_messages": args.history_messages,
              "join_s": join_s, "datagrams": datagrams,
              "notices_missing": setup["bound_missing"],
              "before": before, "after": after,
              "per_member": per_member(before, after, joined),
              "history": history_per_room(args.history_size), "machine": machine_info(),
              "command": command_line(argv_list, "memory")}
    text = render(result, result["command"])
    print("\n" + text)
    (out / "memory.md").write_text(text)
    (out / "memory.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"written: {out / 'memory.md'}, {out / 'memory.json'}", file=sys.stderr)
    if args.update_docs:
        put_section("memory", text, result)
    return 0 if joined == members else 1


if __name__ == "__main__":
    sys.exit(main())
