"""Configuration of ``ocm-control``: one frozen dataclass, four layers.

Precedence (hypercorn's sentinel idea, done in one loop): defaults < TOML file
(``--config``) < ``OCM_<NAME>`` environment variables < flags actually given. Every
field below is also a flag (``--inactivity-timeout``) and an env var
(``OCM_INACTIVITY_TIMEOUT``). ``LIVE_FIELDS`` can change on SIGHUP without a restart.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

from wire import limits


class ConfigError(Exception):
    """A setting is invalid; the message says which and why (exit code 78, EX_CONFIG)."""


def _f(default: Any, help: str, *, live: bool = False, metavar: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "live": live, "metavar": metavar})


@dataclass(frozen=True)
class Config:
    host: str = _f("0.0.0.0", "address to bind the TCP and UDP ports on")
    tcp_port: int = _f(9000, "TCRP control port (TCP); 0 = any free port")
    udp_port: int = _f(9001, "public room-chat port (UDP) shared by all workers; 0 = any")
    stage1_port: int = _f(9002, "Stage 1 global chat port (UDP); 0 disables it")
    workers: int = _f(os.cpu_count() or 1, "relay worker processes (default: CPU count)")
    inactivity_timeout: float = _f(limits.DEFAULT_INACTIVITY_TIMEOUT_S,
                                   "seconds of silence before a member is removed", live=True)
    tcp_timeout: float = _f(limits.DEFAULT_TCP_TIMEOUT_S,
                            "seconds a client has to send its whole TCRP request", live=True)
    max_payload: int = _f(limits.DEFAULT_MAX_PAYLOAD_BYTES,
                          "largest TCRP request payload in bytes", live=True)
    max_members: int = _f(limits.DEFAULT_MAX_MEMBERS, "members per room, host included",
                          live=True)
    max_send_failures: int = _f(limits.DEFAULT_MAX_SEND_FAILURES,
                                "consecutive failed sends before a member is removed",
                                live=True)
    port_per_shard: bool = _f(False, "give each worker its own UDP port (udp-port + i) "
                                     "instead of one shared port")
    steering: str = _f("auto", "how datagrams reach the owning worker on the shared port: "
                               "auto (BPF, else forward), bpf (fail if unavailable), forward")
    max_stage1_clients: int = _f(10_000, "Stage 1 address table bound (~200 B each)")
    log_level: str = _f("info", "debug, info, warning or error", live=True)
    ping_interval: float = _f(1.0, "seconds between liveness pings to each worker")
    ping_timeout: float = _f(5.0, "seconds without a pong before a worker is replaced")
    drain_timeout: float = _f(10.0, "seconds a graceful stop may take before workers "
                                    "are killed")

    def worker_settings(self) -> dict[str, Any]:
        """The subset a relay worker needs, as a plain dict (it is pickled to the child)."""
        return {
            "inactivity_timeout": self.inactivity_timeout,
            "max_send_failures": self.max_send_failures,
            "max_stage1_clients": self.max_stage1_clients,
            "log_level": self.log_level,
        }


LIVE_FIELDS: Final = frozenset(f.name for f in fields(Config) if f.metadata["live"])
_FIELDS: Final = {f.name: f for f in fields(Config)}
_CHOICES: Final = {"steering": ("auto", "bpf", "forward"),
                   "log_level": ("debug", "info", "warning", "error")}


def _convert(name: str, value: Any, source: str) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind in ("bool", bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind in ("int", int):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind in ("float", float):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value).lower() if name in _CHOICES else str(value)
    except ValueError:
        raise ConfigError(f"{source}: {name} must be {kind}, got {value!r}") from None


def validate(cfg: Config) -> Config:
    """Raise ``ConfigError`` on a setting outside its range."""
    for port_field in ("tcp_port", "udp_port", "stage1_port"):
        port = getattr(cfg, port_field)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{port_field} must be 0..65535, got {port}")
    if not 1 <= cfg.workers <= 32:
        raise ConfigError(f"workers must be 1..32, got {cfg.workers}")
    for positive in ("inactivity_timeout", "tcp_timeout", "ping_interval", "ping_timeout",
                     "drain_timeout"):
        if getattr(cfg, positive) <= 0:
            raise ConfigError(f"{positive} must be > 0")
    if not 1 <= cfg.max_payload <= 1 << 20:
        raise ConfigError("max_payload must be 1..1048576 bytes")
    if cfg.max_members < 1 or cfg.max_send_failures < 1 or cfg.max_stage1_clients < 1:
        raise ConfigError("max_members, max_send_failures, max_stage1_clients must be >= 1")
    for name, choices in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}")
    return cfg


def build_parser(prog: str = "ocm-control") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="OCM control process: serves TCRP (create/join rooms) over TCP, issues "
                    "tokens, and supervises the UDP relay workers that carry the chat.",
        epilog="Every setting is also read from OCM_<NAME> (e.g. OCM_UDP_PORT=9101) and from "
               "a TOML file given with --config; flags win over env, env over the file. "
               "Signals: SIGTERM/SIGINT stop gracefully (members get 'closed'); a second "
               "SIGINT stops at once. Exit codes: 0 clean stop, 1 runtime failure (e.g. port "
               "busy), 2 bad usage, 78 bad configuration.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with settings "
                        "(keys as below, with underscores)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as TOML and exit")
    defaults = Config()
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"] + f" [default: {getattr(defaults, f.name)}]"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, metavar=f.metadata["metavar"] or f.name.upper(),
                                choices=_CHOICES.get(f.name), help=help_text)
    return parser


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
         ) -> tuple[Config, argparse.Namespace]:
    """Parse flags, env and file into a validated ``Config``; raise ``ConfigError``."""
    args = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = getattr(args, "config", None) or env.get("OCM_CONFIG")
    if path:
        values.update(read_toml(path))
    for name in _FIELDS:
        raw = env.get("OCM_" + name.upper())
        if raw is not None:
            values[name] = _convert(name, raw, f"environment OCM_{name.upper()}")
    for name in _FIELDS:
        if hasattr(args, name):
            values[name] = _convert(name, getattr(args, name), "--" + name.replace("_", "-"))
    return validate(dataclasses.replace(Config(), **values)), args


def read_toml(path: str) -> dict[str, Any]:
    """Settings from a TOML file; unknown keys and bad values are ``ConfigError``s that
    name the file (and the line, for syntax errors)."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    data = data.get("ocm", data)
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        out[name] = _convert(name, value, f"{path}: {key}")
    return out


def to_toml(cfg: Config) -> str:
    lines = []
    for f in fields(Config):
        value = getattr(cfg, f.name)
        text = ("true" if value else "false") if isinstance(value, bool) else (
            f'"{value}"' if isinstance(value, str) else repr(value))
        lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"
