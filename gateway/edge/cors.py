"""The one CORS policy: which origins may read the stream (``GATEWAY_CORS_ORIGINS``).

EventSource sends a simple GET (no preflight); a fetch-based client that sends ``Authorization``
or ``Last-Event-ID`` preflights with OPTIONS. Both are answered from here, for the stream route
only: health, metrics and docs are not for browsers of other origins.

A token cookie (``GATEWAY_TOKEN_COOKIE``) is sent by the browser with any site's request, also one
whose page may not read the answer: such a request is refused (403) before it counts against the
cookie owner's limits (``sends_credentials``).

A page whose origin is not allowed sees only "CORS error" in its console while the gateway answers
200: ``RefusedOrigins`` lets the endpoint say so in its log, once per origin and interval, with the
setting to change (docs/http-api.md, "CORS").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

_ALLOWED_HEADERS = b"authorization, last-event-id"
_MAX_ORIGIN_KEY = 256  # longer origins are remembered by their first characters


class CorsPolicy:
    def __init__(self, origins: Sequence[str]) -> None:
        self._origins = {origin.encode("latin-1") for origin in origins}
        self._any = b"*" in self._origins

    def headers(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """Headers for an actual (GET) response to ``origin``; none when it is not allowed."""
        if not origin or not self._origins:
            return []
        if self._any:
            return [(b"access-control-allow-origin", b"*")]
        raw = origin.encode("latin-1", errors="replace")
        if raw in self._origins:
            return [
                (b"access-control-allow-origin", raw),
                (b"access-control-allow-credentials", b"true"),
                (b"vary", b"Origin"),
            ]
        return []

    @property
    def configured(self) -> str:
        """The setting's value as an operator wrote it, for a log line."""
        return ",".join(sorted(origin.decode("latin-1") for origin in self._origins)) or "unset"

    def refuses(self, origin: str | None, host: str | None) -> bool:
        """Whether a browser page of ``origin`` may not read the answer: a cross-origin request not allowed."""
        if not origin or self.headers(origin):
            return False
        return not _same_origin(origin, host)

    def sends_credentials(self, origin: str | None, host: str | None) -> bool:
        """Whether a request from ``origin`` may be authenticated by a cookie (the browser sent it by itself).

        Yes without an ``Origin`` header (a browser's same-origin GET, or not a browser), for the
        gateway's own origin (``Origin`` naming the ``Host`` the request was sent to) and for an origin
        listed in ``GATEWAY_CORS_ORIGINS`` by name; ``*`` allows reading without credentials only, so it
        does not count. Anything else (another site, ``Origin: null``) may not.
        """
        if not origin:
            return True
        raw = origin.encode("latin-1", errors="replace")
        if raw != b"*" and raw in self._origins:
            return True
        return _same_origin(origin, host)

    def preflight(
        self,
        origin: str | None,
        method: str | None,
        *,
        methods: tuple[str, ...] = ("GET",),
        allowed_headers: bytes = _ALLOWED_HEADERS,
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Status and headers of the answer to an OPTIONS preflight (the stream's; the status read passes its own
        methods and headers)."""
        allowed = self.headers(origin)
        if not allowed or (method or "").upper() not in methods:
            return 400, [(b"vary", b"Origin")]
        return 204, [
            *allowed,
            (b"access-control-allow-methods", ", ".join(methods).encode("ascii")),
            (b"access-control-allow-headers", allowed_headers),
            (b"access-control-max-age", b"600"),
        ]


def _same_origin(origin: str, host: str | None) -> bool:
    """``Origin`` names the ``Host`` the request was sent to: the gateway's own page."""
    scheme, separator, authority = origin.partition("://")
    return (
        bool(separator and host)
        and scheme.lower() in ("http", "https")
        and authority.lower() == (host or "").strip().lower()
    )


class RefusedOrigins:
    """Which refused origins were already logged in this interval: each one is logged once per interval.

    Clients choose the ``Origin`` header, so at most ``capacity`` origins are remembered (and logged) per
    interval; further ones are only counted (``overflow``) until the interval is over and all are forgotten.
    """

    def __init__(self, interval: float = 60.0, capacity: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.capacity = capacity
        self._clock = clock
        self._started = clock()
        self._logged: set[str] = set()
        self.overflow = 0

    def first_time(self, origin: str) -> bool:
        """True when ``origin`` was not logged yet in this interval and there is room to remember it."""
        now = self._clock()
        if now - self._started >= self.interval:
            self._logged.clear()
            self._started = now
        key = origin[:_MAX_ORIGIN_KEY]
        if key in self._logged:
            return False
        if len(self._logged) >= self.capacity:
            self.overflow += 1
            return False
        self._logged.add(key)
        return True

    def __len__(self) -> int:
        return len(self._logged)
