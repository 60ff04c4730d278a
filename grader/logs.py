"""Log lines for operators: one JSON object per line in production (for a log pipeline to
index), readable `key=value` text in development. Structured events (a submission's state
changes) carry their fields as `extra={"fields": {...}}`; other records keep their message.

Nothing here reads a submission: callers pass ids, counts and timings only, never source
text, program output, passwords or tokens."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import re
import socket
import sys
from typing import Any, Optional, TextIO

LOG_FORMATS = ("json", "text")
# Characters that end a line or drive a terminal. In the text format a message or value
# holding them (a URL path can) would forge a line of its own; they are written escaped.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")

_service = "grader"
_handler: Optional[logging.Handler] = None


def process_id() -> str:
    """This process as a worker id (`host:pid`): stored on the rows it claims, shown in logs."""
    return f"{_hostname()}:{os.getpid()}"


@functools.lru_cache(maxsize=1)
def _hostname() -> str:
    return socket.gethostname()


def instance() -> str:
    """The running service and its host, e.g. `worker@grader-2`."""
    return f"{_service}@{_hostname()}"


def _timestamp(created: float) -> str:
    return dt.datetime.fromtimestamp(created, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, event, the event's fields, where it came from."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or "log",
        }
        line.update(fields)
        if not fields or getattr(record, "event", None) is None:
            line["message"] = record.getMessage()
        line.update(logger=record.name, instance=instance(), pid=record.process)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`ts LEVEL event key=value ...` for structured events, `ts LEVEL logger: message` else."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{_timestamp(record.created)} {record.levelname}"
        event = getattr(record, "event", None)
        if event is None:
            text = f"{head} {record.name}: {_escaped(record.getMessage())}"
        else:
            pairs = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
            text = f"{head} {event} {pairs}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _text_value(value: Any) -> str:
    shown = str(value)
    return json.dumps(shown) if (not shown or any(c in shown for c in ' "=') or _CONTROL.search(shown)) else shown


def _escaped(text: str) -> str:
    return _CONTROL.sub(lambda m: json.dumps(m.group(0))[1:-1], text)


def formatter_for(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(log_format: str, service: str, level: int = logging.INFO, stream: Optional[TextIO] = None) -> None:
    """Send every log record to `stream` (stderr) in `log_format`, tagged with `service`.
    Calling it again replaces this module's handler instead of adding a second one, so no
    line is ever written twice."""
    global _handler, _service
    _service = service
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream or sys.stderr)
    _handler.setFormatter(formatter_for(log_format))
    root.addHandler(_handler)
    root.setLevel(level)
    # Alembic narrates every schema check at INFO; the operator needs only its warnings.
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


def configure_if_unset(log_format: str, service: str) -> bool:
    """`configure` unless the process already has a root handler: for apps started by a
    server that imports them (gunicorn in the Compose file) rather than by `grader web`,
    which configures logging itself first. True when it configured."""
    if logging.getLogger().handlers:
        return False
    configure(log_format, service)
    return True


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log the structured event `name` with `fields` (None values are left out)."""
    kept = {k: v for k, v in fields.items() if v is not None}
    logger.log(level, "%s %s", name, kept, extra={"event": name, "fields": kept})
