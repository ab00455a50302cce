"""DEVELOPMENT ONLY: the demo page and unauthenticated endpoints that publish session statuses.

Mounted by ``gateway.runtime.app`` only when ``GATEWAY_DEV_MODE`` is true. Anyone who can reach these
endpoints can write to the session-status topic and obtain tokens from the dev issuer, so they
must never be enabled in production.

- ``GET /demo`` (and ``GET /`` redirecting to it): a static page that creates a session, follows
  it with ``EventSource`` and shows the gateway's metrics; assets under ``/demo/static/``.
- ``POST /dev/sessions``: publishes a new session as ``active`` and returns a session-scoped
  token from the dev issuer (``GATEWAY_DEV_ISSUER_URL``) and the URL to stream its events.
- ``POST /dev/sessions/{id}/status``: publishes the next status of a session.

Dev mode runs on loopback only: ``serve`` refuses it on any other ``GATEWAY_HOST``, and every route
here (and ``GET /dev/metrics``: the public port's routes but ``/livez``, through ``LoopbackOnly``)
answers 403 to a request whose peer is not a loopback address, before reading it, however the server
was started (uvicorn on ``0.0.0.0``, a container's published port). The peer is the ASGI client: the
TCP peer, or, from a proxy the server trusts (uvicorn: loopback peers, unless ``FORWARDED_ALLOW_IPS``
says otherwise), the client its ``X-Forwarded-For`` names; so a local proxy relaying a remote client
is refused too. ``serve`` binds loopback only, so its TCP peers are always local: a tunnel or a
port-forward to it is the supported way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlencode

import httpx
from fastapi import APIRouter, Body, FastAPI, HTTPException, Path
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.cli.publish import StatusPublisher, build_event
from schemas import TERMINAL_STATUSES, SessionStatus, SessionType

if TYPE_CHECKING:
    from gateway.runtime.app import Runtime

log = logging.getLogger("gateway.dev.routes")

STATIC_DIR = FsPath(__file__).resolve().parent / "static"
DEV_TAG = "Development only"
DEFAULT_TENANT = "demo-tenant"

_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_NO_STORE = {"cache-control": "no-store"}
_KAFKA_TIMEOUT_S = 15.0
_CONSUMED_WAIT_S = 5.0
_MAX_REMEMBERED = 10_000
_TOKEN_TTL_S = 3600


class CreateSession(BaseModel):
    tenant: str = Field(DEFAULT_TENANT, min_length=1, max_length=256, description="Tenant that owns the session.")
    type: SessionType | None = Field(None, description="issuance or presentation")


class CreatedSession(BaseModel):
    id: str = Field(description="The new session id (a UUID).")
    tenant: str
    token: str = Field(description="A token from the dev issuer, scoped to this tenant and session.")
    eventsUrl: str = Field(description="Relative URL of the session's event stream, token included.")


class ChangeStatus(BaseModel):
    status: SessionStatus
    tenant: str | None = Field(
        None, min_length=1, max_length=256, description="Defaults to the tenant the session was created with."
    )


class PublishedStatus(BaseModel):
    id: str
    tenant: str
    status: SessionStatus
    partition: int
    offset: int
    outcome: str = Field(
        "applied",
        description="What the gateway's store did with the record: `applied`, or `ignored: <why>` "
        "(repeated status, backward move, after a terminal status, tenant changed), or `not consumed yet`.",
    )


def loopback_peer(client: object) -> bool:
    """Whether an ASGI ``client`` (``(host, port)``) is a loopback address; an unknown peer (None) is not."""
    if not isinstance(client, tuple | list) or not client or not isinstance(client[0], str):
        return False
    try:
        address = ipaddress.ip_address(client[0].split("%", 1)[0])  # an IPv6 zone ("::1%lo") is not part of it
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def refusal(client: object) -> str | None:
    """Why a dev route refuses a request from ``client``, or None when it comes from this machine."""
    if loopback_peer(client):
        return None
    peer = client[0] if isinstance(client, tuple | list) and client else "an unknown address"
    return (
        f"Dev mode answers only requests from this machine (a loopback address); this one came from {peer}. "
        "Reach a dev gateway through 127.0.0.1 (an SSH tunnel or a port-forward), never over the network."
    )


class LoopbackOnly:
    """ASGI middleware of the public app in dev mode: 403 to a non-loopback peer, before its request is read.

    Everything the public app serves in dev mode is a dev route, except the bare ``/livez``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/livez":
            reason = refusal(scope.get("client"))
            if reason is not None:
                log.warning("dev: refused %s %s from a non-loopback peer", scope["method"], scope["path"])
                await JSONResponse({"detail": reason}, status_code=403, headers=_NO_STORE)(scope, receive, send)
                return
        await self.app(scope, receive, send)


LOOPBACK_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"description": "The request did not come from a loopback address."}
}


# What the store does with a record that does not move the session forward (see consumers/store.py).
IGNORED_REPEATED = "ignored: repeated status"
IGNORED_BACKWARD = "ignored: status would move backward"
IGNORED_AFTER_TERMINAL = "ignored: the session already ended"
IGNORED_TENANT = "ignored: the session belongs to another tenant"


class _Publisher:
    """One producer for the router's lifetime: started on first use, stopped on shutdown."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._publisher: StatusPublisher | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> StatusPublisher:
        async with self._lock:
            if self._publisher is None:
                publisher = StatusPublisher(self._runtime.consumer_settings)
                try:
                    await asyncio.wait_for(publisher.__aenter__(), _KAFKA_TIMEOUT_S)
                except BaseException:
                    with contextlib.suppress(Exception):
                        await publisher.__aexit__(None, None, None)
                    raise
                self._publisher = publisher
            return self._publisher

    async def publish(
        self, session_id: str, status: SessionStatus, tenant: str, kind: SessionType | None
    ) -> PublishedStatus:
        settings = self._runtime.consumer_settings
        try:
            publisher = await self._started()
            partition, offset = await asyncio.wait_for(
                publisher.publish(build_event(session_id, status, tenant, kind)), _KAFKA_TIMEOUT_S
            )
        except Exception as error:  # broker down, topic missing, timeout: all the same to a demo user
            reason = str(error) or type(error).__name__
            log.warning("dev publish to %s failed: %s", settings.kafka_topic, reason)
            raise HTTPException(
                503,
                f"could not publish to Kafka topic {settings.kafka_topic!r} at {settings.kafka_bootstrap_servers}: "
                f"{reason}",
            ) from None
        # Let our own consumer see the record first, so a stream opened right away finds the session.
        consumed = await self._runtime.progress.wait_for(partition, offset, _CONSUMED_WAIT_S)
        outcome = _outcome(self._runtime, session_id, status, tenant, partition, offset) if consumed else None
        return PublishedStatus(
            id=session_id,
            tenant=tenant,
            status=status,
            partition=partition,
            offset=offset,
            outcome=outcome or "not consumed yet",
        )

    async def close(self) -> None:
        async with self._lock:
            publisher, self._publisher = self._publisher, None
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.__aexit__(None, None, None)
            log.info("dev: Kafka producer stopped")


def dev_router(runtime: Runtime) -> APIRouter:
    """The development-only routes; see the module docstring."""
    publisher = _Publisher(runtime)
    tenants: OrderedDict[str, str] = OrderedDict()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await publisher.close()

    router = APIRouter(tags=[DEV_TAG], lifespan=lifespan, responses=LOOPBACK_ONLY)

    def remember(session_id: str, tenant: str) -> None:
        tenants[session_id] = tenant
        tenants.move_to_end(session_id)
        while len(tenants) > _MAX_REMEMBERED:
            tenants.popitem(last=False)

    @router.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/demo", status_code=307)

    @router.get(
        "/demo",
        summary="Demo page (DEV MODE ONLY)",
        description="Interactive demo: creates a session, streams it with EventSource, shows metrics.",
        response_class=FileResponse,
    )
    async def demo() -> FileResponse:
        return FileResponse(STATIC_DIR / "demo.html", media_type=_MEDIA_TYPES[".html"], headers=_NO_STORE)

    @router.get("/demo/static/{name}", include_in_schema=False)
    async def demo_asset(name: str) -> FileResponse:
        path = STATIC_DIR / name
        media_type = _MEDIA_TYPES.get(path.suffix)
        if not _ASSET_NAME.fullmatch(name) or media_type is None or not path.is_file():
            raise HTTPException(404, f"no demo asset {name!r}")
        return FileResponse(path, media_type=media_type, headers=_NO_STORE)

    @router.post(
        "/dev/sessions",
        summary="Create a demo session (DEV MODE ONLY, unauthenticated)",
        description=(
            "**Development only.** Publishes a new session with status `active` to the session-status "
            "topic and returns a token minted by the dev issuer (`GATEWAY_DEV_ISSUER_URL`) for that "
            "tenant and session, plus the URL to open with `EventSource`."
        ),
        response_model=CreatedSession,
        status_code=201,
        responses={
            502: {"description": "The dev issuer did not answer."},
            503: {"description": "Kafka failed, or the gateway does not read the topic yet."},
        },
    )
    async def create_session(body: Annotated[CreateSession | None, Body()] = None) -> CreatedSession:
        request = body or CreateSession()
        tenant = request.tenant.strip()
        if not tenant:
            raise HTTPException(422, "tenant must not be blank")
        _require_consuming(runtime)
        session_id = str(uuid.uuid4())
        token = await _mint_token(runtime, tenant, session_id)
        await publisher.publish(session_id, SessionStatus.ACTIVE, tenant, request.type)
        remember(session_id, tenant)
        events_url = f"/session/{quote(session_id, safe='')}/events?{urlencode({'token': token})}"
        log.info("dev: created session %s for tenant %s", session_id, tenant)
        return CreatedSession(id=session_id, tenant=tenant, token=token, eventsUrl=events_url)

    @router.post(
        "/dev/sessions/{id}/status",
        summary="Publish a session's next status (DEV MODE ONLY, unauthenticated)",
        description=(
            "**Development only.** Publishes `status` for the session to the session-status topic. The "
            "tenant defaults to the one the session was created with (or the one the store knows)."
        ),
        response_model=PublishedStatus,
        responses={
            404: {"description": "Unknown session and no tenant given."},
            503: {"description": "Kafka failed, or the gateway does not read the topic yet."},
        },
    )
    async def change_status(
        body: ChangeStatus,
        id: str = Path(description="Session ID", min_length=1, max_length=256),
    ) -> PublishedStatus:
        _require_consuming(runtime)
        tenant = body.tenant or tenants.get(id)
        if tenant is None:
            snapshot = runtime.store.get(id)
            tenant = snapshot.tenant_id if snapshot is not None else None
        if tenant is None:
            raise HTTPException(404, f"Session {id} not found; give its tenant in the body")
        published = await publisher.publish(id, body.status, tenant, None)
        remember(id, tenant)
        log.info("dev: session %s -> %s", id, body.status.value)
        return published

    return router


def _outcome(runtime: Runtime, session_id: str, status: SessionStatus, tenant: str, partition: int, offset: int) -> str:
    """What the store did with the record at ``partition``/``offset`` (it has consumed it)."""
    snapshot = runtime.store.get(session_id)
    if snapshot is None:
        return "ignored: the session is not in the store"
    if any(t.partition == partition and t.offset == offset for t in snapshot.transitions):
        return "applied"
    if snapshot.tenant_id != tenant:
        return IGNORED_TENANT
    current = snapshot.current.status
    if current in TERMINAL_STATUSES:
        return IGNORED_REPEATED if current == status else IGNORED_AFTER_TERMINAL
    if current == status:
        return IGNORED_REPEATED
    return IGNORED_BACKWARD


def _require_consuming(runtime: Runtime) -> None:
    """Publishing is pointless until the gateway's own consumer reads the topic (and would only time out)."""
    if not runtime.progress.targets:
        settings = runtime.consumer_settings
        raise HTTPException(
            503,
            f"the gateway is not reading topic {settings.kafka_topic!r} at {settings.kafka_bootstrap_servers} yet: "
            f"{runtime.progress.last_error or 'still connecting'} (see /readyz)",
        )


async def _mint_token(runtime: Runtime, tenant: str, session_id: str) -> str:
    issuer = runtime.settings.dev_issuer_url.rstrip("/")
    try:
        response = await runtime.http.post(
            f"{issuer}/token",
            params={"tenant": tenant, "session": session_id, "ttl": str(_TOKEN_TTL_S)},
            timeout=5.0,
        )
        response.raise_for_status()
        document: Any = response.json()
        token = document["access_token"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        raise HTTPException(
            502,
            f"the dev issuer at {issuer} did not mint a token ({type(error).__name__}: {error}); "
            "start it with `session-gateway dev-issuer` or set GATEWAY_DEV_ISSUER_URL",
        ) from None
    if not isinstance(token, str):
        raise HTTPException(502, f"the dev issuer at {issuer} answered without an access_token")
    return token
