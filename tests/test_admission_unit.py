"""Admission logic in process (see ``test_admission`` and ``test_edge_limits`` for the same against real processes).

- Refusing a request never walks the open streams: with 10,000 streams open, a refusal looks at the
  streams of its own key only (at most its limit), and still notices one of them whose client is gone.
- The waiting budget's shares per tenant and per client address, and their release.
- Which address a connection counts for (``ClientAddresses``): the TCP peer, or behind a trusted proxy
  the right-most address of the forwarded header that is not a trusted proxy.
- When a token cookie may authenticate (``CorsPolicy.sends_credentials``).
- The limits as a request meets them (``EventsEndpoint.admit`` with a real store, hub, registry and claims
  validation; only the signature check is left out): each limit's answer, keys per tenant, tokens without
  ``sub``, waiting requests counted like open streams. ``test_admission`` and ``test_lifecycle`` prove the
  same answers through a real process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from consumers.hub import Hub
from consumers.progress import PartitionProgress
from consumers.records import StatusUpdate
from consumers.store import SessionStore
from gateway.admission.client_address import ClientAddresses
from gateway.admission.clock import StreamClock
from gateway.admission.endpoint import Admission, Answer, EventsEndpoint, StreamRequest
from gateway.admission.registry import ConnectionRegistry, Ticket
from gateway.auth.claims import ClaimsValidator, Principal
from gateway.auth.verifier import TokenVerifier
from gateway.edge.cors import CorsPolicy
from gateway.edge.errors import StreamRefused
from gateway.settings import GatewaySettings
from gateway.streams.stream import NativeStream
from schemas import SessionStatus
from tests.support import wait_until


class Channel:
    """The connection under a native stream, as ``StreamChannel``; counts how often it is asked whether it closed."""

    def __init__(self) -> None:
        self.closing = False
        self.checks = 0

    def write_event(self, data: bytes) -> None:
        return None

    def end(self, last: bytes = b"") -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pending_bytes(self) -> int:
        return 0

    def buffered_bytes(self) -> int:
        return 0

    def is_closing(self) -> bool:
        self.checks += 1
        return self.closing


def settings(**values: object) -> GatewaySettings:
    return GatewaySettings.model_validate(values)


def registry_for(settings: GatewaySettings, hub: Hub | None = None) -> ConnectionRegistry:
    """The registry as the runtime builds it: its stream clock, tenant shares when tenants are enforced."""
    hub = hub or Hub(lambda transition: b"")
    return ConnectionRegistry(settings, StreamClock(settings, hub), tenant_shares=bool(settings.tenant_claim))


def open_stream(registry: ConnectionRegistry, session_id: str, tenant: str = "t") -> tuple[NativeStream, Channel]:
    """Admits a stream and registers it as the engines do (closing it releases its ticket)."""
    ticket = registry.reserve(tenant, "user", session_id, waiting=False)
    channel = Channel()

    def closed(stream: NativeStream, reason: str) -> None:
        registry.release(ticket)
        registry.remove(stream)

    stream = NativeStream(channel, session_id, float("inf"), 65536, closed)
    registry.add(stream, ticket)
    return stream, channel


def test_a_refusal_looks_only_at_the_streams_of_its_own_key() -> None:
    registry = registry_for(settings(max_connections_per_session=3))
    crowd = [open_stream(registry, f"open-{n}") for n in range(10_000)]
    full = [open_stream(registry, "full") for _ in range(3)]
    for _ in range(100):
        with pytest.raises(StreamRefused) as refused:
            registry.reserve("t", "user", "full", waiting=False)
        assert refused.value.reason == "per_session"
    assert sum(channel.checks for _, channel in crowd) == 0, "a refusal walked other sessions' streams"
    assert sum(channel.checks for _, channel in full) <= 3 * 100
    # Another tenant's session of the same id is another key.
    registry.release(registry.reserve("other", "user", "full", waiting=False))


def test_a_stream_whose_client_is_gone_does_not_count_against_its_session() -> None:
    """A hang-up the transport has seen but not reported yet: the reload is still admitted."""
    registry = registry_for(settings(max_connections_per_session=2))
    (first, first_channel), _ = open_stream(registry, "reload"), open_stream(registry, "reload")
    first_channel.closing = True
    ticket = registry.reserve("t", "user", "reload", waiting=False)
    assert first.close_reason == "client_disconnected"
    assert len(registry) == 1
    registry.release(ticket)


def test_waiting_shares_per_tenant_and_per_address() -> None:
    registry = registry_for(settings(max_waiting_requests=8, max_waiting_requests_per_address=2))
    assert (registry._tenant_share, registry._address_share) == (4, 2)  # half of the budget per tenant, as set

    def wait(tenant: str, address: str | None) -> Ticket:
        return registry.reserve(tenant, "user", "unknown", waiting=True, address=address)

    held = [wait("a", "192.0.2.1"), wait("a", "192.0.2.1")]
    with pytest.raises(StreamRefused) as refused:
        wait("a", "192.0.2.1")
    assert (refused.value.status, refused.value.reason) == (429, "waiting_per_address")
    held += [wait("a", "192.0.2.2"), wait("a", None)]
    with pytest.raises(StreamRefused) as refused:
        wait("a", "192.0.2.3")
    assert (refused.value.status, refused.value.reason) == (429, "waiting_per_tenant")
    held.append(wait("b", "192.0.2.3"))  # another tenant still waits
    # A request that stops waiting (its session appeared) gives its share back; so does one that ends.
    registry.stop_waiting(held[0])
    held.append(wait("a", "192.0.2.1"))
    registry.release(held[1])
    registry.release(held[0])
    held.append(wait("a", "192.0.2.1"))
    for ticket in held:
        registry.release(ticket)
    assert registry.waiting == 0
    assert registry._waiting_per_tenant == {} and registry._waiting_per_address == {}
    assert registry._per_session == {}


def test_without_a_tenant_claim_there_is_no_tenant_share() -> None:
    registry = registry_for(settings(max_waiting_requests=4, tenant_claim=""))
    tickets = [registry.reserve("", "user", f"s{n}", waiting=True) for n in range(4)]
    with pytest.raises(StreamRefused) as refused:
        registry.reserve("", "user", "s", waiting=True)
    assert refused.value.reason == "max_waiting_requests"
    for ticket in tickets:
        registry.release(ticket)


def test_a_key_with_many_streams_keeps_its_tickets_in_a_set() -> None:
    """A key with a high limit (a subject shared by many browsers): releasing one of its tickets stays O(1)."""
    limits = {"max_connections": 50_000, "max_connections_per_subject": 50_000, "max_connections_per_session": 50_000}
    registry = registry_for(settings(**limits))
    tickets = [registry.reserve("t", "shared", "one-session", waiting=False) for _ in range(20_000)]
    assert isinstance(registry._per_subject["t\x00shared"], set)
    for ticket in tickets:
        registry.release(ticket)
    assert registry._per_subject == {} and registry._per_session == {}


# --------------------------------------------------------------------------------------------------
# Client addresses


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.5", None, "203.0.113.5"),  # the TCP peer is the client
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # an untrusted peer's header is ignored
        ("10.0.0.7", "198.51.100.1", "198.51.100.1"),  # a trusted proxy names the client
        ("10.0.0.7", "192.0.2.9, 198.51.100.1", "198.51.100.1"),  # the left part is the client's own text
        ("10.0.0.7", "192.0.2.9, 198.51.100.1, 10.0.0.8", "198.51.100.1"),  # trusted hops are skipped
        ("10.0.0.7", "198.51.100.1:5123", "198.51.100.1"),  # with a port
        ("10.0.0.7", None, None),  # a trusted proxy that names nobody: no per-address share
        ("10.0.0.7", "10.0.0.9", None),
        ("10.0.0.7", "192.0.2.9, unknown", None),  # not an address where the client must be
        ("10.0.0.7", "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),  # IPv6 by its /64
        ("10.0.0.7", "[2001:db8:1:2:bbbb::2]:443", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.4", None, "198.51.100.4"),  # IPv4-mapped
        ("::ffff:10.0.0.7", "198.51.100.1", "198.51.100.1"),
        ("2001:db8:9::1", None, "2001:db8:9::/64"),
        ("fd00::5", "2001:db8:1::1", "2001:db8:1::/64"),
        (None, "198.51.100.1", None),
    ],
)
def test_the_client_address(peer: str | None, forwarded: str | None, client: str | None) -> None:
    addresses = ClientAddresses(["10.0.0.0/8", "fd00::/8"], "X-Forwarded-For")
    assert addresses.header == "x-forwarded-for"
    assert addresses.client(peer, forwarded) == client


def test_loopback_is_the_default_trusted_proxy_and_an_empty_list_trusts_nobody() -> None:
    default = GatewaySettings.model_validate({})
    addresses = ClientAddresses(default.trusted_proxies, default.client_address_header)
    assert addresses.peer("127.0.0.1") == ("127.0.0.1", True)
    assert addresses.peer("::1") == ("::/64", True)
    assert addresses.client("127.0.0.1", "198.51.100.1") == "198.51.100.1"
    assert ClientAddresses([], "x-forwarded-for").client("127.0.0.1", "198.51.100.1") == "127.0.0.1"


def test_a_long_chain_of_trusted_hops_names_no_client() -> None:
    addresses = ClientAddresses(["10.0.0.0/8"], "x-forwarded-for")
    chain = ", ".join(["198.51.100.1", *(["10.0.0.1"] * (ClientAddresses.MAX_HOPS + 5))])
    assert addresses.forwarded(chain) is None


def test_the_default_shares_follow_the_limits_they_divide() -> None:
    default = GatewaySettings.model_validate({})
    assert (default.sockets_per_address, default.waiting_per_tenant, default.waiting_per_address) == (8192, 500, 250)
    small = settings(max_sockets=40, max_waiting_requests=3, max_sockets_per_address=7)
    assert (small.sockets_per_address, small.waiting_per_tenant, small.waiting_per_address) == (7, 1, 1)
    with pytest.raises(ValueError, match="not an IP address or CIDR range"):
        settings(trusted_proxies=["10.0.0.0/8", "proxy.internal"])


# --------------------------------------------------------------------------------------------------
# Cookies and origins


@pytest.mark.parametrize(
    ("origins", "origin", "host", "allowed"),
    [
        (["https://app.example"], None, "gw.example", True),  # no Origin: a same-origin GET, or not a browser
        (["https://app.example"], "https://app.example", "gw.example", True),
        (["https://app.example"], "https://evil.example", "gw.example", False),
        (["https://app.example"], "null", "gw.example", False),
        (["https://app.example"], "https://gw.example", "gw.example", True),  # the gateway's own origin
        (["https://app.example"], "http://gw.example:8080", "GW.example:8080", True),
        (["https://app.example"], "https://gw.example", "gw.example:8443", False),
        (["*"], "https://evil.example", "gw.example", False),  # "*" means: readable without credentials
        ([], "https://evil.example", "gw.example", False),
        ([], "https://evil.example", None, False),
    ],
)
def test_when_a_token_cookie_may_authenticate(
    origins: list[str], origin: str | None, host: str | None, allowed: bool
) -> None:
    assert CorsPolicy(origins).sends_credentials(origin, host) is allowed


# --------------------------------------------------------------------------------------------------
# The limits as a request meets them: ``EventsEndpoint.admit`` in process


class ClaimsOnly:
    """The verifier without the signature check: a token is the key of its claims in ``claims``."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.validator = ClaimsValidator(settings)
        self.claims: dict[str, dict[str, Any]] = {}

    def token(self, tenant: str, **claims: Any) -> str:
        """A token of ``tenant`` with ``sub`` "user" unless ``claims`` say otherwise (``sub=None``: none)."""
        now = int(time.time())
        values: dict[str, Any] = {"sub": "user", "tenant_id": tenant, "iat": now, "exp": now + 600, **claims}
        token = f"token-{len(self.claims)}"
        self.claims[token] = {name: value for name, value in values.items() if value is not None}
        return token

    async def verify(self, token: str) -> Principal:
        return self.validator.principal(self.claims[token])


class Admissions:
    """An ``EventsEndpoint`` over a caught-up store: what ``admit`` answers, and the tickets it handed out."""

    def __init__(self, **values: object) -> None:
        self.settings = settings(**values)
        self.store = SessionStore(terminal_retention_ms=3_600_000, session_ttl_ms=86_400_000, max_sessions=10_000)
        self.hub = Hub(lambda transition: b"")
        self.registry = registry_for(self.settings, self.hub)
        progress = PartitionProgress()
        progress.set_targets({0: 0})
        self.tokens = ClaimsOnly(self.settings)
        verifier = cast(TokenVerifier, self.tokens)
        self.endpoint = EventsEndpoint(self.settings, self.store, self.hub, progress, verifier, self.registry)
        self.admitted: list[Admission] = []
        self.offset = 0

    def create(self, session_id: str, tenant: str) -> None:
        update = StatusUpdate(session_id, tenant, SessionStatus.ACTIVE, int(time.time() * 1000), None)
        self.store.apply(update, 0, self.offset)
        self.offset += 1

    async def status(self, session_id: str, token: str, client: str | None = None) -> int:
        """200 (admitted, its ticket kept until ``release_all``) or the refusal's status."""
        answer = await self.answer(session_id, token, client)
        return answer.status if isinstance(answer, Answer) else 200

    async def answer(self, session_id: str, token: str, client: str | None = None) -> Admission | Answer:
        result = await self.endpoint.admit(StreamRequest(session_id, f"token={token}".encode(), {}, client))
        if isinstance(result, Admission):
            self.admitted.append(result)
        return result

    def release_all(self) -> None:
        for admission in self.admitted:
            self.registry.release(admission.ticket)
        self.admitted.clear()


@pytest.fixture
def admissions() -> Iterator[type[Admissions]]:
    made: list[Admissions] = []

    def make(**values: object) -> Admissions:
        made.append(Admissions(**values))
        return made[-1]

    yield make  # type: ignore[misc]
    for each in made:
        each.release_all()


def header(answer: Admission | Answer, name: bytes) -> str | None:
    assert isinstance(answer, Answer), "admitted, not refused"
    return next((value.decode() for key, value in answer.headers if key == name), None)


async def test_each_limit_answers_with_its_status_and_retry_after(admissions: type[Admissions]) -> None:
    """Per session and per subject 429, the whole process 503, each with a Retry-After (``test_lifecycle``: the
    same through a process)."""
    gateway = admissions(max_connections=6, max_connections_per_subject=3, max_connections_per_session=2)
    for n in range(6):
        gateway.create(f"s{n}", "t")
    token = gateway.tokens.token
    refusals: dict[str, Admission | Answer] = {}
    # Per session: two subjects on session 0, a third is refused.
    assert [await gateway.status("s0", token("t", sub=sub)) for sub in ("u1", "u2")] == [200, 200]
    refusals["per_session"] = await gateway.answer("s0", token("t", sub="u3"))
    # Per subject: u4 on three sessions, a fourth is refused.
    assert [await gateway.status(f"s{n}", token("t", sub="u4")) for n in (1, 2, 3)] == [200, 200, 200]
    refusals["per_subject"] = await gateway.answer("s4", token("t", sub="u4"))
    # Whole process: a sixth stream fits, a seventh is refused.
    assert await gateway.status("s4", token("t", sub="u5")) == 200
    refusals["max_connections"] = await gateway.answer("s5", token("t", sub="u6"))
    assert {limit: (answer.status, answer.reason) for limit, answer in refusals.items()} == {  # type: ignore[union-attr]
        "per_session": (429, "per_session"),
        "per_subject": (429, "per_subject"),
        "max_connections": (503, "max_connections"),
    }
    assert {limit: header(answer, b"retry-after") for limit, answer in refusals.items()} == {
        "per_session": "10",
        "per_subject": "10",
        "max_connections": "5",
    }
    # A stream that ends gives its place back.
    gateway.registry.release(gateway.admitted.pop().ticket)
    assert await gateway.status("s5", token("t", sub="u6")) == 200


async def test_tokens_without_sub_share_a_bucket_only_within_their_tenant(admissions: type[Admissions]) -> None:
    """A token without ``sub`` is subject "" of its tenant: such tokens share one per-subject bucket per tenant."""
    gateway = admissions(max_connections_per_subject=2)
    statuses: dict[str, list[int]] = {}
    for tenant in ("tenant-a", "tenant-b"):
        for n in range(3):
            gateway.create(f"{tenant}-{n}", tenant)
            token = gateway.tokens.token(tenant, sub=None)
            statuses.setdefault(tenant, []).append(await gateway.status(f"{tenant}-{n}", token))
    assert statuses == {"tenant-a": [200, 200, 429], "tenant-b": [200, 200, 429]}, statuses


async def test_many_browsers_sharing_one_client_token_are_not_refused_by_default(admissions: type[Admissions]) -> None:
    """No per-subject limit unless configured: the reference deployment mints one token per tenant's client."""
    gateway = admissions()
    token = gateway.tokens.token("tenant-a", sub="wallet-backend-client")
    for n in range(200):
        gateway.create(f"shared-{n}", "tenant-a")
    assert {await gateway.status(f"shared-{n}", token) for n in range(200)} == {200}


async def test_another_tenants_requests_for_a_session_id_never_use_up_the_owners_limit(
    admissions: type[Admissions],
) -> None:
    """Another tenant's requests for the id wait (it is not theirs) and fill their own key only."""
    gateway = admissions(max_connections_per_session=3, unknown_session_wait=30)
    gateway.create("victim", "tenant-a")
    attacker = gateway.tokens.token("tenant-b")
    probes = [asyncio.create_task(gateway.answer("victim", attacker)) for _ in range(12)]
    await wait_until(lambda: sum(probe.done() for probe in probes) == 9, 5, "the probes beyond the limit waited")
    assert gateway.registry.waiting == 3
    assert {probe.result().status for probe in probes if probe.done()} == {429}  # type: ignore[union-attr]
    owner = gateway.tokens.token("tenant-a")
    assert [await gateway.status("victim", owner) for _ in range(4)] == [200, 200, 200, 429]  # its own limit, whole
    for probe in probes:
        probe.cancel()
    await asyncio.gather(*probes, return_exceptions=True)
    assert gateway.registry.waiting == 0


async def test_waiting_requests_count_like_open_streams(admissions: type[Admissions]) -> None:
    """A request waiting for its session holds its place: the subject's limit and the cap on waiting requests."""
    gateway = admissions(
        max_connections_per_subject=3,
        max_waiting_requests=6,
        max_waiting_requests_per_tenant=6,
        unknown_session_wait=30,
    )
    burst = gateway.tokens.token("t", sub="burst")
    waiting = [asyncio.create_task(gateway.answer(f"later-{n}", burst)) for n in range(3)]
    await wait_until(lambda: gateway.registry.waiting == 3, 5, "the requests never waited for their sessions")
    assert not any(task.done() for task in waiting)
    refused = await gateway.answer("later-3", burst)
    assert (refused.status, refused.reason) == (429, "per_subject")  # type: ignore[union-attr]
    # Three requests of other tenants fill the cap: the next request is refused with 503.
    others = [asyncio.create_task(gateway.answer(f"other-{n}", gateway.tokens.token(f"t{n}"))) for n in range(3)]
    await wait_until(lambda: gateway.registry.waiting == 6, 5, "the other tenants' requests never waited")
    full = await gateway.answer("other-x", gateway.tokens.token("t9"))
    assert isinstance(full, Answer) and (full.status, full.reason) == (503, "max_waiting_requests")
    assert (
        full.body
        == b'{"statusCode":503,"message":"Too many requests waiting on this server","error":"Service Unavailable"}'
    )
    assert int(header(full, b"retry-after") or 0) > 0
    # The session appears: the waiting request is admitted and keeps its place, no longer as a waiting one.
    gateway.create("later-0", "t")
    gateway.hub.publish(gateway.store.get("later-0").current, 0)  # type: ignore[union-attr]
    admitted = await asyncio.wait_for(waiting[0], 5)
    assert isinstance(admitted, Admission)
    assert gateway.registry.waiting == 5
    for task in [*waiting, *others]:
        task.cancel()
    await asyncio.gather(*waiting, *others, return_exceptions=True)
