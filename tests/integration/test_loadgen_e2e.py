"""ocm-loadgen end to end: small profiles against the real server and the baseline relay.

Every message must be accounted for (delivered + lost == expected, nothing misrouted, and on
an idle loopback nothing lost), the JSON and the PNG must be written, and a capacity search
must end with a rate. The loadgen runs as ``python -m loadgen`` (its real entry point).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadgen import fastpath
from runtime import sched
from tests.bench import servers
from tests.integration.harness import start_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["--rooms", "20", "--users", "5", "--rate", "5", "--duration", "3", "--warmup", "1",
         "--procs", "2"]
LOADGEN_TIMEOUT_S = 240


def loadgen(tcp_port: int, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            entry: list[str] | None = None, plot: bool = False) -> tuple[int, dict[str, Any], str]:
    """Run ocm-loadgen (``python -m loadgen``, or ``python *entry``); return (exit code,
    the JSON report, its output). ``plot``: also ``--plot report.png`` (matplotlib costs
    about a second of CPU a run: one test of the file draws it)."""
    out = tmp_path / "report.json"
    drawn = ["--plot", str(tmp_path / "report.png")] if plot else []
    cmd = [sys.executable, *(entry or ["-m", "loadgen"]), "--tcp-port", str(tcp_port), "--quiet",
           "--json", str(out), *drawn, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LOADGEN_TIMEOUT_S,
                          env={**os.environ, **(env or {})})
    text = proc.stdout + proc.stderr
    assert out.exists(), f"no JSON written (exit {proc.returncode}):\n{text}"
    return proc.returncode, orjson.loads(out.read_bytes()), text


def assert_all_accounted(report: dict[str, Any], tmp_path: Path, members: int,
                         plotted: bool = False) -> None:
    setup = report["setup"]
    assert setup["joins_ok"] == members and setup["joins_failed"] == 0
    assert setup["joins_per_s"] > 0
    assert setup["bound_missing"] == 0
    run = report["result"]
    c = run["counts"]
    assert c["sent"] > 0
    assert c["expected"] == c["sent"] * 4  # 5 users: 4 others each
    assert c["delivered"] + c["lost"] == c["expected"]
    assert c["misrouted"] == 0
    assert c["duplicated"] == 0
    assert c["delivered"] == c["expected"], f"lost on an idle loopback: {c}"
    assert run["latency_ms"]["p99"] is not None
    # each delivery's relay latency (real send -> kernel receive timestamp) is within its
    # end-to-end latency (schedule -> read), so every percentile is too (HDR: 3 digits)
    assert c["rx_unstamped"] == 0, "no kernel receive timestamps"
    relay, e2e = run["relay_latency_ms"], run["latency_ms"]
    for key in ("p50", "p99", "max"):
        assert 0 < relay[key] <= e2e[key] * 1.002 + 0.002, (key, relay, e2e)
    assert run["timeline"], "no timeline"
    assert report["exits"] == {"member_exits": members - 20, "host_exits": 20}
    if plotted:
        assert (tmp_path / "report.png").read_bytes().startswith(PNG_MAGIC)


@pytest.fixture
def baseline() -> Iterator[servers.Running]:
    with servers.start(servers.baseline_command()) as running:
        yield running


@pytest.mark.parametrize("sockets", ["shared", "member"])
def test_small_profile_against_the_real_server(tmp_path: Path, sockets: str) -> None:
    with start_server(workers=2) as server:
        code, report, text = loadgen(server.tcp_port, tmp_path, *SMALL, "--sockets", sockets,
                                     plot=sockets == "shared")
        assert code == 0, text
        assert report["options"]["sockets"] == sockets
        assert_all_accounted(report, tmp_path, members=100, plotted=sockets == "shared")
        c_here = fastpath.resolve("c") is None
        assert report["accounting"] == ["c" if sockets == "shared" and c_here else "python"]


@pytest.mark.skipif(sched.probe(2) is not None, reason="SCHED_FIFO is not permitted here")
def test_realtime_loadgen_under_a_realtime_server(tmp_path: Path) -> None:
    with start_server("--realtime-priority", "3", workers=2) as server:
        code, report, text = loadgen(server.tcp_port, tmp_path, *SMALL,
                                     "--realtime-priority", "2")
        assert code == 0, text
        assert report["sched"] == ["fifo:2"]  # as read back in each loadgen process
        assert_all_accounted(report, tmp_path, members=100)


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv to take CAP_SYS_NICE away")
def test_realtime_loadgen_without_permission_is_a_usage_error() -> None:
    done = subprocess.run(["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--",
                           sys.executable, "-m", "loadgen", "--tcp-port", "9", "--quiet",
                           "--realtime-priority", "4"], capture_output=True, text=True,
                          timeout=LOADGEN_TIMEOUT_S,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0)))
    assert done.returncode == 2, done.stderr
    assert "SCHED_FIFO priority 4 for the loadgen is not permitted" in done.stderr
    assert "--realtime-priority 0" in done.stderr


WITHOUT_EXTENSION = ["-c", "import sys; sys.modules['loadgen._account'] = None; "
                     "from loadgen.__main__ import main; sys.exit(main())"]
"""``python -m loadgen`` as if the C extension had not been built at install time."""


def test_without_the_extension_the_python_accounting_takes_over(tmp_path: Path) -> None:
    with start_server(workers=2) as server:
        code, report, text = loadgen(server.tcp_port, tmp_path, *SMALL, "--sockets",
                                     "shared", entry=WITHOUT_EXTENSION)
        assert code == 0, text
        assert report["accounting"] == ["python"]
        assert any("accounted in Python" in w and "not built" in w
                   for w in report["result"]["warnings"])
        assert_all_accounted(report, tmp_path, members=100)
    refused = subprocess.run([sys.executable, *WITHOUT_EXTENSION, "--tcp-port", "9", "--quiet",
                              "--accounting", "c", "--sockets", "shared"], capture_output=True,
                             text=True, timeout=LOADGEN_TIMEOUT_S)
    assert refused.returncode == 2, refused.stderr
    assert "--accounting c: the C extension loadgen._account was not built" in refused.stderr


def test_auto_sockets_share_one_socket_on_loopback(baseline: servers.Running,
                                                    tmp_path: Path) -> None:
    code, report, text = loadgen(baseline.tcp_port, tmp_path, "--rooms", "2", "--users", "3",
                                 "--duration", "1", "--warmup", "0", "--procs", "1")
    assert code == 0, text
    assert report["options"]["sockets"] == "shared"


def test_ocm1_framing_against_the_real_server(tmp_path: Path) -> None:
    with start_server(workers=2) as server:
        # password joins cost the server a scrypt each: seconds apiece on a busy machine
        code, report, text = loadgen(server.tcp_port, tmp_path, *SMALL, "--framing", "ocm1",
                                     "--password", "s3cret", "--join-timeout", "60")
        assert code == 0, text
        assert report["setup"]["framing"] == "ocm1"
        assert_all_accounted(report, tmp_path, members=100)


def test_small_profile_against_the_baseline(baseline: servers.Running, tmp_path: Path) -> None:
    code, report, text = loadgen(baseline.tcp_port, tmp_path, *SMALL)
    assert code == 0, text
    assert_all_accounted(report, tmp_path, members=100)
    assert "result" in text  # the summary table was printed
    # piped output is not wrapped at 80 columns: the joins line stays one line
    assert any("joins/s" in line and "all bound after" in line for line in text.splitlines())


def test_find_capacity_ends_with_a_rate(baseline: servers.Running, tmp_path: Path) -> None:
    code, report, text = loadgen(
        baseline.tcp_port, tmp_path, "--rooms", "4", "--users", "3", "--rate", "2",
        "--duration", "1", "--warmup", "0.5", "--procs", "1", "--find-capacity",
        "--max-steps", "3", "--step-factor", "2", "--slo-p99-ms", "1000", "--drain", "1")
    assert code == 0, text
    cap = report["capacity"]
    assert [s["rate_per_user"] for s in cap["steps"]] == [2.0, 4.0, 8.0]
    assert cap["rate_per_user"] == 8.0
    assert len(report["runs"]) == 3
    assert "capacity" in text


def test_find_capacity_against_the_real_server(tmp_path: Path) -> None:
    with start_server(workers=2) as server:
        code, report, text = loadgen(
            server.tcp_port, tmp_path, "--rooms", "4", "--users", "3", "--rate", "2",
            "--duration", "1", "--warmup", "0.5", "--procs", "2", "--find-capacity",
            "--max-steps", "2", "--slo-p99-ms", "1000", "--server-pid", str(server.proc.pid))
        assert code == 0, text
        assert report["capacity"]["rate_per_user"] is not None
        assert report["result"]["server_cpu_pct"] is not None


def test_slo_broken_exits_1(baseline: servers.Running, tmp_path: Path) -> None:
    code, report, text = loadgen(
        baseline.tcp_port, tmp_path, "--rooms", "2", "--users", "3", "--rate", "5",
        "--duration", "1", "--warmup", "0", "--procs", "1", "--slo-p99-ms", "0.000001")
    assert code == 1, text
    assert not report["result"]["slo"]["held"]
    assert report["exit_code"] == 1


def test_unreachable_server_exits_3(tmp_path: Path) -> None:
    with servers.start(servers.baseline_command()) as running:
        port = running.tcp_port
    cmd = [sys.executable, "-m", "loadgen", "--tcp-port", str(port), "--quiet", "--rooms", "2",
           "--users", "2", "--procs", "1", "--duration", "1", "--warmup", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LOADGEN_TIMEOUT_S)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"ocm-loadgen: cannot reach the server at 127.0.0.1:{port} (connection refused); is "
        "ocm-control running there?"]


def test_keepalives_keep_slow_members_in_the_room(tmp_path: Path) -> None:
    # one message per member every 5 s, a 2 s inactivity timeout: only the keepalives
    # (every inactivity_timeout / 4 of silence) keep the members from being evicted
    with start_server("--inactivity-timeout", "2", workers=2) as server:
        code, report, text = loadgen(
            server.tcp_port, tmp_path, "--rooms", "4", "--users", "3", "--rate", "0.2",
            "--duration", "5", "--warmup", "0", "--procs", "2")
        assert code == 0, text
        run = report["result"]
        assert run["counts"]["keepalives"] > 0
        assert "disconnected" not in run["notices"] and "left" not in run["notices"]
        assert run["counts"]["delivered"] == run["counts"]["expected"] > 0


def test_make_bench_pipeline_quick(tmp_path: Path) -> None:
    """``make bench``'s driver end to end on a small profile (``--quick``: no capacity
    search, docs untouched): three real servers, one report each, the section printed."""
    docs = tmp_path / "docs"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.capacity", "--quick", "--out", str(tmp_path),
         "--docs", str(docs)],
        capture_output=True, text=True, timeout=LOADGEN_TIMEOUT_S * 3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for key in ("ocm2", "ocm1", "baseline"):
        report = orjson.loads((tmp_path / f"{key}-0.json").read_bytes())
        run = report["result"]
        assert run["counts"]["lost"] == 0 and run["counts"]["delivered"] > 0, key
        assert run["relay_latency_ms"]["p99"] is not None, key
    assert "| server | in/s | out/s | lost |" in proc.stdout
    assert "relay p99" in proc.stdout
    assert not (docs / "performance.md").exists()  # --quick writes no docs
