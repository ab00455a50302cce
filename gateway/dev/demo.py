"""The demo page and its assets (``static/``), served from the package so dev mode needs nothing else.

Only names of files that exist in ``static/`` with a known type are served, never a path; nothing is
cached, so an edited asset shows on the next reload. See docs/cli.md ("Trying it locally").

The page's links to readiness and the API docs go through ``/dev/readyz`` and ``/dev/docs``: health and
docs live on the internal port, which the page (on the public port) does not know.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from gateway.dev.loopback import NO_STORE

if TYPE_CHECKING:
    from gateway.runtime.app import Runtime

STATIC_DIR = Path(__file__).resolve().parent / "static"

_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")
_HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def internal_url(request: Request, internal_host: str, internal_port: int) -> str:
    """The internal port's base URL as this request's browser reaches it (the host it used for the page,
    unless the internal port listens on one address only)."""
    host = internal_host if internal_host not in _ANY_ADDRESS else (request.url.hostname or "127.0.0.1")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if not _HOST_NAME.fullmatch(host):
        host = "127.0.0.1"
    return f"http://{host}:{internal_port}"


def add_demo_routes(router: APIRouter, runtime: Runtime) -> None:
    """``GET /`` (a redirect), ``GET /demo``, ``GET /demo/static/{name}``, and the page's links to the
    internal port: ``GET /dev/readyz`` (readiness as ``/readyz`` says it) and ``GET /dev/docs`` (a redirect)."""
    settings = runtime.settings

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
        return FileResponse(STATIC_DIR / "demo.html", media_type=_MEDIA_TYPES[".html"], headers=NO_STORE)

    @router.get("/demo/static/{name}", include_in_schema=False)
    async def demo_asset(name: str) -> FileResponse:
        path = STATIC_DIR / name
        media_type = _MEDIA_TYPES.get(path.suffix)
        if not _ASSET_NAME.fullmatch(name) or media_type is None or not path.is_file():
            raise HTTPException(404, f"no demo asset {name!r}")
        return FileResponse(path, media_type=media_type, headers=NO_STORE)

    @router.get("/dev/readyz", summary="Readiness, as the internal port's /readyz reports it (DEV MODE ONLY)")
    async def dev_readyz() -> JSONResponse:
        report = runtime.health.readiness()
        return JSONResponse(report, status_code=200 if report["status"] == "ready" else 503, headers=NO_STORE)

    @router.get("/dev/docs", summary="Redirect to the API docs on the internal port (DEV MODE ONLY)")
    async def dev_docs(request: Request) -> RedirectResponse:
        if not settings.internal_port or settings.internal_port == settings.port:
            return RedirectResponse("/docs", status_code=307)
        base = internal_url(request, settings.internal_host, settings.internal_port)
        return RedirectResponse(f"{base}/docs", status_code=307)
