"""DEVELOPMENT ONLY: the routes dev mode adds to the public port, as one router.

Mounted by ``gateway.runtime.ports`` only when ``GATEWAY_DEV_MODE`` is true, behind ``LoopbackOnly``
(``gateway.dev.loopback``): anyone who reaches them can write to the session-status topic and get
tokens for any tenant, so they must never be enabled in production (docs/security.md). The demo page
is in ``demo``, the session API in ``sessions``, its Kafka producer in ``publisher``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI

from gateway.dev.demo import add_demo_routes
from gateway.dev.loopback import LOOPBACK_ONLY
from gateway.dev.publisher import DevPublisher
from gateway.dev.sessions import add_session_routes

if TYPE_CHECKING:
    from gateway.runtime.app import Runtime

DEV_TAG = "Development only"


def dev_router(runtime: Runtime) -> APIRouter:
    """The demo page and the session API; the router's lifespan stops the Kafka producer they share."""
    publisher = DevPublisher(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await publisher.close()

    router = APIRouter(tags=[DEV_TAG], lifespan=lifespan, responses=LOOPBACK_ONLY)
    add_demo_routes(router, runtime)
    add_session_routes(router, runtime, publisher)
    return router
