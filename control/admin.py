"""The admin HTTP server of ``ocm-control``: ``/metrics``, ``/healthz``, ``/readyz``.

A tiny HTTP/1.1 server on asyncio (GET and HEAD only, ``Connection: close``, one request
per connection, a 8 KiB request head, 5 s for the whole exchange), bound to
``--admin-host`` (default 127.0.0.1) and ``--admin-port`` (default 9100; 0 = any free
port; -1 = off). At most 32 connections are open; a new one past the cap closes the oldest
that has not sent its request yet (else the oldest of all), so idle or slow clients can
never lock a liveness probe out.

Metrics come from the control process only. The relay workers already send a snapshot
of their counters over their pipe once a second (``relay.ipc.Stats``, sent by
relay/worker.py ``_tick``); ``WorkerCounters`` turns those per-process snapshots into
totals that only grow, across worker restarts too (a replacement starts from zero: its
counts are added, not subtracted). Nothing here runs on the datagram path. The exposition format
(text 0.0.4) is written by hand; no label carries a room, a user or an address.

Paths: ``/metrics`` (Prometheus text format), ``/healthz`` (200 while the process runs:
liveness), ``/readyz`` (200 when every worker is ready and joins are accepted; 503 while
starting, while a worker is being replaced and while draining: readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

from relay.ipc import Stats
from wire.codes import Status

log = logging.getLogger("ocm.control")

MAX_REQUEST_HEAD_BYTES: Final = 8192
REQUEST_TIMEOUT_S: Final = 5.0
"""The whole exchange of one connection: request head in, answer out."""
MAX_CONNECTIONS: Final = 32
"""Concurrent admin connections (a scraper needs one); a new connection past the cap
takes the place of the oldest waiting one (32 × 8 KiB heads at most)."""
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
Response = tuple[int, str, bytes]
"""HTTP status, content type, body."""

_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found",
                   405: "Method Not Allowed", 431: "Request Header Fields Too Large",
                   500: "Internal Server Error", 503: "Service Unavailable"}


# --- worker counters -------------------------------------------------------------------------
def flatten_stats(stats: Stats) -> dict[tuple[str, Labels], float]:
    """The counters of one worker ``Stats`` snapshot, keyed by (metric, labels).

    Chat-port counters are labelled ``port="chat"``, Stage 1's ``port="stage1"``. Drop
    and eviction reasons are taken from the tables as they are, so a new reason needs no
    change here.
    """
    out: dict[tuple[str, Labels], float] = {}
    for port, section in (("chat", stats.chat), ("stage1", stats.stage1)):
        ported = (("port", port),)
        out[("datagrams_received", ported)] = section.received
        out[("datagrams_relayed", ported)] = section.relayed
        for metric, table in (("datagrams_dropped", section.drops),
                              ("evictions", section.evictions)):
            for reason, value in table.items():
                out[(metric, (*ported, ("reason", reason)))] = value
    out[("send_failures", ())] = stats.send_failures
    out[("datagrams_forwarded", ())] = stats.forwarded
    return out


class WorkerCounters:
    """Totals over every worker process that ever ran, from their snapshots.

    ``absorb(index, stats)`` with each snapshot seen (in order, per worker): the growth
    since the previous snapshot of the same process (same ``pid``) is added; a new
    process's counters are added whole. Snapshots are sampled twice a second, and the
    worker sends one a second, so at most the last second before a crash is missed.
    """

    def __init__(self) -> None:
        self.totals: dict[tuple[str, Labels], float] = {}
        self._last: dict[int, tuple[Any, dict[tuple[str, Labels], float]]] = {}

    def absorb(self, index: int, stats: Stats | None) -> None:
        if stats is None:
            return
        pid = stats.pid
        current = flatten_stats(stats)
        last_pid, last = self._last.get(index, (None, {}))
        if pid != last_pid:
            last = {}
        for key, value in current.items():
            growth = value - last.get(key, 0)
            if growth < 0:  # a counter went back without a new pid: treat as a reset
                growth = value
            if growth or key not in self.totals:
                self.totals[key] = self.totals.get(key, 0) + growth
        self._last[index] = (pid, current)


# --- exposition ------------------------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Exposition:
    """Builds the Prometheus text format, one metric family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Labels, float]]) -> None:
        """Add ``name`` (counters end in ``_total``) with its HELP, TYPE and samples."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                self.lines.append(f"{name}{{{text}}} {_number(value)}")
            else:
                self.lines.append(f"{name} {_number(value)}")

    def render(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


class Source(Protocol):
    """What the metrics read from the running service (``control.__main__.Control``)."""

    app: Any
    registry: Any
    plan: Any
    cluster: Any
    """Cluster mode's ``ClusterRouter`` (control/clusterroute.py), else None."""
    state: str
    reloads: dict[str, int]
    started_at: float

    def readiness(self) -> tuple[bool, str]: ...


_COUNTER_HELP: Final = {
    "datagrams_received": ("ocm_datagrams_received_total",
                           "UDP datagrams read by the relay workers, by port (chat, stage1)"),
    "datagrams_relayed": ("ocm_datagrams_relayed_total",
                          "accepted chat datagrams relayed to the other members (each fans "
                          "out to every other member), by port"),
    "datagrams_dropped": ("ocm_datagrams_dropped_total",
                          "UDP datagrams dropped, by port and reason"),
    "evictions": ("ocm_evictions_total",
                  "members (chat) or addresses (stage1) removed, by port and reason"),
    "send_failures": ("ocm_send_failures_total", "relay sends that failed (local errors)"),
    "datagrams_forwarded": ("ocm_datagrams_forwarded_total",
                            "datagrams passed to the owning worker (steering=forward only)"),
}


_LABELLED: Final = frozenset({"datagrams_received", "datagrams_relayed", "datagrams_dropped",
                              "evictions"})
"""Worker counters that exist only with labels: no sample until a worker reported one."""


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("ocm")
    except Exception:  # not installed (run from a source tree)
        return "unknown"


class Metrics:
    """``render()`` the whole exposition from a ``Source``; ``sample()`` the workers'
    latest snapshots (control calls it twice a second and before each render)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.workers = WorkerCounters()
        self.version = _package_version()

    def _handles(self) -> list[Any]:
        supervisor = self.source.app.supervisor
        return list(supervisor.handles) if supervisor is not None else []

    def sample(self) -> None:
        for handle in self._handles():
            self.workers.absorb(handle.index, handle.stats)

    def render(self) -> bytes:
        self.sample()
        src = self.source
        app, registry = src.app, src.registry
        handles = self._handles()
        out = Exposition()
        out.family("ocm_build_info", "gauge", "version and UDP steering mode of this server",
                   [((("version", self.version), ("steering", str(src.plan.steering))), 1)])
        out.family("ocm_ready", "gauge", "1 when every worker is ready and joins are "
                   "accepted (as /readyz)", [((), 1 if src.readiness()[0] else 0)])
        out.family("ocm_draining", "gauge", "1 during a graceful stop",
                   [((), 1 if src.state == "draining" else 0)])
        out.family("ocm_rooms", "gauge", "live rooms (registry)", [((), len(registry.rooms))])
        out.family("ocm_members", "gauge", "members holding a token (registry)",
                   [((), len(registry.tokens))])
        joins = {status.name: 0 for status in Status}
        joins.update(app.joins)
        out.family("ocm_joins_total", "counter", "TCRP requests (create or join) answered, "
                   "by status name", [((("status", k),), v) for k, v in joins.items()])
        out.family("ocm_tcp_connections", "gauge", "open TCRP connections",
                   [((), len(app.connections))])
        out.family("ocm_tls_handshakes", "gauge", "TLS handshakes in progress on the TLS port",
                   [((), app.handshakes.total)])
        out.family("ocm_tls_handshakes_refused_total", "counter", "connections to the TLS "
                   "port closed at accept: max_tls_handshakes or max_tls_handshakes_per_ip "
                   "reached", [((), app.handshakes.refused)])
        rooms_per_worker = [0] * len(registry.load)
        for room in list(registry.rooms.values()):
            if 0 <= room.worker < len(rooms_per_worker):
                rooms_per_worker[room.worker] += 1
        out.family("ocm_worker_members", "gauge", "members per relay worker (its load)",
                   [((("worker", str(i)),), n) for i, n in enumerate(registry.load)])
        out.family("ocm_worker_rooms", "gauge", "rooms per relay worker",
                   [((("worker", str(i)),), n) for i, n in enumerate(rooms_per_worker)])
        out.family("ocm_worker_ready", "gauge", "1 when the worker is ready",
                   [((("worker", str(h.index)),), 1 if h.ready.is_set() else 0)
                    for h in handles])
        out.family("ocm_worker_hot_path", "gauge", "1 for the hot loop each worker runs: "
                   "compiled (relay._hot) or python (relay/hot.py)",
                   [((("worker", str(h.index)), ("path", h.stats.hot_path)), 1)
                    for h in handles if h.stats is not None])
        out.family("ocm_worker_restarts_total", "counter", "relay worker restarts",
                   [((("worker", str(h.index)),), h.restarts) for h in handles])
        supervisor = app.supervisor
        out.family("ocm_control_stalls_total", "counter", "heartbeats that found control "
                   "itself had not run for a while (stopped, starved): worker liveness was "
                   "judged from fresh pings",
                   [((), supervisor.stalls if supervisor is not None else 0)])
        stage1 = sum(h.stats.stage1_clients for h in handles if h.stats is not None)
        out.family("ocm_stage1_clients", "gauge", "addresses in the Stage 1 global chat",
                   [((), stage1)])
        by_metric: dict[str, list[tuple[Labels, float]]] = {}
        for (metric, labels), value in sorted(self.workers.totals.items()):
            by_metric.setdefault(metric, []).append((labels, value))
        for metric, (name, help_text) in _COUNTER_HELP.items():
            samples = by_metric.get(metric) or ([] if metric in _LABELLED else [((), 0)])
            out.family(name, "counter", help_text, samples)
        kdf = app.kdf
        out.family("ocm_password_derivations_total", "counter", "scrypt runs (password "
                   "hashes and checks not answered from a room's cache)", [((), kdf.runs)])
        out.family("ocm_password_cache_hits_total", "counter", "joins whose password was "
                   "accepted without scrypt (verified before)",
                   [((), app.password_cache_hits)])
        out.family("ocm_password_refused_total", "counter", "key derivations refused with "
                   "RATE_LIMITED, by reason (rate, busy)",
                   [((("reason", k),), v) for k, v in sorted(kdf.refused.items())])
        out.family("ocm_config_reloads_total", "counter", "SIGHUP reloads, by result",
                   [((("result", k),), v) for k, v in sorted(src.reloads.items())])
        cluster = getattr(src, "cluster", None)
        if cluster is not None:
            self._cluster(out, cluster)
        self._process(out)
        return out.render()

    def _cluster(self, out: Exposition, cluster: Any) -> None:
        """Cluster mode (control/clusterroute.py): this node's view, labelled with its id."""
        node = (("node", cluster.node_id),)
        out.family("ocm_cluster_registry_up", "gauge", "1 while the cluster registry "
                   "(Redis) answered the last heartbeat", [(node, int(cluster.registry_up))])
        out.family("ocm_cluster_lease_valid", "gauge", "1 while this node's lease is "
                   "renewed (it admits new members)", [(node, int(cluster.lease_valid()))])
        out.family("ocm_cluster_nodes", "gauge", "live nodes this node sees",
                   [(node, len(cluster.nodes))])
        out.family("ocm_cluster_events_total", "counter", "cluster events on this node, by "
                   "kind", [((*node, ("kind", k)), v) for k, v in
                            sorted(cluster.counters.items())])
        if cluster.relay is not None:
            stats = cluster.relay.statistics()
            out.family("ocm_cluster_relay_flows", "gauge", "members whose datagrams this "
                       "node relays to their room's node", [(node, stats.pop("flows"))])
            out.family("ocm_cluster_relay_total", "counter", "relayed datagrams and flows, "
                       "by kind", [((*node, ("kind", k)), v) for k, v in sorted(stats.items())])

    def _process(self, out: Exposition) -> None:
        """The standard process_* metrics of the control process (not the workers)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out.family("process_cpu_seconds_total", "counter", "CPU time of the control process",
                   [((), round(usage.ru_utime + usage.ru_stime, 6))])
        out.family("process_start_time_seconds", "gauge", "start time of the control "
                   "process since the Unix epoch", [((), round(self.source.started_at, 3))])
        rss = _resident_bytes()
        if rss is not None:
            out.family("process_resident_memory_bytes", "gauge", "resident memory of the "
                       "control process", [((), rss)])
        with contextlib.suppress(OSError):
            out.family("process_open_fds", "gauge", "open file descriptors of the control "
                       "process", [((), len(os.listdir("/proc/self/fd")))])


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


# --- HTTP --------------------------------------------------------------------------------------
class AdminServer:
    """``start(host, port)``, then it serves ``routes`` until ``close()``.

    ``routes`` maps a path to a callable returning ``(status, content type, body)``.
    """

    def __init__(self, routes: Mapping[str, Callable[[], Response]]) -> None:
        self.routes = dict(routes)
        self.server: asyncio.AbstractServer | None = None
        self.active = 0
        self.address: tuple[str, int] | None = None
        self._open: dict[asyncio.StreamWriter, bool] = {}
        """Open connections, oldest first -> True while their request head is awaited."""

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and serve; return the bound (host, port). Raises ``OSError``."""
        self.server = await asyncio.start_server(self._serve, host, port,
                                                 limit=MAX_REQUEST_HEAD_BYTES,
                                                 reuse_address=True)
        sockname = self.server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        return self.address

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._open):
            writer.transport.abort()

    def _make_room(self) -> None:
        """At the cap: close the oldest connection still waiting for its request head,
        else the oldest of all (a slow reader), so that a new probe is always served."""
        victim = next((w for w, waiting in self._open.items() if waiting), None)
        if victim is None:
            victim = next(iter(self._open))
        del self._open[victim]
        victim.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_CONNECTIONS:
            self._make_room()
        self._open[writer] = True
        self.active += 1
        answered = False
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, ctype, body, head_only = await self._answer(reader, writer)
                reason = _REASONS.get(status, "Unknown")
                headers = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}",
                           f"Content-Length: {len(body)}", "Connection: close",
                           "Cache-Control: no-store"]
                if status == 405:
                    headers.append("Allow: GET, HEAD")
                writer.write(("\r\n".join(headers) + "\r\n\r\n").encode()
                             + (b"" if head_only else body))
                await writer.drain()
            answered = True
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The loop is stopping with this connection open: end quietly (a cancelled
            # client_connected_cb task is logged by asyncio as an error with a traceback).
            answered = False
        finally:
            if answered:  # let the rest of the answer go out, for a bounded time
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), REQUEST_TIMEOUT_S)
            writer.transport.abort()
            self.active -= 1
            self._open.pop(writer, None)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> tuple[int, str, bytes, bool]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if writer in self._open:
                self._open[writer] = False  # head read: being answered
        except asyncio.LimitOverrunError:
            return 431, "text/plain", b"request head too large\n", False
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise
            return 400, "text/plain", b"incomplete request\n", False
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain", b"bad request line\n", False
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n", False
        route = self.routes.get(target.split("?", 1)[0])
        if route is None:
            return 404, "text/plain", b"not found; try /metrics, /healthz, /readyz\n", False
        try:
            status, ctype, body = route()
        except Exception:
            log.exception("admin %s failed", target)
            return 500, "text/plain", b"internal error\n", False
        return status, ctype, body, method == "HEAD"


def routes_for(metrics: Metrics, readiness: Callable[[], tuple[bool, str]],
               started: float | None = None) -> dict[str, Callable[[], Response]]:
    """The three admin routes over a ``Metrics`` and a readiness callable."""
    boot = time.monotonic() if started is None else started

    def metrics_route() -> Response:
        return 200, METRICS_CONTENT_TYPE, metrics.render()

    def healthz() -> Response:
        return 200, "text/plain", f"ok uptime={time.monotonic() - boot:.0f}s\n".encode()

    def readyz() -> Response:
        ready, why = readiness()
        return (200 if ready else 503), "text/plain", (why + "\n").encode()

    return {"/metrics": metrics_route, "/healthz": healthz, "/readyz": readyz}
