"""Log lines as text or JSON, each carrying the scan, request, job, source and member it is about.

The ids live in context variables: `log_context(scan_id=..., source=...)` sets
them for a block, and a filter on the one root handler that `configure`
installs stamps them on every record logged inside it. asyncio tasks and
Starlette's threadpool copy the context; a thread started by hand (a
scheduler's worker) starts empty, so a job enters its own `log_context`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

from quotad.config import LoggingSettings

# Context fields in the order the text format shows them, with their short text labels.
FIELDS = {
    "request_id": "request",
    "scan_id": "scan",
    "job": "job",
    "source": "source",
    "member": "member",
}

# The mapping is never changed in place, only replaced, so a shared default is safe.
_context: ContextVar[Mapping[str, str]] = ContextVar(
    "quotad_log_context",
    default={},  # noqa: B039 - see above
)

# What every LogRecord has of its own; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
        "message",
        "asctime",
        "taskName",
        # uvicorn's copy of its message with terminal colours.
        "color_message",
        *FIELDS,
    }
)


CHATTY = ("apscheduler", "alembic.runtime.migration")


@contextmanager
def log_context(
    *,
    scan_id: object = None,
    request_id: object = None,
    job: object = None,
    source: object = None,
    member: object = None,
) -> Iterator[None]:
    """Every line logged inside the block, in this thread or task, carries the given fields."""
    given = {
        "scan_id": scan_id,
        "request_id": request_id,
        "job": job,
        "source": source,
        "member": member,
    }
    token = _context.set(
        {**_context.get(), **{k: str(v) for k, v in given.items() if v is not None}}
    )
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Stamps the current context fields on each record; a field already set wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


def _time(record: logging.LogRecord) -> str:
    # RFC 3339 in UTC with a Z, to the millisecond, like every time quotad prints.
    at = dt.datetime.fromtimestamp(int(record.created), dt.UTC)
    return f"{at:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """`2026-11-30T15:04:05.123Z INFO quotad.scanning [scan=… source=…] message`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{label}={value}"
            for key, label in FIELDS.items()
            if (value := getattr(record, key, None)) is not None
        )
        line = f"{_time(record)} {record.levelname} {record.name} "
        line += f"[{fields}] " if fields else ""
        line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info).rstrip("\n")
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields go in as they are, or as str() if they cannot."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = str(value)
        if record.exc_info:
            doc["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.stack_info:
            doc["stack"] = record.stack_info
        extras = {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}
        # The fields above come first and cannot be overwritten by an extra.
        doc.update({k: v for k, v in extras.items() if k not in doc})
        try:
            return json.dumps(doc, allow_nan=False, default=str)
        except (TypeError, ValueError):
            # An extra json cannot write even with str() inside (NaN, a tuple key):
            # that one alone becomes its str(), the line is still written.
            return json.dumps({k: _jsonable(v) for k, v in doc.items()}, default=str)


def _jsonable(value: object) -> object:
    try:
        json.dumps(value, allow_nan=False, default=str)
    except (TypeError, ValueError):
        return str(value)
    return value


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at the time, so a replaced stderr is followed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_MARK = "_quotad_handler"


def configure(
    settings: LoggingSettings, *, verbose: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Install quotad's one root handler, replacing the one an earlier call installed.

    VERBOSE logs at DEBUG whatever the level; STREAM defaults to the current
    sys.stderr. Handlers others installed (pytest's) are left alone.
    """
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    level = logging.DEBUG if verbose else logging.getLevelNamesMapping()[settings.level]
    root.setLevel(level)
    # Libraries that narrate every step at INFO (APScheduler twice per job
    # run, Alembic on each readiness check) say what matters at WARNING;
    # quotad's own lines tell the story. -v hears them again.
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else max(level, logging.WARNING))
    return handler


def command_settings(settings: LoggingSettings, *, verbose: bool) -> LoggingSettings:
    """The settings a one-shot command logs with: WARNING and worse unless -v.

    A command's outcome is its output; cron mails whatever it writes to
    stderr. `-v` logs at the configured level, INFO at least.
    """
    configured = logging.getLevelNamesMapping()[settings.level]
    level = min(configured, logging.INFO) if verbose else max(configured, logging.WARNING)
    return LoggingSettings(format=settings.format, level=logging.getLevelName(level))


def uvicorn_options() -> dict[str, Any]:
    """What `uvicorn.run` needs to log through the handler `configure` installed.

    No config of its own (its loggers propagate to the root), its level from
    the root, and no access log: `api.requestid` writes one per request that
    carries the request id, which uvicorn's, logged outside the app, cannot.
    """
    return {"log_config": None, "log_level": None, "access_log": False}
