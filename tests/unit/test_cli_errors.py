"""One error style for the three command lines: a usage error (bad choice, unknown flag,
value out of range, missing value) is one line ``PROG: error: ... (see PROG --help)`` and
exit code 2, never the usage block. ``ocm-control`` reports bad setting values, from a
flag, the environment or the file alike, as one ``configuration error`` line and 78."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from client.__main__ import main as chat_main
from control.__main__ import main as control_main
from loadgen.cli import main as loadgen_main

Main = Callable[[Sequence[str]], int]
CASES: list[tuple[str, Main, list[str], str]] = [
    ("ocm-chat", chat_main, ["--bogus"], "unrecognized arguments: --bogus"),
    ("ocm-chat", chat_main, ["--tcp-port", "70000"],
     "argument --tcp-port: port out of range 1..65535: 70000"),
    ("ocm-chat", chat_main, ["--timeout"], "argument --timeout: expected one argument"),
    ("ocm-loadgen", loadgen_main, ["--framing", "x"],
     "argument --framing: invalid choice: 'x' (choose from 'plain', 'ocm1', 'ocm1r')"),
    ("ocm-loadgen", loadgen_main, ["--rooms", "0"], "argument --rooms: must be > 0, got 0"),
    ("ocm-loadgen", loadgen_main, ["--bogus"], "unrecognized arguments: --bogus"),
    ("ocm-loadgen", loadgen_main, ["--step-factor", "1"],
     "argument --step-factor: must be > 1, got 1"),
    ("ocm-loadgen", loadgen_main, ["--seed", "3"], "--seed needs --loss"),
    ("ocm-control", control_main, ["--bogus"], "unrecognized arguments: --bogus"),
    ("ocm-control", control_main, ["--workers"], "argument --workers: expected one argument"),
]


@pytest.mark.parametrize(("prog", "main", "argv", "message"), CASES,
                         ids=[f"{c[0]} {' '.join(c[2])}" for c in CASES])
def test_usage_errors_are_one_line_and_exit_2(prog: str, main: Main, argv: list[str],
                                              message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == f"{prog}: error: {message} (see {prog} --help)\n"
    assert captured.out == ""


@pytest.mark.parametrize(("argv", "message"), [
    (["--log-level", "loud"],
     "--log-level: log_level must be one of debug, info, warning, error, got 'loud'"),
    (["--tcp-port", "70000"], "--tcp-port: tcp_port must be 0..65535, got 70000"),
])
def test_control_bad_values_are_one_line_and_exit_78(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert control_main(argv) == 78
    assert capsys.readouterr().err == f"ocm-control: configuration error: {message}\n"


@pytest.mark.parametrize("main", [chat_main, loadgen_main, control_main])
def test_help_still_shows_the_usage(main: Main, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")
