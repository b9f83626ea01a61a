"""What ``ocm-loadgen`` shows and writes: live progress (rich), the summary tables, the
JSON report (every figure) and the PNG (latency percentiles and throughput over time).

The report is one dict (built by cli.py): ``options``, ``machine``, ``setup`` (joins),
``runs`` (one per run; several with ``--find-capacity``), ``result`` (the headline run),
``capacity`` (or ``None``), ``exits`` and ``exit_code``.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Final, TextIO

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadgen.pacing import NS


def machine_info() -> dict[str, Any]:
    """nproc, CPU model, kernel, Python and the date, for the report and docs."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt_int(value: float) -> str:
    return f"{value:,.0f}"


# --- live progress ------------------------------------------------------------------------
class LiveView:
    """Progress while the loadgen runs, on stderr; a no-op when ``enabled`` is false."""

    def __init__(self, enabled: bool, members: int) -> None:
        self.enabled = enabled
        self.members = members
        self.console = Console(stderr=True)
        self.phase = "starting"
        self.joins: dict[int, tuple[int, int]] = {}
        self.rate = 0.0
        self.step = 0
        self.mstart_ns = 0
        self.end_ns = 0
        self.point: dict[str, Any] | None = None
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "phase":
            self.phase = payload["phase"]
            if self.phase == "running":
                self.step += 1
                self.rate = payload["rate"]
                self.mstart_ns, self.end_ns = payload["mstart_ns"], payload["end_ns"]
                self.point = None
        elif kind == "joins":
            self.joins[payload["index"]] = (payload["done"], payload["failed"])
        elif kind == "tick":
            self.point = payload
        elif kind == "interrupted":
            self.phase = "interrupted: finishing (Ctrl-C again to quit at once)"
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Table:
        table = Table(title="ocm-loadgen", show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("phase", self.phase)
        done = sum(d for d, _ in self.joins.values())
        failed = sum(f for _, f in self.joins.values())
        table.add_row("joins", f"{done:,} / {self.members:,} ({failed} failed)")
        if self.step:
            now = time.monotonic_ns()
            if now < self.mstart_ns:
                where = f"warmup, {(self.mstart_ns - now) / NS:.1f} s left"
            elif now < self.end_ns:
                where = f"measuring, {(self.end_ns - now) / NS:.1f} s left"
            else:
                where = "draining"
            table.add_row("run", f"#{self.step} at {self.rate:g} msg/s per user ({where})")
        p = self.point
        if p is not None:
            lat = p["latency_ms"]
            table.add_row("in / out", f"{_fmt_int(p['in_per_s'])} / {_fmt_int(p['out_per_s'])} "
                          "datagrams/s (last 0.5 s)")
            table.add_row("latency ms", f"p50 {_fmt_ms(lat['p50'])}  p99 {_fmt_ms(lat['p99'])}"
                          f"  max {_fmt_ms(lat['max'])} (last 0.5 s)")
            table.add_row("sent / delivered", f"{p['sent']:,} / {p['delivered']:,} (measured "
                          "window so far)")
            cpu = " ".join(f"{c:.0f}%" for c in p["loadgen_cpu_pct"])
            table.add_row("loadgen CPU", cpu)
        return table


# --- summary --------------------------------------------------------------------------------
def run_table(run: dict[str, Any], title: str) -> Table:
    c = run["counts"]
    lat = run["latency_ms"]
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("rate per user", f"{run['rate_per_user']:g} msg/s")
    table.add_row("sent (in)", f"{c['sent']:,}  ({_fmt_int(run['in_per_s'])}/s, target "
                  f"{_fmt_int(run['target_in_per_s'])}/s)")
    table.add_row("expected deliveries", f"{c['expected']:,}")
    table.add_row("delivered (out)", f"{c['delivered']:,}  ({_fmt_int(run['out_per_s'])}/s)")
    table.add_row("lost", f"{c['lost']:,}  ({c['loss_pct']:.4f} %)")
    table.add_row("duplicated / misrouted", f"{c['duplicated']:,} / {c['misrouted']:,}")
    table.add_row("reordered / warm-up / extra", f"{c['reordered']:,} / {c['warmup']:,} / "
                  f"{c['extra']:,}")
    table.add_row("send / recv errors", f"{c['send_errors']:,} / {c['recv_errors']:,}")
    table.add_row("latency p50 / p90 ms", f"{_fmt_ms(lat['p50'])} / {_fmt_ms(lat['p90'])}")
    table.add_row("latency p99 / p99.9 ms", f"{_fmt_ms(lat['p99'])} / {_fmt_ms(lat['p99.9'])}")
    table.add_row("latency max / mean ms", f"{_fmt_ms(lat['max'])} / {_fmt_ms(lat['mean'])}")
    relay = run.get("relay_latency_ms")
    if relay is not None:
        table.add_row("relay latency p50 / p99 / p99.9 ms",
                      f"{_fmt_ms(relay['p50'])} / {_fmt_ms(relay['p99'])} / "
                      f"{_fmt_ms(relay['p99.9'])}")
        if c.get("rx_unstamped"):
            table.add_row("no kernel rx timestamp", f"{c['rx_unstamped']:,} (read time used)")
    if c.get("e2e_verified") or c.get("e2e_verify_failed") or c.get("e2e_mismatch"):
        checked = (f"{c['e2e_mismatch']:,} not as sealed; samples {c['e2e_verified']:,} "
                   f"opened, {c['e2e_verify_failed']:,} refused")
        table.add_row("encrypted deliveries (--e2e)", checked if not (
            c["e2e_mismatch"] or c["e2e_verify_failed"]) else Text(checked, style="red"))
    table.add_row("late sends (> 1 ms)", f"{c['late_sends']:,} (worst "
                  f"{c['max_send_lag_ns'] / 1e6:.2f} ms)")
    cpu = ", ".join(f"{x:.0f} %" for x in run["loadgen_cpu_pct"])
    table.add_row("loadgen CPU per process", f"{cpu} (parent {run['parent_cpu_pct']:.0f} %)")
    wait = ", ".join(f"{x:.0f} %" for x in run.get("loadgen_wait_pct", []))
    table.add_row("loadgen run-queue wait", wait)
    if run.get("server_cpu_pct") is not None:
        table.add_row("server CPU (all processes)", f"{run['server_cpu_pct']:.0f} % of a core")
        table.add_row("server run-queue wait", f"{run['server_wait_pct']:.0f} % of a core")
    slo = run["slo"]
    if slo["p99_ms"] is not None or slo["loss_pct"] is not None or not slo["held"]:
        verdict = Text("held", style="green") if slo["held"] else Text(
            "BROKEN: " + "; ".join(slo["breaches"]), style="red")
        table.add_row("SLO", verdict)
    return table


PIPED_WIDTH: Final = 1000
"""Columns of the summary when stdout is not a terminal: wide enough that no line or table
wraps (a terminal gets its own width)."""


def summary_console(file: TextIO | None = None) -> Console:
    """A console for the summary on ``file`` (stdout): the terminal's width on a TTY;
    otherwise no wrapping, so that piped or redirected output keeps one line per row."""
    out = file or sys.stdout
    if out.isatty():
        return Console(file=out)
    return Console(file=out, width=PIPED_WIDTH, soft_wrap=True)


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or summary_console()
    o, s = report["options"], report["setup"]
    console.print(
        f"[bold]profile[/] {o['rooms']} rooms × {o['users']} users, {o['size']}-byte chat, "
        f"{o['framing']} framing{', encrypted rooms' if o.get('e2e') else ''}, "
        f"{report['procs']} loadgen processes, server "
        f"{o['server']}:{o['tcp_port']}"
    )
    lat = s["join_latency_ms"]
    console.print(
        f"[bold]joins[/] {s['joins_ok']:,} ok, {s['joins_failed']:,} failed {s['failures'] or ''}"
        f" in {s['join_seconds']:.2f} s = [bold]{s['joins_per_s']:,.0f} joins/s[/] (latency "
        f"p50 {_fmt_ms(lat['p50'])} ms, p99 {_fmt_ms(lat['p99'])} ms); all bound after "
        f"{s['bind_wait_s']:.2f} s ({s['bound_missing']} not confirmed)"
    )
    renderables: list[Any] = [run_table(report["result"], "result")]
    cap = report.get("capacity")
    if cap is not None:
        steps = Table(title="capacity search")
        for name in ("rate/user", "in/s", "out/s", "p99 ms", "loss %", "loadgen CPU",
                     "verdict"):
            steps.add_column(name, justify="right")
        for run in report["runs"]:
            c = run["counts"]
            steps.add_row(
                f"{run['rate_per_user']:g}", _fmt_int(run["in_per_s"]),
                _fmt_int(run["out_per_s"]), _fmt_ms(run["latency_ms"]["p99"]),
                f"{c['loss_pct']:.4f}", ", ".join(f"{x:.0f}%" for x in run["loadgen_cpu_pct"]),
                Text("held" + (" (retry)" if run.get("retry") else ""), style="green")
                if run["slo"]["held"] else Text("broke", style="red"),
            )
        renderables.append(steps)
    console.print(Group(*renderables))
    if cap is not None:
        if cap["rate_per_user"] is None:
            console.print("[red]capacity: no rate held its SLO; try a lower --rate[/]")
        else:
            console.print(
                f"[bold]capacity[/] {cap['rate_per_user']:g} msg/s per user = "
                f"{_fmt_int(cap['in_per_s'])} datagrams/s in, {_fmt_int(cap['out_per_s'])}/s "
                f"out (SLO p99 ≤ {cap['slo_p99_ms']} ms, loss ≤ {cap['slo_loss_pct']} %)"
            )
        if cap["limited_by_loadgen"]:
            console.print("[yellow]the search stopped on a break while the loadgen itself "
                          "was saturated: the figure is a lower bound[/]")
    for warning in report["result"]["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


# --- files ------------------------------------------------------------------------------------
def write_json(path: str | Path, report: dict[str, Any]) -> None:
    Path(path).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))


def write_plot(path: str | Path, report: dict[str, Any]) -> None:
    """Latency percentiles and throughput over time of the headline run (and, after a
    capacity search, p99 and loss against the offered rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = report["result"]
    points = run["timeline"]
    cap = report.get("capacity")
    rows = 3 if cap is not None else 2
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows), constrained_layout=True)
    o = report["options"]
    fig.suptitle(f"ocm-loadgen: {o['rooms']} rooms × {o['users']} users at "
                 f"{run['rate_per_user']:g} msg/s per user ({report.get('label') or o['server']})")
    t = [p["t_s"] for p in points]
    ax = axes[0]
    for key, style in (("p50", "-"), ("p90", "-"), ("p99", "-"), ("p99.9", "--"), ("max", ":")):
        ys = [p["latency_ms"][key] for p in points]
        if any(y is not None for y in ys):
            ax.plot(t, [y if y is not None else float("nan") for y in ys], style, label=key)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("time since measurement start (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize="small", ncol=5)
    ax = axes[1]
    ax.plot(t, [p["in_per_s"] for p in points], label="in (sent/s)")
    ax.plot(t, [p["out_per_s"] for p in points], label="out (delivered/s)")
    ax.axhline(run["target_out_per_s"], color="grey", ls="--", lw=0.8, label="target out")
    ax.set_ylabel("datagrams/s")
    ax.set_xlabel("time since measurement start (s)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if cap is not None:
        ax = axes[2]
        runs = sorted(report["runs"], key=lambda r: r["rate_per_user"])
        xs = [r["target_in_per_s"] for r in runs]
        p99 = [r["latency_ms"]["p99"] or float("nan") for r in runs]
        ax.plot(xs, p99, "o-", label="p99 latency (ms)")
        for r, x, y in zip(runs, xs, p99, strict=True):
            ax.plot([x], [y], "o", color="green" if r["slo"]["held"] else "red")
        if cap["slo_p99_ms"] is not None:
            ax.axhline(cap["slo_p99_ms"], color="red", ls="--", lw=0.8, label="SLO p99")
        ax.set_xlabel("offered datagrams/s in (green: SLO held, red: broke)")
        ax.set_ylabel("p99 (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)
