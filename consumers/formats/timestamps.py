"""How a mapped record's ``updatedAt`` becomes the store's milliseconds: RFC 3339 text or declared epoch numbers.

A number's unit is declared in the mapping (``updatedAtFormat``), never guessed: the store accepts
years 0001-9999, where every integer is a valid time in at least two of the units, so a guess would
turn a wrong unit into a silently wrong time. The digit count only feeds the hint of a rejection
("a 16-digit number looks like epochMicros"). See docs/event-bus.md, "Records in another shape".
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from consumers.records import MAX_UPDATED_MS, MIN_UPDATED_MS, Rejected, RejectReason

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TimeFormat = Literal["rfc3339", "epochSeconds", "epochMillis", "epochMicros"]
EPOCH_FORMATS: tuple[TimeFormat, ...] = ("epochSeconds", "epochMillis", "epochMicros")
_DECIMAL = re.compile(r"-?\d{1,20}", re.ASCII)
# Digits of an epoch number between 2001-09-09 and 2286-11-20, by unit: for the hint only.
_LIKELY_UNIT = {10: "epochSeconds", 13: "epochMillis", 16: "epochMicros"}


def unit_hint(value: object) -> str:
    """`` (a 16-digit number looks like epochMicros)``, or nothing when the size says nothing."""
    if type(value) is str and _DECIMAL.fullmatch(value):
        value = int(value)
    if type(value) is float and math.isfinite(value):
        value = int(value)
    if type(value) is not int:
        return ""
    digits = len(str(abs(value)))
    unit = _LIKELY_UNIT.get(digits)
    return f" (a {digits}-digit number looks like {unit})" if unit else ""


def epoch_to_ms(value: object, unit: TimeFormat, where: str) -> int | Rejected:
    """Milliseconds (floor) of an epoch number (an integer, a finite float or decimal text) in ``unit``."""
    if type(value) is str and _DECIMAL.fullmatch(value):
        value = int(value)
    if type(value) is int:
        if unit == "epochSeconds":
            ms = value * 1000
        elif unit == "epochMillis":
            ms = value
        else:
            ms = value // 1000
    elif type(value) is float and math.isfinite(value):
        scale = 1000.0 if unit == "epochSeconds" else 1.0 if unit == "epochMillis" else 0.001
        ms = math.floor(value * scale)
    else:
        return Rejected(RejectReason.MAPPING, f"updatedAt at {where} is not a number ({unit} is declared)")
    if not MIN_UPDATED_MS <= ms <= MAX_UPDATED_MS:
        return Rejected(
            RejectReason.TIME_OUT_OF_RANGE,
            f"updatedAt at {where} read as {unit} is outside the years 0001-9999{unit_hint(value)}",
        )
    return ms


def ms_to_text(ms: int) -> str:
    """The RFC 3339 text of a time in milliseconds (UTC), as the record schema reads it."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")
