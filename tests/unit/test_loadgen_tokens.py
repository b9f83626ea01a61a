"""``ocm-loadgen --tokens-out``: the members file cload reads with
``fscanf("%d\\t%d\\t%299s\\t%299s\\t%63s\\t%d")``, and its usage errors."""

from __future__ import annotations

import pytest

from loadgen import cli
from loadgen.tokens import MemberToken, UnprintableField, decode_file, encode_file, encode_line

TOKEN = b"AGiWj9P7_PZkgqrExjv8wq26myZtQaHoX"


def test_a_line_is_six_tab_separated_fields() -> None:
    line = encode_line(MemberToken(3, 0, b"lg01-3", TOKEN, "127.0.0.1", 43331))
    assert line == f"3\t0\tlg01-3\t{TOKEN.decode()}\t127.0.0.1\t43331\n"


def test_the_file_is_sorted_by_room_and_slot_and_reads_back() -> None:
    members = [MemberToken(r, s, b"r%d" % r, TOKEN + b"%d%d" % (r, s), "127.0.0.1", 9)
               for r in (1, 0) for s in (2, 0, 1)]
    text = encode_file(members)
    assert [line.split("\t")[:2] for line in text.splitlines()] == [
        ["0", "0"], ["0", "1"], ["0", "2"], ["1", "0"], ["1", "1"], ["1", "2"]]
    assert decode_file(text) == sorted(members)


@pytest.mark.parametrize(("name", "token"), [
    (b"room one", TOKEN),  # a space would end cload's %s early
    (b"room", TOKEN[:5] + b"\t" + TOKEN[5:]),
    ("部屋".encode(), TOKEN),  # not ASCII
    (b"r", b"x" * 300),  # over cload's %299s
    (b"", TOKEN),
])
def test_fields_cload_would_misread_are_refused(name: bytes, token: bytes) -> None:
    with pytest.raises(UnprintableField, match="printable ASCII without whitespace"):
        encode_line(MemberToken(0, 0, name, token, "127.0.0.1", 9))


def test_tokens_out_refuses_shared_sockets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--tokens-out", "t.txt", "--sockets", "shared"])
    assert exited.value.code == cli.EXIT_USAGE
    assert "--tokens-out needs --sockets member" in capsys.readouterr().err


def test_join_only_runs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--join-only", "--find-capacity"])
    assert "drop --find-capacity" in capsys.readouterr().err


def test_help_says_the_members_stay() -> None:
    text = " ".join(cli.build_parser().format_help().split())
    assert "the loadgen need not stay" in text
    assert "room slot room_name token udp_host udp_port" in text


def test_a_member_with_a_datagram_key_has_a_seventh_field() -> None:
    keyed = MemberToken(0, 1, b"r", b"T" * 22, "127.0.0.1", 9001, bytes(range(32)))
    line = encode_line(keyed)
    assert line.rstrip("\n").split("\t")[6] == bytes(range(32)).hex()
    assert decode_file(encode_file([keyed])) == [keyed]
