"""Logging for ``ocm-control`` and its relay workers: one format, one line per event.

``setup_logging(level, fmt, process_name)`` configures the root logger of the calling
process (control or a worker) to write to stderr either as text::

    2026-01-02T03:04:05.678Z INFO control ocm.control: ready tcp=... key=value

or as JSON lines (``fmt="json"``), one object per line, built with orjson::

    {"time": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "ocm.control",
     "process": "control", "message": "ready tcp=...", "key": "value"}

Fields passed with ``extra={...}`` are appended (text: ``key=value``; JSON: keys).
Repeated warnings are rate-limited by ``RepeatFilter`` (N identical messages per interval,
then one line saying how many were suppressed), so a flood of one fault cannot flood the
log. Nothing on the datagram hot path logs at INFO or above.

This module depends on the standard library and orjson only — nothing else from
``control`` — so that a relay worker can call ``setup_logging`` too.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Final

import orjson

FORMATS: Final = ("text", "json")
REPEAT_BURST: Final = 5
"""Identical warnings let through per interval before suppressing."""
REPEAT_INTERVAL_S: Final = 60.0
ALWAYS: Final = "_ocm_always"
"""``extra={ALWAYS: True}`` exempts a record from repeat suppression: for the lines an
operator must see every time (the latest reload failed, a worker cannot be respawned)."""
REPEAT_MAX_KEYS: Final = 1024
"""Bound of the filter's table (one entry per message template: ~200 bytes each)."""

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS: Final = frozenset(logging.LogRecord(
    "x", logging.INFO, "x", 0, "x", None, None).__dict__) | {"message", "asctime"}
_HANDLER_NAME: Final = "ocm"


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items()
            if k not in _STANDARD_ATTRS and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``TIME LEVEL PROCESS LOGGER: MESSAGE key=value...`` (then the traceback, if any)."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{_timestamp(record.created)} {record.levelname} {self.process_name} "
                f"{record.name}: {record.getMessage()}")
        extras = _extras(record)
        if extras:
            line += "".join(f" {k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, extra fields,
    and ``exception`` (the formatted traceback) when there is one."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "process": self.process_name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 1
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Let through ``burst`` identical messages per ``interval`` seconds, then drop them.

    "Identical" means the same logger, level and message template (``record.msg`` before
    its ``%`` arguments), so "recvfrom: %s" floods are caught whatever the address. Only
    records at ``level`` or above are limited: lifecycle lines (INFO) always pass. The
    last record let through carries ``suppressing=<interval>``; the first one of the next
    window carries ``suppressed=<count>``; and ``flush(now)`` returns the templates whose
    window ended with suppressed records (control logs one summary line for each).
    """

    def __init__(self, burst: int = REPEAT_BURST, interval: float = REPEAT_INTERVAL_S,
                 level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.level = level
        self.clock = clock
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno < self.level or getattr(record, "_ocm_summary", False)
                or getattr(record, ALWAYS, False)):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window.start >= self.interval:
                if window is None and len(self._windows) >= REPEAT_MAX_KEYS:
                    self._expire(now)
                    if len(self._windows) >= REPEAT_MAX_KEYS:
                        self._windows.clear()
                self._windows[key] = _Window(now)
                if window is not None and window.suppressed:
                    record.suppressed = window.suppressed
                return True
            window.count += 1
            if window.count < self.burst:
                return True
            if window.count == self.burst:
                record.suppressing = f"{self.interval:g}s"
                return True
            window.suppressed += 1
            return False

    def _expire(self, now: float) -> list[tuple[str, int, str, int]]:
        done = []
        for key, window in list(self._windows.items()):
            if now - window.start >= self.interval:
                del self._windows[key]
                if window.suppressed:
                    done.append((*key, window.suppressed))
        return done

    def flush(self, now: float | None = None) -> list[tuple[str, int, str, int]]:
        """Forget windows that have ended; return ``(logger, level, template, suppressed)``
        for each that suppressed something (not yet reported by a later record)."""
        with self._lock:
            return self._expire(self.clock() if now is None else now)


_filter: RepeatFilter | None = None


def setup_logging(level: str = "info", fmt: str = "text", process_name: str = "control",
                  stream: IO[str] | None = None) -> RepeatFilter:
    """Send every log record of this process to ``stream`` (stderr) in format ``fmt``
    (``"text"`` or ``"json"``), at ``level`` and above, through a ``RepeatFilter``.

    Idempotent: a second call replaces the handler it installed. Returns the filter, whose
    ``flush()`` a periodic task may call to report suppressed repeats.
    Raises ``ValueError`` for an unknown format or level.
    """
    global _filter
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    formatter: logging.Formatter = (JsonFormatter(process_name) if fmt == "json"
                                    else TextFormatter(process_name))
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    repeat = RepeatFilter()
    handler.addFilter(repeat)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    _filter = repeat
    return repeat


def set_level(level: str) -> None:
    """Change the level of this process's logging (SIGHUP reload)."""
    logging.getLogger().setLevel(level.upper())


def report_suppressed(logger: logging.Logger, now: float | None = None) -> int:
    """Log one line per message template whose repeats were suppressed in a window that
    has now ended; return how many lines were logged."""
    if _filter is None:
        return 0
    done = _filter.flush(now)
    for name, level, template, count in done:
        logger.log(level, "suppressed %d repeats of %r (logger %s) in the last %gs", count,
                   template, name, _filter.interval,
                   extra={"_ocm_summary": True, "suppressed": count})
    return len(done)
