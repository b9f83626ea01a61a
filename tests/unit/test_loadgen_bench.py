"""make bench rewrites only its own section of docs/benchmarks.md."""

from __future__ import annotations

from loadgen.bench import SECTION, replace_section

MINE = f"{SECTION}\n\nnew figures\n"


def test_appends_to_an_empty_or_missing_file() -> None:
    assert replace_section("", MINE) == f"# Benchmarks\n\n{MINE}"


def test_keeps_other_sections_before_and_after() -> None:
    old = ("# Benchmarks\n\nintro\n\n## Wire codecs\n\ntheirs\n\n"
           f"{SECTION}\n\nold figures\n\n### sub\n\nold\n\n## Later\n\nkept\n")
    new = replace_section(old, MINE)
    assert new == ("# Benchmarks\n\nintro\n\n## Wire codecs\n\ntheirs\n\n"
                   f"{SECTION}\n\nnew figures\n\n## Later\n\nkept\n")
    assert replace_section(new, MINE) == new  # idempotent


def test_appends_after_theirs_when_absent() -> None:
    old = "# Benchmarks\n\n## Wire codecs\n\ntheirs\n"
    assert replace_section(old, MINE) == f"{old}\n{MINE}"
