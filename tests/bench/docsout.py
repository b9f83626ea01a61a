"""Where ``make bench`` publishes: the tables of docs/performance.md and the full results
beside it in docs/bench/NAME.json.

A harness renders its section in full (every table, every note). What sits between
``FULL_OPEN`` and ``FULL_CLOSE`` (step-by-step tables, per-run notes) goes to the data file
only; the page gets the rest and a link to the data file. The data file holds every table
of the full section (title, columns, rows), the notes and whatever raw results the harness
adds.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import orjson

PAGE: Final = "performance.md"
DATA_DIR: Final = "bench"
FULL_OPEN: Final = "<!-- full -->"
FULL_CLOSE: Final = "<!-- /full -->"
_CELL_SEP = re.compile(r"(?<!\\)\|")


def data_link(name: str) -> str:
    return f"[{DATA_DIR}/{name}.json]({DATA_DIR}/{name}.json)"


def page_text(section: str, name: str) -> str:
    """``section`` without its full-results blocks; a link to the data file in their place
    (once)."""
    out: list[str] = []
    inside = linked = False
    for line in section.splitlines():
        if line.strip() == FULL_OPEN:
            inside = True
            if not linked:
                out.append(f"Every run and step: {data_link(name)}.")
                linked = True
        elif line.strip() == FULL_CLOSE:
            inside = False
        elif not inside:
            out.append(line)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"


def tables(section: str) -> list[dict[str, Any]]:
    """Every markdown table of ``section``: its title (the last heading or paragraph line
    before it), columns and rows."""
    found: list[dict[str, Any]] = []
    title = ""
    lines = section.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].strip()) <= set(
                "|-: "):
            cols = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i].strip()))
                i += 1
            found.append({"title": title, "columns": cols, "rows": rows})
            continue
        if line and not line.startswith("<!--"):
            title = line.lstrip("#").strip()
        i += 1
    return found


def notes(section: str) -> list[str]:
    """The bullet lines inside the full-results blocks."""
    out: list[str] = []
    inside = False
    for line in section.splitlines():
        s = line.strip()
        if s in (FULL_OPEN, FULL_CLOSE):
            inside = s == FULL_OPEN
        elif inside and s.startswith("- "):
            out.append(s[2:])
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in _CELL_SEP.split(line.strip().strip("|"))]


def publish(docs: Path, name: str, sections: list[str], results: dict[str, Any]) -> list[Path]:
    """Write docs/bench/NAME.json (the full sections' tables and notes, plus ``results``)
    and replace the sections in docs/performance.md. Returns the paths written."""
    data_dir = docs / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "sections": [s.splitlines()[0].lstrip("#").strip() for s in sections],
        "tables": [t for s in sections for t in tables(s)],
        "notes": [n for s in sections for n in notes(s)],
        **results,
    }
    data_path = data_dir / f"{name}.json"
    data_path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    page = docs / PAGE
    old = page.read_text() if page.exists() else ""
    page.write_text(replace_sections(old, [page_text(s, name) for s in sections]))
    return [page, data_path]


def replace_sections(text: str, sections: list[str]) -> str:
    """Replace each section of ``text`` whose heading (first line) matches one of
    ``sections``, up to the next ``## `` heading. A missing one goes after the previous
    one of ``sections``, or before the first ``## `` heading.
    Other sections are untouched."""
    for i, section in enumerate(sections):
        text = _replace_one(text, section, sections[i - 1] if i else None)
    return text


def _replace_one(text: str, section: str, after: str | None) -> str:
    lines = text.splitlines()
    body = section.rstrip("\n").splitlines()
    heading = body[0].strip()

    def end_of(start: int) -> int:
        return next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                    len(lines))

    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is not None:
        end = end_of(start)
    else:
        prev = None if after is None else next(
            (i for i, line in enumerate(lines) if line.strip() == after.splitlines()[0]), None)
        if prev is not None:
            start = end = end_of(prev)
        else:
            start = end = next((i for i, line in enumerate(lines) if line.startswith("## ")),
                               len(lines))
        if not lines:
            lines = ["# Performance", ""]
            start = end = 2
    tail = [""] if end < len(lines) else []
    if start > 0 and lines[start - 1].strip():
        body = ["", *body]
    new = lines[:start] + body + tail + lines[end:]
    return "\n".join(new).rstrip("\n") + "\n"
