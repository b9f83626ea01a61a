"""``make bench``: the published headline and capacity figures (docs/performance.md).

Runs, each against a freshly started server on kernel-chosen loopback ports:

1. the headline profile (500 rooms × 10 users × 2 msg/s, 100-byte chat, 10 s measured after
   2 s of warmup) against ``ocm-control --workers 2``;
2. the same with ``--sockets member`` (one socket per simulated member, the loadgen's
   costlier mode), to show how much of the latency is the loadgen's own;
2b. the same with the server's workers under SCHED_FIFO (``--realtime-priority 10``) and
   one loadgen process at a lower real-time priority (``--procs 1 --realtime-priority
   5``), where this process may use real-time scheduling (runtime/sched.py);
3. a capacity search (``--find-capacity``) against ``ocm-control --workers 2`` with a
   latency and a loss SLO (p99 ≤ 10 ms, loss ≤ 0.1 %);
4. a capacity search with the loss SLO alone (the issue's "maximum sustained fan-out");
5. the headline against ``ocm-control --workers 1``;
6. the headline against the baseline (tests/bench/baselines/simple_relay.py);
7. encrypted rooms against plain rooms at the headline, three interleaved pairs
   (tests/bench/e2e_compare.py; alone: ``make bench-e2e``), unless ``--skip-e2e``;

then rewrites its sections of docs/performance.md (``## Headline``: the result in one
sentence, how to reproduce it, the figures, the exact commands; ``## Capacity search``;
``## Encrypted rooms against plain rooms``), writes the full results (every run, every
step of the capacity searches, the machine, the warnings) to docs/bench/headline.json and
docs/bench/e2e.json (tests/bench/docsout.py), and writes docs/bench-latency.png,
docs/bench-capacity.png, docs/bench-capacity-loss.png and docs/bench-compare.png. Other
sections of docs/performance.md are kept as they are.
The loadgen's JSON reports go to ``--out`` (default: a temporary directory).

``python -m tests.bench.capacity --quick`` runs a small profile and writes no docs (for testing).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from loadgen.report import machine_info
from runtime import sched
from tests.bench import docsout, servers
from tests.bench.docsout import FULL_CLOSE, FULL_OPEN

HEADLINE_SECTION: Final = "## Headline (make bench)"
CAPACITY_SECTION: Final = "## Capacity search (make bench)"
SECTIONS: Final = (HEADLINE_SECTION, CAPACITY_SECTION)
"""The headings this harness owns in docs/performance.md, in this order."""
HEADLINE_KEYS: Final = ("ocm2", "ocm2-member", "ocm2-rt", "ocm1", "baseline")
CAPACITY_KEYS: Final = ("capacity", "capacity-loss")
DOCS: Final = Path("docs")
HEADLINE: Final = ["--rooms", "500", "--users", "10", "--rate", "2", "--duration", "10",
                   "--warmup", "2", "--size", "100"]
QUICK: Final = ["--rooms", "20", "--users", "5", "--rate", "5", "--duration", "2",
                "--warmup", "1", "--size", "100"]
CAPACITY_SLO_P99_MS: Final = 10.0
CAPACITY_SLO_LOSS_PCT: Final = 0.1
CAPACITY_SEARCH: Final = ["--duration", "5", "--warmup", "1", "--find-capacity",
                          "--step-factor", "1.5", "--precision", "0.05", "--max-steps", "12",
                          "--retries", "1"]
CAPACITY: Final = [*CAPACITY_SEARCH, "--slo-p99-ms", str(CAPACITY_SLO_P99_MS),
                   "--slo-loss-pct", str(CAPACITY_SLO_LOSS_PCT)]
CAPACITY_LOSS_ONLY: Final = [*CAPACITY_SEARCH, "--slo-loss-pct", str(CAPACITY_SLO_LOSS_PCT)]
LOADGEN_TIMEOUT_S: Final = 1800
IDLE_THRESHOLD: Final = 0.9
SERVER_START_ATTEMPTS: Final = 3
RT_PRIORITY: Final = 10
"""``ocm-control --realtime-priority`` of the real-time headline row."""
RT_LOADGEN: Final = ["--procs", "1", "--realtime-priority", "5"]
"""The loadgen of that row: one process (3 busy processes on 2 cores, not 4), below the
server's priority so that it never delays a worker."""


@dataclass
class Scenario:
    key: str
    label: str
    server_cmd: list[str]
    loadgen_args: list[str]
    plot: Path | None = None


@dataclass
class Outcome:
    scenario: Scenario
    server_cmd: str
    loadgen_cmd: str
    exit_code: int
    report: dict[str, Any] | None
    idle_before: float | None = None
    p99s: list[float] | None = None


def idle_fraction(seconds: float = 1.0) -> float | None:
    """Share of the machine's CPU time that was idle over ``seconds`` (``/proc/stat``)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)  # a measurement window, not a wait for an event
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_idle(limit_s: float, threshold: float = IDLE_THRESHOLD) -> float | None:
    """Give other work on the machine up to ``limit_s`` to finish: return as soon as at
    least ``threshold`` of the CPU is idle over a second (or the last figure seen)."""
    deadline = time.monotonic() + limit_s
    while True:
        idle = idle_fraction()
        if idle is None or idle >= threshold or time.monotonic() >= deadline:
            return idle
        print(f"--- the machine is busy ({100 * idle:.0f} % idle); waiting for it to calm "
              "down", flush=True)


def _display(cmd: list[str]) -> str:
    """A command as a reader would type it (``python -m x`` -> the console script)."""
    shown = list(cmd)
    if shown[:3] == [sys.executable, "-m", "control"]:
        shown[:3] = ["ocm-control"]
    elif shown[:3] == [sys.executable, "-m", "loadgen"]:
        shown[:3] = ["ocm-loadgen"]
    elif shown[:2] == [sys.executable, "-m"]:
        shown[:2] = ["python", "-m"]
    for i in range(1, len(shown)):
        if shown[i - 1] in ("--json", "--plot"):
            shown[i] = Path(shown[i]).name  # where a run wrote is not part of the command
    return shlex.join(shown)


def _p99(report: dict[str, Any] | None) -> float:
    if report is None or report["result"]["latency_ms"]["p99"] is None:
        return float("inf")
    return float(report["result"]["latency_ms"]["p99"])


def run_scenario(sc: Scenario, out_dir: Path, idle_wait_s: float, repeat: int = 1) -> Outcome:
    """Start the server, run the loadgen ``repeat`` times against it (waiting for an idle
    machine before each), keep the run with the median p99."""
    idle = wait_for_idle(idle_wait_s)
    print(f"\n=== {sc.label}: {_display(sc.server_cmd)}", flush=True)
    for attempt in range(SERVER_START_ATTEMPTS):
        try:
            server = servers.start(sc.server_cmd)
            break
        except (TimeoutError, RuntimeError) as exc:  # a busy machine, a port race
            if attempt == SERVER_START_ATTEMPTS - 1:
                raise
            print(f"--- the server did not start ({exc}); trying again", flush=True)
    attempts: list[tuple[int, dict[str, Any] | None, Path, float | None]] = []
    with server:
        for i in range(repeat):
            if i:
                idle = wait_for_idle(idle_wait_s)
            json_path = out_dir / f"{sc.key}-{i}.json"
            plot_path = out_dir / f"{sc.key}-{i}.png"
            cmd = [sys.executable, "-m", "loadgen", "--server", server.host, "--tcp-port",
                   str(server.tcp_port), "--json", str(json_path), "--plot", str(plot_path),
                   "--label", sc.label, "--server-pid", str(server.pid), *sc.loadgen_args]
            print(f"=== run {i + 1} of {repeat}: {_display(cmd)}", flush=True)
            code = subprocess.run(cmd, timeout=LOADGEN_TIMEOUT_S).returncode
            report = orjson.loads(json_path.read_bytes()) if json_path.exists() else None
            attempts.append((code, report, plot_path, idle))
    ranked = sorted(attempts, key=lambda a: _p99(a[1]))
    code, report, plot_path, idle = ranked[(len(ranked) - 1) // 2]
    if sc.plot is not None and plot_path.exists():
        shutil.copyfile(plot_path, sc.plot)
    shown = _display(cmd)
    shown = shown.replace(f"--tcp-port {server.tcp_port}", "--tcp-port $PORT")
    shown = shown.replace(f"--server-pid {server.pid}", "--server-pid $PID")
    shown = shown.replace(str(json_path), f"{sc.key}.json")
    shown = shown.replace(str(plot_path), sc.plot.name if sc.plot else f"{sc.key}.png")
    return Outcome(sc, _display(sc.server_cmd), shown, code, report, idle,
                   [_p99(a[1]) for a in attempts])


# --- docs/performance.md ----------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _headline_row(o: Outcome) -> str:
    r = o.report
    if r is None:
        return f"| {o.scenario.label} | failed (exit {o.exit_code}) |" + " |" * 13
    run, setup = r["result"], r["setup"]
    c, lat, relay = run["counts"], run["latency_ms"], run.get("relay_latency_ms") or {}
    cpu = " + ".join(f"{x:.0f}" for x in run["loadgen_cpu_pct"]) + " % (wait " + " + ".join(
        f"{x:.0f}" for x in run.get("loadgen_wait_pct", [])) + " %)"
    server_cpu = "–" if run.get("server_cpu_pct") is None else (
        f"{run['server_cpu_pct']:.0f} % (wait {run['server_wait_pct']:.0f} %)")
    return (f"| {o.scenario.label} | {run['in_per_s']:,.0f} | {run['out_per_s']:,.0f} | "
            f"{c['loss_pct']:.3f} % | {_ms(lat['p50'])} | {_ms(lat['p90'])} | "
            f"{_ms(lat['p99'])} | {_ms(lat['p99.9'])} | {_ms(lat['max'])} | "
            f"{_ms(relay.get('p50'))} | {_ms(relay.get('p99'))} | {_ms(relay.get('p99.9'))} | "
            f"{server_cpu} | {cpu} | {setup['joins_per_s']:,.0f} |")


def headline_sentence(outcomes: dict[str, Outcome], machine: dict[str, Any]) -> str:
    """The result in one sentence: the default server, and the real-time row if it ran."""
    o = outcomes.get("ocm2")
    if o is None or o.report is None:
        return "**The headline run failed; see the warnings below.**"
    run = o.report["result"]
    relay = run.get("relay_latency_ms") or {}
    text = (f"**{run['target_in_per_s']:,.0f} datagrams/s in and "
            f"{run['target_out_per_s']:,.0f} deliveries/s out on {machine['nproc']} cores "
            f"shared with the loadgen: p99 {_ms(run['latency_ms']['p99'])} ms end to end, "
            f"{_ms(relay.get('p99'))} ms in the relay, {run['counts']['loss_pct']:.3f} % "
            f"lost ({o.scenario.label})")
    rt = outcomes.get("ocm2-rt")
    if rt is not None and rt.report is not None:
        rt_run = rt.report["result"]
        rt_relay = rt_run.get("relay_latency_ms") or {}
        text += (f"; with real-time scheduling, p99 {_ms(rt_run['latency_ms']['p99'])} ms end "
                 f"to end and {_ms(rt_relay.get('p99'))} ms in the relay")
    return text + ".**"


def short_command(cmd: str) -> str:
    """``cmd`` without the options that only say where a run wrote and what it was called
    (``--json``, ``--plot``, ``--label``): the data file keeps the whole command."""
    words = shlex.split(cmd)
    kept = [w for i, w in enumerate(words) if w not in ("--json", "--plot", "--label")
            and (i == 0 or words[i - 1] not in ("--json", "--plot", "--label"))]
    return shlex.join(kept).replace("'$PORT'", "$PORT").replace("'$PID'", "$PID")


def _commands(outcomes: dict[str, Outcome], keys: tuple[str, ...]) -> list[str]:
    """The first run's commands for the page; every other run's for the data file only."""
    lines = ["```sh"]
    shown = [o for o in (outcomes.get(key) for key in keys) if o is not None]
    for i, o in enumerate(shown):
        if i == 1:
            lines.append(FULL_OPEN)
        lines += [f"# {o.scenario.label}", o.server_cmd, short_command(o.loadgen_cmd)]
    if len(shown) > 1:
        lines.append(FULL_CLOSE)
    return [*lines, "```", "", "`$PORT` is the TCRP port from the server's `ready` line "
            "(`--tcp-port 0` lets the kernel choose); `$PID` is the server's process id.", ""]


def render_sections(outcomes: dict[str, Outcome], machine: dict[str, Any],
                    load_before: tuple[float, float, float]) -> list[str]:
    """The text of ``SECTIONS``, in that order, each starting with its heading."""
    return [render_headline(outcomes, machine, load_before), render_capacity(outcomes)]


def render_headline(outcomes: dict[str, Outcome], machine: dict[str, Any],
                    load_before: tuple[float, float, float]) -> str:
    lines = [HEADLINE_SECTION, "", headline_sentence(outcomes, machine), ""]
    lines += [
        "Profile: 500 rooms × 10 users × 2 msg/s, 100-byte chat, 10 s measured after 2 s of "
        "warmup. Reproduce with `make bench` on an idle machine: it starts each server on "
        "kernel-chosen loopback ports, runs `ocm-loadgen` against it three times and keeps "
        "the run with the median p99 (`tests/bench/capacity.py`; the exact commands are at "
        "the end of this section).",
        "",
        f"Machine: {machine['nproc']} × {machine['cpu_model']}, {machine['kernel']}, "
        f"Python {machine['python']}, shared by server and loadgen over loopback. CPU is "
        "per loadgen process and summed over the server's processes (100 % = one core); "
        "\"wait\": runnable but waiting for a core. The `--realtime-priority "
        f"{RT_PRIORITY}` row runs the workers under `SCHED_FIFO`.",
        "",
        "| server | in/s | out/s | lost | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | "
        "relay p50 | relay p99 | relay p99.9 | server CPU | loadgen CPU | joins/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: |",
    ]
    for key in HEADLINE_KEYS:
        if key in outcomes:
            lines.append(_headline_row(outcomes[key]))
    lines += ["", FULL_OPEN, "", "Exit codes and warnings of each run:", ""]
    for key in (*HEADLINE_KEYS, *CAPACITY_KEYS):
        o = outcomes.get(key)
        if o is None or o.report is None:
            continue
        warnings = o.report["result"]["warnings"]
        text = "; ".join(warnings) if warnings else "none"
        idle = "" if o.idle_before is None else (
            f"; machine {100 * o.idle_before:.0f} % idle just before")
        runs = ""
        if o.p99s and len(o.p99s) > 1:
            runs = (f"; {len(o.p99s)} runs, p99 " + " / ".join(f"{p:.2f}" for p in o.p99s)
                    + " ms, the median run is shown")
        lines.append(f"- {o.scenario.label}: exit {o.exit_code}{idle}{runs}; warnings: {text}")
    lines += ["", FULL_CLOSE, "",
              "![latency and throughput over time, ocm-control --workers 2]"
              "(bench-latency.png)", "", "![the three servers compared](bench-compare.png)", ""]
    lines += ["### Commands", "", *_commands(outcomes, HEADLINE_KEYS)]
    return "\n".join(lines)


def render_capacity(outcomes: dict[str, Outcome]) -> str:
    lines = [CAPACITY_SECTION, ""]
    results = [line for key in CAPACITY_KEYS for line in _capacity_result(outcomes.get(key))]
    lines += [*(results or ["No capacity search ran (`--skip-capacity`)."]), ""]
    for key in CAPACITY_KEYS:
        lines += _capacity_lines(outcomes.get(key))
    if any(key in outcomes for key in CAPACITY_KEYS):
        lines += ["### Commands", "", *_commands(outcomes, CAPACITY_KEYS)]
    return "\n".join(lines)


def _capacity_result(cap: Outcome | None) -> list[str]:
    """One bullet: the rate that held the search's SLO."""
    if cap is None or cap.report is None or not cap.report.get("capacity"):
        return []
    c = cap.report["capacity"]
    if c["rate_per_user"] is None:
        return [f"- {cap.scenario.label}: no step held the SLO."]
    bound = " (a lower bound: the loadgen was saturated)" if c["limited_by_loadgen"] else ""
    return [f"- {cap.scenario.label}: **{c['rate_per_user']:g} msg/s per user = "
            f"{c['in_per_s']:,.0f} datagrams/s in, {c['out_per_s']:,.0f} deliveries/s "
            f"out**{bound}."]


def _capacity_lines(cap: Outcome | None) -> list[str]:
    lines: list[str] = []
    if cap is not None and cap.report is not None and cap.report.get("capacity"):
        c = cap.report["capacity"]
        slo = " and ".join(
            ([f"p99 ≤ {c['slo_p99_ms']:g} ms"] if c["slo_p99_ms"] is not None else [])
            + [f"loss ≤ {c['slo_loss_pct']:g} %"])
        lines += [
            f"### {cap.scenario.label}",
            "",
            f"SLO: {slo}, 5 s per step after 1 s of warmup; the rate grows × 1.5 while "
            "it holds, shrinks ÷ 1.5 while it breaks, then bisects to 5 %.",
            "",
            FULL_OPEN,
            "",
            f"Steps of {cap.scenario.label}:",
            "",
            "| rate/user | in/s | out/s | p50 ms | p99 ms | relay p99 ms | loss | server CPU "
            "| loadgen CPU | SLO |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for run in cap.report["runs"]:
            lat, relay = run["latency_ms"], run.get("relay_latency_ms") or {}
            cpu = " + ".join(f"{x:.0f}" for x in run["loadgen_cpu_pct"])
            scpu = "–" if run.get("server_cpu_pct") is None else f"{run['server_cpu_pct']:.0f} %"
            lines.append(
                f"| {run['rate_per_user']:g} | {run['in_per_s']:,.0f} | {run['out_per_s']:,.0f}"
                f" | {_ms(lat['p50'])} | {_ms(lat['p99'])} | {_ms(relay.get('p99'))}"
                f" | {run['counts']['loss_pct']:.3f} %"
                f" | {scpu} | {cpu} % | {'held' if run['slo']['held'] else 'broke'}"
                f"{' (retry)' if run.get('retry') else ''} |")
        lines.append("")
        if c["rate_per_user"] is None:
            lines.append("**Result: no step held the SLO.**")
        else:
            lines.append(f"**Result: {c['rate_per_user']:g} msg/s per user = "
                         f"{c['in_per_s']:,.0f} datagrams/s in, {c['out_per_s']:,.0f} "
                         "deliveries/s out** held the SLO.")
        if c["limited_by_loadgen"]:
            lines.append(" The search stopped on a break while the loadgen itself was "
                         "saturated, so this is a lower bound.")
        lines += ["", FULL_CLOSE]
        if cap.scenario.plot is not None:
            lines += ["", f"![p99 against offered load]({cap.scenario.plot.name})", ""]
        else:
            lines.append("")
    return lines


def results(outcomes: dict[str, Outcome], machine: dict[str, Any],
             load_before: tuple[float, float, float]) -> dict[str, Any]:
    """The raw results for docs/bench/headline.json: the machine and every run."""
    return {"machine": machine, "load_before": list(load_before), "runs": {
        key: {"label": o.scenario.label, "server": o.server_cmd, "loadgen": o.loadgen_cmd,
              "exit_code": o.exit_code, "idle_before": o.idle_before, "p99s": o.p99s,
              "report": o.report} for key, o in outcomes.items()}}


def compare_plot(outcomes: dict[str, Outcome], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [o for k in ("ocm2", "ocm1", "baseline") if (o := outcomes.get(k)) and o.report]
    if not rows:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    keys = ["p50", "p90", "p99", "p99.9", "max"]
    width = 0.8 / len(rows)
    for i, o in enumerate(rows):
        assert o.report is not None
        lat = o.report["result"]["latency_ms"]
        xs = [k + i * width for k in range(len(keys))]
        ax1.bar(xs, [lat[k] or 0 for k in keys], width, label=o.scenario.label)
    ax1.set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(keys))], keys)
    ax1.set_yscale("log")
    ax1.set_ylabel("latency (ms)")
    ax1.set_title("headline latency (500 × 10 × 2 msg/s)")
    ax1.legend(fontsize="small")
    labels = [o.scenario.label for o in rows]
    out = [o.report["result"]["out_per_s"] for o in rows if o.report]
    target = rows[0].report["result"]["target_out_per_s"] if rows[0].report else 0
    ax2.bar(labels, out, color=["C0", "C1", "C2"][: len(rows)])
    ax2.axhline(target, color="grey", ls="--", lw=0.8, label="target")
    ax2.set_ylabel("deliveries/s")
    ax2.set_title("achieved fan-out")
    ax2.tick_params(axis="x", labelsize="small")
    ax2.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small profile, no capacity search, no docs (a smoke test)")
    parser.add_argument("--skip-capacity", action="store_true", help="no capacity search")
    parser.add_argument("--skip-e2e", action="store_true",
                        help="no encrypted-against-plain pairs (tests/bench/e2e_compare.py)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the JSON reports [a temporary directory]")
    parser.add_argument("--docs", type=Path, default=DOCS,
                        help="where performance.md, bench/*.json and the PNGs go [docs]")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the docs")
    parser.add_argument("--repeat", type=int, default=3,
                        help="headline runs per server; the median by p99 is reported [3]")
    parser.add_argument("--idle-wait", type=float, default=120.0, metavar="SECONDS",
                        help="before each run, wait up to this long for the machine to be "
                        f"at least {100 * IDLE_THRESHOLD:.0f} %% idle [120]")
    args = parser.parse_args(argv)
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="ocm-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_docs = not (args.no_docs or args.quick)
    docs = args.docs
    plots = docs if write_docs else out_dir
    plots.mkdir(parents=True, exist_ok=True)
    profile = QUICK if args.quick else HEADLINE
    scenarios = [Scenario("ocm2", "ocm-control --workers 2", servers.control_command(2),
                          profile, plots / "bench-latency.png")]
    if not args.quick:
        scenarios.append(Scenario("ocm2-member", "ocm-control --workers 2, loadgen "
                                  "--sockets member", servers.control_command(2),
                                  [*profile, "--sockets", "member"], out_dir / "member.png"))
        refused = sched.probe(RT_PRIORITY)
        if refused is None:
            scenarios.append(Scenario(
                "ocm2-rt", f"ocm-control --workers 2 --realtime-priority {RT_PRIORITY}, "
                f"loadgen {' '.join(RT_LOADGEN)}",
                [*servers.control_command(2), "--realtime-priority", str(RT_PRIORITY)],
                [*profile, *RT_LOADGEN], out_dir / "rt.png"))
        else:
            print(f"no real-time row: {refused}", file=sys.stderr)
    if not (args.quick or args.skip_capacity):
        scenarios.append(Scenario("capacity", "capacity (p99 and loss), ocm-control "
                                  "--workers 2", servers.control_command(2),
                                  [*profile[:6], *profile[-2:], *CAPACITY],
                                  plots / "bench-capacity.png"))
        scenarios.append(Scenario("capacity-loss", "capacity (loss only), ocm-control "
                                  "--workers 2", servers.control_command(2),
                                  [*profile[:6], *profile[-2:], *CAPACITY_LOSS_ONLY],
                                  plots / "bench-capacity-loss.png"))
    scenarios += [
        Scenario("ocm1", "ocm-control --workers 1", servers.control_command(1), profile,
                 out_dir / "ocm1.png"),
        Scenario("baseline", "baseline simple_relay", servers.baseline_command(), profile,
                 out_dir / "baseline.png"),
    ]
    load_before = os.getloadavg()
    machine = machine_info()
    outcomes: dict[str, Outcome] = {}
    for sc in scenarios:
        repeat = 1 if sc.key.startswith("capacity") or args.quick else max(args.repeat, 1)
        outcomes[sc.key] = run_scenario(sc, out_dir, 0.0 if args.quick else args.idle_wait,
                                        repeat)
    compare_plot(outcomes, plots / "bench-compare.png")
    sections = render_sections(outcomes, machine, load_before)
    if not (args.quick or args.skip_e2e):
        from tests.bench import e2e_compare

        section, e2e_failed = e2e_compare.compare(
            profile, e2e_compare.DEFAULT_PAIRS, out_dir, args.idle_wait,
            "python -m tests.bench.capacity (make bench)")
        sections.append(section)
    print("\n" + "\n\n".join(sections))
    if write_docs:
        written = docsout.publish(docs, "headline", sections[:2],
                                  results(outcomes, machine, load_before))
        if len(sections) > 2:
            written += docsout.publish(docs, "e2e", sections[2:], {"machine": machine})
        print(f"wrote {', '.join(map(str, written))} and {plots}/bench-*.png; "
              f"JSON reports in {out_dir}")
    failed = [o.scenario.label for o in outcomes.values() if o.report is None]
    if not (args.quick or args.skip_e2e):
        failed += e2e_failed
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
