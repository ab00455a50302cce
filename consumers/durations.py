"""Human durations for settings: ``500ms``, ``90s``, ``30m``, ``6h``, ``1d`` (also combined: ``1h30m``).

A plain number keeps meaning what the setting always meant (seconds, or milliseconds for ``_ms``
settings). ISO 8601 (``PT6H``) and ``HH:MM:SS`` pass through untouched, so pydantic still parses
them for ``timedelta`` settings. Used as ``before`` validators by the settings classes::

    _durations = seconds_fields("drain_seconds", "resume_wait")
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import field_validator

EXAMPLES = "90s, 30m, 6h, 1d, 500ms or a number of seconds"
EXAMPLES_MS = "500ms, 3s, 1m or a number of milliseconds"

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)"
_HUMAN = re.compile(rf"\s*(?:{_PART}\s*)+", re.IGNORECASE)
_PARTS = re.compile(_PART, re.IGNORECASE)
_PASS_THROUGH = re.compile(r"\s*-?P|.*:", re.IGNORECASE)  # ISO 8601 duration or [-][DD ][HH:MM]SS


def parse_seconds(text: str) -> float | None:
    """Seconds in ``text`` (``"6h"`` -> 21600.0, ``"90"`` -> 90.0); None for ISO 8601 / ``HH:MM:SS``.

    Raises ValueError (with examples of valid values) for anything else.
    """
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    if _HUMAN.fullmatch(stripped):
        return sum(float(number) * _UNIT_SECONDS[unit.lower()] for number, unit in _PARTS.findall(stripped))
    if _PASS_THROUGH.match(stripped):
        return None
    raise ValueError(f"not a duration; use e.g. {EXAMPLES}")


def _to_timedelta(value: object) -> object:
    if isinstance(value, str):
        seconds = parse_seconds(value)
        return value if seconds is None else timedelta(seconds=seconds)
    return value


def _to_seconds(value: object) -> object:
    if isinstance(value, str):
        seconds = parse_seconds(value)
        return value if seconds is None else seconds
    return value


def _to_milliseconds(value: object) -> object:
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.isdigit():
            return int(stripped)
        if not _HUMAN.fullmatch(stripped):
            raise ValueError(f"not a duration; use e.g. {EXAMPLES_MS}")
        seconds = parse_seconds(stripped)
        assert seconds is not None
        return round(seconds * 1000)
    return value


# Field names registered by the helpers below, per kind, so error messages can show a valid example.
DURATION_FIELDS: dict[str, str] = {}


def _register(names: tuple[str, ...], kind: str) -> None:
    for name in names:
        DURATION_FIELDS[name] = kind


def timedelta_fields(*names: str) -> Any:
    """A ``before`` validator for ``timedelta`` fields: accepts ``6h``, plain seconds, ISO 8601."""
    _register(names, "seconds")
    return field_validator(*names, mode="before")(_to_timedelta)


def seconds_fields(*names: str) -> Any:
    """A ``before`` validator for float-seconds fields: accepts ``6h``, ``500ms``, plain seconds."""
    _register(names, "seconds")
    return field_validator(*names, mode="before")(_to_seconds)


def milliseconds_fields(*names: str) -> Any:
    """A ``before`` validator for integer-milliseconds fields: accepts ``3s``, ``500ms``, plain milliseconds."""
    _register(names, "milliseconds")
    return field_validator(*names, mode="before")(_to_milliseconds)
