"""Who is calling: where a request's token comes from (``token_sources``), strict JWS parsing (``jws``),
claims (``claims``), the verified-token cache (``token_cache``), the signing keys of a JWKS or OIDC
issuer (``jwks``) and the verifier that runs them in order (``verifier``); stream tickets, their format
(``tickets``) and key set (``ticket_keys``). See docs/security.md and docs/tickets.md.
"""
