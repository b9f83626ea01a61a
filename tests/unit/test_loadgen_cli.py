"""ocm-loadgen's command line: flags derived from the options dataclasses, one-line usage
errors, the message when the server is not there, and a summary that pipes unwrapped."""

from __future__ import annotations

import errno
import io
from dataclasses import fields

import pytest

from loadgen import cli, options
from loadgen.options import Options, Output
from loadgen.report import PIPED_WIDTH, summary_console


def parse(*argv: str) -> tuple[Options, Output]:
    return options.from_args(cli.build_parser().parse_args(list(argv)))


def test_no_flags_give_the_dataclass_defaults() -> None:
    assert parse() == (Options(), Output())


def test_every_field_is_a_flag() -> None:
    flags = {opt for action in cli.build_parser()._actions for opt in action.option_strings}
    for cls in (Options, Output):
        for f in fields(cls):
            assert options.flag_name(f) in flags, f.name


def test_flags_reach_their_fields() -> None:
    opts, out = parse("--rooms", "3", "--rate", "0.5", "--no-rx-timestamps", "--framing",
                      "ocm1", "--slo-p99-ms", "7", "--server-pid", "42", "--quiet",
                      "--json", "r.json")
    assert (opts.rooms, opts.rate, opts.rx_timestamps, opts.framing) == (3, 0.5, False, "ocm1")
    assert (opts.slo.p99_ms, opts.slo.loss_pct, opts.server_pid) == (7.0, None, 42)
    assert (out.quiet, out.json, out.plot) == (True, "r.json", None)


def test_find_capacity_without_slo_gets_the_default_slo() -> None:
    opts, _ = parse("--find-capacity")
    assert opts.slo.p99_ms == options.CAPACITY_SLO_P99_MS
    assert opts.slo.loss_pct == options.CAPACITY_SLO_LOSS_PCT
    opts, _ = parse("--find-capacity", "--slo-loss-pct", "1")
    assert (opts.slo.p99_ms, opts.slo.loss_pct) == (None, 1.0)


@pytest.mark.parametrize(("argv", "says"), [
    (["--sockets", "nope"], "argument --sockets: invalid choice: 'nope'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--rooms", "0"], "argument --rooms: must be > 0, got 0"),
    (["--rate", "fast"], "argument --rate: must be a finite number, got 'fast'"),
    (["--size", "10"], "argument --size: must be >= 44, got 10"),
    (["--step-factor", "1"], "argument --step-factor: must be > 1, got 1"),
    (["--realtime-priority", "100"], "argument --realtime-priority: must be <= 99, got 100"),
    (["--drain", "-1"], "argument --drain: must be >= 0, got -1"),
])
def test_every_usage_error_is_one_line(argv: list[str], says: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == cli.EXIT_USAGE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"ocm-loadgen: error: {says}")
    assert lines[0].endswith(" (see ocm-loadgen --help)")


def test_refused_connections_say_what_ocm_chat_says() -> None:
    opts = Options(server="127.0.0.1", tcp_port=9)
    message = cli.no_join_message(opts, {f"os:{errno.ECONNREFUSED}": 5})
    assert message == ("cannot reach the server at 127.0.0.1:9 (connection refused); is "
                       "ocm-control running there?")


def test_other_join_failures_are_named() -> None:
    opts = Options(server="10.0.0.1", tcp_port=9000, join_timeout=3)
    assert cli.no_join_message(opts, {f"os:{errno.EHOSTUNREACH}": 2}) == (
        "cannot reach the server at 10.0.0.1:9000 (No route to host)")
    assert cli.no_join_message(opts, {"timeout": 4}) == (
        "the server at 10.0.0.1:9000 did not answer within 3 s (--join-timeout)")
    assert cli.no_join_message(opts, {"ROOM_FULL": 3, "timeout": 1}) == (
        "no member could join the server at 10.0.0.1:9000: 3 ROOM_FULL, 1 timeout")


def test_piped_summary_does_not_wrap() -> None:
    out = io.StringIO()
    console = summary_console(out)
    line = "joins " + "x" * 200
    console.print(line)
    assert console.width == PIPED_WIDTH
    assert out.getvalue() == line + "\n"


def test_help_explains_warm_up_deliveries() -> None:
    text = " ".join(cli.build_parser().format_help().split())
    assert "warm-up deliveries of messages scheduled before the measured window" in text
    assert "stale" not in text
