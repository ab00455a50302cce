"""Redaction of tokens and tickets in log text: every log line passes through ``redact`` (logging_setup).

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

See docs/security.md ("Logs").
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

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
