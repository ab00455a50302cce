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


# The one spelling producers write, version 00, exactly 55 bytes: what ``unsampled_parent`` settles alone.
_TRACEPARENT_V00 = re.compile(rb"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
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


def unsampled_parent(headers: Sequence[tuple[str, bytes | None]]) -> bool:
    """True when the record's trace context is certainly a valid parent with the sampled flag off.

    The common case of a parent-based sampler, settled without building a carrier: the first header
    spelled exactly ``traceparent`` is a version-00 context whose flags are even. Anything else (no
    such header, another spelling before it, a context this does not recognise) answers False and is
    left to ``carrier.record_carrier`` and ``decide``, which agree with this wherever it answers True
    (tests/test_tracing.py compares them).
    """
    for name, raw in headers:
        if name == "traceparent":
            return (
                raw is not None
                and len(raw) == 55
                and raw[54] in _EVEN_HEX
                and _TRACEPARENT_V00.fullmatch(raw) is not None
            )
        if len(name) == 11 and name.lower() == "traceparent":
            return False  # another spelling comes first: the full reading decides
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
