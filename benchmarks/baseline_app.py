"""The baseline: what a team writes first for "stream session status from Kafka over SSE".

FastAPI + sse-starlette under the same uvicorn (uvloop, httptools) as the gateway:
- every request verifies its JWT with joserfc (keys fetched once from the JWKS URL at start-up);
- every connection has its own ``asyncio.Queue`` and async generator, wrapped in an
  ``EventSourceResponse`` (ping every 15 s, like the gateway's heartbeat);
- an aiokafka consumer in the app replays the topic into a dict of session id -> pydantic model
  and puts each record into the queues of that session's connections; each connection encodes
  the event itself.
``GET /session/{id}`` is the status read (benchmark 7), written the same way. ``/readyz`` answers 200
once the replay reached the end offsets seen at start-up.

Run: ``python -m benchmarks.baseline_app`` with BASELINE_PORT, BASELINE_KAFKA_BOOTSTRAP_SERVERS,
BASELINE_KAFKA_TOPIC, BASELINE_JWKS_URL, BASELINE_JWT_ISSUER, BASELINE_JWT_AUDIENCE.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from sse_starlette import EventSourceResponse

from schemas import SessionStatusEvent

BOOTSTRAP = os.environ.get("BASELINE_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
TOPIC = os.environ.get("BASELINE_KAFKA_TOPIC", "session-status")
JWKS_URL = os.environ.get("BASELINE_JWKS_URL", "http://127.0.0.1:8090/jwks.json")
ISSUER = os.environ.get("BASELINE_JWT_ISSUER", "")
AUDIENCE = os.environ.get("BASELINE_JWT_AUDIENCE", "")

sessions: dict[str, tuple[SessionStatusEvent, str]] = {}  # session id -> (latest event, "partition-offset")
subscribers: dict[str, set[asyncio.Queue[tuple[SessionStatusEvent, str]]]] = {}
state: dict[str, Any] = {"ready": False, "keys": None}
_claims: dict[str, Any] = {"exp": {"essential": True}}
if ISSUER:
    _claims["iss"] = {"essential": True, "value": ISSUER}
if AUDIENCE:
    _claims["aud"] = {"essential": True, "value": AUDIENCE}
claims_registry = JWTClaimsRegistry(**_claims)
TERMINAL = {"completed", "expired", "failed", "cancelled"}


async def consume() -> None:
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        while not consumer.assignment():  # every partition, once the metadata arrived
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        state["ready"] = not remaining
        async for record in consumer:
            event = SessionStatusEvent.model_validate_json(record.value)
            position = f"{record.partition}-{record.offset}"
            sessions[event.id] = (event, position)
            for queue in subscribers.get(event.id, ()):
                queue.put_nowait((event, position))
            if remaining:
                tp = TopicPartition(record.topic, record.partition)
                if tp in remaining and record.offset + 1 >= end[tp]:
                    remaining.discard(tp)
                    state["ready"] = not remaining
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with httpx.AsyncClient() as client:
        response = await client.get(JWKS_URL)
        state["keys"] = KeySet.import_key_set(response.json())
    task = asyncio.create_task(consume())
    task.add_done_callback(
        lambda t: t.cancelled() or t.exception() is None or print("consumer failed:", repr(t.exception()))
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


app = FastAPI(lifespan=lifespan)


@app.get("/readyz")
async def readyz() -> JSONResponse:
    return JSONResponse({"ready": state["ready"]}, status_code=200 if state["ready"] else 503)


def _message(event: SessionStatusEvent, position: str) -> dict[str, str]:
    return {
        "event": "message",
        "id": position,
        "data": event.model_dump_json(include={"id", "status", "updatedAt"}),
    }


def _visible(session_id: str, token: str | None) -> tuple[SessionStatusEvent, str]:
    """The session's latest event and position, after the checks every request makes (its JWT verified anew)."""
    if not state["ready"]:
        raise HTTPException(503, "Session state is still loading")
    if not token:
        raise HTTPException(401, "Authentication required")
    try:
        decoded = jwt.decode(token, state["keys"], algorithms=["RS256"])
        claims_registry.validate(decoded.claims)
    except (JoseError, ValueError) as error:
        raise HTTPException(401, "Invalid or expired token") from error
    current = sessions.get(session_id)
    if current is None or current[0].tenantId != decoded.claims.get("tenant_id"):
        raise HTTPException(404, f"Session {session_id} not found")
    return current


@app.get("/session/{session_id}/events")
async def session_events(session_id: str, token: str | None = Query(None)) -> EventSourceResponse:
    _visible(session_id, token)

    queue: asyncio.Queue[tuple[SessionStatusEvent, str]] = asyncio.Queue()
    subscribers.setdefault(session_id, set()).add(queue)

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            event, position = sessions[session_id]
            yield _message(event, position)
            if event.status.value in TERMINAL:
                return
            while True:
                event, position = await queue.get()
                yield _message(event, position)
                if event.status.value in TERMINAL:
                    return
        finally:
            watchers = subscribers.get(session_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del subscribers[session_id]

    return EventSourceResponse(stream(), ping=15)


@app.get("/session/{session_id}")
async def session_status(session_id: str, request: Request, token: str | None = Query(None)) -> Response:
    """The status read (benchmark 7): the same checks, then the latest event's data with an ETag."""
    event, position = _visible(session_id, token)
    headers = {"etag": f'"{position}"', "cache-control": "no-store"}
    if request.headers.get("if-none-match") == headers["etag"]:
        return Response(status_code=304, headers=headers)
    body = event.model_dump_json(include={"id", "status", "updatedAt"})
    return Response(body, media_type="application/json", headers=headers)


def main() -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ.get("BASELINE_PORT", "8081")),
        loop="uvloop",
        http="httptools",
        ws="none",
        backlog=4096,
        timeout_graceful_shutdown=3,
        log_level="info",
    )


if __name__ == "__main__":
    main()
