"""Configuration of ``ocm-control``: one frozen dataclass, four layers.

Precedence (hypercorn's sentinel idea, done in one loop, runtime/settings.py): defaults <
TOML file (``--config`` or ``OCM_CONFIG``) < ``OCM_<NAME>`` environment variables < flags
actually given. Every field below is also a flag (``--inactivity-timeout``) and an env var
(``OCM_INACTIVITY_TIMEOUT``). ``LIVE_FIELDS`` can change on SIGHUP without a restart.

Call ``load(argv)`` (or ``load_with_sources`` to also learn where each value came from);
both raise ``ConfigError`` — whose message names the file and line, the variable or the
flag — and the entry point turns that into exit code 78 (EX_CONFIG).
docs/operations.md has the table of every key; a unit test keeps it in sync.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import Field, dataclass, fields
from typing import Any, Final, NoReturn

from relay.ipc import WorkerSettings
from relay.steering import MAX_WORKERS
from runtime import sched, settings
from runtime.settings import DEFAULT_SOURCE, env_name, meta, setting
from wire import limits

ConfigError = settings.SettingError
"""A setting is invalid; the message says which, why and where from (exit code 78,
EX_CONFIG)."""
_f = setting
_POS: Final = 0.0
"""``above=_POS``: the setting must be > 0."""


def default_workers() -> int:
    """CPUs this process may run on (cpusets and ``taskset`` included), at most 32."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


@dataclass(frozen=True)
class Config:
    host: str = _f("0.0.0.0", "address to bind the TCP and UDP ports on")
    tcp_port: int = _f(limits.DEFAULT_TCP_PORT, "TCRP control port (TCP); 0 = any free port")
    tls_port: int = _f(limits.DEFAULT_TLS_PORT, "TCRP over TLS port (TCP); 0 = any free port")
    tls: bool = _f(True, "serve TCRP over TLS on tls_port; --no-tls serves only the plain "
                         "port")
    tls_cert: str = _f("", "PEM file with the server certificate (and its chain) for TCRP "
                           "over TLS; empty = a self-signed certificate made on first start "
                           "and kept in state_dir", metavar="FILE")
    tls_key: str = _f("", "PEM file with the private key of tls_cert", metavar="FILE")
    state_dir: str = _f("", "directory for what the server keeps between starts (the "
                            "self-signed TLS certificate and key); empty = "
                            "$XDG_STATE_HOME/ocm, else ~/.local/state/ocm", metavar="DIR")
    plain_tcrp: bool = _f(True, "also serve plain TCRP on tcp_port; --no-plain-tcrp leaves "
                                "only TLS")
    udp_port: int = _f(limits.DEFAULT_UDP_PORT,
                       "public room-chat port (UDP) shared by all workers; 0 = any")
    stage1_port: int = _f(limits.DEFAULT_STAGE1_PORT,
                          "Stage 1 global chat port (UDP); 0 disables it")
    workers: int = _f(default_workers(), "relay worker processes",
                      shown=f"the CPUs this process may use, at most {MAX_WORKERS} "
                            f"(here {default_workers()})")
    inactivity_timeout: float = _f(limits.DEFAULT_INACTIVITY_TIMEOUT_S,
                                   "seconds of silence before a member is removed",
                                   live=True, above=_POS)
    tcp_timeout: float = _f(limits.DEFAULT_TCP_TIMEOUT_S,
                            "seconds a client has to send its whole TCRP request",
                            live=True, above=_POS)
    max_payload: int = _f(limits.DEFAULT_MAX_PAYLOAD_BYTES,
                          "largest TCRP request payload in bytes", live=True)
    max_members: int = _f(limits.DEFAULT_MAX_MEMBERS, "members per room, host included",
                          live=True, above=_POS)
    max_send_failures: int = _f(limits.DEFAULT_MAX_SEND_FAILURES,
                                "consecutive failed sends before a member is removed",
                                live=True, above=_POS)
    max_conns_per_ip: int = _f(256, "concurrent TCP connections per client IP (plain and "
                                     "TLS ports together, counted from accept)",
                               live=True, above=_POS)
    tls_handshake_timeout: float = _f(5.0, "seconds a client has to finish the TLS "
                                           "handshake on tls_port", live=True, above=_POS)
    max_tls_handshakes: int = _f(512, "TLS handshakes in progress at once (all IPs); "
                                      "connections past it are closed at accept",
                                 live=True, above=_POS)
    max_tls_handshakes_per_ip: int = _f(16, "TLS handshakes in progress at once per client "
                                            "IP; connections past it are closed at accept",
                                        live=True, above=_POS)
    conn_rate_per_ip: float = _f(5000.0, "new TCP connections per second per client IP, "
                                         "token bucket with burst = rate", live=True, above=_POS)
    max_password_failures: int = _f(5, "failed passwords per client IP and room within "
                                       "password_failure_window before RATE_LIMITED",
                                    live=True, above=_POS)
    password_failure_window: float = _f(60.0, "seconds over which failed passwords are "
                                              "counted (max_password_failures)",
                                        live=True, above=_POS)
    max_rooms_per_ip: int = _f(2000, "live rooms hosted from one IP", live=True, above=_POS)
    kdf_rate_per_ip: float = _f(50.0, "password key derivations (scrypt: a "
                                      "create with a password, a join whose password was "
                                      "not verified before) started per second per client "
                                      "IP, token bucket with burst = rate; more are "
                                      "RATE_LIMITED", live=True, above=_POS)
    kdf_concurrency_per_ip: int = _f(1, "key derivations of one client IP running or queued "
                                        "at once; its others wait their turn",
                                     live=True, above=_POS)
    kdf_queue: int = _f(32, "key derivations (all IPs) that may wait for one of the 2 "
                            "hashing threads; past it RATE_LIMITED at once", live=True)
    chat_rate: float = _f(limits.DEFAULT_CHAT_RATE,
                          "chat messages per second per member, token bucket; excess "
                          "dropped and counted", live=True, above=_POS)
    chat_burst: int = _f(limits.DEFAULT_CHAT_BURST,
                         "chat messages a member may send at once (bucket size of "
                         "chat_rate)", live=True, above=_POS)
    reliable: bool = _f(True, "grant reliable framed delivery (ocm1r: room order, resends, "
                              "resume) to clients that ask; false: they get ocm1")
    history_messages: int = _f(limits.HISTORY_MAX_MESSAGES, "numbered deliveries a room "
                               "keeps for resends (ocm1r); 0 keeps nothing", minimum=0)
    history_bytes: int = _f(limits.HISTORY_MAX_BYTES, "bytes a room's resend history holds "
                            "at most", minimum=0)
    history_age: float = _f(limits.HISTORY_MAX_AGE_S, "seconds a delivery stays in a "
                            "room's resend history", minimum=0)
    history_worker_bytes: int = _f(limits.HISTORY_WORKER_MAX_BYTES, "bytes all the resend "
                                   "histories of one relay worker hold at most", minimum=0)
    port_per_shard: bool = _f(False, "give each worker its own UDP port (udp-port + i) "
                                     "instead of one shared port")
    steering: str = _f("auto", "how datagrams reach the owning worker on the shared port: "
                               "auto (BPF, else forward), bpf (fail if unavailable), forward",
                       choices=("auto", "bpf", "forward"))
    max_stage1_clients: int = _f(limits.STAGE1_MAX_CLIENTS,
                                 "Stage 1 address table bound (~300 B each; 64 per "
                                 "source IP)", above=_POS)
    log_level: str = _f("info", "debug, info, warning or error",
                        live=True, choices=("debug", "info", "warning", "error"))
    log_format: str = _f("text", "log line format: text, or json (one JSON object a line)",
                         choices=("text", "json"))
    log_summary_interval: float = _f(60.0, "seconds between INFO lines summing up the rooms "
                                     "created and closed and the members evicted (each "
                                     "one is a DEBUG line); 0 = no summary", live=True,
                                     minimum=0.0)
    admin_host: str = _f("127.0.0.1", "address of the admin HTTP server (/metrics, /healthz, "
                                      "/readyz)")
    admin_port: int = _f(limits.DEFAULT_ADMIN_PORT,
                         "admin HTTP port; 0 = any free port, -1 = disabled (if the "
                         "default port is busy the server runs without it)",
                         metavar="PORT")
    ping_interval: float = _f(1.0, "seconds between liveness pings to each worker", above=_POS)
    ping_timeout: float = _f(5.0, "seconds without a pong before a worker is replaced", above=_POS)
    fd_reserve: int = _f(16, "file descriptors control holds in reserve so that a worker can "
                             "be respawned when connections use up the descriptor limit; "
                             "0 = none")
    drain_timeout: float = _f(10.0, "seconds a graceful stop may take before workers "
                                    "are killed", above=_POS)
    realtime_priority: int = _f(0, "run the relay workers under SCHED_FIFO at this "
                                   "priority (1..99) so that a datagram preempts ordinary "
                                   "processes at once; 0 = normal scheduling. Needs root, "
                                   "CAP_SYS_NICE or RLIMIT_RTPRIO (docs/operations.md)",
                                metavar="N")
    relay_sendmmsg: bool = _f(True, "relay each chat datagram with one sendmmsg per room "
                                    "and delivery format where the kernel allows it; "
                                    "false: one sendto per recipient", live=True)
    relay_hot_path: str = _f("auto", "the relay workers' hot loop: auto (compiled if it was "
                                     "built at install, else pure Python), compiled (or "
                                     "refuse to start), python (docs/operations.md)",
                             choices=limits.HOT_PATH_MODES)
    cluster: str = _f("", "Redis (or Valkey) URL of the cluster registry, "
                          "redis://HOST:PORT/DB; empty = one node, no cluster",
                      metavar="URL")
    node_id: str = _f("", "this node's name in the cluster (letters, digits, . _ -; at "
                          "most 64)", metavar="ID")
    advertise: str = _f("", "the IP other nodes and clients reach this node at (cluster "
                            "mode; default: host, which must then not be 0.0.0.0)",
                        metavar="HOST")
    cluster_port: int = _f(limits.DEFAULT_CLUSTER_PORT,
                           "TCP port of the internal link between nodes (cluster "
                           "mode); 0 = any free port", metavar="PORT")
    cluster_secret_file: str = _f("", "file holding the shared cluster secret (or set "
                                      "OCM_CLUSTER_SECRET); never sent on the wire",
                                  metavar="FILE")
    cluster_lease: float = _f(10.0, "seconds a node or room lease lives in the registry "
                                    "without a renewal (renewed every lease/3)",
                              metavar="SECONDS", above=_POS)

    def worker_settings(self) -> WorkerSettings:
        """What a relay worker is configured with: given at spawn, and in the ``config``
        command broadcast on SIGHUP (the worker applies the live ones)."""
        return WorkerSettings(
            inactivity_timeout=self.inactivity_timeout,
            max_send_failures=self.max_send_failures,
            chat_rate=self.chat_rate,
            chat_burst=self.chat_burst,
            max_stage1_clients=self.max_stage1_clients,
            log_level=self.log_level,
            log_format=self.log_format,
            realtime_priority=self.realtime_priority,
            sendmmsg=self.relay_sendmmsg,
            hot_path=self.relay_hot_path,
            history_messages=self.history_messages,
            history_bytes=self.history_bytes,
            history_age=self.history_age,
            history_worker_bytes=self.history_worker_bytes,
        )


LIVE_FIELDS: Final = frozenset(f.name for f in fields(Config) if meta(f).live)
_FIELDS: Final = {f.name: f for f in fields(Config)}
_POSITIVE: Final = tuple(f.name for f in fields(Config) if meta(f).above == _POS)
"""The settings that must be > 0."""
__all__ = ["DEFAULT_SOURCE", "LIVE_FIELDS", "Config", "ConfigError", "env_name", "flag_name",
           "load", "load_with_sources", "read_toml", "to_toml", "validate"]


def flag_name(name: str) -> str:
    return settings.flag_name(_FIELDS[name])


def validate(cfg: Config, sources: Mapping[str, str] | None = None) -> Config:
    """Return ``cfg`` or raise ``ConfigError`` naming the first setting out of range (and,
    given ``sources``, where it was set)."""

    def fail(name: str, message: str) -> ConfigError:
        where = (sources or {}).get(name, DEFAULT_SOURCE)
        return ConfigError(f"{where}: {message}" if where != DEFAULT_SOURCE else message)

    for port_field in ("tcp_port", "tls_port", "udp_port", "stage1_port", "cluster_port"):
        port = getattr(cfg, port_field)
        if not 0 <= port <= 65535:
            raise fail(port_field, f"{port_field} must be 0..65535, got {port}")
    if not -1 <= cfg.admin_port <= 65535:
        raise fail("admin_port", f"admin_port must be -1 (disabled) or 0..65535, got "
                                 f"{cfg.admin_port}")
    if cfg.admin_port > 0 and cfg.admin_port == cfg.tcp_port:
        raise fail("admin_port", f"admin_port and tcp_port are both TCP port {cfg.tcp_port}")
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        name = "tls_key" if cfg.tls_cert else "tls_cert"
        raise fail(name, "tls_cert and tls_key must be given together")
    if not cfg.plain_tcrp and not cfg.tls:
        raise fail("plain_tcrp", "plain_tcrp and tls are both off: TCRP would be served "
                                 "nowhere")
    if cfg.tls and cfg.plain_tcrp and cfg.tls_port and cfg.tls_port == cfg.tcp_port:
        raise fail("tls_port", f"tls_port and tcp_port are both TCP port {cfg.tcp_port}")
    if not 1 <= cfg.workers <= MAX_WORKERS:
        raise fail("workers", f"workers must be 1..{MAX_WORKERS}, got {cfg.workers}")
    settings.check_all(cfg, sources)  # the bounds and choices declared with the fields
    if cfg.ping_timeout <= cfg.ping_interval:
        raise fail("ping_timeout", f"ping_timeout ({cfg.ping_timeout}) must be longer than "
                                   f"ping_interval ({cfg.ping_interval})")
    if not 0 <= cfg.realtime_priority <= sched.MAX_PRIORITY:
        raise fail("realtime_priority", f"realtime_priority must be 0 (normal scheduling) or "
                                        f"1..{sched.MAX_PRIORITY}, got {cfg.realtime_priority}")
    if cfg.kdf_queue < 0:
        raise fail("kdf_queue", f"kdf_queue must be >= 0, got {cfg.kdf_queue}")
    if not 0 <= cfg.fd_reserve <= 1024:
        raise fail("fd_reserve", f"fd_reserve must be 0..1024, got {cfg.fd_reserve}")
    if not 1 <= cfg.max_payload <= 1 << 20:
        raise fail("max_payload", f"max_payload must be 1..1048576 bytes, got "
                                  f"{cfg.max_payload}")
    for name in ("host", "admin_host"):
        if not getattr(cfg, name):
            raise fail(name, f"{name} must not be empty")
    if cfg.cluster:
        if not re.match(r"^(redis|rediss|unix)://", cfg.cluster):
            raise fail("cluster", f"cluster must be a redis://HOST:PORT/DB URL, got "
                                  f"{cfg.cluster!r}")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", cfg.node_id):
            raise fail("node_id", "cluster mode needs node_id: 1..64 letters, digits, "
                                  f"'.', '_' or '-', got {cfg.node_id!r}")
        if not cfg.advertise and cfg.host in ("0.0.0.0", "::", ""):
            raise fail("advertise", f"cluster mode needs advertise (an address other "
                                    f"nodes can reach) when host is {cfg.host}")
    return cfg


class OneLineParser(argparse.ArgumentParser):
    """Usage errors (an unknown flag, a missing value) are one line and exit code 2, like
    every other error of ``ocm-control``; ``--help`` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = "ocm-control") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="OCM control process: serves TCRP (create/join rooms) over TCP, issues "
                    "tokens, and supervises the UDP relay workers that carry the chat.",
        epilog="Every setting is also read from OCM_<NAME> (e.g. OCM_UDP_PORT=9101) and from "
               "a TOML file given with --config (or OCM_CONFIG); flags win over env, env "
               "over the file. Signals: SIGTERM/SIGINT stop gracefully (members get "
               "'closed'); a second SIGINT stops at once; SIGHUP reloads the live settings. "
               "Exit codes: 0 clean stop, 1 runtime failure (e.g. port busy), 2 bad usage, "
               "78 bad configuration, 130 second SIGINT. See docs/operations.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings "
                        "(keys as below, with underscores)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML and exit")
    settings.add_flags(parser, [Config], _help_text, typed=False)
    return parser


def _help_text(f: Field[Any]) -> str:
    m = meta(f)
    default = m.shown if m.shown is not None else f.default
    return f"{m.help} [{'live' if m.live else 'restart'}; default: {default}]"


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
         ) -> tuple[Config, argparse.Namespace]:
    """Parse flags, env and file into a validated ``Config``; raise ``ConfigError``.

    Usage errors (an unknown flag) print one line and raise ``SystemExit(2)``.
    """
    cfg, args, _ = load_with_sources(argv, environ)
    return cfg, args


def load_with_sources(argv: Sequence[str] | None = None,
                      environ: Mapping[str, str] | None = None
                      ) -> tuple[Config, argparse.Namespace, dict[str, str]]:
    """``load``, plus where each setting came from: ``"default"``, ``"FILE line N"``,
    ``"environment OCM_X"`` or ``"--flag"``."""
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    path = getattr(args, "config", None) or env.get("OCM_CONFIG")
    values, sources = settings.layered(Config, args, env, path)
    return validate(dataclasses.replace(Config(), **values), sources), args, sources


def read_toml(path: str) -> dict[str, Any]:
    """Settings from a TOML file (top level or an ``[ocm]`` table); unknown keys, bad
    values and syntax errors are ``ConfigError``s that name the file and the line."""
    return {name: value for name, (value, _) in
            settings.read_toml_located(Config, path).items()}


_toml_value = settings.toml_value


def to_toml(cfg: Config, sources: Mapping[str, str] | None = None) -> str:
    """The effective configuration as a TOML file that ``read_toml`` loads back; each key
    is preceded by its help text and whether SIGHUP reloads it, and followed by where its
    value came from (given ``sources``)."""
    lines = ["# ocm-control effective configuration: defaults < TOML file < OCM_* "
             "environment < flags.",
             "# [live] keys are reloaded on SIGHUP; [restart] keys need a restart."]
    for f in fields(Config):
        live = "live" if meta(f).live else "restart"
        line = f"{f.name} = {_toml_value(getattr(cfg, f.name))}"
        if sources is not None:
            line += f"  # from {sources.get(f.name, DEFAULT_SOURCE)}"
        lines += [f"# {meta(f).help} [{live}]", line]
    return "\n".join(lines) + "\n"
