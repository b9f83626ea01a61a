"""The files in deploy/: supervisord really runs the service from a copy of
deploy/supervisord.conf (a chat through it, a reload, a draining stop); the systemd unit
passes ``systemd-analyze verify`` (and its offline security check); the Dockerfile is
parsed and checked (there is no Docker engine here, so it is not built); the sysctl file
covers the buffers the server asks for."""

from __future__ import annotations

import configparser
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runtime.sockbuf import SOCKET_BUFFER_BYTES
from tests.integration.peer import join
from tests.integration.test_ops_support import LinePipe, http_get, wait_until
from wire.codes import Operation

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
H = "127.0.0.1"
CLOSED = "チャットルームが閉じられました"
JOINED = "{} がチャットルームに参加しました"


def _drain_timeout() -> float:
    data = tomllib.loads((DEPLOY / "ocm.toml").read_text())
    return float(data["ocm"]["drain_timeout"])


# --- supervisord -------------------------------------------------------------------------------
def _read_ini(path: Path) -> configparser.RawConfigParser:
    ini = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=True)
    ini.read(path)
    return ini


def test_supervisord_program_settings() -> None:
    program = _read_ini(DEPLOY / "supervisord.conf")["program:ocm"]
    assert program["stopsignal"] == "TERM"
    assert program["stopasgroup"] == "true" and program["killasgroup"] == "true"
    assert float(program["stopwaitsecs"]) >= _drain_timeout() + 5
    assert program["autorestart"] == "unexpected" and program["exitcodes"] == "0"
    assert program["command"].startswith("/opt/ocm/venv/bin/ocm-control --config ")


def _supervisord_copy(tmp: Path) -> Path:
    """deploy/supervisord.conf and deploy/ocm.toml with free ports, this venv, temporary
    paths, and every log on supervisord's stdout."""
    settings = tomllib.loads((DEPLOY / "ocm.toml").read_text())
    settings["ocm"].update(host=H, tcp_port=0, udp_port=0, stage1_port=0, admin_port=0,
                           workers=2)
    (tmp / "ocm.toml").write_text("[ocm]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in settings["ocm"].items()))
    ini = _read_ini(DEPLOY / "supervisord.conf")
    ini["unix_http_server"]["file"] = str(tmp / "supervisor.sock")
    ini["supervisorctl"]["serverurl"] = f"unix://{tmp / 'supervisor.sock'}"
    main = ini["supervisord"]
    main.update(logfile="/dev/stdout", logfile_maxbytes="0", pidfile=str(tmp / "sd.pid"),
                childlogdir=str(tmp), nodaemon="true")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < int(main["minfds"]):
        main["minfds"] = str(hard)  # not root: supervisord cannot raise the hard limit
    program = ini["program:ocm"]
    program["command"] = (program["command"]
                          .replace("/opt/ocm/venv/bin/", f"{BIN}/")
                          .replace("/etc/ocm/ocm.toml", str(tmp / "ocm.toml")))
    program.pop("user")  # no "ocm" account here
    program["directory"] = str(tmp)
    program.update(stdout_logfile="/dev/stdout", stdout_logfile_maxbytes="0",
                   stdout_logfile_backups="0")
    path = tmp / "supervisord.conf"
    with path.open("w") as fh:
        ini.write(fh)
    return path


def _ctl(conf: Path, *args: str) -> str:
    proc = subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), *args],
                          capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def test_supervisord_runs_reloads_and_drains_the_service(tmp_path: Path) -> None:
    conf = _supervisord_copy(tmp_path)
    # The file's admin_port is the one under test: the session's OCM_ADMIN_PORT
    # (tests/conftest.py) would override it.
    env = {key: value for key, value in os.environ.items() if key != "OCM_ADMIN_PORT"}
    proc = subprocess.Popen([str(BIN / "supervisord"), "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=tmp_path, env=env)
    out = LinePipe(proc)
    try:
        tcp_port = int(out.wait(r"ready tcp=127\.0\.0\.1:(\d+) ")[1])
        admin = out.wait(r"admin http=([\d.]+):(\d+)")
        admin_addr = (admin[1], int(admin[2]))
        workers = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)", out.text())]
        assert len(workers) == 2

        alice = join(H, tcp_port, Operation.CREATE, "supervised", "alice")
        bob = join(H, tcp_port, Operation.JOIN, "supervised", "bob")
        assert alice.recv_text() == JOINED.format("bob")
        bob.send("hello through supervisord")
        assert alice.recv_text() == "bob: hello through supervisord"

        # The Dockerfile's HEALTHCHECK command works against a real admin port.
        check = _healthcheck_command().replace("9100", str(admin_addr[1]))
        assert subprocess.run(json.loads(check), timeout=30, env=os.environ,
                              cwd=tmp_path).returncode == 0

        out.wait(r"success: ocm entered RUNNING state")  # after startsecs
        assert "RUNNING" in _ctl(conf, "status", "ocm")
        assert "ocm: signalled" in _ctl(conf, "signal", "HUP", "ocm")
        out.wait(r"reloaded: nothing changed")

        assert "ocm: stopped" in _ctl(conf, "stop", "ocm")
        assert alice.recv_text() == CLOSED
        assert bob.recv_text() == CLOSED
        out.wait(r"stopped: ocm \(exit status 0\)")
        out.wait(r"ocm\.control: stopped \(exit code 0\)")
        for pid in workers:  # the whole group is gone
            wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10,
                       f"worker {pid} to be gone")
        with pytest.raises(OSError):
            http_get(admin_addr, "/healthz", timeout=5)
        _ctl(conf, "shutdown")
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert "Traceback" not in out.text(), out.text()


# --- systemd -----------------------------------------------------------------------------------
def _unit() -> configparser.RawConfigParser:
    ini = configparser.RawConfigParser(strict=False, delimiters=("=",))
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read(DEPLOY / "ocm.service")
    return ini


def test_systemd_unit_settings() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "78"
    assert int(service["LimitNOFILE"]) >= 65536
    assert float(service["TimeoutStopSec"]) >= _drain_timeout() + 5
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].startswith("/opt/ocm/venv/bin/ocm-control --config ")
    # The self-signed TLS certificate is kept in the unit's state directory.
    assert service["StateDirectory"] == "ocm" and "OCM_STATE_DIR=%S/ocm" in service["Environment"]
    assert int(service["WatchdogSec"]) > 2  # pinged every WatchdogSec / 2
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                      "RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet"):
        assert hardening in service, hardening
    assert "AF_UNIX" in service["RestrictAddressFamilies"]  # worker pipes, NOTIFY_SOCKET


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv (verify checks the file exists)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    text = (DEPLOY / "ocm.service").read_text().replace("/opt/ocm/venv/bin/", f"{BIN}/")
    path = tmp_path / "ocm.service"
    path.write_text(text)
    return path


def test_systemd_analyze_verify(unit_copy: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_copy)],
                          capture_output=True, text=True, timeout=60, cwd=unit_copy.parent)
    # Unknown keys and bad values are only warnings (exit 0): require silence.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stderr


def test_systemd_unit_exposure_is_low(unit_copy: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30",
                           "--no-pager", str(unit_copy)], capture_output=True, text=True,
                          timeout=60, cwd=unit_copy.parent)
    if "Unknown option" in proc.stderr or "unrecognized option" in proc.stderr:
        pytest.skip("this systemd-analyze has no offline security check")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert re.search(r"Overall exposure level for ocm\.service: [0-2]\.\d", proc.stdout)


# --- Dockerfile (parsed; no Docker engine here to build it) ----------------------------------
def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a continuation runs off the end"
    return out


def _healthcheck_command() -> str:
    (health,) = [args for word, args in _instructions() if word == "HEALTHCHECK"]
    return health[health.index("CMD ") + 4:]


def test_dockerfile() -> None:
    steps = _instructions()
    words = [w for w, _ in steps]
    known = {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "USER", "EXPOSE", "STOPSIGNAL",
             "HEALTHCHECK", "ENTRYPOINT", "CMD", "ARG", "LABEL", "VOLUME"}
    assert set(words) <= known, set(words) - known
    assert all(args.split()[0] == "python:3.11-slim" for w, args in steps if w == "FROM")
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [args for w, args in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (entrypoint,) = [args for w, args in final if w == "ENTRYPOINT"]
    assert json.loads(entrypoint)[0] == "ocm-control"  # exec form: signals reach the server
    assert ("STOPSIGNAL", "SIGTERM") in final
    exposed = {p for w, args in final if w == "EXPOSE" for p in args.split()}
    assert exposed == {"9000/tcp", "9443/tcp", "9001/udp", "9002/udp", "9100/tcp"}
    # The self-signed TLS certificate goes to a state directory the user owns, a volume.
    assert any(w == "ENV" and "OCM_STATE_DIR=/var/lib/ocm" in args for w, args in final)
    assert ("VOLUME", "/var/lib/ocm") in final
    health = json.loads(_healthcheck_command())
    assert health[:2] == ["python", "-c"] and "/healthz" in health[2]
    compile(health[2], "HEALTHCHECK", "exec")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for word, args in steps:
        if word == "COPY" and not args.startswith("--from"):
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in ignore, f"{source} is not in the context"


# --- sysctl ------------------------------------------------------------------------------------
def test_sysctl_file_fits_the_buffers() -> None:
    values = {}
    for line in (DEPLOY / "sysctl.d" / "60-ocm.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, val = line.partition("=")
            values[key.strip()] = int(val)
    assert values["net.core.rmem_max"] >= SOCKET_BUFFER_BYTES
    assert values["net.core.wmem_max"] >= SOCKET_BUFFER_BYTES
    assert values["net.core.somaxconn"] >= 4096  # ocm-control's listen backlog
    # (Not checked against /proc/sys: in a container's network namespace most net.core
    # keys are not visible at all.)
    assert set(values) == {"net.core.rmem_max", "net.core.wmem_max", "net.core.somaxconn",
                           "net.core.netdev_max_backlog", "net.ipv4.tcp_max_syn_backlog"}
