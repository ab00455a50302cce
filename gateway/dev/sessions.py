"""The demo's session API: create a session and move it on, without a producer or a token of one's own.

``POST /dev/sessions`` publishes a new ``active`` session and plays the application backend: it gets a
tenant token from the dev issuer (``GATEWAY_DEV_ISSUER_URL``), trades it for a stream ticket at
``POST /session/{id}/ticket`` and returns only the ticket and the URL to stream with it, so the page
never sees the tenant token (with tickets off, a session-scoped token instead); ``POST /dev/sessions/{id}/status``
publishes its next status. Both are unauthenticated, which is why dev mode is loopback only
(docs/security.md); the routes are listed in docs/http-api.md.
"""

from __future__ import annotations

import logging
import shlex
import sys
import uuid
from collections import OrderedDict
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlencode

import httpx
from fastapi import APIRouter, Body, HTTPException, Path, Request
from pydantic import BaseModel, Field

from gateway.auth.key_errors import error_text
from gateway.dev.publisher import DevPublisher, PublishedStatus
from gateway.edge.tenant_route import TENANT_PATH
from schemas import SessionStatus, SessionType

if TYPE_CHECKING:
    from gateway.runtime.app import Runtime

log = logging.getLogger("gateway.dev.routes")  # the logger name of every dev-mode line; unchanged by the split

DEFAULT_TENANT = "demo-tenant"

_MAX_REMEMBERED = 10_000
_TOKEN_TTL_S = 3600


class CreateSession(BaseModel):
    tenant: str = Field(DEFAULT_TENANT, min_length=1, max_length=256, description="Tenant that owns the session.")
    type: SessionType | None = Field(None, description="issuance or presentation")


def cli_command() -> str:
    """This installation's console script by absolute path, else this interpreter with ``-m gateway``."""
    script = FilePath(sys.executable).parent / "session-gateway"
    if script.is_file():
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(str(FilePath(sys.executable).absolute()))} -m gateway"


class CreatedSession(BaseModel):
    id: str = Field(description="The new session id (a UUID).")
    tenant: str
    ticket: str | None = Field(None, description="A stream ticket for this session (tickets on: always in dev mode).")
    expiresAt: str | None = Field(None, description="When the ticket expires.")
    token: str | None = Field(
        None, description="Only with tickets off: a token from the dev issuer, scoped to this tenant and session."
    )
    eventsUrl: str = Field(description="Relative URL of the session's event stream, ticket (or token) included.")
    tenantEventsUrl: str | None = Field(
        None,
        description=(
            "Relative URL of the tenant stream (every session of the tenant), with a token carrying "
            "`GATEWAY_TENANT_STREAM_SCOPE`; null when the tenant stream is off."
        ),
    )
    cli: str = Field(
        description="How to run this installation's `session-gateway` from any shell (an absolute path, quoted): "
        "the demo page's `watch` command starts with it, so it runs without the virtualenv on PATH."
    )


class ChangeStatus(BaseModel):
    status: SessionStatus
    tenant: str | None = Field(
        None, min_length=1, max_length=256, description="Defaults to the tenant the session was created with."
    )


def add_session_routes(router: APIRouter, runtime: Runtime, publisher: DevPublisher) -> None:
    """``POST /dev/sessions`` and ``POST /dev/sessions/{id}/status``, publishing through ``publisher``."""
    tenants: OrderedDict[str, str] = OrderedDict()  # the tenant each session was created with, most recent last

    def remember(session_id: str, tenant: str) -> None:
        tenants[session_id] = tenant
        tenants.move_to_end(session_id)
        while len(tenants) > _MAX_REMEMBERED:
            tenants.popitem(last=False)

    @router.post(
        "/dev/sessions",
        summary="Create a demo session (DEV MODE ONLY, unauthenticated)",
        description=(
            "**Development only.** Publishes a new session with status `active` to the session-status "
            "topic, gets a tenant token from the dev issuer (`GATEWAY_DEV_ISSUER_URL`), trades it for a "
            "stream ticket (`POST /session/{id}/ticket`) and returns the ticket, plus the URL to open with "
            "`EventSource`; the tenant token never leaves the server."
        ),
        response_model=CreatedSession,
        response_model_exclude_none=True,  # with tickets on, no ``token`` field at all
        status_code=201,
        responses={
            502: {"description": "The dev issuer did not answer."},
            503: {"description": "Kafka failed, or the gateway does not read the topic yet."},
        },
    )
    async def create_session(
        http_request: Request, body: Annotated[CreateSession | None, Body()] = None
    ) -> CreatedSession:
        request = body or CreateSession()
        tenant = request.tenant.strip()
        if not tenant:
            raise HTTPException(422, "tenant must not be blank")
        _require_consuming(runtime)
        session_id = str(uuid.uuid4())
        path = f"/session/{quote(session_id, safe='')}"
        if runtime.tickets is not None:
            # What an application backend does: its tenant-wide token stays here, the page gets a ticket.
            tenant_token = await _mint_token(runtime, tenant, None)
            ticket = await _ask_for_ticket(runtime, f"{str(http_request.base_url).rstrip('/')}{path}", tenant_token)
            created = CreatedSession(
                id=session_id,
                tenant=tenant,
                ticket=ticket["ticket"],
                expiresAt=ticket["expiresAt"],
                eventsUrl=f"{path}/events?{urlencode({'ticket': ticket['ticket']})}",
                cli=cli_command(),
            )
        else:
            token = await _mint_token(runtime, tenant, session_id)
            created = CreatedSession(
                id=session_id,
                tenant=tenant,
                token=token,
                eventsUrl=f"{path}/events?{urlencode({'token': token})}",
                cli=cli_command(),
            )
        await publisher.publish(session_id, SessionStatus.ACTIVE, tenant, request.type)
        remember(session_id, tenant)
        scope = runtime.settings.tenant_stream_scope
        if scope:
            tenant_stream_token = await _mint_token(runtime, tenant, None, scope)
            created.tenantEventsUrl = f"{TENANT_PATH}?{urlencode({'token': tenant_stream_token})}"
        log.info("dev: created session %s for tenant %s", session_id, tenant)
        return created

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


def _require_consuming(runtime: Runtime) -> None:
    """Publishing is pointless until the gateway's own consumer reads the topic (and would only time out)."""
    if not runtime.progress.targets:
        settings = runtime.consumer_settings
        raise HTTPException(
            503,
            f"the gateway is not reading topic {settings.kafka_topic!r} at {settings.kafka_bootstrap_servers} yet: "
            f"{runtime.progress.last_error or 'still connecting'} (see /readyz)",
        )


async def _mint_token(runtime: Runtime, tenant: str, session_id: str | None, scope: str | None = None) -> str:
    issuer = runtime.settings.dev_issuer_url.rstrip("/")
    params = {"tenant": tenant, "ttl": str(_TOKEN_TTL_S)}
    if session_id is not None:
        params["session"] = session_id
    if scope:
        params["scope"] = scope
    try:
        response = await runtime.http.post(f"{issuer}/token", params=params, timeout=5.0)
        response.raise_for_status()
        document: Any = response.json()
        token = document["access_token"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        raise HTTPException(
            502,
            f"the dev issuer at {issuer} did not mint a token ({type(error).__name__}: {error_text(error)}); "
            "start it with `session-gateway dev-issuer` or set GATEWAY_DEV_ISSUER_URL",
        ) from None
    if not isinstance(token, str):
        raise HTTPException(502, f"the dev issuer at {issuer} answered without an access_token")
    return token


async def _ask_for_ticket(runtime: Runtime, session_url: str, token: str) -> dict[str, str]:
    """``POST {session_url}/ticket`` on this gateway's public port, as a backend would (docs/tickets.md)."""
    try:
        response = await runtime.http.post(
            f"{session_url}/ticket", headers={"authorization": f"Bearer {token}"}, timeout=5.0
        )
        response.raise_for_status()
        document: Any = response.json()
        answer = {"ticket": document["ticket"], "expiresAt": document["expiresAt"]}
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        raise HTTPException(502, f"the gateway did not issue a ticket ({type(error).__name__})") from None
    if not all(isinstance(value, str) for value in answer.values()):
        raise HTTPException(502, "the gateway answered without a ticket")
    return answer
