"""control/config.py: defaults < TOML file < OCM_* env < flags, validation, errors that
name the file and line, --print-config, and the docs table kept in sync."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from control import __main__ as entry
from control import config as cm
from control.config import LIVE_FIELDS, Config, ConfigError, load, load_with_sources
from relay.ipc import WorkerSettings
from runtime import settings

ROOT = Path(__file__).resolve().parents[2]
NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "ocm.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- defaults and the field set ----------------------------------------------------------------
def test_defaults() -> None:
    cfg, _ = load([], NO_ENV)
    assert cfg == Config()
    assert (cfg.host, cfg.tcp_port, cfg.udp_port, cfg.stage1_port) == ("0.0.0.0", 9000,
                                                                      9001, 9002)
    assert (cfg.inactivity_timeout, cfg.tcp_timeout, cfg.max_payload) == (300.0, 10.0, 4096)
    assert (cfg.max_members, cfg.max_send_failures, cfg.drain_timeout) == (1000, 3, 10.0)
    assert (cfg.admin_host, cfg.admin_port) == ("127.0.0.1", 9100)
    assert (cfg.log_level, cfg.log_format) == ("info", "text")
    assert 1 <= cfg.workers <= cm.MAX_WORKERS
    assert cfg.workers == cm.default_workers()


def test_hardening_fields_defaults_types_and_live() -> None:
    expected = {
        "max_conns_per_ip": (int, 256),
        "conn_rate_per_ip": (float, 5000.0),
        "max_password_failures": (int, 5),
        "password_failure_window": (float, 60.0),
        "max_rooms_per_ip": (int, 2000),
        "chat_rate": (float, 10.0),
        "chat_burst": (int, 20),
    }
    cfg = Config()
    for name, (kind, default) in expected.items():
        value = getattr(cfg, name)
        assert type(value) is kind and value == default, name
        assert name in LIVE_FIELDS, name


def test_live_fields_are_exactly_the_reloadable_ones() -> None:
    assert LIVE_FIELDS == {
        "inactivity_timeout", "tcp_timeout", "max_payload", "max_members",
        "max_send_failures", "log_level", "max_conns_per_ip", "conn_rate_per_ip",
        "max_password_failures", "password_failure_window", "max_rooms_per_ip",
        "kdf_rate_per_ip", "kdf_concurrency_per_ip", "kdf_queue",
        "chat_rate", "chat_burst", "relay_sendmmsg", "log_summary_interval",
        "tls_handshake_timeout", "max_tls_handshakes", "max_tls_handshakes_per_ip",
    }


def test_every_field_has_help() -> None:
    for f in dataclasses.fields(Config):
        assert settings.meta(f).help, f.name
        assert isinstance(settings.meta(f).live, bool), f.name


def test_worker_settings_and_the_reload_command() -> None:
    cfg = dataclasses.replace(Config(), chat_rate=2.5, chat_burst=7, log_format="json",
                              inactivity_timeout=4.0, max_send_failures=9, log_level="debug")
    assert cfg.worker_settings() == WorkerSettings(
        inactivity_timeout=4.0, max_send_failures=9, chat_rate=2.5, chat_burst=7,
        max_stage1_clients=10_000, log_level="debug", log_format="json",
        realtime_priority=0, sendmmsg=True)
    # What a worker applies on SIGHUP (Worker.configure) can change live; the rest of
    # WorkerSettings needs a restart, like the Config fields it comes from.
    applied_live = {"inactivity_timeout", "max_send_failures", "chat_rate", "chat_burst",
                    "log_level", "relay_sendmmsg"}
    assert applied_live <= LIVE_FIELDS
    assert not {"max_stage1_clients", "log_format", "realtime_priority"} & LIVE_FIELDS


def test_relay_sendmmsg_through_every_layer(tmp_path: Path) -> None:
    assert Config().worker_settings().sendmmsg is True
    assert load([], {"OCM_RELAY_SENDMMSG": "0"})[0].worker_settings().sendmmsg is False
    assert load(["--no-relay-sendmmsg"], NO_ENV)[0].relay_sendmmsg is False
    path = write(tmp_path, "relay_sendmmsg = false\n")
    assert load(["--config", path], NO_ENV)[0].relay_sendmmsg is False
    assert load(["--config", path], {"OCM_RELAY_SENDMMSG": "1"})[0].relay_sendmmsg is True
    with pytest.raises(ConfigError, match="relay_sendmmsg must be true or false"):
        load([], {"OCM_RELAY_SENDMMSG": "maybe"})


# --- precedence ----------------------------------------------------------------------------------
def test_each_layer_alone(tmp_path: Path) -> None:
    path = write(tmp_path, "inactivity_timeout = 30\n")
    assert load(["--config", path], NO_ENV)[0].inactivity_timeout == 30.0
    assert load([], {"OCM_INACTIVITY_TIMEOUT": "40"})[0].inactivity_timeout == 40.0
    assert load(["--inactivity-timeout", "50"], NO_ENV)[0].inactivity_timeout == 50.0


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, "tcp_port = 1001\nudp_port = 1002\nstage1_port = 1003\n"
                           "max_members = 10\n")
    env = {"OCM_UDP_PORT": "2002", "OCM_STAGE1_PORT": "2003"}
    cfg, _, sources = load_with_sources(["--config", path, "--stage1-port", "3003"], env)
    assert (cfg.tcp_port, cfg.udp_port, cfg.stage1_port) == (1001, 2002, 3003)
    assert cfg.max_members == 10 and cfg.workers == Config().workers
    assert sources["tcp_port"] == f"{path} line 1"
    assert sources["max_members"] == f"{path} line 4"
    assert sources["udp_port"] == "environment OCM_UDP_PORT"
    assert sources["stage1_port"] == "--stage1-port"
    assert sources["workers"] == "default"


def test_a_flag_given_with_the_default_value_still_wins(tmp_path: Path) -> None:
    # The sentinel idea: "given" is what counts, not "different from the default".
    path = write(tmp_path, "max_members = 10\n")
    cfg, _ = load(["--config", path, "--max-members", "1000"], {"OCM_MAX_MEMBERS": "20"})
    assert cfg.max_members == 1000


def test_config_path_from_env_and_flag_precedence(tmp_path: Path) -> None:
    env_file = write(tmp_path, "max_members = 11\n", "env.toml")
    flag_file = write(tmp_path, "max_members = 12\n", "flag.toml")
    assert load([], {"OCM_CONFIG": env_file})[0].max_members == 11
    assert load(["--config", flag_file], {"OCM_CONFIG": env_file})[0].max_members == 12


def test_ocm_table_and_dashed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "# comment\n[ocm]\nmax-members = 12\nlog_level = 'DEBUG'\n")
    cfg, _, sources = load_with_sources(["--config", path], NO_ENV)
    assert (cfg.max_members, cfg.log_level) == (12, "debug")
    assert sources["max_members"] == f"{path} line 3"


def test_booleans_from_every_layer(tmp_path: Path) -> None:
    assert load(["--port-per-shard"], NO_ENV)[0].port_per_shard is True
    assert load(["--no-port-per-shard"], {"OCM_PORT_PER_SHARD": "1"})[0].port_per_shard is False
    for text, value in (("yes", True), ("on", True), ("TRUE", True), ("0", False),
                        ("off", False), ("", False)):
        assert load([], {"OCM_PORT_PER_SHARD": text})[0].port_per_shard is value, text
    path = write(tmp_path, "port_per_shard = true\n")
    assert load(["--config", path], NO_ENV)[0].port_per_shard is True
    with pytest.raises(ConfigError, match="OCM_PORT_PER_SHARD: port_per_shard must be true"):
        load([], {"OCM_PORT_PER_SHARD": "maybe"})


def test_numbers_are_converted_strictly(tmp_path: Path) -> None:
    assert load(["--config", write(tmp_path, "workers = 2.0\n")], NO_ENV)[0].workers == 2
    with pytest.raises(ConfigError, match=r"line 1: workers must be an integer, got 2\.5"):
        load(["--config", write(tmp_path, "workers = 2.5\n")], NO_ENV)
    with pytest.raises(ConfigError, match="OCM_WORKERS: workers must be an integer"):
        load([], {"OCM_WORKERS": "two"})
    with pytest.raises(ConfigError, match="--max-members: max_members must be an integer"):
        load(["--max-members", "1e3"], NO_ENV)
    for bad in ("nan", "inf", "-inf", "x"):
        with pytest.raises(ConfigError, match="inactivity_timeout must be a finite number"):
            load([], {"OCM_INACTIVITY_TIMEOUT": bad})
    with pytest.raises(ConfigError, match="must be an integer, got True"):
        load(["--config", write(tmp_path, "workers = true\n")], NO_ENV)
    with pytest.raises(ConfigError, match="host must be a string"):
        load(["--config", write(tmp_path, "host = [1, 2]\n")], NO_ENV)
    assert load([], {"OCM_CHAT_RATE": " 2.5 "})[0].chat_rate == 2.5


# --- file errors name the file and the line ----------------------------------------------------
def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 2\n\ninactivity_timeout = = 3\n")
    with pytest.raises(ConfigError) as info:
        load(["--config", path], NO_ENV)
    assert str(info.value).startswith(f"{path} line 3: ")
    assert "column" in str(info.value)


def test_unknown_key_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 2\n  inactivity_timout = 3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)} line 2: unknown setting "
                                          r"'inactivity_timout'$"):
        load(["--config", path], NO_ENV)


def test_bad_value_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[ocm]\nworkers = 2\nsteering = 'sideways'\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)} line 3: steering must be one "
                                          r"of auto, bpf, forward, got 'sideways'$"):
        load(["--config", path], NO_ENV)
    path = write(tmp_path, "workers = 0\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)} line 1: workers must be "
                                          r"1\.\.32, got 0$"):
        load(["--config", path], NO_ENV)


def test_settings_beside_an_ocm_table_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 2\n[ocm]\nmax_members = 3\n")
    with pytest.raises(ConfigError, match=r"line 1: unknown setting 'workers' \(put every"):
        load(["--config", path], NO_ENV)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file or directory"):
        load(["--config", str(tmp_path / "absent.toml")], NO_ENV)
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"host = '\xe9'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(["--config", str(path)], NO_ENV)


# --- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", cm._POSITIVE)
def test_positive_settings(name: str) -> None:
    env = {cm.env_name(name): "0"}
    if name == "ping_timeout":
        env["OCM_PING_INTERVAL"] = "0.5"
    with pytest.raises(ConfigError, match=rf"^environment {cm.env_name(name)}: {name} must "
                                          r"be > 0, got 0"):
        load([], env)


@pytest.mark.parametrize(("argv", "message"), [
    (["--tcp-port", "65536"], "--tcp-port: tcp_port must be 0..65535, got 65536"),
    (["--udp-port", "-1"], "--udp-port: udp_port must be 0..65535, got -1"),
    (["--stage1-port", "70000"], "--stage1-port: stage1_port must be 0..65535"),
    (["--admin-port", "-2"], "--admin-port: admin_port must be -1 (disabled) or 0..65535"),
    (["--admin-port", "9000"], "--admin-port: admin_port and tcp_port are both TCP port 9000"),
    (["--workers", "33"], "--workers: workers must be 1..32, got 33"),
    (["--max-payload", "0"], "--max-payload: max_payload must be 1..1048576 bytes"),
    (["--ping-timeout", "1"], "--ping-timeout: ping_timeout (1.0) must be longer than "
                              "ping_interval (1.0)"),
    (["--admin-host", ""], "--admin-host: admin_host must not be empty"),
])
def test_out_of_range(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(argv, NO_ENV)
    assert str(info.value).startswith(message)


def test_admin_port_minus_one_and_zero_are_valid() -> None:
    assert load(["--admin-port", "-1"], NO_ENV)[0].admin_port == -1
    assert load(["--admin-port", "0", "--tcp-port", "0"], NO_ENV)[0].admin_port == 0


def test_choices_from_env_and_file_are_case_insensitive(tmp_path: Path) -> None:
    assert load([], {"OCM_LOG_FORMAT": "JSON"})[0].log_format == "json"
    with pytest.raises(ConfigError, match="log_format must be one of text, json"):
        load([], {"OCM_LOG_FORMAT": "xml"})


def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--no-such-flag"], ["--workers"]):
        with pytest.raises(SystemExit) as info:
            load(argv, NO_ENV)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("ocm-control: error: ") and err.count("\n") == 1, err
        assert err.endswith(" (see ocm-control --help)\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["--log-format", "xml"],
     "--log-format: log_format must be one of text, json, got 'xml'"),
    (["--steering", "magic"],
     "--steering: steering must be one of auto, bpf, forward, got 'magic'"),
    (["--workers", "0"], "--workers: workers must be 1..32, got 0"),
])
def test_bad_values_are_one_line_exit_78_whatever_the_kind(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad choice and a value out of range look alike: one line, exit 78."""
    assert entry.main(argv) == 78
    assert capsys.readouterr().err == f"ocm-control: configuration error: {message}\n"


def test_workers_help_shows_one_default() -> None:
    text = " ".join(cm.build_parser().format_help().split())
    assert ("--workers WORKERS relay worker processes [restart; default: the CPUs this "
            f"process may use, at most 32 (here {cm.default_workers()})]") in text
    start = text.index("--workers WORKERS relay")
    workers_help = text[start:text.index("--inactivity-timeout", start)]
    assert workers_help.count("default") == 1


def test_validate_without_sources_names_only_the_setting() -> None:
    with pytest.raises(ConfigError, match="^workers must be 1..32, got 0$"):
        cm.validate(dataclasses.replace(Config(), workers=0))


# --- --print-config ----------------------------------------------------------------------------
def test_print_config_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, "max_members = 10\nhost = 'a\"b\\\\c'\n")
    cfg, _, sources = load_with_sources(["--config", path, "--port-per-shard",
                                         "--chat-rate", "2.5"], {"OCM_WORKERS": "3"})
    text = cm.to_toml(cfg, sources)
    assert "max_members = 10  # from " + path + " line 1" in text
    assert "workers = 3  # from environment OCM_WORKERS" in text
    assert "chat_rate = 2.5  # from --chat-rate" in text
    assert "# seconds of silence before a member is removed [live]" in text
    again = write(tmp_path, text, "printed.toml")
    assert load(["--config", again], NO_ENV)[0] == cfg
    assert dataclasses.replace(Config(), **cm.read_toml(again)) == cfg


def test_main_print_config(capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCM_MAX_MEMBERS", "77")
    assert entry.main(["--print-config", "--tcp-port", "0"]) == 0
    out = capsys.readouterr().out
    assert "max_members = 77  # from environment OCM_MAX_MEMBERS" in out
    assert "tcp_port = 0  # from --tcp-port" in out


def test_main_exits_78_on_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    path = write(tmp_path, "workers = 2\nmax_members = [\n")
    assert entry.main(["--config", path]) == entry.EXIT_CONFIG == 78
    err = capsys.readouterr().err
    assert err.startswith(f"ocm-control: configuration error: {path} line ")


# --- shipped files and docs stay in sync --------------------------------------------------------
def test_deploy_example_config_loads() -> None:
    path = ROOT / "deploy" / "ocm.toml"
    values = cm.read_toml(str(path))
    assert values["tcp_port"] == 9000 and values["admin_port"] == 9100
    assert values["drain_timeout"] < 20  # the supervisors' stop timeouts in deploy/


def _doc_rows() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"`[a-z0-9_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def test_operations_doc_lists_every_setting() -> None:
    rows = _doc_rows()
    defaults = Config()
    for f in dataclasses.fields(Config):
        assert f.name in rows, f"docs/operations.md has no row for {f.name}"
        _, default, env, live, _meaning = rows[f.name][:5]
        assert env == f"`{cm.env_name(f.name)}`", f.name
        assert live == ("yes" if f.name in LIVE_FIELDS else "no"), f.name
        if f.name != "workers":  # machine-dependent
            value = getattr(defaults, f.name)
            shown = cm._toml_value(value).strip('"')
            assert default.strip("`") == shown, (f.name, default, shown)
    assert set(rows) <= {f.name for f in dataclasses.fields(Config)}


def test_realtime_priority_range_and_worker_setting() -> None:
    assert Config().realtime_priority == 0
    cfg = load(["--realtime-priority", "99"], NO_ENV)[0]
    assert cfg.worker_settings().realtime_priority == 99
    assert load([], {"OCM_REALTIME_PRIORITY": "1"})[0].realtime_priority == 1
    for bad in ("-1", "100"):
        with pytest.raises(ConfigError, match=r"--realtime-priority: realtime_priority must "
                                              r"be 0 \(normal scheduling\) or 1\.\.99"):
            load(["--realtime-priority", bad], NO_ENV)
