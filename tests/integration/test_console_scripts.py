"""Every console script works without the optional extras, or says in one line which extra
to install (pyproject.toml: ``client``, ``loadgen``). The extras are blocked with
``sys.modules[name] = None`` in a fresh interpreter, as if they had never been installed.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

TIMEOUT_S = 60


def run_blocked(blocked: list[str], entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``entry``'s ``main`` in a fresh interpreter where importing ``blocked`` fails."""
    code = ("import sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None\n"
            f"from {entry} import main\n"
            "sys.exit(main())")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=TIMEOUT_S)


@pytest.mark.parametrize("module", ["numpy", "hdrh", "rich"])
def test_loadgen_without_its_extra_says_which_to_install(module: str) -> None:
    done = run_blocked([module], "loadgen.__main__", "--tcp-port", "9", "--quiet")
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines() == [
        f"ocm-loadgen: {module} is missing: install the loadgen extra, "
        "pip install 'ocm[loadgen]'"]


def test_loadgen_plot_without_matplotlib_is_a_usage_error() -> None:
    done = run_blocked(["matplotlib"], "loadgen.__main__", "--tcp-port", "9", "--quiet",
                       "--plot", "out.png")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert "pip install 'ocm[loadgen]'" in done.stderr


EXTRAS = ["numpy", "hdrh", "rich", "matplotlib", "prompt_toolkit"]


@pytest.mark.parametrize("entry", ["control.__main__", "client.__main__"])
def test_control_and_chat_need_no_extra(entry: str) -> None:
    done = run_blocked(EXTRAS, entry, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_chat_in_a_terminal_without_prompt_toolkit_says_which_extra() -> None:
    pexpect = pytest.importorskip("pexpect")
    code = ("import sys; sys.modules['prompt_toolkit'] = None\n"
            "from client.__main__ import main\n"
            "sys.exit(main())")
    child = pexpect.spawn(sys.executable, ["-c", code, "--tcp-port", "9", "--create", "r",
                                           "--user", "u"], timeout=TIMEOUT_S,
                          encoding="utf-8")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 2, child.before
    lines = [line for line in child.before.splitlines() if line.strip()]
    assert lines == ["ocm-chat: the terminal UI needs prompt_toolkit, from the client extra: "
                     "pip install 'ocm[client]' (script mode works without it)"]
