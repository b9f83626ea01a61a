"""Benchmark of the room window's scrollback at 10,000 messages (``make bench-gui``).

Offscreen Qt. Appends ``--lines`` chat lines (mixed senders, some Japanese and emoji,
one in ten a notice) to a ``RoomView`` while it is shown at the bottom, as during a busy
chat, and measures:

* the time per ``append`` (the row's height, the offsets, keeping the view at the
  bottom), median and p99 over every append, the medians of the first and last 1,000
  (does it grow with the scrollback?), plus the total;
* the time to render the window (``QWidget.grab()``: a full paint) at the bottom, at the
  top after scrolling there, and in the middle;
* scrolling: from the bottom up by one page at a time for 100 pages, each step a scroll
  and a full paint (rows never shown before get their text laid out then): median and
  slowest step;
* resizing the window: every row's height again at the new width, and a paint;
* one more append and render after the 10,000 (what a user waits for per message then);
* frames: the conversation alone painted at the bottom (median of 50), and 100 more
  messages each appended and painted at the bottom (a busy room: median and slowest).
  A frame's budget is 16 ms (60 frames a second).

Usage: ``python tests/bench/bench_gui.py [--lines N] [--clock wall|cpu]``. Prints
markdown.
``tests/bench/gui_ab.py`` runs it against other checkouts in turn and prints medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# OCM_BENCH_TREE: the checkout whose client is measured (tests/bench/gui_ab.py), else this.
sys.path.insert(0, os.environ.get("OCM_BENCH_TREE") or str(Path(__file__).resolve().parents[2]))

from PySide6 import __version__ as pyside_version  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from client import render  # noqa: E402
from client.gui.room import RoomView  # noqa: E402

TEXTS = ("hello everyone", "こんにちは、今日はいい天気ですね 🌸",
         "a somewhat longer line that talks about the relay benchmarks and the p99 latency",
         "ok 👍", "Привет!")


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time (default); cpu: this thread's CPU time, "
                             "which other processes on a busy machine do not inflate")
    args = parser.parse_args()
    clock = time.perf_counter_ns if args.clock == "wall" else time.thread_time_ns
    app = QApplication.instance() or QApplication([])
    view = RoomView()
    view.resize(760, 560)
    view.show()
    view.enter("bench", "me", host=False, max_message=4051)
    app.processEvents()
    costs: list[int] = []
    start = clock()
    for i in range(args.lines):
        if i % 10 == 9:
            line = render.notice_line(f"user{i % 7} joined the room")
        else:
            line = render.chat_line(f"user{i % 7}", f"{TEXTS[i % len(TEXTS)]} #{i}")
        before = clock()
        view.append(line)
        costs.append(clock() - before)
        if i % 100 == 99:
            app.processEvents()  # the event loop runs between bursts, as in the app
    total = clock() - start
    assert view.at_bottom() and len(view.scrollback) == args.lines

    def render_ns() -> int:
        before = clock()
        view.grab()
        return clock() - before

    bar = view.log.verticalScrollBar()
    at_bottom = min(render_ns() for _ in range(5))
    bar.setValue(0)
    at_top = min(render_ns() for _ in range(5))
    bar.setValue(bar.maximum() // 2)
    middle = min(render_ns() for _ in range(5))
    view.scroll_to_bottom()
    pages: list[int] = []
    for _ in range(100):
        before = clock()
        bar.setValue(bar.value() - bar.pageStep())
        view.log.viewport().repaint()
        pages.append(clock() - before)
    view.scroll_to_bottom()
    viewport = view.log.viewport()
    paints: list[int] = []
    for _ in range(50):
        before = clock()
        viewport.repaint()
        paints.append(clock() - before)
    frames: list[int] = []
    for i in range(100):
        before = clock()
        view.append(render.chat_line(f"user{i % 7}", f"{TEXTS[i % len(TEXTS)]} frame {i}"))
        viewport.repaint()
        frames.append(clock() - before)
    resizes: list[int] = []
    for width in (700, 760, 1200, 760):  # every row's height again at the new width
        before = clock()
        view.resize(width, 560)
        view.grab()
        resizes.append(clock() - before)
    before = clock()
    view.append(render.chat_line("late", "one more message"))
    view.grab()
    one_more = clock() - before

    first = statistics.median(costs[:1000])
    last = statistics.median(costs[-1000:])
    costs.sort()
    print(f"ocm-gui scrollback, {args.lines} lines; Python {platform.python_version()}, "
          f"PySide6 {pyside_version}, {platform.machine()}, offscreen, {args.clock} clock\n")
    print("| what | ms |")
    print("| --- | ---: |")
    print(f"| append, median | {_ms(statistics.median(costs))} |")
    print(f"| append, median of the first 1,000 | {_ms(first)} |")
    print(f"| append, median of the last 1,000 | {_ms(last)} |")
    print(f"| append, p99 | {_ms(costs[int(len(costs) * 0.99) - 1])} |")
    print(f"| append, slowest | {_ms(costs[-1])} |")
    print(f"| all {args.lines} appends (event loop included) | {_ms(total)} |")
    print(f"| render (grab) at the bottom | {_ms(at_bottom)} |")
    print(f"| render after scrolling to the top | {_ms(at_top)} |")
    print(f"| render in the middle | {_ms(middle)} |")
    print(f"| scroll up one page and paint, median of 100 | {_ms(statistics.median(pages))} |")
    print(f"| scroll up one page and paint, slowest of 100 | {_ms(max(pages))} |")
    print(f"| paint the conversation at the bottom, median of 50 | "
          f"{_ms(statistics.median(paints))} |")
    print(f"| append + paint at the bottom, median of 100 | {_ms(statistics.median(frames))} |")
    print(f"| append + paint at the bottom, slowest of 100 | {_ms(max(frames))} |")
    print(f"| resize and render (all rows again), median of 4 | "
          f"{_ms(statistics.median(resizes))} |")
    print(f"| append + render, line {args.lines + 1} | {_ms(one_more)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
