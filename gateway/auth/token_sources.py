"""Where a request's token comes from: the query, ``Authorization: Bearer`` or the configured cookie.

Only the documented names, spelt plainly on the wire, are tokens, so that what the access log shows
(and redacts) and what is accepted agree. The caller learns the source because a cookie is ambient
(a browser adds it to another site's request) and needs an ``Origin`` check. See docs/security.md
(Tokens, Cookies from other sites) and docs/http-api.md (Tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_plus

TOKEN_QUERY_PARAMETERS = ("token", "access_token")


def find_token(
    query: Mapping[str, str] | bytes | str, headers: Mapping[str, str], cookie_name: str | None
) -> str | None:
    """First found wins: ?token=, ?access_token=, Authorization: Bearer, then the configured cookie.

    ``query`` should be the raw query string as received (``scope["query_string"]``): a token is
    then accepted only under its documented names spelled plainly on the wire, so that
    ``?tok%65n=...`` or ``?access%5Ftoken=...`` are not tokens (what the access log shows and what
    is accepted agree). A mapping of already-decoded parameters is still accepted, with the old
    meaning, for callers that have not moved to the raw query yet.
    """
    return locate_token(query, headers, cookie_name)[0]


def locate_token(
    query: Mapping[str, str] | bytes | str, headers: Mapping[str, str], cookie_name: str | None
) -> tuple[str | None, str]:
    """``find_token`` and where the token came from: ``query``, ``authorization``, ``cookie`` (or ``none``).

    A cookie is the one source a browser adds to another site's request by itself, so the caller
    checks the request's ``Origin`` for it (``CorsPolicy.sends_credentials``).
    """
    if isinstance(query, bytes | str):
        found = _token_from_raw_query(query)
        if found:
            return found, "query"
    else:
        for name in TOKEN_QUERY_PARAMETERS:
            value = query.get(name)
            if value:
                return value, "query"
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip(), "authorization"
    if cookie_name:
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == cookie_name and value:
                return value, "cookie"
    return None, "none"


def _token_from_raw_query(query: bytes | str) -> str | None:
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    found: dict[str, str] = {}
    for pair in text.split("&"):
        name, sep, value = pair.partition("=")
        # The name is compared as sent: no percent-decoding, no '+' folding.
        if sep and name in TOKEN_QUERY_PARAMETERS and name not in found and value:
            found[name] = unquote_plus(value, encoding="latin-1")
    for name in TOKEN_QUERY_PARAMETERS:
        if found.get(name):
            return found[name]
    return None
