"""``GET /session/{id}/events``: who may open a stream, against real processes only.

Every test talks over a socket to ``session-gateway serve`` subprocesses (uvicorn), which verify
tokens against a real JWKS server on another port and read sessions from the real broker. The
gateways of this module are started once, in parallel, and share one topic:

- ``main``: the defaults, plus a token cookie and a 1 s unknown-session wait;
- ``scoped``: ``GATEWAY_REQUIRED_SCOPE``;
- ``oidc``: keys and issuer from OpenID discovery only;
- ``flood``: ``GATEWAY_JWKS_MIN_REFRESH=4`` and ``GATEWAY_JWKS_MAX_WAITING=20`` against a JWKS server of
  its own, and a 4 s leeway;
- ``outage``: a 1 s JWKS lifetime against a JWKS server of its own that the tests fail and stop.

Refusals must look exactly like the NestJS reference's (``{"statusCode", "message", "error"}``).

The tests open and drop hundreds of streams on one session with one subject within seconds, and a
dropped stream counts against the per-session and per-subject limits until the server notices the
hang-up; the limits are raised here so that no answer depends on that timing (limits are not what
this module tests).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from joserfc import jwt

from tests.gateway_support import (
    AUDIENCE,
    ISSUER,
    GatewayProcess,
    JwksServer,
    SigningKey,
    SseEvent,
    ec_key,
    ed_key,
    gateway_world,
    mint,
    rsa_key,
    sse,
)
from tests.kafka_support import event_bytes
from tests.support import wait_until

pytestmark = pytest.mark.timeout(90)

TENANT_A = "tenant-a"
TENANT_B = "tenant-b"
COOKIE = "sess_token"
SCOPE = "sessions:read"
UNKNOWN_SESSION_WAIT = 1.0
FLOOD_LEEWAY = 4
FLOOD_MIN_REFRESH = 4
FLOOD_MAX_WAITING = 20
NO_LIMITS = {"GATEWAY_MAX_CONNECTIONS_PER_SESSION": "100000", "GATEWAY_MAX_CONNECTIONS_PER_SUBJECT": "100000"}
MISSING_TOKEN = "Authentication required. Provide a valid JWT token via the 'token' query parameter."
INVALID_TOKEN = "Invalid or expired token"
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'


# --------------------------------------------------------------------------------------------------
# World: keys, JWKS servers, sessions on the broker, gateways


@dataclass(frozen=True)
class Keys:
    rsa: SigningKey
    rsa2: SigningKey
    ec: SigningKey
    ed: SigningKey
    attacker_rsa: SigningKey
    attacker_ec: SigningKey


@dataclass
class World:
    keys: Keys
    jwks: JwksServer
    flood_jwks: JwksServer
    outage_jwks: JwksServer
    main: GatewayProcess
    scoped: GatewayProcess
    oidc: GatewayProcess
    flood: GatewayProcess
    outage: GatewayProcess
    session_a: str
    session_a2: str
    session_b: str


@dataclass(frozen=True)
class Answer:
    """What a client saw: the status and headers, and the error body or the stream's first event."""

    status: int
    headers: httpx.Headers
    body: bytes
    first: SseEvent | None

    def json(self) -> Any:
        return json.loads(self.body)


def _new_session(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


@pytest_asyncio.fixture(scope="module")
async def world(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    keys = Keys(
        rsa=rsa_key("rsa-1"),
        rsa2=rsa_key("rsa-2"),
        ec=ec_key("ec-1"),
        ed=ed_key("ed-1"),
        attacker_rsa=rsa_key("attacker-rsa"),
        attacker_ec=ec_key("attacker-ec"),
    )
    jwks = JwksServer(keys=[keys.rsa, keys.rsa2, keys.ec, keys.ed]).start()
    flood_jwks = JwksServer(keys=[keys.rsa, keys.ec]).start()
    outage_jwks = JwksServer(keys=[keys.rsa, keys.ec], cache_control="max-age=1").start()
    session_a, session_a2, session_b = _new_session("a"), _new_session("a2"), _new_session("b")
    try:
        async with gateway_world(
            kafka_bootstrap,
            tmp_path_factory,
            "gateway-auth",
            partitions=3,
            records=[
                (session_a.encode(), event_bytes(session_a, TENANT_A, "active")),
                (session_a2.encode(), event_bytes(session_a2, TENANT_A, "active")),
                (session_b.encode(), event_bytes(session_b, TENANT_B, "active")),
            ],
            keys=jwks.keys,
            jwks=jwks,
            common=NO_LIMITS,
            gateways={
                "main": {
                    "GATEWAY_TOKEN_COOKIE": COOKIE,
                    "GATEWAY_UNKNOWN_SESSION_WAIT": str(UNKNOWN_SESSION_WAIT),
                },
                "scoped": {"GATEWAY_REQUIRED_SCOPE": SCOPE},
                # Keys and issuer from OpenID discovery only.
                "oidc": {"GATEWAY_OIDC_ISSUER": jwks.issuer_url, "GATEWAY_JWKS_URL": None, "GATEWAY_JWT_ISSUER": None},
                "flood": {
                    "GATEWAY_JWKS_URL": flood_jwks.url,
                    "GATEWAY_JWKS_MIN_REFRESH": str(FLOOD_MIN_REFRESH),
                    "GATEWAY_JWKS_MAX_WAITING": str(FLOOD_MAX_WAITING),
                    "GATEWAY_JWT_LEEWAY": str(FLOOD_LEEWAY),
                },
                "outage": {"GATEWAY_JWKS_URL": outage_jwks.url, "GATEWAY_JWKS_CACHE_MIN_TTL": "0"},
            },
        ) as made:
            g = made.gateways
            yield World(
                keys,
                made.jwks,
                flood_jwks,
                outage_jwks,
                g["main"],
                g["scoped"],
                g["oidc"],
                g["flood"],
                g["outage"],
                session_a,
                session_a2,
                session_b,
            )
    finally:
        for server in (jwks, flood_jwks, outage_jwks):
            server.stop()


async def ask(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    session_id: str,
    *,
    token: str | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """Opens the stream; on 200 reads the first event and hangs up, otherwise reads the error body."""
    query = dict(params or {})
    if token is not None:
        query["token"] = token
    async with sse(client, f"{gateway.url}/session/{session_id}/events", params=query, headers=headers) as stream:
        if stream.status == 200:
            return Answer(200, stream.headers, b"", await stream.next_event(10.0))
        return Answer(stream.status, stream.headers, stream.response.content, None)


def nest_error(status: int, message: str) -> dict[str, Any]:
    phrases = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 503: "Service Unavailable"}
    return {"statusCode": status, "message": message, "error": phrases[status]}


def assert_streams(answer: Answer, session_id: str, status: str = "active") -> None:
    assert answer.status == 200, f"expected a stream, got {answer.status} {answer.body!r}"
    assert answer.first is not None and answer.first.event == "message"
    assert answer.first.json()["id"] == session_id
    assert answer.first.json()["status"] == status


def assert_invalid_token(answer: Answer) -> None:
    assert answer.status == 401, f"expected 401, got {answer.status} {answer.body!r}"
    assert answer.json() == nest_error(401, INVALID_TOKEN)
    assert answer.headers["www-authenticate"] == INVALID_TOKEN_CHALLENGE
    assert answer.headers["content-type"].startswith("application/json")


def assert_not_found(answer: Answer, session_id: str) -> None:
    assert answer.status == 404, f"expected 404, got {answer.status} {answer.body!r}"
    assert answer.json() == nest_error(404, f"Session {session_id} not found")


# --------------------------------------------------------------------------------------------------
# Hand-made tokens


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def good_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "tenant_id": TENANT_A,
    }
    claims.update(overrides)
    return claims


def sign(key: SigningKey, claims: dict[str, Any], alg: str = "RS256", kid: str | None = None) -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid if kid is not None else key.kid}
    return jwt.encode(header, claims, key, algorithms=[alg])


def unsigned_none(keys: Keys) -> str:
    header = b64url_json({"alg": "none", "typ": "JWT", "kid": keys.rsa.kid})
    return f"{header}.{b64url_json(good_claims())}."


def hs256_with_public_key(keys: Keys) -> str:
    """The classic algorithm confusion: HMAC keyed with the bytes of the RSA public key the server trusts."""
    secret = keys.rsa.as_pem(private=False)
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT', 'kid': keys.rsa.kid})}.{b64url_json(good_claims())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def tampered_signature(keys: Keys) -> str:
    header, payload, signature = mint(keys.rsa).split(".")
    middle = len(signature) // 2
    replacement = "A" if signature[middle] != "A" else "B"
    return f"{header}.{payload}.{signature[:middle]}{replacement}{signature[middle + 1 :]}"


def tampered_payload(keys: Keys) -> str:
    header, _, signature = mint(keys.rsa, tenant=TENANT_B).split(".")
    return f"{header}.{b64url_json(good_claims())}.{signature}"


def non_string_kid(keys: Keys) -> str:
    """Correctly RS256-signed by a trusted key, but with ``"kid": 7`` (joserfc refuses to make one)."""
    signing_input = f"{b64url_json({'alg': 'RS256', 'typ': 'JWT', 'kid': 7})}.{b64url_json(good_claims())}"
    private = keys.rsa.private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def _now() -> int:
    return int(time.time())


def signed_raw(key: SigningKey, header: bytes | dict[str, Any], payload: bytes | dict[str, Any]) -> str:
    """RS256 over the exact bytes given (joserfc refuses to produce most of these), signed by a trusted key."""
    header_bytes = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    payload_bytes = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
    signing_input = f"{b64url(header_bytes)}.{b64url(payload_bytes)}"
    private = key.private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def rs256_header(keys: Keys, **extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "JWT", "kid": keys.rsa.kid, **extra}


def with_claims(**overrides: Any) -> Callable[[Keys], str]:
    """A correctly signed token whose claims differ from good ones by ``overrides`` (None removes nothing)."""
    return lambda k: signed_raw(k.rsa, rs256_header(k), good_claims(**overrides))


def with_raw_claims(text: str) -> Callable[[Keys], str]:
    """A correctly signed token whose claims are the JSON text given, with ``{now}`` filled in."""
    return lambda k: signed_raw(k.rsa, rs256_header(k), text.replace("{now}", str(_now())).encode())


def with_raw_header(header: bytes) -> Callable[[Keys], str]:
    return lambda k: signed_raw(k.rsa, header, good_claims())


def embedded_jwk(keys: Keys) -> str:
    """Signed by the attacker, who puts their public key in ``jwk`` and names the trusted kid."""
    header = rs256_header(keys, jwk=keys.attacker_rsa.as_dict(private=False))
    return signed_raw(keys.attacker_rsa, header, good_claims())


def jku_to_attacker(keys: Keys) -> str:
    """Signed by the attacker, whose JWKS URL is in ``jku`` and whose kid is in ``kid``."""
    header = {"alg": "RS256", "kid": keys.attacker_rsa.kid, "jku": "http://127.0.0.1:9/attacker-jwks.json"}
    return signed_raw(keys.attacker_rsa, header, good_claims())


def nested_jwt(keys: Keys) -> str:
    """A valid token wrapped as the payload of another signed token (``cty: JWT``)."""
    inner = mint(keys.rsa)
    return signed_raw(keys.rsa, rs256_header(keys, cty="JWT"), inner.encode())


_CLAIMS_TAIL = '"iss":"' + ISSUER + '","aud":"' + AUDIENCE + '","sub":"user-1","tenant_id":"tenant-a"'


FORGERIES: dict[str, Callable[[Keys], str]] = {
    "alg-none": unsigned_none,
    "hs256-signed-with-rsa-public-key": hs256_with_public_key,
    "wrong-issuer": lambda k: mint(k.rsa, iss="https://evil.test"),
    "no-issuer": lambda k: mint(k.rsa, iss=None),
    "wrong-audience": lambda k: mint(k.rsa, aud="someone-else"),
    "no-audience": lambda k: mint(k.rsa, aud=None),
    "expired-beyond-leeway": lambda k: mint(k.rsa, ttl=-120),
    "no-exp": lambda k: sign(k.rsa, {c: v for c, v in good_claims().items() if c != "exp"}),
    "nbf-in-future-beyond-leeway": lambda k: mint(k.rsa, extra={"nbf": _now() + 120}),
    "iat-in-future-beyond-leeway": lambda k: mint(k.rsa, extra={"iat": _now() + 120}),
    "no-kid-while-jwks-holds-several-keys": lambda k: mint(k.rsa, kid=None),
    "garbage": lambda k: "garbage",
    "three-garbage-parts": lambda k: "abc.def.ghi",
    "not-ascii": lambda k: "ëyJ.ëyJ.ëyJ",
    "kid-spoofing-rsa": lambda k: mint(k.attacker_rsa, kid=str(k.rsa.kid)),
    "kid-spoofing-ec": lambda k: mint(k.attacker_ec, alg="ES256", kid=str(k.ec.kid)),
    "unknown-key-unknown-kid": lambda k: mint(k.attacker_rsa),
    "one-signature-character-changed": tampered_signature,
    "payload-swapped-under-signature": tampered_payload,
    "algorithm-not-allowed-RS384": lambda k: mint(k.rsa, alg="RS384"),
    "alg-does-not-match-kid-key-type": lambda k: mint(k.ec, alg="ES256", kid=str(k.rsa.kid)),
    "non-string-kid": non_string_kid,
    # Claims of the wrong type, never coerced (issue 11): each correctly signed by a trusted key.
    "tenant-claim-number": with_claims(tenant_id=123),
    "tenant-claim-true": with_claims(tenant_id=True),
    "tenant-claim-list": with_claims(tenant_id=["tenant-a"]),
    "tenant-claim-empty": with_claims(tenant_id=""),
    "tenant-claim-null": with_claims(tenant_id=None),
    "session-claim-null": with_claims(session_id=None),
    "session-claim-number": with_claims(session_id=7),
    "session-claim-list": with_claims(session_id=["a"]),
    "session-claim-empty": with_claims(session_id=""),
    "sub-number": with_claims(sub=42),
    "sub-object": with_claims(sub={"id": "user-1"}),
    "exp-10**400": with_raw_claims('{"exp":1' + "0" * 400 + "," + _CLAIMS_TAIL + "}"),
    "exp-1e300": with_claims(exp=1e300),
    "exp-1e400-infinite": with_raw_claims('{"exp":1e400,' + _CLAIMS_TAIL + "}"),
    "exp-NaN": with_raw_claims('{"exp":NaN,' + _CLAIMS_TAIL + "}"),
    "exp-true": with_claims(exp=True),
    "exp-string": with_claims(exp="9999999999"),
    "exp-negative": with_claims(exp=-1),
    "nbf-10**400": with_raw_claims('{"exp":{now}0,"nbf":1' + "0" * 400 + "," + _CLAIMS_TAIL + "}"),
    "nbf-true": with_claims(nbf=True),
    "iat-1e300": with_claims(iat=1e300),
    "iat-list": with_claims(iat=[1]),
    "aud-list-with-a-number": with_claims(aud=[AUDIENCE, 1]),
    "iss-number": with_claims(iss=1),
    "duplicate-tenant-claim": with_raw_claims('{"exp":{now}0,"tenant_id":"tenant-b",' + _CLAIMS_TAIL + "}"),
    "claims-json-list": lambda k: signed_raw(k.rsa, rs256_header(k), b"[1,2]"),
    # Malformed protected headers: never a 500 (issue 11).
    "header-json-list": with_raw_header(b'["RS256"]'),
    "header-json-string": with_raw_header(b'"RS256"'),
    "header-json-number": with_raw_header(b"256"),
    "header-json-null": with_raw_header(b"null"),
    "header-invalid-json": with_raw_header(b'{"alg":"RS256",'),
    "header-not-utf8": with_raw_header(b'{"alg":"RS256","kid":"\xff"}'),
    "header-deeply-nested": with_raw_header(b'{"alg":"RS256","x":' + b"[" * 2000 + b"]" * 2000 + b"}"),
    "header-duplicate-alg": with_raw_header(b'{"alg":"none","alg":"RS256","kid":"rsa-1"}'),
    "header-leading-whitespace": lambda k: signed_raw(k.rsa, b' {"alg":"RS256","kid":"rsa-1"}', good_claims()),
    # Critical extensions this gateway does not implement (RFC 7515 4.1.11, RFC 7797).
    "crit-unknown-extension": lambda k: signed_raw(
        k.rsa, rs256_header(k, crit=["x-ext"], **{"x-ext": 1}), good_claims()
    ),
    "crit-registered-name": lambda k: signed_raw(k.rsa, rs256_header(k, crit=["kid"]), good_claims()),
    "b64-false-unencoded-payload": lambda k: signed_raw(k.rsa, rs256_header(k, b64=False, crit=["b64"]), good_claims()),
    # Keys named by the token itself are never used.
    "embedded-jwk-of-the-attacker": embedded_jwk,
    "jku-to-the-attacker": jku_to_attacker,
    "nested-jwt": nested_jwt,
    "jwe-five-segments": lambda k: "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.a.b.c.d",
}


# --------------------------------------------------------------------------------------------------
# Missing token


async def test_no_token_is_401_with_the_nestjs_body(world: World, client: httpx.AsyncClient) -> None:
    answer = await ask(client, world.main, world.session_a)
    assert answer.status == 401
    assert answer.json() == nest_error(401, MISSING_TOKEN)
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"token": ""}, {}),
        ({"access_token": ""}, {}),
        ({}, {"authorization": "Bearer"}),
        ({}, {"authorization": "Basic dXNlcjpwYXNz"}),
        ({}, {"cookie": "other=value"}),
    ],
    ids=["empty-token", "empty-access-token", "empty-bearer", "basic-auth", "unrelated-cookie"],
)
async def test_empty_or_foreign_credentials_count_as_no_token(
    world: World, client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str]
) -> None:
    answer = await ask(client, world.main, world.session_a, params=params, headers=headers)
    assert answer.status == 401
    assert answer.json() == nest_error(401, MISSING_TOKEN)


async def test_cookie_is_ignored_when_no_cookie_name_is_configured(world: World, client: httpx.AsyncClient) -> None:
    token = mint(world.keys.rsa, extra={"scope": SCOPE})
    answer = await ask(client, world.scoped, world.session_a, headers={"cookie": f"{COOKIE}={token}"})
    assert answer.status == 401
    assert answer.json() == nest_error(401, MISSING_TOKEN)


# --------------------------------------------------------------------------------------------------
# Token sources and precedence


async def test_token_query_parameter(world: World, client: httpx.AsyncClient) -> None:
    assert_streams(await ask(client, world.main, world.session_a, token=mint(world.keys.rsa)), world.session_a)


async def test_access_token_query_parameter(world: World, client: httpx.AsyncClient) -> None:
    answer = await ask(client, world.main, world.session_a, params={"access_token": mint(world.keys.rsa)})
    assert_streams(answer, world.session_a)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_authorization_bearer_header(world: World, client: httpx.AsyncClient, scheme: str) -> None:
    headers = {"authorization": f"{scheme} {mint(world.keys.rsa)}"}
    assert_streams(await ask(client, world.main, world.session_a, headers=headers), world.session_a)


@pytest.mark.parametrize("cookie", ["{name}={token}", "theme=dark; {name}={token}; lang=en"], ids=["alone", "among"])
async def test_configured_cookie(world: World, client: httpx.AsyncClient, cookie: str) -> None:
    headers = {"cookie": cookie.format(name=COOKIE, token=mint(world.keys.rsa))}
    assert_streams(await ask(client, world.main, world.session_a, headers=headers), world.session_a)


@pytest.mark.parametrize(
    ("winner", "loser"),
    [
        ("token", "bearer"),
        ("token", "access_token"),
        ("access_token", "bearer"),
        ("access_token", "cookie"),
        ("bearer", "cookie"),
    ],
)
async def test_first_token_found_wins(world: World, client: httpx.AsyncClient, winner: str, loser: str) -> None:
    """token, then access_token, then Authorization: Bearer, then the cookie; a later valid token never rescues."""

    def place(source: str, token: str, params: dict[str, str], headers: dict[str, str]) -> None:
        if source in ("token", "access_token"):
            params[source] = token
        elif source == "bearer":
            headers["authorization"] = f"Bearer {token}"
        else:
            headers["cookie"] = f"{COOKIE}={token}"

    valid, garbage = mint(world.keys.rsa), "garbage.garbage.garbage"
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    place(winner, valid, params, headers)
    place(loser, garbage, params, headers)
    assert_streams(await ask(client, world.main, world.session_a, params=params, headers=headers), world.session_a)

    params, headers = {}, {}
    place(winner, garbage, params, headers)
    place(loser, valid, params, headers)
    assert_invalid_token(await ask(client, world.main, world.session_a, params=params, headers=headers))


async def test_token_over_8_kb_is_rejected(world: World, client: httpx.AsyncClient) -> None:
    big = mint(world.keys.rsa, extra={"padding": "x" * 8300})
    assert len(big) > 8192
    assert_invalid_token(await ask(client, world.main, world.session_a, headers={"authorization": f"Bearer {big}"}))
    assert_invalid_token(await ask(client, world.main, world.session_a, token=big))
    # The limit is not tighter than it says: a signed token of 7 KB is fine.
    large = mint(world.keys.rsa, extra={"padding": "x" * 5400})
    assert 7000 < len(large) <= 8192
    assert_streams(await ask(client, world.main, world.session_a, token=large), world.session_a)


# --------------------------------------------------------------------------------------------------
# Algorithms and forgeries


@pytest.mark.parametrize(
    ("alg", "key_name"),
    [("RS256", "rsa"), ("RS256", "rsa2"), ("PS256", "rsa"), ("ES256", "ec"), ("EdDSA", "ed")],
)
async def test_accepted_algorithms(world: World, client: httpx.AsyncClient, alg: str, key_name: str) -> None:
    token = mint(getattr(world.keys, key_name), alg=alg)
    assert_streams(await ask(client, world.main, world.session_a, token=token), world.session_a)


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_forged_or_invalid_tokens_are_401(world: World, client: httpx.AsyncClient, forgery: str) -> None:
    token = FORGERIES[forgery](world.keys)
    assert_invalid_token(await ask(client, world.main, world.session_a, token=token))


@pytest.mark.parametrize(
    "extra",
    [
        {"x5t": "bm90LWEtcmVhbC10aHVtYnByaW50", "x5t#S256": "bm90LWEtcmVhbC10aHVtYnByaW50LXNoYTI1Ng"},
        {"ver": "2.0", "x-idp-trace": {"span": [1, 2, 3]}},
        {"jku": "http://127.0.0.1:9/elsewhere.json", "x5u": "http://127.0.0.1:9/cert.pem"},
    ],
    ids=["x5t-thumbprints", "custom-fields", "jku-x5u-ignored"],
)
async def test_unregistered_non_critical_header_parameters_are_ignored(
    world: World, client: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    """Identity providers add header fields of their own: accepted, never used (keys come from our JWKS only)."""
    token = signed_raw(world.keys.rsa, rs256_header(world.keys, **extra), good_claims())
    assert_streams(await ask(client, world.main, world.session_a, token=token), world.session_a)
    # The same header with "crit" naming one of them is refused: we implement no extension.
    name = next(iter(extra))
    critical = signed_raw(world.keys.rsa, rs256_header(world.keys, crit=[name], **extra), good_claims())
    assert_invalid_token(await ask(client, world.main, world.session_a, token=critical))


@pytest.mark.parametrize(
    "claims",
    [{"exp": -10}, {"nbf": 10}, {"iat": 10}],
    ids=["expired-within-leeway", "nbf-within-leeway", "iat-within-leeway"],
)
async def test_clock_skew_within_the_30s_leeway_is_accepted(
    world: World, client: httpx.AsyncClient, claims: dict[str, int]
) -> None:
    now = _now()
    token = sign(world.keys.rsa, good_claims(**{name: now + delta for name, delta in claims.items()}))
    assert_streams(await ask(client, world.main, world.session_a, token=token), world.session_a)


# --------------------------------------------------------------------------------------------------
# Tenant and session claims


async def test_other_tenant_gets_the_same_404_as_an_unknown_session(world: World, client: httpx.AsyncClient) -> None:
    foreign = await ask(client, world.main, world.session_a, token=mint(world.keys.rsa, tenant=TENANT_B))
    assert_not_found(foreign, world.session_a)
    unknown_id = _new_session("u")  # as long as session_a's id, so even Content-Length must match
    unknown = await ask(client, world.main, unknown_id, token=mint(world.keys.rsa, tenant=TENANT_B))
    assert_not_found(unknown, unknown_id)
    assert foreign.body == unknown.body.replace(unknown_id.encode(), world.session_a.encode())
    ignored = {"date", "x-request-id"}
    assert {k: v for k, v in foreign.headers.items() if k not in ignored} == {
        k: v for k, v in unknown.headers.items() if k not in ignored
    }
    # Positive controls: each tenant sees its own session.
    assert_streams(
        await ask(client, world.main, world.session_b, token=mint(world.keys.rsa, tenant=TENANT_B)), world.session_b
    )
    assert_streams(await ask(client, world.main, world.session_a, token=mint(world.keys.rsa)), world.session_a)


async def test_token_without_tenant_claim_is_404(world: World, client: httpx.AsyncClient) -> None:
    assert_not_found(
        await ask(client, world.main, world.session_a, token=mint(world.keys.rsa, tenant=None)), world.session_a
    )


async def test_session_claim_limits_the_token_to_its_session(world: World, client: httpx.AsyncClient) -> None:
    token = mint(world.keys.rsa, session=world.session_a)
    assert_streams(await ask(client, world.main, world.session_a, token=token), world.session_a)
    # Same tenant, existing session, but not the one in the claim: the same 404 as for an unknown session.
    assert_not_found(await ask(client, world.main, world.session_a2, token=token), world.session_a2)
    assert_streams(await ask(client, world.main, world.session_a2, token=mint(world.keys.rsa)), world.session_a2)


# --------------------------------------------------------------------------------------------------
# Required scope


async def test_required_scope_missing_is_403(world: World, client: httpx.AsyncClient) -> None:
    for extra in ({}, {"scope": "openid profile"}, {"scope": f"{SCOPE}:write"}, {"roles": ["admin"]}):
        answer = await ask(client, world.scoped, world.session_a, token=mint(world.keys.rsa, extra=extra))
        assert answer.status == 403, extra
        assert answer.json() == nest_error(403, "Insufficient scope")
        assert "insufficient_scope" in answer.headers["www-authenticate"]


@pytest.mark.parametrize(
    "extra",
    [{"scope": SCOPE}, {"scope": f"openid {SCOPE} profile"}, {"roles": ["viewer", SCOPE]}],
    ids=["scope", "scope-among-others", "roles"],
)
async def test_required_scope_present_streams(world: World, client: httpx.AsyncClient, extra: dict[str, Any]) -> None:
    answer = await ask(client, world.scoped, world.session_a, token=mint(world.keys.rsa, extra=extra))
    assert_streams(answer, world.session_a)


async def test_scope_does_not_excuse_an_invalid_token(world: World, client: httpx.AsyncClient) -> None:
    token = mint(world.keys.attacker_rsa, kid=str(world.keys.rsa.kid), extra={"scope": SCOPE})
    assert_invalid_token(await ask(client, world.scoped, world.session_a, token=token))


# --------------------------------------------------------------------------------------------------
# JWKS: rotation, unknown-kid floods, outages, OIDC discovery


async def test_key_rotation_without_restart(world: World, client: httpx.AsyncClient) -> None:
    rotated = rsa_key(f"rsa-rotated-{uuid.uuid4().hex[:6]}")
    before = world.jwks.fetches
    assert_invalid_token(await ask(client, world.main, world.session_a, token=mint(rotated)))
    assert world.jwks.fetches > before, "an unknown kid did not refetch the JWKS"
    # The identity provider rotates right after that refetch: inside GATEWAY_JWKS_MIN_REFRESH (1 s) the
    # new key's first token waits for the next allowed refetch instead of getting a 401.
    world.jwks.keys.append(rotated)
    assert_streams(await ask(client, world.main, world.session_a, token=mint(rotated)), world.session_a)
    # The keys that were there before still work.
    assert_streams(await ask(client, world.main, world.session_a, token=mint(world.keys.rsa)), world.session_a)


async def _unknown_kid_flood(client: httpx.AsyncClient, world: World, gateway: GatewayProcess, count: int) -> None:
    tokens = [mint(world.keys.attacker_ec, alg="ES256", kid=f"forged-{uuid.uuid4().hex}") for _ in range(count)]
    answers = await asyncio.gather(*(ask(client, gateway, world.session_a, token=token) for token in tokens))
    for answer in answers:
        assert_invalid_token(answer)


async def test_unknown_kid_flood_does_not_flood_the_jwks_endpoint(world: World, client: httpx.AsyncClient) -> None:
    """Forged kids: at most one fetch per GATEWAY_JWKS_MIN_REFRESH, at most 20 of them wait for it."""
    before = world.flood_jwks.fetches
    waits_before = await _unknown_kid_waits(client, world.flood)
    await _unknown_kid_flood(client, world, world.flood, 1)  # it refetched, or waited for a refetch: a window opens
    await _unknown_kid_flood(client, world, world.flood, 50)  # inside that window: 20 wait, the rest are refused
    fetched = world.flood_jwks.fetches - before
    assert fetched <= 2, f"{fetched} JWKS fetches for 51 forgeries"
    waits = await _unknown_kid_waits(client, world.flood)
    assert waits["refused"] - waits_before["refused"] >= 50 - FLOOD_MAX_WAITING, (waits_before, waits)
    assert_streams(await ask(client, world.flood, world.session_a, token=mint(world.keys.rsa)), world.session_a)


async def _unknown_kid_waits(client: httpx.AsyncClient, gateway: GatewayProcess) -> dict[str, float]:
    response = await client.get(f"{gateway.internal_url}/metrics")
    counts = {"refused": 0.0, "refetched": 0.0}
    for line in response.text.splitlines():
        if line.startswith("gateway_jwks_unknown_kid_waits_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_unknown_kid_flood_shares_one_refetch(world: World, client: httpx.AsyncClient) -> None:
    """Past the 1 s minimum refresh an unknown kid does refetch, but 50 at once share that one fetch."""
    await wait_until(lambda: world.jwks.idle_for(1.1), 10, "the JWKS server kept being asked for its keys")
    before = world.jwks.fetches
    await _unknown_kid_flood(client, world, world.main, 50)
    fetched = world.jwks.fetches - before
    assert 1 <= fetched <= 3, f"{fetched} JWKS fetches for 50 concurrent unknown kids"


async def test_cached_keys_survive_a_jwks_outage(world: World, client: httpx.AsyncClient) -> None:
    jwks, gateway = world.outage_jwks, world.outage
    assert_streams(await ask(client, gateway, world.session_a, token=mint(world.keys.rsa)), world.session_a)

    jwks.failing = True  # answers 503
    before = jwks.fetches
    # The keys' 1 s lifetime ran out (no fetch, so no fresh keys, for longer): the next use refreshes in the background.
    await wait_until(lambda: jwks.idle_for(1.2), 10, "the JWKS server kept being asked for its keys")
    assert_streams(await ask(client, gateway, world.session_a, token=mint(world.keys.rsa)), world.session_a)
    assert_invalid_token(await ask(client, gateway, world.session_a, token=mint(world.keys.attacker_ec, alg="ES256")))
    assert_streams(await ask(client, gateway, world.session_a, token=mint(world.keys.ec, alg="ES256")), world.session_a)
    assert jwks.fetches > before, "the gateway never tried to refresh the expired keys"

    jwks.stop()  # connection refused from now on
    # Past GATEWAY_JWKS_MIN_REFRESH (1 s) since the last attempt: the next use tries the stopped server.
    await wait_until(lambda: jwks.idle_for(1.2), 10, "the JWKS server kept being asked for its keys")
    for _ in range(3):  # uses spread over 1.5 s of the outage (the scenario), each from the cached keys
        assert_streams(await ask(client, gateway, world.session_a, token=mint(world.keys.rsa)), world.session_a)
        await asyncio.sleep(0.5)
    ready = await client.get(f"{gateway.internal_url}/readyz")
    assert ready.status_code == 200, ready.text


async def test_oidc_discovery(world: World, client: httpx.AsyncClient) -> None:
    issuer = world.jwks.issuer_url
    token = mint(world.keys.rsa, iss=issuer)
    assert_streams(await ask(client, world.oidc, world.session_a, token=token), world.session_a)
    assert_streams(
        await ask(client, world.oidc, world.session_a, token=mint(world.keys.ec, alg="ES256", iss=issuer)),
        world.session_a,
    )
    # The issuer defaults to the OIDC issuer: any other is refused.
    assert_invalid_token(await ask(client, world.oidc, world.session_a, token=mint(world.keys.rsa)))
    assert_invalid_token(await ask(client, world.oidc, world.session_a, token=mint(world.keys.rsa, iss=None)))


# --------------------------------------------------------------------------------------------------
# Information leaks and contract edges


async def test_other_tenant_cannot_tell_existence_from_timing(world: World, client: httpx.AsyncClient) -> None:
    """The 404 for another tenant's session must not come back faster than the 404 for a session that does not exist.

    An unknown session is answered only after GATEWAY_UNKNOWN_SESSION_WAIT (it may be about to be created);
    if another tenant's session is refused at once, the delay alone tells the caller that the id exists.
    """
    token = mint(world.keys.rsa, tenant=TENANT_B)
    unknown_id = _new_session("missing")
    started = time.monotonic()
    assert_not_found(await ask(client, world.main, unknown_id, token=token), unknown_id)
    unknown_seconds = time.monotonic() - started
    started = time.monotonic()
    assert_not_found(await ask(client, world.main, world.session_a, token=token), world.session_a)
    foreign_seconds = time.monotonic() - started
    # Both against the configured wait, not one against the other: a delay on the first request alone (a connection
    # set-up, a busy CPU) would make a relative comparison fail although both waited the whole wait.
    timings = f"another tenant's session is refused in {foreign_seconds:.2f}s, an unknown one in {unknown_seconds:.2f}s"
    assert unknown_seconds >= UNKNOWN_SESSION_WAIT * 0.8, timings
    assert foreign_seconds >= UNKNOWN_SESSION_WAIT * 0.8, timings


async def test_other_tenant_cannot_tell_existence_from_a_terminal_last_event_id(
    world: World, client: httpx.AsyncClient
) -> None:
    """A reconnect carrying a terminal Last-Event-ID gets the same answer for another tenant's session as
    for one that does not exist. If an unknown session answers 204 (stop reconnecting) and another tenant's
    session 404, one request per id tells another tenant which session ids exist.
    """
    token = mint(world.keys.rsa, tenant=TENANT_B)
    for headers, params in (({"last-event-id": "0-0-end"}, {}), ({}, {"lastEventId": "1-0-end"})):
        unknown_id = _new_session("u")
        unknown = await ask(client, world.main, unknown_id, token=token, headers=headers, params=params)
        foreign = await ask(client, world.main, world.session_a, token=token, headers=headers, params=params)
        assert foreign.status == unknown.status, (
            f"with {headers or params}: another tenant's session answers {foreign.status}, an unknown one "
            f"{unknown.status}"
        )
        assert foreign.body == unknown.body.replace(unknown_id.encode(), world.session_a.encode())


async def test_session_id_over_256_characters_still_gets_nestjs_errors(world: World, client: httpx.AsyncClient) -> None:
    """The endpoint's errors keep the NestJS shape for any id: without a token 401, with one 404.

    An id over 256 characters (no session can have one) must not fall through to FastAPI's own request
    validation, which would answer 422 ``{"detail": [...]}``, even without a token.
    """
    long_id = "x" * 300
    assert (await ask(client, world.main, long_id)).json() == nest_error(401, MISSING_TOKEN)
    assert_not_found(await ask(client, world.main, long_id, token=mint(world.keys.rsa)), long_id)


async def _seconds_until_the_stream_ends(client: httpx.AsyncClient, url: str, token: str, limit: float) -> float:
    """Opens a stream, reads the current status, then waits for the server to end it (at most ``limit`` s)."""
    async with sse(client, url, params={"token": token}) as stream:
        assert stream.status == 200, stream.response.content
        assert await stream.next_event(10.0) is not None
        started = time.monotonic()
        try:
            while await stream.next_event(max(0.1, limit - (time.monotonic() - started))) is not None:
                pass
        except TimeoutError:
            return float("inf")
        return time.monotonic() - started


async def test_a_stream_ended_for_token_expiry_is_not_reopened_with_that_token(
    world: World, client: httpx.AsyncClient
) -> None:
    """When the gateway ends a stream because its token expired, a reconnect with that token gets 401.

    EventSource reconnects by itself, with the same URL and so the same token. If the token that was just
    judged expired is admitted again (``exp`` passed, but within the leeway), the client gets the current
    status again and is cut again a second later, every ``retry`` ms until the leeway has run out: about
    ten reconnects per client at every token expiry (30 s default leeway, 3 s retry). The
    ``flood`` gateway runs with a 4 s leeway to keep this short.
    """
    token = mint(world.keys.rsa, ttl=2)
    url = f"{world.flood.url}/session/{world.session_a}/events"
    lasted = await _seconds_until_the_stream_ends(client, url, token, 15.0)
    assert lasted < 15.0, "the stream outlived its token by more than the leeway"
    again = await ask(client, world.flood, world.session_a, token=token)
    assert again.status == 401, (
        f"the token whose stream was just ended for expiry ({lasted:.1f}s after opening) was admitted again: "
        f"{again.status}"
    )
