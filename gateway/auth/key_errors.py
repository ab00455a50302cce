"""Why a JWKS fetch failed, in one line an operator can act on (docs/security.md, "Key documents").

Each failure has a short kind (a class name or an HTTP status: a bounded set), which folds its log
lines and labels ``gateway_jwks_log_lines_suppressed_total``. httpx ends a status error's message
with a documentation link that says nothing about the endpoint; it is left out. A discovery document
at ``GATEWAY_JWKS_URL`` is the most common wrong URL, so it gets the setting to use instead.
"""

from __future__ import annotations

from typing import Any

import httpx

_MAX_HINT_VALUE = 200  # a discovery document's values quoted in a hint are cut to this length


class JwksFetchError(ValueError):
    """A fetch failed for a reason with a short, stable name (the log folding's key, a metric label)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def describe_failure(error: Exception) -> tuple[str, str]:
    """A failed fetch's kind and its one-line message."""
    if isinstance(error, httpx.HTTPStatusError):
        response = error.response
        message = f"JWKS fetch failed: HTTP {response.status_code} {response.reason_phrase or ''}".rstrip()
        return f"http_{response.status_code}", f"{message} from {error.request.url}"
    if isinstance(error, JwksFetchError):
        return error.kind, f"JWKS fetch failed: {error}"
    return type(error).__name__, f"JWKS fetch failed: {type(error).__name__}: {error_text(error)}"


def error_text(error: Exception) -> str:
    """An HTTP client error's message without the documentation link httpx appends to status errors."""
    return str(error).split("\nFor more information", 1)[0].strip() or type(error).__name__


def discovery_hint(document: dict[str, Any]) -> str:
    """What to set when GATEWAY_JWKS_URL names an OpenID discovery document instead of its key set."""

    def quoted(name: str) -> str:
        value = document.get(name)
        return repr(value[:_MAX_HINT_VALUE]) if isinstance(value, str) and value else ""

    issuer, jwks_uri = quoted("issuer"), quoted("jwks_uri")
    hint = f"set GATEWAY_OIDC_ISSUER={issuer} instead of GATEWAY_JWKS_URL" if issuer else "set GATEWAY_OIDC_ISSUER"
    also = f", or GATEWAY_JWKS_URL to its jwks_uri {jwks_uri}" if jwks_uri else ""
    return f"GATEWAY_JWKS_URL names an OpenID discovery document, not a JWKS: {hint}{also}"
