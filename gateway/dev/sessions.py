"""The demo's session API: create a session and move it on, without a producer or a token of one's own.

``POST /dev/sessions`` publishes a new ``active`` session and returns a token for it from the dev
issuer (``GATEWAY_DEV_ISSUER_URL``) with the URL to stream it; ``POST /dev/sessions/{id}/status``
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
from fastapi import APIRouter, Body, HTTPException, Path
from pydantic import BaseModel, Field

from gateway.auth.key_errors import error_text
from gateway.dev.publisher import DevPublisher, PublishedStatus
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
    token: str = Field(description="A token from the dev issuer, scoped to this tenant and session.")
    eventsUrl: str = Field(description="Relative URL of the session's event stream, token included.")
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
        return CreatedSession(id=session_id, tenant=tenant, token=token, eventsUrl=events_url, cli=cli_command())

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
            f"the dev issuer at {issuer} did not mint a token ({type(error).__name__}: {error_text(error)}); "
            "start it with `session-gateway dev-issuer` or set GATEWAY_DEV_ISSUER_URL",
        ) from None
    if not isinstance(token, str):
        raise HTTPException(502, f"the dev issuer at {issuer} answered without an access_token")
    return token
