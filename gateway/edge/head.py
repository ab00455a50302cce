"""A request head, parsed once it is whole, and what it says about the body that follows.

The connection (``gateway.edge.connection``) buffers a head under its byte and time limits and hands it
here complete, so parsing never sees a partial or oversized head: httptools (the parser uvicorn itself
uses) only ever gets one head at a time. Limits and refusals: docs/security.md, docs/http-api.md.
"""

from __future__ import annotations

from typing import Any

import httptools

MAX_BODY = 1024 * 1024  # a request body (only the dev routes take one)


class Head:
    """Method, version, raw target, parsed URL and headers (names lower-cased) of one request."""

    __slots__ = ("headers", "method", "target", "url", "version")

    def __init__(self) -> None:
        self.method = b""
        self.version = ""
        self.target = b""
        self.url: Any = None
        self.headers: list[tuple[bytes, bytes]] = []

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def text_headers(self) -> dict[str, str]:
        """The headers as text (latin-1, as HTTP/1.1 sends them), the last of a repeated name winning."""
        return {name.decode("latin-1"): value.decode("latin-1") for name, value in self.headers}

    def body_length(self) -> tuple[int, int]:
        """``(length, 0)``, or ``(0, status)`` refusing the body: 411 chunked, 400 a malformed length, 413 too long."""
        length = 0
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return 0, 411
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return 0, 400
        if not 0 <= length <= MAX_BODY:
            return 0, 413
        return length, 0

    def expects_continue(self) -> bool:
        return any(name == b"expect" and value.lower() == b"100-continue" for name, value in self.headers)

    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps a connection unless the client says otherwise; HTTP/1.0 ends it after the answer."""
        if self.version != "1.1":
            return False
        return not any(name == b"connection" and b"close" in value.lower() for name, value in self.headers)


def parse_head(data: bytes) -> Head | None:
    """The head of ``data`` (one whole head, ending in an empty line); None when it is malformed."""
    head = Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(data)
        head.method = parser.get_method()
        head.version = parser.get_http_version()
        head.url = httptools.parse_url(head.target)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    return head
