"""``make bench-gui``'s scrollback figures for several checkouts, interleaved.

Runs ``tests/bench/bench_gui.py`` (this checkout's, the same measurements for every
tree) against the client of each checkout given, one fresh process per run, in turn
(A B C A B C ...) so that a machine whose speed drifts affects them alike, and prints
each row's median over the runs with its min and max, in milliseconds.

Usage: ``python tests/bench/gui_ab.py [--runs N] [--lines N] [--clock wall|cpu]
CHECKOUT [CHECKOUT ...]``,
e.g. with ``git worktree add /tmp/old <commit>`` for the version to compare with.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().with_name("bench_gui.py")
ROW = re.compile(r"^\| (.+?) \| ([\d.]+) \|$")


def run_once(tree: Path, lines: int, clock: str) -> dict[str, float]:
    """One run of the bench against ``tree``'s client: each row's figure."""
    env = {**os.environ, "OCM_BENCH_TREE": str(tree), "QT_QPA_PLATFORM": "offscreen"}
    command = [sys.executable, str(BENCH), "--lines", str(lines), "--clock", clock]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                          check=True)
    return {match[1]: float(match[2])
            for match in (ROW.match(line) for line in done.stdout.splitlines()) if match}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", type=Path, metavar="CHECKOUT",
                        help="a checkout of this repository (its client/ is measured)")
    parser.add_argument("--runs", type=int, default=7, help="runs per checkout (default 7)")
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="passed to bench_gui.py (cpu: the thread's CPU time)")
    args = parser.parse_args()
    for tree in args.trees:
        if not (tree / "client" / "gui").is_dir():
            parser.error(f"{tree}: not a checkout with client/gui")
    results: list[list[dict[str, float]]] = [[] for _ in args.trees]
    for number in range(args.runs):
        for index, tree in enumerate(args.trees):
            results[index].append(run_once(tree.resolve(), args.lines, args.clock))
        print(f"run {number + 1} of {args.runs} done", file=sys.stderr)
    names = list(dict.fromkeys(name for runs in results for run in runs for name in run))
    print(f"{args.runs} runs each, interleaved, {args.clock} clock; median (min–max), ms\n")
    print("| what | " + " | ".join(str(tree) for tree in args.trees) + " |")
    print("| --- |" + " ---: |" * len(args.trees))
    for name in names:
        cells = []
        for runs in results:
            values = [run[name] for run in runs if name in run]
            cells.append(f"{statistics.median(values):.3g} ({min(values):.3g}–{max(values):.3g})"
                         if values else "—")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
