"""Structured JSON logs, one line per event, with the request id; tokens are redacted everywhere.

uvicorn's access log prints the query string, which carries the token (EventSource cannot send
headers), so redaction happens in the formatter, for every logger, not only ours. It works on what
a server would decode, not only on the bytes as sent:

- a query parameter whose *percent-decoded* name is a token name (``tok%65n=``, ``access%5Ftoken=``)
  has its value redacted, although such names are not accepted as tokens
  (``gateway.auth.token_sources.find_token`` only takes the plain names);
- anything shaped like a compact JWS/JWE is redacted, also when it is percent-encoded
  (``eyJ...%2E...``): a URL-ish run containing ``%`` is decoded (up to three times) and redacted
  whole if a JWT is inside. Every token the verifier accepts has this shape (its header starts
  with ``{``, so its first segment with ``ey`` or ``ew``).

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
from urllib.parse import unquote_plus

from consumers.log_fields import FIELDS_ATTRIBUTE
from consumers.tracing import current_ids

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_SECRET_NAMES = frozenset({"access_token", "token", "id_token", "refresh_token", "ticket"})
# A query-string style parameter: its name (as sent, maybe percent-encoded) and its value. Linear: a
# name cannot contain a lead character, so every character is scanned from one lead at most.
_PARAM = re.compile(r"(?P<lead>^|[?&;\s])(?P<name>[^=&;?\s\"']+)=(?P<value>[^&\s\"']*)")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Maximal runs of base64url characters and dots (where a JWS/JWE may hide), and of URL characters
# (where a percent-encoded one may hide). A maximal run is found in one pass: no backtracking.
_DOTTED_RUN = re.compile(r"[A-Za-z0-9_.-]+")
_URL_RUN = re.compile(r"[A-Za-z0-9_.~+%-]+")
# Lines with none of these have nothing to redact: one linear search instead of the substitutions
# (every pattern is of bounded length, so no start position is scanned past a few characters).
_SUSPECT = re.compile(r"token|ticket|bearer|%|e[wy][A-Za-z0-9_-]{18}|v1\.", re.IGNORECASE)
# A stream ticket (gateway.auth.tickets): ``v1.<payload>.<mac>``, wherever it stands.
_TICKET = re.compile(r"v1\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
# The shortest JWS header segment ("e[wy]" + 18) and claims segment the redaction looks for.
_MIN_HEADER, _MIN_CLAIMS = 20, 12
# What every header segment ``_jwt_spans`` finds starts with (case as is): without one, a text has no
# plain JWT and the per-run pass is skipped (one linear search of a bounded pattern instead).
_JWT_HEAD = re.compile(r"e[wy][A-Za-z0-9_-]{18}")
# ``_SUSPECT`` and ``_BEARER`` for ASCII text without their case-insensitive scans (Unicode case folding is
# what makes them slow; on ASCII it is ``str.lower``): a JWT head in any case (``_suspect`` has the words).
_JWT_HEAD_ANY_CASE = re.compile(r"[eE][wWyY][A-Za-z0-9_-]{18}")
REDACTED = "[REDACTED]"
# Ids and request targets in log lines are cut to this many characters (``log_value``), after redaction;
# any other value interpolated into a line to ``MAX_LOGGED_ARGUMENT``. See docs/security.md#logs.
MAX_LOGGED_VALUE = 256
MAX_LOGGED_ARGUMENT = 2048


# Keys of a JSON line that a field may not replace.
_RESERVED = frozenset({"time", "level", "logger", "message", "instance", "request_id", "exception"})


def _field_value(value: object) -> object:
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return clip(redact(text)) if len(text) > MAX_LOGGED_VALUE or _suspect(text) else text


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


def _decodings(text: str) -> list[str]:
    """``text`` percent-decoded once, twice, three times (as far as that changes it)."""
    forms = [text]
    for _ in range(3):
        if "%" not in forms[-1] and "+" not in forms[-1]:
            break
        decoded = unquote_plus(forms[-1], errors="replace")
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return forms


def _redact_param(match: re.Match[str]) -> str:
    name = match.group("name")
    # Without a "%" the only decodings are the name and the name with "+" as spaces, which no secret name has.
    secret = (
        name.lower() in _SECRET_NAMES
        if "%" not in name
        else any(form.lower() in _SECRET_NAMES for form in _decodings(name))
    )
    if secret:
        return f"{match.group('lead')}{name}={REDACTED}"
    return match.group(0)


def _jwt_spans(run: str) -> list[tuple[int, int]]:
    """Where compact JWS/JWE tokens stand in ``run``, a string of base64url characters and dots.

    A token's header is a JSON object, so its first segment holds "ey" or "ew" followed by at least
    18 more characters; its claims segment holds at least 12; the signature may be cut off (empty),
    and a JWE has two more segments. One pass over the segments: linear in ``run``.
    """
    segments = run.split(".")
    spans: list[tuple[int, int]] = []
    starts = [0]
    for segment in segments:
        starts.append(starts[-1] + len(segment) + 1)
    index = 0
    while index + 2 < len(segments):
        segment = segments[index]
        found = [at for at in (segment.find("ey"), segment.find("ew")) if at >= 0]
        begin = min(found) if found else -1
        if begin < 0 or len(segment) - begin < _MIN_HEADER or len(segments[index + 1]) < _MIN_CLAIMS:
            index += 1
            continue
        last = index + 4 if index + 4 < len(segments) else index + 2
        spans.append((starts[index] + begin, starts[last + 1] - 1))
        index = last + 1
    return spans


def _redact_jwts(text: str) -> str:
    def redact_run(match: re.Match[str]) -> str:
        run = match.group(0)
        if run.count(".") < 2:
            return run
        spans = _jwt_spans(run)
        if not spans:
            return run
        parts: list[str] = []
        done = 0
        for begin, end in spans:
            parts += (run[done:begin], REDACTED)
            done = end
        parts.append(run[done:])
        return "".join(parts)

    return _DOTTED_RUN.sub(redact_run, text)


def _has_jwt(text: str) -> bool:
    return any(run.count(".") >= 2 and _jwt_spans(run) for run in _DOTTED_RUN.findall(text))


def _redact_encoded_jwt(match: re.Match[str]) -> str:
    run = match.group(0)
    if "%" not in run:
        return run
    return REDACTED if any(_has_jwt(form) or _TICKET.search(form) for form in _decodings(run)[1:]) else run


def _suspect(text: str) -> bool:
    """``_SUSPECT.search(text)``: on ASCII text as substring checks and one case-sensitive search (the same
    verdict, ASCII case folding being ``str.lower``), else the pattern itself."""
    if not text.isascii():
        return _SUSPECT.search(text) is not None
    if "%" in text:
        return True
    lower = text.lower()
    return (
        "token" in lower
        or "ticket" in lower
        or "bearer" in lower
        or "v1." in lower
        or _JWT_HEAD_ANY_CASE.search(text) is not None
    )


def redact(text: str) -> str:
    """``text`` with every token it may carry replaced by ``[REDACTED]``; linear in its length.

    On ASCII text a substitution is skipped where it cannot match (which the unit tests of issue 24 check
    against running every one): a parameter needs a secret name (each holds "token" or "ticket") or a
    ``%`` to hide one, ``Bearer`` itself, a ticket ``v1.``."""
    if not _suspect(text):
        return text  # the common case, without running the substitutions
    ascii_text = text.isascii()
    lower = text.lower() if ascii_text else ""
    if not ascii_text or "%" in text or "token" in lower or "ticket" in lower:
        text = _PARAM.sub(_redact_param, text)
    if not ascii_text or "bearer" in lower:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    if "v1." in text:
        text = _TICKET.sub(REDACTED, text)
    if "%" in text:
        text = _URL_RUN.sub(_redact_encoded_jwt, text)
    return _redact_jwts(text) if _JWT_HEAD.search(text) else text


def clip(value: str, limit: int = MAX_LOGGED_VALUE) -> str:
    """``value`` cut to ``limit`` characters, saying how many were left out."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...[{len(value) - limit} more characters]"


def log_value(value: str) -> str:
    """An id or request target for a log line: redacted, then cut to ``MAX_LOGGED_VALUE`` (no half token)."""
    return clip(redact(value)) if len(value) > MAX_LOGGED_VALUE else value


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


# json.dumps(..., ensure_ascii=False) builds an encoder per call; this one writes the same text.
_JSON = json.JSONEncoder(ensure_ascii=False)


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
        line = _JSON.encode(entry)
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
    return config
