"""``ocm-control``: parse the config, bind every port, start the workers, serve TCRP.

Exit codes: 0 clean stop (SIGTERM/SIGINT), 1 runtime failure (a busy port, a worker that
cannot boot), 2 bad usage (argparse), 78 bad configuration (EX_CONFIG), 130 a second
SIGINT (immediate stop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence

from control import config as config_mod
from control.config import LIVE_FIELDS, Config, ConfigError
from control.registry import Registry
from control.server import ControlApp, TcrpConnection, new_token
from control.sockets import PortBusy, UdpPlan, plan_udp
from control.supervisor import Supervisor, WorkerBootError

log = logging.getLogger("ocm.control")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130


class Control:
    """The running service: owns the app, the supervisor and the signal dispatch."""

    def __init__(self, cfg: Config, plan: UdpPlan, argv: Sequence[str] | None) -> None:
        self.cfg = cfg
        self.plan = plan
        self.argv = argv
        self.registry = Registry(cfg.workers, new_token)
        self.app = ControlApp(cfg, plan.ports, self.registry)
        self.stop_requested = asyncio.Event()
        self.interrupts = 0
        self.exit_code = EXIT_OK

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
        """Reload the live settings from flags, env and file; report what needs a restart."""
        try:
            new, _ = config_mod.load(self.argv)
        except (ConfigError, SystemExit) as exc:
            log.error("reload failed, keeping the current settings: %s", exc)
            return
        changed = {f.name for f in dataclasses.fields(Config)
                   if getattr(new, f.name) != getattr(self.cfg, f.name)}
        live = sorted(changed & LIVE_FIELDS)
        frozen = sorted(changed - LIVE_FIELDS)
        updates = {name: getattr(new, name) for name in live}
        self.cfg = dataclasses.replace(self.cfg, **updates)
        self.app.cfg = self.cfg
        logging.getLogger().setLevel(self.cfg.log_level.upper())
        if self.app.supervisor is not None:
            self.app.supervisor.broadcast({"t": "config",
                                           "inactivity_timeout": self.cfg.inactivity_timeout,
                                           "max_send_failures": self.cfg.max_send_failures})
        log.info("reloaded: %s%s", ", ".join(f"{n}={getattr(self.cfg, n)}" for n in live)
                 or "nothing changed",
                 f"; needs a restart: {', '.join(frozen)}" if frozen else "")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        try:
            server = await loop.create_server(lambda: TcrpConnection(self.app), cfg.host,
                                              cfg.tcp_port, reuse_address=True,
                                              start_serving=False, backlog=4096)
        except OSError as exc:
            log.error("cannot listen on TCP %s:%d: %s", cfg.host, cfg.tcp_port, exc.strerror)
            return EXIT_FAILURE
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        supervisor = Supervisor(
            cfg.workers, cfg.worker_settings(), self.plan.sockets, self.plan.stage1,
            self.plan.inboxes, self.plan.outboxes,
            seed=lambda i: (m.command(0) for m in self.registry.members_of(i)),
            on_event=self.app.on_worker_event, ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout)
        self.app.supervisor = supervisor
        starting = asyncio.ensure_future(supervisor.start())
        stop_wait = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done() and starting.exception() is None and not self.stop_requested.is_set():
            await server.start_serving()
            tcp_port = server.sockets[0].getsockname()[1]
            log.info("ready tcp=%s:%d udp=%s stage1=%d workers=%d steering=%s", cfg.host,
                     tcp_port, ",".join(map(str, sorted(set(self.plan.ports)))),
                     self.plan.stage1_port, cfg.workers, self.plan.steering)
            assert supervisor.failed is not None
            await asyncio.wait({stop_wait, supervisor.failed},
                               return_when=asyncio.FIRST_COMPLETED)
            if supervisor.failed.done() and supervisor.failed.exception() is not None:
                exc = supervisor.failed.exception()
                log.error("%s", exc)
                self.exit_code = EXIT_FAILURE if isinstance(exc, WorkerBootError) else 1
        elif starting.done() and starting.exception() is not None:
            log.error("workers failed to start: %s", starting.exception())
            self.exit_code = EXIT_FAILURE
        # Graceful stop: no new connections, no new joins, `closed` to every member.
        log.info("stopping: draining %d rooms", len(self.registry.rooms))
        self.app.accepting = False
        server.close()
        for conn in list(self.app.connections):
            if conn.task is None and conn.transport is not None:
                conn.transport.abort()
        if not starting.done():
            starting.cancel()
        await supervisor.shutdown(cfg.drain_timeout)
        stop_wait.cancel()
        self.app.hasher.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
        return self.exit_code


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg, args = config_mod.load(argv)
    except ConfigError as exc:
        print(f"ocm-control: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if getattr(args, "print_config", False):
        print(config_mod.to_toml(cfg), end="")
        return EXIT_OK
    setup_logging(cfg.log_level)
    try:
        plan = plan_udp(cfg.host, cfg.udp_port, cfg.stage1_port or None, cfg.workers,
                        cfg.port_per_shard, cfg.steering)
    except PortBusy as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except OSError as exc:
        log.error("cannot set up UDP sockets: %s", exc)
        return EXIT_FAILURE
    import uvloop

    control = Control(cfg, plan, argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(control.run())


if __name__ == "__main__":
    sys.exit(main())
