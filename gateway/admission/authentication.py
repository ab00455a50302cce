"""The one authentication step of every session route: a stream ticket, or an identity-provider token.

``?ticket=`` (spelt plainly, like the token names) is a stream ticket, checked only by the ticket codec
(``gateway.auth.tickets``); when it is present nothing else is read, and the principal it gives sees
its one session only (``gateway.auth.access``). Otherwise a token (query, ``Authorization: Bearer`` or
the cookie) is checked by the identity-provider verifier, which refuses anything shaped like a
ticket. Minting a ticket takes the ``Authorization`` header only (``bearer``). See docs/tickets.md and
docs/security.md (Tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import unquote_plus

from prometheus_client import Counter

from gateway import metrics
from gateway.auth.claims import AuthenticationError, Principal
from gateway.auth.tickets import TicketCodec
from gateway.auth.token_sources import locate_token
from gateway.auth.verifier import TokenVerifier
from gateway.edge.cors import CorsPolicy
from gateway.edge.errors import (
    CROSS_ORIGIN_COOKIE,
    INVALID_TOKEN,
    KEYS_NOT_LOADED,
    MISSING_TOKEN,
    MISSING_TOKEN_HEADER,
    QUERY_TOKEN_REFUSED,
    StreamRefused,
)
from gateway.settings import AuthSettings

TICKET_PARAMETER = "ticket"
KEY_REASONS = frozenset({"unknown_key", "no_kid"})  # refusals that mean "no key for it", not a bad token

# Kept here, not in gateway.metrics, while that module is being reworked; same registry.
TICKETS_REFUSED = Counter(
    "gateway_tickets_refused_total",
    "Stream tickets presented (?ticket=) and refused, by reason: malformed, unknown_key (retired), bad_signature, "
    "expired, too_large, tickets_off.",
    ["reason"],
)


def find_ticket(query: bytes | str) -> str | None:
    """``?ticket=`` as sent (the name not percent-decoded), or None; the first one wins."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    for pair in text.split("&"):
        name, separator, value = pair.partition("=")
        if separator and name == TICKET_PARAMETER and value:
            return unquote_plus(value, encoding="latin-1")
    return None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The ``Authorization: Bearer`` credentials, or None."""
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() or None if scheme.lower() == "bearer" else None


def invalid(reason: str, fields: Mapping[str, object] | None = None) -> StreamRefused:
    return StreamRefused(
        401, INVALID_TOKEN, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, reason=reason, fields=fields
    )


def missing(message: str = MISSING_TOKEN) -> StreamRefused:
    metrics.AUTH_FAILURES.labels("missing").inc()
    return StreamRefused(401, message, {"WWW-Authenticate": "Bearer"}, reason="missing_token")


class Authenticator:
    """Who a request is: ``authenticate`` for reading a session, ``bearer`` for minting a ticket."""

    def __init__(
        self,
        settings: AuthSettings,
        verifier: TokenVerifier,
        tickets: TicketCodec | None,
        cors: CorsPolicy,
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._tickets = tickets
        self._cors = cors

    async def authenticate(self, query: bytes, headers: dict[str, str]) -> Principal:
        """A session route's caller: a ticket's (bound to its session) or a verified token's principal."""
        if b"ticket=" in query:
            ticket = find_ticket(query)
            if ticket:
                return self.ticket(ticket)
        token, source = locate_token(query, headers, self._settings.token_cookie)
        query_allowed = self._settings.allow_query_tokens
        if not token:
            raise missing(MISSING_TOKEN if query_allowed else MISSING_TOKEN_HEADER)
        if source == "query" and not query_allowed:
            # Refused even with a header as well: a token in a URL is in some log already, its sender should know.
            metrics.AUTH_FAILURES.labels("query_token_refused").inc()
            challenge = 'Bearer error="invalid_request", error_description="tokens in the URL are not accepted"'
            raise StreamRefused(401, QUERY_TOKEN_REFUSED, {"WWW-Authenticate": challenge}, reason="query_token_refused")
        if source == "cookie" and not self._cors.sends_credentials(headers.get("origin"), headers.get("host")):
            # A browser sends the cookie with any page's request (SameSite=None): a page of an origin that
            # may not read the stream must not hold streams (and use up limits) on the cookie owner's behalf.
            metrics.AUTH_FAILURES.labels("cross_origin_cookie").inc()
            raise StreamRefused(403, CROSS_ORIGIN_COOKIE, reason="cross_origin_cookie")
        return await self.token(token)

    async def bearer(self, headers: dict[str, str]) -> Principal:
        """The ``Authorization: Bearer`` token's principal: no query, no cookie, no ticket (see docs/tickets.md)."""
        token = bearer_token(headers)
        if not token:
            raise missing()
        return await self.token(token)

    def ticket(self, ticket: str) -> Principal:
        if self._tickets is None:
            TICKETS_REFUSED.labels("tickets_off").inc()
            metrics.AUTH_FAILURES.labels("tickets_off").inc()
            raise invalid("tickets_off")
        try:
            grant = self._tickets.verify(ticket)
        except AuthenticationError as error:
            TICKETS_REFUSED.labels(error.reason).inc()
            metrics.AUTH_FAILURES.labels(f"ticket_{error.reason}").inc()
            raise invalid(f"ticket_{error.reason}") from None
        return grant.principal()  # its scope was checked when it was issued

    async def token(self, token: str) -> Principal:
        try:
            principal = await self._verifier.verify(token)
        except AuthenticationError as error:
            if error.reason in KEY_REASONS and not error.keys_loaded:
                # The token's issuer never had a key set loaded (a wrong GATEWAY_JWKS_URL, the identity provider down at
                # start): the token is not known to be bad, the gateway cannot judge it yet.
                metrics.AUTH_FAILURES.labels("keys_not_loaded").inc()
                retry = str(max(1, math.ceil(self._settings.jwks_min_refresh)))
                raise StreamRefused(503, KEYS_NOT_LOADED, {"Retry-After": retry}, reason="keys_not_loaded") from None
            metrics.AUTH_FAILURES.labels(error.reason).inc()
            raise invalid(error.reason, error.fields) from None
        required = self._settings.required_scope
        if required and required not in principal.scopes:
            metrics.AUTH_FAILURES.labels("insufficient_scope").inc()
            raise StreamRefused(
                403,
                "Insufficient scope",
                {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{required}"'},
                reason="insufficient_scope",
            )
        return principal
