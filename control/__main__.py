"""``ocm-control``: parse the config, bind every port, start the workers, serve TCRP.

Exit codes: 0 clean stop (SIGTERM/SIGINT), 1 runtime failure (a busy port, a worker that
cannot boot), 2 bad usage (argparse), 78 bad configuration (EX_CONFIG), 130 a second
SIGINT (immediate stop).

Signals: SIGTERM and SIGINT drain (``/readyz`` turns 503, systemd hears ``STOPPING=1``,
new requests are answered UNAVAILABLE, every member gets ``closed``, then exit within
``--drain-timeout``); SIGHUP reloads the live settings (config.LIVE_FIELDS). The log says
``ready tcp=HOST:PORT udp=PORTS stage1=PORT workers=N steering=MODE sched=SCHED
tls=HOST:PORT`` once every worker is ready (``tcp=disabled`` with ``--no-plain-tcrp``,
``tls=disabled`` with ``--no-tls``) (and systemd hears ``READY=1``), then
``admin http=HOST:PORT`` (or ``=disabled``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from control import config as config_mod
from control import tls, tlsport
from control.admin import AdminServer, Metrics, routes_for
from control.clusterroute import ClusterRouter, cluster_route, load_secret
from control.clusterudp import UdpRelay
from control.config import LIVE_FIELDS, Config, ConfigError
from control.notify import notify, watchdog_interval
from control.registry import MemberRecord, Registry
from control.server import ControlApp, TcrpConnection, new_token
from control.sockets import PortBusy, UdpPlan, busy_hint, plan_udp
from control.supervisor import Supervisor
from control.tlsport import TlsPort
from relay import ipc
from runtime import logs, sched
from runtime.sockbuf import SOCKET_BUFFER_BYTES, granted
from wire import dgmac

log = logging.getLogger("ocm.control")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130

SAMPLE_INTERVAL_S = 0.5
"""How often control folds the workers' stats snapshots into the metrics totals and
reports suppressed log repeats."""


def _reseed(member: MemberRecord) -> ipc.AddMember:
    """The command that places ``member`` on a restarted worker, under a fresh placement
    nonce (used only with a datagram key), which the member's record keeps."""
    nonce = secrets.token_bytes(dgmac.NONCE_BYTES)
    if member.datagram_key is not None:
        member.placement = nonce
    return member.command(0, nonce)


def _hint(exc: OSError, setting: str) -> str:
    """``; <how to pick another port>`` when ``exc`` says the port is taken, else ``""``."""
    return f"; {busy_hint(setting)}" if exc.errno == errno.EADDRINUSE else ""


class Control:
    """The running service: owns the app, the supervisor and the signal dispatch.

    ``state`` is ``starting``, ``ready``, ``draining`` or ``stopped``.
    """

    def __init__(self, cfg: Config, plan: UdpPlan, argv: Sequence[str] | None,
                 sources: Mapping[str, str] | None = None,
                 cluster_secret: bytes | None = None) -> None:
        self.cfg = cfg
        self.plan = plan
        self.argv = argv
        self.sources = dict(sources or {})
        self.cluster: ClusterRouter | None = None
        if cfg.cluster:
            assert cluster_secret is not None
            self.cluster = ClusterRouter(cfg, cluster_secret, plan.ports[0])
        self.registry = Registry(cfg.workers, new_token if self.cluster is None
                                 else self.cluster.new_token)
        self.app = ControlApp(cfg, plan.ports, self.registry, self.cluster)
        self.stop_requested = asyncio.Event()
        self.interrupts = 0
        self.exit_code = EXIT_OK
        self.state = "starting"
        self.reloads = {"ok": 0, "failed": 0}
        self.started_at = time.time()
        self.metrics = Metrics(self)
        self.admin: AdminServer | None = None

    # Signal handlers only record the signal (gunicorn: "NO LOGGING, just queue").
    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            asyncio.get_running_loop().call_soon(self.handle_hup)
            return
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                asyncio.get_running_loop().call_soon(self.handle_second_int)
                return
        self.stop_requested.set()

    def handle_second_int(self) -> None:
        log.warning("second interrupt: stopping now")
        if self.app.supervisor is not None:
            self.app.supervisor.kill_all()
        sys.stdout.flush()
        raise SystemExit(EXIT_INTERRUPTED)

    def handle_hup(self) -> None:
        """Reload the live settings from flags, env and file; report what needs a restart.

        Nobody is dropped: timeouts and limits apply to new connections and requests at
        once, and the workers get a ``config`` command (eviction deadlines are recomputed
        from each member's last datagram). A file that does not load keeps everything.
        """
        try:
            new, _, sources = config_mod.load_with_sources(self.argv)
        except (ConfigError, SystemExit) as exc:
            self.reloads["failed"] += 1
            # Never suppressed as a repeat: the latest reload's outcome must be visible.
            log.error("reload failed, keeping the current settings: %s", exc,
                      extra={logs.ALWAYS: True})
            return
        changed = [f.name for f in dataclasses.fields(Config)
                   if getattr(new, f.name) != getattr(self.cfg, f.name)]
        live = [name for name in changed if name in LIVE_FIELDS]
        frozen = [name for name in changed if name not in LIVE_FIELDS]
        old = self.cfg
        self.cfg = dataclasses.replace(self.cfg, **{name: getattr(new, name) for name in live})
        self.sources.update({name: sources[name] for name in live})
        self.app.cfg = self.cfg
        # Say what was reloaded at the more verbose of the old and new levels, so that the
        # line shows both when turning logging down and when turning it up.
        quieter = logging.getLevelName(self.cfg.log_level.upper()) > logging.getLevelName(
            old.log_level.upper())
        if not quieter:
            logs.set_level(self.cfg.log_level)
        supervisor = self.app.supervisor
        if supervisor is not None:
            # A worker restarted later starts with the new values too.
            supervisor.settings = self.cfg.worker_settings()
            supervisor.broadcast(ipc.Configure(supervisor.settings))
        self.reloads["ok"] += 1
        log.info("reloaded: %s%s",
                 ", ".join(f"{n}={getattr(self.cfg, n)}" for n in live) or "nothing changed",
                 "; needs a restart: " + ", ".join(
                     f"{n} ({getattr(old, n)} -> {getattr(new, n)})" for n in frozen)
                 if frozen else "")
        if quieter:
            logs.set_level(self.cfg.log_level)

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready once every worker is ready and joins are accepted."""
        if self.state != "ready":
            return False, self.state
        if not self.app.accepting:
            return False, "draining"
        supervisor = self.app.supervisor
        waiting = [h.index for h in supervisor.handles if not h.ready.is_set()] \
            if supervisor is not None else [-1]
        if waiting:
            return False, "workers not ready: " + ", ".join(map(str, waiting))
        return True, "ready"

    async def _start_admin(self) -> bool:
        """Bind the admin HTTP server; False if an explicitly asked port cannot be bound.

        The default port (9100, also node_exporter's) is best effort: if it is busy the
        service runs without the admin server and says so.
        """
        cfg = self.cfg
        if cfg.admin_port < 0:
            return True
        routes = routes_for(self.metrics, self.readiness)
        if self.cluster is not None:
            routes["/cluster"] = cluster_route(self.cluster)
        admin = AdminServer(routes)
        try:
            await admin.start(cfg.admin_host, cfg.admin_port)
        except OSError as exc:
            where = self.sources.get("admin_port", config_mod.DEFAULT_SOURCE)
            if where == config_mod.DEFAULT_SOURCE:
                log.warning("admin HTTP server not started: %s:%d: %s (set admin_port to a "
                            "free port, or -1 to disable it)", cfg.admin_host,
                            cfg.admin_port, exc.strerror)
                return True
            log.error("cannot listen on admin HTTP %s:%d (%s): %s%s", cfg.admin_host,
                      cfg.admin_port, where, exc.strerror, _hint(exc, "admin_port"))
            return False
        self.admin = admin
        return True

    async def _housekeeping(self) -> None:
        """Fold worker stats into the metrics; report suppressed log repeats."""
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            self.metrics.sample()
            logs.report_suppressed(log)

    async def _summarise_rooms(self) -> None:
        """Every ``log_summary_interval`` with something to say: one INFO line for the
        rooms created and closed and the members evicted meanwhile (each is DEBUG)."""
        while True:
            interval = self.cfg.log_summary_interval  # live: a reload applies next round
            await asyncio.sleep(interval if interval > 0 else SAMPLE_INTERVAL_S)
            if interval <= 0:
                continue
            done = self.app.activity.take()
            if done.created or done.closed or done.evicted:
                log.info("in the last %g s: %d rooms created, %d closed, %d members evicted; "
                         "%d rooms open", interval, done.created, done.closed, done.evicted,
                         len(self.registry.rooms))

    async def _watchdog(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _check_buffers(self) -> None:
        """Warn when the kernel capped the UDP buffers below what was asked (8 MiB)."""
        if not self.plan.sockets:
            return
        sock = self.plan.sockets[0]
        for option, sysctl in ((socket.SO_RCVBUF, "net.core.rmem_max"),
                               (socket.SO_SNDBUF, "net.core.wmem_max")):
            got = granted(sock, option)
            if got < SOCKET_BUFFER_BYTES:
                log.warning("UDP %s buffer is %d KiB, not the %d KiB asked: raise %s (see "
                            "docs/operations.md, Tuning)",
                            "receive" if option == socket.SO_RCVBUF else "send", got // 1024,
                            SOCKET_BUFFER_BYTES // 1024, sysctl)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        listeners: list[asyncio.Server] = []
        server: asyncio.Server | None = None
        tls_port: TlsPort | None = None
        try:
            if cfg.plain_tcrp:
                server = await loop.create_server(lambda: TcrpConnection(self.app), cfg.host,
                                                  cfg.tcp_port, reuse_address=True,
                                                  start_serving=False, backlog=4096)
                listeners.append(server)
        except OSError as exc:
            log.error("cannot listen on TCP %s:%d: %s%s", cfg.host, cfg.tcp_port, exc.strerror,
                      _hint(exc, "tcp_port"))
            return EXIT_FAILURE
        if cfg.tls:
            try:
                cert, key = cfg.tls_cert, cfg.tls_key
                if not cert:
                    state = Path(cfg.state_dir) if cfg.state_dir else tls.default_state_dir()
                    cert, key = tls.ensure_self_signed(state, cfg.host)
                context = tls.server_context(cert, key)
                log.info("TLS: %scertificate %s, key %s (what clients pin and show)",
                         "" if cfg.tls_cert else "self-signed ", cert,
                         tls.key_fingerprint(cert))
            except tls.TlsSetupError as exc:
                log.error("%s", exc)
                for listener in listeners:
                    listener.close()
                return EXIT_CONFIG
            try:
                tls_port = TlsPort(self.app, context, tlsport.listen(cfg.host, cfg.tls_port))
            except OSError as exc:
                log.error("cannot listen on TLS %s:%d: %s%s", cfg.host, cfg.tls_port,
                          exc.strerror, _hint(exc, "tls_port"))
                for listener in listeners:
                    listener.close()
                return EXIT_FAILURE
        if self.cluster is not None:
            relay = None
            if self.plan.relay is not None:
                relay = UdpRelay(self.plan.relay, self.plan.sockets[0], cfg.workers)
            else:
                log.warning("cluster: no relay socket (steering=%s): clients must send "
                            "their datagrams to the owning node (details.udp_host)",
                            self.plan.steering)
            front = (listeners[0].sockets[0].getsockname()[1] if listeners
                     else tls_port.address[1] if tls_port is not None else 0)
            try:
                await self.cluster.start(self.app, front, relay)
            except OSError as exc:
                log.error("cannot listen on the cluster link %s:%d: %s%s", cfg.host,
                          cfg.cluster_port, exc.strerror, _hint(exc, "cluster_port"))
                for listener in listeners:
                    listener.close()
                return EXIT_FAILURE
            log.info("cluster node=%s link=%s:%d registry=%s", cfg.node_id, cfg.host,
                     self.cluster.link_port, "up" if self.cluster.registry_up else "down")
        if not await self._start_admin():
            for listener in listeners:
                listener.close()
            return EXIT_FAILURE
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        background = [asyncio.ensure_future(self._housekeeping()),
                      asyncio.ensure_future(self._summarise_rooms())]
        interval = watchdog_interval()
        if interval is not None:
            background.append(asyncio.ensure_future(self._watchdog(interval)))
        supervisor = Supervisor(
            cfg.workers, cfg.worker_settings(), self.plan.sockets, self.plan.stage1,
            self.plan.inboxes, self.plan.outboxes,
            seed=lambda i: (_reseed(m) for m in self.registry.members_of(i)),
            on_event=self.app.on_worker_event, ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout, fd_reserve=cfg.fd_reserve)
        self.app.supervisor = supervisor
        starting = asyncio.ensure_future(supervisor.start())
        stop_wait = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is None and not self.stop_requested.is_set():
            for listener in listeners:
                await listener.start_serving()
            if tls_port is not None:
                tls_port.start()
            tcp = (f"{cfg.host}:{server.sockets[0].getsockname()[1]}" if server is not None
                   else "disabled")
            tls_where = (f"{cfg.host}:{tls_port.address[1]}" if tls_port is not None
                         else "disabled")
            self.state = "ready"
            udp = ",".join(map(str, sorted(set(self.plan.ports))))
            ready = (f"ready tcp={tcp} udp={udp} stage1={self.plan.stage1_port}"
                     f" workers={cfg.workers} steering={self.plan.steering}"
                     f" sched={sched.describe(cfg.realtime_priority)} tls={tls_where}")
            log.info("%s", ready)
            if self.admin is not None and self.admin.address is not None:
                log.info("admin http=%s:%d", *self.admin.address)
            else:
                log.info("admin http=disabled")
            notify(f"READY=1\nSTATUS={ready}")
            self._check_buffers()
            failed = supervisor.failed
            assert failed is not None
            waits: set[asyncio.Future[Any]] = {stop_wait, failed}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if failed.done() and failed.exception() is not None:
                failure = failed.exception()
                log.error("%s", failure)
                # A worker that cannot boot (WorkerBootError) or anything else that stops
                # the supervisor: a runtime failure, which a service manager may restart.
                self.exit_code = EXIT_FAILURE
        elif starting.done() and starting.exception() is not None:
            log.error("workers failed to start: %s", starting.exception())
            self.exit_code = EXIT_FAILURE
        # Graceful stop: /readyz 503, requests answered UNAVAILABLE (the listener stays
        # open while draining so that clients get a status, not a refused connection),
        # `closed` to every member, then close everything.
        self.state = "draining"
        self.app.accepting = False
        notify("STOPPING=1\nSTATUS=draining")
        log.info("stopping: draining %d rooms (up to %gs)", len(self.registry.rooms),
                 cfg.drain_timeout)
        if not starting.done():
            starting.cancel()
        if self.cluster is not None:
            await self.cluster.close()
        await supervisor.shutdown(cfg.drain_timeout)
        for listener in listeners:
            listener.close()
        if tls_port is not None:
            tls_port.close()
        for conn in list(self.app.connections):
            if conn.transport is not None:
                conn.transport.abort()
        stop_wait.cancel()
        for task in background:
            task.cancel()
        if self.admin is not None:
            self.admin.close()
        self.app.kdf.shutdown()
        self.state = "stopped"
        logs.report_suppressed(log, now=float("inf"))
        log.info("stopped (exit code %d)", self.exit_code)
        return self.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg, args, sources = config_mod.load_with_sources(argv)
    except ConfigError as exc:
        print(f"ocm-control: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if getattr(args, "print_config", False):
        print(config_mod.to_toml(cfg, sources), end="")
        return EXIT_OK
    secret = None
    if cfg.cluster:
        try:
            import redis  # noqa: F401  (the optional "cluster" extra)
        except ImportError:
            print("ocm-control: --cluster needs the redis package: pip install "
                  "'ocm[cluster]'", file=sys.stderr)
            return EXIT_CONFIG
        try:
            secret = load_secret(cfg)
        except ConfigError as exc:
            print(f"ocm-control: configuration error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    logs.setup_logging(cfg.log_level, cfg.log_format, "control")
    refused = sched.probe(cfg.realtime_priority)
    if refused is not None:
        log.error("%s", refused)
        return EXIT_FAILURE
    try:
        plan = plan_udp(cfg.host, cfg.udp_port, cfg.stage1_port or None, cfg.workers,
                        cfg.port_per_shard, cfg.steering, relay=bool(cfg.cluster))
    except PortBusy as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except OSError as exc:
        log.error("cannot set up UDP sockets: %s", exc)
        return EXIT_FAILURE
    import uvloop

    control = Control(cfg, plan, argv, sources, secret)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code: Any = runner.run(control.run())
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
