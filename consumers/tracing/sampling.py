"""The sampling decision taken before any span object exists, so that a dropped record costs a random draw.

The SDK decides only once a span is being started (ids generated, a non-recording span made): about
10 microseconds a record on this machine, twice the gateway's own work for a record that reaches one
stream. For the standard samplers (``OTEL_TRACES_SAMPLER``: ``always_on``, ``always_off``,
``traceidratio``, and their ``parentbased_`` forms, read as the SDK reads them) the same decision is
taken here first: a new trace is kept with the sampler's ratio (the SDK's ratio sampler draws on the
trace id, which is random, so the chances are the same); under a parent-based sampler, a producer's
context is followed by its sampled flag. Only a kept span is then started, by a tracer that keeps every
span it starts (a root) or by the SDK's own sampler (with a parent). Another sampler (an entry point of
the SDK) decides for itself on every span. See docs/observability.md#sampling.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

DROP, ROOT, PARENT, SDK = "drop", "root", "parent", "sdk"

_RATIO_SAMPLERS = {
    "always_on": (False, 1.0),
    "always_off": (False, 0.0),
    "traceidratio": (False, None),
    "parentbased_always_on": (True, 1.0),
    "parentbased_always_off": (True, 0.0),
    "parentbased_traceidratio": (True, None),
}
DEFAULT_SAMPLER = "parentbased_always_on"
# W3C Trace Context: version (not ff), trace id and parent id (not all zeros), flags; version 00 ends there.
_TRACEPARENT = re.compile(
    r"\s*(?!ff)(?P<version>[0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?\s*",
    re.ASCII,
)


_EVEN_HEX = frozenset(b"02468ace")  # the last digit of the flags: even, the sampled bit is off


class SamplingPlan(NamedTuple):
    """``root_ratio`` None: a sampler this module does not know, which the SDK applies to every span."""

    name: str
    parent_based: bool = True
    root_ratio: float | None = None
    ratio_argument: float = 1.0


def plan_from(environ: Mapping[str, str]) -> SamplingPlan:
    """The plan for ``OTEL_TRACES_SAMPLER``/``_ARG``, with the SDK's defaults (a bad ratio counts as 1.0)."""
    name = environ.get("OTEL_TRACES_SAMPLER", DEFAULT_SAMPLER).strip().lower() or DEFAULT_SAMPLER
    known = _RATIO_SAMPLERS.get(name)
    if known is None:
        return SamplingPlan(name)
    parent_based, ratio = known
    argument = 1.0
    if ratio is None:
        try:
            argument = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            argument = 1.0
        if not 0.0 <= argument <= 1.0:  # the SDK's ratio sampler refuses these; treated as the default
            argument = 1.0
        ratio = argument
    return SamplingPlan(name, parent_based, ratio, argument)


def parent_sampled(traceparent: str) -> bool | None:
    """The sampled flag of a valid ``traceparent``; None when it is not one (the record starts a new trace)."""
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None or (match.group("version") == "00" and match.group("rest") is not None):
        return None
    return bool(int(match.group("flags"), 16) & 1)


def unsampled_shape(headers: Sequence[tuple[str, bytes | None]]) -> bool:
    """True when the first header spelled exactly ``traceparent`` is 55 ASCII bytes with an even flags digit.

    Such a record is either a valid parent the producer did not sample (dropped under a parent-based
    sampler) or not a valid context at all (a new trace, kept at the sampler's ratio): so once a draw
    says "not kept", it is dropped whichever it is, and only the kept draws need the full reading.
    With another spelling first the full reading decides (False). tests/test_tracing.py compares the
    shortcut with the full reading on thousands of header lists.
    """
    for name, raw in headers:
        if name == "traceparent":
            return raw is not None and len(raw) == 55 and raw[54] in _EVEN_HEX and raw.isascii()
        if len(name) == 11 and name.lower() == "traceparent":
            return False
    return False


def decide(plan: SamplingPlan, carrier: Mapping[str, str] | None, draw: Callable[[], float] | None = None) -> str:
    """DROP, ROOT (start a kept root span), PARENT (start under the carrier's context) or SDK (let it decide)."""
    ratio = plan.root_ratio
    if ratio is None:
        return SDK
    if carrier is not None:
        sampled = parent_sampled(carrier.get("traceparent", ""))
        if sampled is not None:
            if not plan.parent_based:
                return SDK  # a ratio on the parent's trace id: the SDK's sampler decides
            return PARENT if sampled else DROP
    if ratio >= 1.0:
        return ROOT
    return ROOT if ratio > 0.0 and (draw or random.random)() < ratio else DROP
