"""The interactive client must not lose its last lines when the chat ends.

``patch_stdout`` hands text written while a prompt is up to the event loop from its
writer thread (``call_soon_threadsafe``, then a ``run_in_terminal`` task). If the loop
closes before that task runs, the line is gone: this is how the "why the chat ended"
explanation once went missing in CI."""
from __future__ import annotations

import asyncio

from prompt_toolkit.application import run_in_terminal

from client import ui


def _run(settle: bool) -> list[str]:
    written: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # what the writer thread does with text queued just before the prompt exited
        loop.call_soon_threadsafe(lambda: run_in_terminal(lambda: written.append("line")))
        if settle:
            await ui._settle_output()

    asyncio.run(main())
    return written


def test_a_handed_off_line_is_written_before_the_loop_closes() -> None:
    assert _run(settle=True) == ["line"]


def test_without_settling_the_line_is_lost() -> None:
    """Pins the failure mode the settling exists for (if asyncio ever stops dropping
    such tasks, this fails and the helper can go)."""
    assert _run(settle=False) == []
