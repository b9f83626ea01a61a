"""Configuration on a real process: SIGHUP reloads the live settings without dropping
anyone (and says what needs a restart), a bad file exits 78 naming its line, and
--print-config shows the layers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.harness import start_server
from tests.integration.peer import Peer, join
from tests.integration.test_ops_support import admin_address, scrape, start_control, value
from wire.codes import Operation

H = "127.0.0.1"
JOINED = "{} がチャットルームに参加しました"
LEFT = "{} がチャットルームから退出しました"
EVICTED = "しばらく発言しなかったので、チャットルームから退出させました"


def _recv_until(peer: Peer, wanted: str, timeout: float, keepalive: list[Peer]) -> None:
    """Read ``peer`` until ``wanted`` arrives, sending keepalives for ``keepalive`` (so that
    only the silent member goes quiet) between short reads."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for member in keepalive:
            member.send(b"")
        try:
            got = peer.recv_text(timeout=0.2)
        except TimeoutError:
            continue
        if got == wanted:
            return
    raise AssertionError(f"{wanted!r} not received within {timeout}s")


def test_sighup_reloads_live_settings_without_dropping_anyone(tmp_path: Path) -> None:
    conf = tmp_path / "ocm.toml"
    conf.write_text("inactivity_timeout = 300\nmax_members = 50\n")
    with start_server("--config", str(conf), "--admin-port", "0", "--log-summary-interval",
                      "0.5", workers=2) as srv:
        addr = admin_address(srv)
        alice = join(H, srv.tcp_port, Operation.CREATE, "reload", "alice")
        bob = join(H, srv.tcp_port, Operation.JOIN, "reload", "bob")
        carol = join(H, srv.tcp_port, Operation.JOIN, "reload", "carol")
        assert alice.recv_text() == JOINED.format("bob")
        assert alice.recv_text() == JOINED.format("carol")
        assert bob.recv_text() == JOINED.format("carol")
        assert bob.details.inactivity_timeout == 300.0  # type: ignore[attr-defined]

        # Live: the timeout and limits; needs a restart: max_stage1_clients.
        conf.write_text("inactivity_timeout = 1.5\nmax_members = 40\n"
                        "max_stage1_clients = 500\nchat_rate = 50.0\n")
        srv.send_signal(signal.SIGHUP)
        line = srv.wait_log(r"reloaded: .*", timeout=30)[0]
        assert "inactivity_timeout=1.5" in line and "max_members=40" in line
        assert "chat_rate=50.0" in line
        assert line.endswith("; needs a restart: max_stage1_clients (10000 -> 500)")
        # Nobody was dropped: the members joined before the reload still chat.
        alice.send("still here")
        assert bob.recv_text() == "alice: still here"
        assert carol.recv_text() == "alice: still here"
        # The new timeout reaches the workers: carol, silent, is evicted in ~1.5 s while
        # alice and bob keep alive; new joins are told the new value.
        _recv_until(bob, LEFT.format("carol"), 20, keepalive=[alice, bob])
        assert carol.recv_text() == EVICTED
        srv.wait_log(r"[1-9]\d* members evicted")  # the INFO summary (each one is DEBUG)
        # (From here on alice and bob go quiet too; the rest uses rooms of its own.)
        dave = join(H, srv.tcp_port, Operation.CREATE, "reload-dave", "dave")
        assert dave.details.inactivity_timeout == 1.5  # type: ignore[attr-defined]
        assert value(scrape(addr), "ocm_config_reloads_total", result="ok") == 1

        # A broken file keeps the running settings and says where it is broken.
        conf.write_text("inactivity_timeout = 1.5\nmax_members = = 3\n")
        srv.send_signal(signal.SIGHUP)
        srv.wait_log(rf"reload failed, keeping the current settings: {conf} line 2: ")
        assert value(scrape(addr), "ocm_config_reloads_total", result="failed") == 1
        erin = join(H, srv.tcp_port, Operation.CREATE, "reload-erin", "erin")
        assert erin.details.inactivity_timeout == 1.5  # type: ignore[attr-defined]

        for peer in (alice, bob, carol, dave, erin):
            peer.close()


def test_sighup_changes_the_log_level(tmp_path: Path) -> None:
    """(Not through the harness: it passes --log-level, and a flag beats the file.)"""
    conf = tmp_path / "ocm.toml"
    conf.write_text("log_level = 'debug'\n")
    with start_control("--config", str(conf), "--host", H, "--tcp-port", "0",
                       "--udp-port", "0", "--stage1-port", "0", "--workers", "1",
                       "--admin-port", "-1") as (proc, out):
        tcp_port = int(out.wait(r"ready tcp=127\.0\.0\.1:(\d+)")[1])
        conf.write_text("log_level = 'warning'\n")
        proc.send_signal(signal.SIGHUP)
        out.wait(r"reloaded: log_level=warning$")  # shown although now below the level
        join(H, tcp_port, Operation.CREATE, "reload-quiet", "frank").close()
        conf.write_text("log_level = 'debug'\n")
        proc.send_signal(signal.SIGHUP)
        out.wait(r"reloaded: log_level=debug$")
        join(H, tcp_port, Operation.CREATE, "reload-loud", "george").close()
        out.wait(r"room 'reload-loud' created on worker 0 \(2 rooms\)$")
        text = out.text()
        quiet = text[text.index("log_level=warning"):text.index("log_level=debug")]
        assert "created on worker" not in quiet


def test_bad_config_file_exits_78_naming_the_line(tmp_path: Path) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text("[ocm]\nworkers = 2\ninactivity_timeout = \"soon\n")
    proc = subprocess.run([sys.executable, "-m", "control", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    assert proc.stderr.startswith(f"ocm-control: configuration error: {conf} line 3: ")
    conf.write_text("[ocm]\nworkers = 2\nchat_burst = 0\n")
    proc = subprocess.run([sys.executable, "-m", "control", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    assert proc.stderr.strip() == (f"ocm-control: configuration error: {conf} line 3: "
                                   "chat_burst must be > 0, got 0")


def test_usage_error_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "control", "--no-such-flag"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr


def test_print_config_shows_every_layer(tmp_path: Path) -> None:
    conf = tmp_path / "ocm.toml"
    conf.write_text("tcp_port = 1111\nudp_port = 2222\nstage1_port = 3333\n")
    env = dict(os.environ, OCM_UDP_PORT="4444", OCM_STAGE1_PORT="5555",
               OCM_CONFIG=str(conf))
    proc = subprocess.run([sys.executable, "-m", "control", "--print-config",
                           "--stage1-port", "6666"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"tcp_port = 1111  # from {conf} line 1" in out
    assert "udp_port = 4444  # from environment OCM_UDP_PORT" in out
    assert "stage1_port = 6666  # from --stage1-port" in out
    assert "drain_timeout = 10.0  # from default" in out


def test_sighup_switches_the_fan_out_path(tmp_path: Path) -> None:
    conf = tmp_path / "ocm.toml"
    conf.write_text("relay_sendmmsg = true\n")
    with start_server("--config", str(conf), workers=1) as srv:
        alice = join(H, srv.tcp_port, Operation.CREATE, "fanout", "alice")
        bob = join(H, srv.tcp_port, Operation.JOIN, "fanout", "bob")
        assert alice.recv_text() == JOINED.format("bob")
        alice.send("batched")
        assert bob.recv_text() == "alice: batched"
        conf.write_text("relay_sendmmsg = false\n")
        srv.send_signal(signal.SIGHUP)
        line = srv.wait_log(r"reloaded: .*", timeout=30)[0]
        assert "relay_sendmmsg=False" in line and "needs a restart" not in line
        srv.wait_log(r"worker 0: fan-out with sendto", timeout=30)
        alice.send("one by one")
        assert bob.recv_text() == "alice: one by one"
