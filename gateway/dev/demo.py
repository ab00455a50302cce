"""The demo page and its assets (``static/``), served from the package so dev mode needs nothing else.

Only names of files that exist in ``static/`` with a known type are served, never a path; nothing is
cached, so an edited asset shows on the next reload. See docs/cli.md ("Trying it locally").
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

from gateway.dev.loopback import NO_STORE

STATIC_DIR = Path(__file__).resolve().parent / "static"

_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


def add_demo_routes(router: APIRouter) -> None:
    """``GET /`` (a redirect), ``GET /demo`` and ``GET /demo/static/{name}``."""

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
