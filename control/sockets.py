"""The UDP sockets control binds and keeps for its workers (docs/architecture.md, "One
public UDP port: steering").

Control creates every socket itself, in order, attaches the steering program, and keeps
all of them open for its whole life: a worker's crash then never reorders the reuseport
group, and datagrams wait in the socket buffer until the replacement picks it up.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass, field

from relay import steering
from runtime.sockbuf import SOCKET_BUFFER_BYTES

log = logging.getLogger("ocm.control")


class PortBusy(Exception):
    """A port we must bind is taken by another process; the message ends with the way to
    pick another (``busy_hint``)."""


def busy_hint(setting: str) -> str:
    """How to move a busy port: the flag, its ``OCM_*`` variable and the Makefile's
    ``ARGS=`` (README quickstart). ``setting`` is the config field, e.g. ``tcp_port``."""
    flag = "--" + setting.replace("_", "-")
    return (f"is another ocm-control running? Pick another port with {flag} N "
            f"(or OCM_{setting.upper()}=N; with make: make run ARGS=\"{flag} N\")")


@dataclass
class UdpPlan:
    """What each worker gets: its UDP socket, public port, and forwarding sockets."""

    sockets: list[socket.socket]
    ports: list[int]
    steering: str  # "bpf", "forward", "port-per-shard"
    stage1: socket.socket | None
    stage1_port: int
    inboxes: list[socket.socket] = field(default_factory=list)
    """Forward mode: worker i reads datagrams forwarded to it on inboxes[i]."""
    outboxes: list[socket.socket] = field(default_factory=list)
    """Forward mode: any worker writes to outboxes[j] to reach worker j."""
    relay: socket.socket | None = None
    """Cluster mode with BPF steering: the group's last socket, read by control, which
    receives datagrams whose token another node issued (control/clusterudp.py)."""


def _probe_free(host: str, port: int, setting: str) -> None:
    """Refuse to join somebody else's reuseport group: a plain bind must succeed first."""
    if port == 0:
        return
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((host, port))
    except OSError as exc:
        raise PortBusy(f"UDP port {port} on {host} is busy: {exc.strerror}; "
                       f"{busy_hint(setting)}") from None
    finally:
        probe.close()


def _bind(make: object, what: str, host: str, port: int, setting: str
          ) -> list[socket.socket]:
    try:
        result = make()  # type: ignore[operator]
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise PortBusy(f"{what} port {port} on {host}: {exc.strerror}; "
                           f"{busy_hint(setting)}") from None
        raise
    return result if isinstance(result, list) else [result]


def plan_udp(host: str, udp_port: int, stage1_port: int | None, workers: int,
             port_per_shard: bool, mode: str, relay: bool = False) -> UdpPlan:
    """Bind everything the workers need; raise ``PortBusy`` with a clear message.

    ``relay`` (cluster mode) adds one socket after the workers' to the group for
    datagrams that belong to other nodes; it is kept only when BPF steering is attached.
    """
    stage1 = None
    stage1_bound = 0
    if stage1_port is not None:
        _probe_free(host, stage1_port, "stage1_port")
        (stage1,) = _bind(lambda: steering.create_udp_socket(
            host, stage1_port, SOCKET_BUFFER_BYTES, SOCKET_BUFFER_BYTES), "Stage 1 UDP",
            host, stage1_port, "stage1_port")
        stage1_bound = stage1.getsockname()[1]
    if port_per_shard:
        socks = []
        for i in range(workers):
            port = udp_port + i if udp_port else 0
            _probe_free(host, port, "udp_port")
            socks += _bind(lambda p=port: steering.create_udp_socket(
                host, p, SOCKET_BUFFER_BYTES, SOCKET_BUFFER_BYTES), "UDP", host, port,
                "udp_port")
        return UdpPlan(socks, [s.getsockname()[1] for s in socks], "port-per-shard", stage1,
                       stage1_bound)
    _probe_free(host, udp_port, "udp_port")
    extra = 1 if relay and mode != "forward" and workers < steering.MAX_WORKERS else 0
    socks = _bind(lambda: steering.create_reuseport_group(
        host, udp_port, workers + extra, SOCKET_BUFFER_BYTES, SOCKET_BUFFER_BYTES), "UDP",
        host, udp_port, "udp_port")
    port = socks[0].getsockname()[1]
    if mode in ("auto", "bpf"):
        try:
            steering.attach_steering(socks[0], workers)
            return UdpPlan(socks[:workers], [port] * workers, "bpf", stage1, stage1_bound,
                           relay=socks[workers] if extra else None)
        except OSError as exc:
            if mode == "bpf":
                raise
            log.warning("steering program not attached (%s): forwarding between workers",
                        exc.strerror)
    for spare in socks[workers:]:
        # No program steers to it, so hash selection would give it a share: close it.
        # It is the group's last member, so closing it moves no other socket.
        spare.close()
    socks = socks[:workers]
    plan = UdpPlan(socks, [port] * workers, "forward", stage1, stage1_bound)
    for _ in range(workers):
        inbox, outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (inbox, outbox):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        plan.inboxes.append(inbox)
        plan.outboxes.append(outbox)
    return plan
