"""Dev mode answers loopback peers only, however the server was started.

Dev routes publish without authentication and hand out tokens for any tenant, and ``serve``'s loopback
bind is not enough: uvicorn may be started on ``0.0.0.0``, or a container's port published. So every
dev route answers 403 to a peer that is not a loopback address, before its request is read. The peer
is the ASGI client (the TCP peer, or the client a trusted local proxy names in ``X-Forwarded-For``).
See docs/security.md ("Dev mode is loopback only").
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("gateway.dev.routes")  # the logger name of every dev-mode line; unchanged by the split

NO_STORE = {"cache-control": "no-store"}  # dev answers are never cached (refusals included)

LOOPBACK_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"description": "The request did not come from a loopback address."}
}  # the OpenAPI document's note on every dev route


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
                await JSONResponse({"detail": reason}, status_code=403, headers=NO_STORE)(scope, receive, send)
                return
        await self.app(scope, receive, send)
