"""``ocm-loadgen --loss PCT`` against a real ocm-control: recovery makes up for the loss."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import Server

ROOT = Path(__file__).resolve().parents[2]


def _run(server: Server, tmp_path: Path, *extra: str, duration: float = 2,
         drain: float = 15) -> dict[str, object]:
    out = tmp_path / f"loss{len(extra)}.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadgen", "--server", "127.0.0.1", "--tcp-port",
         str(server.tcp_port), "--loss", "10", "--rooms", "3", "--users", "4", "--rate", "5",
         "--duration", str(duration), "--drain", str(drain), "--quiet", "--json", str(out),
         *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(out.read_text())
    return report


def test_loss_with_recovery_delivers_everything_once_in_order(server: Server,
                                                              tmp_path: Path) -> None:
    report = _run(server, tmp_path, "--procs", "1")
    assert report["procs"] == 1
    result = report["result"]
    assert isinstance(result, dict)
    assert report["options"]["framing"] == "ocm1r"  # type: ignore[index]
    dropped = result["dropped_by_loadgen"]
    assert dropped["out"] > 0 and dropped["in"] > 0
    assert result["delivered"] == result["expected_deliveries"] > 0
    assert result["duplicates"] == result["out_of_order"] == result["unrecovered_markers"] == 0
    assert result["failed_sends"] == 0
    assert result["unsettled_at_end"] == {"pending_sends": 0, "holes": 0}
    assert result["latency_first_send_to_delivery_ms"]["p99"] is not None
    assert report["command"].startswith("ocm-loadgen ")  # type: ignore[union-attr]


def test_the_same_loss_without_recovery_loses_messages(server: Server, tmp_path: Path) -> None:
    result = _run(server, tmp_path, "--no-recovery", drain=1)["result"]  # nothing comes back
    assert isinstance(result, dict)
    assert result["delivered"] < result["expected_deliveries"]


def test_two_processes_and_an_outage_of_one_member_per_room_recover_everything(
        server: Server, tmp_path: Path) -> None:
    report = _run(server, tmp_path, "--procs", "2", "--outage-seconds", "1.5", duration=4.5,
                  drain=40)
    assert report["procs"] == 2
    result = report["result"]
    assert isinstance(result, dict)
    assert result["delivered"] == result["expected_deliveries"] > 0
    assert result["duplicates"] == result["out_of_order"] == result["unrecovered_markers"] == 0
    outage = result["outage"]
    assert outage["members"] == 3 and outage["seconds"] == 1.5
    assert outage["datagrams_dropped_while_out"] > 0
    # 3 others x 5 msg/s x 1.5 s per member away: everything sent meanwhile came back
    assert outage["came_back"] == outage["deliveries_sent_while_out"] > 0
    assert all(real >= 1.5 for real in outage["real_seconds"])
    assert outage["came_back_pct"] == 100.0
    assert outage["after_resume_ms"]["max"] is not None


def test_the_bench_harness_runs_both_kinds_and_writes_the_medians(tmp_path: Path) -> None:
    """``make bench-reliable``'s driver on its small profile: a fresh server, one round."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.reliable", "--quick", "--repeat", "1", "--out",
         str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["medians"]) == {"loss", "outage"}
    for kind in ("loss", "outage"):
        assert summary["medians"][kind]["delivered_pct"] == 100.0
        assert summary["medians"][kind]["duplicates"] == 0
    assert summary["medians"]["outage"]["outage_came_back_pct"] == 100.0
    assert (tmp_path / "loss-1.json").exists() and (tmp_path / "outage-1.json").exists()


def test_the_cost_harness_pairs_ocm1r_with_ocm1(tmp_path: Path) -> None:
    """``make bench-reliable RELIABLE_ARGS=--cost``: interleaved pairs at 0 % loss."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.reliable", "--cost", "--quick", "--pairs", "1",
         "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    cost = json.loads((tmp_path / "cost.json").read_text())
    (on, off), = cost["pairs"]
    assert on > 0 and off > 0 and cost["median_ratio"] == on / off
    for name in ("ocm1r-1.json", "ocm1-1.json"):
        result = json.loads((tmp_path / name).read_text())["result"]
        assert result["delivered"] == result["expected_deliveries"] > 0
    assert json.loads((tmp_path / "ocm1-1.json").read_text())["options"]["framing"] == "ocm1"


def test_the_bench_harness_runs_the_c_engine(tmp_path: Path) -> None:
    """``make bench-reliable RELIABLE_ARGS="--engine c"`` on its small profile: fresh
    ``ocm1r`` members, cload recovering through 5 % loss each way, and with one member
    per room silent for 1 s: everything it missed comes back."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.reliable", "--engine", "c", "--quick", "--repeat",
         "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["engine"] == "c" and summary["loss_pct"] == 5
    for kind in ("loss", "outage"):
        (run,) = summary["runs"][kind]
        assert run["delivered_pct"] == 100.0, run
        assert run["duplicates"] == run["out_of_order"] == run["unrecovered"] == 0, run
        assert run["pending_at_end"] == run["holes_open_at_end"] == 0, run
        report = json.loads((tmp_path / f"cload-{kind}-1.json").read_text())
        assert report["tx_dropped"] + report["rx_dropped"] > 0, report
        assert report["expected"] == report["delivered"] > 0
    assert summary["runs"]["outage"][0]["outage_came_back_pct"] == 100.0
    outage = json.loads((tmp_path / "cload-outage-1.json").read_text())
    assert outage["outage_back"] == outage["outage_expected"] > 0, outage
    assert outage["outage_dropped"] > 0 and outage["outage_s"] >= 1.0, outage


def test_the_cost_harness_pairs_ocm1r_with_ocm1_in_c(tmp_path: Path) -> None:
    """``RELIABLE_ARGS="--cost --engine c"``: the pairs driven by cload, fresh servers."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.reliable", "--cost", "--engine", "c", "--quick",
         "--pairs", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr
    cost = json.loads((tmp_path / "cost.json").read_text())
    (on, off), = cost["pairs"]
    assert on > 0 and off > 0 and cost["median_ratio"] == on / off
    for name, carried in (("cload-ocm1r-1.json", True), ("cload-ocm1-1.json", False)):
        report = json.loads((tmp_path / name).read_text())
        assert report["delivered"] == report["expected"] > 0
        assert (report["carried"] > 0) is carried, report
