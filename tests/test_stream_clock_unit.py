"""The stream clock's token-expiry sweep (gateway/admission/clock.py): it visits only the streams whose token
expired, and closes exactly the ones the pass over every stream it replaced closed, at the same sweeps.

Pure logic: streams are small objects that, like the registry's, leave the clock when they close.
"""

from __future__ import annotations

import math
import random

import pytest

from consumers.hub import Hub
from gateway.admission.clock import StreamClock
from gateway.settings import GatewaySettings
from gateway.streams.sse import encode_transition


class _Stream:
    def __init__(self, clock: StreamClock, name: str, expires_at: float, broken: bool = False) -> None:
        self.clock = clock
        self.session_id = name
        self.slot = 0
        self.last_write = 0.0
        self.expires_at = expires_at
        self.close_reason: str | None = None
        self.closes = 0
        self.broken = broken

    def stalled(self) -> bool:
        return False

    def heartbeat(self) -> None:
        pass

    def disconnected(self) -> bool:
        return False

    def close(self, reason: str) -> None:
        self.closes += 1
        if self.broken and reason == "token_expired":
            raise RuntimeError("close went wrong")
        if self.close_reason is None:
            self.close_reason = reason
            self.clock.remove(self)

    def cut_slow_client(self) -> None:
        pass


def _clock(close_on_expiry: bool = True) -> StreamClock:
    return StreamClock(GatewaySettings(close_on_token_expiry=close_on_expiry), Hub(encode_transition))


def test_a_sweep_closes_exactly_the_expired_streams_and_later_sweeps_the_rest() -> None:
    clock = _clock()
    streams = [_Stream(clock, f"s{n}", 1000.0 + n * 0.4) for n in range(10)]  # 1000.0 ... 1003.6
    forever = _Stream(clock, "forever", math.inf)
    for stream in [*streams, forever]:
        clock.add(stream)
    clock._sweep(1001.0)
    assert [s.close_reason for s in streams[:4]] == ["token_expired"] * 3 + [None]  # 1000.0, 1000.4, 1000.8
    assert all(s.close_reason is None for s in streams[3:])
    assert len(clock) == 8
    clock._sweep(1001.5)  # 1001.2 expires, 1001.6 (same second) does not yet
    assert streams[3].close_reason == "token_expired" and streams[4].close_reason is None
    clock._sweep(1010.0)
    assert all(s.close_reason == "token_expired" for s in streams)
    assert all(s.closes == 1 for s in streams)
    assert forever.close_reason is None and len(clock) == 1
    assert not clock._expiring


def test_without_close_on_token_expiry_nothing_is_tracked_or_closed() -> None:
    clock = _clock(close_on_expiry=False)
    stream = _Stream(clock, "s", 1000.0)
    clock.add(stream)
    clock._sweep(5000.0)
    assert stream.close_reason is None and not clock._expiring and not clock._expiry_seconds


def test_a_stream_whose_close_raises_is_closed_as_a_clock_error_and_the_others_still_expire() -> None:
    clock = _clock()
    broken, healthy = _Stream(clock, "bad", 1000.0, broken=True), _Stream(clock, "ok", 1000.5)
    for stream in (broken, healthy):
        clock.add(stream)
    clock._sweep(1001.0)
    assert broken.close_reason == "clock_error"
    assert healthy.close_reason == "token_expired"
    assert len(clock) == 0 and not clock._expiring


def test_streams_that_end_before_their_token_leave_nothing_behind() -> None:
    """A million short streams with hour-long tokens: what the clock keeps stays bounded by the open ones."""
    clock = _clock()
    for n in range(20_000):
        stream = _Stream(clock, f"s{n}", 1_000_000.0 + n * 0.9)  # a distinct second almost every time
        clock.add(stream)
        stream.close("completed")
    assert len(clock) == 0 and not clock._expiring
    assert len(clock._expiry_seconds) <= 64


@pytest.mark.parametrize("seed", range(5))
def test_the_sweep_closes_what_a_pass_over_every_stream_would(seed: int) -> None:
    """Random opens, ends and sweeps, compared after every sweep with the old rule: every open stream with
    ``expires_at <= wall`` is closed by that sweep, and no other."""
    rng = random.Random(seed)
    clock = _clock()
    open_streams: list[_Stream] = []
    wall = 1000.0
    for step in range(3000):
        action = rng.random()
        if action < 0.55:
            expires = rng.choice((math.inf, wall + rng.uniform(-2, 30), float(int(wall) + rng.randrange(0, 5))))
            stream = _Stream(clock, f"s{step}", expires)
            clock.add(stream)
            open_streams.append(stream)
        elif action < 0.8 and open_streams:
            stream = open_streams.pop(rng.randrange(len(open_streams)))
            stream.close("completed")
        else:
            wall += rng.choice((0.0, 0.25, 1.0, 3.7))
            expected = {s.session_id for s in open_streams if s.expires_at <= wall}
            clock._sweep(wall)
            closed = {s.session_id for s in open_streams if s.close_reason == "token_expired"}
            assert closed == expected
            open_streams = [s for s in open_streams if s.close_reason is None]
            assert len(clock) == len(open_streams)
    assert sum(len(streams) for streams in clock._expiring.values()) == sum(
        1 for s in open_streams if math.isfinite(s.expires_at)
    )
