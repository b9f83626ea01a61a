"""``ocm-loadgen --e2e`` against the real server: encrypted rooms are created and joined
with keys, every delivery is accounted for and checked, and a sample is opened by the
members' own engines (loadgen/e2eload.py). A run whose ciphertexts are corrupted on the
way must fail: the check can fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from tests.bench import e2e_compare
from tests.integration.harness import Server
from tests.integration.test_loadgen_e2e import LOADGEN_TIMEOUT_S, loadgen

SMALL_E2E = ["--e2e", "--rooms", "4", "--users", "4", "--rate", "5", "--duration", "2",
             "--warmup", "0.5", "--procs", "2", "--e2e-verify-every", "3"]


def test_encrypted_rooms_deliver_everything_and_the_samples_open(server: Server,
                                                                  tmp_path: Path) -> None:
    code, report, text = loadgen(server.tcp_port, tmp_path, *SMALL_E2E)
    assert code == 0, text
    assert report["options"]["e2e"] and report["options"]["framing"] == "ocm1"
    assert report["accounting"] == ["python"]
    setup = report["setup"]
    assert (setup["joins_ok"], setup["framing_mismatch"], setup["bound_missing"]) == (16, 0, 0)
    c = report["result"]["counts"]
    assert c["sent"] > 0 and c["expected"] == c["sent"] * 3
    assert c["delivered"] == c["expected"], c
    assert (c["misrouted"], c["duplicated"], c["unparsed"], c["e2e_mismatch"]) == (0, 0, 0, 0)
    # each of the 16 senders sends ~12 messages, every third goes to its verifier's engine
    assert c["e2e_verified"] >= 16 * 3 and c["e2e_verify_failed"] == 0, c
    relay = report["result"]["relay_latency_ms"]
    assert relay["p99"] is not None and c["rx_unstamped"] == 0
    assert report["exits"] == {"member_exits": 12, "host_exits": 4}
    assert "0 not as sealed" in text and "encrypted rooms" in text


def test_corrupted_deliveries_fail_the_check(server: Server, tmp_path: Path) -> None:
    """Every 3rd sealed message goes out with one ciphertext bit flipped (the sender's
    table keeps what it sealed): those deliveries are not as sealed, the sampled ones
    are refused by the receiving engine, and the run exits 1."""
    code, report, text = loadgen(server.tcp_port, tmp_path, *SMALL_E2E,
                                 "--e2e-corrupt-every", "3")
    assert code == 1, text
    c = report["result"]["counts"]
    assert c["e2e_mismatch"] > 0 and c["e2e_verify_failed"] > 0, c
    assert c["e2e_verified"] == 0  # the samples (k % 3 == 0) are exactly the corrupted ones
    assert c["delivered"] < c["expected"]  # a corrupted delivery is not a delivery
    assert not report["result"]["slo"]["held"]
    assert "encrypted deliveries failed the check" in text


def test_make_bench_e2e_pipeline_on_a_tiny_profile(tmp_path: Path) -> None:
    """``make bench-e2e``'s driver end to end: one interleaved pair on fresh servers, its
    section written into a copy of the docs, in place of the old one."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "performance.md").write_text(
        f"# Benchmarks\n\n{e2e_compare.SECTION}\n\nold\n\n## Wire codecs\n\ntheirs\n")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.e2e_compare", "--pairs", "1", "--rooms", "3",
         "--users", "3", "--duration", "1", "--warmup", "0.5", "--idle-wait", "0",
         "--out", str(tmp_path), "--docs", str(docs)],
        capture_output=True, text=True, timeout=LOADGEN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plain = orjson.loads((tmp_path / "plain-0-0.json").read_bytes())
    e2e = orjson.loads((tmp_path / "e2e-0-0.json").read_bytes())
    assert (plain["options"]["e2e"], plain["options"]["framing"]) == (False, "ocm1")
    assert plain["accounting"] == e2e["accounting"] == ["python"]
    assert e2e["options"]["e2e"] and e2e["result"]["counts"]["e2e_verified"] > 0
    text = (docs / "performance.md").read_text()
    assert "old" not in text and text.endswith("## Wire codecs\n\ntheirs\n")
    assert "| 1 | plain rooms (ocm1) |" not in text  # each run: in the data file
    assert "[bench/e2e.json](bench/e2e.json)" in text
    assert "| end-to-end p99 |" in text and "3 rooms × 3 users × 2 msg/s" in text
    data = orjson.loads((docs / "bench" / "e2e.json").read_bytes())
    rows = next(t["rows"] for t in data["tables"] if t["columns"][:2] == ["run", "rooms"])
    assert [r[:3] for r in rows] == [["1", "plain rooms (ocm1)", "100.000 %"],
                                     ["1", "encrypted rooms", "100.000 %"]]
