"""The one CORS policy: which origins may read the stream (``GATEWAY_CORS_ORIGINS``).

EventSource sends a simple GET (no preflight); a fetch-based client that sends ``Authorization``
or ``Last-Event-ID`` preflights with OPTIONS. Both are answered from here, for the stream route
only: health, metrics and docs are not for browsers of other origins.

A token cookie (``GATEWAY_TOKEN_COOKIE``) is sent by the browser with any site's request, also one
whose page may not read the answer: such a request is refused (403) before it counts against the
cookie owner's limits (``sends_credentials``).
"""

from __future__ import annotations

from collections.abc import Sequence

_ALLOWED_HEADERS = b"authorization, last-event-id"


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
        scheme, separator, authority = origin.partition("://")
        return (
            bool(separator and host)
            and scheme.lower() in ("http", "https")
            and authority.lower() == (host or "").strip().lower()
        )

    def preflight(
        self, origin: str | None, method: str | None, allow: str = "GET", allow_headers: bytes = _ALLOWED_HEADERS
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Status and headers of the answer to an OPTIONS preflight (of ``allow``, the route's one method)."""
        allowed = self.headers(origin)
        if not allowed or (method or "").upper() != allow:
            return 400, [(b"vary", b"Origin")]
        return 204, [
            *allowed,
            (b"access-control-allow-methods", allow.encode("ascii")),
            (b"access-control-allow-headers", allow_headers),
            (b"access-control-max-age", b"600"),
        ]
