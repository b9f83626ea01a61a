"""runtime/logs.py: text and JSON line formats, the repeated-warning filter, setup."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import orjson
import pytest

from runtime import logs
from runtime.logs import JsonFormatter, RepeatFilter, TextFormatter, setup_logging

TIME_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def record(msg: str = "worker %d died: %s", args: tuple[object, ...] = (1, "SIGKILL"),
           level: int = logging.WARNING, name: str = "ocm.control",
           **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 10, msg, args, None)
    rec.created = 1_700_000_000.25
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """Restore the root logger's handlers and level after a test that reconfigures it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logs._filter = None


# --- formats -----------------------------------------------------------------------------------
def test_json_line_has_the_fields_and_extras() -> None:
    line = JsonFormatter("worker-3").format(record(event="worker_died", worker=1))
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry == {"time": "2023-11-14T22:13:20.250Z", "level": "WARNING",
                     "logger": "ocm.control", "process": "worker-3",
                     "message": "worker 1 died: SIGKILL", "event": "worker_died", "worker": 1}


def test_json_extras_never_replace_the_standard_fields_and_odd_values_are_text() -> None:
    entry = orjson.loads(JsonFormatter("control").format(
        record(process_extra=object(), where=("127.0.0.1", 9))))
    assert entry["process"] == "control"
    assert entry["process_extra"].startswith("<object object")
    assert entry["where"] == ["127.0.0.1", 9]


def test_json_exception_is_one_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("failed", (), level=logging.ERROR)
        rec.exc_info = sys.exc_info()
    entry = orjson.loads(JsonFormatter("control").format(rec))
    assert entry["message"] == "failed"
    assert entry["exception"].startswith("Traceback") and "ValueError: boom" in entry["exception"]


def test_text_line() -> None:
    line = TextFormatter("control").format(record(worker=1))
    assert line == ("2023-11-14T22:13:20.250Z WARNING control ocm.control: worker 1 died: "
                    "SIGKILL worker=1")


def test_text_keeps_the_ready_line_intact() -> None:
    msg = "ready tcp=127.0.0.1:9000 udp=9001 stage1=9002 workers=2 steering=bpf"
    line = TextFormatter("control").format(record("%s", (msg,), level=logging.INFO))
    assert re.fullmatch(TIME_RE + r" INFO control ocm\.control: " + re.escape(msg), line)


# --- repeated warnings -------------------------------------------------------------------------
def test_repeat_filter_lets_a_burst_through_then_counts() -> None:
    clock = Clock()
    limit = RepeatFilter(burst=3, interval=10.0, clock=clock)
    passed = [limit.filter(r) for r in (record(args=(i, "x")) for i in range(10))]
    assert passed == [True, True, True] + [False] * 7
    clock.now += 10.0
    nxt = record(args=(99, "x"))
    assert limit.filter(nxt)
    assert nxt.suppressed == 7  # type: ignore[attr-defined]


def test_repeat_filter_marks_the_last_line_before_suppressing() -> None:
    limit = RepeatFilter(burst=2, interval=60.0, clock=Clock())
    first, second = record(), record()
    assert limit.filter(first) and limit.filter(second)
    assert not hasattr(first, "suppressing")
    assert second.suppressing == "60s"  # type: ignore[attr-defined]


def test_repeat_filter_keys_by_template_logger_and_level() -> None:
    limit = RepeatFilter(burst=1, interval=60.0, clock=Clock())
    assert limit.filter(record("a %s", ("1",)))
    assert not limit.filter(record("a %s", ("2",)))  # same template, other argument
    assert limit.filter(record("b %s", ("1",)))  # other template
    assert limit.filter(record("a %s", ("1",), name="ocm.relay"))  # other logger
    assert limit.filter(record("a %s", ("1",), level=logging.ERROR))  # other level


def test_repeat_filter_never_limits_info() -> None:
    limit = RepeatFilter(burst=1, interval=60.0, clock=Clock())
    assert all(limit.filter(record("room created", (), level=logging.INFO))
               for _ in range(100))


def test_flush_reports_ended_windows_once() -> None:
    clock = Clock()
    limit = RepeatFilter(burst=1, interval=5.0, clock=clock)
    for _ in range(4):
        limit.filter(record("x %s", ("y",)))
    limit.filter(record("quiet", ()))
    assert limit.flush() == []  # the window has not ended
    clock.now += 5.0
    assert limit.flush() == [("ocm.control", logging.WARNING, "x %s", 3)]
    assert limit.flush() == []
    assert limit.filter(record("x %s", ("y",)))  # a new window


def test_repeat_filter_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "REPEAT_MAX_KEYS", 4)
    limit = RepeatFilter(burst=1, interval=60.0, clock=Clock())
    for i in range(20):
        assert limit.filter(record(f"unique {i}", ()))
        assert len(limit._windows) <= 4


# --- setup -------------------------------------------------------------------------------------
def test_setup_logging_json_and_idempotent(root_logging: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("info", "text", "control", stream=stream)
    setup_logging("debug", "json", "worker-0", stream=stream)
    ours = [h for h in root_logging.handlers if h.get_name() == "ocm"]
    assert len(ours) == 1
    logging.getLogger("ocm.relay").debug("hello %s", "there", extra={"worker": 0})
    entry = orjson.loads(stream.getvalue().strip())
    assert entry["message"] == "hello there" and entry["process"] == "worker-0"
    assert entry["level"] == "DEBUG" and entry["worker"] == 0 and entry["logger"] == "ocm.relay"


def test_setup_logging_level_and_reload(root_logging: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("warning", "text", "control", stream=stream)
    log = logging.getLogger("ocm.test")
    log.info("hidden")
    logs.set_level("info")
    log.info("shown")
    assert "hidden" not in stream.getvalue()
    assert re.search(TIME_RE + r" INFO control ocm\.test: shown$", stream.getvalue().strip())


def test_setup_logging_rejects_unknown_format(root_logging: logging.Logger) -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        setup_logging("info", "xml")


def test_setup_logging_limits_repeats_and_reports_them(root_logging: logging.Logger) -> None:
    stream = io.StringIO()
    repeat = setup_logging("info", "json", "control", stream=stream)
    clock = Clock()
    repeat.clock = clock
    log = logging.getLogger("ocm.test")
    for i in range(logs.REPEAT_BURST + 10):
        log.warning("recvfrom: %s", i)
    clock.now += logs.REPEAT_INTERVAL_S
    assert logs.report_suppressed(log) == 1
    entries = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert len(entries) == logs.REPEAT_BURST + 1
    assert entries[logs.REPEAT_BURST - 1]["suppressing"] == "60s"
    summary = entries[-1]
    assert summary["suppressed"] == 10
    assert summary["message"] == "suppressed 10 repeats of 'recvfrom: %s' (logger ocm.test) " \
                                 "in the last 60s"
    assert logs.report_suppressed(log) == 0


def test_report_suppressed_without_setup(root_logging: logging.Logger) -> None:
    logs._filter = None
    assert logs.report_suppressed(logging.getLogger("ocm.test")) == 0
