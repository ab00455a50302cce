"""Structured JSON logs, one line per event, with the request id; tokens are redacted everywhere.

Every message, field value and traceback passes through ``gateway.runtime.redaction.redact`` in the
formatters, for every logger, not only ours (uvicorn's access log prints the query string, which
carries the token: EventSource cannot send headers).

Details a log line is about (topic, partition, offset, reason, session hash, tenant, expected and
received claim values...) travel as fields, not only inside the message (``consumers.log_fields``):
the JSON format writes each as its own key, the text format appends them as ``[name=value ...]``;
both redact and clip string values like interpolated ones. The request id is such a field in both.
See docs/operations.md ("Logs").

Every record is one physical line in both formats: JSON escapes control characters, and the text
format escapes C0/C1 controls, DEL and U+2028/U+2029 (``\\n``, ``\\x1b``...), so a request path or
header cannot forge a log line; traceback lines of the text format are indented under ``  | ``.

Where an OpenTelemetry span is active (tracing on, ``consumers.tracing``), a line carries its
``trace_id`` and ``span_id``: JSON fields, or `` trace_id=... span_id=...`` after a text line's message.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import re
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from consumers.log_fields import FIELDS_ATTRIBUTE
from consumers.tracing import current_ids
from gateway.runtime.redaction import MAX_LOGGED_ARGUMENT, clip, redact

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Keys of a JSON line that a field may not replace.
_RESERVED = frozenset({"time", "level", "logger", "message", "instance", "request_id", "exception"})


def _field_value(value: object) -> object:
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return clip(redact(text))  # (a short text without anything to redact comes back as it is)


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The record's fields (``fields(...)``), values redacted and clipped, and the request id if any."""
    found = getattr(record, FIELDS_ATTRIBUTE, None)
    values = {
        name: _field_value(value)
        for name, value in (found.items() if isinstance(found, Mapping) else ())
        if isinstance(name, str) and name not in _RESERVED
    }
    request_id = request_id_var.get()
    if request_id:
        values["request_id"] = request_id
    return values


def _log_args(args: Any) -> Any:
    """A record's arguments with very long strings redacted, then clipped: no value makes a line huge."""
    limit = MAX_LOGGED_ARGUMENT
    if isinstance(args, tuple):
        for arg in args:  # a loop, not any(): this runs for every record
            if isinstance(arg, str) and len(arg) > limit:
                return tuple(clip(redact(arg), limit) if isinstance(arg, str) else arg for arg in args)
    return args


def render_message(record: logging.LogRecord) -> str:
    """The record's message, redacted, with very long interpolated values clipped."""
    args = _log_args(record.args)
    if args is not record.args:
        record.args = args
    return redact(record.getMessage())


# C0 controls, DEL, C1 controls and the Unicode line/paragraph separators: escaped in text logs.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters become visible escapes."""
    return _CONTROL.sub(_escape_char, text) if _CONTROL.search(text) else text


# json.dumps(ensure_ascii=False) leaves these raw; some line-oriented readers split on them.
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


# A line is encoded by msgspec (C; a tenth of the standard encoder's time, issue 24), compact, non-ASCII as
# it is, like ``json.dumps(ensure_ascii=False)``; what msgspec refuses (a lone surrogate, an unknown type) is
# left to the standard encoder, which writes any text.
_ENCODE = msgspec.json.Encoder().encode
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _json_text(entry: dict[str, Any]) -> str:
    try:
        return _ENCODE(entry).decode()
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return _JSON.encode(entry)


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self.instance = instance
        self._second: tuple[int, str] = (-1, "")  # the last second formatted, and its text (one tuple: atomic)

    def _time(self, created: float) -> str:
        second = int(created)  # as time.gmtime(created): created is never negative
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return cached[1]

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": render_message(record),
        }
        if self.instance:
            entry["instance"] = self.instance
        entry.update(record_fields(record))
        ids = current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        line = _json_text(entry)
        return _JSON_RAW.sub(_json_escape, line) if _JSON_RAW.search(line) else line


class TextFormatter(logging.Formatter):
    """``asctime level logger: message`` on one line; a traceback follows on lines indented with ``  | ``."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = render_message(record)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extras = record_fields(record)
        if extras:
            line += " [" + " ".join(f"{name}={_text_value(value)}" for name, value in extras.items()) + "]"
        line = escape_controls(line)
        ids = current_ids()
        if ids is not None:
            line += f" trace_id={ids[0]} span_id={ids[1]}"
        blocks: list[str] = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            blocks.append(record.exc_text)
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            for part in redact(block).split("\n"):
                line += "\n  | " + escape_controls(part)
        return line


def _text_value(value: object) -> str:
    if isinstance(value, str) and (not value or any(char in value for char in ' "[]=')):
        return json.dumps(value, ensure_ascii=False)
    return str(value).lower() if isinstance(value, bool) else str(value)


def configure_logging(level: str = "INFO", fmt: str = "json", instance: str = "") -> dict[str, Any]:
    """Configures logging and returns the dict config, which uvicorn is given too."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "instance": instance}
        if fmt == "json"
        else {"()": TextFormatter, "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": level, "propagate": True},
            "aiokafka": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
        },
    }
    logging.config.dictConfig(config)
    # No format prints the thread, process or multiprocessing names: a record need not look them up
    # (the logging module's documented switches; an os.getpid() call per record among them).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return config
