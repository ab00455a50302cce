"""Structured JSON logs, one line per event, with the request id; tokens are redacted everywhere.

uvicorn's access log prints the query string, which carries the token (EventSource cannot send
headers), so redaction happens in the formatter, for every logger, not only ours. It works on what
a server would decode, not only on the bytes as sent:

- a query parameter whose *percent-decoded* name is a token name (``tok%65n=``, ``access%5Ftoken=``)
  has its value redacted, although such names are not accepted as tokens
  (``gateway.authentication.find_token`` only takes the plain names);
- anything shaped like a compact JWS/JWE is redacted, also when it is percent-encoded
  (``eyJ...%2E...``): a URL-ish run containing ``%`` is decoded (up to three times) and redacted
  whole if a JWT is inside. Every token the verifier accepts has this shape (its header starts
  with ``{``, so its first segment with ``ey`` or ``ew``).

Every record is one physical line in both formats: JSON escapes control characters, and the text
format escapes C0/C1 controls, DEL and U+2028/U+2029 (``\\n``, ``\\x1b``...), so a request path or
header cannot forge a log line; traceback lines of the text format are indented under ``  | ``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import re
import time
from typing import Any
from urllib.parse import unquote_plus

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_SECRET_NAMES = frozenset({"access_token", "token", "id_token", "refresh_token"})
# A query-string style parameter: its name (as sent, maybe percent-encoded) and its value.
_PARAM = re.compile(r"(?P<lead>^|[?&;\s])(?P<name>[^=&;?\s\"']+)=(?P<value>[^&\s\"']*)")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Anything shaped like a compact JWS/JWE, wherever it appears. The header is a JSON object that starts
# with '{' and holds "alg" (>= 20 base64url characters, starting "ey" or, after a whitespace, "ew"); the
# claims hold "exp" (>= 12); the signature may be cut off.
_JWT = re.compile(r"e[wy][A-Za-z0-9_-]{18,}\.[A-Za-z0-9_-]{12,}\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*)?")
# A run of URL characters that contains a percent escape: decoded, it may hide a JWT.
_ENCODED_RUN = re.compile(r"[A-Za-z0-9_.~+%-]*%[A-Za-z0-9_.~+%-]*")
# Lines with none of these have nothing to redact: one search instead of the substitutions.
_SUSPECT = re.compile(r"token|bearer|e[wy][A-Za-z0-9_-]+\.|%", re.IGNORECASE)
REDACTED = "[REDACTED]"


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
    if any(form.lower() in _SECRET_NAMES for form in _decodings(name)):
        return f"{match.group('lead')}{name}={REDACTED}"
    return match.group(0)


def _redact_encoded_jwt(match: re.Match[str]) -> str:
    run = match.group(0)
    return REDACTED if any(_JWT.search(form) for form in _decodings(run)[1:]) else run


def redact(text: str) -> str:
    if not _SUSPECT.search(text):
        return text  # the common case, without running the substitutions
    text = _PARAM.sub(_redact_param, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    if "%" in text:
        text = _ENCODED_RUN.sub(_redact_encoded_jwt, text)
    return _JWT.sub(REDACTED, text)


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


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if self.instance:
            entry["instance"] = self.instance
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        line = json.dumps(entry, ensure_ascii=False)
        return _JSON_RAW.sub(_json_escape, line) if _JSON_RAW.search(line) else line


class TextFormatter(logging.Formatter):
    """``asctime level logger: message`` on one line; a traceback follows on lines indented with ``  | ``."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = escape_controls(redact(self.formatMessage(record)))
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
