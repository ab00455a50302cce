"""Who is calling: token sources, JWS parsing, claims, the verified-token cache (``verifier``) and the
signing keys of a JWKS or OIDC issuer (``jwks``). See docs/security.md.
"""
