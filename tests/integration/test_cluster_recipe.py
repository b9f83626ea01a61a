"""docs/operations.md's cluster on one host, run as printed.

The commands of the recipe's code block run in one ``bash``, as a reader would paste
them, against the real ``redis-server`` and ``ocm-control``. What differs: ``pip install``
is not run (this environment is the installed checkout: the test checks that the
cluster extra is importable instead), Redis gets a free port in place of 6379, and each
of the nodes' default ports is replaced by one free port, the same for every node, given
as ``OCM_*_PORT`` in the environment (tests never bind the default ports): the nodes
must keep apart by their addresses, as with the defaults. The commands themselves are
unchanged. Then a room is created through one node
and joined through the two others.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.integration.harness import READY_RE, _die_with_parent
from tests.integration.peer import Peer, join
from tests.integration.redisproc import free_tcp_port
from wire.chat import FramedChat, Notice, NoticeEvent, decode_framed
from wire.codes import Framing, Operation

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
NODES = {"n1": "127.0.0.11", "n2": "127.0.0.12", "n3": "127.0.0.13"}
PORT_SETTINGS = ("TCP_PORT", "UDP_PORT", "STAGE1_PORT", "CLUSTER_PORT", "ADMIN_PORT")
START_TIMEOUT_S = 60.0


def free_everywhere(taken: set[int]) -> int:
    """A port that is free for TCP and UDP on every address (0.0.0.0) and not in
    ``taken``."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("0.0.0.0", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("0.0.0.0", port))
            except OSError:
                continue
        if port not in taken:
            taken.add(port)
            return port


def recipe() -> list[str]:
    """The command lines of the code block under "A cluster on one host"."""
    section = DOC.read_text().split("### A cluster on one host\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def wait_lines(log: Path, pattern: str, count: int) -> list[re.Match[str]]:
    """The first ``count`` matches of ``pattern`` in the recipe's output, once there."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        text = log.read_text(errors="replace")
        found = [m for m in map(rx.search, text.splitlines()) if m]
        if len(found) >= count:
            return found[:count]
        assert time.monotonic() < deadline, f"{count} x {pattern!r} not seen:\n{text}"
        time.sleep(0.05)


def through(host: str, tcp_port: int, op: Operation, room: str, user: str,
            client_ip: str) -> Peer:
    """Create or join through the node at ``host``; datagrams go where the details say."""
    peer = join(host, tcp_port, op, room, user, framing=Framing.OCM1, bind_ip=client_ip,
                bind="none")
    peer.host = peer.details.udp_host  # type: ignore[attr-defined]
    assert peer.host in NODES.values()
    peer.send(b"")
    return peer


def expect(peer: Peer, kind: type, **fields: object) -> None:
    event = decode_framed(peer.recv())
    assert isinstance(event, kind), event
    for name, value in fields.items():
        assert getattr(event, name) == value, (name, event)


def test_the_cluster_on_one_host_recipe_works_as_printed(tmp_path: Path) -> None:
    lines = recipe()
    assert lines[0] == "pip install -e '.[cluster]'"
    import redis  # noqa: F401  (what the extra installs)

    script = "\n".join(lines[1:]).replace("6379", str(free_tcp_port("127.0.0.1")))
    assert script.count("ocm-control ") == len(NODES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCM_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    taken: set[int] = set()
    env.update({f"OCM_{name}": str(free_everywhere(taken)) for name in PORT_SETTINGS})
    env["PYTHONUNBUFFERED"] = "1"
    log = tmp_path / "recipe.log"
    with log.open("w") as out:
        shell = subprocess.Popen(["bash", "-c", script + "\nwait\n"], stdout=out,
                                 stderr=subprocess.STDOUT, env=env, cwd=DOC.parents[1],
                                 start_new_session=True, preexec_fn=_die_with_parent)
    peers: list[Peer] = []
    try:
        ready = {m["host"]: int(m["tcp"]) for m in wait_lines(log, READY_RE.pattern, 3)}
        assert set(ready) == set(NODES.values()), ready
        for node, ip in NODES.items():
            wait_lines(log, rf"cluster (node={node} link={re.escape(ip)}:\d+ registry=up"
                            rf"|registry reachable: node {node} live)", 1)
        admin = [(m[1], int(m[2])) for m in wait_lines(log, r"admin http=(\S+):(\d+)", 3)]
        assert {host for host, _ in admin} == set(NODES.values()), admin
        for host, port in admin:  # every node's own admin server, each seeing all three
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                with urllib.request.urlopen(f"http://{host}:{port}/cluster", timeout=10) as r:
                    view = json.loads(r.read())
                if {n["id"] for n in view["nodes"]} == set(NODES):
                    break
                assert time.monotonic() < deadline, view
                time.sleep(0.1)
        n1, n2, n3 = NODES.values()
        alice = through(n1, ready[n1], Operation.CREATE, "lobby", "alice", "127.0.0.21")
        peers.append(alice)
        bob = through(n2, ready[n2], Operation.JOIN, "lobby", "bob", "127.0.0.22")
        peers.append(bob)
        expect(alice, Notice, event=NoticeEvent.JOINED, user="bob")
        carol = through(n3, ready[n3], Operation.JOIN, "lobby", "carol", "127.0.0.23")
        peers.append(carol)
        expect(alice, Notice, event=NoticeEvent.JOINED, user="carol")
        expect(bob, Notice, event=NoticeEvent.JOINED, user="carol")
        bob.send("hello from n2")
        expect(alice, FramedChat, username="bob", message="hello from n2")
        expect(carol, FramedChat, username="bob", message="hello from n2")
    finally:
        for peer in peers:
            peer.close()
        os.killpg(shell.pid, signal.SIGTERM)
        try:
            shell.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(10)
