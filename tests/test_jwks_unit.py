"""``JwksCache`` logic without sockets: parsing, lifetime, single-flight, rate limit, outages, discovery.

The HTTP side is an ``httpx.MockTransport``, so each test counts exactly the requests the cache made.
The same behaviours are shown end to end, against a real JWKS server, in ``test_gateway_auth``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from gateway.auth.claims import AuthenticationError
from gateway.auth.jwks import JwksCache, _parse_keys
from gateway.settings import GatewaySettings
from tests.gateway_support import SigningKey, ec_key, ed_key, rsa_key
from tests.support import wait_until

JWKS_URL = "http://idp.test/jwks.json"
ISSUER = "http://idp.test"


class FakeIdp:
    """A JWKS (and OpenID configuration) endpoint that counts requests and can be slowed or failed."""

    def __init__(self, keys: list[SigningKey], cache_control: str | None = "max-age=300") -> None:
        self.keys = keys
        self.cache_control = cache_control
        self.jwks_requests = 0
        self.discovery_requests = 0
        self.status = 200
        self.delay = 0.0
        self.document: Any = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            self.discovery_requests += 1
            return httpx.Response(200, json={"issuer": ISSUER, "jwks_uri": JWKS_URL})
        self.jwks_requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return httpx.Response(self.status)
        document = (
            self.document if self.document is not None else {"keys": [k.as_dict(private=False) for k in self.keys]}
        )
        headers = {"cache-control": self.cache_control} if self.cache_control else {}
        return httpx.Response(200, json=document, headers=headers)


def make_settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {"jwks_url": JWKS_URL, "jwks_min_refresh": 30.0}
    values.update(overrides)
    return GatewaySettings(**values)


@asynccontextmanager
async def cache_for(idp: FakeIdp, **overrides: Any) -> AsyncIterator[JwksCache]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(idp.handle)) as client:
        yield JwksCache(make_settings(**overrides), client)


# --------------------------------------------------------------------------------------------------
# Parsing


def test_parse_keeps_public_signing_keys_only() -> None:
    rsa, ec, ed = rsa_key("rsa"), ec_key("ec"), ed_key("ed")
    private_rsa = rsa.as_dict(private=True)
    document = {
        "keys": [
            private_rsa,  # private parts are dropped, the public key is kept
            ec.as_dict(private=False),
            ed.as_dict(private=False),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},  # HMAC secrets never verify anything
            {**rsa_key("enc").as_dict(private=False), "use": "enc"},  # encryption key
            {"kty": "RSA", "kid": "broken"},  # unusable entries do not hide the usable ones
            "not-a-key",
        ]
    }
    keys = _parse_keys(document)
    assert [k.kid for k in keys] == ["rsa", "ec", "ed"]
    assert all(not k.is_private for k in keys)


@pytest.mark.parametrize(
    "document",
    [{"keys": []}, {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, {"nokeys": []}, [], "jwks", None],
    ids=["empty", "only-hmac", "no-keys-member", "list", "string", "null"],
)
def test_parse_refuses_a_document_without_usable_keys(document: Any) -> None:
    with pytest.raises(ValueError):
        _parse_keys(document)


# --------------------------------------------------------------------------------------------------
# Lifetime


@pytest.mark.parametrize(
    ("cache_control", "expected"),
    [
        ("max-age=600", 600.0),
        ("public, max-age=120, must-revalidate", 120.0),
        ("MAX-AGE=90", 90.0),
        ("max-age=5", 60.0),  # clamped up to jwks_cache_min_ttl
        ("max-age=9999999", 86_400.0),  # clamped down to jwks_cache_max_ttl
        ("no-cache", 300.0),  # no max-age: jwks_cache_ttl
        ("", 300.0),
    ],
)
async def test_lifetime_follows_max_age_within_bounds(cache_control: str, expected: float) -> None:
    async with cache_for(FakeIdp([rsa_key("rsa")])) as cache:
        assert cache._ttl(cache_control) == expected


# --------------------------------------------------------------------------------------------------
# Selection


async def test_key_selection_by_kid_and_key_type() -> None:
    rsa, ec = rsa_key("rsa"), ec_key("ec")
    idp = FakeIdp([rsa, ec])
    async with cache_for(idp) as cache:
        await cache.load()
        assert cache.loaded
        assert cache_kid(await cache.key_for("rsa", "RS256")) == "rsa"
        assert cache_kid(await cache.key_for("rsa", "PS256")) == "rsa"
        assert cache_kid(await cache.key_for("ec", "ES256")) == "ec"
        # The kid exists but is not a key of the algorithm's type: refused, and no refetch for it.
        assert await cache.key_for("rsa", "ES256") is None
        assert await cache.key_for("ec", "EdDSA") is None
        # Without a kid the key is only chosen when the set holds exactly one.
        assert await cache.key_for(None, "RS256") is None
        assert idp.jwks_requests == 1


async def test_without_kid_the_only_key_is_used() -> None:
    async with cache_for(FakeIdp([ed_key("ed")])) as cache:
        await cache.load()
        assert cache_kid(await cache.key_for(None, "EdDSA")) == "ed"
        assert await cache.key_for(None, "RS256") is None


def cache_kid(key: Any) -> str | None:
    return None if key is None else str(key.kid)


# --------------------------------------------------------------------------------------------------
# Unknown kids: single-flight and the minimum refresh interval


async def test_concurrent_unknown_kids_share_one_fetch() -> None:
    idp = FakeIdp([rsa_key("rsa")])
    async with cache_for(idp, jwks_min_refresh=0.0) as cache:
        await cache.load()
        idp.delay = 0.2
        results = await asyncio.gather(*(cache.key_for(f"forged-{n}", "RS256") for n in range(50)))
        assert results == [None] * 50
        assert idp.jwks_requests == 2  # the load, then one shared refetch


async def test_unknown_kids_refetch_at_most_once_per_min_refresh() -> None:
    idp = FakeIdp([rsa_key("rsa")])
    async with cache_for(idp, jwks_min_refresh=30.0, jwks_max_waiting=0) as cache:
        await cache.load()
        for n in range(20):
            assert await cache.key_for(f"forged-{n}", "RS256") is None
        assert idp.jwks_requests == 1


async def test_a_new_kid_inside_the_min_refresh_waits_for_one_deferred_refetch() -> None:
    old, new = rsa_key("old"), rsa_key("new")
    idp = FakeIdp([old])
    async with cache_for(idp, jwks_min_refresh=0.3) as cache:
        await cache.load()
        idp.keys.append(new)  # rotated right after our fetch: the limit forbids a refetch for 0.3 s
        found = await asyncio.gather(*(cache.key_for("new", "RS256") for _ in range(20)))
        assert [cache_kid(key) for key in found] == ["new"] * 20
        assert idp.jwks_requests == 2  # the load, then one deferred refetch shared by all twenty
        assert cache.waiting == 0


async def test_a_refresh_that_brings_the_kid_ends_the_wait_without_another_fetch() -> None:
    old, new = rsa_key("old"), rsa_key("new")
    idp = FakeIdp([old])
    async with cache_for(idp, jwks_min_refresh=30.0) as cache:
        await cache.load()
        waiter = asyncio.create_task(cache.key_for("new", "RS256"))
        await wait_until(lambda: cache.waiting == 1, 5, "the lookup never waited")
        idp.keys.append(new)
        await cache.load()  # the set's own refresh (its max-age ran out), long before the deferred refetch
        assert cache_kid(await asyncio.wait_for(waiter, 5)) == "new"
        deferred = cache._deferred
        assert deferred is not None
        await asyncio.wait_for(deferred, 5)  # it ended: the refresh it waited for had happened
        assert idp.jwks_requests == 2  # the load, the refresh: the deferred refetch did not fetch


async def test_waiting_for_the_deferred_refetch_is_bounded() -> None:
    idp = FakeIdp([rsa_key("rsa")])
    # The lookups wait only inside the min refresh since the load's start (which includes a parse in a thread):
    # 1 s, so that a starved loop or thread cannot let them refetch instead.
    async with cache_for(idp, jwks_min_refresh=1.0, jwks_max_waiting=5) as cache:
        await cache.load()
        lookups = [asyncio.create_task(cache.key_for(f"forged-{n}", "RS256")) for n in range(20)]
        await asyncio.sleep(0)  # each lookup ran up to its wait, or to its refusal
        assert cache.waiting == 5
        assert sum(lookup.done() for lookup in lookups) == 15
        assert await asyncio.gather(*lookups) == [None] * 20
        assert idp.jwks_requests == 2
        assert cache.waiting == 0


async def test_a_token_refused_by_its_claims_does_not_wait() -> None:
    idp = FakeIdp([rsa_key("rsa")])
    async with cache_for(idp, jwks_min_refresh=30.0) as cache:
        await cache.load()

        def expired() -> None:
            raise AuthenticationError("expired")

        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(cache.key_for("new", "RS256", expired), 5)
        assert cache.waiting == 0 and idp.jwks_requests == 1


async def test_an_unknown_kid_waits_after_one_failed_fetch_but_not_while_the_endpoint_keeps_failing() -> None:
    old, new = rsa_key("old"), rsa_key("new")
    idp = FakeIdp([old])
    async with cache_for(idp, jwks_min_refresh=0.3) as cache:
        await cache.load()
        idp.status = 503
        await cache.load()  # one failed fetch: a blip
        idp.status = 200
        idp.keys.append(new)
        assert cache_kid(await asyncio.wait_for(cache.key_for("new", "RS256"), 5)) == "new"

        idp.status = 503
        await cache.load()
        await cache.load()  # two in a row: the endpoint is down
        fetches = idp.jwks_requests
        assert await asyncio.wait_for(cache.key_for("newer", "RS256"), 5) is None
        assert cache.waiting == 0 and idp.jwks_requests == fetches  # refused at once, nothing fetched


async def test_a_new_kid_is_fetched_once_the_min_refresh_passed() -> None:
    old, new = rsa_key("old"), rsa_key("new")
    idp = FakeIdp([old])
    async with cache_for(idp, jwks_min_refresh=0.1) as cache:
        await cache.load()
        idp.keys.append(new)
        await asyncio.sleep(0.15)
        assert cache_kid(await cache.key_for("new", "RS256")) == "new"
        assert cache_kid(await cache.key_for("old", "RS256")) == "old"
        assert idp.jwks_requests == 2


# --------------------------------------------------------------------------------------------------
# Outages


async def test_failed_refresh_keeps_the_cached_keys() -> None:
    idp = FakeIdp([rsa_key("rsa")], cache_control="max-age=0")
    async with cache_for(idp, jwks_cache_min_ttl=0.0, jwks_min_refresh=0.0) as cache:
        await cache.load()
        idp.status = 503
        # Expired: a use starts a background refresh that fails; the cached key keeps serving.
        assert cache_kid(await cache.key_for("rsa", "RS256")) == "rsa"
        await wait_until(lambda: cache.last_error is not None, 10, "the background refresh never ran")
        for _ in range(3):
            assert cache_kid(await cache.key_for("rsa", "RS256")) == "rsa"
        assert idp.jwks_requests > 1
        assert cache.last_error is not None and "503" in cache.last_error
        assert cache.loaded

        idp.document = {"keys": []}  # a 200 with nothing usable does not wipe the keys either
        idp.status = 200
        await asyncio.sleep(1.05)  # a failed fetch is retried no sooner than after 1 s (only a lower bound)
        assert cache_kid(await cache.key_for("rsa", "RS256")) == "rsa"
        await wait_until(
            lambda: "no usable signing key" in (cache.last_error or ""), 10, "the second refresh never finished"
        )
        assert cache_kid(await cache.key_for("rsa", "RS256")) == "rsa"


async def test_unreachable_endpoint_at_start_is_retried_on_use_but_rate_limited() -> None:
    idp = FakeIdp([rsa_key("rsa")])
    idp.status = 500
    async with cache_for(idp, jwks_min_refresh=1.0) as cache:
        await cache.load()
        assert not cache.loaded and cache.last_error is not None
        for _ in range(10):
            assert await cache.key_for("rsa", "RS256") is None
        # The load, then the one deferred refetch the first lookup waited for (a single failure may be a
        # blip); after that second failure in a row the other lookups were refused at once.
        assert idp.jwks_requests == 2
        idp.status = 200
        await asyncio.sleep(1.05)
        assert cache_kid(await cache.key_for("rsa", "RS256")) == "rsa"
        assert idp.jwks_requests == 3


# --------------------------------------------------------------------------------------------------
# OpenID discovery


async def test_discovery_finds_the_jwks_once() -> None:
    idp = FakeIdp([ec_key("ec")])
    async with cache_for(idp, jwks_url=None, oidc_issuer=ISSUER + "/", jwks_min_refresh=0.0) as cache:
        await cache.load()
        assert cache_kid(await cache.key_for("ec", "ES256")) == "ec"
        assert await cache.key_for("unknown", "ES256") is None  # refetches the JWKS, not the discovery document
        assert (idp.discovery_requests, idp.jwks_requests) == (1, 2)
