"""``GATEWAY_JWT_ISSUERS`` as a careless operator writes it, the tenant an issuer stands for, and issuer selection.

Pure logic; the same behaviour against real gateway processes and JWKS servers is in tests/test_issuers.py.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from gateway.auth.claims import AuthenticationError, ClaimsValidator
from gateway.auth.issuers import TrustedIssuers
from gateway.cli.diagnostics import settings_problems
from gateway.settings import AuthSettings, GatewaySettings

ISSUERS = (
    '[{"issuer": "https://idp/realms/a", "jwksUrl": "https://idp/realms/a/certs", "tenant": "tenant-a"},'
    ' {"issuer": "https://idp/realms/b"}]'
)


def test_the_list_is_read_from_json_in_camel_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_JWT_ISSUERS", ISSUERS)
    settings = GatewaySettings()
    a, b = settings.jwt_issuers
    assert (a.issuer, a.jwks_url, a.tenant) == ("https://idp/realms/a", "https://idp/realms/a/certs", "tenant-a")
    assert (b.jwks_url, b.tenant) == (None, None)
    assert b.discovery_url == "https://idp/realms/b/.well-known/openid-configuration"
    assert settings.keys_configured and settings.tenants_enforced


def test_issuers_standing_for_tenants_enforce_tenants_even_without_the_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TENANT_CLAIM", "")
    assert not GatewaySettings().tenants_enforced
    monkeypatch.setenv("GATEWAY_JWT_ISSUERS", ISSUERS)
    assert GatewaySettings().tenants_enforced


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("not json", "not JSON"),
        ('{"issuer": "https://a"}', "valid list"),
        ('[{"issuer": "https://a", "jwksUrl": "https://a/k", "discovery": "https://a/d"}]', "not both"),
        ('[{"issuer": "a"}]', "'a' is not an http(s) URL"),  # no jwksUrl: discovery under the issuer needs a URL
        ('[{"issuer": "https://a", "jwksUrl": "file:///etc/passwd"}]', "not an http(s) URL"),
        ('[{"issuer": "https://a"}, {"issuer": "https://a"}]', "listed twice"),
        ('[{"issuer": "https://a", "tenantId": "x"}]', "Extra inputs"),  # a typo is not ignored
        ('[{"issuer": "https://a", "tenant": ""}]', "at least 1 character"),
        ('[{"issuer": ""}]', "at least 1 character"),
        ('[{"jwksUrl": "https://a/k"}]', "required"),
    ],
)
def test_a_wrong_list_is_one_clear_line_with_an_example(
    monkeypatch: pytest.MonkeyPatch, value: str, fragment: str
) -> None:
    monkeypatch.setenv("GATEWAY_JWT_ISSUERS", value)
    lines = settings_problems()
    assert len(lines) == 1, lines
    assert lines[0].startswith("invalid setting GATEWAY_JWT_ISSUERS=") and fragment in lines[0], lines[0]
    assert '(e.g. [{"issuer": ' in lines[0]


@pytest.mark.parametrize("one", ["GATEWAY_JWKS_URL", "GATEWAY_OIDC_ISSUER", "GATEWAY_JWT_ISSUER"])
def test_the_list_and_the_one_issuer_form_are_not_mixed(monkeypatch: pytest.MonkeyPatch, one: str) -> None:
    monkeypatch.setenv("GATEWAY_JWT_ISSUERS", ISSUERS)
    monkeypatch.setenv(one, "https://idp/realms/a")
    lines = settings_problems()
    assert len(lines) == 1 and "set either the list or those" in lines[0], lines


def test_an_empty_list_means_the_one_issuer_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_JWT_ISSUERS", "")
    monkeypatch.setenv("GATEWAY_JWKS_URL", "https://idp/certs")
    assert settings_problems() == []
    assert GatewaySettings().jwt_issuers == []


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": "https://idp/realms/a", "sub": "s", "exp": now + 60, "iat": now}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_an_issuers_tenant_is_the_principals_tenant() -> None:
    validator = ClaimsValidator(AuthSettings(), issuer="https://idp/realms/a", tenant="tenant-a")
    assert validator.principal(_claims()).tenant == "tenant-a"
    assert validator.principal(_claims(tenant_id="tenant-a")).tenant == "tenant-a"
    for other in ("tenant-b", "TENANT-A", "tenant-a "):
        with pytest.raises(AuthenticationError) as refused:
            validator.principal(_claims(tenant_id=other))
        assert refused.value.reason == "tenant_not_of_issuer"
    for wrong_type in (123, ["tenant-a"], ""):
        with pytest.raises(AuthenticationError) as refused:
            validator.principal(_claims(tenant_id=wrong_type))
        assert refused.value.reason == "invalid_claim_tenant"
    with pytest.raises(AuthenticationError) as refused:
        validator.principal(_claims(iss="https://idp/realms/b"))
    assert refused.value.reason == "invalid_claim_iss"


async def test_the_token_iss_selects_the_issuer_and_nothing_else_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_JWT_ISSUERS", ISSUERS)
    async with httpx.AsyncClient() as http:
        issuers = TrustedIssuers.from_settings(GatewaySettings(), http)
        assert [i.name for i in issuers.issuers] == ["https://idp/realms/a", "https://idp/realms/b"]
        assert issuers.issuer_for(lambda: {"iss": "https://idp/realms/b"}).index == 1
        assert issuers.issuer_for(lambda: {"iss": "https://idp/realms/a"}).tenant == "tenant-a"
        cases: list[tuple[dict[str, Any], str]] = [
            ({}, "missing_claim_iss"),
            ({"iss": "https://idp/realms/a/"}, "invalid_claim_iss"),
            ({"iss": "https://IDP/realms/a"}, "invalid_claim_iss"),
            ({"iss": ["https://idp/realms/a"]}, "invalid_claim_iss"),
            ({"iss": 1}, "invalid_claim_iss"),
        ]
        for claims, reason in cases:
            with pytest.raises(AuthenticationError) as refused:
                issuers.issuer_for(lambda c=claims: c)  # type: ignore[misc]
            assert refused.value.reason == reason, claims
        # A key is known by its issuer: issuer B cannot answer for a thumbprint scoped to A.
        assert not issuers.has_key("0:abc") and not issuers.has_key("7:abc") and not issuers.has_key("x:abc")
        assert issuers.seconds_since_refresh() == -1.0 and not issuers.loaded
        assert len(issuers.not_loaded) == 2 and issuers.not_loaded[0].startswith("https://idp/realms/a: ")


async def test_the_one_issuer_form_is_one_issuer_without_a_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_JWKS_URL", "https://idp/certs")
    async with httpx.AsyncClient() as http:
        issuers = TrustedIssuers.from_settings(GatewaySettings(), http)
    assert len(issuers.issuers) == 1 and issuers.issuers[0].tenant is None and not issuers.several
    # Whatever the iss, the one issuer's keys; its claims check decides on iss after the signature.
    assert issuers.issuer_for(lambda: {"iss": "anything"}) is issuers.issuers[0]
